package sim

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

var (
	flagSeeds = flag.Int("sim.seeds", 0, "random schedules to run, seeds 1..N (default 1000, 200 with -short)")
	flagSeed  = flag.Int64("sim.seed", 0, "replay only this seed of TestRandomSchedules, with its trace")
	flagEmpty = flag.Bool("sim.empty", true, "let random schedules write empty values")
)

// TestRandomSchedules runs seeded random schedules of writes, deletes,
// deliveries, duplicates, drops with repair, applied-vector reports and
// purges over 3 to 5 real stores, then drains every link and checks the
// contract of docs/DESIGN.md:
//
//   - (a) every DC ends with the same digest (convergence);
//   - (b) every acknowledged put is a live sibling in the end, or a later
//     write superseded it (the writer saw it, and the write's context
//     covers its dot), or a conflict log lists it (no lost writes);
//   - (c) when every write reads at its own DC first, each origin has at
//     most one sibling per key, so live siblings never outnumber the DCs;
//   - (d) once a deleted key is purged, no value it had comes back.
//
// Along the way each delivery and write is checked against the pure core
// (dvv.State.Apply and Write), a first delivery is never a duplicate, a
// duplicate changes nothing, and a gap happens only on a link the schedule
// disturbed.
func TestRandomSchedules(t *testing.T) {
	if *flagSeed != 0 {
		s := runSchedule(*flagSeed, *flagEmpty)
		for _, line := range s.trace {
			t.Log(line)
		}
		if s.err != nil {
			t.Fatalf("seed %d: %v\nreplay: %s", *flagSeed, s.err, replay(*flagSeed))
		}
		return
	}
	n := *flagSeeds
	if n == 0 {
		n = 1000
		if testing.Short() {
			n = 200
		}
	}
	// Seeds are independent (each opens its own stores), so run them on
	// every CPU and report in seed order.
	type outcome struct {
		err   error
		trace []string
		stats map[string]int
	}
	results := make([]outcome, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				s := runSchedule(i+1, *flagEmpty)
				o := outcome{err: s.err, stats: s.stats}
				if s.err != nil {
					o.trace = s.trace
				}
				results[i] = o
			}
		}()
	}
	wg.Wait()

	failed := 0
	total := map[string]int{}
	for i, o := range results {
		seed := i + 1
		for k, v := range o.stats {
			total[k] += v
		}
		if o.err == nil {
			continue
		}
		failed++
		if failed <= 3 {
			t.Errorf("seed %d: %v\nreplay: %s\ntrace:\n  %s", seed, o.err, replay(int64(seed)), strings.Join(o.trace, "\n  "))
		} else {
			t.Logf("seed %d: %s", seed, strings.SplitN(o.err.Error(), "\n", 2)[0])
		}
	}
	var parts []string
	for _, k := range sortedKeys(total) {
		parts = append(parts, fmt.Sprintf("%s %d", k, total[k]))
	}
	t.Logf("%d seeds: %s", n, strings.Join(parts, ", "))
	if failed > 0 {
		t.Errorf("%d of %d seeds failed (the first three in full above, the rest in one line each with -v)", failed, n)
	}
}

// replay is the command that runs seed again, with its trace.
func replay(seed int64) string {
	cmd := fmt.Sprintf("go test ./test/sim -run TestRandomSchedules -sim.seed=%d -v", seed)
	if !*flagEmpty {
		cmd += " -sim.empty=false"
	}
	return cmd
}

// putRef is an acknowledged put.
type putRef struct {
	Key   string
	Dot   vclock.Dot
	Value []byte
}

// schedule is one seed's run: the cluster, what it was asked to do, and
// what the checks need to remember.
type schedule struct {
	r       *rand.Rand
	c       *Cluster
	dcs     []string
	keys    []string
	local   bool // every write reads at its own DC first
	deletes int  // percentage of writes that are deletes
	empty   bool // empty values may be written

	trace []string
	err   error

	acked      []putRef
	superseded map[string]map[vclock.Dot]bool // key -> puts a later write superseded
	purged     map[string][]vclock.VV         // key -> clocks of its purged tombstones
	lastSeq    map[string][]uint64            // dc -> partition -> last seq issued
	reports    []pendingReport                // captured, not yet delivered
	stats      map[string]int                 // what happened, for the summary
}

