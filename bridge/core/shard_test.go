package core

import (
	"testing"

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
