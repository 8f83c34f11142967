// Package supercluster_test runs sidecars on a NATS supercluster, the
// deployment NATS recommends across regions: one JetStream cluster per
// region, the clusters joined by gateways, each DC's stream placed in its
// own region's cluster (nats.placement) and each sidecar connected to its
// own region's servers. Other DCs' consumers read a stream across the
// gateway.
//
// The short forms (three single-server clusters, R1 streams) run in CI.
// The long form, three clusters of three servers with R3 streams, runs
// with REPL_SUPERCLUSTER_LONG=1:
//
//	REPL_SUPERCLUSTER_LONG=1 go test -count=1 -v -run Long ./test/supercluster/
//
// Set REPL_TEST_NATS_LOG=1 to see the NATS servers' logs.
package supercluster_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/names"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// deployment is three DCs, one per cluster of a supercluster.
type deployment struct {
	sc *cluster.Super
	c  *cluster.Cluster
	// region maps each DC to its cluster.
	region map[string]string
}

// regions are the clusters; DC dc<i> lives in regions[i-1].
var regions = []string{"east", "west", "south"}

// start runs a supercluster of three clusters of servers servers each, and
// one DC per cluster in topology, each DC's streams placed in its own
// cluster with replicas replicas and its sidecar connected to that
// cluster's servers.
func start(t *testing.T, topology string, servers, replicas int) *deployment {
	t.Helper()
	d := &deployment{region: map[string]string{}}
	d.sc = cluster.RunSuper(t, cluster.SuperOptions{Clusters: regions, Servers: servers})
	dcs := []string{"dc1", "dc2", "dc3"}
	for i, dc := range dcs {
		d.region[dc] = regions[i]
	}
	leader, in := d.sc.MetaLeader()
	t.Logf("supercluster up: meta leader %s in %s", leader, in)
	d.c = cluster.Start(t, cluster.Options{
		DCs: dcs, Topology: topology, Partitions: 4,
		URL:            func(dc string) string { return d.sc.URL(d.region[dc]) },
		ReportInterval: 100 * time.Millisecond,
		Config: func(cfg *config.Config) {
			cfg.NATS.Placement = config.Placement{Cluster: d.region[cfg.DC], Tags: []string{"region:" + d.region[cfg.DC]}}
			cfg.Durability.StreamReplicas = replicas
			cfg.HealAfter = config.Duration(2 * time.Second)
			cfg.Resolvers.Rules = []config.Rule{{Prefix: "lww/", Resolver: config.LWW}}
		},
	})
	// Each DC's streams live in its own cluster, on as many of its servers
	// as asked.
	for _, dc := range dcs {
		for _, name := range []string{names.Stream(dc), names.DLQStream(dc)} {
			info := d.streamInfo(t, d.region[dc], name)
			if info.Cluster == nil || info.Cluster.Name != d.region[dc] || len(info.Cluster.Replicas)+1 != replicas {
				t.Fatalf("stream %s: cluster %+v; want it in cluster %s with %d replicas", name, info.Cluster, d.region[dc], replicas)
			}
		}
	}
	return d
}

// connect opens a client connection to cluster region's servers.
func (d *deployment) connect(t *testing.T, region string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(d.sc.URL(region), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// streamInfo asks the JetStream reached through cluster region about
// stream name.
func (d *deployment) streamInfo(t *testing.T, region, name string) *jetstream.StreamInfo {
	t.Helper()
	_, js := d.connect(t, region)
	var info *jetstream.StreamInfo
	cluster.Eventually(t, 20*time.Second, "stream info of "+name, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, name)
		if err != nil {
			return false, err.Error()
		}
		info = s.CachedInfo()
		return true, ""
	})
	return info
}

// writers drives writes at every DC until halted. Every write puts a key
// of its own (u/<round>/<dc>/<n>), so that each acknowledged write can be looked
// for at every DC afterwards; every fourth one also does a
// read-modify-write of a key every DC writes, so that concurrent writes
// meet.
type writers struct {
	c     *cluster.Cluster
	round int64 // tells the keys of one run of writers from another's
	stop  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
	acked map[string]*atomic.Int64
	mu    struct {
		sync.Mutex
		errs []error
	}
}

