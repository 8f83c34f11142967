package fault_test

import (
	"testing"
	"time"

	"github.com/replicatorhq/replicator/test/internal/ledger"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// The ledger (test/internal/ledger) records what clients did and saw over
// HTTP, so that after convergence every acknowledged write can be
// accounted for: a live sibling at every DC, superseded by an
// acknowledged write whose context covered it, or logged as discarded by
// a resolver (docs/DESIGN.md, invariants 1, 5, 6).

// newLedger returns the ledger of writes at dcs. A blind write of
// uncertain outcome covers what a read just before it returned.
func newLedger(dcs []string) *ledger.Ledger {
	return ledger.New(dcs, ledger.Options{BlindDoubts: true, MaxExamples: 8})
}

// newWorkload drives writes to keys at c's DCs over HTTP.
func newWorkload(c *cluster, led *ledger.Ledger, keys []string) *ledger.Workload {
	return ledger.NewWorkload(c, led, keys)
}

// account checks, after convergence, that every acknowledged put is
// accounted for; that nothing superseded through a context is live again
// (no resurrection); that no discarded version is what a DC shows; and
// that each live acknowledged value carries the dot its write was
// acknowledged with, at every DC, so no write became two events.
func account(t *testing.T, c *cluster, led *ledger.Ledger, keys []string) ledger.Accounting {
	t.Helper()
	return ledger.Account(t, c, led, keys, ledger.AccountOptions{
		StableTimeout: 60 * time.Second,
		Partitions:    c.opts.partitions,
		FindEvent:     c.findEvent,
	})
}

// The cluster as the ledger's workload and accounting see it.

func (c *cluster) Get(dc, key string) (sidecar.KV, int, error) { return c.get(c.member(dc), key) }

func (c *cluster) Write(dc, key string, value []byte, vctx *string) (sidecar.WriteResp, int, error) {
	return c.write(c.member(dc), key, value, vctx)
}

func (c *cluster) Members() []string {
	names := make([]string, len(c.members))
	for i, m := range c.members {
		names[i] = m.name
	}
	return names
}

func (c *cluster) Conflicts(dc string) ([]sidecar.Conflict, error) { return c.conflicts(c.member(dc)) }

func (c *cluster) Digests() (equal bool, common string, desc []string) {
	equal, d, desc := c.digests()
	return equal, d.Digest, desc
}
