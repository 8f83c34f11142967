package fault_test

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/event"
)

// The ledger records what clients did and saw over HTTP, so that after
// convergence every acknowledged write can be accounted for: a live
// sibling at every DC, superseded by an acknowledged write whose context
// covered it, or logged as discarded by a resolver (invariants 1, 5, 6).

// ackedOp is a write the sidecar acknowledged with 200.
type ackedOp struct {
	dc, key string
	value   string // "" for a delete
	delete  bool
	dot     string
}

// overwrite is an acknowledged blind put to an lww key and the context the
// sidecar returned for it: the DC's clock for the key, plus its own dot.
type overwrite struct {
	desc  string
	dot   string
	clock map[string]uint64
	// seen holds the live values a read at the same DC returned just
	// before the put (the put itself sends no context).
	seen map[string]bool
}

// doubtfulWrite is a write that got neither a 200 nor a certain refusal:
// it may or may not have been committed.
type doubtfulWrite struct {
	dc     string
	key    string
	blind  bool
	at     time.Time
	desc   string
	value  string   // "" for a delete
	covers []string // the live values the write's context covered
}

// ledger records what the clients did and saw. Every method is safe for
// concurrent use.
type ledger struct {
	dcs []string
	mu  struct {
		sync.Mutex
		acked []ackedOp
		// superseded maps a value to the acknowledged put whose context
		// covered it.
		superseded map[string]string
		// deleted maps a value to the acknowledged delete whose context
		// covered it.
		deleted map[string]string
		// doubtful maps a value to the doubtful writes whose context
		// covered it.
		doubtful map[string][]doubtfulWrite
		// overwrites lists, per key, the acknowledged blind puts to lww
		// keys. Such a put's context is implicitly the DC's clock for the
		// key (a write without context to a key whose resolver runs on
		// write), so it supersedes every version the DC held.
		overwrites map[string][]overwrite
		// observed holds every value any read ever returned.
		observed map[string]bool
		// observedDot maps a value a read returned to its dot.
		observedDot map[string]string
		// doubtfulByKey lists every write of uncertain outcome per key,
		// blind ones included.
		doubtfulByKey map[string][]doubtfulWrite
		// failures counts failed requests by DC and kind.
		failures map[string]int
		examples []string
	}
	ackedPerDC map[string]*atomic.Int64
	seqPerDC   map[string]*atomic.Int64
	// ops counts the write requests sent (each after a read, except
	// blind puts to keys outside lwwPrefix).
	ops atomic.Int64
	// tag makes values unique across ledgers of one test.
	tag string
}

func newLedger(dcs []string) *ledger {
	l := &ledger{dcs: dcs, ackedPerDC: map[string]*atomic.Int64{}, seqPerDC: map[string]*atomic.Int64{}}
	l.mu.superseded = map[string]string{}
	l.mu.deleted = map[string]string{}
	l.mu.doubtful = map[string][]doubtfulWrite{}
	l.mu.overwrites = map[string][]overwrite{}
	l.mu.observed = map[string]bool{}
	l.mu.observedDot = map[string]string{}
	l.mu.doubtfulByKey = map[string][]doubtfulWrite{}
	l.mu.failures = map[string]int{}
	for _, dc := range dcs {
		l.ackedPerDC[dc] = new(atomic.Int64)
		l.seqPerDC[dc] = new(atomic.Int64)
	}
	return l
}

func (l *ledger) acked(dc string) int64 { return l.ackedPerDC[dc].Load() }

func (l *ledger) ackedTotal() int64 {
	var n int64
	for _, dc := range l.dcs {
		n += l.acked(dc)
	}
	return n
}

func (l *ledger) observe(v kvView) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range v.Siblings {
		if !s.Deleted {
			l.mu.observed[string(s.Value)] = true
			l.mu.observedDot[string(s.Value)] = s.Dot
		}
	}
}