func startWriters(t *testing.T, c *cluster.Cluster) *writers {
	t.Helper()
	w := &writers{c: c, round: rounds.Add(1), stop: make(chan struct{}), acked: map[string]*atomic.Int64{}}
	for _, dc := range c.Names() {
		w.acked[dc] = &atomic.Int64{}
	}
	for _, dc := range c.Names() {
		w.wg.Go(func() { w.run(dc) })
	}
	t.Cleanup(w.halt)
	return w
}

func (w *writers) run(dc string) {
	n := w.c.Node(dc)
	// The pace keeps the write count, and so the test, small; it is a
	// rate, not a wait for anything.
	pace := time.NewTicker(writePace)
	defer pace.Stop()
	for i := int64(0); ; i++ {
		select {
		case <-w.stop:
			return
		case <-pace.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.Write(ctx, changelog.WriteOp{Key: w.uniqueKey(dc, i), Value: fmt.Appendf(nil, "%s-%d", dc, i)})
		if err == nil && i%4 == 0 {
			key := fmt.Sprintf("k/%d", i%16)
			var st dvv.State
			if _, st, _, err = n.Read(key); err == nil {
				_, err = n.Write(ctx, changelog.WriteOp{Key: key, Value: fmt.Appendf(nil, "%s-%d", dc, i), Context: st.Clock})
			}
		}
		cancel()
		if err != nil {
			w.mu.Lock()
			w.mu.errs = append(w.mu.errs, fmt.Errorf("%s: write %d: %w", dc, i, err))
			w.mu.Unlock()
			return
		}
		w.acked[dc].Store(i + 1)
	}
}

// writePace is the least time between two writes of one DC's writer.
const writePace = 4 * time.Millisecond

// rounds numbers the runs of writers of the test binary.
var rounds atomic.Int64

func (w *writers) uniqueKey(dc string, i int64) string {
	return fmt.Sprintf("u/%d/%s/%d", w.round, dc, i)
}

// halt stops the writers and waits for them.
func (w *writers) halt() {
	w.once.Do(func() { close(w.stop) })
	w.wg.Wait()
}

// total is the number of unique-key writes acknowledged at dc.
func (w *writers) total(dc string) int64 { return w.acked[dc].Load() }

// waitMore waits until every DC has acknowledged more unique-key writes
// than in before.
func (w *writers) waitMore(t *testing.T, before map[string]int64, timeout time.Duration, what string) {
	t.Helper()
	cluster.Eventually(t, timeout, what, func() (bool, string) {
		var behind []string
		for dc, n := range before {
			if w.total(dc) <= n+20 {
				behind = append(behind, fmt.Sprintf("%s at %d (was %d)", dc, w.total(dc), n))
			}
		}
		return len(behind) == 0, "writes " + strings.Join(behind, ", ")
	})
}

func (w *writers) snapshot() map[string]int64 {
	out := map[string]int64{}
	for dc := range w.acked {
		out[dc] = w.total(dc)
	}
	return out
}

// finish halts the writers and fails the test on any write error.
func (w *writers) finish(t *testing.T) {
	t.Helper()
	w.halt()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.mu.errs) > 0 {
		t.Fatalf("writes failed: %v", w.mu.errs)
	}
}

// checkNoneLost fails the test unless every DC holds every acknowledged
// unique-key write with its value.
func checkNoneLost(t *testing.T, c *cluster.Cluster, w *writers) {
	t.Helper()
	var total int64
	for _, at := range c.Names() {
		n := c.Node(at)
		for _, origin := range c.Names() {
			for i := range w.total(origin) {
				r, _, ok, err := n.Read(w.uniqueKey(origin, i))
				want := fmt.Sprintf("%s-%d", origin, i)
				if err != nil || !ok || len(r.Values) != 1 || string(r.Values[0]) != want {
					t.Fatalf("%s lost %s's acknowledged write %s=%s: ok=%t values=%q err=%v", at, origin, w.uniqueKey(origin, i), want, ok, r.Values, err)
				}
			}
		}
	}
	for _, origin := range c.Names() {
		total += w.total(origin)
	}
	t.Logf("every DC holds all %d acknowledged writes (%v)", total, w.snapshot())
}

