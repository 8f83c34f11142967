package core

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// TestShardForwardsWhole: of a DC's shards, the owner of a transaction's
// first op's partition forwards it whole, the others nothing; a shard
// holding all of it forwards it as it is; Own leaves the transaction's
// ops as they came.
func TestShardForwardsWhole(t *testing.T) {
	txn := func(parts ...uint32) []*event.Event {
		var out []*event.Event
		for i, p := range parts {
			out = append(out, &event.Event{Origin: "dc1", Partition: p, Seq: uint64(i + 1), Dot: vclock.Dot{DC: "dc1", N: uint64(i + 1)}, TxnOps: len(parts)})
		}
		return out
	}
	even := &Shard{Owns: func(p uint32) bool { return p%2 == 0 }}
	odd := &Shard{Owns: func(p uint32) bool { return p%2 == 1 }}
	all := txn(2, 1, 4)
	for _, c := range []struct {
		name     string
		s        *Shard
		own      int
		forwards bool
	}{
		{"owner of the first op's partition", even, 2, true},
		{"another owner", odd, 1, false},
	} {
		own := c.s.Own(all)
		if len(own) != c.own || own[0].TxnOps != c.own {
			t.Fatalf("%s: own %d ops (TxnOps %d), want %d", c.name, len(own), own[0].TxnOps, c.own)
		}
		fw, part := c.s.whole(all, own)
		switch {
		case !part:
			t.Errorf("%s: its part is taken for the whole transaction", c.name)
		case c.forwards && len(fw) != len(all):
			t.Errorf("%s: forwards %d ops, want the whole %d", c.name, len(fw), len(all))
		case !c.forwards && len(fw) != 0:
			t.Errorf("%s: forwards %d ops, want none", c.name, len(fw))
		}
	}
	for _, ev := range all {
		if ev.TxnOps != 3 {
			t.Fatalf("Own changed the transaction it was given: an op has TxnOps %d", ev.TxnOps)
		}
	}
	mine := txn(2, 4)
	if _, part := even.whole(mine, even.Own(mine)); part {
		t.Errorf("a transaction wholly in one shard's partitions is taken for a part")
	}
	var none *Shard
	if !none.Forwards(all) {
		t.Errorf("a DC of one sidecar does not forward")
	}
}

// askedCoordinator counts the Prepare calls that may wait; no other shard
// is ever ready.
type askedCoordinator struct{ asked, waited int }

func (c *askedCoordinator) Prepare(_ context.Context, _ string, _, _ []*event.Event, wait bool) (bool, error) {
	c.asked++
	if wait {
		c.waited++
	}
	return false, nil
}

func (c *askedCoordinator) Done(context.Context, string) {}

// TestLinkWaitsOncePerBatch: a shard receives a batch whose events follow
// gaps in two of its partitions, each gap a transaction spanning the DC's
// shards that gap repair brings. The repairs prepare both transactions
// but wait for the other shards at most once in the batch (here not at
// all, as no spanning message is in it): waiting at each repair chained
// the waits while the other shards waited the same way (TestShardedRing
// under load).
func TestLinkWaitsOncePerBatch(t *testing.T) {
	ctx := context.Background()
	dcs := []string{"a", "b", "c"}
	origin := openStore(t, "b", dcs)
	key := func(p uint32, tag string) string {
		for i := 0; ; i++ {
			if k := fmt.Sprintf("%s/%d", tag, i); event.PartitionOf(k, testParts) == p {
				return k
			}
		}
	}
	// Transactions over partitions 0 and 1, and 2 and 3; then a write in
	// each of 0 and 2, which the even shard owns.
	for _, ps := range [][2]uint32{{0, 1}, {2, 3}} {
		if _, err := origin.WriteTxn(ctx, []changelog.WriteOp{{Key: key(ps[0], "t"), Value: []byte("x")}, {Key: key(ps[1], "t"), Value: []byte("y")}}); err != nil {
			t.Fatal(err)
		}
	}
	var batch []Msg
	for _, p := range []uint32{0, 2} {
		batch = append(batch, writes(t, origin, key(p, "w"), 1)...)
	}
	coord := &askedCoordinator{}
	sh := &Shard{Owns: func(p uint32) bool { return p%2 == 0 }, Coordinator: coord}
	plan := mustPlan(t, "mesh", "a", dcs, "")
	l := NewLink(LinkConfig{
		Up: "b", Plan: plan, Check: NewChecker(plan.dcs, testParts, event.Limits{}), Shard: sh,
		Repair: Repairer{Store: openStore(t, "a", dcs), Source: &origins{stores: map[string]*changelog.Store{"b": origin}},
			Partitions: testParts, Shard: sh, Forward: func(*event.Event) bool { return false }},
		MaxDeliver: 3, GapDelay: 200 * time.Millisecond, RetryDelay: time.Second,
	})
	vs, _ := l.Receive(ctx, batch)
	if got := actions(vs); got != "nak(200ms) nak(200ms)" {
		t.Fatalf("verdicts %s, want both held for their gaps", got)
	}
	if coord.asked != 2 || coord.waited > 1 {
		t.Fatalf("the repairs asked the other shards about %d transactions, waiting %d times; want both asked, at most one wait in a batch", coord.asked, coord.waited)
	}
}
