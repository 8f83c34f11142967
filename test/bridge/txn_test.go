package bridge_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/test/internal/txncheck"
)

var txnSeed = flag.Uint64("txn.seed", 0, "seed of the transaction tests' plans and choices; 0 picks one from the clock and logs it")

// txnTestSeed returns the seed of a test's plans and logs how to replay
// them. The seed fixes what is written, not how the DCs interleave.
func txnTestSeed(t *testing.T) uint64 {
	seed := *txnSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d; replay the same plans with -txn.seed=%d", seed, seed)
	return seed
}

// TestTxnAtomicVisibility (invariant 11 in docs/DESIGN.md) has every DC of a
// mesh of 3, a ring of 4 (events forwarded twice) and a star of 4 (the hub
// forwards) commit transactions of 2 to 8 puts and deletes over every
// partition, interleaved with single-key writes before and after them to the
// same keys, while a reader at every DC checks, over and over, that one
// consistent snapshot and single-key reads in sequence never show part of a
// transaction (see package txncheck). In the ring, the forwarding DC dc2 has
// its Replicator and store closed mid-stream and reopened, and a transaction
// it had not yet taken is deleted from its upstream's stream meanwhile, so
// dc2 must repair it from its origin while the events behind it wait. Then
// the DCs converge, each applied every other DC's events (transaction ops
// included) exactly once, and every committed transaction is whole
// everywhere.
func TestTxnAtomicVisibility(t *testing.T) {
	seed := txnTestSeed(t)
	for _, tc := range []struct {
		topo    string
		n       int
		restart string
	}{
		{"mesh", 3, ""},
		{"ring", 4, "dc2"},
		{"star", 4, ""},
	} {
		t.Run(fmt.Sprintf("%s-%d", tc.topo, tc.n), func(t *testing.T) {
			txnVisibility(t, seed, tc.topo, tc.n, tc.restart)
		})
	}
}

// txnRun is a transactional workload on a cluster, its readers and what
// they saw.
type txnRun struct {
	t     *testing.T
	c     *bridgeCluster
	seed  uint64
	tally txncheck.Tally
	// life guards each DC's store: held shared to use it, exclusively to
	// close and reopen it.
	life map[string]*sync.RWMutex
	// events counts the events each DC issued: single writes and
	// transaction ops.
	events map[string]*atomic.Uint64
	// fixed holds transactions planned by hand, by ID, in place of Plan's.
	fixed map[string]txncheck.Txn
	// committed holds the transactions committed so far.
	committed txncheck.Log
}

func newTxnRun(t *testing.T, c *bridgeCluster, seed uint64) *txnRun {
	r := &txnRun{t: t, c: c, seed: seed, life: map[string]*sync.RWMutex{}, events: map[string]*atomic.Uint64{}, fixed: map[string]txncheck.Txn{}}
	for _, dc := range c.dcs {
		r.life[dc] = &sync.RWMutex{}
		r.events[dc] = &atomic.Uint64{}
	}
	return r
}

// withStore runs fn on dc's open store; a restart waits for it.
func (r *txnRun) withStore(dc string, fn func(st *changelog.Store) error) error {
	r.life[dc].RLock()
	defer r.life[dc].RUnlock()
	st := r.c.store(dc)
	if st == nil {
		return fmt.Errorf("%s's store is closed", dc) // the test failed while dc was down
	}
	return fn(st)
}

// restart closes dc's Replicator and store, runs meanwhile while it is
// down, and opens both again.
func (r *txnRun) restart(dc string, meanwhile func()) {
	r.life[dc].Lock()
	defer r.life[dc].Unlock()
	r.c.stop(dc)
	meanwhile()
	r.c.openStore(dc)
	r.c.startRep(dc)
}

func (r *txnRun) lookup(origin string, n int) (txncheck.Txn, bool) {
	if _, ok := r.events[origin]; !ok {
		return txncheck.Txn{}, false
	}
	t := txncheck.Txn{Origin: origin, N: n}
	if f, ok := r.fixed[t.ID()]; ok {
		return f, true
	}
	return txncheck.Plan(r.seed, origin, n), true
}

// single makes one single-key put at dc; with context, it supersedes what
// dc holds for the key.
func (r *txnRun) single(st *changelog.Store, key string, value []byte, withContext bool) (changelog.WriteResult, error) {
	op := changelog.WriteOp{Key: key, Value: value}
	if withContext {
		cur, _, err := st.Get(key)
		if err != nil {
			return changelog.WriteResult{}, err
		}
		op.Context = cur.Clock
		if op.Context == nil {
			op.Context = vclock.VV{}
		}
	}
	res, err := st.Write(context.Background(), op)
	if err != nil {
		return res, fmt.Errorf("write %s at %s: %w", key, st.DC(), err)
	}
	r.events[st.DC()].Add(1)
	return res, nil
}

