package sim

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

var (
	flagWorldSeed  = flag.Uint64("sim.world.seed", 0, "replay only this seed of TestRandom, with its trace")
	flagWorldFirst = flag.Uint64("sim.world.first", 1, "the first seed TestRandom runs")
)

// seedsEnv is the environment variable that sets how many seeds the random
// tests run: REPL_SIM_SEEDS=100000 go test -run 'TestRandom$' ./test/sim/
// is the long run (docs/DESIGN.md, "Testing").
const seedsEnv = "REPL_SIM_SEEDS"

// seedCount returns how many seeds to run: REPL_SIM_SEEDS, else def (a
// fifth of it with -short).
func seedCount(t *testing.T, def int) int {
	if s := os.Getenv(seedsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number of seeds", seedsEnv, s)
		}
		return n
	}
	if testing.Short() {
		return max(def/5, 1)
	}
	return def
}

// mixes are the fault mixes; seed s runs topology s%3 (mesh, ring, star)
// and mix (s/3)%len(mixes), so every topology meets every mix.
var mixes = []string{"calm", "lossy", "crashy", "cuts", "dead", "all"}

// TestRandom runs seeded random schedules of the whole protocol (World) on
// bridge/core: writes, deletes and transactions at random DCs, publishing,
// deliveries in batches, reports, healing, catch-up, maintenance and the
// passing of time, over meshes, rings and stars of 3 to 5 DCs with skewed
// clocks, under one fault mix per seed: calm (no fault), lossy (streams
// lose messages, deliveries are lost in flight, acks are lost, and 30% of
// repair requests time out: gap repair, held events, catch-up and
// redeliveries), crashy (power cuts that keep only what was
// synced, and restarts), cuts (network partitions between two DCs), dead
// (a DC down longer than heal_after: rings and stars heal around it and
// hand the bypass back when it returns; in a star the hub dies half the
// time), or all of them. Then the faults stop, every DC restarts, every
// cut mends, and the world settles. It checks (docs/DESIGN.md):
//
//   - along the way, from the World: no event applied twice or forwarded
//     twice at a DC, no forward the topology's reference rule forbids and
//     no path with a loop (invariants 3 and 7), no message acked before it
//     is applied (4), nothing dead-lettered, no DC restarting without an
//     own event its stream holds (1);
//   - after each restart, every write the DC acknowledged is still there
//     (invariant 1: acknowledged means synced);
//   - after each delivery, the DC has applied each transaction wholly or
//     not at all, and now and then one consistent read (Store.Scan) shows
//     no op of a transaction the DC has not applied (11);
//   - in the end: the world settles (every DC applied every event, healing
//     handed back everywhere) and every DC has the same digest (10); every
//     acknowledged put is live, superseded by a write that saw it, or in a
//     conflict log (6); no superseded version is live anywhere, which is
//     also how deletes stay deleted through purges (8); with local read
//     contexts, at most one sibling per origin per key (bounded siblings);
//     every transaction applied whole everywhere (11).
//
// REPL_SIM_SEEDS sets the number of seeds (default 1000, 200 with -short);
// -sim.world.seed=N replays one with its trace.
func TestRandom(t *testing.T) {
	if *flagWorldSeed != 0 {
		r := runWorld(*flagWorldSeed, false)
		for _, line := range r.trace {
			t.Log(line)
		}
		if r.err != nil {
			t.Fatalf("seed %d: %v\nreplay: %s", *flagWorldSeed, r.err, worldReplay(*flagWorldSeed))
		}
		t.Logf("seed %d: %s", *flagWorldSeed, r.summary)
		return
	}
	runSeeds(t, *flagWorldFirst, seedCount(t, 1000), 400, func(seed uint64) seedOutcome {
		r := runWorld(seed, false)
		return seedOutcome{err: r.err, trace: r.trace, stats: r.stats}
	}, worldReplay)
}

var (
	flagShardSeed  = flag.Uint64("sim.shards.seed", 0, "replay only this seed of TestRandomShards, with its trace")
	flagShardFirst = flag.Uint64("sim.shards.first", 1, "the first seed TestRandomShards runs")
)