// recordAck records an acknowledged write. covered lists the live values
// the write's context covered (nil for a blind write); returned is the
// context the sidecar answered with.
func (l *ledger) recordAck(op ackedOp, covered []string, blindLWW bool, preSeen []string, returned string) error {
	desc := fmt.Sprintf("%s at %s (dot %s)", describe(op.value), op.dc, op.dot)
	var clock map[string]uint64
	if blindLWW {
		var err error
		if clock, err = parseClock(returned); err != nil {
			return fmt.Errorf("%s: returned context: %w", desc, err)
		}
	}
	l.mu.Lock()
	l.mu.acked = append(l.mu.acked, op)
	if blindLWW {
		seen := map[string]bool{}
		for _, v := range preSeen {
			seen[v] = true
		}
		l.mu.overwrites[op.key] = append(l.mu.overwrites[op.key], overwrite{desc: desc, dot: op.dot, clock: clock, seen: seen})
	}
	for _, v := range covered {
		if op.delete {
			l.mu.deleted[v] = desc
		} else {
			l.mu.superseded[v] = desc
		}
	}
	l.mu.Unlock()
	l.ackedPerDC[op.dc].Add(1)
	return nil
}

func describe(value string) string {
	if value == "" {
		return "delete"
	}
	return "put " + value
}

// recordFailure counts a failed request. A write that may have been
// committed is remembered as doubtful.
func (l *ledger) recordFailure(dc, kind string, err error, doubt *doubtfulWrite) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.failures[dc+" "+kind]++
	if len(l.mu.examples) < 8 {
		l.mu.examples = append(l.mu.examples, fmt.Sprintf("%s %s: %v", dc, kind, err))
	}
	if doubt != nil {
		l.mu.doubtfulByKey[doubt.key] = append(l.mu.doubtfulByKey[doubt.key], *doubt)
		for _, v := range doubt.covers {
			l.mu.doubtful[v] = append(l.mu.doubtful[v], *doubt)
		}
	}
}

// failureSummary lists the failed requests by DC and kind.
func (l *ledger) failureSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]string, 0, len(l.mu.failures))
	for k := range l.mu.failures {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s: %d", k, l.mu.failures[k]))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// workload drives writes at the DCs over HTTP. Each worker loops until it
// has its quota of acknowledged operations or the workload halts.
type workload struct {
	c    *cluster
	led  *ledger
	keys []string
	stop chan struct{}
	wg   sync.WaitGroup
}

func newWorkload(c *cluster, led *ledger, keys []string) *workload {
	return &workload{c: c, led: led, keys: keys, stop: make(chan struct{})}
}

// start runs workers goroutines writing at dc, each until it has maxAcked
// acknowledged operations (0: no limit) or the workload halts.
func (w *workload) start(dc string, workers, maxAcked int, seed uint64) {
	for i := range workers {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		w.wg.Go(func() { w.worker(dc, maxAcked, rng) })
	}
}

// halt stops every worker and waits for them. Workers finish the
// operation in hand, so halting leaves no write in doubt.
func (w *workload) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
}

func (w *workload) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// pause waits a little after a failure, so a worker at a dead DC does not
// spin; it returns early when the workload halts.
func (w *workload) pause() { hold(20*time.Millisecond, w.stop) }

func (w *workload) worker(dc string, maxAcked int, rng *rand.Rand) {
	m := w.c.member(dc)
	acked := 0
	for (maxAcked == 0 || acked < maxAcked) && !w.stopped() {
		key := w.keys[rng.IntN(len(w.keys))]
		roll := rng.IntN(30)
		var ok bool
		switch {
		case roll == 0:
			ok = w.deleteWithContext(m, key)
		case roll <= 10:
			ok = w.blindPut(m, key)
		default:
			ok = w.readModifyWrite(m, key)
		}
		if ok {
			acked++
		} else {
			w.pause()
		}
	}
}

