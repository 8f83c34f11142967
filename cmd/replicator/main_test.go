package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/replicatorhq/replicator/pkg/demo"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string // in stderr
	}{
		{nil, 2, "usage: replicator COMMAND"},
		{[]string{"--help"}, 0, "commands:"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"run"}, 2, "--config FILE is required"},
		{[]string{"run", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"demo", "--topology", "tree"}, 2, `--topology "tree"`},
		{[]string{"demo", "--dcs", "x"}, 2, "invalid value"},
		{[]string{"demo", "--topology", "ring", "--dcs", "2"}, 2, "at least 3 DCs"},
		{[]string{"kv"}, 2, "want get|put|del KEY"},
		{[]string{"kv", "put", "k"}, 2, "kv put KEY VALUE"},
		{[]string{"kv", "frob", "k"}, 2, `unknown kv operation "frob"`},
		{[]string{"conflicts"}, 2, "want list or resolve"},
		{[]string{"conflicts", "resolve", "id"}, 2, "conflicts resolve ID VALUE"},
		{[]string{"run", "--config", "/nonexistent/x.yaml"}, 1, "x.yaml"},
		{[]string{"bench", "--via", "grpc"}, 2, `via "grpc": want api, http or txn`},
		{[]string{"bench", "--dcs", "0", "--writes", "0"}, 2, "replicator bench: dcs 0: want 2..64; writes 0: want at least 1 (see --help)"},
		{[]string{"bench", "--via", "txn", "--txn-ops", "0"}, 2, "txn-ops 0"},
		// Extra positional arguments are usage errors, for every command.
		{[]string{"kv", "get", "k", "extra"}, 2, `kv get takes 1 argument(s), got 2: "k extra"`},
		{[]string{"kv", "del", "k", "extra"}, 2, `kv del takes 1 argument(s), got 2`},
		{[]string{"kv", "put", "k", "v", "extra"}, 2, `kv put takes 2 argument(s), got 3`},
		{[]string{"kv", "get"}, 2, "kv get KEY: the key is missing"},
		{[]string{"kv", "txn", "a", "b"}, 2, "one file at most"},
		{[]string{"kv", "put", "k", "v", "--json"}, 2, "--json is for kv get"},
		{[]string{"kv", "get", "k", "--ttl", "1s"}, 2, "--ttl is for kv put"},
		{[]string{"kv", "put", "k", "v", "--ttl", "-1s"}, 2, "--ttl -1s is negative"},
		{[]string{"kv", "put", "k", "v", "--ttl", "soon"}, 2, `invalid value "soon" for flag -ttl`},
		{[]string{"kv", "incr", "k"}, 2, "kv incr KEY N"},
		{[]string{"kv", "incr", "k", "x"}, 2, "want a non-zero integer"},
		{[]string{"kv", "add", "k"}, 2, "kv add KEY ELEMENT"},
		{[]string{"kv", "add", "k", "x"}, 2, "is not a JSON value"},
		{[]string{"kv", "patch", "k", "{}", "extra"}, 2, "kv patch takes 2 argument(s)"},
		{[]string{"conflicts", "list", "extra"}, 2, `conflicts list takes no arguments, got "extra"`},
		{[]string{"conflicts", "list", "--limit", "-1"}, 2, "--limit -1"},
		{[]string{"run", "--config", "x.yaml", "extra"}, 2, `run takes no arguments, got "extra"`},
		{[]string{"demo", "extra"}, 2, `demo takes no arguments, got "extra"`},
		{[]string{"bench", "extra"}, 2, `bench takes no arguments, got "extra"`},
		{[]string{"join", "extra"}, 2, `join takes no arguments, got "extra"`},
		{[]string{"repair", "extra"}, 2, `repair takes no arguments, got "extra"`},
		{[]string{"reshard"}, 2, "--from and --to are required"},
		{[]string{"reshard", "--from", "a.yaml", "--to", "b.yaml", "extra"}, 2, `reshard takes no arguments, got "extra"`},
		{[]string{"reshard", "--from", "/nonexistent/a.yaml", "--to", "b.yaml"}, 1, "a.yaml"},
		{[]string{"version", "extra"}, 2, `version takes no arguments, got "extra"`},
		{[]string{"status", "extra"}, 2, `status takes no arguments, got "extra"`},
	}
	for _, c := range cases {
		code, _, stderr := runCLI(c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("replicator %v: exit %d, stderr %q; want exit %d and %q", c.args, code, stderr, c.code, c.want)
		}
		if c.code == 2 && len(c.args) > 0 && c.args[0] != "--help" && strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("replicator %v: a usage error must be one line, got %q", c.args, stderr)
		}
	}
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range commands {
		code, _, stderr := runCLI(c.name, "--help")
		if code != 0 || !strings.Contains(stderr, "usage: replicator "+c.name) {
			t.Errorf("%s --help: exit %d, stderr %q", c.name, code, stderr)
		}
	}
}