// TestRandomShards runs TestRandom's schedules with sharded DCs
// (invariant 16): dc1 runs 2 or 3 sidecars, each other DC 1 or 2, over 3
// to 6 partitions, so DCs of different shard counts interoperate in mesh,
// ring and star. Crashes take down one shard two times in three (the
// DC's other shards keep running), a dead DC is one shard half the time;
// local transactions whose keys span the origin's shards are refused
// (pkg/node), and those of other DCs spanning a receiver's shards are
// prepared by each owner and applied once all have (core.Shard). On top
// of TestRandom's checks: no shard applies an op of a partition it does
// not own; a transaction is forwarded whole, once per DC, by the owner of
// its first op; each shard applies its ops of a transaction wholly or not
// at all, and while a shard shows its part, every live owner of the
// others has applied or prepared theirs (reads of a prepared
// transaction's keys wait); the end state is each DC's shards' union.
//
// REPL_SIM_SEEDS sets the number of seeds (default 150, 30 with -short);
// -sim.shards.seed=N replays one with its trace.
func TestRandomShards(t *testing.T) {
	if *flagShardSeed != 0 {
		r := runWorld(*flagShardSeed, true)
		for _, line := range r.trace {
			t.Log(line)
		}
		if r.err != nil {
			t.Fatalf("seed %d: %v\nreplay: %s", *flagShardSeed, r.err, shardReplay(*flagShardSeed))
		}
		t.Logf("seed %d: %s", *flagShardSeed, r.summary)
		return
	}
	runSeeds(t, *flagShardFirst, seedCount(t, 150), 400, func(seed uint64) seedOutcome {
		r := runWorld(seed, true)
		return seedOutcome{err: r.err, trace: r.trace, stats: r.stats}
	}, shardReplay)
}

func shardReplay(seed uint64) string {
	return fmt.Sprintf("go test ./test/sim -run 'TestRandomShards$' -sim.shards.seed=%d -v", seed)
}

func worldReplay(seed uint64) string {
	return fmt.Sprintf("go test ./test/sim -run 'TestRandom$' -sim.world.seed=%d -v", seed)
}

// wrun is one seed's run of the World.
type wrun struct {
	r     *rand.Rand
	w     *World
	dcs   []string
	keys  []string
	local bool
	mix   string
	// sharded runs some DCs as several sidecars (invariant 16).
	sharded bool

	trace   []string
	err     error
	stats   map[string]int
	summary string

	acked      []putRef
	ackedAt    map[string][]Ref // dc -> its acknowledged own events
	superseded map[string]map[vclock.Dot]bool
	txns       []txnRec
	downUntil  map[string]time.Duration
	cutUntil   map[[2]string]time.Duration
}

func (s *wrun) logf(format string, args ...any) {
	s.trace = append(s.trace, fmt.Sprintf(format, args...))
}

func (s *wrun) fail(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf(format, args...)
	}
}

// flush moves the World's notes into the trace.
func (s *wrun) flush() {
	for _, n := range s.w.Notes() {
		s.trace = append(s.trace, "  "+n)
	}
}

