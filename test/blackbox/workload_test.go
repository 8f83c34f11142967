package blackbox_test

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lwwPrefix is the key prefix the test configs give the lww resolver.
const lwwPrefix = "lww/"

// testKeys is the shared key set: half use the default siblings resolver,
// half the lww rule.
var testKeys = func() []string {
	var ks []string
	for i := range 15 {
		ks = append(ks, fmt.Sprintf("sib/k%02d", i), fmt.Sprintf("%sk%02d", lwwPrefix, i))
	}
	return ks
}()

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
	desc   string
	value  string   // "" for a delete
	covers []string // the live values the write's context covered
}

// ledger records what the clients did and saw. Every method is safe for
// concurrent use.
type ledger struct {
	mu struct {
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
		// key (changelog: a write without context to a key whose resolver
		// runs on write), so it supersedes every version the DC held.
		overwrites map[string][]overwrite
		// observed holds every value any read ever returned.
		observed map[string]bool
		// failures counts failed requests by DC and kind.
		failures map[string]int
		examples []string
	}
	ackedPerDC map[string]*atomic.Int64
	seqPerDC   map[string]*atomic.Int64
}

func newLedger() *ledger {
	l := &ledger{ackedPerDC: map[string]*atomic.Int64{}, seqPerDC: map[string]*atomic.Int64{}}
	l.mu.superseded = map[string]string{}
	l.mu.deleted = map[string]string{}
	l.mu.doubtful = map[string][]doubtfulWrite{}
	l.mu.overwrites = map[string][]overwrite{}
	l.mu.observed = map[string]bool{}
	l.mu.failures = map[string]int{}
	for _, dc := range dcNames {
		l.ackedPerDC[dc] = new(atomic.Int64)
		l.seqPerDC[dc] = new(atomic.Int64)
	}
	return l
}

func (l *ledger) acked(dc string) int64 { return l.ackedPerDC[dc].Load() }

func (l *ledger) ackedTotal() int64 {
	var n int64
	for _, dc := range dcNames {
		n += l.acked(dc)
	}
	return n
}