// TestBenchHelp checks that bench --help names the transaction driver and
// its flag.
func TestBenchHelp(t *testing.T) {
	_, _, stderr := runCLI("demo", "--help")
	if !strings.Contains(stderr, "writes per DC: each DC makes W writes") || !strings.Contains(stderr, "the same seed gives the same writes") {
		t.Errorf("demo --help does not say --writes is per DC and what --seed fixes:\n%s", stderr)
	}
	_, _, stderr = runCLI("bench", "--help")
	if !strings.Contains(stderr, "replicated writes in total") {
		t.Errorf("bench --help does not say --writes is a total:\n%s", stderr)
	}
	for _, want := range []string{"--via api|http|txn [--txn-ops N]", "-txn-ops int", "POST /v1/txn", "HTTP floor"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("bench --help lacks %q:\n%s", want, stderr)
		}
	}
}

func TestInspect(t *testing.T) {
	ev := &event.Event{Version: 1, Origin: "dc1", Partition: 3, Seq: 7, Key: "user/1", Op: event.OpPut,
		Value: []byte("hello"), Dot: vclock.Dot{DC: "dc1", N: 7}, Context: vclock.VV{"dc2": 4}, HLC: 42, Path: []string{"dc1"}}
	b, err := ev.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "ev.bin")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLI("inspect", "--compact", f)
	if code != 0 {
		t.Fatalf("inspect: exit %d: %s", code, stderr)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("inspect printed %q: %v", out, err)
	}
	if got["origin"] != "dc1" || got["key"] != "user/1" || got["dot"] != "dc1:7" {
		t.Fatalf("inspect JSON %v", got)
	}
	bad := filepath.Join(t.TempDir(), "bad.bin")
	os.WriteFile(bad, []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, 0o644)
	if code, _, stderr := runCLI("inspect", bad); code != 1 || !strings.Contains(stderr, "not a replicator event") {
		t.Fatalf("inspect of garbage: exit %d, %q", code, stderr)
	}
}

// TestDemoJSON runs a small demo end to end: exit 0 only when converged, and
// exactly one JSON object with the documented fields on stdout.
func TestDemoJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("runs embedded NATS and three DCs")
	}
	code, out, stderr := runCLI("demo", "--json", "--writes", "60", "--keys", "5")
	if code != 0 {
		t.Fatalf("demo exit %d: %s", code, stderr)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	var s struct {
		Converged *bool             `json:"converged"`
		Topology  string            `json:"topology"`
		DCs       int               `json:"dcs"`
		Writes    int               `json:"writes"`
		Conflicts map[string]int    `json:"conflicts"`
		Digests   map[string]string `json:"digests"`
		ElapsedMS *int64            `json:"elapsed_ms"`
		Seed      uint64            `json:"seed"`
		Workload  string            `json:"workload"`
		Merged    map[string]string `json:"merged"`
	}
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("stdout %q: %v", out, err)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value on stdout: %q", out)
	}
	if s.Converged == nil || !*s.Converged || s.Topology != "mesh" || s.DCs != 3 || s.Writes != 180 || len(s.Digests) != 3 || s.ElapsedMS == nil || len(s.Conflicts) != 9 {
		t.Fatalf("demo summary %+v", s)
	}
	// The typed keys' merged values: a counter's decimal total, a
	// document's object, a set's array.
	kinds := map[string]bool{}
	for k, v := range s.Merged {
		prefix, _, _ := strings.Cut(k, "/")
		kinds[prefix] = true
		if v == "(deleted)" {
			continue
		}
		number := !strings.ContainsAny(v[:1], "{[")
		if number != (prefix == "views") || !json.Valid([]byte(v)) {
			t.Errorf("merged %s = %s", k, v)
		}
	}
	if !kinds["views"] || !kinds["profile"] || !kinds["cart"] {
		t.Errorf("merged values of %v, want views/, profile/ and cart/ keys", kinds)
	}
	// The workload is the seed's: the same digest as the plan of seed 1.
	if want := demo.Workload(demo.Options{DCs: 3, Writes: 60, Keys: 5, Seed: 1}); s.Seed != 1 || s.Workload != want {
		t.Errorf("seed %d workload %q, want seed 1 workload %q", s.Seed, s.Workload, want)
	}
	first := s.Digests["dc1"]
	for dc, d := range s.Digests {
		if d != first {
			t.Fatalf("converged but %s has digest %s, dc1 %s", dc, d, first)
		}
	}
}

func TestFlagsBetweenArguments(t *testing.T) {
	fs := newFlags("kv", "", &bytes.Buffer{})
	addr := fs.String("addr", "", "")
	pos, err := parseArgs(fs, []string{"put", "--addr", "x:1", "key", "value"})
	if err != nil || *addr != "x:1" || strings.Join(pos, " ") != "put key value" {
		t.Fatalf("parseArgs: %v %q %v", pos, *addr, err)
	}
	pos, err = parseArgs(fs, []string{"put", "--", "--key-with-dashes", "v"})
	if err != nil || strings.Join(pos, " ") != "put --key-with-dashes v" {
		t.Fatalf("parseArgs with --: %v %v", pos, err)
	}
}