// read GETs the key and returns its context and live values.
func (w *workload) read(m *member, key string) (ctx string, live []string, ok bool) {
	v, status, err := w.c.get(m, key)
	if err != nil {
		w.led.recordFailure(m.name, fmt.Sprintf("GET status %d", status), err, nil)
		return "", nil, false
	}
	live = v.liveValues()
	w.led.observe(v)
	return v.Context, live, true
}

// blindPut writes without a context. Before a blind put to an lww key it
// reads the key (and sends nothing of that read), to record which versions
// the DC held: the put implicitly supersedes them.
func (w *workload) blindPut(m *member, key string) bool {
	var seen []string
	if strings.HasPrefix(key, lwwPrefix) {
		_, live, ok := w.read(m, key)
		if !ok {
			return false
		}
		seen = live
	}
	return w.put(m, key, nil, seen)
}

func (w *workload) readModifyWrite(m *member, key string) bool {
	ctx, live, ok := w.read(m, key)
	if !ok {
		return false
	}
	return w.put(m, key, &ctx, live)
}

// put writes a fresh unique value with context vctx, which covers the
// live values covered; with vctx nil it is a blind write, and covered are
// the values a read just before it returned.
func (w *workload) put(m *member, key string, vctx *string, covered []string) bool {
	value := fmt.Sprintf("%s%s-%d", w.led.tag, m.name, w.led.seqPerDC[m.name].Add(1))
	return w.send(m, key, value, vctx, covered)
}

// deleteWithContext reads the key and deletes what the read returned.
func (w *workload) deleteWithContext(m *member, key string) bool {
	ctx, live, ok := w.read(m, key)
	if !ok {
		return false
	}
	if len(live) == 0 {
		return true // nothing to delete; the read counts as the operation
	}
	return w.send(m, key, "", &ctx, live)
}

func (w *workload) send(m *member, key, value string, vctx *string, covered []string) bool {
	var preSeen []string
	if vctx == nil {
		preSeen, covered = covered, nil
	}
	var body []byte
	if value != "" {
		body = []byte(value)
	}
	w.led.ops.Add(1)
	wr, status, err := w.c.write(m, key, body, vctx)
	if err == nil {
		blindLWW := vctx == nil && strings.HasPrefix(key, lwwPrefix)
		if err := w.led.recordAck(ackedOp{dc: m.name, key: key, value: value, delete: value == "", dot: wr.Dot}, covered, blindLWW, preSeen, wr.Context); err != nil {
			w.led.recordFailure(m.name, "bad write answer", err, nil)
		}
		return true
	}
	kind := fmt.Sprintf("%s status %d", strings.ToUpper(describe(value)[:3]), status)
	switch {
	case status == 0 && isRefused(err):
		// Never reached a server: certainly not committed.
		w.led.recordFailure(m.name, kind+" (refused)", err, nil)
	case status >= 400 && status < 500:
		// Rejected before any effect.
		w.led.recordFailure(m.name, kind, err, nil)
	default:
		// A lost connection, a timeout or a 5xx: maybe committed.
		desc := fmt.Sprintf("%s of %s at %s (%v)", describe(value), key, m.name, err)
		d := &doubtfulWrite{dc: m.name, key: key, blind: vctx == nil, at: time.Now(), desc: desc, value: value, covers: covered}
		if d.blind {
			d.covers = preSeen
		}
		w.led.recordFailure(m.name, kind+" (in doubt)", err, d)
	}
	return false
}

// finalState is what every DC shows once the DCs have converged.
type finalState struct {
	views     map[string]map[string]kvView // dc -> key -> view
	live      map[string]map[string]bool   // dc -> values of live siblings
	shown     map[string]map[string]bool   // dc -> values the resolver shows
	discarded map[string]string            // value -> conflict id and DC that logged it
	logged    int                          // conflict log entries over all DCs
}

