package node

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/antientropy"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/vclock"
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
	// An explicit empty context makes the write concurrent with dc1's
	// whether or not dc1's event has arrived: a conflict either way.
	if _, err := nodes[1].Write(ctx, changelog.WriteOp{Key: "t/1", Value: []byte("b"), Context: vclock.VV{}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the two DCs to converge", func() bool {
		a, _ := nodes[0].Store().Digest()
		b, _ := nodes[1].Store().Digest()
		return a.Hex() == b.Hex() && nodes[0].Store().OutboxDepth() == 0 && nodes[1].Store().OutboxDepth() == 0
	})
	base := "http://" + nodes[1].HTTPAddr()
	if body := get(t, base+"/v1/kv/t%2F1"); !strings.Contains(body, `"resolver":"lww"`) {
		t.Fatalf("GET: %s", body)
	}
	status := get(t, base+"/v1/status")
	for _, want := range []string{`"dc":"dc2"`, `"topology":"mesh"`, "Links", "Applied", `"Healing":null`, `"EffectiveUpstreams":[`} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %s: %s", want, status)
		}
	}
	// The store counts a conflict just after its batch commits, so the
	// digest can agree a moment before the counters do.
	waitFor(t, "the conflict to be counted", func() bool {
		return strings.Contains(get(t, base+"/metrics"), `replicator_conflicts_total{dc="dc2",resolver="lww"} 1`)
	})
	metrics := get(t, base+"/metrics")
	for _, want := range []string{
		"replicator_writes_total", "replicator_applies_total", "replicator_duplicates_dropped_total",
		"replicator_loops_dropped_total", `replicator_conflicts_total{dc="dc2",resolver="lww"} 1`,
		"replicator_dead_letters_total", "replicator_link_lag_events", "replicator_link_lag_seconds",
		"replicator_outbox_depth", "replicator_http_requests_total", "replicator_publish_latency_seconds_bucket",
		`replicator_conflict_log_entries{dc="dc2"} 1`, `replicator_conflicts_pruned_total{dc="dc2"} 0`, `replicator_siblings_refused_total{dc="dc2"} 0`,
		`replicator_heal_active{dc="dc2",dead="dc1"} 0`, "replicator_reports_sent_total", "replicator_report_bytes_total",
		`replicator_http_requests_total{code="200",dc="dc2",method="GET",route="GET /v1/status"} 1`,
		`go_goroutines{dc="dc2"}`, `replicator_peer_report_age_seconds{dc="dc2",peer="dc1"}`, `replicator_ready{dc="dc2"}`, `go_memstats_heap_alloc_bytes{dc="dc2"}`, `process_resident_memory_bytes{dc="dc2"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Every series carries the DC, so that one Prometheus can tell the
	// sidecars of a host apart.
	for _, line := range strings.Split(metrics, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") && !strings.Contains(line, `dc="dc2"`) {
			t.Errorf("series without dc=\"dc2\": %s", line)
		}
	}
	checkAlertRules(t, metrics)
	waitFor(t, "dc2 to be ready", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if status := get(t, base+"/v1/status"); !strings.Contains(status, `"Peers":[{"DC":"dc1"`) || !strings.Contains(status, `"State":"alive"`) {
		t.Errorf("status lacks dc1 as an alive peer: %s", status)
	}
	// Every DC's digest, asked now: the two agree once converged.
	var ds antientropy.Digests
	if err := json.Unmarshal([]byte(get(t, base+"/v1/digests")), &ds); err != nil || !ds.Agree || len(ds.DCs) != 2 ||
		ds.DCs[0].DC != "dc1" || ds.DCs[0].Self || !ds.DCs[1].Self || ds.DCs[0].Digest == "" || ds.DCs[0].Keys != 1 {
		t.Errorf("GET /v1/digests: %+v %v", ds, err)
	}
	if err := nodes[0].Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// A peer that is gone is named, and the digests no longer agree.
	if err := json.Unmarshal([]byte(get(t, base+"/v1/digests")), &ds); err != nil || ds.Agree ||
		!strings.Contains(ds.DCs[0].Error, "no sidecar of dc1 answers") {
		t.Errorf("GET /v1/digests with dc1 closed: %+v %v", ds, err)
	}
	if err := nodes[0].Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestClockDriftRefused: a DC whose clock runs 5 minutes ahead still
// replicates, but a DC with a 1-minute drift bound refuses to take its time
// (counted), so its own later writes keep its own clock.
func TestClockDriftRefused(t *testing.T) {
	dir := t.TempDir()
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{StoreDir: filepath.Join(dir, "nats"), JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	skews := map[string]time.Duration{"dc1": 5 * time.Minute, "dc2": 0}
	nodes := map[string]*Node{}
	for _, dc := range []string{"dc1", "dc2"} {
		cfg := testConfig(dc, dir)
		cfg.Durability.MaxClockDrift = config.Duration(time.Minute)
		skew := skews[dc]
		n, err := New(cfg, Options{NATSURL: ns.ClientURL(), NoHTTP: true, ReportInterval: 50 * time.Millisecond,
			Now: func() time.Time { return time.Now().Add(skew) }})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		if err := n.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		nodes[dc] = n
	}
	ctx := context.Background()
	w, err := nodes["dc1"].Write(ctx, changelog.WriteOp{Key: "k", Value: []byte("from the future")})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dc2 to apply dc1's write", func() bool { return nodes["dc2"].Replicator().Stats().Applied > 0 })
	if got := nodes["dc2"].Replicator().Stats().ClockDrift; got != 1 {
		t.Fatalf("clock drift refusals = %d, want 1", got)
	}
	own, err := nodes["dc2"].Write(ctx, changelog.WriteOp{Key: "k2", Value: []byte("now")})
	if err != nil {
		t.Fatal(err)
	}
	if own.Event.HLC >= w.Event.HLC {
		t.Fatal("dc2 took a time beyond its drift bound")
	}
}

// waitFor polls cond until it holds or 15 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}
