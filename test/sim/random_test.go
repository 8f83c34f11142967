package sim

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

var (
	flagSeeds = flag.Int("sim.seeds", 0, "random schedules of TestRandomSchedules to run, seeds 1..N (default 400, 100 with -short)")
	flagSeed  = flag.Int64("sim.seed", 0, "replay only this seed of TestRandomSchedules, with its trace")
	flagEmpty = flag.Bool("sim.empty", true, "let random schedules write empty values")
)

// TestRandomSchedules runs seeded random schedules of writes, deletes,
// multi-key transactions, deliveries (one message at a time, or several in
// one fetch), duplicates, drops with repair, gap repair from the origin,
// reorderings, applied-vector reports and purges over 3 to 5 real stores
// joined as a mesh, a ring or a star, then drains every link and checks the
// contract of docs/DESIGN.md:
//
//   - (a) every DC ends with the same digest (convergence);
//   - (b) every acknowledged put, a transaction's included, is a live
//     sibling in the end, or a later write superseded it (the writer saw
//     it, and the write's context covers its dot), or a conflict log lists
//     it (no lost writes);
//   - (c) when every write reads at its own DC first, each origin has at
//     most one sibling per key, so live siblings never outnumber the DCs;
//   - (d) once a deleted key is purged, no value it had comes back;
//   - (e) after every step, every DC has applied each transaction wholly or
//     not at all (its applied vector covers every op or none), and one
//     consistent read (Store.Scan) never shows part of one: no op is a
//     sibling where the transaction is not applied, and where it is
//     applied every op's key clock covers the op (docs/DESIGN.md,
//     invariant 11);
//   - (f) a transaction op that a later write superseded (the writer saw
//     it) never shows where that later write is known, whichever arrives
//     first, and in the end shows nowhere (overtaking).
//
// Along the way each delivery and write is checked against the pure core
// (dvv.State.Apply and Write, op by op for a transaction), a first
// delivery is never a duplicate (unless gap repair applied it before), a
// duplicate changes nothing, a held transaction holds every op, a
// forwarding DC forwards each message whole (the harness checks), and a
// gap happens only on a link the schedule disturbed.
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
	// 400 seeds by default: with TestRandom's 1000 seeds of the whole
	// protocol, the package stays near a minute under -race in CI.
	n := *flagSeeds
	if n == 0 {
		n = 400
		if testing.Short() {
			n = 100
		}
	}
	runSeeds(t, 1, n, 1<<20, func(seed uint64) seedOutcome {
		s := runSchedule(int64(seed), *flagEmpty)
		return seedOutcome{err: s.err, trace: s.trace, stats: s.stats}
	}, func(seed uint64) string { return replay(int64(seed)) })
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

// txnRec is an acknowledged transaction: its ops as its origin sent them.
type txnRec struct {
	origin string
	ops    []*event.Event
	line   int // the trace line that wrote it
}

func (t txnRec) String() string {
	parts := make([]string, len(t.ops))
	for i, ev := range t.ops {
		parts[i] = fmt.Sprintf("%s %s (partition %d)", ev.Dot, ev.Key, ev.Partition)
	}
	return fmt.Sprintf("transaction of trace line %d [%s]", t.line, strings.Join(parts, ", "))
}