// pendingReport is an applied vector on its way from one DC to another.
type pendingReport struct {
	from, to string
	step     int
	applied  changelog.Applied
}

func (s *schedule) logf(format string, args ...any) {
	s.trace = append(s.trace, fmt.Sprintf(format, args...))
}

func (s *schedule) fail(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf(format, args...)
	}
}

// runSchedule runs one seed; the result holds its trace and its first
// failure. It never panics on a store error: the error is the failure.
func runSchedule(seed int64, empty bool) *schedule {
	r := rand.New(rand.NewSource(seed))
	s := &schedule{
		r:          r,
		empty:      empty,
		superseded: map[string]map[vclock.Dot]bool{},
		purged:     map[string][]vclock.VV{},
		lastSeq:    map[string][]uint64{},
		stats:      map[string]int{},
	}
	for i := range 3 + r.Intn(3) {
		s.dcs = append(s.dcs, fmt.Sprintf("dc%d", i+1))
	}
	parts := 1 + r.Intn(4)
	s.local = r.Intn(4) == 0
	names := []string{resolve.NameSiblings, resolve.NameLWW, resolve.NameConcat}
	def := names[r.Intn(len(names))]
	prefixes := []string{"", "s/", "l/", "c/"}
	for i := range 1 + r.Intn(6) {
		s.keys = append(s.keys, fmt.Sprintf("%sk%d", prefixes[r.Intn(len(prefixes))], i))
	}
	byName := func(n string) resolve.Resolver {
		res, err := resolve.ByName(n, resolve.Options{})
		if err != nil {
			panic(err) // a broken test, not input
		}
		return res
	}
	rules, err := resolve.NewRules(byName(def), []resolve.Rule{
		{Prefix: "s/", Resolver: byName(resolve.NameSiblings)},
		{Prefix: "l/", Resolver: byName(resolve.NameLWW)},
		{Prefix: "c/", Resolver: byName(resolve.NameConcat)},
	})
	if err != nil {
		s.fail("rules: %v", err)
		return s
	}
	mode := "mixed"
	if s.local {
		mode = "local"
	}
	s.logf("setup dcs=(%s) partitions=%d resolver=%s rules=(siblings:s/,lww:l/,concat:c/)  # keys %v, contexts %s",
		strings.Join(s.dcs, ","), parts, def, s.keys, mode)
	s.c, err = New(Options{DCs: s.dcs, Partitions: parts, Resolvers: rules})
	if err != nil {
		s.fail("setup: %v", err)
		return s
	}
	defer s.c.Close()
	for _, dc := range s.dcs {
		s.lastSeq[dc] = make([]uint64, parts)
	}

	// One seed in three is delete-heavy, with more reports and purges, to
	// press on tombstones and the purge frontier.
	s.deletes = 15
	reports, purges := 6, 4
	if r.Intn(3) == 0 {
		s.deletes, reports, purges = 40, 10, 8
	}
	step := 0
	ops := []struct {
		weight int
		run    func()
	}{
		{40, func() { s.write(step) }},
		{35, s.deliver},
		{4, s.drop},
		{4, s.repair},
		{2, s.swap},
		{reports, s.report},
		{purges, func() { s.purge(s.dcs[r.Intn(len(s.dcs))]) }},
		{2, func() {
			dc := s.dcs[r.Intn(len(s.dcs))]
			n, err := s.c.Trim(dc)
			s.logf("trim %s  # checkpoint to the end, trimmed %d", dc, n)
			s.stats["trimmed"] += n
			if err != nil {
				s.fail("trim %s: %v", dc, err)
			}
		}},
		{1, func() {
			dc := s.dcs[r.Intn(len(s.dcs))]
			s.logf("restart %s", dc)
			if err := s.c.Restart(dc); err != nil {
				s.fail("restart %s: %v", dc, err)
			}
		}},
		{4, func() {
			dc := s.dcs[r.Intn(len(s.dcs))]
			n := uint64(1 + r.Intn(5))
			s.c.DC(dc).Clock.Advance(n)
			s.logf("tick %s n=%d", dc, n)
		}},
	}
	sum := 0
	for _, op := range ops {
		sum += op.weight
	}
	for steps := 20 + r.Intn(100); step < steps && s.err == nil; step++ {
		x := r.Intn(sum)
		for _, op := range ops {
			if x -= op.weight; x < 0 {
				op.run()
				break
			}
		}
	}
	if s.err != nil {
		return s
	}
	s.finish()
	return s
}