func runWorld(seed uint64, sharded bool) *wrun {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	s := &wrun{r: r, sharded: sharded, stats: map[string]int{}, ackedAt: map[string][]Ref{},
		superseded: map[string]map[vclock.Dot]bool{}, downUntil: map[string]time.Duration{}, cutUntil: map[[2]string]time.Duration{}}
	for i := range 3 + r.IntN(3) {
		s.dcs = append(s.dcs, fmt.Sprintf("dc%d", i+1))
	}
	topology := []string{config.Mesh, config.Ring, config.Star}[seed%3]
	s.mix = mixes[(seed/3)%uint64(len(mixes))]
	opts := WorldOptions{DCs: s.dcs, Partitions: 1 + r.IntN(3), Topology: topology, Seed: seed, Skew: map[string]time.Duration{}}
	if topology == config.Star {
		opts.Hub = s.dcs[r.IntN(len(s.dcs))]
		if r.IntN(4) > 0 {
			for opts.Standby == "" || opts.Standby == opts.Hub {
				opts.Standby = s.dcs[r.IntN(len(s.dcs))]
			}
		}
	}
	for _, dc := range s.dcs {
		if r.IntN(2) == 0 {
			opts.Skew[dc] = time.Duration(r.IntN(6001)-3000) * time.Millisecond
		}
	}
	if r.IntN(4) == 0 {
		opts.UnsyncedPercent = r.IntN(100)
	}
	if s.mix == "lossy" || s.mix == "all" {
		opts.RepairLossPercent = 30
	}
	s.local = r.IntN(4) == 0
	prefixes := []string{"", "s/", "l/", "c/"}
	for i := range 1 + r.IntN(5) {
		s.keys = append(s.keys, fmt.Sprintf("%sk%d", prefixes[r.IntN(len(prefixes))], i))
	}
	if sharded {
		// dc1 runs 2 or 3 shards, each other DC 1 or 2, over 3 to 6
		// partitions; more keys, so that transactions land both within
		// one shard (the origin's only kind) and across a receiver's.
		opts.Partitions = 3 + r.IntN(4)
		// Streams keep acknowledged messages 2 to 6 s, so that each
		// shard's retention (its own subjects, down to every downstream
		// shard's floor) trims within a run.
		opts.StreamKeep = time.Duration(2+r.IntN(5)) * time.Second
		opts.Shards = map[string]int{s.dcs[0]: 2 + r.IntN(2)}
		for _, dc := range s.dcs[1:] {
			opts.Shards[dc] = 1 + r.IntN(2)
		}
		for i := len(s.keys); i < 4+r.IntN(5); i++ {
			s.keys = append(s.keys, fmt.Sprintf("%sk%d", prefixes[r.IntN(len(prefixes))], i))
		}
	}
	names := []string{resolve.NameSiblings, resolve.NameLWW, resolve.NameConcat}
	byName := func(n string) resolve.Resolver {
		res, err := resolve.ByName(n, resolve.Options{})
		if err != nil {
			panic(err) // a broken test, not input
		}
		return res
	}
	rules, err := resolve.NewRules(byName(names[r.IntN(len(names))]), []resolve.Rule{
		{Prefix: "s/", Resolver: byName(resolve.NameSiblings)},
		{Prefix: "l/", Resolver: byName(resolve.NameLWW)},
		{Prefix: "c/", Resolver: byName(resolve.NameConcat)},
	})
	if err != nil {
		s.fail("rules: %v", err)
		return s
	}
	opts.Resolvers = rules
	s.logf("world dcs=(%s) topology=%s hub=%s standby=%s partitions=%d skew=%v unsynced=%d%% repair-loss=%d%%  # mix %s, keys %v, local %v",
		strings.Join(s.dcs, ","), topology, opts.Hub, opts.Standby, opts.Partitions, opts.Skew, opts.UnsyncedPercent, opts.RepairLossPercent, s.mix, s.keys, s.local)
	if sharded {
		s.logf("shards %v", opts.Shards)
	}
	s.w, err = NewWorld(opts)
	if err != nil {
		s.fail("world: %v", err)
		return s
	}
	defer s.w.Close()
	s.stats["seeds "+topology]++
	s.stats["seeds mix "+s.mix]++

	has := func(f string) bool { return s.mix == f || s.mix == "all" }
	type action struct {
		weight int
		run    func()
	}
	acts := []action{
		{30, s.write},
		{12, s.publish},
		{30, s.deliver},
		{8, func() { s.tick(time.Duration(1+r.IntN(10)) * 100 * time.Millisecond) }},
		{4, s.step},
		{1, s.skew},
	}
	if len(s.keys) > 1 {
		acts = append(acts, action{8, s.writeTxn})
	}
	if has("lossy") {
		acts = append(acts, action{4, s.loseMsg}, action{4, s.dropInFlight}, action{3, s.loseAck})
	}
	if has("crashy") {
		acts = append(acts, action{3, func() { s.crash(time.Duration(2+r.IntN(20)) * 100 * time.Millisecond) }})
	}
	if has("cuts") {
		acts = append(acts, action{3, s.cut})
	}
	if has("dead") {
		acts = append(acts, action{2, s.kill})
	}
	sum := 0
	for _, a := range acts {
		sum += a.weight
	}
	for steps := 40 + r.IntN(80); steps > 0 && s.err == nil; steps-- {
		s.wake()
		x := r.IntN(sum)
		for _, a := range acts {
			if x -= a.weight; x < 0 {
				a.run()
				break
			}
		}
		s.flush()
		if vs := s.w.Violations(); len(vs) > 0 {
			s.fail("%s", strings.Join(vs, "\n"))
		}
	}
	if s.err != nil {
		return s
	}
	s.finish()
	for k, v := range s.w.Stats {
		s.stats[k] += v
	}
	return s
}

