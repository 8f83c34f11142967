package shard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/join"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/node"
	"github.com/replicatorhq/replicator/pkg/setup"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

// writers puts unique keys through sidecars, round robin, until stopped,
// and remembers every key acknowledged.
type writers struct {
	t    *testing.T
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup
	mu   sync.Mutex
	// acked holds the acknowledged keys, by the DC that took them.
	acked map[string][]string
}

// write starts a writer through the sidecars of via (one DC's).
func (w *writers) write(via []*sidecar) {
	dc := via[0].dc
	w.wg.Go(func() {
		client := &http.Client{Timeout: 10 * time.Second}
		for n := 0; ; n++ {
			select {
			case <-w.stop:
				return
			default:
			}
			key := fmt.Sprintf("w/%s/%d", dc, keySeq.Add(1))
			req, _ := http.NewRequest(http.MethodPut, via[n%len(via)].base+"/v1/kv/"+key, strings.NewReader("v"))
			resp, err := client.Do(req)
			if err != nil {
				continue // not acknowledged: nothing to account
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				w.mu.Lock()
				w.acked[dc] = append(w.acked[dc], key)
				w.mu.Unlock()
			}
		}
	})
}

// count is how many writes were acknowledged at dc ("" for all).
func (w *writers) count(dc string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for d, ks := range w.acked {
		if dc == "" || d == dc {
			n += len(ks)
		}
	}
	return n
}

// waitMore waits until n more writes are acknowledged than now: the load
// really runs while the test changes things.
func (w *writers) waitMore(n int, what string) {
	w.t.Helper()
	target := w.count("") + n
	cluster.EventuallyEvery(w.t, 30*time.Second, 10*time.Millisecond, what, func() (bool, string) {
		return w.count("") >= target, fmt.Sprintf("%d of %d writes acknowledged", w.count(""), target)
	})
}

// keySeq numbers the writers' keys.
var keySeq atomic.Int64

// halt stops the writers and waits for them; it is safe to call twice.
func (w *writers) halt() {
	w.once.Do(func() { close(w.stop) })
	w.wg.Wait()
}

// dcApplied is a DC's applied vector: each shard's rows for its own
// partitions.
func dcApplied(sidecars []*sidecar) changelog.Applied {
	out := changelog.Applied{}
	for _, s := range sidecars {
		a := s.n.Store().Applied()
		for o, row := range a {
			if out[o] == nil {
				out[o] = make([]uint64, partitions)
			}
			for _, p := range s.cfg.OwnedPartitions() {
				if int(p) < len(row) {
					out[o][p] = row[p]
				}
			}
		}
	}
	return out
}