// commit writes the pre values of txn's Over and Delete keys, one single
// write each, then the transaction, each op with the context of its key's
// pre value, so it supersedes it.
func (r *txnRun) commit(dc string, txn txncheck.Txn) error {
	return r.withStore(dc, func(st *changelog.Store) error {
		ops := make([]changelog.WriteOp, 0, len(txn.Ops)+1)
		for _, op := range txn.Ops {
			w := changelog.WriteOp{Key: op.Key, Value: txncheck.TxnValue(op.Key)}
			if op.Kind != txncheck.Fresh {
				res, err := r.single(st, op.Key, txncheck.Pre(op.Key), false)
				if err != nil {
					return err
				}
				w.Context = res.State.Clock
			}
			if op.Kind == txncheck.Delete {
				w.Value, w.Delete = nil, true
			}
			ops = append(ops, w)
		}
		if txn.Hot != "" {
			cur, _, err := st.Get(txn.Hot)
			if err != nil {
				return err
			}
			hot := changelog.WriteOp{Key: txn.Hot, Value: txncheck.HotValue(txn), Context: cur.Clock}
			if hot.Context == nil {
				hot.Context = vclock.VV{}
			}
			ops = append(ops, hot)
		}
		res, err := st.WriteTxn(context.Background(), ops)
		if err != nil {
			return fmt.Errorf("transaction %s at %s: %w", txn.ID(), dc, err)
		}
		r.events[dc].Add(uint64(len(ops)))
		a := txncheck.Acked{Txn: txn}
		for _, x := range res[:len(txn.Ops)] {
			a.Dots = append(a.Dots, x.Event.Dot)
		}
		r.committed.Add(a)
		return nil
	})
}