// wake restarts the DCs and mends the cuts whose time has come.
func (s *wrun) wake() {
	now := s.w.Now()
	for _, dc := range sortedKeys(s.downUntil) {
		if now >= s.downUntil[dc] {
			delete(s.downUntil, dc)
			s.restart(dc)
		}
	}
	for _, k := range s.w.Cuts() {
		if until, ok := s.cutUntil[k]; ok && now >= until {
			delete(s.cutUntil, k)
			s.logf("mend %s %s", k[0], k[1])
			s.w.Mend(k[0], k[1])
		}
	}
}

// upDC picks a live DC: in a sharded run, one with any shard up (a
// request whose key's owner is down is refused, errShardDown).
func (s *wrun) upDC() (string, bool) {
	var up []string
	for _, dc := range s.dcs {
		if s.w.Up(dc) || s.sharded && slices.ContainsFunc(s.w.byDC[dc], func(n *node) bool { return n.up }) {
			up = append(up, dc)
		}
	}
	if len(up) == 0 {
		return "", false
	}
	return up[s.r.IntN(len(up))], true
}

// readFor picks where the client of a write at dc read key first: its own
// DC, another live one, or nowhere.
func (s *wrun) readFor(dc, key string) (string, vclock.VV, dvv.State, error) {
	at := ""
	switch x := s.r.IntN(10); {
	case s.local || x < 4:
		at = dc
	case x < 7:
		if o, ok := s.upDC(); ok {
			at = o
		}
	}
	if at == "" {
		return "", nil, dvv.State{}, nil
	}
	st, _, err := s.w.Read(at, key)
	if err != nil {
		return "", nil, dvv.State{}, err
	}
	ctx := vclock.VV{}
	if st.Clock != nil {
		ctx = st.Clock.Clone()
	}
	return at, ctx, st, nil
}

func (s *wrun) write() {
	dc, ok := s.upDC()
	if !ok {
		return
	}
	key := s.keys[s.r.IntN(len(s.keys))]
	op := Op{Key: key, Delete: s.r.IntN(100) < 20}
	if !op.Delete {
		op.Value = []byte(fmt.Sprintf("v%d", len(s.trace)))
	}
	at, ctx, read, err := s.readFor(dc, key)
	if s.held(err) {
		return
	}
	if err != nil {
		s.fail("read %s at %s: %v", key, at, err)
		return
	}
	op.Context = ctx
	before, _, err := s.w.Read(dc, key)
	if s.held(err) {
		return
	}
	if err != nil {
		s.fail("read %s at %s: %v", key, dc, err)
		return
	}
	res, err := s.w.Write(dc, op)
	if s.held(err) {
		return
	}
	line := fmt.Sprintf("write %s k=%s v=%s del=%v read@%s ctx=%s", dc, key, op.Value, op.Delete, at, op.Context)
	if errors.Is(err, changelog.ErrContextAhead) {
		s.logf("%s  # refused: context ahead", line)
		s.stats["refused: context ahead"]++
		return
	}
	if err != nil {
		s.fail("%s: %v", line, err)
		return
	}
	s.logf("%s -> %s", line, res.Event.Dot)
	s.acknowledge(dc, op, res.Event, read, before)
	s.stats["writes"]++
}

