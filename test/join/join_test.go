// Package join_test bootstraps DCs with `replicator join` (pkg/join)
// between real sidecars (pkg/node, HTTP API on) on a real embedded
// JetStream, under continuous write load (test/internal/ledger): a fourth
// DC added to a running mesh, and a DC whose data dir was wiped
// (docs/DESIGN.md "join"). Set REPL_TEST_LOG=1 to see the sidecars' logs.
package join_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/join"
	"github.com/replicatorhq/replicator/pkg/node"
	"github.com/replicatorhq/replicator/test/internal/ledger"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const partitions = 8

var keys = ledger.KeySet(24)

// joinCluster is the DCs as the ledger's workload and accounting see
// them; each DC has the dcs it was last started or joined with.
type joinCluster struct {
	*cluster.Cluster
	t       *testing.T
	client  *http.Client
	members []string
	dcs     map[string][]string // each DC's configured dcs; only the test goroutine touches it
}

func newCluster(t *testing.T, names ...string) *joinCluster {
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	c := &joinCluster{t: t, client: &http.Client{Transport: tr, Timeout: 20 * time.Second}, members: names, dcs: map[string][]string{}}
	c.Cluster = cluster.Start(t, cluster.Options{
		DCs: names, Partitions: partitions, HTTP: true, ReportInterval: 100 * time.Millisecond, NoStart: true, ServerName: "join",
		Config: func(cfg *config.Config) {
			cfg.DCs = c.dcs[cfg.DC]
			cfg.Resolvers.Rules = []config.Rule{{Prefix: ledger.LWWPrefix, Resolver: config.LWW}}
		},
		Logger: func(dc string) *slog.Logger { return testutil.Logger(t, dc) },
	})
	return c
}

// start starts DC name with the configured dcs.
func (c *joinCluster) start(name string, dcs []string) {
	c.t.Helper()
	c.dcs[name] = dcs
	if err := c.StartDC(context.Background(), name); err != nil {
		c.t.Fatal(err)
	}
}

func (c *joinCluster) stop(name string) {
	if err := c.StopDC(name); err != nil {
		c.t.Error(err)
	}
}

func (c *joinCluster) node(name string) *node.Node { return c.Node(name) }

// join bootstraps DC name from peer, with its sidecar stopped.
func (c *joinCluster) join(name, from string, dcs []string) join.Result {
	c.t.Helper()
	c.dcs[name] = dcs
	nc, err := nats.Connect(c.URL(), nats.Name("join-"+name))
	if err != nil {
		c.t.Fatal(err)
	}
	defer nc.Close()
	res, err := join.Run(context.Background(), c.Config(name), nc, join.Options{From: from, Logger: testutil.Logger(c.t, name)})
	if err != nil {
		c.t.Fatalf("join %s from %s: %v", name, from, err)
	}
	return res
}

func (c *joinCluster) base(dc string) string { return c.BaseURL(dc) }

func (c *joinCluster) Get(dc, key string) (sidecar.KV, int, error) {
	return sidecar.Get(c.client, dc, c.base(dc), key)
}

func (c *joinCluster) Write(dc, key string, value []byte, vctx *string) (sidecar.WriteResp, int, error) {
	return sidecar.Write(c.client, dc, c.base(dc), key, value, vctx)
}

func (c *joinCluster) Members() []string { return c.members }

func (c *joinCluster) Conflicts(dc string) ([]sidecar.Conflict, error) {
	var cs []sidecar.Conflict
	err := sidecar.GetJSON(c.client, dc, c.base(dc), "/v1/conflicts?limit=100000", &cs)
	return cs, err
}

func (c *joinCluster) Digests() (equal bool, common string, desc []string) {
	equal = true
	for i, name := range c.members {
		n := c.node(name)
		if n == nil {
			return false, "", append(desc, name+" is stopped")
		}
		d, err := n.Store().Digest()
		if err != nil {
			return false, "", append(desc, fmt.Sprintf("%s: %v", name, err))
		}
		desc = append(desc, fmt.Sprintf("%s: %s (%d keys)", name, d.Hex(), d.Keys))
		if i == 0 {
			common = d.Hex()
		} else if d.Hex() != common {
			equal = false
		}
	}
	return equal, common, desc
}