// writer commits count transactions at dc, numbered w, w+workers, ...;
// after a quarter of them a single-key put overtakes one key of that
// transaction, after another quarter one of an earlier one; now and then
// a single-key write hits a hot key.
func (r *txnRun) writer(dc string, w, workers, count int) error {
	rng := rand.New(rand.NewPCG(r.seed, uint64(slices.Index(r.c.dcs, dc)*workers+w)))
	var mine []txncheck.Txn
	for i := range count {
		txn := txncheck.Plan(r.seed, dc, w+workers*i)
		if err := r.commit(dc, txn); err != nil {
			return err
		}
		mine = append(mine, txn)
		roll := rng.IntN(8)
		err := r.withStore(dc, func(st *changelog.Store) error {
			if roll < 4 {
				target := txn
				if roll >= 2 {
					target = mine[rng.IntN(len(mine))]
				}
				op := target.Ops[rng.IntN(len(target.Ops))]
				if _, err := r.single(st, op.Key, txncheck.Post(op.Key, i), true); err != nil {
					return err
				}
			}
			if roll%3 == 0 {
				hot := fmt.Sprintf("%s%d", txncheck.HotPrefix, rng.IntN(txncheck.HotKeys))
				if _, err := r.single(st, hot, fmt.Appendf(nil, "hot single %s/%d", dc, i), true); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// reader checks, at dc until stop is closed, consistent snapshots of every
// checked key, and the latest transactions of the other DCs read key by
// key.
func (r *txnRun) reader(dc string, stop <-chan struct{}) error {
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		err := r.withStore(dc, func(st *changelog.Store) error {
			snap := map[string]txncheck.Observation{}
			err := st.Scan(txncheck.Prefix, func(key string, s dvv.State) error {
				snap[key] = observation(s, true)
				return nil
			})
			if err != nil {
				return fmt.Errorf("scan at %s: %w", dc, err)
			}
			r.tally.Snapshot(dc, snap, r.lookup)
			for _, txn := range r.committed.Latest(dc, 2) {
				obs := make([]txncheck.Observation, len(txn.Ops))
				for i, op := range txn.Ops {
					s, ok, err := st.Get(op.Key)
					if err != nil {
						return fmt.Errorf("get %s at %s: %w", op.Key, dc, err)
					}
					obs[i] = observation(s, ok)
				}
				r.tally.Sequence(dc, txn, obs)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
}

// startReaders runs a reader at every DC until the returned halt, which
// waits for them and may be called more than once. The readers' findings
// are checked when the test ends, even if it fails first.
func (r *txnRun) startReaders() (halt func()) {
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for _, dc := range r.c.dcs {
		readers.Go(func() {
			if err := r.reader(dc, stop); err != nil {
				r.t.Errorf("reader at %s: %v", dc, err)
			}
		})
	}
	halt = sync.OnceFunc(func() {
		close(stop)
		readers.Wait()
	})
	r.t.Cleanup(r.checkReaders)
	r.t.Cleanup(halt)
	return halt
}

func observation(s dvv.State, ok bool) txncheck.Observation {
	ob := txncheck.Observation{Present: ok}
	for _, sb := range s.Live() {
		ob.Live = append(ob.Live, string(sb.Value))
	}
	return ob
}

// checkReaders fails the test if a reader saw a transaction in part, or
// checked nothing.
func (r *txnRun) checkReaders() {
	if r.tally.Violations.Load() > 0 || r.tally.Snapshots.Load() == 0 {
		r.t.Errorf("readers saw transactions in part (%s):\n  %s", &r.tally, strings.Join(r.tally.Examples(), "\n  "))
	}
}

// committedCount returns how many transactions the DCs committed so far.
func (r *txnRun) committedCount() int {
	n := 0
	for _, k := range r.committed.Counts() {
		n += k
	}
	return n
}

// checkWhole requires every committed transaction to be whole at every
// DC: each op's key covers the op's dot and shows it, or a later write.
// A deleted key may be gone, purged.
func (r *txnRun) checkWhole() (txns, ops int) {
	r.t.Helper()
	all := r.committed.All()
	for _, dc := range r.c.dcs {
		st := r.c.store(dc)
		for _, a := range all {
			for i, op := range a.Txn.Ops {
				s, ok, err := st.Get(op.Key)
				if err != nil {
					r.t.Fatal(err)
				}
				if !txncheck.Whole(op, observation(s, ok), s.Clock, a.Dots[i]) {
					r.t.Errorf("%s lacks op %d (%s, dot %s) of transaction %s: state %+v (present %t)", dc, i, op.Key, a.Dots[i], a.Txn.ID(), s, ok)
				}
			}
			ops += len(a.Txn.Ops)
		}
	}
	return len(all), ops / len(r.c.dcs)
}

func txnVisibility(t *testing.T, seed uint64, topo string, n int, restart string) {
	begin := time.Now()
	c := newCluster(t, topo, n, nil).start()
	r := newTxnRun(t, c, seed)
	const workers, perWorker = 2, 20

	halt := r.startReaders()
	var writers sync.WaitGroup
	for _, dc := range c.dcs {
		for w := range workers {
			writers.Go(func() {
				if err := r.writer(dc, w, workers, perWorker); err != nil {
					t.Errorf("writer %d at %s: %v", w, dc, err)
				}
			})
		}
	}
	defer writers.Wait()

	var lost *lostTxn
	if restart != "" {
		total := workers * perWorker * n
		cluster.Eventually(t, 30*time.Second, "a third of the transactions", func() (bool, string) {
			got := r.committedCount()
			return got >= total/3, fmt.Sprintf("%d of %d committed", got, total)
		})
		up := c.dcs[slices.Index(c.dcs, restart)-1]
		r.restart(restart, func() { lost = r.loseTxn(up, restart) })
	}
	writers.Wait()
	wrote := time.Since(begin)
	c.waitConverged(60 * time.Second)
	converged := time.Since(begin)
	halt()

	want := map[string]uint64{}
	var all uint64
	for _, dc := range c.dcs {
		all += r.events[dc].Load()
	}
	for _, dc := range c.dcs {
		want[dc] = all - r.events[dc].Load()
		var issued uint64
		for _, seq := range c.store(dc).Applied()[dc] {
			issued += seq
		}
		if issued != r.events[dc].Load() {
			t.Errorf("%s issued sequence numbers up to %d in all, but wrote %d events: a sequence was skipped or reused", dc, issued, r.events[dc].Load())
		}
	}
	c.checkAppliedOnce(want)
	txns, ops := r.checkWhole()
	if lost != nil {
		s := c.stats(restart)
		if s.RepairedEvents < uint64(lost.ops) || s.Repairs == 0 {
			t.Errorf("%s repaired %d events in %d repairs; the transaction of %s deleted from %s has %d ops it had to repair",
				restart, s.RepairedEvents, s.Repairs, lost.id, lost.stream, lost.ops)
		}
		t.Logf("deleted the transaction of %s (%d ops, message %d of %s) while %s was down; %s repaired %d events in %d repairs",
			lost.id, lost.ops, lost.seq, lost.stream, restart, restart, s.RepairedEvents, s.Repairs)
	}
	for _, dc := range c.dcs {
		s := c.stats(dc)
		t.Logf("%s: issued %d events; applied %d changed + %d obsolete; %d duplicates, %d gaps, %d repairs (%d events), %d forwarded, %d loops dropped",
			dc, r.events[dc].Load(), s.Applied, s.Obsolete, s.Duplicates, s.Gaps, s.Repairs, s.RepairedEvents, s.Forwarded, s.LoopsDropped)
	}
	t.Logf("%s-%d: %d transactions committed, %d events; readers: %s; written in %s, converged at %s; %d transactions (%d ops) whole at every DC",
		topo, n, r.committedCount(), all, &r.tally, wrote.Round(time.Millisecond), converged.Round(time.Millisecond), txns, ops)
}

// lostTxn is a transaction deleted from a stream before its consumer took
// it.
type lostTxn struct {
	id     string // the dot of its first op
	stream string
	seq    uint64
	ops    int
}

// loseTxn, while dc is down, deletes from its upstream up's stream the
// first transaction dc's consumer has not been handed yet, as a server
// that lost unsynced writes would: dc must find the gap, hold what
// follows it in the transaction's partitions, and repair the transaction
// from its origin.
func (r *txnRun) loseTxn(up, dc string) *lostTxn {
	t := r.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := r.c.js(t)
	lost := &lostTxn{stream: names.Stream(up)}
	s, err := js.Stream(ctx, lost.stream)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := s.Consumer(ctx, names.Consumer(dc, up))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oc, err := js.OrderedConsumer(ctx, lost.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{names.TxnSubject(up)},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    info.Delivered.Stream + 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := oc.Next(jetstream.FetchMaxWait(20 * time.Second))
	if err != nil {
		t.Fatalf("no transaction on %s after sequence %d, which %s's consumer was handed last: %v", lost.stream, info.Delivered.Stream, dc, err)
	}
	evs, err := event.DecodeMessage(m.Data(), event.Limits{})
	if err != nil {
		t.Fatalf("a message on %s: %v", m.Subject(), err)
	}
	md, err := m.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	lost.id, lost.seq, lost.ops = evs[0].Dot.String(), md.Sequence.Stream, len(evs)
	if err := s.DeleteMsg(ctx, lost.seq); err != nil {
		t.Fatalf("delete message %d of %s: %v", lost.seq, lost.stream, err)
	}
	return lost
}

// TestTxnLostMessages loses messages before their consumer reads them, in
// a ring of 3, while a reader at every DC checks that no transaction shows
// in part. dc1 writes, in this order:
//
//   - A, the pre value of T1's key in partition 0;
//   - T1, over partitions 0, 1 and 2, then B, a single-key write to its key
//     in partition 1;
//   - T2, over partitions 2 and 3, then C, a write to its key in 3;
//
// and ten more transactions. A is deleted from dc1's stream, and dc1's
// Replicator is stopped, so nobody can repair A: dc2 must hold all of T1,
// and B behind it, while it waits, and show none of it. Once dc1 is back,
// dc2 repairs A and takes T1 whole. Then the forwarded copy of T2 is
// deleted from dc2's stream, so dc3 must repair the whole transaction
// from its origin, dc1, while C waits. Every DC ends whole.
func TestTxnLostMessages(t *testing.T) {
	seed := txnTestSeed(t)
	c := newCluster(t, "ring", 3, nil).start()
	// ctx is the test's: each JetStream call has the client's default
	// timeout. A deadline set here would run out during the test's waits
	// when the machine is loaded.
	ctx := t.Context()
	js := c.js(t)
	c.stopRep("dc2")
	c.stopRep("dc3")
	r := newTxnRun(t, c, seed)
	t1 := r.planIn("dc1", 1, []txncheck.Kind{txncheck.Over, txncheck.Fresh, txncheck.Delete}, []uint32{0, 1, 2})
	t2 := r.planIn("dc1", 2, []txncheck.Kind{txncheck.Over, txncheck.Fresh}, []uint32{2, 3})

	halt := r.startReaders()
	r.mustCommit("dc1", t1)
	r.mustPost("dc1", t1.Ops[1].Key)
	r.mustCommit("dc1", t2)
	r.mustPost("dc1", t2.Ops[1].Key)
	for n := 3; n < 13; n++ {
		r.mustCommit("dc1", txncheck.Plan(seed, "dc1", n))
	}
	c.waitPublished("dc1")
	a := findMsg(t, ctx, js, "dc1", func(evs []*event.Event) bool {
		return evs[0].TxnOps == 0 && evs[0].Key == t1.Ops[0].Key
	})
	deleteMsgs(t, ctx, js, "dc1", a)

	// T1 is the first event of partition 0 after A: once dc2 counts a
	// gap, it has tried T1, and its batch is committed.
	c.stopRep("dc1")
	c.startRep("dc2")
	cluster.Eventually(t, 10*time.Second, "dc2 holding T1 for the gap", func() (bool, string) {
		s := c.rep("dc2").Stats()
		return s.Gaps > 0, fmt.Sprintf("%d gaps", s.Gaps)
	})
	for _, key := range []string{t1.Ops[0].Key, t1.Ops[1].Key, t1.Ops[2].Key} {
		op, _ := t1.Op(key)
		var ob txncheck.Observation
		if err := r.withStore("dc2", func(st *changelog.Store) error {
			s, ok, err := st.Get(key)
			ob = observation(s, ok)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if stage := txncheck.Observe(op, ob); stage != txncheck.Before && stage != txncheck.Unknown {
			t.Errorf("dc2 shows %s = %+v of transaction %s while the transaction waits for A, the event before it in partition 0, which only dc1 (stopped) can repair",
				key, ob, t1.ID())
		}
	}
	c.startRep("dc1")
	c.waitCaughtUp("dc2", "dc1")
	m2 := findMsg(t, ctx, js, "dc2", func(evs []*event.Event) bool { return evs[0].Key == t2.Ops[0].Key && evs[0].TxnOps > 0 })
	deleteMsgs(t, ctx, js, "dc2", m2)

	c.startRep("dc3")
	c.waitConverged(20 * time.Second)
	halt()
	all := r.events["dc1"].Load()
	c.checkAppliedOnce(map[string]uint64{"dc2": all, "dc3": all})
	txns, ops := r.checkWhole()
	for dc, lost := range map[string]int{"dc2": 1, "dc3": len(t2.Ops)} {
		s := c.stats(dc)
		if s.RepairedEvents < uint64(lost) || s.Repairs == 0 {
			t.Errorf("%s repaired %d events in %d repairs; it lost %d", dc, s.RepairedEvents, s.Repairs, lost)
		}
		t.Logf("%s: lost %d events; %d gaps, %d repairs (%d events), %d duplicates", dc, lost, s.Gaps, s.Repairs, s.RepairedEvents, s.Duplicates)
	}
	t.Logf("dc1 wrote %d events; readers: %s; %d transactions (%d ops) whole at every DC", all, &r.tally, txns, ops)
}

// planIn plans transaction n of origin by hand: op j of kind kinds[j] on
// a key in partition parts[j].
func (r *txnRun) planIn(origin string, n int, kinds []txncheck.Kind, parts []uint32) txncheck.Txn {
	txn := txncheck.Txn{Origin: origin, N: n}
	j := 0
	for i, k := range kinds {
		for ; ; j++ {
			key := txncheck.Key(origin, n, j, k)
			if event.PartitionOf(key, partitions) == parts[i] {
				txn.Ops = append(txn.Ops, txncheck.Op{Key: key, Kind: k})
				j++
				break
			}
		}
	}
	r.fixed[txn.ID()] = txn
	return txn
}

func (r *txnRun) mustCommit(dc string, txn txncheck.Txn) {
	r.t.Helper()
	if err := r.commit(dc, txn); err != nil {
		r.t.Fatal(err)
	}
}

// mustPost overwrites key at dc with a post value, superseding what dc
// holds.
func (r *txnRun) mustPost(dc, key string) {
	r.t.Helper()
	if err := r.withStore(dc, func(st *changelog.Store) error {
		_, err := r.single(st, key, txncheck.Post(key, 0), true)
		return err
	}); err != nil {
		r.t.Fatal(err)
	}
}

// findMsg returns the sequence of the first message in dc's stream whose
// events match.
func findMsg(t *testing.T, ctx context.Context, js jetstream.JetStream, dc string, match func([]*event.Event) bool) uint64 {
	t.Helper()
	s, err := js.Stream(ctx, names.Stream(dc))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("message %d of %s: %v", seq, names.Stream(dc), err)
		}
		evs, err := event.DecodeMessage(m.Data, event.Limits{})
		if err != nil {
			t.Fatalf("message %d of %s: %v", seq, names.Stream(dc), err)
		}
		if match(evs) {
			return seq
		}
	}
	t.Fatalf("no such message in %s", names.Stream(dc))
	return 0
}
