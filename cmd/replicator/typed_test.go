package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/resolve"
)

// TestKVTyped: kv incr, patch, add and remove against two real sidecars
// (mesh, embedded NATS); what one DC's CLI wrote, the other's kv get
// shows; refusals exit 1 with the sidecar's message; inspect shows a
// typed event's state.
func TestKVTyped(t *testing.T) {
	c := cluster.Start(t, cluster.Options{N: 2, HTTP: true, Config: func(cfg *config.Config) {
		cfg.Resolvers.Rules = append(cfg.Resolvers.Rules,
			config.Rule{Prefix: "c/", Resolver: config.Counter},
			config.Rule{Prefix: "f/", Resolver: config.Fields},
			config.Rule{Prefix: "s/", Resolver: config.Set})
	}})
	at := func(dc string, args ...string) (int, string, string) {
		return runCLI(append(args, "--addr", c.BaseURL(dc))...)
	}
	for _, cmd := range [][]string{
		{"dc1", "kv", "incr", "c/1", "5"},
		{"dc2", "kv", "incr", "c/1", "-2"},
		{"dc1", "kv", "patch", "f/1", `{"title":"T","body":"B"}`},
		{"dc2", "kv", "patch", "f/1", `{"body":null}`},
		{"dc1", "kv", "add", "s/1", `"x"`, `"y"`, `{"z":1}`},
		{"dc2", "kv", "remove", "s/1", `"y"`},
	} {
		if cmd[0] == "dc2" {
			// Each DC's op builds on the other's: wait until dc2 has it.
			key := cmd[3]
			cluster.Eventually(t, 20*time.Second, "dc2 has "+key, func() (bool, string) {
				code, out, _ := at("dc2", "kv", "get", key)
				return code == 0, out
			})
		}
		if code, out, errOut := at(cmd[0], cmd[1:]...); code != 0 || !strings.Contains(out, `"dot":`) {
			t.Fatalf("%v: exit %d %q %q", cmd, code, out, errOut)
		}
	}
	for key, want := range map[string]string{"c/1": "3\n", "f/1": `{"title":"T"}` + "\n", "s/1": `["x",{"z":1}]` + "\n"} {
		cluster.Eventually(t, 20*time.Second, key+" at both DCs", func() (bool, string) {
			for _, dc := range []string{"dc1", "dc2"} {
				if code, out, _ := at(dc, "kv", "get", key); code != 0 || out != want {
					return false, dc + ": " + out
				}
			}
			return true, ""
		})
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"kv", "put", "c/1", "7"}, "use POST /v1/kv/{key}?op=incr"},
		{[]string{"kv", "patch", "f/1", "[1]"}, "must be a JSON object"},
		{[]string{"kv", "add", "c/1", "1"}, "the key is a counter"},
		{[]string{"kv", "incr", "plain", "1"}, "uses the siblings resolver"},
	} {
		if code, _, errOut := at("dc1", c.args...); code != 1 || !strings.Contains(errOut, "400") || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d %q, want 1 and a 400 saying %q", c.args, code, errOut, c.want)
		}
	}

	// inspect: the event of a typed write shows its state readably.
	res, err := c.Store("dc1").Write(context.Background(), changelog.WriteOp{Key: "c/2", Typed: &resolve.Op{Kind: resolve.OpIncr, By: 42}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := res.Event.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "ev.bin")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI("inspect", "--compact", f)
	if code != 0 || !strings.Contains(out, `"value_typed":{"counter":42,"dcs":{"dc1":{"n":0,"p":42,"removed_n":0,"removed_p":0}}}`) {
		t.Fatalf("inspect of a counter event: exit %d %s %s", code, out, errOut)
	}
}
