package bridge_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/event"
)

// TestRestoreAfterTransaction: a DC restored from a copy of its data dir
// older than a transaction it made takes the transaction back from its own
// stream, whole, and continues above every sequence the transaction used
// (docs/DESIGN.md, invariant 4), though no single event on those
// partitions' subjects names them: the transaction's Repl-Seq-His says how
// far each partition went. A reissued sequence would carry an old
// Nats-Msg-Id and be dropped as a duplicate, so the DCs would never
// converge.
func TestRestoreAfterTransaction(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, "mesh", 2, nil).start()
	c.write("dc1", "seed", "before-backup", false)
	c.waitConverged(10 * time.Second)
	backup := c.backup("dc1")
	var ops []changelog.WriteOp
	for i := range 8 {
		ops = append(ops, changelog.WriteOp{Key: fmt.Sprintf("t/%d", i), Value: []byte("in-txn")})
	}
	res, err := c.store("dc1").WriteTxn(ctx, ops)
	if err != nil {
		t.Fatal(err)
	}
	c.waitConverged(10 * time.Second)
	c.stop("dc1")
	c.SetDataDir("dc1", backup)
	c.openStore("dc1")
	c.startRep("dc1")
	// The transaction is back at dc1, whole.
	cluster.Eventually(t, 10*time.Second, "the transaction back at dc1", func() (bool, string) {
		for _, r := range res {
			st, ok, err := c.store("dc1").Get(r.Event.Key)
			if err != nil || !ok || !st.Clock.Covers(r.Event.Dot) {
				return false, fmt.Sprintf("%s (%s) not back at dc1", r.Event.Key, r.Event.Dot)
			}
		}
		return true, ""
	})
	// New writes to the transaction's partitions get fresh sequences.
	for _, r := range res {
		w := c.write("dc1", r.Event.Key+"/after", "after-restore", false)
		if p := event.PartitionOf(r.Event.Key+"/after", partitions); p == r.Event.Partition && w.Event.Seq <= r.Event.Seq {
			t.Fatalf("dc1 reissued sequence %d of partition %d (the transaction used %d)", w.Event.Seq, p, r.Event.Seq)
		}
	}
	for _, r := range res {
		w := c.write("dc1", r.Event.Key, "overwrite", true)
		if w.Event.Seq <= r.Event.Seq {
			t.Fatalf("dc1 wrote %s with sequence %d, at or below the transaction's %d", r.Event.Key, w.Event.Seq, r.Event.Seq)
		}
	}
	c.waitConverged(10 * time.Second)
}
