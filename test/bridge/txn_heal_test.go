package bridge_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/test/internal/txncheck"
)

// TestTxnHealRing (invariant 11 in docs/DESIGN.md, through healing): in a
// ring of four with healing on, the forwarding DC dc2 dies for good a third
// of the way through the other DCs' transactions. dc3 heals around it,
// reading dc1's stream through a heal link, while readers at every live DC
// check that no consistent snapshot and no sequence of single-key reads
// shows part of a transaction. Before dc2 returns, every transaction
// committed at a live DC is whole at every live DC; after it returns,
// everywhere, with every event applied exactly once.
func TestTxnHealRing(t *testing.T) {
	seed := txnTestSeed(t)
	c := newCluster(t, "ring", 4, healing("")).start()
	r := newTxnRun(t, c, seed)
	const workers, perWorker, dead = 2, 15, "dc2"
	writersAt := []string{"dc1", "dc3", "dc4"}

	halt := r.startReaders()
	var writers sync.WaitGroup
	for _, dc := range writersAt {
		for w := range workers {
			writers.Go(func() {
				if err := r.writer(dc, w, workers, perWorker); err != nil {
					t.Errorf("writer %d at %s: %v", w, dc, err)
				}
			})
		}
	}
	defer writers.Wait()
	total := workers * perWorker * len(writersAt)
	cluster.Eventually(t, 30*time.Second, "a third of the transactions", func() (bool, string) {
		got := r.committedCount()
		return got >= total/3, fmt.Sprintf("%d of %d committed", got, total)
	})
	// Kill dc2: its reader waits on the lock until it is back (or, if the
	// test fails first, finds the store closed instead of waiting for ever).
	r.life[dead].Lock()
	locked := true
	defer func() {
		if locked {
			r.life[dead].Unlock()
		}
	}()
	c.stop(dead)
	writers.Wait()

	live := []string{"dc1", "dc3", "dc4"}
	cluster.Eventually(t, 30*time.Second, "dc3 to heal around dc2", func() (bool, string) {
		h := c.rep("dc3").Healing()
		return len(h) == 1 && h[0].Dead == dead && h[0].Via == "dc1", fmt.Sprintf("healing %v", h)
	})
	cluster.Eventually(t, 60*time.Second, "every transaction whole at the live DCs", func() (bool, string) {
		for _, dc := range live {
			if missing := r.notWhole(dc); missing != "" {
				return false, missing
			}
		}
		return true, ""
	})

	c.openStore(dead)
	c.startRep(dead)
	r.life[dead].Unlock()
	locked = false
	c.waitConverged(60 * time.Second)
	halt()

	want := map[string]uint64{}
	var all uint64
	for _, dc := range c.dcs {
		all += r.events[dc].Load()
	}
	for _, dc := range c.dcs {
		want[dc] = all - r.events[dc].Load()
	}
	c.checkAppliedOnce(want)
	txns, ops := r.checkWhole()
	s := c.stats("dc3")
	t.Logf("ring-4 healing around %s: %d transactions, %d events; readers: %s; dc3 healed via dc1 and dropped %d loops; %d transactions (%d ops) whole at every DC",
		dead, r.committedCount(), all, &r.tally, s.LoopsDropped, txns, ops)
}

// notWhole names a committed transaction op dc does not have yet, or "".
func (r *txnRun) notWhole(dc string) string {
	st := r.c.store(dc)
	for _, a := range r.committed.All() {
		for i, op := range a.Txn.Ops {
			s, ok, err := st.Get(op.Key)
			if err != nil {
				return err.Error()
			}
			if !txncheck.Whole(op, observation(s, ok), s.Clock, a.Dots[i]) {
				return fmt.Sprintf("%s lacks op %d (%s, %s) of %s", dc, i, op.Key, a.Dots[i], a.Txn.ID())
			}
		}
	}
	return ""
}