// write makes a random write or delete at a random DC.
func (s *schedule) write(step int) {
	r, c := s.r, s.c
	dc, key := s.dcs[r.Intn(len(s.dcs))], s.keys[r.Intn(len(s.keys))]
	op := Op{Key: key, Delete: r.Intn(100) < s.deletes}
	if !op.Delete {
		op.Value = []byte(fmt.Sprintf("v%d", step))
		if s.empty && r.Intn(100) < 3 {
			op.Value = []byte{}
		}
	}
	readAt := ""
	switch x := r.Intn(10); {
	case s.local || x < 4:
		readAt = dc
	case x < 7:
		readAt = s.dcs[r.Intn(len(s.dcs))]
	}
	var read dvv.State // what the client saw
	if readAt != "" {
		ctx, err := c.ReadContext(readAt, key)
		if err != nil {
			s.fail("read %s at %s: %v", key, readAt, err)
			return
		}
		op.Context = ctx
		if read, _, err = c.Read(readAt, key); err != nil {
			s.fail("read %s at %s: %v", key, readAt, err)
			return
		}
	}
	before, _, err := c.Read(dc, key)
	if err != nil {
		s.fail("read %s at %s: %v", key, dc, err)
		return
	}
	res, err := c.Write(dc, op)
	cmd := "write"
	if op.Delete {
		cmd = "delete"
	}
	line := fmt.Sprintf("%s %s k=%s", cmd, dc, key)
	if !op.Delete {
		line += " v=" + string(op.Value)
	}
	if op.Context == nil {
		line += " ctx=none"
	} else {
		line += " ctx=" + op.Context.String()
	}
	if errors.Is(err, changelog.ErrContextAhead) {
		// The client read at a DC that is ahead of this one: the write is
		// refused, not acknowledged, and must change nothing. The refusal
		// must be right: some counter of another DC is beyond both the
		// key's clock here and what this DC applied of that DC.
		s.logf("%s  # refused: context ahead", line)
		p := event.PartitionOf(key, c.Partitions())
		applied := c.DC(dc).Store.Applied()
		ahead := false
		for odc, n := range op.Context {
			if odc != dc && n > before.Clock[odc] && !applied.Covers(odc, p, n) {
				ahead = true
			}
		}
		if !ahead {
			s.fail("%s: refused as ahead, but this DC knows every event it names (clock %s): %v", line, before.Clock, err)
			return
		}
		after, _, rerr := c.Read(dc, key)
		if rerr != nil || !sameState(after, before) {
			s.fail("%s: the refused write changed the key: %s, before %s (%v)", line, fmtState(after), fmtState(before), rerr)
			return
		}
		s.stats["refused: context ahead"]++
		return
	}
	if err != nil {
		s.logf("%s  # error", line)
		s.fail("%s: %v", line, err)
		return
	}
	ev := res.Event
	if readAt != "" {
		line += "  # read@" + readAt
	} else {
		line += "  #"
	}
	s.logf("%s -> %s ctx=%s", line, ev.Dot, ev.Context)

	// The dot is the DC's next sequence in the key's partition.
	p := event.PartitionOf(key, c.Partitions())
	if want := s.lastSeq[dc][p] + 1; ev.Dot != (vclock.Dot{DC: dc, N: want}) || ev.Partition != p {
		s.fail("%s: event %s in partition %d, want %s:%d in partition %d", line, ev.Dot, ev.Partition, dc, want, p)
		return
	}
	s.lastSeq[dc][p] = ev.Dot.N
	// A write that supersedes implicitly (or meets no live value) covers
	// the DC's whole clock. (A context naming events this DC has not
	// applied is refused above; TestContextFromAnotherDC covers that.)
	implicit := op.Context == nil && (op.Delete || c.Resolver(key).OnWrite())
	if (implicit || before.LiveCount() == 0) && !before.Clock.LessEq(ev.Context) {
		s.fail("%s: event context %s does not cover the DC's clock %s", line, ev.Context, before.Clock)
		return
	}
	// The new state is what the pure core computes, and what a read sees.
	want := before.Write(ev.Dot, ev.Context, dvv.Version{Value: op.Value, Deleted: op.Delete, HLC: ev.HLC})
	if !sameState(res.State, want) {
		s.fail("%s: store state %s, the pure core gives %s", line, fmtState(res.State), fmtState(want))
		return
	}
	// The outbox holds the bytes the harness sent: the encoding is
	// deterministic.
	sent, _ := ev.Encode(nil)
	own, err := c.DC(dc).Store.OwnEvents(p, ev.Seq, ev.Seq, 1)
	if err != nil || len(own) != 1 || !bytes.Equal(own[0], sent) {
		s.fail("%s: outbox entry for %s differs from the event sent (err %v)", line, ev.Dot, err)
		return
	}

	s.stats[cmd]++
	if !op.Delete {
		s.acked = append(s.acked, putRef{Key: key, Dot: ev.Dot, Value: op.Value})
	}
	// The write supersedes the versions the client saw, and with an
	// implicit context everything the DC held, as far as the event's
	// context covers them.
	seen := read.Siblings
	if implicit {
		seen = append(slices.Clone(seen), before.Siblings...)
	}
	markSuperseded(s.superseded, key, seen, ev.Context)
	s.checkKey(dc, key, line)
}

