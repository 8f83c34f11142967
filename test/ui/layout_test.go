package ui_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/node"
	"github.com/replicatorhq/replicator/pkg/ui"
)

// fakeSidecar serves the status page and the API it polls for DC dc1 of
// a topology of n DCs, with made-up figures: lag on every link into dc1,
// one peer unreachable. It lets the drawing be checked for topologies
// larger than a test can run.
func fakeSidecar(t *testing.T, topology string, n int) *httptest.Server {
	t.Helper()
	var dcs []string
	for i := 1; i <= n; i++ {
		dcs = append(dcs, fmt.Sprintf("dc%d", i))
	}
	hub := ""
	if topology == "star" {
		hub = "dc1"
	}
	edges, err := bridge.Edges(topology, dcs, hub)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := bridge.NewPlan(topology, "dc1", dcs, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := &bridge.Status{Running: true, Ready: true}
	now := time.Now()
	for i, up := range plan.Upstreams {
		b.Links = append(b.Links, bridge.LinkStats{Upstream: up, Connected: i != 1, LagEvents: uint64(1200 * i), LagSeconds: 12.5 * float64(i)})
	}
	for i, dc := range dcs[1:] {
		p := bridge.PeerStatus{DC: dc, State: "alive", ReportAgeSeconds: 0.3, LastReport: &now}
		if i == 1 {
			p = bridge.PeerStatus{DC: dc, State: "unreachable", ReportAgeSeconds: 42}
		}
		b.Peers = append(b.Peers, p)
	}
	st := node.Status{DC: "dc1", Topology: topology, DCs: dcs, Partitions: 16, Bridge: b, Edges: edges}
	mux := http.NewServeMux()
	mux.Handle("GET /ui", ui.Handler())
	mux.Handle("GET /ui/", ui.Handler())
	answer := func(v any) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(v)
		}
	}
	mux.Handle("GET /v1/status", answer(st))
	mux.Handle("GET /v1/conflicts", answer([]any{}))
	mux.Handle("GET /v1/deadletters", answer(map[string]any{"dead_letters": []any{}, "total": 0}))
	mux.Handle("GET /v1/digests", answer(map[string]any{"agree": false, "dcs": []map[string]any{
		{"dc": "dc1", "digest": strings.Repeat("ab", 32), "keys": 10, "self": true, "ms": 1},
		{"dc": "dc2", "error": "no sidecar of dc2 answers: it is down or cut off from NATS", "ms": 3}}}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// TestTopologyLayout draws meshes, rings and stars of up to 6 DCs and
// checks that no two link labels overlap and that each stays inside the
// drawing. With REPL_UI_SCREENSHOTS=DIR it also saves a screenshot of
// each page there, to look at.
func TestTopologyLayout(t *testing.T) {
	browser := findBrowser(t)
	for _, tc := range []struct {
		topology string
		n        int
	}{{"mesh", 2}, {"mesh", 4}, {"mesh", 5}, {"ring", 6}, {"star", 6}} {
		t.Run(fmt.Sprintf("%s-%d", tc.topology, tc.n), func(t *testing.T) {
			srv := fakeSidecar(t, tc.topology, tc.n)
			dom := dumpDOM(t, browser, srv.URL+"/ui")
			svg := element(t, dom, "svg", "topology-svg")
			checkLabels(t, svg)
			if tc.n < 3 {
				// dc2 is the peer shown alive.
			} else if node := element(t, svg, "g", "dc-node-dc3"); !strings.Contains(node, `data-state="unreachable"`) {
				t.Errorf("dc3 is not drawn unreachable: %s", node)
			}
			if dir := os.Getenv("REPL_UI_SCREENSHOTS"); dir != "" {
				screenshot(t, browser, srv.URL+"/ui", filepath.Join(dir, fmt.Sprintf("ui-%s-%d.png", tc.topology, tc.n)))
			}
		})
	}
}

// screenshot saves a 1280-pixel-wide screenshot of url to file.
func screenshot(t *testing.T, browser, url, file string) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+filepath.Join(home, "profile"), "--hide-scrollbars",
		"--window-size=1280,1600", "--virtual-time-budget=5000", "--screenshot="+file, url)
	cmd.Env = append(os.Environ(), "HOME="+home)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("screenshot: %v\n%s", err, out)
	}
}
