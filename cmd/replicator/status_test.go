package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/node"
)

// statusServer serves a sidecar's /v1/status, /readyz and open conflicts
// as a DC catching up while healing around a dead peer would, and wants
// token on the API routes.
func statusServer(t *testing.T, token string) *httptest.Server {
	t.Helper()
	last := time.Now().Add(-400 * time.Millisecond)
	st := node.Status{DC: "dc2", Topology: "ring", DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 16,
		Bridge: &bridge.Status{Running: true, OutboxDepth: 7,
			Healing: []bridge.Bypass{{Dead: "dc1", Via: "dc3"}},
			Links: []bridge.LinkStats{{Upstream: "dc1", Connected: false, LagEvents: 12, LastError: "nats: timeout"},
				{Upstream: "dc3", Connected: true, Heal: true, Applied: 40}},
			Peers: []bridge.PeerStatus{{DC: "dc1", State: "unreachable", ReportAgeSeconds: 45.2},
				{DC: "dc3", State: "alive", ReportAgeSeconds: 0.4, LastReport: &last}}},
		Conflicts: node.ConflictCounts{Held: 120, SinceStart: map[string]uint64{"lww": 3}},
	}
	p := 3
	rd := bridge.Readiness{WaitingFor: []bridge.ReadyWait{{Peer: "dc3", Reason: "events dc3 reported applied and this DC lacks", Origin: "dc3", Partition: &p}}}
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/readyz" {
			w.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(w).Encode(rd)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"missing or wrong bearer token"}`)
			return
		}
		switch r.URL.Path {
		case "/v1/status":
			json.NewEncoder(w).Encode(st)
		case "/v1/conflicts":
			if r.URL.Query().Get("status") != "open" {
				t.Errorf("conflicts asked with %s", r.URL.RawQuery)
			}
			fmt.Fprint(w, `[{"id":"a"},{"id":"b"}]`)
		default:
			http.NotFound(w, r)
		}
	}))
}

// TestStatusSummary: `replicator status` prints a summary (readiness and
// what it waits for, outbox, healing, conflicts, links, peers' liveness),
// `--json` the raw answer; with --config FILE it dials the config's
// http.listen with its http.token.
func TestStatusSummary(t *testing.T) {
	srv := statusServer(t, "tok")
	defer srv.Close()
	code, out, errOut := runCLI("status", "--addr", srv.URL, "--token", "tok")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"dc2 · ring of dc1, dc2, dc3 · 16 partitions",
		"ready:      no, catching up:", "waiting for dc3: events dc3 reported applied and this DC lacks",
		"outbox 7 event(s) not yet published", "healing:    around dc1 via dc3",
		"2 open record(s) · 120 logged or resolved entries held · since start: lww 3",
		"dc1         no         12 ev, 0.0s", "nats: timeout", "dc3 (heal)",
		"dc1   unreachable  none for 45.2s since this DC started", "dc3   alive        400ms ago",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCLI("status", "--addr", srv.URL, "--token", "tok", "--json")
	var raw map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &raw) != nil || raw["dc"] != "dc2" {
		t.Errorf("--json: exit %d, %s", code, out)
	}

	dir := t.TempDir()
	cfg := filepath.Join(dir, "dc2.yaml")
	listen := strings.TrimPrefix(srv.URL, "http://")
	if err := os.WriteFile(cfg, []byte("dc: dc2\ndcs: [dc1, dc2, dc3]\nhttp:\n  listen: "+listen+"\n  token: tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCLI("status", "--config", cfg); code != 0 || !strings.Contains(out, "dc2 · ring") {
		t.Errorf("status --config: exit %d, %s %s", code, out, errOut)
	}
	if code, _, errOut := runCLI("status", "extra"); code != 2 || !strings.Contains(errOut, `status takes no arguments, got "extra"`) {
		t.Errorf("status extra: exit %d, %s", code, errOut)
	}
}

func TestDialAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:7071": "http://127.0.0.1:7071", ":7070": "http://127.0.0.1:7070",
		"0.0.0.0:7070": "http://127.0.0.1:7070", "[::]:7070": "http://127.0.0.1:7070",
		"dc1.example:7070": "http://dc1.example:7070", "[::1]:7070": "http://[::1]:7070",
	} {
		if got := dialAddr(in); got != want {
			t.Errorf("dialAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestProbe: probe exits 0 on a 200 from /healthz, 1 on a 503 from
// /readyz, saying so.
func TestProbe(t *testing.T) {
	srv := statusServer(t, "tok")
	defer srv.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("/readyz", srv.Config.Handler)
	probe := httptest.NewServer(mux)
	defer probe.Close()
	if code, out, errOut := runCLI("probe", "--addr", probe.URL); code != 0 || out != "/healthz: ok\n" {
		t.Errorf("probe: exit %d, %q %q", code, out, errOut)
	}
	if code, _, errOut := runCLI("probe", "--ready", "--addr", probe.URL); code != 1 || !strings.Contains(errOut, "/readyz: 503") {
		t.Errorf("probe --ready of a DC catching up: exit %d, %q", code, errOut)
	}
}