// markSuperseded records, in m, the puts in seen that ctx covers: a write
// with context ctx supersedes them. Only versions the writer saw count: a
// context that covers a dot its reader never saw (possible only if a DC
// applied past a gap) must not excuse the loss of that version.
func markSuperseded(m map[string]map[vclock.Dot]bool, key string, seen []dvv.Sibling, ctx vclock.VV) {
	for _, sb := range seen {
		if !sb.Deleted && ctx.Covers(sb.Dot) {
			if m[key] == nil {
				m[key] = map[vclock.Dot]bool{}
			}
			m[key][sb.Dot] = true
		}
	}
}

// deliver delivers the head of a random busy link, sometimes twice.
func (s *schedule) deliver() {
	l, ok := s.busyLink()
	if !ok {
		return
	}
	c := s.c
	ev, err := c.Peek(l)
	if err != nil {
		s.fail("peek %s: %v", l, err)
		return
	}
	before, _, err := c.Read(l.To, ev.Key)
	if err != nil {
		s.fail("read at %s: %v", l.To, err)
		return
	}
	ds, err := c.Deliver(l, 1)
	if err != nil {
		s.logf("deliver %s  # %v", l, err)
		s.fail("deliver %s: %v", l, err)
		return
	}
	d := ds[0]
	s.stats["deliver "+d.Result.Outcome.String()]++
	line := fmt.Sprintf("deliver %s  # %s", l, d)
	s.logf("%s", line)
	after, _, err := c.Read(l.To, ev.Key)
	if err != nil {
		s.fail("read at %s: %v", l.To, err)
		return
	}
	switch d.Result.Outcome {
	case changelog.Duplicate:
		s.fail("%s: a first delivery is a duplicate", line)
		return
	case changelog.Changed:
		ver := dvv.Version{Value: ev.Value, Deleted: ev.Op == event.OpDelete, HLC: ev.HLC}
		want, ok := before.Apply(ev.Dot, ev.Context, ver)
		if !ok {
			s.fail("%s: the store changed the key, but its clock %s already covered the dot", line, before.Clock)
			return
		}
		if !sameState(after, want) {
			s.fail("%s: store state %s, the pure core gives %s", line, fmtState(after), fmtState(want))
			return
		}
	default: // Obsolete or Gap: the key must not change.
		if !sameState(after, before) {
			s.fail("%s: the key changed from %s to %s", line, fmtState(before), fmtState(after))
			return
		}
		if d.Result.Outcome == changelog.Obsolete && !before.Clock.Covers(ev.Dot) {
			s.fail("%s: obsolete, but the clock %s does not cover the dot", line, before.Clock)
			return
		}
	}
	s.checkKey(l.To, ev.Key, line)
	if s.err != nil || d.Requeued || s.r.Intn(100) >= 15 {
		return
	}
	// A duplicate delivery changes nothing at all.
	dg, err := c.DC(l.To).Store.Digest()
	if err != nil {
		s.fail("digest: %v", err)
		return
	}
	d2, _, err := c.Redeliver(l)
	if err != nil {
		s.fail("redeliver %s: %v", l, err)
		return
	}
	s.stats["dup"]++
	line = fmt.Sprintf("dup %s  # %s", l, d2)
	s.logf("%s", line)
	dg2, err := c.DC(l.To).Store.Digest()
	if err != nil {
		s.fail("digest: %v", err)
		return
	}
	if d2.Result.Outcome != changelog.Duplicate || dg.Hex() != dg2.Hex() {
		s.fail("%s: a duplicate delivery gave %s and changed the digest: %v", line, d2.Result.Outcome, dg.Hex() != dg2.Hex())
	}
}

