package natsinfra_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
)

// natsCluster starts n JetStream servers, each with its own store
// directory, routed to each other in one cluster, and waits until their
// JetStream meta group has a leader that every server follows.
//
// A clustered JetStream needs its routes configured when it starts, so the
// route ports are chosen first: free ports the kernel hands out, released
// just before the servers bind them.
func natsCluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	ports := freePorts(t, n)
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	var servers []*server.Server
	for i := range n {
		servers = append(servers, runServer(t, &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			JetStream:  true,
			StoreDir:   t.TempDir(),
			Cluster:    server.ClusterOpts{Name: "repl", Host: "127.0.0.1", Port: ports[i]},
			// Every server gets the whole list; each ignores its own URL.
			Routes: server.RoutesFromStr(strings.Join(routes, ",")),
		}))
	}
	cluster.Eventually(t, 20*time.Second, "JetStream meta leader with every server current", func() (bool, string) {
		var why []string
		leaders := 0
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				leaders++
			}
			if !s.JetStreamIsCurrent() {
				why = append(why, s.Name()+" not current")
			}
			if s.JetStreamIsLeader() {
				// Only the leader lists the peers it has heard from.
				if p := s.JetStreamClusterPeers(); len(p) != n {
					why = append(why, fmt.Sprintf("leader %s sees peers %v", s.Name(), p))
				}
			}
			if got := s.NumRoutes(); got < n-1 {
				why = append(why, fmt.Sprintf("%s has %d routes", s.Name(), got))
			}
		}
		if leaders != 1 {
			why = append(why, fmt.Sprintf("%d meta leaders", leaders))
		}
		return len(why) == 0, strings.Join(why, "; ")
	})
	return servers
}

// TestClusterR3 runs a three-DC mesh on a three-server JetStream cluster
// with streams of three replicas. Each sidecar knows every server's URL.
// While every DC keeps writing, the server holding dc1's connection is shut
// down for good: its sidecars reconnect to the others, the streams keep a
// quorum, and every DC converges with its outbox empty.
func TestClusterR3(t *testing.T) {
	servers := natsCluster(t, 3)
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.ClientURL()
	}
	dcs := []string{"dc1", "dc2", "dc3"}
	// Each DC's list starts with a different server. nats.go shuffles the
	// list, so where each sidecar lands is looked up below, not assumed.
	mesh := startMesh(t, dcs, func(i int) string {
		return strings.Join(append(slices.Clone(urls[i:]), urls[:i]...), ",")
	}, func(c *config.Config) { c.Durability.StreamReplicas = 3 })

	// Every DC's stream and dead-letter stream have three replicas, one
	// per server.
	for _, dc := range dcs {
		for _, name := range []string{"REPL_" + dc, "REPL_" + dc + "_DLQ"} {
			info := streamInfo(t, urls[0], name)
			if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
				t.Fatalf("stream %s: replicas %d, cluster %+v; want 3 replicas (a leader and 2 peers)", name, info.Config.Replicas, info.Cluster)
			}
		}
	}

	placement := connectedTo(t, servers)
	victim := -1
	for i, got := range placement {
		if slices.Contains(got, "dc1") {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("no server holds dc1's connection: %v", placement)
	}
	t.Logf("sidecars per server: %v; stopping %s (meta leader: %t)", placement, servers[victim].Name(), servers[victim].JetStreamIsLeader())

	const perDC = 1000
	nodes := mesh.Nodes()
	w := startWorkload(t, nodes, dcs, perDC)
	w.waitTotal(t, 300)
	before := w.total()
	stopServer(servers[victim])
	t.Logf("stopped %s after %d writes", servers[victim].Name(), before)

	// The displaced sidecars land on the survivors.
	cluster.Eventually(t, 20*time.Second, "reconnection of every sidecar to a surviving server", func() (bool, string) {
		got := connectedTo(t, servers)
		var all []string
		for _, dcs := range got {
			all = append(all, dcs...)
		}
		slices.Sort(all)
		return slices.Equal(all, dcs), fmt.Sprintf("sidecars per server: %v", got)
	})
	w.wait(t)
	t.Logf("%d writes in all, %d after the stop", w.total(), w.total()-before)
	if w.total()-before == 0 {
		t.Fatalf("no write happened after the server stopped; the test did not test writes during the failure")
	}
	mesh.WaitConverged(t, 60*time.Second)
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// streamInfo returns what the JetStream reached through url says about
// stream name.
func streamInfo(t testing.TB, url, name string) *jetstream.StreamInfo {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return st.CachedInfo()
}

// TestStreamReplicasWithoutCluster asks a single server, which has no
// cluster, for streams of three replicas: the sidecar must refuse to start
// and say so.
func TestStreamReplicasWithoutCluster(t *testing.T) {
	s := runServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	cfg := sidecarConfig(t, "dc1", []string{"dc1", "dc2"}, s.ClientURL())
	cfg.Durability.StreamReplicas = 3
	n := newSidecar(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	err := n.Start(ctx)
	if err == nil {
		t.Fatal("Start succeeded with stream_replicas 3 on a server without a cluster")
	}
	t.Logf("Start: %v", err)
	if !strings.Contains(err.Error(), "REPL_dc1") || !strings.Contains(strings.ToLower(err.Error()), "replicas") {
		t.Errorf("Start error %q names neither the stream nor the replicas", err)
	}
}
