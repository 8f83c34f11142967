// Package bridge_test runs DCs against real embedded NATS JetStream
// servers: topologies, poison input, lost and redelivered messages,
// restarts of NATS, of a sidecar and from an old backup, and the atomic
// visibility of transactions (txn_test.go).
package bridge_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// partitions is the partition count of every test cluster.
const partitions = 4

// natsServer is an embedded JetStream server that a test can restart on the
// same port and store directory.
type natsServer struct {
	t    testing.TB
	dir  string
	port int
	srv  *server.Server
}

func startNATS(t testing.TB) *natsServer {
	t.Helper()
	ns := &natsServer{t: t, dir: t.TempDir(), port: -1}
	ns.start()
	ns.port = ns.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(ns.stop)
	return ns
}

func (ns *natsServer) start() {
	ns.t.Helper()
	srv, err := bridge.StartEmbedded(bridge.EmbeddedOptions{StoreDir: ns.dir, Port: ns.port, JetStream: true, ServerName: "test"})
	if err != nil {
		ns.t.Fatal(err)
	}
	ns.srv = srv
}

func (ns *natsServer) stop() {
	if ns.srv != nil {
		ns.srv.Shutdown()
		ns.srv.WaitForShutdown()
		ns.srv = nil
	}
}

func (ns *natsServer) restart() {
	ns.t.Helper()
	ns.stop()
	ns.start()
}