func (s *schedule) busyLink() (Link, bool) {
	var busy []Link
	for _, l := range s.c.Links() {
		if s.c.Queued(l) > 0 {
			busy = append(busy, l)
		}
	}
	if len(busy) == 0 {
		return Link{}, false
	}
	return busy[s.r.Intn(len(busy))], true
}

func (s *schedule) drop() {
	l, ok := s.busyLink()
	if !ok {
		return
	}
	ref, _, err := s.c.Drop(l)
	if err != nil {
		s.fail("drop %s: %v", l, err)
		return
	}
	s.logf("drop %s  # %s:%d partition %d", l, ref.Origin, ref.Seq, ref.Partition)
	s.stats["drop"]++
}

func (s *schedule) repair() {
	var lossy []Link
	for _, l := range s.c.Links() {
		if len(s.c.Missing(l)) > 0 {
			lossy = append(lossy, l)
		}
	}
	if len(lossy) == 0 {
		return
	}
	l := lossy[s.r.Intn(len(lossy))]
	n, err := s.c.Repair(l)
	if err != nil {
		s.fail("repair %s: %v", l, err)
		return
	}
	s.logf("repair %s  # re-sent %d", l, n)
}

func (s *schedule) swap() {
	l, ok := s.busyLink()
	if !ok {
		return
	}
	if ok, err := s.c.Swap(l); err != nil {
		s.fail("reorder %s: %v", l, err)
	} else if ok {
		s.logf("reorder %s", l)
	}
}

// report sends applied vectors: to everyone at once, from one DC to
// another, or late (a report captured earlier, delivered now).
func (s *schedule) report() {
	if len(s.reports) > 0 && s.r.Intn(3) == 0 {
		i := s.r.Intn(len(s.reports))
		pr := s.reports[i]
		s.reports = append(s.reports[:i], s.reports[i+1:]...)
		s.c.DC(pr.to).Store.SetPeerApplied(pr.from, pr.applied)
		s.logf("report %s->%s  # late: captured at trace line %d", pr.from, pr.to, pr.step)
		return
	}
	if s.r.Intn(3) == 0 {
		a := s.dcs[s.r.Intn(len(s.dcs))]
		b := s.dcs[s.r.Intn(len(s.dcs))]
		if a != b {
			s.reports = append(s.reports, pendingReport{from: a, to: b, step: len(s.trace) + 1, applied: s.c.DC(a).Store.Applied()})
			s.logf("# capture a report %s->%s, delivered later (trace line %d)", a, b, len(s.trace))
		}
		return
	}
	if s.r.Intn(2) == 0 {
		if err := s.c.ReportAll(); err != nil {
			s.fail("report all: %v", err)
		}
		s.logf("report all")
		return
	}
	a := s.dcs[s.r.Intn(len(s.dcs))]
	b := s.dcs[s.r.Intn(len(s.dcs))]
	if a == b {
		return
	}
	if err := s.c.Report(a, b); err != nil {
		s.fail("report %s->%s: %v", a, b, err)
	}
	s.logf("report %s->%s", a, b)
}