func (l *ledger) observe(values []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, v := range values {
		l.mu.observed[v] = true
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
	if len(l.mu.examples) < 12 {
		l.mu.examples = append(l.mu.examples, fmt.Sprintf("%s %s: %v", dc, kind, err))
	}
	if doubt != nil {
		for _, v := range doubt.covers {
			l.mu.doubtful[v] = append(l.mu.doubtful[v], *doubt)
		}
	}
}

// workload drives writes at the DCs. Each worker of a DC loops until it
// has maxAcked acknowledged operations or stop is closed.
type workload struct {
	c    *cluster
	led  *ledger
	stop chan struct{}
	wg   sync.WaitGroup
}

func newWorkload(c *cluster, led *ledger) *workload {
	return &workload{c: c, led: led, stop: make(chan struct{})}
}

// start runs workers goroutines writing at dc; done (if not nil) is
// marked Done when each of them returns.
func (w *workload) start(dc string, workers, maxAcked int, seed uint64, done *sync.WaitGroup) {
	for i := range workers {
		w.wg.Add(1)
		if done != nil {
			done.Add(1)
		}
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		go func() {
			defer w.wg.Done()
			if done != nil {
				defer done.Done()
			}
			w.worker(dc, maxAcked, rng)
		}()
	}
}

// halt stops every worker and waits for them. Workers finish the operation
// in hand, so stopping leaves no write in doubt.
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
// spin; it returns early when the workload stops.
func (w *workload) pause() {
	t := time.NewTimer(20 * time.Millisecond)
	defer t.Stop()
	select {
	case <-w.stop:
	case <-t.C:
	}
}

func (w *workload) worker(dc string, maxAcked int, rng *rand.Rand) {
	p := w.c.proc(dc)
	acked := 0
	for acked < maxAcked && !w.stopped() {
		key := testKeys[rng.IntN(len(testKeys))]
		roll := rng.IntN(30)
		var ok bool
		switch {
		case roll == 0:
			ok = w.deleteWithContext(p, key)
		case roll <= 10:
			ok = w.blindPut(p, key)
		default:
			ok = w.readModifyWrite(p, key)
		}
		if ok {
			acked++
		} else {
			w.pause()
		}
	}
}

// read GETs the key and returns its context and live values.
func (w *workload) read(p *proc, key string) (ctx string, live []string, ok bool) {
	v, status, err := w.c.get(p, key)
	if err != nil {
		w.led.recordFailure(p.name, fmt.Sprintf("GET status %d", status), err, nil)
		return "", nil, false
	}
	live = v.liveValues()
	w.led.observe(live)
	return v.Context, live, true
}

// blindPut writes without a context. Before a blind put to an lww key it
// reads the key (and sends nothing of that read), to record which versions
// the DC held: the put implicitly supersedes them.
func (w *workload) blindPut(p *proc, key string) bool {
	var seen []string
	if strings.HasPrefix(key, lwwPrefix) {
		_, live, ok := w.read(p, key)
		if !ok {
			return false
		}
		seen = live
	}
	return w.put(p, key, nil, seen)
}

func (w *workload) readModifyWrite(p *proc, key string) bool {
	ctx, live, ok := w.read(p, key)
	if !ok {
		return false
	}
	return w.put(p, key, &ctx, live)
}

// put writes a fresh unique value with context vctx, which covers the live
// values covered; with vctx nil it is a blind write, and covered are the
// values a read just before it returned.
func (w *workload) put(p *proc, key string, vctx *string, covered []string) bool {
	value := fmt.Sprintf("%s-%d", p.name, w.led.seqPerDC[p.name].Add(1))
	return w.send(p, key, value, vctx, covered)
}

func (w *workload) deleteWithContext(p *proc, key string) bool {
	ctx, live, ok := w.read(p, key)
	if !ok {
		return false
	}
	if len(live) == 0 {
		return true // nothing to delete; the read counts as the operation
	}
	return w.send(p, key, "", &ctx, live)
}

func (w *workload) send(p *proc, key, value string, vctx *string, covered []string) bool {
	var preSeen []string
	if vctx == nil {
		preSeen, covered = covered, nil
	}
	var body []byte
	if value != "" {
		body = []byte(value)
	}
	wr, status, err := w.c.write(p, key, body, vctx)
	if err == nil {
		blindLWW := vctx == nil && strings.HasPrefix(key, lwwPrefix)
		if err := w.led.recordAck(ackedOp{dc: p.name, key: key, value: value, delete: value == "", dot: wr.Dot}, covered, blindLWW, preSeen, wr.Context); err != nil {
			w.led.recordFailure(p.name, "bad write answer", err, nil)
		}
		return true
	}
	kind := fmt.Sprintf("%s status %d", strings.ToUpper(describe(value)[:3]), status)
	switch {
	case status == 0 && isRefused(err):
		// Never reached a server: certainly not committed.
		w.led.recordFailure(p.name, kind+" (refused)", err, nil)
	case status >= 400 && status < 500:
		// Rejected before any effect.
		w.led.recordFailure(p.name, kind, err, nil)
	default:
		// A lost connection, a timeout or a 5xx: maybe committed.
		desc := fmt.Sprintf("%s of %s at %s (%v)", describe(value), key, p.name, err)
		var d *doubtfulWrite
		if vctx != nil {
			d = &doubtfulWrite{desc: desc, value: value, covers: covered}
		}
		w.led.recordFailure(p.name, kind+" (in doubt)", err, d)
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
func readFinal(t *testing.T, c *cluster, led *ledger) finalState {
	t.Helper()
	fs := finalState{
		views:     map[string]map[string]kvView{},
		live:      map[string]map[string]bool{},
		shown:     map[string]map[string]bool{},
		discarded: map[string]string{},
	}
	for _, p := range c.procs {
		fs.views[p.name] = map[string]kvView{}
		fs.live[p.name] = map[string]bool{}
		fs.shown[p.name] = map[string]bool{}
		for _, key := range testKeys {
			v, _, err := c.get(p, key)
			if err != nil {
				t.Fatalf("final read: %v", err)
			}
			fs.views[p.name][key] = v
			live := v.liveValues()
			led.observe(live)
			for _, val := range live {
				fs.live[p.name][val] = true
			}
			for _, val := range v.Values {
				fs.shown[p.name][string(val)] = true
			}
		}
		cs, err := c.conflicts(p)
		if err != nil {
			t.Fatalf("final conflict log: %v", err)
		}
		fs.logged += len(cs)
		for _, cf := range cs {
			for _, d := range cf.Discarded {
				if !d.Deleted {
					fs.discarded[string(d.Value)] = fmt.Sprintf("conflict %s (%s, key %s) at %s", cf.ID, cf.Resolver, cf.Key, p.name)
				}
			}
		}
	}
	return fs
}

// stableFinal reads the final state between two equal and identical digest
// readings, so that it sees one converged state even while the DCs purge
// causally stable tombstones in the background (each on its own schedule).
func stableFinal(t *testing.T, c *cluster, led *ledger) finalState {
	t.Helper()
	var fs finalState
	var last []string
	err := waitFor(30*time.Second, 100*time.Millisecond, func() bool {
		equal, before, _ := c.digests()
		if !equal {
			return false
		}
		fs = readFinal(t, c, led)
		equal, after, desc := c.digests()
		last = desc
		return equal && after == before
	})
	if err != nil {
		t.Fatalf("the DCs' digests kept changing or differing while the final state was read; last digests:\n  %s", strings.Join(last, "\n  "))
	}
	return fs
}

// overwrittenBy returns the acknowledged blind lww put, other than op
// itself, whose implicit context covered op's dot, or "". seen reports that
// a read at that DC just before the put returned op's value, so the DC
// certainly held it; otherwise only the returned clock says so. led.mu must
// be held.
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

// account checks, after convergence, that every acknowledged put is
// accounted for: a live sibling at every DC, superseded by an acknowledged
// write whose context covered it, or logged as discarded by a resolver. It
// also checks that nothing superseded is live again, and that no discarded
// version is what a DC shows.
func account(t *testing.T, c *cluster, led *ledger) {
	t.Helper()
	fs := stableFinal(t, c, led)

	// The digests are equal; the per-key states must be too.
	for _, key := range testKeys {
		want := fs.views[dcNames[0]][key].canonical()
		for _, dc := range dcNames[1:] {
			if got := fs.views[dc][key].canonical(); got != want {
				t.Errorf("digests are equal but key %s differs: %s has %s, %s has %s", key, dcNames[0], want, dc, got)
			}
		}
	}

	led.mu.Lock()
	defer led.mu.Unlock()
	var puts, deletes, live, superseded, deleted, overwrittenSeen, overwrittenClock, logged, doubtful int
	var lost, partial []string
	for _, op := range led.mu.acked {
		if op.delete {
			deletes++
			continue
		}
		puts++
		v := op.value
		liveAt := 0
		for _, dc := range dcNames {
			if fs.live[dc][v] {
				liveAt++
			}
		}
		switch {
		case liveAt == len(dcNames):
			live++
		case liveAt > 0:
			partial = append(partial, fmt.Sprintf("%s (key %s, dot %s) is live at %d of %d DCs", v, op.key, op.dot, liveAt, len(dcNames)))
		case led.mu.superseded[v] != "":
			superseded++
		case led.mu.deleted[v] != "":
			deleted++
		case fs.discarded[v] != "":
			logged++
		case committedDoubt(led, v):
			doubtful++
		default:
			if by, seen := overwrittenBy(led, op); by != "" {
				if seen {
					overwrittenSeen++
				} else {
					overwrittenClock++
				}
				continue
			}
			lost = append(lost, fmt.Sprintf("%s (key %s, acked by %s, dot %s; seen by a read during the run: %t; final state of the key at %s: %s)",
				v, op.key, op.dc, op.dot, led.mu.observed[v], dcNames[0], fs.views[dcNames[0]][op.key].canonical()))
		}
	}
	t.Logf("accounting: %d acked puts + %d acked deletes (with context). Puts: %d live at every DC, %d superseded by an acked put with context, "+
		"%d superseded by an acked delete with context, %d discarded and logged by a resolver, "+
		"%d overwritten by a later blind lww put at a DC that held them (%d seen there by a read just before, %d covered by the clock the put returned), "+
		"%d superseded by a write of uncertain outcome that was committed; %d lost. %d conflict log entries over all DCs",
		puts, deletes, live, superseded, deleted, logged, overwrittenSeen+overwrittenClock, overwrittenSeen, overwrittenClock, doubtful, len(lost), fs.logged)
	keys := make([]string, 0, len(led.mu.failures))
	for k := range led.mu.failures {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var fails []string
	for _, k := range keys {
		fails = append(fails, fmt.Sprintf("%s: %d", k, led.mu.failures[k]))
	}
	t.Logf("failed requests: %s", strings.Join(fails, ", "))
	if len(led.mu.examples) > 0 {
		t.Logf("first failures:\n  %s", strings.Join(led.mu.examples, "\n  "))
	}
	for _, s := range partial {
		t.Errorf("not converged: %s", s)
	}
	if len(lost) > 0 {
		t.Errorf("%d acknowledged puts are lost: not live, not superseded through a context, not in any conflict log:\n  %s", len(lost), strings.Join(lost, "\n  "))
	}

	// What an acknowledged context write covered must never be live again,
	// and a version a resolver discarded must never be the one shown.
	for _, dc := range dcNames {
		for v := range fs.live[dc] {
			if by := led.mu.superseded[v]; by != "" {
				t.Errorf("%s is live at %s although the acknowledged %s had a context covering it", v, dc, by)
			}
			if by := led.mu.deleted[v]; by != "" {
				t.Errorf("%s is live at %s although the acknowledged %s had a context covering it", v, dc, by)
			}
		}
		for v := range fs.shown[dc] {
			if in := fs.discarded[v]; in != "" {
				t.Errorf("%s is the value %s shows although %s lists it as discarded", v, dc, in)
			}
		}
	}
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