func (c *joinCluster) waitConverged(timeout time.Duration) {
	c.t.Helper()
	cluster.EventuallyEvery(c.t, timeout, 100*time.Millisecond, "equal digests", func() (bool, string) {
		ok, _, desc := c.Digests()
		return ok, strings.Join(desc, "; ")
	})
}

// waitAcked waits until the ledger holds n more acknowledged writes than
// now: the load is really running while the test changes the topology.
func waitAcked(t *testing.T, led *ledger.Ledger, more int64, what string) {
	t.Helper()
	target := led.AckedTotal() + more
	cluster.EventuallyEvery(t, 60*time.Second, 50*time.Millisecond, what, func() (bool, string) {
		return led.AckedTotal() >= target, fmt.Sprintf("%d of %d acknowledged writes", led.AckedTotal(), target)
	})
}

// covers reports whether a covers every entry b has for the origins.
func covers(a, b changelog.Applied, origins []string) bool {
	for _, o := range origins {
		for p, n := range b[o] {
			if !a.Covers(o, uint32(p), n) {
				return false
			}
		}
	}
	return true
}

func sum(row []uint64) (s uint64) {
	for _, v := range row {
		s += v
	}
	return s
}

// preload writes n bulk keys of 400 bytes round the DCs, and deletes every
// tenth, so the snapshot spans several chunks and holds tombstones.
func (c *joinCluster) preload(dcs []string, n int) {
	c.t.Helper()
	val := []byte(strings.Repeat("x", 400))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				nd := c.node(dcs[i%len(dcs)])
				key := fmt.Sprintf("bulk/%05d", i)
				op := changelog.WriteOp{Key: key, Value: val}
				if _, err := nd.Write(context.Background(), op); err != nil {
					errs <- err
					return
				}
				if i%10 == 0 {
					if _, err := nd.Write(context.Background(), changelog.WriteOp{Key: key, Delete: true}); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		c.t.Fatalf("preload: %v", err)
	}
}

func TestJoinFourthDCUnderLoad(t *testing.T) {
	begin := time.Now()
	old := []string{"dc1", "dc2", "dc3"}
	all := []string{"dc1", "dc2", "dc3", "dc4"}
	c := newCluster(t, all...)
	for _, n := range old {
		c.start(n, old)
	}
	c.preload(old, 1500)
	led := ledger.New(all, ledger.Options{MaxExamples: 12})
	load := ledger.NewWorkload(c, led, keys)
	defer load.Halt()
	for i, n := range old {
		load.Start(n, 2, 0, uint64(i+1))
	}
	waitAcked(t, led, 150, "writes before the join")

	// Join dc4 from dc1 while the load runs, then start it.
	res := c.join("dc4", "dc1", all)
	t.Logf("join: %d keys (%d tombstones), %d bytes, %d chunks in %.3fs; applied %v", res.Keys, res.Tombstones, res.Bytes, res.Chunks, res.Seconds, res.Applied)
	if res.Keys == 0 {
		t.Fatal("the snapshot held no keys")
	}
	waitAcked(t, led, 60, "writes between the join and dc4's start")
	started := time.Now()
	c.start("dc4", all)
	target := changelog.Applied{}
	for _, n := range old {
		a := c.node(n).Store().Applied()
		for _, o := range old {
			if target[o] == nil {
				target[o] = make([]uint64, partitions)
			}
			for p, v := range a[o] {
				target[o][p] = max(target[o][p], v)
			}
		}
	}
	cluster.EventuallyEvery(t, 60*time.Second, 20*time.Millisecond, "dc4's catch-up", func() (bool, string) {
		a := c.node("dc4").Store().Applied()
		return covers(a, target, old), fmt.Sprintf("dc4 applied %v, want %v", a, target)
	})
	catchUp := time.Since(started)
	t.Logf("dc4 caught up with what the others had applied at its start in %s", catchUp)
	load.Start("dc4", 2, 0, 4)

	// Rolling restart of the others with dc4 in dcs, the load going on.
	for _, n := range old {
		c.stop(n)
		c.start(n, all)
		waitAcked(t, led, 40, "writes after restarting "+n)
	}
	waitAcked(t, led, 80, "writes after the rolling restart")
	load.Halt()
	c.waitConverged(60 * time.Second)
	ledger.Account(t, c, led, keys, ledger.AccountOptions{StableTimeout: 30 * time.Second, Partitions: partitions})

	// dc4 applied nothing twice: every event it took in sequence (changed
	// or obsolete) moved its applied vector by one beyond the snapshot's.
	st := c.node("dc4").Replicator().Stats()
	final := c.node("dc4").Store().Applied()
	var moved uint64
	for _, o := range old {
		moved += sum(final[o]) - sum(res.Applied[o])
	}
	if st.Applied+st.Obsolete != moved {
		t.Errorf("dc4 took %d events in sequence (%d changed, %d obsolete), but its applied vector moved %d past the snapshot", st.Applied+st.Obsolete, st.Applied, st.Obsolete, moved)
	}
	if st.DeadLetters > 0 {
		t.Errorf("dc4 dead-lettered %d events", st.DeadLetters)
	}
	// The others replicate dc4's writes: each applied all of them.
	own := final["dc4"]
	if sum(own) == 0 || led.Acked("dc4") == 0 {
		t.Fatalf("dc4 wrote nothing (own sequences %v, %d acknowledged)", own, led.Acked("dc4"))
	}
	for _, n := range old {
		if got := c.node(n).Store().Applied()["dc4"]; !slices.Equal(got, own) {
			t.Errorf("%s applied %v of dc4's events, dc4 issued %v", n, got, own)
		}
	}
	t.Logf("figures: snapshot %d keys, %d bytes, %.3fs; dc4 catch-up %s (%d changed, %d obsolete, %d duplicates, %d gaps, %d repaired); %d acknowledged writes (%d at dc4); total %s",
		res.Keys, res.Bytes, res.Seconds, catchUp.Round(time.Millisecond), st.Applied, st.Obsolete, st.Duplicates, st.Gaps, st.RepairedEvents,
		led.AckedTotal(), led.Acked("dc4"), time.Since(begin).Round(time.Millisecond))
}

