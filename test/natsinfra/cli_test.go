package natsinfra_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
)

// buildTool builds the main package pkg of this module's build list into
// dir and returns the binary's path.
func buildTool(t testing.TB, dir, name, pkg string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build %s: %v", pkg, err)
	}
	out := filepath.Join(dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// natsCLI runs the NATS CLI against one server, with a home directory of
// its own so that no saved context or NATS_* variable of the user's leaks
// in.
type natsCLI struct {
	bin, server, home string
}

func (c natsCLI) run(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--server", c.server}, args...)...)
	cmd.Env = []string{"HOME=" + c.home, "XDG_CONFIG_HOME=" + c.home, "PATH=" + os.Getenv("PATH"), "NO_COLOR=1"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nats %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// TestNATSCLIReadsStream checks docs/DESIGN.md "Readable in the NATS CLI":
// the NATS CLI shows an event's headers in text form, `replicator inspect`
// decodes its payload as a `nats --translate` filter, and the sidecar's
// NATS micro service is listed and answers requests.
func TestNATSCLIReadsStream(t *testing.T) {
	bin := t.TempDir()
	nats := natsCLI{bin: buildTool(t, bin, "nats", "github.com/nats-io/natscli/nats"), home: t.TempDir()}
	replicator := buildTool(t, bin, "replicator", "github.com/replicatorhq/replicator/cmd/replicator")

	ns := cluster.RunServer(t, cluster.ServerOptions{Name: "cli"})
	nats.server = ns.URL()
	dcs := []string{"dc1", "dc2"}
	mesh := startMesh(t, dcs, func(int) string { return ns.URL() }, nil)
	nodes := mesh.Nodes()
	dc1, dc2 := nodes[0], nodes[1]

	// dc2 writes a key; dc1 overwrites it with the context of its read, so
	// dc1's first event, sequence 1 of REPL_dc1, carries a context naming
	// dc2.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const key = "cli/shared"
	if _, err := dc2.Write(ctx, changelog.WriteOp{Key: key, Value: []byte("from dc2")}); err != nil {
		t.Fatal(err)
	}
	cluster.Eventually(t, 10*time.Second, "dc2's write at dc1", func() (bool, string) {
		_, st, ok, err := dc1.Read(key)
		return ok && err == nil && st.Clock.Get("dc2") > 0, fmt.Sprintf("dc1 holds %v, err %v", st, err)
	})
	_, st, _, err := dc1.Read(key)
	if err != nil {
		t.Fatal(err)
	}
	res, err := dc1.Write(ctx, changelog.WriteOp{Key: key, Value: []byte("from dc1"), Context: st.Clock})
	if err != nil {
		t.Fatal(err)
	}
	first := res.Event
	wantDot, wantContext := first.Dot.String(), first.Context.String()
	if !strings.Contains(wantContext, "dc2:") {
		t.Fatalf("dc1's write has context %s; the test wants one naming dc2", wantContext)
	}
	for i := range 3 {
		if _, err := dc1.Write(ctx, changelog.WriteOp{Key: fmt.Sprintf("cli/%d", i), Value: fmt.Appendf(nil, "v%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	mesh.WaitConverged(t, 20*time.Second)

	t.Run("stream get shows the headers", func(t *testing.T) {
		out := nats.run(t, "stream", "get", "REPL_dc1", "1")
		t.Logf("nats stream get REPL_dc1 1:\n%s", out)
		for _, want := range []string{
			"Repl-Origin: dc1",
			"Repl-Key: " + key,
			"Repl-Dot: " + wantDot,
			"Repl-Context: " + wantContext,
			"Repl-Path: dc1",
			"Repl-Op: put",
			"Nats-Msg-Id: " + fmt.Sprintf("dc1:%d:%d", first.Partition, first.Seq),
			"Content-Type: application/msgpack",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("nats stream get REPL_dc1 1: no %q in:\n%s", want, out)
			}
		}
	})

	t.Run("sub translates through replicator inspect", func(t *testing.T) {
		out := nats.run(t, "sub", "--stream", "REPL_dc1", "repl.dc1.>", "--all", "--count", "1",
			"--translate", replicator+" inspect --compact")
		t.Logf("nats sub --translate:\n%s", out)
		var got struct {
			Origin  string            `json:"origin"`
			Key     string            `json:"key"`
			Dot     string            `json:"dot"`
			Op      string            `json:"op"`
			Context map[string]uint64 `json:"context"`
			Path    []string          `json:"path"`
		}
		line := jsonLine(out)
		if line == "" {
			t.Fatalf("nats sub --translate printed no JSON line:\n%s", out)
		}
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("inspect output %q: %v", line, err)
		}
		if got.Origin != "dc1" || got.Key != key || got.Dot != wantDot || got.Op != "put" || got.Context["dc2"] == 0 || len(got.Path) != 1 {
			t.Errorf("inspect decoded %+v; want origin dc1, key %s, dot %s, op put, a context naming dc2, path [dc1]\nfull output:\n%s", got, key, wantDot, out)
		}
	})

	t.Run("micro ls lists the replicator service", func(t *testing.T) {
		out := nats.run(t, "micro", "ls", "--json")
		var svcs []struct {
			Name     string            `json:"name"`
			Metadata map[string]string `json:"metadata"`
		}
		if err := json.Unmarshal([]byte(out), &svcs); err != nil {
			t.Fatalf("nats micro ls --json: %v\n%s", err, out)
		}
		seen := map[string]bool{}
		for _, s := range svcs {
			if s.Name == "replicator" {
				seen[s.Metadata["dc"]] = true
			}
		}
		if !seen["dc1"] || !seen["dc2"] {
			t.Errorf("nats micro ls: want a replicator instance per DC (dc1, dc2), got %s", out)
		}
	})

	t.Run("req reads a key through the micro service", func(t *testing.T) {
		out := nats.run(t, "req", "repl.api.dc2.get", `{"key":"cli/1"}`, "--raw")
		var got struct {
			Key    string   `json:"key"`
			Values []string `json:"values"`
		}
		if err := json.Unmarshal([]byte(jsonLine(out)), &got); err != nil {
			t.Fatalf("nats req repl.api.dc2.get: %v\n%s", err, out)
		}
		if got.Key != "cli/1" || len(got.Values) != 1 || got.Values[0] != base64.StdEncoding.EncodeToString([]byte("v1")) {
			t.Errorf("nats req repl.api.dc2.get cli/1: got %+v, want key cli/1 with the one value v1\n%s", got, out)
		}
	})
}

// jsonLine returns the first line of out that holds a JSON object.
func jsonLine(out string) string {
	for line := range strings.Lines(out) {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "{") {
			return line
		}
	}
	return ""
}