// TestConflictsListPages: `conflicts list` follows the API's pages
// (X-Repl-Next-After) and prints every entry once, as one JSON array.
func TestConflictsListPages(t *testing.T) {
	pages := map[string]struct{ body, next string }{
		"":   {`[{"id":"a"},{"id":"b"}]`, "b"},
		"b":  {`[{"id":"c"}]`, ""},
		"zz": {`[]`, ""},
	}
	var (
		mu    sync.Mutex
		asked []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		after := r.URL.Query().Get("after")
		mu.Lock()
		asked = append(asked, after+"|"+r.URL.Query().Get("status")+"|"+r.URL.Query().Get("prefix")+"|"+r.URL.Query().Get("limit"))
		mu.Unlock()
		p, ok := pages[after]
		if !ok {
			http.Error(w, "unknown page", http.StatusBadRequest)
			return
		}
		if p.next != "" {
			w.Header().Set("X-Repl-Next-After", p.next)
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, p.body)
	}))
	defer srv.Close()
	code, out, errOut := runCLI("conflicts", "list", "--status", "logged", "--addr", srv.URL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got []struct{ ID string }
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not a JSON array: %v\n%s", err, out)
	}
	ids := ""
	for _, c := range got {
		ids += c.ID
	}
	mu.Lock()
	defer mu.Unlock()
	if ids != "abc" || strings.Join(asked, ",") != "|logged||1000,b|logged||1000" {
		t.Fatalf("printed ids %q after asking %v; want abc after the pages '' and b, each with status=logged", ids, asked)
	}
	// --limit stops after that many entries; --prefix is passed on.
	asked = nil
	mu.Unlock()
	code, out, errOut = runCLI("conflicts", "list", "--prefix", "t/", "--limit", "2", "--addr", srv.URL)
	mu.Lock()
	if code != 0 || strings.Count(out, `"id"`) != 2 || strings.Join(asked, ",") != "||t/|2" {
		t.Fatalf("--limit 2 --prefix t/: exit %d %s %s, asked %v", code, out, errOut, asked)
	}
}

// TestKVGetAndPut: kv get prints the values on stdout and the context on
// stderr, --json the API's answer, and exits 3 for a key without a live
// value; kv put - sends stdin as the value, byte for byte.
func TestKVGetAndPut(t *testing.T) {
	var (
		mu  sync.Mutex
		put []byte
		ttl string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/v1/kv/greeting":
			w.Header().Set("X-Repl-Context", "{dc1:1,dc2:1}")
			fmt.Fprint(w, `{"key":"greeting","context":"{dc1:1,dc2:1}","values":["aGVsbG8=","aGkgdGhlcmU="],"conflict":true}`)
		case r.Method == http.MethodGet:
			w.Header().Set("X-Repl-Context", "{dc1:4}")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"error":"no live value","key":"missing","context":"{dc1:4}"}`)
		case r.Method == http.MethodPut:
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			put, ttl = b, r.Header.Get("X-Repl-TTL")
			mu.Unlock()
			fmt.Fprint(w, `{"key":"k","context":"{dc1:5}","dot":"dc1:5"}`)
		}
	}))
	defer srv.Close()

	code, out, errOut := runCLI("kv", "get", "greeting", "--addr", srv.URL)
	if code != 0 || out != "hello\nhi there\n" || errOut != "context {dc1:1,dc2:1} (conflict: more than one value)\n" {
		t.Errorf("kv get: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = runCLI("kv", "get", "greeting", "--json", "--addr", srv.URL)
	if code != 0 || !strings.HasPrefix(out, `{"key":"greeting"`) {
		t.Errorf("kv get --json: exit %d, %q", code, out)
	}
	code, out, errOut = runCLI("kv", "get", "missing", "--addr", srv.URL)
	if code != exitNotFound || out != "" || errOut != "replicator kv: key \"missing\" has no live value (context {dc1:4})\n" {
		t.Errorf("kv get of a missing key: exit %d, stdout %q, stderr %q; want exit 3", code, out, errOut)
	}
	code, out, _ = runCLI("kv", "get", "missing", "--json", "--addr", srv.URL)
	if code != exitNotFound || !strings.Contains(out, `"context":"{dc1:4}"`) {
		t.Errorf("kv get --json of a missing key: exit %d, %q", code, out)
	}

	value := []byte("line one\n\x00binary\xff")
	stdin = bytes.NewReader(value)
	defer func() { stdin = os.Stdin }()
	code, out, errOut = runCLI("kv", "put", "k", "-", "--addr", srv.URL)
	mu.Lock()
	defer mu.Unlock()
	if code != 0 || !bytes.Equal(put, value) || !strings.Contains(out, `"dot":"dc1:5"`) || ttl != "" {
		t.Errorf("kv put k -: exit %d %q %q, sent %q (ttl %q), want %q and no ttl", code, out, errOut, put, ttl, value)
	}
	mu.Unlock()
	code, _, errOut = runCLI("kv", "put", "k", "v", "--ttl", "90s", "--addr", srv.URL)
	mu.Lock()
	if code != 0 || ttl != "1m30s" {
		t.Errorf("kv put --ttl 90s: exit %d %q, sent X-Repl-TTL %q; want 1m30s", code, errOut, ttl)
	}
}