// purge purges dc and remembers the clock of every key it removed.
func (s *schedule) purge(dc string) {
	snap, err := s.c.Snapshot(dc)
	if err != nil {
		s.fail("snapshot %s: %v", dc, err)
		return
	}
	n, err := s.c.Purge(dc)
	if err != nil {
		s.fail("purge %s: %v", dc, err)
		return
	}
	line := fmt.Sprintf("purge %s  # purged %d", dc, n)
	after, err := s.c.Snapshot(dc)
	if err != nil {
		s.fail("snapshot %s: %v", dc, err)
		return
	}
	gone := 0
	for _, key := range sortedKeys(snap) {
		st := snap[key]
		if _, ok := after[key]; ok {
			continue
		}
		gone++
		if st.LiveCount() > 0 {
			s.fail("%s: purged %s, which held a live value: %s", line, key, fmtState(st))
			return
		}
		s.purged[key] = append(s.purged[key], st.Clock)
		s.stats["revival checks armed"]++
		line += fmt.Sprintf(" %s%s", key, st.Clock)
	}
	s.logf("%s", line)
	s.stats["purged keys"] += n
	if gone != n {
		s.fail("%s: %d keys disappeared", line, gone)
	}
}

// checkKey checks the per-step invariants of key at dc: (c) and (d).
func (s *schedule) checkKey(dc, key, line string) {
	st, _, err := s.c.Read(dc, key)
	if err != nil {
		s.fail("%s: read %s at %s: %v", line, key, dc, err)
		return
	}
	if msg := s.keyViolation(key, st); msg != "" {
		s.fail("%s: %s at %s: %s", line, key, dc, msg)
	}
}

func (s *schedule) keyViolation(key string, st dvv.State) string {
	if s.local {
		per := map[string]int{}
		for _, sb := range st.Siblings {
			if per[sb.Dot.DC]++; per[sb.Dot.DC] > 1 {
				return fmt.Sprintf("(c) with local read contexts, origin %s has two siblings: %s", sb.Dot.DC, fmtState(st))
			}
		}
		if st.LiveCount() > len(s.dcs) {
			return fmt.Sprintf("(c) %d live siblings with %d DCs: %s", st.LiveCount(), len(s.dcs), fmtState(st))
		}
	}
	for _, pc := range s.purged[key] {
		for _, sb := range st.Live() {
			if pc.Covers(sb.Dot) {
				return fmt.Sprintf("(d) the key was purged with clock %s, but its old value %s %q is live again: %s", pc, sb.Dot, sb.Value, fmtState(st))
			}
		}
	}
	return ""
}

// finish drains every link, reports, purges everywhere and checks the
// end-state properties.
func (s *schedule) finish() {
	c := s.c
	s.logf("deliver all")
	err := c.DeliverAll(func(d Delivery) {
		if d.Result.Outcome == changelog.Duplicate {
			s.fail("deliver all: %s: a first delivery is a duplicate", d)
		}
	})
	if err != nil {
		s.fail("deliver all: %v", err)
		return
	}
	for round := 0; round < 2; round++ {
		if err := c.ReportAll(); err != nil {
			s.fail("report all: %v", err)
			return
		}
		s.logf("report all")
		for _, dc := range s.dcs {
			s.purge(dc)
		}
	}
	if s.err != nil {
		return
	}

	// (a) convergence.
	digests, equal, err := c.Digests()
	if err != nil {
		s.fail("digests: %v", err)
		return
	}
	snaps := map[string]map[string]dvv.State{}
	for _, dc := range s.dcs {
		if snaps[dc], err = c.Snapshot(dc); err != nil {
			s.fail("snapshot %s: %v", dc, err)
			return
		}
	}
	if !equal {
		// Show the keys whose states differ somewhere.
		var b strings.Builder
		ref := snaps[s.dcs[0]]
		for _, dc := range s.dcs {
			fmt.Fprintf(&b, "\n  %s digest %s:", dc, digests[dc][:12])
			for _, key := range sortedKeys(snaps[dc]) {
				st := snaps[dc][key]
				differs := false
				for _, o := range s.dcs {
					if !strictlySame(st, snaps[o][key]) {
						differs = true
					}
				}
				if differs {
					fmt.Fprintf(&b, "\n    %s %s", key, fmtState(st))
				}
			}
			for _, key := range sortedKeys(ref) {
				if _, ok := snaps[dc][key]; !ok {
					fmt.Fprintf(&b, "\n    %s absent", key)
				}
			}
		}
		s.fail("(a) the DCs did not converge; the keys that differ:%s", b.String())
		return
	}
	final := snaps[s.dcs[0]]

	// (b) no acknowledged put is lost.
	logged := map[string]map[string]bool{} // key -> discarded dots in some conflict log
	for _, dc := range s.dcs {
		cs, err := c.DC(dc).Store.Conflicts(changelog.ConflictFilter{})
		if err != nil {
			s.fail("conflicts at %s: %v", dc, err)
			return
		}
		for _, cf := range cs {
			for _, v := range cf.Discarded {
				if logged[cf.Key] == nil {
					logged[cf.Key] = map[string]bool{}
				}
				logged[cf.Key][v.Dot] = true
			}
		}
	}
	for _, a := range s.acked {
		switch {
		case s.superseded[a.Key][a.Dot]:
			s.stats["puts superseded"]++
		case logged[a.Key][a.Dot.String()]:
			s.stats["puts live, logged as discarded"]++
		default:
			s.stats["puts live"]++
		}
	}
	if lost := lostPuts(s.acked, s.superseded, final, logged); len(lost) > 0 {
		s.fail("(b) acknowledged puts lost: %s", fmtPuts(lost))
		return
	}
	// Every version a resolver discards in the end is in a conflict log.
	for _, key := range sortedKeys(final) {
		for _, d := range c.Resolver(key).Resolve(key, final[key].Siblings).Discarded {
			if !logged[key][d.Dot.String()] {
				s.fail("%s: %s discards %s %q, which no conflict log lists", key, c.Resolver(key).Name(), d.Dot, d.Value)
				return
			}
		}
	}
	// (c), (d) on the final state; and every tombstone-only key is gone,
	// since everything is applied and reported everywhere.
	for _, key := range sortedKeys(final) {
		st := final[key]
		if msg := s.keyViolation(key, st); msg != "" {
			s.fail("final %s: %s", key, msg)
			return
		}
		if st.LiveCount() == 0 {
			s.fail("final %s: a tombstone-only key survived the final report and purge: %s", key, fmtState(st))
			return
		}
	}
}

