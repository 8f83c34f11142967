package shard_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/node"
	"github.com/replicatorhq/replicator/pkg/reshard"
)

// reshardDC changes dc's shard count to count with `replicator reshard`:
// once its outboxes are drained, its sidecars stop, their stores are
// copied partition by partition into the new layout's, and the new
// sidecars start. It first checks the refusals: a store in use, a
// missing old store, and a new layout that leaves partitions out.
func reshardDC(t *testing.T, all []*sidecar, dc string, count int) []*sidecar {
	t.Helper()
	leaving, rest, peers := splitDC(all, dc)
	drained(t, leaving, peers)
	dir, url := t.TempDir(), leaving[0].url
	var from, to []config.Config
	for _, s := range leaving {
		from = append(from, s.cfg)
	}
	for i := range max(count, 1) {
		cfg := sidecarConfig(dir, dc, i, count)
		cfg.Complete()
		to = append(to, cfg)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	refused := func(what, want string, from, to []config.Config) {
		t.Helper()
		if _, err := reshard.Run(context.Background(), from, to, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("reshard with %s: %v, want an error saying %q", what, err, want)
		}
	}
	refused("the old sidecars running", "is in use: stop every sidecar of the DC first", from, to)
	for _, s := range leaving {
		if err := s.n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	gone := from[0]
	gone.DataDir = filepath.Join(dir, "never-ran")
	refused("an old store missing", "has no store at", append([]config.Config{gone}, from[1:]...), to)
	refused("a new layout leaving partitions out", "no new store owns partitions", from, to[:len(to)-1])

	res, err := reshard.Run(context.Background(), from, to, nc)
	if err != nil {
		t.Fatalf("reshard %s from %d to %d shards: %v", dc, len(from), count, err)
	}
	t.Logf("resharded %s %v to %v: %+v, %d old consumers deleted", dc, res.From, res.To, res.Stores, res.ConsumersReset)
	var started []*sidecar
	for _, cfg := range to {
		started = append(started, startSidecar(t, cfg, url, node.Options{}))
	}
	staleConsumers(t, url, dc, count)
	return append(started, rest...)
}

// TestReshard (invariant 16; README "Changing a DC's shard count"): dc1
// goes from one sidecar to 2 shards, then to 3, with `replicator
// reshard`, while dc2 (2 shards) and dc3 keep writing; dc1 writes before
// and after each change. No acknowledged write is lost, and every DC's
// whole digest agrees.
func TestReshard(t *testing.T) {
	_, all := mesh(t, map[string]int{"dc2": 2})
	byDC := func(dc string) []*sidecar { return ofDC(all, dc) }
	w := &writers{t: t, stop: make(chan struct{}), acked: map[string][]string{}}
	defer func() { w.halt() }()
	for _, dc := range dcs {
		w.write(byDC(dc))
	}
	w.waitMore(60, "writes before the reshard")
	for _, count := range []int{2, 3} {
		w.halt() // dc1's writer stops: its sidecars go away
		w = &writers{t: t, stop: make(chan struct{}), acked: w.acked}
		w.write(byDC("dc2"))
		w.write(byDC("dc3"))
		all = reshardDC(t, all, "dc1", count)
		w.write(byDC("dc1"))
		w.waitMore(60, "writes after the reshard")
	}
	w.halt()
	w = &writers{t: t, stop: make(chan struct{}), acked: w.acked}
	converged(t, all, w.count(""))
	t.Logf("%d acknowledged writes (%d at dc1), all at every DC", w.count(""), w.count("dc1"))
}