// TestGatewayCut cuts the gateway between the first two regions while
// every DC writes, for a while, then heals it: no acknowledged write is
// lost and the DCs converge. In a ring the cut link is one the events
// travel (dc1 -> dc2).
func TestGatewayCut(t *testing.T) {
	for _, topology := range []string{config.Mesh, config.Ring} {
		t.Run(topology, func(t *testing.T) {
			d := start(t, topology, 1, 1)
			w := startWriters(t, d.c)
			w.waitMore(t, w.snapshot(), 60*time.Second, "writes at every DC before the cut")

			d.sc.CutGateway(regions[0], regions[1])
			before := w.snapshot()
			t.Logf("gateway %s-%s cut after %v writes", regions[0], regions[1], before)
			w.waitMore(t, before, 60*time.Second, "writes at every DC during the cut")
			// The cut holds: dc1's events stop reaching dc2 (no path runs
			// through the third region: gateways do not relay).
			waitBehind(t, d.c, "dc2", "dc1", 50)
			cluster.Hold(3*time.Second, nil)
			d.sc.HealGateway(regions[0], regions[1])
			t.Logf("healed after %v writes", w.snapshot())
			w.waitMore(t, w.snapshot(), 60*time.Second, "writes at every DC after the heal")
			w.finish(t)

			d.c.WaitConverged(t, 60*time.Second)
			checkNoneLost(t, d.c, w)
		})
	}
}

// TestClusterRestart shuts the second region's cluster down while every
// DC writes, and starts it again on the same store: no acknowledged write
// is lost and the DCs converge.
func TestClusterRestart(t *testing.T) {
	for _, topology := range []string{config.Mesh, config.Ring} {
		t.Run(topology, func(t *testing.T) {
			d := start(t, topology, 1, 1)
			testClusterRestart(t, d, regions[1])
		})
	}
}

func testClusterRestart(t *testing.T, d *deployment, region string) {
	w := startWriters(t, d.c)
	w.waitMore(t, w.snapshot(), 60*time.Second, "writes at every DC before the stop")

	d.sc.StopCluster(region)
	before := w.snapshot()
	t.Logf("cluster %s stopped after %v writes", region, before)
	w.waitMore(t, before, 60*time.Second, "writes at every DC while a cluster is down")
	cluster.Hold(2*time.Second, nil)
	if err := d.sc.StartCluster(region); err != nil {
		t.Fatal(err)
	}
	if err := d.sc.WaitReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	leader, in := d.sc.MetaLeader()
	t.Logf("cluster %s back after %v writes; meta leader %s in %s", region, w.snapshot(), leader, in)
	w.waitMore(t, w.snapshot(), 60*time.Second, "writes at every DC after the restart")
	w.finish(t)

	d.c.WaitConverged(t, 60*time.Second)
	checkNoneLost(t, d.c, w)
}

// TestLongR3 is the long form: three clusters of three servers, streams of
// three replicas, a gateway cut, a cluster restart, then a region cut off
// without the meta leader and one holding it (TestIsolatedRegion's cases),
// in a mesh.
func TestLongR3(t *testing.T) {
	if os.Getenv("REPL_SUPERCLUSTER_LONG") == "" {
		t.Skip("set REPL_SUPERCLUSTER_LONG=1 to run three clusters of three servers with R3 streams")
	}
	d := start(t, config.Mesh, 3, 3)
	w := startWriters(t, d.c)
	w.waitMore(t, w.snapshot(), 30*time.Second, "writes at every DC before the cut")
	d.sc.CutGateway(regions[0], regions[1])
	w.waitMore(t, w.snapshot(), 30*time.Second, "writes at every DC during the cut")
	cluster.Hold(5*time.Second, nil)
	d.sc.HealGateway(regions[0], regions[1])
	w.finish(t)
	d.c.WaitConverged(t, 120*time.Second)
	checkNoneLost(t, d.c, w)

	testClusterRestart(t, d, regions[2])

	testIsolatedRegions(t, d)
}

// probeCtx bounds one JetStream API call of a test.
func probeCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitBehind waits until DC at has applied at least n fewer of origin's
// events than origin itself holds: events from origin do not reach it.
func waitBehind(t *testing.T, c *cluster.Cluster, at, origin string, n uint64) {
	t.Helper()
	cluster.Eventually(t, 60*time.Second, fmt.Sprintf("%s falling %d events behind %s", at, n, origin), func() (bool, string) {
		have, want := sum(c.Store(at).Applied()[origin]), sum(c.Store(origin).Applied()[origin])
		return have+n <= want, fmt.Sprintf("%s has applied %d of %s's %d events", at, have, origin, want)
	})
}

func sum(seqs []uint64) uint64 {
	var s uint64
	for _, x := range seqs {
		s += x
	}
	return s
}

