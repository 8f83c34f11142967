package changelog

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// txnEvents reads the outbox entry a transaction wrote and returns its ops.
func lastOutboxEntry(t *testing.T, s *Store) OutboxEntry {
	t.Helper()
	out, err := s.ReadOutbox(0, 1<<20)
	if err != nil || len(out) == 0 {
		t.Fatalf("outbox: %d entries, %v", len(out), err)
	}
	return out[len(out)-1]
}

func putOps(keys ...string) []WriteOp {
	ops := make([]WriteOp, len(keys))
	for i, k := range keys {
		ops[i] = WriteOp{Key: k, Value: []byte("v-" + k)}
	}
	return ops
}

// TestTxnAtOrigin: one batch, one HLC, one outbox entry; refused ops leave
// nothing behind and name their index (docs/DESIGN.md, invariant 11, the
// origin's half).
func TestTxnAtOrigin(t *testing.T) {
	ctx := context.Background()
	s := openMem(t, vfs.NewMem(), "dc1", Options{Partitions: 4})
	mustWrite(t, s, WriteOp{Key: "before", Value: []byte("x")})
	res, err := s.WriteTxn(ctx, putOps("a", "b", "c", "d", "e"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 5 {
		t.Fatalf("%d results, want 5", len(res))
	}
	for i, r := range res {
		if r.Event.HLC != res[0].Event.HLC {
			t.Fatalf("op %d has HLC %d, op 0 %d", i, r.Event.HLC, res[0].Event.HLC)
		}
		st, ok, _ := s.Get(r.Event.Key)
		if !ok || !st.Clock.Covers(r.Event.Dot) {
			t.Fatalf("op %d (%s) not visible after the commit", i, r.Event.Key)
		}
	}
	e := lastOutboxEntry(t, s)
	if len(e.Txn) != 5 || e.Event != e.Txn[0] {
		t.Fatalf("the transaction is %d outbox ops, want one entry of 5", len(e.Txn))
	}
	digest, _ := s.Digest()
	entries, _ := s.ReadOutbox(0, 100)

	refused := map[string][]WriteOp{
		"key twice":     append(putOps("f", "g"), WriteOp{Key: "f", Value: []byte("again")}),
		"bad key":       append(putOps("f"), WriteOp{Key: "", Value: []byte("x")}),
		"resolve":       append(putOps("f"), WriteOp{Key: "h", Value: []byte("x"), Resolve: true}),
		"context ahead": append(putOps("f"), WriteOp{Key: "i", Value: []byte("x"), Context: vclock.VV{"dc2": 5}}),
		"future own":    append(putOps("f"), WriteOp{Key: "j", Value: []byte("x"), Context: vclock.VV{"dc1": 999}}),
	}
	for name, ops := range refused {
		_, err := s.WriteTxn(ctx, ops)
		var te *TxnError
		if !errors.As(err, &te) || te.Index != len(ops)-1 {
			t.Errorf("%s: err %v, want a TxnError naming op %d", name, err, len(ops)-1)
		}
	}
	if _, err := s.WriteTxn(ctx, nil); !errors.Is(err, ErrBadInput) {
		t.Errorf("empty transaction: %v", err)
	}
	after, _ := s.Digest()
	if after.Hex() != digest.Hex() {
		t.Fatal("a refused transaction changed the state")
	}
	if got, _ := s.ReadOutbox(0, 100); len(got) != len(entries) {
		t.Fatalf("a refused transaction queued %d outbox entries", len(got)-len(entries))
	}
	for _, k := range []string{"f", "g", "h", "i", "j"} {
		if _, ok, _ := s.Get(k); ok {
			t.Fatalf("key %q of a refused transaction exists", k)
		}
	}
}

func TestTxnLimits(t *testing.T) {
	ctx := context.Background()
	s := openMem(t, vfs.NewMem(), "dc1", Options{TxnMaxOps: 3, TxnMaxBytes: 1000})
	if _, err := s.WriteTxn(ctx, putOps("a", "b", "c", "d")); !errors.Is(err, ErrBadInput) {
		t.Fatalf("4 ops over a 3-op limit: %v", err)
	}
	big := []WriteOp{{Key: "a", Value: make([]byte, 900)}}
	if _, err := s.WriteTxn(ctx, big); !errors.Is(err, ErrBadInput) {
		t.Fatalf("900 B value over a 1000 B limit with overhead: %v", err)
	}
	if _, err := s.WriteTxn(ctx, putOps("a", "b", "c")); err != nil {
		t.Fatalf("3 small ops: %v", err)
	}
}

// TestTxnAppliesWhole: at another DC a transaction is applied in one piece:
// when one of its partitions has a gap nothing of it is applied, and once
// the gap is filled all of it is (docs/DESIGN.md, invariant 11).
func TestTxnAppliesWhole(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	src := openMem(t, fs, "dc1", Options{Partitions: 4})
	dst := openMem(t, fs, "dc2", Options{Partitions: 4})
	// A single write first, so the transaction's op in that partition
	// follows it.
	keys := []string{"a", "b", "c", "d", "e", "f"}
	first := mustWrite(t, src, WriteOp{Key: "a0", Value: []byte("x")}).Event
	res, err := src.WriteTxn(ctx, putOps(keys...))
	if err != nil {
		t.Fatal(err)
	}
	ops := lastOutboxEntry(t, src).Txn
	// Without the single write, the op in its partition waits.
	out, err := dst.Apply(ctx, ops, nil)
	if err != nil {
		t.Fatal(err)
	}
	gapped := 0
	for i, r := range out {
		if r.Outcome != Gap {
			t.Fatalf("op %d: %s, want every op held", i, r.Outcome)
		}
		if r.Expected < ops[i].Seq {
			gapped++
		}
	}
	if gapped == 0 {
		t.Fatal("no op reports the gap it waits for")
	}
	for _, k := range keys {
		if _, ok, _ := dst.Get(k); ok {
			t.Fatalf("key %q of a held transaction is visible", k)
		}
	}
	// Fill the gap and redeliver: all of it at once, then duplicates.
	out, err = dst.Apply(ctx, append([]*event.Event{first}, ops...), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range out {
		if r.Outcome != Changed {
			t.Fatalf("event %d: %s, want changed", i, r.Outcome)
		}
	}
	for i, k := range keys {
		st, ok, _ := dst.Get(k)
		if !ok || !st.Clock.Covers(res[i].Event.Dot) {
			t.Fatalf("key %q missing after the transaction applied", k)
		}
	}
	out, _ = dst.Apply(ctx, ops, nil)
	for i, r := range out {
		if r.Outcome != Duplicate {
			t.Fatalf("redelivered op %d: %s", i, r.Outcome)
		}
	}
	if a, b := mustDigest(t, src), mustDigest(t, dst); a != b {
		t.Fatalf("digests differ: %s %s", a, b)
	}
}

func mustDigest(t *testing.T, s *Store) string {
	t.Helper()
	d, err := s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.Hex()
}

// TestTxnForwardAndRepair: a forwarding DC queues a transaction as one
// entry with its path extended; the origin serves a transaction holding
// several sequences of a partition once; trimming waits for every op.
func TestTxnForwardAndRepair(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	src := openMem(t, fs, "dc1", Options{Partitions: 1})
	mid := openMem(t, fs, "dc2", Options{Partitions: 1})
	if _, err := src.WriteTxn(ctx, putOps("a", "b", "c")); err != nil {
		t.Fatal(err)
	}
	ops := lastOutboxEntry(t, src).Txn
	out, err := mid.Apply(ctx, ops, func(*event.Event) bool { return true })
	if err != nil || !out[0].Forwarded {
		t.Fatalf("apply: %+v %v", out, err)
	}
	fw := lastOutboxEntry(t, mid)
	if len(fw.Txn) != 3 || fmt.Sprint(fw.Event.Path) != "[dc1 dc2]" {
		t.Fatalf("forwarded entry: %d ops, path %v", len(fw.Txn), fw.Event.Path)
	}
	raw, err := src.OwnEvents(0, 1, 3, 10)
	if err != nil || len(raw) != 1 {
		t.Fatalf("OwnEvents(1..3) = %d entries, %v; want the transaction once", len(raw), err)
	}
	if evs, err := event.DecodeMessage(raw[0], event.DefaultLimits()); err != nil || len(evs) != 3 {
		t.Fatalf("repair entry decodes to %d ops, %v", len(evs), err)
	}
}

// TestTxnLWWLosesWhole: every op of a transaction carries one HLC, so under
// lww a whole transaction loses against a concurrent later one, and every
// discarded version is logged.
func TestTxnLWWLosesWhole(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	lww := rules(t, resolve.LWW())
	clk1, clk2 := &counterClock{}, &counterClock{}
	clk2.n.Store(1000) // dc2's transaction is later
	a := openMem(t, fs, "dc1", Options{Partitions: 4, Resolvers: lww, Clock: clk1})
	b := openMem(t, fs, "dc2", Options{Partitions: 4, Resolvers: lww, Clock: clk2})
	keys := []string{"acct/1", "acct/2", "acct/3"}
	if _, err := a.WriteTxn(ctx, putOps(keys...)); err != nil {
		t.Fatal(err)
	}
	opsA := lastOutboxEntry(t, a).Txn
	wb := putOps(keys...)
	for i := range wb {
		wb[i].Value = []byte("from-dc2")
	}
	if _, err := b.WriteTxn(ctx, wb); err != nil {
		t.Fatal(err)
	}
	opsB := lastOutboxEntry(t, b).Txn
	if _, err := a.Apply(ctx, opsB, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Apply(ctx, opsA, nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} {
		for _, k := range keys {
			st, _, _ := s.Get(k)
			r := resolve.LWW().Resolve(k, st.Siblings)
			if len(r.Values) != 1 || string(r.Values[0]) != "from-dc2" {
				t.Fatalf("%s %s shows %q, want dc2's whole transaction", s.DC(), k, r.Values)
			}
		}
		logged, err := s.Conflicts(ConflictFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(logged) != len(keys) {
			t.Fatalf("%s logged %d losers, want %d", s.DC(), len(logged), len(keys))
		}
	}
}

// TestApplyWholeForwardsWhole (invariants 7 and 16): a shard applying its
// part of a transaction queues the whole transaction for forwarding when
// whole names it, nothing when whole maps the part to nothing (another
// shard forwards it), and nothing again on a duplicate.
func TestApplyWholeForwardsWhole(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	src := openMem(t, fs, "dc1", Options{Partitions: 4})
	var keys []string
	parts := map[uint32]bool{}
	for i := 0; len(parts) < 2 || len(keys) < 4; i++ {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, k)
		parts[event.PartitionOf(k, 4)] = true
	}
	if _, err := src.WriteTxn(ctx, putOps(keys...)); err != nil {
		t.Fatal(err)
	}
	all := lastOutboxEntry(t, src).Txn
	// A part: the ops of the first op's partition, as a smaller transaction.
	var part []*event.Event
	for _, ev := range all {
		if ev.Partition == all[0].Partition {
			c := *ev
			part = append(part, &c)
		}
	}
	for _, ev := range part {
		ev.TxnOps = len(part)
	}
	if len(part) == len(all) {
		t.Fatalf("the transaction %v holds one partition; the test needs several", keys)
	}
	fwd := func(*event.Event) bool { return true }

	quiet := openMem(t, fs, "dc2", Options{Partitions: 4})
	res, err := quiet.ApplyWhole(ctx, part, map[*event.Event][]*event.Event{part[0]: nil}, fwd)
	if err != nil || res[0].Outcome != Changed || res[0].Forwarded {
		t.Fatalf("a part another shard forwards: %+v %v", res, err)
	}
	if n := quiet.OutboxDepth(); n != 0 {
		t.Fatalf("a part another shard forwards left %d outbox entries", n)
	}

	fw := openMem(t, fs, "dc3", Options{Partitions: 4})
	res, err = fw.ApplyWhole(ctx, part, map[*event.Event][]*event.Event{part[0]: all}, fwd)
	if err != nil || !res[0].Forwarded {
		t.Fatalf("the forwarding shard's part: %+v %v", res, err)
	}
	got := lastOutboxEntry(t, fw)
	if len(got.Txn) != len(all) || fmt.Sprint(got.Txn[0].Path) != "[dc1 dc3]" {
		t.Fatalf("forwarded %d of %d ops, path %v; want the whole transaction", len(got.Txn), len(all), got.Txn[0].Path)
	}
	for i, ev := range got.Txn {
		if ev.Key != all[i].Key || ev.TxnOps != len(all) {
			t.Fatalf("forwarded op %d: %s (of %d ops), want %s (of %d)", i, ev.Key, ev.TxnOps, all[i].Key, len(all))
		}
	}
	res, err = fw.ApplyWhole(ctx, part, map[*event.Event][]*event.Event{part[0]: all}, fwd)
	if err != nil || res[0].Outcome != Duplicate || res[0].Forwarded || fw.OutboxDepth() != 1 {
		t.Fatalf("the part again: %+v %v, outbox %d; want a duplicate, not forwarded", res, err, fw.OutboxDepth())
	}
}