// readFinal reads every key at every DC, and every DC's conflict log.
func readFinal(t *testing.T, c *cluster, led *ledger, keys []string) finalState {
	t.Helper()
	fs := finalState{
		views:     map[string]map[string]kvView{},
		live:      map[string]map[string]bool{},
		shown:     map[string]map[string]bool{},
		discarded: map[string]string{},
	}
	for _, m := range c.members {
		fs.views[m.name] = map[string]kvView{}
		fs.live[m.name] = map[string]bool{}
		fs.shown[m.name] = map[string]bool{}
		for _, key := range keys {
			v, _, err := c.get(m, key)
			if err != nil {
				t.Fatalf("final read: %v", err)
			}
			fs.views[m.name][key] = v
			live := v.liveValues()
			led.observe(v)
			for _, val := range live {
				fs.live[m.name][val] = true
			}
			for _, val := range v.Values {
				fs.shown[m.name][string(val)] = true
			}
		}
		cs, err := c.conflicts(m)
		if err != nil {
			t.Fatalf("final conflict log: %v", err)
		}
		fs.logged += len(cs)
		for _, cf := range cs {
			for _, d := range cf.Discarded {
				if !d.Deleted {
					fs.discarded[string(d.Value)] = fmt.Sprintf("conflict %s (%s, key %s) at %s", cf.ID, cf.Resolver, cf.Key, m.name)
				}
			}
		}
	}
	return fs
}

// stableFinal reads the final state between two equal and identical
// digest readings, so that it sees one converged state even while the DCs
// purge causally stable tombstones in the background.
func stableFinal(t *testing.T, c *cluster, led *ledger, keys []string) finalState {
	t.Helper()
	var fs finalState
	var last []string
	err := waitFor(60*time.Second, 100*time.Millisecond, func() bool {
		equal, before, _ := c.digests()
		if !equal {
			return false
		}
		fs = readFinal(t, c, led, keys)
		equal, after, desc := c.digests()
		last = desc
		return equal && after.Digest == before.Digest
	})
	if err != nil {
		t.Fatalf("the DCs' digests kept changing or differing while the final state was read; last digests:\n  %s", strings.Join(last, "\n  "))
	}
	return fs
}

// overwrittenBy returns the acknowledged blind lww put, other than op
// itself, whose implicit context covered op's dot, or "". seen reports
// that a read at that DC just before the put returned op's value, so the
// DC certainly held it; otherwise only the returned clock says so. led.mu
// must be held.
func overwrittenBy(led *ledger, op ackedOp) (by string, seen bool) {
	dc, n, err := parseDot(op.dot)
	if err != nil {
		return "", false
	}
	for _, o := range led.mu.overwrites[op.key] {
		if o.dot != op.dot && o.clock[dc] >= n {
			if o.seen[op.value] {
				return o.desc, true
			}
			by = o.desc
		}
	}
	return by, false
}

// accounting is what account found.
type accounting struct {
	Puts, Deletes  int // acknowledged
	Live           int // live at every DC
	Superseded     int // covered by an acknowledged put's context
	Deleted        int // covered by an acknowledged delete's context
	Logged         int // discarded by a resolver and logged
	Overwritten    int // covered by a later blind lww put at a DC that held them
	DoubtCommitted int // covered by a write of uncertain outcome that was committed
	Lost           int // none of the above: must be 0
	ConflictLog    int // conflict log entries over all DCs
	Failures       string
}

func (a accounting) String() string {
	return fmt.Sprintf("%d acked puts + %d acked deletes. Puts: %d live at every DC, %d superseded by an acked put with context, "+
		"%d superseded by an acked delete with context, %d discarded and logged by a resolver, %d overwritten by a later blind lww put at a DC that held them, "+
		"%d superseded by a write of uncertain outcome that was committed; %d LOST. %d conflict log entries over all DCs. Failed requests: %s",
		a.Puts, a.Deletes, a.Live, a.Superseded, a.Deleted, a.Logged, a.Overwritten, a.DoubtCommitted, a.Lost, a.ConflictLog, a.Failures)
}