func (ns *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", ns.port) }

// dial opens a client connection that reconnects for ever.
func (ns *natsServer) dial(t testing.TB, name string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(ns.url(), nats.Name(name), nats.MaxReconnects(-1),
		nats.ReconnectWait(20*time.Millisecond), nats.ReconnectJitter(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// js returns a JetStream context on a connection closed at the end of the
// test.
func (ns *natsServer) js(t testing.TB) jetstream.JetStream {
	t.Helper()
	nc := ns.dial(t, "test")
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// node is one DC: its store, its connection and its Replicator.
type node struct {
	name  string
	dir   string
	store *changelog.Store
	nc    *nats.Conn
	rep   *bridge.Replicator
	// past holds the stats of earlier Replicators of this DC, so that a
	// test can count across restarts.
	past []bridge.Stats
}

// cluster is a set of DCs on one NATS server.
type cluster struct {
	t     testing.TB
	ns    *natsServer
	topo  string
	hub   string
	dcs   []string
	nodes map[string]*node
	// tune adjusts every Replicator's options.
	tune func(*bridge.Options)
}

func newCluster(t testing.TB, topo string, n int, tune func(*bridge.Options)) *cluster {
	t.Helper()
	c := &cluster{t: t, ns: startNATS(t), topo: topo, nodes: map[string]*node{}, tune: tune}
	for i := 1; i <= n; i++ {
		c.dcs = append(c.dcs, fmt.Sprintf("dc%d", i))
	}
	c.hub = c.dcs[0]
	for _, dc := range c.dcs {
		c.nodes[dc] = &node{name: dc, dir: t.TempDir()}
	}
	t.Cleanup(c.closeAll)
	return c
}

// start opens every DC.
func (c *cluster) start() *cluster {
	for _, dc := range c.dcs {
		c.openStore(dc)
		c.startRep(dc)
	}
	return c
}

// backup stops dc, copies its data dir and starts it again; it returns
// the copy, for a test to restore later.
func (c *cluster) backup(dc string) string {
	c.t.Helper()
	c.stop(dc)
	dir := filepath.Join(c.t.TempDir(), "backup")
	if err := os.CopyFS(dir, os.DirFS(c.nodes[dc].dir)); err != nil {
		c.t.Fatal(err)
	}
	c.openStore(dc)
	c.startRep(dc)
	return dir
}

func (c *cluster) openStore(dc string) {
	c.t.Helper()
	n := c.nodes[dc]
	st, err := changelog.Open(n.dir, changelog.Options{
		DC: dc, DCs: c.dcs, Partitions: partitions,
		Clock: hlc.New(time.Now, time.Minute),
	})
	if err != nil {
		c.t.Fatal(err)
	}
	n.store = st
}

func (c *cluster) startRep(dc string) {
	c.t.Helper()
	n := c.nodes[dc]
	hub := ""
	if c.topo == "star" {
		hub = c.hub
	}
	plan, err := bridge.NewPlan(c.topo, dc, c.dcs, hub)
	if err != nil {
		c.t.Fatal(err)
	}
	if n.nc == nil {
		n.nc = c.ns.dial(c.t, dc)
	}
	opts := bridge.Options{
		Store: n.store, NC: n.nc, Plan: plan, DCs: c.dcs, Partitions: partitions,
		Logger:         testutil.Logger(c.t, dc),
		ReportInterval: 100 * time.Millisecond,
		GapDelay:       50 * time.Millisecond,
		RetryDelay:     100 * time.Millisecond,
		RetryMax:       500 * time.Millisecond,
		AckWait:        5 * time.Second,
		FlushTimeout:   2 * time.Second,
		APITimeout:     time.Second,
		RepairAfter:    300 * time.Millisecond,
		Stream:         bridge.StreamOptions{DuplicateWindow: time.Minute},
	}
	if c.tune != nil {
		c.tune(&opts)
	}
	r, err := bridge.New(opts)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		c.t.Fatal(err)
	}
	n.rep = r
}

// stopRep closes a DC's Replicator, keeping its stats.
func (c *cluster) stopRep(dc string) {
	c.t.Helper()
	n := c.nodes[dc]
	if n.rep == nil {
		return
	}
	if err := n.rep.Close(); err != nil {
		c.t.Errorf("close %s: %v", dc, err)
	}
	n.past = append(n.past, n.rep.Stats())
	n.rep = nil
}

// stop closes a DC's Replicator and store.
func (c *cluster) stop(dc string) {
	c.t.Helper()
	c.stopRep(dc)
	n := c.nodes[dc]
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			c.t.Errorf("close store %s: %v", dc, err)
		}
		n.store = nil
	}
}

func (c *cluster) closeAll() {
	for _, dc := range c.dcs {
		c.stop(dc)
		if n := c.nodes[dc]; n.nc != nil {
			n.nc.Close()
			n.nc = nil
		}
	}
}

// stats returns a DC's stats summed over all its Replicators so far.
func (c *cluster) stats(dc string) bridge.Stats {
	n := c.nodes[dc]
	all := append([]bridge.Stats(nil), n.past...)
	if n.rep != nil {
		all = append(all, n.rep.Stats())
	}
	var s bridge.Stats
	for _, x := range all {
		s.Published += x.Published
		s.PublishErrors += x.PublishErrors
		s.PublishDuplicates += x.PublishDuplicates
		s.Applied += x.Applied
		s.Obsolete += x.Obsolete
		s.Duplicates += x.Duplicates
		s.LoopsDropped += x.LoopsDropped
		s.DeadLetters += x.DeadLetters
		s.Repairs += x.Repairs
		s.RepairedEvents += x.RepairedEvents
		s.Gaps += x.Gaps
		s.Forwarded += x.Forwarded
		s.Replays += x.Replays
	}
	return s
}

// write makes one local write at dc; with context, it sends the key's
// current clock as the client context, as a read-modify-write does.
func (c *cluster) write(dc, key, value string, withContext bool) changelog.WriteResult {
	c.t.Helper()
	st := c.nodes[dc].store
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
func (c *cluster) writeConcurrently(dcs []string, keys, rounds int) int {
	c.t.Helper()
	if err := c.writeAll(dcs, keys, rounds); err != nil {
		c.t.Fatal(err)
	}
	return keys * rounds
}

// writeAll is writeConcurrently for any goroutine: it returns the first
// error instead of failing the test.
func (c *cluster) writeAll(dcs []string, keys, rounds int) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(dcs)*keys*rounds)
	for _, dc := range dcs {
		st := c.nodes[dc].store
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
func (c *cluster) waitConverged(timeout time.Duration) {
	c.t.Helper()
	eventually(c.t, timeout, "convergence", func() (bool, string) {
		own := map[string][]uint64{}
		for _, dc := range c.dcs {
			own[dc] = c.nodes[dc].store.Applied()[dc]
		}
		for _, dc := range c.dcs {
			st := c.nodes[dc].store
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
func (c *cluster) waitPublished(dc string) {
	c.t.Helper()
	eventually(c.t, 10*time.Second, dc+" publishing", func() (bool, string) {
		d := c.nodes[dc].store.OutboxDepth()
		return d == 0, fmt.Sprintf("%d to publish", d)
	})
}

// waitCaughtUp waits until dc has applied every event of origin and
// published its outbox (its forwards).
func (c *cluster) waitCaughtUp(dc, origin string) {
	c.t.Helper()
	eventually(c.t, 10*time.Second, dc+" catching up with "+origin, func() (bool, string) {
		got := c.nodes[dc].store.Applied()[origin]
		want := c.nodes[origin].store.Applied()[origin]
		return fmt.Sprint(got) == fmt.Sprint(want) && c.nodes[dc].store.OutboxDepth() == 0,
			fmt.Sprintf("applied %v of %v", got, want)
	})
}

// checkAppliedOnce checks that each DC applied (Changed or Obsolete) exactly
// want[dc] remote events. The store shows an event applied a moment before
// the Replicator counts it, so this waits for the count to get there, and
// fails at once if it goes past.
func (c *cluster) checkAppliedOnce(want map[string]uint64) {
	c.t.Helper()
	eventually(c.t, 5*time.Second, "exactly-once counts", func() (bool, string) {
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

func (c *cluster) digestsEqual() (bool, string) {
	var first string
	var lines []string
	equal := true
	for _, dc := range c.dcs {
		d, err := c.nodes[dc].store.Digest()
		if err != nil {
			return false, err.Error()
		}
		h := d.Hex()
		lines = append(lines, fmt.Sprintf("%s: %s (%d keys)", dc, h[:16], d.Keys))
		if first == "" {
			first = h
		} else if h != first {
			equal = false
		}
	}
	return equal, "digests " + strings.Join(lines, ", ")
}

// eventually polls cond every 20ms until it holds, and fails the test
// with what and cond's last explanation after timeout.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	testutil.Eventually(t, timeout, 20*time.Millisecond, what, cond)
}