// overtake is a transaction's op that a later write superseded: the later
// writer saw the op, and its context covers the op's dot.
type overtake struct {
	key          string
	op, later    vclock.Dot
	txn, laterAt int // trace lines
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
	txns    int  // percentage of writes that are transactions
	empty   bool // empty values may be written

	trace []string
	err   error

	acked      []putRef
	superseded map[string]map[vclock.Dot]bool // key -> puts a later write superseded
	purged     map[string][]vclock.VV         // key -> clocks of its purged tombstones
	purgedAt   map[string]map[string]bool     // dc -> keys it purged at some point
	lastSeq    map[string][]uint64            // dc -> partition -> last seq issued
	reports    []pendingReport                // captured, not yet delivered
	stats      map[string]int                 // what happened, for the summary

	written   []txnRec                      // acknowledged transactions
	txnOps    map[string]map[vclock.Dot]int // key -> dot of a transaction op -> index in written
	overtakes map[string][]overtake         // key -> its transaction ops a later write superseded
	// dirty holds the DCs where the step applied remote events or
	// restarted the store: true where it applied a transaction or
	// restarted (checkAtomic then reads the DC in one snapshot).
	dirty map[string]bool
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
		purgedAt:   map[string]map[string]bool{},
		lastSeq:    map[string][]uint64{},
		stats:      map[string]int{},
		txnOps:     map[string]map[vclock.Dot]int{},
		overtakes:  map[string][]overtake{},
		dirty:      map[string]bool{},
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
	// Half the seeds run a mesh, a quarter a ring, a quarter a star around
	// a random hub: forwarding DCs carry transactions on.
	topology, hub := config.Mesh, ""
	switch r.Intn(4) {
	case 2:
		topology = config.Ring
	case 3:
		topology, hub = config.Star, s.dcs[r.Intn(len(s.dcs))]
	}
	// A fifth of the writes are transactions, in seeds with two keys or more.
	if len(s.keys) > 1 {
		s.txns = 20
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
	place := "topology=" + topology
	if hub != "" {
		place += " hub=" + hub
	}
	s.logf("setup dcs=(%s) partitions=%d resolver=%s rules=(siblings:s/,lww:l/,concat:c/) %s  # keys %v, contexts %s, %d%% transactions",
		strings.Join(s.dcs, ","), parts, def, place, s.keys, mode, s.txns)
	s.c, err = New(Options{DCs: s.dcs, Partitions: parts, Resolvers: rules, Topology: topology, Hub: hub})
	if err != nil {
		s.fail("setup: %v", err)
		return s
	}
	defer s.c.Close()
	for _, dc := range s.dcs {
		s.lastSeq[dc] = make([]uint64, parts)
		s.purgedAt[dc] = map[string]bool{}
	}
	s.stats["seeds "+topology]++

	// One seed in three is delete-heavy, with more reports and purges, to
	// press on tombstones and the purge frontier.
	s.deletes = 15
	reports, purges := 6, 4
	if r.Intn(3) == 0 {
		s.deletes, reports, purges = 40, 10, 8
	}
	// One seed in four is lossy: more drops, more of them repaired by gap
	// repair from the origin (fill), which then follows transactions
	// across partitions.
	drops, fills := 4, 3
	if r.Intn(4) == 0 {
		drops, fills = 9, 8
	}
	step := 0
	ops := []struct {
		weight int
		run    func()
	}{
		{40, func() {
			if r.Intn(100) < s.txns {
				// A transaction of n ops takes n steps of the seed's
				// length, as n writes would: seeds stay as long, in
				// writes, as they were before transactions.
				step += s.writeTxn(step) - 1
			} else {
				s.write(step)
			}
		}},
		{33, s.deliver},
		{fills, s.fill},
		{drops, s.drop},
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
			s.touch(dc, true)
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
		if s.err == nil {
			s.checkAtomic()
		}
	}
	if s.err != nil {
		return s
	}
	s.finish()
	return s
}

// readFor picks where the client of a write at dc read key first: its own
// DC, another, or nowhere (""), and returns that context and what it saw.
func (s *schedule) readFor(dc, key string) (readAt string, ctx vclock.VV, read dvv.State, err error) {
	switch x := s.r.Intn(10); {
	case s.local || x < 4:
		readAt = dc
	case x < 7:
		readAt = s.dcs[s.r.Intn(len(s.dcs))]
	}
	if readAt == "" {
		return "", nil, dvv.State{}, nil
	}
	if ctx, err = s.c.ReadContext(readAt, key); err != nil {
		return "", nil, dvv.State{}, err
	}
	read, _, err = s.c.Read(readAt, key)
	return readAt, ctx, read, err
}

// value picks a value for a put.
func (s *schedule) value(v string) []byte {
	if s.empty && s.r.Intn(100) < 3 {
		return []byte{}
	}
	return []byte(v)
}

// checkRefusal checks a write refused because its context is ahead: the
// refusal must be right (some counter of another DC is beyond both the
// key's clock here and what this DC applied of that DC).
func (s *schedule) checkRefusal(dc string, op Op, before dvv.State, line string, err error) {
	p := event.PartitionOf(op.Key, s.c.Partitions())
	applied := s.c.DC(dc).Store.Applied()
	for odc, n := range op.Context {
		if odc != dc && n > before.Clock[odc] && !applied.Covers(odc, p, n) {
			return
		}
	}
	s.fail("%s: refused as ahead, but this DC knows every event the context of %s names (clock %s): %v", line, op.Key, before.Clock, err)
}

// write makes a random write or delete at a random DC.
func (s *schedule) write(step int) {
	r, c := s.r, s.c
	dc, key := s.dcs[r.Intn(len(s.dcs))], s.keys[r.Intn(len(s.keys))]
	op := Op{Key: key, Delete: r.Intn(100) < s.deletes}
	if !op.Delete {
		op.Value = s.value(fmt.Sprintf("v%d", step))
	}
	readAt, ctx, read, err := s.readFor(dc, key)
	if err != nil {
		s.fail("read %s at %s: %v", key, readAt, err)
		return
	}
	op.Context = ctx
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
		// refused, not acknowledged, and must change nothing.
		s.logf("%s  # refused: context ahead", line)
		s.checkRefusal(dc, op, before, line, err)
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

	if !s.checkMade(dc, op, ev, before, res.State, line) {
		return
	}
	// The outbox holds the bytes the harness sent: the encoding is
	// deterministic.
	sent, _ := ev.Encode(nil)
	own, err := c.DC(dc).Store.OwnEvents(ev.Partition, ev.Seq, ev.Seq, 1)
	if err != nil || len(own) != 1 || !bytes.Equal(own[0], sent) {
		s.fail("%s: outbox entry for %s differs from the event sent (err %v)", line, ev.Dot, err)
		return
	}
	s.stats[cmd]++
	s.acknowledged(op, ev, read, before, "single write")
	s.checkKey(dc, key, line)
}

// checkMade checks an acknowledged local write of op, made as ev at dc over
// the key's state before: its dot is the DC's next sequence in the key's
// partition, its context covers what it must, and the new state the write
// returned (after) is what the pure core computes. It reports whether all
// held.
func (s *schedule) checkMade(dc string, op Op, ev *event.Event, before, after dvv.State, line string) bool {
	c := s.c
	p := event.PartitionOf(op.Key, c.Partitions())
	if want := s.lastSeq[dc][p] + 1; ev.Dot != (vclock.Dot{DC: dc, N: want}) || ev.Partition != p {
		s.fail("%s: %s: event %s in partition %d, want %s:%d in partition %d", line, op.Key, ev.Dot, ev.Partition, dc, want, p)
		return false
	}
	s.lastSeq[dc][p] = ev.Dot.N
	// A write that supersedes implicitly (or meets no live value) covers
	// the DC's whole clock. (A context naming events this DC has not
	// applied is refused; TestContextFromAnotherDC covers that.)
	implicit := op.Context == nil && (op.Delete || c.Resolver(op.Key).OnWrite())
	if (implicit || before.LiveCount() == 0) && !before.Clock.LessEq(ev.Context) {
		s.fail("%s: %s: event context %s does not cover the DC's clock %s", line, op.Key, ev.Context, before.Clock)
		return false
	}
	want := before.Write(ev.Dot, ev.Context, dvv.Version{Value: op.Value, Deleted: op.Delete, HLC: ev.HLC})
	if !sameState(after, want) {
		s.fail("%s: %s: store state %s, the pure core gives %s", line, op.Key, fmtState(after), fmtState(want))
		return false
	}
	return true
}

// acknowledged records an acknowledged write made as ev: a put to keep, the
// versions it supersedes (those the client saw, and with an implicit
// context everything the DC held, as far as the event's context covers
// them), and among those the transaction ops it overtakes.
func (s *schedule) acknowledged(op Op, ev *event.Event, read, before dvv.State, kind string) {
	if !op.Delete {
		s.acked = append(s.acked, putRef{Key: op.Key, Dot: ev.Dot, Value: op.Value})
	}
	seen := read.Siblings
	if op.Context == nil && (op.Delete || s.c.Resolver(op.Key).OnWrite()) {
		seen = append(slices.Clone(seen), before.Siblings...)
	}
	for _, dot := range markSuperseded(s.superseded, op.Key, seen, ev.Context) {
		if i, ok := s.txnOps[op.Key][dot]; ok && dot != ev.Dot {
			s.overtakes[op.Key] = append(s.overtakes[op.Key], overtake{key: op.Key, op: dot, later: ev.Dot, txn: s.written[i].line, laterAt: len(s.trace)})
			s.stats["overtaking pairs: a "+kind+" supersedes a transaction op"]++
		}
	}
}

// writeTxn makes a random transaction of 2 to 6 distinct keys at a random
// DC, mixing puts and deletes, each op with its own client context, and
// returns its number of ops.
func (s *schedule) writeTxn(step int) (n int) {
	r, c := s.r, s.c
	dc := s.dcs[r.Intn(len(s.dcs))]
	n = 2 + r.Intn(min(5, len(s.keys)-1))
	perm := r.Perm(len(s.keys))[:n]
	ops := make([]Op, n)
	reads := make([]dvv.State, n)
	befores := make([]dvv.State, n)
	parts := []string{"txn " + dc}
	for i, ki := range perm {
		key := s.keys[ki]
		op := Op{Key: key, Delete: r.Intn(100) < s.deletes}
		if !op.Delete {
			op.Value = s.value(fmt.Sprintf("t%d.%d", step, i))
		}
		readAt, ctx, read, err := s.readFor(dc, key)
		if err != nil {
			s.fail("read %s at %s: %v", key, readAt, err)
			return n
		}
		op.Context, reads[i] = ctx, read
		if befores[i], _, err = c.Read(dc, key); err != nil {
			s.fail("read %s at %s: %v", key, dc, err)
			return n
		}
		ops[i] = op
		what := key + "=" + string(op.Value)
		if op.Delete {
			what = "del:" + key
		}
		if readAt != "" {
			what += "[" + op.Context.String() + " read@" + readAt + "]"
		}
		parts = append(parts, what)
	}
	line := strings.Join(parts, " ")
	res, err := c.WriteTxn(dc, ops)
	if errors.Is(err, changelog.ErrContextAhead) {
		// One op's context is ahead: nothing of the transaction is written.
		s.logf("%s  # refused: context ahead", line)
		var te *changelog.TxnError
		if !errors.As(err, &te) || te.Index < 0 || te.Index >= n {
			s.fail("%s: refused without naming the op: %v", line, err)
			return n
		}
		s.checkRefusal(dc, ops[te.Index], befores[te.Index], line, err)
		for i, op := range ops {
			after, _, rerr := c.Read(dc, op.Key)
			if rerr != nil || !sameState(after, befores[i]) {
				s.fail("%s: the refused transaction changed %s: %s, before %s (%v)", line, op.Key, fmtState(after), fmtState(befores[i]), rerr)
				return n
			}
		}
		issued := c.DC(dc).Store.Applied()[dc]
		if !slices.Equal(issued, s.lastSeq[dc]) {
			s.fail("%s: the refused transaction moved %s's sequences to %v, want %v", line, dc, issued, s.lastSeq[dc])
		}
		s.stats["txn refused: context ahead"]++
		return n
	}
	if err != nil {
		s.logf("%s  # error", line)
		s.fail("%s: %v", line, err)
		return n
	}
	if len(res) != n {
		s.fail("%s: %d results for %d ops", line, len(res), n)
		return n
	}
	evs := make([]*event.Event, n)
	dots := make([]string, n)
	for i, w := range res {
		evs[i] = w.Event
		dots[i] = w.Event.Dot.String()
	}
	s.logf("%s  # -> %s hlc=%d", line, strings.Join(dots, " "), evs[0].HLC)
	for i, ev := range evs {
		if ev.HLC != evs[0].HLC || ev.TxnOps != n || ev.Key != ops[i].Key {
			s.fail("%s: op %d is %s %s with HLC %d and TxnOps %d; want key %s, the one HLC %d, TxnOps %d", line, i, ev.Dot, ev.Key, ev.HLC, ev.TxnOps, ops[i].Key, evs[0].HLC, n)
			return n
		}
		if !s.checkMade(dc, ops[i], ev, befores[i], res[i].State, line) {
			return n
		}
	}
	// One outbox entry holds the whole transaction, and every op's
	// sequence leads to it.
	sent, err := event.EncodeTxn(nil, evs)
	if err != nil {
		s.fail("%s: encode: %v", line, err)
		return n
	}
	for _, ev := range evs {
		own, err := c.DC(dc).Store.OwnEvents(ev.Partition, ev.Seq, ev.Seq, 1)
		if err != nil || len(own) != 1 || !bytes.Equal(own[0], sent) {
			s.fail("%s: the outbox entry for op %s is not the one transaction message (%d entries, err %v)", line, ev.Dot, len(own), err)
			return n
		}
	}
	s.stats["txn"]++
	s.stats["txn ops"] += n
	idx := len(s.written)
	s.written = append(s.written, txnRec{origin: dc, ops: evs, line: len(s.trace)})
	for i, op := range ops {
		s.acknowledged(op, evs[i], reads[i], befores[i], "transaction")
	}
	for _, ev := range evs {
		if s.txnOps[ev.Key] == nil {
			s.txnOps[ev.Key] = map[vclock.Dot]int{}
		}
		s.txnOps[ev.Key][ev.Dot] = idx
	}
	// Every op is visible at the origin once the transaction is
	// acknowledged.
	for i, ev := range evs {
		st, _, err := c.Read(dc, ev.Key)
		if err != nil || !sameState(st, res[i].State) {
			s.fail("%s: %s: a read after the transaction gives %s, not %s (%v)", line, ev.Key, fmtState(st), fmtState(res[i].State), err)
			return n
		}
		if msg := s.keyViolation(ev.Key, st); msg != "" {
			s.fail("%s: %s at %s: %s", line, ev.Key, dc, msg)
			return n
		}
	}
	return n
}

// markSuperseded records, in m, the puts in seen that ctx covers: a write
// with context ctx supersedes them. Only versions the writer saw count: a
// context that covers a dot its reader never saw (possible only if a DC
// applied past a gap) must not excuse the loss of that version. It returns
// the dots of every version in seen (tombstones too) that ctx covers.
func markSuperseded(m map[string]map[vclock.Dot]bool, key string, seen []dvv.Sibling, ctx vclock.VV) []vclock.Dot {
	var out []vclock.Dot
	for _, sb := range seen {
		if !ctx.Covers(sb.Dot) {
			continue
		}
		out = append(out, sb.Dot)
		if !sb.Deleted {
			if m[key] == nil {
				m[key] = map[vclock.Dot]bool{}
			}
			m[key][sb.Dot] = true
		}
	}
	return out
}

// deliver delivers the head of a random busy link, or a few messages off
// it in one fetch (one Store.Apply), and sometimes redelivers the last.
func (s *schedule) deliver() {
	l, ok := s.busyLink()
	if !ok {
		return
	}
	c := s.c
	n := 1
	if s.r.Intn(4) == 0 {
		n = 2 + s.r.Intn(3)
	}
	heads, err := c.Head(l, n)
	if err != nil {
		s.fail("peek %s: %v", l, err)
		return
	}
	before := map[string]dvv.State{}
	for _, evs := range heads {
		for _, ev := range evs {
			if before[ev.Key], _, err = c.Read(l.To, ev.Key); err != nil {
				s.fail("read at %s: %v", l.To, err)
				return
			}
		}
	}
	var ds []Delivery
	line := "deliver " + l.String()
	if n == 1 {
		ds, err = c.Deliver(l, 1)
	} else {
		ds, err = c.DeliverBatch(l, n)
		line += fmt.Sprintf(" batch=%d", n)
		s.stats["deliver batch"]++
	}
	for _, d := range ds {
		s.logf("%s  # %s", line, d)
	}
	if err != nil {
		s.logf("%s  # %v", line, err)
		s.fail("%s: %v", line, err)
		return
	}
	s.checkDeliveries(l.To, before, ds, line)
	s.touch(l.To, slices.ContainsFunc(ds, freshTxn))
	last := ds[len(ds)-1]
	if s.err != nil || last.Requeued || last.Loop != nil || s.r.Intn(100) >= 15 {
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
	for _, r := range d2.Results {
		if r.Outcome != changelog.Duplicate || r.Forwarded {
			s.fail("%s: a duplicate delivery gave %s (forwarded %v)", line, r.Outcome, r.Forwarded)
			return
		}
	}
	if dg.Hex() != dg2.Hex() {
		s.fail("%s: a duplicate delivery changed the digest", line)
	}
}

// fill delivers the head of a random busy link, repairing any gap it meets
// from the origin's outbox as the bridge does.
func (s *schedule) fill() {
	l, ok := s.busyLink()
	if !ok {
		return
	}
	before, err := s.c.Snapshot(l.To)
	if err != nil {
		s.fail("snapshot %s: %v", l.To, err)
		return
	}
	ds, err := s.c.Fill(l)
	line := "fill " + l.String()
	for _, d := range ds {
		s.logf("%s  # %s", line, d)
		if d.Fetched {
			s.stats["fill fetched"]++
			if d.Held() {
				s.stats["fill fetched a transaction held for another partition"]++
			}
		}
	}
	if err != nil {
		s.logf("%s  # %v", line, err)
		s.fail("%s: %v", line, err)
		return
	}
	s.stats["fill"]++
	s.checkDeliveries(l.To, before, ds, line)
	s.touch(l.To, slices.ContainsFunc(ds, freshTxn))
}

// checkDeliveries checks the messages ds, applied at dc in this order,
// against the pure core, op by op, starting from before (the states of
// every key they touch): a changed op is what dvv.State.Apply gives, an
// obsolete one was covered, a held or duplicate one changed nothing; a
// first delivery is never a duplicate, unless gap repair applied it
// before, and then it is nothing else; and a held transaction holds every
// op.
func (s *schedule) checkDeliveries(dc string, before map[string]dvv.State, ds []Delivery, line string) {
	model := map[string]dvv.State{}
	for _, d := range ds {
		if d.Loop != nil {
			s.stats["deliver loop dropped"]++
			continue
		}
		if d.Forwarded() {
			s.stats["forwarded"]++
		}
		if d.Txn() {
			switch {
			case d.Held():
				s.stats["deliver txn held"]++
			case !d.Fresh():
				s.stats["deliver txn duplicate"]++
			default:
				s.stats["deliver txn applied"]++
			}
		}
		for i, ev := range d.Events {
			res := d.Results[i]
			if !d.Txn() {
				s.stats["deliver "+res.Outcome.String()]++
			}
			st, ok := model[ev.Key]
			if !ok {
				st = before[ev.Key]
			}
			switch {
			case d.Refilled && res.Outcome != changelog.Duplicate:
				s.fail("%s: %s: gap repair applied this message before, but now it is %s, not a duplicate", line, ev.Dot, res.Outcome)
				return
			case d.Txn() && d.Held() && res.Outcome != changelog.Gap:
				s.fail("%s: a held transaction took op %s %s: %s (the others wait)", line, ev.Dot, ev.Key, res.Outcome)
				return
			}
			switch res.Outcome {
			case changelog.Duplicate:
				if !d.Refilled {
					s.fail("%s: %s: a first delivery is a duplicate", line, ev.Dot)
					return
				}
			case changelog.Changed:
				ver := dvv.Version{Value: ev.Value, Deleted: ev.Op == event.OpDelete, HLC: ev.HLC}
				next, ok := st.Apply(ev.Dot, ev.Context, ver)
				if !ok {
					s.fail("%s: %s: the store changed %s, but its clock %s already covered the dot", line, ev.Dot, ev.Key, st.Clock)
					return
				}
				model[ev.Key] = next
			case changelog.Obsolete:
				if !st.Clock.Covers(ev.Dot) {
					s.fail("%s: %s obsolete, but %s's clock %s does not cover the dot", line, ev.Dot, ev.Key, st.Clock)
					return
				}
				if d.Txn() {
					s.stats["txn ops overtaken (obsolete on arrival)"]++
				}
			}
			if _, ok := model[ev.Key]; !ok {
				model[ev.Key] = st
			}
		}
	}
	for _, key := range sortedKeys(model) {
		after, _, err := s.c.Read(dc, key)
		if err != nil {
			s.fail("read at %s: %v", dc, err)
			return
		}
		if !sameState(after, model[key]) {
			s.fail("%s: %s at %s: store state %s, the pure core gives %s", line, key, dc, fmtState(after), fmtState(model[key]))
			return
		}
		s.checkKey(dc, key, line)
		if msg := s.overtakeViolation(key, model[key]); msg != "" {
			s.fail("%s: at %s: %s", line, dc, msg)
			return
		}
	}
}

// overtakeViolation checks (f) on key's state st at some DC: no transaction
// op of the key that a later write superseded shows where that later write
// is known.
func (s *schedule) overtakeViolation(key string, st dvv.State) string {
	for _, o := range s.overtakes[key] {
		if st.Clock.Covers(o.later) && slices.ContainsFunc(st.Siblings, func(sb dvv.Sibling) bool { return sb.Dot == o.op }) {
			return fmt.Sprintf("(f) %s knows %s (trace line %d), which superseded transaction op %s (trace line %d), but still shows that op: %s",
				key, o.later, o.laterAt, o.op, o.txn, fmtState(st))
		}
	}
	return ""
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

// drop loses the head of a random busy link, or a run of two or three
// messages (as a stream that lost its tail in a power failure).
func (s *schedule) drop() {
	l, ok := s.busyLink()
	if !ok {
		return
	}
	n := 1
	if s.r.Intn(3) == 0 {
		n = 2 + s.r.Intn(2)
	}
	for range n {
		refs, ok, err := s.c.Drop(l)
		if err != nil {
			s.fail("drop %s: %v", l, err)
			return
		}
		if !ok {
			return
		}
		parts := make([]string, len(refs))
		for i, r := range refs {
			parts[i] = r.String()
		}
		s.logf("drop %s  # %s", l, strings.Join(parts, ", "))
		s.stats["drop"]++
	}
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
		s.purgedAt[dc][key] = true
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

// touch marks dc as one where the step applied remote events or restarted
// the store; scan asks for a consistent read of it too (see checkAtomic).
func (s *schedule) touch(dc string, scan bool) { s.dirty[dc] = s.dirty[dc] || scan }

// freshTxn reports whether d applied a transaction: the step that makes
// one visible, after which checkAtomic reads the DC in one snapshot.
func freshTxn(d Delivery) bool { return d.Txn() && d.Fresh() }

// checkAtomic checks (e) and (f) after a step at every DC where it applied
// remote events or restarted the store (nothing else moves an applied
// vector, and a new transaction is applied nowhere but at its origin yet):
// the applied vector covers every op of each transaction or none; and
// where the step applied a transaction or restarted the store, one
// consistent read (Store.Scan) shows no part of a transaction not applied
// there, shows each applied op's key covering it (unless that DC purged
// the key), and shows no transaction op where the write that superseded it
// is known. (checkDeliveries checks (f) on every key a delivery changes.)
func (s *schedule) checkAtomic() {
	dirty := s.dirty
	s.dirty = map[string]bool{}
	if len(s.written) == 0 {
		return
	}
	for _, dc := range s.dcs {
		scan, ok := dirty[dc]
		if !ok {
			continue
		}
		a := s.c.DC(dc).Store.Applied()
		var snap map[string]dvv.State
		if scan {
			var err error
			if snap, err = s.c.Snapshot(dc); err != nil {
				s.fail("snapshot %s: %v", dc, err)
				return
			}
			// Applied() and the scan see the same state: nothing runs
			// between them.
		}
		for _, t := range s.written {
			if t.origin == dc {
				continue
			}
			var have, lack []string
			for _, ev := range t.ops {
				if a.Covers(ev.Origin, ev.Partition, ev.Seq) {
					have = append(have, ev.Dot.String()+" "+ev.Key)
				} else {
					lack = append(lack, ev.Dot.String()+" "+ev.Key)
				}
			}
			if len(have) > 0 && len(lack) > 0 {
				s.fail("(e) after trace line %d, %s has applied %d of the %d ops of the %s: applied %v, not %v (applied vector %v)",
					len(s.trace), dc, len(have), len(t.ops), t, have, lack, a[t.origin])
				return
			}
			if snap == nil {
				continue
			}
			for _, ev := range t.ops {
				st, present := snap[ev.Key]
				shown := slices.ContainsFunc(st.Siblings, func(sb dvv.Sibling) bool { return sb.Dot == ev.Dot })
				switch {
				case len(have) == 0 && shown:
					s.fail("(e) after trace line %d, a scan at %s shows op %s of %s as %s, but %s has applied none of it",
						len(s.trace), dc, ev.Dot, t, fmtState(st), dc)
					return
				case len(have) > 0 && present && !s.purgedAt[dc][ev.Key] && !st.Clock.Covers(ev.Dot):
					s.fail("(e) after trace line %d, %s has applied the %s, but a scan shows %s without op %s: %s",
						len(s.trace), dc, t, ev.Key, ev.Dot, fmtState(st))
					return
				}
			}
		}
		if snap == nil {
			continue
		}
		for _, key := range sortedKeys(snap) {
			if msg := s.overtakeViolation(key, snap[key]); msg != "" {
				s.fail("after trace line %d, %s: %s", len(s.trace), dc, msg)
				return
			}
		}
	}
}

// finish drains every link, reports, purges everywhere and checks the
// end-state properties.
func (s *schedule) finish() {
	c := s.c
	s.logf("deliver all")
	err := c.DeliverAll(func(d Delivery) {
		for _, r := range d.Results {
			if r.Outcome == changelog.Duplicate && !d.Refilled {
				s.fail("deliver all: %s: a first delivery is a duplicate", d)
			}
		}
	})
	if err != nil {
		s.fail("deliver all: %v", err)
		return
	}
	for _, dc := range s.dcs {
		s.touch(dc, true)
	}
	s.checkAtomic()
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

	// (e) every transaction is applied, whole, everywhere.
	for _, dc := range s.dcs {
		a := c.DC(dc).Store.Applied()
		for _, t := range s.written {
			for _, ev := range t.ops {
				if !a.Covers(ev.Origin, ev.Partition, ev.Seq) {
					s.fail("(e) after everything was delivered, %s lacks op %s %s of the %s", dc, ev.Dot, ev.Key, t)
					return
				}
			}
		}
	}
	// (f) an overtaken transaction op shows nowhere: every DC converged
	// to the write that superseded it (or to what superseded that).
	for _, o := range slices.Concat(slices.Collect(maps.Values(s.overtakes))...) {
		st := final[o.key]
		if !st.Clock.Covers(o.later) && !s.purgedSome(o.key) {
			s.fail("(f) in the end %s's clock %s does not cover %s (trace line %d), which superseded transaction op %s", o.key, st.Clock, o.later, o.laterAt, o.op)
			return
		}
		if slices.ContainsFunc(st.Siblings, func(sb dvv.Sibling) bool { return sb.Dot == o.op }) {
			s.fail("(f) in the end every DC shows transaction op %s on %s (trace line %d), which %s (trace line %d) superseded: %s", o.op, o.key, o.txn, o.later, o.laterAt, fmtState(st))
			return
		}
		s.stats["overtaking pairs checked"]++
	}

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

// purgedSome reports whether some DC purged key at some point.
func (s *schedule) purgedSome(key string) bool {
	return len(s.purged[key]) > 0
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
