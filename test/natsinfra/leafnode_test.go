package natsinfra_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
)

// hubDomain is the JetStream domain of the hub that holds the streams.
const hubDomain = "hub"

// leafNet is a hub with JetStream in domain "hub" and a leafnode listener,
// and one leaf server per DC connected to it, optionally through a proxy
// the test can cut.
type leafNet struct {
	t        testing.TB
	hub      *server.Server
	hubStore string
	hubLeaf  int // the hub's leafnode port, kept across restarts
	leaves   []*server.Server
	proxies  []*cluster.Proxy
}

// leafOptions choose how a leafNet is built.
type leafOptions struct {
	// LeafJetStream gives each leaf a JetStream of its own, in domain
	// "leaf<i>", which the sidecars must not use.
	LeafJetStream bool
	// Proxies routes each leaf's link to the hub through a proxy.
	Proxies bool
}

func startLeafNet(t testing.TB, leaves int, o leafOptions) *leafNet {
	t.Helper()
	ln := &leafNet{t: t, hubStore: t.TempDir(), hubLeaf: -1}
	ln.startHub()
	vz, err := ln.hub.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	ln.hubLeaf = vz.LeafNode.Port
	hubLeaf := fmt.Sprintf("127.0.0.1:%d", ln.hubLeaf)
	for i := range leaves {
		remote := &url.URL{Scheme: "nats-leaf", Host: hubLeaf}
		if o.Proxies {
			p := cluster.RunProxy(t, hubLeaf)
			ln.proxies = append(ln.proxies, p)
			remote.Host = p.Addr()
		}
		so := &server.Options{
			ServerName: fmt.Sprintf("leaf%d", i+1),
			LeafNode: server.LeafNodeOpts{
				Remotes: []*server.RemoteLeafOpts{{URLs: []*url.URL{remote}}},
				// Retry a lost link quickly (default 1s).
				ReconnectInterval: 100 * time.Millisecond,
			},
		}
		if o.LeafJetStream {
			so.JetStream, so.StoreDir, so.JetStreamDomain = true, t.TempDir(), fmt.Sprintf("leaf%d", i+1)
		}
		ln.leaves = append(ln.leaves, runServer(t, so))
	}
	ln.waitLeaves(leaves)
	return ln
}

func (ln *leafNet) startHub() {
	ln.hub = runServer(ln.t, &server.Options{
		ServerName:      "hub",
		JetStream:       true,
		JetStreamDomain: hubDomain,
		StoreDir:        ln.hubStore,
		// NoAdvertise: the hub must not tell the leaves its own leafnode
		// address, or a leaf whose link through a proxy is cut reconnects
		// to it directly and the cut does not hold.
		LeafNode: server.LeafNodeOpts{Host: "127.0.0.1", Port: ln.hubLeaf, NoAdvertise: true},
	})
}

// restartHub stops the hub and starts it again on the same leafnode port
// and store directory.
func (ln *leafNet) restartHub() {
	stopServer(ln.hub)
	ln.startHub()
}

// waitLeaves waits until the hub has n leafnode connections. A leaf
// usually reconnects within its ReconnectInterval, but one whose new link
// the hub takes for a loop (its old one not yet gone there, as under
// load) waits nats-server's 30 s before trying again.
func (ln *leafNet) waitLeaves(n int) {
	ln.t.Helper()
	cluster.Eventually(ln.t, 45*time.Second, fmt.Sprintf("%d leaves connected to the hub", n), func() (bool, string) {
		got := ln.hub.NumLeafNodes()
		return got == n, fmt.Sprintf("hub has %d leafnode connections", got)
	})
}

// startSidecars starts a mesh of dcs, DC i on leaf i, with the streams in
// the hub's domain.
func (ln *leafNet) startSidecars(dcs []string) *cluster.Cluster {
	return startMesh(ln.t, dcs, func(i int) string { return ln.leaves[i].ClientURL() },
		func(c *config.Config) { c.NATS.Domain = hubDomain })
}