// TestIsolatedRegion cuts a region off from both others, twice: first a
// region that does not hold the JetStream meta leader, then, once the
// deployment is whole again, the region that does. JetStream has one
// meta group across the whole supercluster (stream and consumer
// assignments); a cut-off region is a minority of it. A stream's own Raft
// group and its consumers' groups live in the stream's cluster, so what
// they do needs no meta leader.
//
// What the test holds in both cases, and docs/SCALING.md reports:
//   - the cut is complete: no gateway connection crosses it, either way;
//   - the other two regions have a meta leader: they keep theirs, or,
//     when the cut-off region held it, elect one among themselves within
//     30s (raft election timeouts are 4-9s);
//   - every server of the cut-off region comes to follow no meta leader
//     (an old leader first goes on believing it leads, until it notices
//     it lost its quorum);
//   - the cut-off DC keeps acknowledging writes (Pebble first) and
//     publishing them into its own stream, which grows;
//   - events stop flowing both ways across the cut;
//   - creating a stream or a consumer in the cut-off region fails, and
//     a sidecar cannot start there (bridge.ErrMetaLeaderless);
//   - the other two can create streams and consumers, and their
//     sidecars restart;
//   - after the region rejoins, nothing acknowledged is lost and every
//     DC converges.
func TestIsolatedRegion(t *testing.T) {
	testIsolatedRegions(t, start(t, config.Mesh, 1, 1))
}

// testIsolatedRegions cuts off a region without the meta leader, then
// the region holding it.
func testIsolatedRegions(t *testing.T, d *deployment) {
	_, leaderRegion := d.sc.MetaLeader()
	follower := regions[0]
	if follower == leaderRegion {
		follower = regions[1]
	}
	t.Run("without the meta leader", func(t *testing.T) { testIsolatedRegion(t, d, follower, false) })
	if t.Failed() {
		return
	}
	// The leader may have moved during the first cut: cut off the region
	// that holds it now.
	_, leaderRegion = d.sc.MetaLeader()
	t.Run("holding the meta leader", func(t *testing.T) { testIsolatedRegion(t, d, leaderRegion, true) })
}

