package node

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
)

func testConfig(dc string, dir string) config.Config {
	cfg := config.Default()
	cfg.DC, cfg.DCs, cfg.Topology, cfg.DataDir = dc, []string{"dc1", "dc2"}, config.Mesh, filepath.Join(dir, dc)
	cfg.Partitions = 4
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Resolvers.Rules = []config.Rule{{Prefix: "t/", Resolver: config.LWW}}
	cfg.Complete()
	return cfg
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	return string(b)
}

// TestNodeServesAndReplicates starts two DCs with HTTP on one embedded NATS
// server, writes at one, and checks the other applies it and that status
// and metrics show it.
func TestNodeServesAndReplicates(t *testing.T) {
	dir := t.TempDir()
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{StoreDir: filepath.Join(dir, "nats"), JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	var nodes []*Node
	for _, dc := range []string{"dc1", "dc2"} {
		n, err := New(testConfig(dc, dir), Options{NATSURL: ns.ClientURL(), ReportInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		if err := n.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	ctx := context.Background()
	if _, err := nodes[0].Write(ctx, changelog.WriteOp{Key: "t/1", Value: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[1].Write(ctx, changelog.WriteOp{Key: "t/1", Value: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		a, _ := nodes[0].Store().Digest()
		b, _ := nodes[1].Store().Digest()
		if a.Hex() == b.Hex() && nodes[0].Store().OutboxDepth() == 0 && nodes[1].Store().OutboxDepth() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the two DCs did not converge")
		}
		<-tick.C
	}
	base := "http://" + nodes[1].HTTPAddr()
	if body := get(t, base+"/v1/kv/t%2F1"); !strings.Contains(body, `"resolver":"lww"`) {
		t.Fatalf("GET: %s", body)
	}
	status := get(t, base+"/v1/status")
	for _, want := range []string{`"dc":"dc2"`, `"topology":"mesh"`, "Links", "Applied"} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %s: %s", want, status)
		}
	}
	metrics := get(t, base+"/metrics")
	for _, want := range []string{
		"replicator_writes_total", "replicator_applies_total", "replicator_duplicates_dropped_total",
		"replicator_loops_dropped_total", `replicator_conflicts_total{dc="dc2",resolver="lww"} 1`,
		"replicator_dead_letters_total", "replicator_link_lag_events", "replicator_link_lag_seconds",
		"replicator_outbox_depth", "replicator_http_requests_total",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if err := nodes[0].Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := nodes[0].Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