// TestLeafnodeDomainMesh runs a three-DC mesh whose sidecars each connect
// to their own leaf server, with the replication streams in the hub's
// JetStream domain, reached across the leafnode links
// (configs/leafnode-domain.yaml). The leaves run without JetStream, and
// with a JetStream of their own in another domain.
func TestLeafnodeDomainMesh(t *testing.T) {
	for _, tc := range []struct {
		name          string
		leafJetStream bool
	}{
		{"leaves without JetStream", false},
		{"leaves with their own JetStream domain", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := startLeafNet(t, 3, leafOptions{LeafJetStream: tc.leafJetStream})
			hub, leaves := ln.hub, ln.leaves
			dcs := []string{"dc1", "dc2", "dc3"}
			mesh := ln.startSidecars(dcs)

			// The streams live in the hub, not in any leaf.
			for _, dc := range dcs {
				if !hasStream(t, hub, "REPL_"+dc) {
					t.Errorf("hub has no stream REPL_%s", dc)
				}
				for _, l := range leaves {
					if l.JetStreamEnabled() && hasStream(t, l, "REPL_"+dc) {
						t.Errorf("leaf %s has stream REPL_%s; it belongs in domain %q", l.Name(), dc, hubDomain)
					}
				}
			}
			placement := connectedTo(t, leaves)
			for i, dc := range dcs {
				if got := placement[i]; len(got) != 1 || got[0] != dc {
					t.Errorf("leaf%d holds sidecars %v, want [%s]", i+1, got, dc)
				}
			}

			nodes := mesh.Nodes()
			w := startWorkload(t, nodes, dcs, 300)
			w.wait(t)
			mesh.WaitConverged(t, 30*time.Second)
		})
	}
}

// TestLeafnodeLinkCut cuts dc2's leafnode link to the hub while every DC
// keeps writing: dc2's sidecar stays connected to its leaf server but
// reaches no JetStream, so its writes wait in its outbox and it sees
// nothing from the others. After the link heals, every DC converges.
func TestLeafnodeLinkCut(t *testing.T) {
	ln := startLeafNet(t, 3, leafOptions{Proxies: true})
	dcs := []string{"dc1", "dc2", "dc3"}
	mesh := ln.startSidecars(dcs)
	proxies := ln.proxies

	nodes := mesh.Nodes()
	w := startWorkload(t, nodes, dcs, 1_000_000)
	w.waitTotal(t, 150)
	proxies[1].Cut()
	ln.waitLeaves(2)
	cutAt, dc2At := w.total(), w.of("dc2")
	// dc2 goes on writing, and cannot publish: every write it made since
	// the cut stays in its outbox.
	cluster.Eventually(t, writesBudget, "dc2's outbox growing while cut off", func() (bool, string) {
		since := w.of("dc2") - dc2At
		d := nodes[1].Store().OutboxDepth()
		if leaves := ln.hub.NumLeafNodes(); leaves != 2 {
			t.Fatalf("the hub has %d leafnode connections while dc2's link is cut, want 2: the cut did not hold", leaves)
		}
		if d < uint64(since) {
			t.Fatalf("dc2's outbox holds %d events, fewer than the %d writes it made since its link was cut: it published them", d, since)
		}
		return since >= 50 && w.total() >= cutAt+200, fmt.Sprintf("dc2 outbox %d, %d writes since the cut (%d at dc2)", d, w.total()-cutAt, since)
	})
	t.Logf("cut for %d writes; dc2's outbox holds %d", w.total()-cutAt, nodes[1].Store().OutboxDepth())
	proxies[1].Heal()
	ln.waitLeaves(3)
	w.waitTotal(t, w.total()+100)
	w.halt()
	w.wait(t)
	t.Logf("%d writes in all", w.total())
	// A budget for slow work: dc2's links' pull requests died with the
	// cut while their connections to leaf2 stayed up, and nats.go notices
	// only after two missed heartbeats (30 s by its default for Messages);
	// catch-up repair fills in meanwhile, slowly under -race on a loaded
	// machine.
	mesh.WaitConverged(t, 2*time.Minute)
}