// outboxHeld reads bridge.OutboxHeld of every sidecar of a DC from its
// GET /v1/status (through s): the whole DC's for a shard.
func outboxHeld(t *testing.T, s *sidecar) ([]uint64, string) {
	t.Helper()
	code, _, b := do(t, http.MethodGet, s.base+"/v1/status", nil)
	if code != http.StatusOK {
		return nil, fmt.Sprintf("%d %s", code, b)
	}
	type status struct {
		Bridge *struct{ OutboxHeld uint64 } `json:"bridge"`
	}
	var st struct {
		status
		Shards []struct {
			Status status `json:"status"`
		} `json:"shards"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	all := []status{st.status}
	if len(st.Shards) > 0 {
		all = all[:0]
		for _, sh := range st.Shards {
			all = append(all, sh.Status)
		}
	}
	var out []uint64
	for _, x := range all {
		if x.Bridge == nil {
			return nil, "no bridge status: " + string(b)
		}
		out = append(out, x.Bridge.OutboxHeld)
	}
	return out, ""
}

// drained waits, as README "Changing a DC's shard count" says, until
// every sidecar of the DC of leaving reports an empty outbox
// (bridge.OutboxHeld 0 in GET /v1/status), then checks that every DC of
// peers has indeed applied every event leaving issued: none of its
// acknowledged writes lives only in its stores, which may be stopped for
// good.
func drained(t *testing.T, leaving []*sidecar, peers map[string][]*sidecar) {
	t.Helper()
	dc := leaving[0].dc
	cluster.EventuallyEvery(t, 30*time.Second, 20*time.Millisecond, "every sidecar of "+dc+" to report an empty outbox", func() (bool, string) {
		held, why := outboxHeld(t, leaving[0])
		if why != "" {
			return false, why
		}
		return !slices.ContainsFunc(held, func(n uint64) bool { return n > 0 }), fmt.Sprintf("outbox entries held per sidecar: %v", held)
	})
	own := dcApplied(leaving)[dc]
	for peer, ss := range peers {
		got := dcApplied(ss)[dc]
		for p, n := range own {
			if p >= len(got) || got[p] < n {
				t.Fatalf("%s reports an empty outbox, but %s applied %v of its events and %s issued %v", dc, peer, got, dc, own)
			}
		}
	}
}

// joinShard runs `replicator join` for the sidecar of cfg (stopped, its
// store empty) from DC from, and checks what it imported: keys of its own
// partitions only, every key acknowledged at from before the join among
// them, and the applied vector from had for its partitions when the join
// started.
func joinShard(t *testing.T, cfg config.Config, url, from string, fromSidecars []*sidecar, before []string) join.Result {
	t.Helper()
	floor := dcApplied(fromSidecars)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	res, err := join.Run(context.Background(), cfg, nc, join.Options{From: from, Logger: testutil.Logger(t, cfg.DC)})
	if err != nil {
		t.Fatalf("join %s shard %q from %s: %v", cfg.DC, cfg.Shard, from, err)
	}
	owned := cfg.OwnedPartitions()
	for o, row := range floor {
		if o == cfg.DC {
			continue
		}
		for _, p := range owned {
			if got := res.Applied[o]; int(p) >= len(got) || got[p] < row[p] {
				t.Fatalf("join %s shard %q from %s: starts from %v of %s's events, but %s had applied %v before the join", cfg.DC, cfg.Shard, from, res.Applied[o], o, from, row)
			}
		}
	}
	st, err := setup.OpenStore(cfg, setup.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	held := map[string]bool{}
	err = st.Scan("", func(key string, _ dvv.State) error {
		if p := event.PartitionOf(key, partitions); !slices.Contains(owned, p) {
			return fmt.Errorf("key %q of partition %d, which shard %q does not own (%v)", key, p, cfg.Shard, owned)
		}
		held[key] = true
		return nil
	})
	if err != nil {
		t.Fatalf("join %s shard %q from %s imported %v", cfg.DC, cfg.Shard, from, err)
	}
	for _, k := range before {
		if slices.Contains(owned, event.PartitionOf(k, partitions)) && !held[k] {
			t.Fatalf("join %s shard %q from %s: %q, acknowledged at %s before the join, is not in the imported store", cfg.DC, cfg.Shard, from, k, from)
		}
	}
	return res
}

// splitDC splits all into dc's sidecars and the others, also by DC.
func splitDC(all []*sidecar, dc string) (leaving, rest []*sidecar, peers map[string][]*sidecar) {
	peers = map[string][]*sidecar{}
	for _, s := range all {
		if s.dc == dc {
			leaving = append(leaving, s)
			continue
		}
		rest = append(rest, s)
		peers[s.dc] = append(peers[s.dc], s)
	}
	return leaving, rest, peers
}

// ofDC returns dc's sidecars of all.
func ofDC(all []*sidecar, dc string) []*sidecar {
	mine, _, _ := splitDC(all, dc)
	return mine
}

// relayout stops every sidecar of dc in all once the peers have applied
// every event it issued, wipes their stores, joins count new shards of dc
// (empty stores) from DC from, one after another, and starts them; it
// returns all with dc's sidecars replaced. Writes at the other DCs go on
// meanwhile.
func relayout(t *testing.T, all []*sidecar, dc string, count int, from string, w *writers) []*sidecar {
	t.Helper()
	leaving, rest, peers := splitDC(all, dc)
	drained(t, leaving, peers)
	dir := filepath.Dir(leaving[0].cfg.DataDir)
	url := leaving[0].url
	for _, s := range leaving {
		if err := s.n.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(s.cfg.DataDir); err != nil {
			t.Fatal(err)
		}
	}
	w.mu.Lock()
	before := slices.Clone(w.acked[from])
	w.mu.Unlock()
	var joined []*sidecar
	for i := range max(count, 1) {
		cfg := sidecarConfig(dir, dc, i, count)
		cfg.Complete()
		res := joinShard(t, cfg, url, from, peers[from], before)
		t.Logf("joined %s shard %q from %s: %d keys, %d chunks", dc, cfg.Shard, from, res.Keys, res.Chunks)
		w.waitMore(20, "writes between joins")
		joined = append(joined, startSidecar(t, cfg, url, node.Options{}))
	}
	staleConsumers(t, url, dc, count)
	return append(joined, rest...)
}

// staleConsumers fails the test if dc keeps a durable consumer on another
// DC's stream made for another shard layout than count shards: join
// deletes those, which would otherwise hold their messages for ever.
func staleConsumers(t *testing.T, url, dc string, count int) {
	t.Helper()
	js := testutil.JetStream(t, url)
	for _, up := range dcs {
		if up == dc {
			continue
		}
		st, err := js.Stream(context.Background(), names.Stream(up))
		if err != nil {
			t.Fatal(err)
		}
		lister := st.ConsumerNames(context.Background())
		for name := range lister.Name() {
			rest, ok := strings.CutPrefix(name, names.Consumer(dc, up))
			if !ok || strings.HasSuffix(rest, "_heal") {
				continue
			}
			ok = rest == "" && count < 2 || strings.HasPrefix(rest, "_shard") && strings.HasSuffix(rest, fmt.Sprintf("of%d", count)) && count > 1
			if !ok {
				t.Errorf("%s keeps the consumer %s on %s, of another shard layout than %d shards", dc, name, names.Stream(up), count)
			}
		}
	}
}

// TestShardJoin (invariant 16; README "Changing a DC's shard count"):
// dc3's shard count changes while the other DCs keep writing: its writes
// stop, its outboxes drain, its sidecars stop, and new shards with empty
// stores each join from a peer DC and start. From 3 shards to 2 joined
// from dc2 (one sidecar); from 3 to 2 to 1 joined from dc1, which runs 3
// shards (each partition gathered from its owner); from 1 to 2 to 3
// joined from dc2. Each join takes only the shard's partitions, with the
// peer's applied vector for them; afterwards every DC's whole digest
// agrees and every acknowledged write is there.
func TestShardJoin(t *testing.T) {
	for _, tc := range []struct {
		name  string
		from  string
		first int   // dc3's shard count at the start
		steps []int // dc3's shard counts, one relayout each
	}{
		{"3 to 2 shards from a peer of one sidecar", "dc2", 3, []int{2}},
		{"3 to 2 shards to 1 from a peer of 3 shards", "dc1", 3, []int{2, 1}},
		{"1 to 2 to 3 shards from a peer of one sidecar", "dc2", 1, []int{2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, all := mesh(t, map[string]int{"dc1": 3, "dc3": tc.first})
			w := &writers{t: t, stop: make(chan struct{}), acked: map[string][]string{}}
			defer func() { w.halt() }()
			byDC := func(dc string) []*sidecar { return ofDC(all, dc) }
			w.write(byDC("dc1"))
			w.write(byDC("dc2"))
			w.write(byDC("dc3"))
			w.waitMore(60, "writes before the join")
			for _, count := range tc.steps {
				// dc3's writer must stop first: its sidecars go away.
				w.halt()
				w = &writers{t: t, stop: make(chan struct{}), acked: w.acked}
				w.write(byDC("dc1"))
				w.write(byDC("dc2"))
				all = relayout(t, all, "dc3", count, tc.from, w)
				w.write(byDC("dc3"))
				w.waitMore(60, "writes after the join")
			}
			w.halt()
			w = &writers{t: t, stop: make(chan struct{}), acked: w.acked}
			// The keys are unique and never deleted: every DC holding as
			// many keys as writes were acknowledged, with equal digests,
			// holds every acknowledged write.
			converged(t, all, w.count(""))
			for _, k := range []string{w.acked["dc1"][0], w.acked["dc2"][len(w.acked["dc2"])-1], w.acked["dc3"][0]} {
				for _, dc := range dcs {
					if code, _, b := do(t, http.MethodGet, byDC(dc)[0].base+"/v1/kv/"+k, nil); code != http.StatusOK {
						t.Fatalf("acknowledged %s is not at %s: %d %s", k, dc, code, b)
					}
				}
			}
			t.Logf("%d acknowledged writes, all at every DC", w.count(""))
		})
	}
}