// account checks, after convergence, that every acknowledged put is
// accounted for; that nothing superseded through a context is live again
// (no resurrection); that no discarded version is what a DC shows; and
// that each live acknowledged value carries the dot its write was
// acknowledged with, at every DC, so no write became two events.
func account(t *testing.T, c *cluster, led *ledger, keys []string) accounting {
	t.Helper()
	fs := stableFinal(t, c, led, keys)
	dcs := led.dcs

	// The digests are equal; the per-key states must be too.
	for _, key := range keys {
		want := fs.views[dcs[0]][key].canonical()
		for _, dc := range dcs[1:] {
			if got := fs.views[dc][key].canonical(); got != want {
				t.Errorf("digests are equal but key %s differs: %s has %s, %s has %s", key, dcs[0], want, dc, got)
			}
		}
	}

	a := accounting{Failures: led.failureSummary()}
	led.mu.Lock()
	defer led.mu.Unlock()
	var lost, partial []string
	ackedDot := map[string]string{} // value -> dot
	for _, op := range led.mu.acked {
		if op.delete {
			a.Deletes++
			continue
		}
		a.Puts++
		ackedDot[op.value] = op.dot
		v := op.value
		liveAt := 0
		for _, dc := range dcs {
			if fs.live[dc][v] {
				liveAt++
			}
		}
		switch {
		case liveAt == len(dcs):
			a.Live++
		case liveAt > 0:
			partial = append(partial, fmt.Sprintf("%s (key %s, dot %s) is live at %d of %d DCs", v, op.key, op.dot, liveAt, len(dcs)))
		case led.mu.superseded[v] != "":
			a.Superseded++
		case led.mu.deleted[v] != "":
			a.Deleted++
		case fs.discarded[v] != "":
			a.Logged++
		case committedDoubt(led, v):
			a.DoubtCommitted++
		default:
			if by, _ := overwrittenBy(led, op); by != "" {
				a.Overwritten++
				continue
			}
			if by := coveredByDoubtful(t, c, led, op); by != "" {
				t.Logf("%s (key %s, dot %s) was superseded by %s", v, op.key, op.dot, by)
				a.DoubtCommitted++
				continue
			}
			lost = append(lost, fmt.Sprintf("%s (key %s, acked by %s, dot %s; seen by a read during the run: %t; final state of the key at %s: %s)%s",
				v, op.key, op.dc, op.dot, led.mu.observed[v], dcs[0], fs.views[dcs[0]][op.key].canonical(), keyHistory(led, op.key)))
		}
	}
	a.Lost = len(lost)
	a.ConflictLog = fs.logged
	for _, s := range partial {
		t.Errorf("not converged: %s", s)
	}
	if len(lost) > 0 {
		t.Errorf("%d acknowledged puts are lost: not live, not superseded through a context, not in any conflict log:\n  %s",
			len(lost), strings.Join(lost[:min(len(lost), 20)], "\n  "))
	}

	// A DC never reissues a sequence number (invariant 4): no two
	// acknowledged writes share a dot in one partition.
	issued := map[string]string{} // partition/dot -> write
	for _, op := range led.mu.acked {
		k := fmt.Sprintf("%d/%s", event.PartitionOf(op.key, c.opts.partitions), op.dot)
		desc := fmt.Sprintf("%s of %s at %s", describe(op.value), op.key, op.dc)
		if prev, dup := issued[k]; dup {
			t.Errorf("dot %s of partition %s was acknowledged twice: %s, then %s (a sequence number reissued)", op.dot, k[:strings.IndexByte(k, '/')], prev, desc)
		}
		issued[k] = desc
	}

	// Exactly-once effect, seen from outside: a value lives under one dot,
	// the one its write was acknowledged with, and under one key.
	for _, dc := range dcs {
		where := map[string]string{} // value -> key/dot
		for _, key := range keys {
			for _, s := range fs.views[dc][key].Siblings {
				if s.Deleted {
					continue
				}
				v := string(s.Value)
				if prev, dup := where[v]; dup {
					t.Errorf("%s holds value %s twice: %s and %s/%s (one write applied as two events)", dc, v, prev, key, s.Dot)
				}
				where[v] = key + "/" + s.Dot
				if d, ok := ackedDot[v]; ok && d != s.Dot {
					t.Errorf("%s holds %s of key %s under dot %s, but its write was acknowledged with dot %s", dc, v, key, s.Dot, d)
				}
			}
		}
	}

	// What an acknowledged context write covered must never be live again,
	// and a version a resolver discarded must never be the one shown.
	for _, dc := range dcs {
		for v := range fs.live[dc] {
			if by := led.mu.superseded[v]; by != "" {
				t.Errorf("%s is live at %s although the acknowledged %s had a context covering it", v, dc, by)
			}
			if by := led.mu.deleted[v]; by != "" {
				t.Errorf("RESURRECTION: %s is live at %s although the acknowledged %s had a context covering it", v, dc, by)
			}
		}
		for v := range fs.shown[dc] {
			if in := fs.discarded[v]; in != "" {
				t.Errorf("%s is the value %s shows although %s lists it as discarded", v, dc, in)
			}
		}
	}
	t.Logf("accounting: %s", a)
	return a
}