// TestLeafnodeHubRestart stops the hub, where every stream lives, while
// every DC keeps writing: each sidecar stays connected to its leaf but
// reaches no JetStream. The hub comes back on the same store; every DC
// converges.
func TestLeafnodeHubRestart(t *testing.T) {
	ln := startLeafNet(t, 3, leafOptions{})
	dcs := []string{"dc1", "dc2", "dc3"}
	mesh := ln.startSidecars(dcs)

	nodes := mesh.Nodes()
	w := startWorkload(t, nodes, dcs, 1_000_000)
	w.waitTotal(t, 150)
	stopServer(ln.hub)
	downAt := w.total()
	cluster.Eventually(t, writesBudget, "outboxes growing while the hub is down", func() (bool, string) {
		var depths []uint64
		ok := w.total() >= downAt+200
		for _, n := range nodes {
			d := n.Store().OutboxDepth()
			depths = append(depths, d)
			ok = ok && d > 0
		}
		return ok, fmt.Sprintf("outboxes %v, %d writes since the stop", depths, w.total()-downAt)
	})
	ln.restartHub()
	ln.waitLeaves(3)
	w.waitTotal(t, w.total()+100)
	w.halt()
	w.wait(t)
	t.Logf("%d writes in all, %d since the hub stopped", w.total(), w.total()-downAt)
	// A budget for slow work: the links' pull requests died with the hub
	// while their connections to the leaves stayed up, and nats.go notices
	// only after two missed heartbeats (30 s by its default for Messages);
	// catch-up repair fills in meanwhile, slowly under -race on a loaded
	// machine (it took 45-60 s there).
	mesh.WaitConverged(t, 2*time.Minute)
}

// hasStream reports whether s's JetStream holds a stream named name in the
// global account.
func hasStream(t testing.TB, s *server.Server, name string) bool {
	t.Helper()
	jsz, err := s.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		t.Fatalf("%s: jsz: %v", s.Name(), err)
	}
	for _, a := range jsz.AccountDetails {
		for _, st := range a.Streams {
			if st.Name == name {
				return true
			}
		}
	}
	return false
}

// TestStartWithoutJetStreamSaysWhy starts sidecars that reach NATS but no
// JetStream: a wrong nats.domain, no domain on a leaf without JetStream,
// and a server without JetStream. Start must fail at once (it does) with
// an error that says what to do (STYLE.md "Errors a user sees say what to
// do"): that no JetStream answered, and in which domain.
func TestStartWithoutJetStreamSaysWhy(t *testing.T) {
	ln := startLeafNet(t, 1, leafOptions{})
	plain := runServer(t, &server.Options{ServerName: "plain"})
	for _, tc := range []struct {
		name, url, domain string
		want              []string
	}{
		{"wrong domain", ln.leaves[0].ClientURL(), "nope", []string{"jetstream", `"nope"`}},
		{"no domain, leaf without JetStream", ln.leaves[0].ClientURL(), "", []string{"jetstream", "nats.domain"}},
		{"server without JetStream", plain.ClientURL(), "", []string{"jetstream"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := sidecarConfig(t, "dc1", []string{"dc1", "dc2"}, tc.url)
			cfg.NATS.Domain = tc.domain
			n := newSidecar(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			defer cancel()
			start := time.Now()
			err := n.Start(ctx)
			took := time.Since(start)
			if err == nil {
				t.Fatal("Start succeeded without a reachable JetStream")
			}
			if took > 15*time.Second {
				t.Errorf("Start took %s to fail", took)
			}
			for _, w := range tc.want {
				if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(w)) {
					t.Errorf("Start error %q does not mention %s", err, w)
				}
			}
		})
	}
}
