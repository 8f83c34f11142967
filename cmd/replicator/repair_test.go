package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/antientropy"
)

func TestRepairUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "--config FILE is required"},
		{[]string{"--config", "x.yaml", "--timeout", "0s"}, "--timeout 0s"},
		{[]string{"--config", "/nonexistent/x.yaml"}, "x.yaml"},
	} {
		var o, e bytes.Buffer
		err := cmdRepair(context.Background(), c.args, &o, &e)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("repair %v: %v, want %q", c.args, err, c.want)
		}
	}
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("dc: a\ndcs: [a, b]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var o, e bytes.Buffer
	if err := cmdRepair(context.Background(), []string{"--config", cfg}, &o, &e); err == nil || !strings.Contains(err.Error(), "random port") {
		t.Errorf("repair against an embedded NATS on a random port: %v, want advice to set a fixed port", err)
	}
}

// TestRepairRuns asks a running worker to repair, as an operator would.
func TestRepairRuns(t *testing.T) {
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	dcs := []string{"a", "b"}
	stores := map[string]*changelog.Store{}
	for _, dc := range dcs {
		st, err := changelog.Open("/"+dc, changelog.Options{DC: dc, DCs: dcs, Partitions: 4, FS: vfs.NewMem()})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		w, err := antientropy.New(antientropy.Options{Store: st, NC: nc, DC: dc, DCs: dcs, Partitions: 4, Interval: -1})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		stores[dc] = st
	}
	for i := range 5 {
		if _, err := stores["b"].Write(context.Background(), changelog.WriteOp{Key: fmt.Sprint("k", i), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(t.TempDir(), "a.yaml")
	yaml := fmt.Sprintf("dc: a\ndcs: [a, b]\npartitions: 4\nnats:\n  url: %s\n", ns.ClientURL())
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var o, e bytes.Buffer
	if err := cmdRepair(context.Background(), []string{"--config", cfg, "--timeout", (30 * time.Second).String()}, &o, &e); err != nil {
		t.Fatalf("repair: %v\n%s", err, e.String())
	}
	if out := o.String(); !strings.Contains(out, "KEYS CHANGED") || !strings.Contains(out, "dc a: anti-entropy against 1 peers") {
		t.Fatalf("repair printed:\n%s", out)
	}
	t.Logf("replicator repair printed:\n%s", o.String())
	o.Reset()
	if err := cmdRepair(context.Background(), []string{"--config", cfg, "--json"}, &o, &e); err != nil {
		t.Fatal(err)
	}
	var r antientropy.RunReply
	if err := json.Unmarshal(o.Bytes(), &r); err != nil || len(r.Reports) != 1 || r.Reports[0].PartitionsDiffered != 0 {
		t.Fatalf("second run, as JSON: %v %+v; want one report with nothing left to repair", err, r)
	}
	for i := range 5 {
		if _, ok, err := stores["a"].Get(fmt.Sprint("k", i)); err != nil || !ok {
			t.Fatalf("k%d not repaired at a: %v", i, err)
		}
	}
}

// TestJoinRefusals: join says what to do when the DC's sidecar is still
// running (its store is locked) and when its config runs NATS embedded.
func TestJoinRefusals(t *testing.T) {
	dir := t.TempDir()
	embedded := filepath.Join(dir, "embedded.yaml")
	if err := os.WriteFile(embedded, []byte("dc: b\ndcs: [a, b]\ndata_dir: "+filepath.Join(dir, "e")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI("join", "--config", embedded, "--from", "a")
	if code != 1 || !strings.Contains(errOut, "runs NATS embedded in its sidecar") || !strings.Contains(errOut, "Set nats.url in "+embedded+" to the NATS server a's sidecar uses") {
		t.Errorf("join with embedded NATS: exit %d, %s", code, errOut)
	}

	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{JetStream: true, StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	data := filepath.Join(dir, "b")
	running := filepath.Join(dir, "running.yaml")
	if err := os.WriteFile(running, []byte("dc: b\ndcs: [a, b]\ndata_dir: "+data+"\nnats:\n  url: "+ns.ClientURL()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The running sidecar's store, held open by another process as a
	// running sidecar holds it.
	holder := exec.Command(os.Args[0], "-test.run=^TestHelperHoldStore$")
	holder.Env = append(os.Environ(), "REPL_HOLD_STORE="+filepath.Join(data, "store"))
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	defer stdin.Close()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "held\n" {
		t.Fatalf("the store holder said %q: %v", line, err)
	}
	code, _, errOut = runCLI("join", "--config", running, "--from", "a", "--timeout", "10s")
	if code != 1 || !strings.Contains(errOut, "stop the sidecar of b first") || strings.Contains(errOut, "join: join") {
		t.Errorf("join against a running sidecar: exit %d, %s", code, errOut)
	}
}

// TestHelperHoldStore is not a test: TestJoinRefusals runs it in another
// process to hold a store open until its stdin closes.
func TestHelperHoldStore(t *testing.T) {
	dir := os.Getenv("REPL_HOLD_STORE")
	if dir == "" {
		t.Skip("a helper of TestJoinRefusals")
	}
	st, err := changelog.Open(dir, changelog.Options{DC: "b", DCs: []string{"a", "b"}, Partitions: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fmt.Println("held")
	io.Copy(io.Discard, os.Stdin)
}