// lostPuts returns the acknowledged puts that are neither live in final,
// nor covered by a later write's context, nor in a conflict log.
func lostPuts(acked []putRef, superseded map[string]map[vclock.Dot]bool, final map[string]dvv.State, logged map[string]map[string]bool) []putRef {
	var lost []putRef
	for _, a := range acked {
		if superseded[a.Key][a.Dot] || logged[a.Key][a.Dot.String()] {
			continue
		}
		live := false
		for _, sb := range final[a.Key].Live() {
			if sb.Dot == a.Dot {
				live = true
				if !bytes.Equal(sb.Value, a.Value) {
					return append(lost, a) // the dot survived with another value
				}
			}
		}
		if !live {
			lost = append(lost, a)
		}
	}
	return lost
}

// strictlySame is sameState that also tells a nil value from an empty one,
// as the store's encoding (and so the digest) does.
func strictlySame(a, b dvv.State) bool {
	if !sameState(a, b) {
		return false
	}
	for i := range a.Siblings {
		if (a.Siblings[i].Value == nil) != (b.Siblings[i].Value == nil) {
			return false
		}
	}
	return true
}

func sameState(a, b dvv.State) bool {
	if !a.Clock.Equal(b.Clock) || len(a.Siblings) != len(b.Siblings) {
		return false
	}
	for i := range a.Siblings {
		x, y := a.Siblings[i], b.Siblings[i]
		if x.Dot != y.Dot || x.Deleted != y.Deleted || x.HLC != y.HLC || !bytes.Equal(x.Value, y.Value) {
			return false
		}
	}
	return true
}

// fmtState renders a state for failure messages; a nil value prints as
// nil, apart from an empty one ("").
func fmtState(st dvv.State) string {
	parts := make([]string, 0, len(st.Siblings))
	for _, sb := range st.Siblings {
		switch {
		case sb.Deleted:
			parts = append(parts, sb.Dot.String()+" tombstone")
		case sb.Value == nil:
			parts = append(parts, sb.Dot.String()+" nil")
		default:
			parts = append(parts, fmt.Sprintf("%s %q", sb.Dot, sb.Value))
		}
	}
	return fmt.Sprintf("clock=%s [%s]", st.Clock, strings.Join(parts, ", "))
}

func fmtPuts(ps []putRef) string {
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = fmt.Sprintf("%s %s=%q", p.Dot, p.Key, p.Value)
	}
	return strings.Join(parts, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