func TestJoinRestoredDC(t *testing.T) {
	names := []string{"dc1", "dc2", "dc3"}
	c := newCluster(t, names...)
	for _, n := range names {
		c.start(n, names)
	}
	led := ledger.New(names, ledger.Options{MaxExamples: 12})
	load := ledger.NewWorkload(c, led, keys)
	defer load.Halt()
	for i, n := range names {
		load.Start(n, 2, 0, uint64(i+10))
	}
	waitAcked(t, led, 200, "writes before the loss")

	// dc2 stops and loses its data dir; the others keep writing.
	c.stop("dc2")
	// A dot is a per-partition sequence: "partition/dot" names one event.
	pdot := func(op ledger.Op) string { return fmt.Sprintf("%d/%s", event.PartitionOf(op.Key, partitions), op.Dot) }
	oldOwn := map[string]bool{}
	for _, op := range led.AckedOps() {
		if op.DC == "dc2" {
			oldOwn[pdot(op)] = true
		}
	}
	if err := os.RemoveAll(c.DataDir("dc2")); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, led, 40, "writes while dc2 is gone")
	res := c.join("dc2", "dc1", names)
	t.Logf("join: %d keys, %d bytes in %.3fs; dc2 starts at its own sequences %v", res.Keys, res.Bytes, res.Seconds, res.Applied["dc2"])
	c.start("dc2", names)
	waitAcked(t, led, 120, "writes after dc2's return")
	load.Halt()
	c.waitConverged(60 * time.Second)
	ledger.Account(t, c, led, keys, ledger.AccountOptions{StableTimeout: 30 * time.Second, Partitions: partitions})

	// No new write of dc2 reuses a dot of its former life.
	ops := led.AckedOps()
	dots := map[string]int{}
	for _, op := range ops {
		if op.DC == "dc2" && op.Dot != "" {
			dots[pdot(op)]++
		}
	}
	for d, n := range dots {
		if n > 1 {
			t.Errorf("dc2 acknowledged event %s %d times: a sequence number was reissued", d, n)
		}
	}
	newWrites := len(dots) - len(oldOwn)
	if newWrites <= 0 {
		t.Fatal("dc2 acknowledged no write after its return")
	}
	t.Logf("dc2: %d writes before the loss, %d after; %d acknowledged writes in all", len(oldOwn), newWrites, led.AckedTotal())
}