// acknowledge records an acknowledged write: a put to keep, the versions
// it supersedes (those the client saw, and with an implicit context what
// the DC held, as far as the event's context covers them).
func (s *wrun) acknowledge(dc string, op Op, ev *event.Event, read, before dvv.State) {
	if !op.Delete {
		s.acked = append(s.acked, putRef{Key: op.Key, Dot: ev.Dot, Value: op.Value})
	}
	s.ackedAt[dc] = append(s.ackedAt[dc], Ref{ev.Origin, ev.Partition, ev.Seq})
	seen := read.Siblings
	if op.Context == nil && (op.Delete || s.w.Resolver(op.Key).OnWrite()) {
		seen = append(slices.Clone(seen), before.Siblings...)
	}
	markSuperseded(s.superseded, op.Key, seen, ev.Context)
}

func (s *wrun) writeTxn() {
	dc, ok := s.upDC()
	if !ok {
		return
	}
	n := 2 + s.r.IntN(min(4, len(s.keys)-1))
	perm := s.r.Perm(len(s.keys))[:n]
	ops := make([]Op, n)
	reads := make([]dvv.State, n)
	befores := make([]dvv.State, n)
	for i, ki := range perm {
		key := s.keys[ki]
		op := Op{Key: key, Delete: s.r.IntN(100) < 20}
		if !op.Delete {
			op.Value = []byte(fmt.Sprintf("t%d.%d", len(s.trace), i))
		}
		at, ctx, read, err := s.readFor(dc, key)
		if s.held(err) {
			return
		}
		if err != nil {
			s.fail("read %s at %s: %v", key, at, err)
			return
		}
		op.Context, reads[i] = ctx, read
		if befores[i], _, err = s.w.Read(dc, key); s.held(err) {
			return
		} else if err != nil {
			s.fail("read %s at %s: %v", key, dc, err)
			return
		}
		ops[i] = op
	}
	res, err := s.w.WriteTxn(dc, ops)
	if s.held(err) {
		return
	}
	line := fmt.Sprintf("txn %s %d ops", dc, n)
	if errors.Is(err, changelog.ErrContextAhead) {
		s.logf("%s  # refused: context ahead", line)
		s.stats["txn refused: context ahead"]++
		return
	}
	if errors.Is(err, errTxnSpansShards) {
		s.logf("%s  # refused: %v", line, err)
		s.stats["txn refused: spans the origin's shards"]++
		return
	}
	if err != nil {
		s.fail("%s: %v", line, err)
		return
	}
	evs := make([]*event.Event, len(res))
	dots := make([]string, len(res))
	for i, w := range res {
		evs[i] = w.Event
		dots[i] = w.Event.Dot.String() + " " + w.Event.Key
		s.acknowledge(dc, ops[i], w.Event, reads[i], befores[i])
	}
	s.txns = append(s.txns, txnRec{origin: dc, ops: evs, line: len(s.trace)})
	s.logf("%s -> %s", line, strings.Join(dots, ", "))
	s.stats["txns"]++
}

// held reports whether err is a request a sharded DC refused for now: a
// read a prepared transaction spanning its shards holds (503 past
// context_wait), or a key whose owner shard is down (503); the client
// tries later.
func (s *wrun) held(err error) bool {
	switch {
	case errors.Is(err, errHeld):
		s.logf("read refused: %v", err)
		s.stats["reads held by a prepared transaction"]++
		return true
	case errors.Is(err, errShardDown):
		s.logf("request refused: %v", err)
		s.stats["requests refused: owner shard down"]++
		return true
	}
	return false
}

func (s *wrun) publish() {
	dc, ok := s.upDC()
	if !ok {
		return
	}
	k, err := s.w.Publish(dc)
	if err != nil {
		s.fail("publish %s: %v", dc, err)
		return
	}
	if k > 0 {
		s.logf("publish %s  # %d", dc, k)
	}
}