// committedDoubt reports whether v was covered by the context of a write
// whose outcome the client never learned but which was committed: a put
// whose value some read has seen, or a delete (which cannot be confirmed
// by value, so it is given the benefit of the doubt). led.mu must be held.
func committedDoubt(led *ledger, v string) bool {
	for _, d := range led.mu.doubtful[v] {
		if d.value == "" || led.mu.observed[d.value] {
			return true
		}
	}
	return false
}

// keySet returns n keys, half under lwwPrefix and half for the default
// siblings resolver.
func keySet(n int) []string {
	ks := make([]string, 0, n)
	for i := range n {
		if i%2 == 0 {
			ks = append(ks, fmt.Sprintf("sib/k%04d", i/2))
		} else {
			ks = append(ks, fmt.Sprintf("%sk%04d", lwwPrefix, i/2))
		}
	}
	return ks
}

// keyHistory describes every acknowledged and doubtful write to key, for
// a failure message. led.mu must be held.
func keyHistory(led *ledger, key string) string {
	var b strings.Builder
	b.WriteString("\n      history of the key:")
	for _, op := range led.mu.acked {
		if op.key == key {
			fmt.Fprintf(&b, "\n        acked %s at %s dot %s", describe(op.value), op.dc, op.dot)
		}
	}
	for _, d := range led.mu.doubtfulByKey[key] {
		fmt.Fprintf(&b, "\n        in doubt (blind %t, seen later with dot %q): %s; covered %v", d.blind, led.mu.observedDot[d.value], d.desc, d.covers)
	}
	return b.String()
}

// coveredByDoubtful returns the write of uncertain outcome on op's key
// that was committed and whose context covered op's dot, or "". It finds
// the write's event in its DC's stream, by key and value, and reads the
// context there: a blind write's context is the DC's clock for the key,
// which the client never saw. led.mu must be held.
func coveredByDoubtful(t *testing.T, c *cluster, led *ledger, op ackedOp) string {
	t.Helper()
	dc, n, err := parseDot(op.dot)
	if err != nil {
		return ""
	}
	for _, d := range led.mu.doubtfulByKey[op.key] {
		if d.value == "" {
			continue // deletes are found by committedDoubt
		}
		ev := c.findEvent(d.dc, d.key, d.value)
		if ev != nil && ev.Context[dc] >= n {
			return fmt.Sprintf("%s, committed as event %s with context %s", d.desc, ev.Dot, ev.Context)
		}
	}
	return ""
}

// lwwKeys returns the keys under lwwPrefix.
func lwwKeys(keys []string) []string {
	var out []string
	for _, k := range keys {
		if strings.HasPrefix(k, lwwPrefix) {
			out = append(out, k)
		}
	}
	return out
}
