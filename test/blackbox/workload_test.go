package blackbox_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/test/internal/ledger"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// lwwPrefix is the key prefix the test configs give the lww resolver.
const lwwPrefix = ledger.LWWPrefix

// testKeys is the shared key set: half use the default siblings resolver,
// half the lww rule.
var testKeys = func() []string {
	var ks []string
	for i := range 15 {
		ks = append(ks, fmt.Sprintf("sib/k%02d", i), fmt.Sprintf("%sk%02d", lwwPrefix, i))
	}
	return ks
}()

// newLedger returns the ledger (test/internal/ledger) of writes at the
// three DCs. Only writes with a context are remembered as doubtful when
// their outcome is unknown.
func newLedger() *ledger.Ledger {
	return ledger.New(dcNames, ledger.Options{MaxExamples: 12})
}

// newWorkload drives writes to testKeys at c's DCs over HTTP.
func newWorkload(c *cluster, led *ledger.Ledger) *ledger.Workload {
	return ledger.NewWorkload(c, led, testKeys)
}

// account checks, after convergence, that every acknowledged put is
// accounted for: a live sibling at every DC, superseded by an acknowledged
// write whose context covered it, or logged as discarded by a resolver. It
// also checks that nothing superseded is live again, and that no discarded
// version is what a DC shows.
func account(t *testing.T, c *cluster, led *ledger.Ledger) {
	t.Helper()
	ledger.Account(t, c, led, testKeys, ledger.AccountOptions{StableTimeout: 30 * time.Second, Partitions: 8})
}

// The cluster as the ledger's workload and accounting see it.

func (c *cluster) Get(dc, key string) (sidecar.KV, int, error) { return c.get(c.proc(dc), key) }

func (c *cluster) Write(dc, key string, value []byte, vctx *string) (sidecar.WriteResp, int, error) {
	return c.write(c.proc(dc), key, value, vctx)
}

func (c *cluster) Members() []string {
	names := make([]string, len(c.procs))
	for i, p := range c.procs {
		names[i] = p.name
	}
	return names
}

func (c *cluster) Conflicts(dc string) ([]sidecar.Conflict, error) { return c.conflicts(c.proc(dc)) }

func (c *cluster) Digests() (equal bool, common string, desc []string) { return c.digests() }