func (s *wrun) readyConsumers() []*consumer {
	var out []*consumer
	for _, n := range s.w.all() {
		if !n.up {
			continue
		}
		for _, c := range s.w.consumersOf(n.name) {
			if s.w.ready(c) {
				out = append(out, c)
			}
		}
	}
	return out
}

func (s *wrun) deliver() {
	cs := s.readyConsumers()
	if len(cs) == 0 {
		return
	}
	c := cs[s.r.IntN(len(cs))]
	s.logf("deliver %s", c)
	if _, err := s.w.deliver(c); err != nil {
		s.fail("deliver %s: %v", c, err)
		return
	}
	s.checkTxns(c.dc, s.r.IntN(5) == 0)
}

func (s *wrun) tick(d time.Duration) {
	s.logf("tick for=%s", d)
	if err := s.w.Tick(d); err != nil {
		s.fail("tick: %v", err)
	}
}

func (s *wrun) step() {
	s.logf("step")
	if _, err := s.w.Step(); err != nil {
		s.fail("step: %v", err)
	}
	for _, dc := range s.dcs {
		s.checkTxns(dc, false)
	}
}

func (s *wrun) loseMsg() {
	dc := s.dcs[s.r.IntN(len(s.dcs))]
	last := s.w.StreamLen(dc)
	if last == 0 {
		return
	}
	// Mostly the tail, as a power failure of the stream's server loses.
	seq := last - uint64(s.r.IntN(int(min(last, 3))))
	desc, err := s.w.LoseMsg(dc, seq)
	if err != nil {
		return // lost or trimmed already
	}
	s.logf("lose %s seq=%d  # %s", dc, seq, desc)
}

func (s *wrun) dropInFlight() {
	cs := s.readyConsumers()
	if len(cs) == 0 {
		return
	}
	c := cs[s.r.IntN(len(cs))]
	c.dropNext++
	s.logf("drop %s", c)
}

func (s *wrun) loseAck() {
	cs := s.readyConsumers()
	if len(cs) == 0 {
		return
	}
	c := cs[s.r.IntN(len(cs))]
	c.loseAck++
	s.logf("lose-ack %s", c)
}

// skew moves a DC's physical clock to a new offset, up to 3 s either way
// (backwards too: its HLC must not go back).
func (s *wrun) skew() {
	dc := s.dcs[s.r.IntN(len(s.dcs))]
	d := time.Duration(s.r.IntN(6001)-3000) * time.Millisecond
	s.logf("skew %s by=%s", dc, d)
	s.w.SetSkew(dc, d)
	s.stats["skew changes"]++
}

// crash cuts a live DC's power for d; in a sharded run, two times in
// three only one live shard's.
func (s *wrun) crash(d time.Duration) {
	if s.sharded && s.r.IntN(3) > 0 {
		if n, ok := s.upShard(); ok {
			s.crashDC(n, d)
		}
		return
	}
	if dc, ok := s.upDC(); ok {
		s.crashDC(dc, d)
	}
}

// upShard picks a live shard of a sharded DC.
func (s *wrun) upShard() (string, bool) {
	var up []string
	for _, n := range s.w.all() {
		if n.up && n.owned != nil {
			up = append(up, n.name)
		}
	}
	if len(up) == 0 {
		return "", false
	}
	return up[s.r.IntN(len(up))], true
}

// crashDC cuts the power of who (a DC, or one shard "<dc>/<i>") for d.
func (s *wrun) crashDC(who string, d time.Duration) {
	s.logf("crash %s  # down for %s", who, d)
	ns, _ := s.w.sidecars(who)
	if err := s.w.Crash(who); err != nil {
		s.fail("crash %s: %v", who, err)
		return
	}
	for _, n := range ns {
		s.downUntil[n.name] = s.w.Now() + d
	}
}

