package bridge_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/test/internal/txncheck"
)

// TestTxnCatchUpFollowsTransaction: a DC that lost a transaction and the
// events after it finds them by comparing its applied vector with the
// origin's reports, and repairs partition 0, whose reply holds the
// transaction T (partitions 0 and 1) and then three more events of
// partition 0. T waits for A, the event before it in partition 1, which
// is lost too; the repair follows T there and repairs A (bridge/repair.go,
// repairDepth). The repair must then take T and the events after it,
// rather than give up with "still follows a gap" and leave them to the
// next catch-up round: a DC catching up on transactions across
// partitions would otherwise advance by one transaction per round
// (Options.RepairAfter), and log each round as a failed repair.
func TestTxnCatchUpFollowsTransaction(t *testing.T) {
	c := newCluster(t, "mesh", 2, nil).start()
	// ctx is the test's: each JetStream call has the client's default
	// timeout. A deadline set here would run out during the test's waits
	// when the machine is loaded.
	ctx := t.Context()
	js := c.js(t)
	c.stopRep("dc2")
	r := newTxnRun(t, c, 1)
	txn := r.planIn("dc1", 1, []txncheck.Kind{txncheck.Fresh, txncheck.Over}, []uint32{0, 1})
	r.mustCommit("dc1", txn) // A, the pre value of op 1, then T
	for range 3 {
		r.mustPost("dc1", txn.Ops[0].Key)
	}
	c.waitPublished("dc1")
	// Everything dc1 published is lost: only the catch-up repair can
	// bring it.
	if got := fmt.Sprint(c.store("dc1").Applied()["dc1"]); got != "[4 2 0 0]" {
		t.Fatalf("dc1's sequences per partition are %s, want [4 2 0 0]: T and three writes in partition 0, A and T in 1", got)
	}
	deleteMsgs(t, ctx, js, "dc1", 1, 2, 3, 4, 5)

	c.startRep("dc2")
	c.waitConverged(10 * time.Second)
	c.checkAppliedOnce(map[string]uint64{"dc2": 6})
	if s := c.rep("dc2").Stats(); s.RepairErrors != 0 {
		t.Errorf("dc2 repaired the lost events in %d repairs with %d failures (%d events repaired): "+
			"a repair that follows a transaction into another partition must go on with the events behind the transaction, not fail",
			s.Repairs, s.RepairErrors, s.RepairedEvents)
	}
}