func testIsolatedRegion(t *testing.T, d *deployment, isolated string, holdsLeader bool) {
	var rest []string
	for _, r := range regions {
		if r != isolated {
			rest = append(rest, r)
		}
	}
	var dc, other string
	for _, name := range d.c.Names() {
		if d.region[name] == isolated {
			dc = name
		} else if other == "" {
			other = name
		}
	}
	leaderBefore, leaderRegion := d.sc.MetaLeader()
	if (leaderRegion == isolated) != holdsLeader {
		t.Fatalf("the meta leader %s is in %s; this case cuts off %s", leaderBefore, leaderRegion, isolated)
	}
	t.Logf("isolating %s (DC %s); the meta leader is %s in %s", isolated, dc, leaderBefore, leaderRegion)
	_, isoJS := d.connect(t, isolated)
	_, majJS := d.connect(t, d.region[other])
	// checkCut fails the test if any gateway connection crosses the cut.
	checkCut := func(when string) {
		t.Helper()
		for _, r := range rest {
			if links := append(d.sc.Links(isolated, r), d.sc.Links(r, isolated)...); len(links) > 0 {
				t.Fatalf("%s: gateway connections cross the cut of %s: %v", when, isolated, links)
			}
		}
	}
	probe := func(region, name string) jetstream.StreamConfig {
		return jetstream.StreamConfig{Name: name, Subjects: []string{strings.ToLower(name) + ".>"}, Storage: jetstream.MemoryStorage,
			Placement: &jetstream.Placement{Cluster: region}}
	}
	suffix := map[bool]string{false: "_F", true: "_L"}[holdsLeader]

	w := startWriters(t, d.c)
	w.waitMore(t, w.snapshot(), 60*time.Second, "writes at every DC before the cut")
	cutAt := time.Now()
	d.sc.Isolate(isolated)

	if holdsLeader {
		// Right after the cut the old leader still believes it leads; what
		// it is asked to change needs a quorum it no longer has.
		_, err := isoJS.CreateStream(probeCtx(t), probe(isolated, "PROBE_OLD_LEADER"+suffix))
		t.Logf("isolated: create stream while the old leader believes it leads: %v", err)
		if err == nil {
			t.Errorf("isolated: creating a stream through the cut-off old meta leader succeeded")
		}
	}

	// The other two have a meta leader: the one they had, or one they
	// elect. 30s is three to seven election timeouts.
	var leaderAfter string
	cluster.Eventually(t, 30*time.Second, "a meta leader the regions "+strings.Join(rest, " and ")+" agree on", func() (bool, string) {
		leaderAfter = d.sc.LeaderAmong(rest...)
		return leaderAfter != "", d.sc.MetaView()
	})
	elected := time.Since(cutAt)
	switch {
	case !holdsLeader && leaderAfter != leaderBefore:
		t.Errorf("the regions %v changed meta leader from %s to %s when %s, which did not hold it, was cut off", rest, leaderBefore, leaderAfter, isolated)
	case holdsLeader && leaderAfter == leaderBefore:
		t.Fatalf("the regions %v follow the cut-off leader %s", rest, leaderBefore)
	case holdsLeader:
		t.Logf("majority: elected meta leader %s %v after the cut", leaderAfter, elected.Round(10*time.Millisecond))
	default:
		t.Logf("majority: kept meta leader %s", leaderAfter)
	}

	// The cut-off DC still takes writes and publishes them into its own
	// stream; nothing crosses the cut.
	before := w.snapshot()
	published := d.c.Stats(dc).Published
	w.waitMore(t, before, 60*time.Second, "writes at every DC while "+isolated+" is cut off")
	cluster.Eventually(t, 60*time.Second, dc+" publishing into its stream", func() (bool, string) {
		now := d.c.Stats(dc).Published
		return now >= published+50, fmt.Sprintf("published %d, was %d", now, published)
	})
	waitBehind(t, d.c, other, dc, 50)
	waitBehind(t, d.c, dc, other, 50)
	checkCut("while writing")

	// The majority creates streams and consumers.
	majProbe := probe(d.region[other], "PROBE_MAJORITY"+suffix)
	if _, err := majJS.CreateStream(probeCtx(t), majProbe); err != nil {
		t.Errorf("majority: create stream in %s: %v", d.region[other], err)
	} else if _, err := majJS.CreateOrUpdateConsumer(probeCtx(t), majProbe.Name, jetstream.ConsumerConfig{Durable: "probe", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Errorf("majority: create consumer on %s: %v", majProbe.Name, err)
	}

	// Every server of the cut-off region comes to follow no leader.
	cluster.Eventually(t, 60*time.Second, isolated+" following no meta leader", func() (bool, string) {
		seen := d.sc.LeaderSeen(isolated)
		return !slices.ContainsFunc(seen, func(l string) bool { return l != "" }), fmt.Sprintf("%s follows %q", isolated, seen)
	})
	t.Logf("isolated: %s follows no meta leader %v after the cut; %s published %d events into %s meanwhile",
		isolated, time.Since(cutAt).Round(10*time.Millisecond), dc, d.c.Stats(dc).Published-published, names.Stream(dc))

	// What the cut-off region's JetStream API still answers.
	if s, err := isoJS.Stream(probeCtx(t), names.Stream(dc)); err != nil {
		t.Logf("isolated: stream info of %s: %v", names.Stream(dc), err)
	} else {
		t.Logf("isolated: stream info of %s answered: %d messages", names.Stream(dc), s.CachedInfo().State.Msgs)
	}
	if _, err := isoJS.CreateStream(probeCtx(t), probe(isolated, "PROBE_ISOLATED"+suffix)); err == nil {
		t.Errorf("isolated: creating a stream in %s succeeded without a meta leader", isolated)
	} else {
		t.Logf("isolated: create stream: %v", err)
	}
	if _, err := isoJS.CreateOrUpdateConsumer(probeCtx(t), names.Stream(dc), jetstream.ConsumerConfig{Durable: "probe", AckPolicy: jetstream.AckExplicitPolicy}); err == nil {
		t.Errorf("isolated: creating a consumer on %s succeeded without a meta leader", names.Stream(dc))
	} else {
		t.Logf("isolated: create consumer: %v", err)
	}
	w.finish(t)

	// A sidecar of the majority restarts; one of the cut-off region cannot.
	if err := d.c.StopDC(other); err != nil {
		t.Fatal(err)
	}
	octx, ocancel := context.WithTimeout(context.Background(), 30*time.Second)
	otherErr := d.c.StartDC(octx, other)
	ocancel()
	if otherErr != nil {
		t.Errorf("majority: %s's sidecar restart while %s is cut off: %v", other, isolated, otherErr)
	}
	if err := d.c.StopDC(dc); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	startErr := d.c.StartDC(sctx, dc)
	scancel()
	t.Logf("isolated: sidecar restart while cut off: %v", startErr)
	if !errors.Is(startErr, bridge.ErrMetaLeaderless) {
		t.Errorf("a sidecar starting in a region cut off from the meta leader: %v; want an error saying there is no meta leader", startErr)
	}
	checkCut("before the rejoin")
	if leader := d.sc.LeaderAmong(rest...); leader != leaderAfter {
		t.Errorf("the regions %v changed meta leader from %s to %q during the cut", rest, leaderAfter, leader)
	}

	d.sc.Rejoin(isolated)
	rejoinAt := time.Now()
	if err := d.sc.WaitReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	leader, in := d.sc.MetaLeader()
	t.Logf("rejoined: whole again %v after the rejoin; meta leader %s in %s", time.Since(rejoinAt).Round(10*time.Millisecond), leader, in)
	if startErr != nil {
		if err := d.c.StartDC(context.Background(), dc); err != nil {
			t.Fatalf("%s: start after the rejoin: %v", dc, err)
		}
	}
	for _, name := range []string{majProbe.Name} {
		if err := majJS.DeleteStream(probeCtx(t), name); err != nil {
			t.Logf("delete %s: %v", name, err)
		}
	}
	d.c.WaitConverged(t, 60*time.Second)
	checkNoneLost(t, d.c, w)
}

// TestPlacement creates streams through a connection to one region and
// places them in others, by cluster and by server tag; a stream that
// lives elsewhere than asked is reported, with the command that moves it,
// and left where it is; a cluster that does not exist is named in the
// error.
func TestPlacement(t *testing.T) {
	sc := cluster.RunSuper(t, cluster.SuperOptions{Clusters: regions})
	d := &deployment{sc: sc}
	_, js := d.connect(t, "west")
	ensure := func(dc string, p jetstream.Placement) error {
		return bridge.EnsureStream(probeCtx(t), js, dc, 2, bridge.StreamOptions{Placement: &p})
	}
	where := func(name string) string {
		info := d.streamInfo(t, "west", name)
		if info.Cluster == nil {
			return ""
		}
		return info.Cluster.Name
	}

	if err := ensure("dc1", jetstream.Placement{Cluster: "east"}); err != nil {
		t.Fatalf("place dc1's streams in east: %v", err)
	}
	if err := ensure("dc2", jetstream.Placement{Tags: []string{"region:south"}}); err != nil {
		t.Fatalf("place dc2's streams on servers tagged region:south: %v", err)
	}
	for name, want := range map[string]string{"REPL_dc1": "east", "REPL_dc1_DLQ": "east", "REPL_dc2": "south", "REPL_dc2_DLQ": "south"} {
		if got := where(name); got != want {
			t.Errorf("stream %s lives in %q, want %q", name, got, want)
		}
	}
	// Asking again finds them where they are.
	if err := ensure("dc1", jetstream.Placement{Cluster: "east"}); err != nil {
		t.Errorf("dc1's streams, again: %v", err)
	}

	err := ensure("dc1", jetstream.Placement{Cluster: "west"})
	t.Logf("dc1 placed in west while its stream is in east: %v", err)
	if !errors.Is(err, bridge.ErrPlacement) || !strings.Contains(err.Error(), `lives in cluster "east", want "west"`) ||
		!strings.Contains(err.Error(), "nats stream edit REPL_dc1 --cluster west") {
		t.Errorf("a stream in another cluster than asked: %v; want ErrPlacement naming both clusters and the command that moves it", err)
	}
	if got := where("REPL_dc1"); got != "east" {
		t.Errorf("REPL_dc1 moved to %q; the sidecar must not move streams", got)
	}
	err = ensure("dc2", jetstream.Placement{Tags: []string{"region:east"}})
	if !errors.Is(err, bridge.ErrPlacement) || !strings.Contains(err.Error(), "placement.tags: have [region:south], want [region:east]") {
		t.Errorf("a stream placed by other tags: %v; want ErrPlacement naming both", err)
	}

	err = ensure("dc3", jetstream.Placement{Cluster: "north"})
	t.Logf("dc3 placed in a cluster that does not exist: %v", err)
	if err == nil || !strings.Contains(err.Error(), `create stream REPL_dc3 in cluster "north"`) {
		t.Errorf("placement in a cluster that does not exist: %v; want an error naming the stream and the cluster", err)
	}
}