// kill takes a DC down for longer than heal_after, and lets time pass; in
// a star it is the hub half the time.
func (s *wrun) kill() {
	if len(s.downUntil) > 0 {
		return // one dead DC at a time: two in a row can strand events (known limit)
	}
	dc, ok := s.upDC()
	if !ok {
		return
	}
	if s.w.opts.Topology == config.Star && s.r.IntN(2) == 0 && s.w.Up(s.w.opts.Hub) {
		dc = s.w.opts.Hub
	}
	if s.sharded && s.w.sharded(dc) && s.r.IntN(2) == 0 {
		dc = s.w.Shards(dc)[s.r.IntN(len(s.w.Shards(dc)))] // one shard dies
	}
	d := s.w.opts.HealAfter + time.Duration(1+s.r.IntN(8))*time.Second
	s.crashDC(dc, d)
	s.stats["dead DCs"]++
	s.tick(s.w.opts.HealAfter + time.Second)
}

// cut partitions two DCs for a while.
func (s *wrun) cut() {
	a, b := s.dcs[s.r.IntN(len(s.dcs))], s.dcs[s.r.IntN(len(s.dcs))]
	if a == b {
		return
	}
	d := time.Duration(5+s.r.IntN(80)) * 100 * time.Millisecond
	s.logf("cut %s %s  # for %s", a, b, d)
	s.w.Cut(a, b)
	s.cutUntil[pair(a, b)] = s.w.Now() + d
}

// restart starts who (a DC, or one shard) again and checks it kept every
// write it acknowledged.
func (s *wrun) restart(who string) {
	s.logf("restart %s", who)
	if err := s.w.Restart(who); err != nil {
		s.fail("restart %s: %v", who, err)
		return
	}
	dc, _, _ := strings.Cut(who, "/")
	own := s.w.Applied(dc)
	for _, ref := range s.ackedAt[dc] {
		if s.w.owner(dc, ref.Partition).up && !own.Covers(dc, ref.Partition, ref.Seq) {
			s.fail("(1) %s restarted without %s, a write it acknowledged (own sequences %v)", who, ref, own[dc])
			return
		}
	}
	s.checkTxns(dc, true)
}

// checkTxns checks at dc that each transaction is applied wholly or not at
// all, and with scan, that one consistent read shows no op of a
// transaction dc has not applied. At a sharded DC, each live shard applies
// its ops of a transaction wholly or not at all, and while some shard has
// applied its ops, every live owner of the others has applied or prepared
// them (a prepared transaction holds its keys: reads wait, so none shows
// the state before it); a shard's scan is one consistent read of its own
// keys, skipped while a prepared transaction holds them (pkg/node waits).
func (s *wrun) checkTxns(dc string, scan bool) {
	if len(s.txns) == 0 {
		return
	}
	type view struct {
		a        changelog.Applied
		snap     map[string]dvv.State
		prepared map[string]changelog.Prepared
	}
	views := map[*node]*view{}
	for _, n := range s.w.byDC[dc] {
		if !n.up {
			continue
		}
		v := &view{a: n.store.Applied()}
		var err error
		if v.prepared, err = n.store.PreparedTxns(); err != nil {
			s.fail("prepared transactions at %s: %v", n.name, err)
			return
		}
		if scan && len(v.prepared) == 0 {
			if v.snap, err = storeSnapshot(n.store); err != nil {
				s.fail("scan %s: %v", n.name, err)
				return
			}
			s.stats["transaction scans"]++
		}
		views[n] = v
	}
	if len(views) == 0 {
		return
	}
	for _, t := range s.txns {
		if t.origin == dc {
			continue
		}
		id := core.TxnID(t.ops)
		have := 0
		var missing []*event.Event
		for _, n := range s.w.byDC[dc] {
			v := views[n]
			if v == nil {
				continue
			}
			mine, got := 0, 0
			for _, ev := range t.ops {
				if !n.owns(ev.Partition) {
					continue
				}
				mine++
				if v.a.Covers(ev.Origin, ev.Partition, ev.Seq) {
					got++
				} else if _, ok := v.prepared[id]; !ok {
					missing = append(missing, ev)
				}
			}
			if got > 0 && got < mine {
				s.fail("(11) %s has applied %d of the %d ops of the %s", n.name, got, mine, t)
				return
			}
			have += got
		}
		if have > 0 && len(missing) > 0 {
			ev := missing[0]
			s.fail("(11) %s has applied %d of the %d ops of the %s, but %s neither applied nor prepared op %s",
				dc, have, len(t.ops), t, s.w.owner(dc, ev.Partition).name, ev.Dot)
			return
		}
		for _, n := range s.w.byDC[dc] {
			v := views[n]
			if v == nil || v.snap == nil {
				continue
			}
			for _, ev := range t.ops {
				if !n.owns(ev.Partition) || v.a.Covers(ev.Origin, ev.Partition, ev.Seq) {
					continue
				}
				if slices.ContainsFunc(v.snap[ev.Key].Siblings, func(sb dvv.Sibling) bool { return sb.Dot == ev.Dot }) {
					s.fail("(11) a scan at %s shows op %s of the %s, which %s has not applied", n.name, ev.Dot, t, n.name)
					return
				}
			}
		}
	}
}

