package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/setup"
)

// TestReshardCommand: `replicator reshard` splits a stopped DC's store into
// two shards' stores, naming each one's partitions and keys, and refuses
// to run again into the stores it wrote.
func TestReshardCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, shard string) string {
		f := filepath.Join(dir, name+".yaml")
		dc := "dc1"
		if name == "peer" {
			dc = "dc2"
		}
		y := fmt.Sprintf("dc: %s\ndcs: [dc1, dc2]\npartitions: 4\ndata_dir: %s\n", dc, filepath.Join(dir, name))
		if shard != "" {
			y += fmt.Sprintf("shard: %q\n", shard)
		}
		if err := os.WriteFile(f, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	old, a, b := write("old", ""), write("a", "0 of 2"), write("b", "1 of 2")
	open := func(f string) *changelog.Store {
		cfg, err := config.Load(f)
		if err != nil {
			t.Fatal(err)
		}
		st, err := setup.OpenStore(cfg, setup.Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	// Keys written at dc2 and applied at dc1, so nothing waits in dc1's
	// outbox.
	peer, st := open(write("peer", "")), open(old)
	for i := range 8 {
		res, err := peer.Write(t.Context(), changelog.WriteOp{Key: fmt.Sprintf("k/%d", i), Value: []byte("v")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Apply(t.Context(), []*event.Event{res.Event}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(st.Close(), peer.Close()); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI("reshard", "--from", old, "--to", a+","+b)
	if code != 0 || !strings.Contains(stdout, `dc dc1 shard "0 of 2": partitions [0 2]`) || !strings.Contains(stdout, `shard "1 of 2": partitions [1 3]`) {
		t.Fatalf("reshard: exit %d\n%s%s", code, stdout, stderr)
	}
	code, _, stderr = runCLI("reshard", "--from", old, "--to", a+","+b)
	if code != 1 || !strings.Contains(stderr, "a reshard writes into empty stores") {
		t.Fatalf("reshard again into the same stores: exit %d %s", code, stderr)
	}
}
