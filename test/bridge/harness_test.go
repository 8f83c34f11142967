// Package bridge_test runs DCs against real embedded NATS JetStream
// servers: topologies, poison input, lost and redelivered messages,
// restarts of NATS, of a sidecar and from an old backup, and the atomic
// visibility of transactions (txn_test.go).
package bridge_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// partitions is the partition count of every test cluster.
const partitions = 4

// bridgeCluster is a set of engine DCs (a store and a Replicator each, see
// pkg/cluster) on one embedded NATS server, with the writes and checks the
// bridge's tests share.
type bridgeCluster struct {
	*cluster.Cluster
	t   testing.TB
	dcs []string
	hub string
}

// newCluster describes n DCs in topology topo; tune, if not nil, adjusts
// every Replicator's options. Start starts them.
func newCluster(t testing.TB, topo string, n int, tune func(*bridge.Options)) *bridgeCluster {
	t.Helper()
	c := cluster.Start(t, cluster.Options{
		N: n, Topology: topo, Partitions: partitions, Engine: true, NoStart: true,
		Logger: func(dc string) *slog.Logger { return testutil.Logger(t, dc) },
		Bridge: func(_ string, o *bridge.Options) {
			o.ReportInterval = 100 * time.Millisecond
			o.GapDelay = 50 * time.Millisecond
			o.RetryDelay = 100 * time.Millisecond
			o.RetryMax = 500 * time.Millisecond
			o.AckWait = 5 * time.Second
			o.FlushTimeout = 2 * time.Second
			o.APITimeout = time.Second
			o.RepairAfter = 300 * time.Millisecond
			o.Stream = bridge.StreamOptions{DuplicateWindow: time.Minute}
			if tune != nil {
				tune(o)
			}
		},
	})
	return &bridgeCluster{Cluster: c, t: t, dcs: c.Names(), hub: c.Hub()}
}

// start opens every DC.
func (c *bridgeCluster) start() *bridgeCluster {
	for _, dc := range c.dcs {
		c.openStore(dc)
		c.startRep(dc)
	}
	return c
}

// store is dc's open store, rep its running Replicator.
func (c *bridgeCluster) store(dc string) *changelog.Store { return c.Store(dc) }
func (c *bridgeCluster) rep(dc string) *bridge.Replicator { return c.Replicator(dc) }

// backup stops dc, copies its data dir and starts it again; it returns
// the copy, for a test to restore later (restore).
func (c *bridgeCluster) backup(dc string) string {
	c.t.Helper()
	c.stop(dc)
	dir := filepath.Join(c.t.TempDir(), "backup")
	if err := os.CopyFS(dir, os.DirFS(c.DataDir(dc))); err != nil {
		c.t.Fatal(err)
	}
	c.openStore(dc)
	c.startRep(dc)
	return dir
}

// restore starts dc, stopped, on the backup dir.
func (c *bridgeCluster) restore(dc, backup string) {
	c.t.Helper()
	c.SetDataDir(dc, backup)
	c.openStore(dc)
	c.startRep(dc)
}

func (c *bridgeCluster) openStore(dc string) {
	c.t.Helper()
	if err := c.OpenStore(dc); err != nil {
		c.t.Fatal(err)
	}
}

func (c *bridgeCluster) startRep(dc string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.StartReplicator(ctx, dc); err != nil {
		c.t.Fatal(err)
	}
}

// stopRep closes a DC's Replicator, keeping its stats.
func (c *bridgeCluster) stopRep(dc string) {
	c.t.Helper()
	if err := c.StopReplicator(dc); err != nil {
		c.t.Errorf("%v", err)
	}
}

// stop closes a DC's Replicator and store.
func (c *bridgeCluster) stop(dc string) {
	c.t.Helper()
	if err := c.StopDC(dc); err != nil {
		c.t.Errorf("%v", err)
	}
}

// stats returns a DC's stats summed over all its Replicators so far.
func (c *bridgeCluster) stats(dc string) bridge.Stats { return c.Stats(dc) }

// js returns a JetStream context on a connection of its own, closed at
// the end of the test.
func (c *bridgeCluster) js(t testing.TB) jetstream.JetStream { return c.JetStream(t) }

// write makes one local write at dc; with context, it sends the key's
// current clock as the client context, as a read-modify-write does.
func (c *bridgeCluster) write(dc, key, value string, withContext bool) changelog.WriteResult {
	c.t.Helper()
	st := c.store(dc)
	op := changelog.WriteOp{Key: key, Value: []byte(value)}
	if withContext {
		cur, _, err := st.Get(key)
		if err != nil {
			c.t.Fatal(err)
		}
		op.Context = cur.Clock
		if op.Context == nil {
			op.Context = vclock.VV{}
		}
	}
	res, err := st.Write(context.Background(), op)
	if err != nil {
		c.t.Fatalf("write %s at %s: %v", key, dc, err)
	}
	return res
}