// finish stops the faults, settles the world and checks the end state.
func (s *wrun) finish() {
	w := s.w
	s.logf("settle")
	start := w.Now()
	err := w.Settle(10 * time.Minute)
	s.flush()
	if err != nil {
		s.fail("%v", err)
		return
	}
	if vs := w.Violations(); len(vs) > 0 {
		s.fail("%s", strings.Join(vs, "\n"))
		return
	}
	if err := w.Finish(); err != nil {
		s.fail("finish: %v", err)
		return
	}
	s.summary = fmt.Sprintf("settled in %s of virtual time, at %s", (w.Now() - start).Round(100*time.Millisecond), w.Now().Round(100*time.Millisecond))
	s.stats["settle seconds (virtual)"] += int((w.Now() - start).Seconds())

	digests, equal, err := w.Digests()
	if err != nil {
		s.fail("digests: %v", err)
		return
	}
	snaps := map[string]map[string]dvv.State{}
	for _, dc := range s.dcs {
		if snaps[dc], err = w.Snapshot(dc); err != nil {
			s.fail("snapshot %s: %v", dc, err)
			return
		}
	}
	if !equal {
		var b strings.Builder
		for _, dc := range s.dcs {
			fmt.Fprintf(&b, "\n  %s digest %s:", dc, digests[dc][:12])
			for _, key := range sortedKeys(snaps[dc]) {
				fmt.Fprintf(&b, "\n    %s %s", key, fmtState(snaps[dc][key]))
			}
		}
		s.fail("(10) the DCs did not converge:%s", b.String())
		return
	}
	final := snaps[s.dcs[0]]
	for _, dc := range s.dcs {
		s.checkTxns(dc, true)
		a := w.Applied(dc)
		for _, t := range s.txns {
			for _, ev := range t.ops {
				if !a.Covers(ev.Origin, ev.Partition, ev.Seq) {
					s.fail("(11) after settling, %s lacks op %s of the %s", dc, ev.Dot, t)
					return
				}
			}
		}
	}
	logged := map[string]map[string]bool{}
	for _, dc := range s.dcs {
		cs, err := w.Conflicts(dc)
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
	if lost := lostPuts(s.acked, s.superseded, final, logged); len(lost) > 0 {
		s.fail("(6) acknowledged puts lost: %s", fmtPuts(lost))
		return
	}
	for _, key := range sortedKeys(final) {
		st := final[key]
		for _, sb := range st.Live() {
			if s.superseded[key][sb.Dot] {
				s.fail("(8) %s shows %s %q, which a later write that saw it superseded: %s", key, sb.Dot, sb.Value, fmtState(st))
				return
			}
		}
		if s.local {
			per := map[string]int{}
			for _, sb := range st.Siblings {
				if per[sb.Dot.DC]++; per[sb.Dot.DC] > 1 {
					s.fail("(bounded siblings) with local read contexts, origin %s has two siblings of %s: %s", sb.Dot.DC, key, fmtState(st))
					return
				}
			}
		}
		if st.LiveCount() == 0 {
			s.fail("(8) a tombstone-only key survived the final reports and purge: %s %s", key, fmtState(st))
			return
		}
	}
	s.stats["puts checked"] += len(s.acked)
	s.stats["transactions checked"] += len(s.txns)
}