// writeConcurrently has every DC in dcs write keys×rounds values with
// workers goroutines each, every third write with a context; it returns the
// number of writes per DC.
func (c *bridgeCluster) writeConcurrently(dcs []string, keys, rounds int) int {
	c.t.Helper()
	if err := c.writeAll(dcs, keys, rounds); err != nil {
		c.t.Fatal(err)
	}
	return keys * rounds
}

// writeAll is writeConcurrently for any goroutine: it returns the first
// error instead of failing the test.
func (c *bridgeCluster) writeAll(dcs []string, keys, rounds int) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(dcs)*keys*rounds)
	for _, dc := range dcs {
		st := c.store(dc)
		const workers = 4
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < keys*rounds; i += workers {
					key := fmt.Sprintf("k%02d", i%keys)
					op := changelog.WriteOp{Key: key, Value: fmt.Appendf(nil, "%s-%d", dc, i)}
					if i%3 == 0 {
						cur, _, err := st.Get(key)
						if err != nil {
							errs <- err
							return
						}
						op.Context = cur.Clock
						if op.Context == nil {
							op.Context = vclock.VV{}
						}
					}
					if _, err := st.Write(context.Background(), op); err != nil {
						errs <- fmt.Errorf("write %s at %s: %w", key, dc, err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// waitConverged waits until every DC has applied every other DC's events
// and published its outbox, then checks that all digests are equal.
func (c *bridgeCluster) waitConverged(timeout time.Duration) {
	c.t.Helper()
	cluster.Eventually(c.t, timeout, "convergence", func() (bool, string) {
		own := map[string][]uint64{}
		for _, dc := range c.dcs {
			own[dc] = c.store(dc).Applied()[dc]
		}
		for _, dc := range c.dcs {
			st := c.store(dc)
			if d := st.OutboxDepth(); d > 0 {
				return false, fmt.Sprintf("%s has %d events to publish", dc, d)
			}
			a := st.Applied()
			for _, o := range c.dcs {
				for p, want := range own[o] {
					var got uint64
					if row := a[o]; p < len(row) {
						got = row[p]
					}
					if got != want {
						return false, fmt.Sprintf("%s has applied %s's partition %d up to %d of %d; stats %+v", dc, o, p, got, want, c.stats(dc))
					}
				}
			}
		}
		return c.digestsEqual()
	})
}

// waitPublished waits until dc has published its whole outbox.
func (c *bridgeCluster) waitPublished(dc string) {
	c.t.Helper()
	cluster.Eventually(c.t, 10*time.Second, dc+" publishing", func() (bool, string) {
		d := c.store(dc).OutboxDepth()
		return d == 0, fmt.Sprintf("%d to publish", d)
	})
}

// waitCaughtUp waits until dc has applied every event of origin and
// published its outbox (its forwards).
func (c *bridgeCluster) waitCaughtUp(dc, origin string) {
	c.t.Helper()
	// A budget for slow work: catching up after the origin's return is
	// rounds of gap repair and catch-up, each of which can spend its
	// RepairTimeout when the machine is loaded (a transaction over three
	// partitions took 6-11 s under -race with other tests running).
	cluster.Eventually(c.t, 30*time.Second, dc+" catching up with "+origin, func() (bool, string) {
		got := c.store(dc).Applied()[origin]
		want := c.store(origin).Applied()[origin]
		return fmt.Sprint(got) == fmt.Sprint(want) && c.store(dc).OutboxDepth() == 0,
			fmt.Sprintf("applied %v of %v", got, want)
	})
}

// checkAppliedOnce checks that each DC applied (Changed or Obsolete) exactly
// want[dc] remote events. The store shows an event applied a moment before
// the Replicator counts it, so this waits for the count to get there, and
// fails at once if it goes past.
func (c *bridgeCluster) checkAppliedOnce(want map[string]uint64) {
	c.t.Helper()
	cluster.Eventually(c.t, 5*time.Second, "exactly-once counts", func() (bool, string) {
		var why []string
		for dc, n := range want {
			s := c.stats(dc)
			got := s.Applied + s.Obsolete
			if got > n {
				c.t.Fatalf("%s applied %d events (%d changed, %d obsolete), more than the %d the others wrote: some event was applied twice",
					dc, got, s.Applied, s.Obsolete, n)
			}
			if got < n {
				why = append(why, fmt.Sprintf("%s applied %d of %d", dc, got, n))
			}
		}
		return len(why) == 0, strings.Join(why, "; ")
	})
}

func (c *bridgeCluster) digestsEqual() (bool, string) {
	var stores []*changelog.Store
	for _, dc := range c.dcs {
		stores = append(stores, c.store(dc))
	}
	return cluster.SameDigests(stores)
}
