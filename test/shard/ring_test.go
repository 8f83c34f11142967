package shard_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/node"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

// layout is a deployment deploy starts: its topology and DCs (the ring's
// order), the star's hub and standby hub, how many sidecars each DC runs
// (1 when absent) and heal_after (0: the default).
type layout struct {
	topology     string
	dcs          []string
	hub, standby string
	shards       map[string]int
	healAfter    time.Duration
}

// deploy starts l's DCs on one embedded NATS server, in l.dcs order, each
// DC's shards in order; the sidecars come back in the same order.
func deploy(t *testing.T, l layout) (*server.Server, []*sidecar) {
	t.Helper()
	ns, dir := startNATS(t)
	var out []*sidecar
	for _, dc := range l.dcs {
		for i := range max(l.shards[dc], 1) {
			cfg := sidecarConfig(dir, dc, i, l.shards[dc])
			cfg.DCs, cfg.Topology, cfg.Hub, cfg.StandbyHub = l.dcs, l.topology, l.hub, l.standby
			if l.healAfter > 0 {
				cfg.HealAfter = config.Duration(l.healAfter)
			}
			cfg.Complete()
			out = append(out, startSidecar(t, cfg, ns.ClientURL(), node.Options{}))
		}
	}
	return ns, out
}

// stop closes the sidecar, as a shard or DC going away.
func (s *sidecar) stop(t *testing.T) {
	t.Helper()
	if err := s.n.Close(); err != nil {
		t.Fatal(err)
	}
}

// start starts the sidecar again on its config, after stop.
func (s *sidecar) start(t *testing.T) {
	t.Helper()
	*s = *startSidecar(t, s.cfg, s.url, s.opts)
}

// txnOps is the number of ops of every transaction these tests write.
const txnOps = 6

// ownedKeys returns n keys under prefix that shard i of a DC of count
// shards owns (every key when count is 1).
func ownedKeys(prefix string, i, count, n int) []string {
	var out []string
	for j := 0; len(out) < n; j++ {
		if k := fmt.Sprintf("%s/%d", prefix, j); count < 2 || owner(k, count) == i {
			out = append(out, k)
		}
	}
	return out
}

// shardsOf returns dc's sidecars, in shard order.
func shardsOf(all []*sidecar, dc string) []*sidecar {
	var out []*sidecar
	for _, s := range all {
		if s.dc == dc {
			out = append(out, s)
		}
	}
	return out
}

// load writes at every sidecar at once: perSidecar single keys through
// each, most of them owned by another shard, and txnsPerDC transactions
// of txnOps keys through each DC's sidecars in turn, each transaction's
// keys owned by one shard of its DC (a transaction never spans its
// origin's shards) but spread over the partitions of the other DCs'
// shards. It returns the keys every acked write made, the transactions'
// keys by transaction.
func load(t *testing.T, all []*sidecar, round string, perSidecar, txnsPerDC int) (keys int, txns [][]string) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 20 * time.Second}
	post := func(s *sidecar, method, path string, body []byte) error {
		req, err := http.NewRequest(method, s.base+path, strings.NewReader(string(body)))
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s %s at %s: %d %s", method, path, s.name, resp.StatusCode, b)
		}
		return nil
	}
	for i, s := range all {
		wg.Go(func() {
			for j := range perSidecar {
				key := fmt.Sprintf("%s/w/%d/%d", round, i, j)
				if err := post(s, http.MethodPut, "/v1/kv/"+key, []byte("v-"+key)); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				keys++
				mu.Unlock()
			}
		})
	}
	dcs := map[string]bool{}
	for _, s := range all {
		if dcs[s.dc] {
			continue
		}
		dcs[s.dc] = true
		shards := shardsOf(all, s.dc)
		wg.Go(func() {
			for j := range txnsPerDC {
				ks := ownedKeys(fmt.Sprintf("%s/t/%s/%d", round, s.dc, j), j%len(shards), len(shards), txnOps)
				via := shards[(j+1)%len(shards)]
				if err := post(via, http.MethodPost, "/v1/txn", txnBody(ks)); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				keys += len(ks)
				txns = append(txns, ks)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return keys, txns
}

// watchTxns reads, until stop closes, the keys of each transaction of
// txns one after another through the sidecars of the DCs in dcs, in
// turn, and reports a transaction one of whose keys showed and a later
// one did not: part of it was visible.
func watchTxns(t *testing.T, all []*sidecar, dcs []string, txns [][]string) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	for r, dc := range dcs {
		shards := shardsOf(all, dc)
		wg.Go(func() {
			client := &http.Client{Timeout: 10 * time.Second}
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				ks := txns[(n*7+r)%len(txns)]
				seen := ""
				for j, k := range ks {
					s := shards[(n+j)%len(shards)]
					resp, err := client.Get(s.base + "/v1/kv/" + k)
					if err != nil {
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch {
					case resp.StatusCode == http.StatusOK && seen == "":
						seen = k
					case resp.StatusCode == http.StatusNotFound && seen != "":
						t.Errorf("part of a transaction was visible at %s: %s showed, then %s (through %s) did not", dc, seen, k, s.name)
						return
					}
				}
			}
		})
	}
	return func() { close(done); wg.Wait() }
}

// streamTxns reads every transaction message of dc's stream and returns
// them by the first op's dot, each with its op count per copy.
func streamTxns(t *testing.T, js jetstream.JetStream, dc string) map[string][]int {
	t.Helper()
	out := map[string][]int{}
	readStream(t, js, dc, []string{names.TxnSubject(dc), names.ShardTxnWildcard(dc)}, func(m jetstream.Msg) {
		evs, err := event.DecodeMessage(m.Data(), event.Limits{})
		if err != nil {
			t.Fatalf("a transaction message on %s: %v", m.Subject(), err)
		}
		id := fmt.Sprintf("%s:%d:%d", evs[0].Origin, evs[0].Partition, evs[0].Seq)
		out[id] = append(out[id], len(evs))
	})
	return out
}

// readStream calls fn with every message of dc's stream on the subjects
// filter (nil: all), in order.
func readStream(t *testing.T, js jetstream.JetStream, dc string, filter []string, fn func(jetstream.Msg)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, names.Stream(dc))
	if err != nil {
		t.Fatal(err)
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: filter})
	if err != nil {
		t.Fatal(err)
	}
	for {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(300*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			fn(m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
}

// txnsWhole waits until every DC's stream holds each transaction at most
// once and whole (txnOps ops), and each in as many streams as want says
// for its origin: a DC forwards a transaction whole and once, whichever
// of its shards applies which ops.
func txnsWhole(t *testing.T, url string, dcs []string, count int, want func(origin string) int) {
	t.Helper()
	js := testutil.JetStream(t, url)
	cluster.EventuallyEvery(t, 20*time.Second, 200*time.Millisecond, "every transaction in the streams whole and once per DC", func() (bool, string) {
		streams := map[string]int{}
		for _, dc := range dcs {
			for id, copies := range streamTxns(t, js, dc) {
				if len(copies) != 1 || copies[0] != txnOps {
					t.Fatalf("stream %s holds transaction %s as %v ops per copy, want one copy of %d", names.Stream(dc), id, copies, txnOps)
				}
				streams[id]++
			}
		}
		if len(streams) != count {
			return false, fmt.Sprintf("%d transactions in the streams, want %d", len(streams), count)
		}
		for id, n := range streams {
			origin, _, _ := strings.Cut(id, ":")
			if n != want(origin) {
				return false, fmt.Sprintf("transaction %s is in %d streams, want %d", id, n, want(origin))
			}
		}
		return true, ""
	})
}

// TestShardedRing (invariants 7, 11 and 16): a ring of 4 DCs running 2, 3,
// 1 and 4 shards takes writes at every shard at once, and transactions at
// every DC whose keys span the other DCs' shards, while readers at every
// DC watch for part of a transaction. Every DC's whole digest converges,
// no transaction is ever seen in part, and each is in the stream of each
// DC that forwards it (all but the origin's predecessor) exactly once and
// whole: the owner of its first op's partition forwards it, once every
// shard has applied it.
func TestShardedRing(t *testing.T) {
	dcs := []string{"dc1", "dc2", "dc3", "dc4"}
	ns, all := deploy(t, layout{topology: config.Ring, dcs: dcs, shards: map[string]int{"dc1": 2, "dc2": 3, "dc4": 4}})
	keys, txns := load(t, all, "a", 10, 4)
	stop := watchTxns(t, all, dcs, txns)
	more, txns2 := load(t, all, "b", 10, 4)
	// Every transaction of the other DCs spans dc4's 4 shards; each
	// applies only once every owning shard, reading dc3's stream on its
	// own link, has prepared it, and one not ready is offered again
	// after GapDelay (a batch waiting at most 2s for the others). That
	// took 9-12s plain and 15-27s under -race with debug logs on this
	// loaded 2-core machine; before a link's gap repairs stopped waiting
	// at each partition (Repairer.AskOnce) a 30s budget failed about one
	// run in four.
	convergedWithin(t, all, keys+more, 60*time.Second)
	stop()
	txnsWhole(t, ns.ClientURL(), dcs, len(txns)+len(txns2), func(string) int { return len(dcs) - 1 })
}

// TestShardedStar: a star whose hub runs 3 shards, with leaves of 2 and 1
// shards, converges under writes at every shard, and the hub forwards
// each leaf's transaction whole and once.
func TestShardedStar(t *testing.T) {
	dcs := []string{"hub", "dc2", "dc3"}
	ns, all := deploy(t, layout{topology: config.Star, dcs: dcs, hub: "hub", shards: map[string]int{"hub": 3, "dc2": 2}})
	keys, txns := load(t, all, "a", 10, 4)
	stop := watchTxns(t, all, dcs, txns)
	more, txns2 := load(t, all, "b", 10, 4)
	converged(t, all, keys+more)
	stop()
	txnsWhole(t, ns.ClientURL(), dcs, len(txns)+len(txns2), func(origin string) int {
		if origin == "hub" {
			return 1
		}
		return 2
	})
}

// healing returns what a sidecar heals around, as "dead via via".
func healing(s *sidecar) []bridge.Bypass {
	if s.n.Replicator() == nil {
		return nil
	}
	return s.n.Replicator().Healing()
}

// peerState is how s's status shows peer dc ("alive", "unreachable", ...).
func peerState(s *sidecar, dc string) string {
	for _, p := range s.n.Replicator().Peers() {
		if p.DC == dc {
			return p.State
		}
	}
	return "missing"
}

// healRing is the 4-DC ring the heal tests use: dc2 and dc3 run 2 shards
// each (the same layout), dc1 and dc4 one sidecar, heal_after 3s (2s
// took live shards for dead under -race on a busy machine).
type healRing struct {
	all      []*sidecar
	dc1, dc4 *sidecar
	dc2, dc3 []*sidecar
	// keys counts the keys written so far.
	keys int
}

// startHealRing starts the ring and writes 20 keys at dc1, converged.
func startHealRing(t *testing.T) *healRing {
	t.Helper()
	_, all := deploy(t, layout{topology: config.Ring, dcs: []string{"dc1", "dc2", "dc3", "dc4"},
		shards: map[string]int{"dc2": 2, "dc3": 2}, healAfter: 3 * time.Second})
	r := &healRing{all: all, dc1: all[0], dc2: shardsOf(all, "dc2"), dc3: shardsOf(all, "dc3"), dc4: all[5]}
	r.put(t, r.dc1, ownedKeys("before", 0, 1, 20))
	converged(t, all, r.keys)
	return r
}

// put writes keys at s and counts them.
func (r *healRing) put(t *testing.T, s *sidecar, keys []string) {
	t.Helper()
	putAll(t, s, keys)
	r.keys += len(keys)
}

// putAll writes keys through s, failing the test on any write not acked.
func putAll(t *testing.T, s *sidecar, keys []string) {
	t.Helper()
	for _, k := range keys {
		if code, _, b := do(t, http.MethodPut, s.base+"/v1/kv/"+k, []byte("v-"+k)); code != http.StatusOK {
			t.Fatalf("PUT %s at %s: %d %s", k, s.name, code, b)
		}
	}
}

// viaHeal bounds how long writes take to arrive through a heal link: less
// than RepairAfter (5s), after which the catch-up from the origin would
// bring them without any healing.
const viaHeal = 4 * time.Second

// arrived waits until every key reads back through s.
func arrived(t *testing.T, s *sidecar, keys []string, timeout time.Duration) {
	t.Helper()
	cluster.EventuallyEvery(t, timeout, 50*time.Millisecond, fmt.Sprintf("%d keys at %s", len(keys), s.name), func() (bool, string) {
		for _, k := range keys {
			if code, _, b := do(t, http.MethodGet, s.base+"/v1/kv/"+k, nil); code != http.StatusOK {
				return false, fmt.Sprintf("GET %s: %d %s", k, code, b)
			}
		}
		return true, ""
	})
}

// healsAs waits until s heals around exactly want ("dead via via", none
// when empty).
func healsAs(t *testing.T, s *sidecar, want []bridge.Bypass, timeout time.Duration) {
	t.Helper()
	cluster.EventuallyEvery(t, timeout, 20*time.Millisecond, fmt.Sprintf("%s to heal around %v", s.name, want), func() (bool, string) {
		got := healing(s)
		return slices.Equal(got, want), fmt.Sprintf("it heals around %v", got)
	})
}

// TestShardHealOneShard (invariant 16): in the ring dc1 → dc2 → dc3 →
// dc4 → dc1, with dc2 and dc3 of 2 shards each, shard 1 of dc2 stops
// (dc2's shard 0 runs on). Only dc3's shard 1, which owns the same
// partitions, sees dc2 fall silent and heals around it through dc1's
// stream (filtered to its partitions), so writes at dc1 in those
// partitions keep reaching dc3 and dc4; dc3's shard 0 keeps the static
// wiring. When dc2's shard returns, dc3's shard 1 hands back, and every
// DC converges with every acked write.
func TestShardHealOneShard(t *testing.T) {
	r := startHealRing(t)
	r.dc2[1].stop(t)
	viaDC1 := []bridge.Bypass{{Dead: "dc2", Via: "dc1"}}
	healsAs(t, r.dc3[1], viaDC1, 15*time.Second)
	if got := healing(r.dc3[0]); len(got) != 0 {
		t.Fatalf("dc3's shard 0 heals around %v, but dc2's shard owning its partitions runs", got)
	}
	// Each of dc3's shards shows dc2 as the reports on its partitions do.
	cluster.EventuallyEvery(t, 10*time.Second, 20*time.Millisecond, "dc3's shard 1 to show dc2 unreachable, shard 0 alive", func() (bool, string) {
		one, zero := peerState(r.dc3[1], "dc2"), peerState(r.dc3[0], "dc2")
		return one == "unreachable" && zero == "alive", fmt.Sprintf("shard 1 shows %s, shard 0 %s", one, zero)
	})
	// Writes at dc1 in the stopped shard's partitions and in the other's.
	down := append(ownedKeys("down/1", 1, 2, 10), ownedKeys("down/0", 0, 2, 10)...)
	r.put(t, r.dc1, down)
	arrived(t, r.dc3[0], down, viaHeal)
	arrived(t, r.dc4, down, viaHeal)
	if got := healing(r.dc3[0]); len(got) != 0 {
		t.Fatalf("dc3's shard 0 heals around %v, but dc2's shard owning its partitions runs", got)
	}

	r.dc2[1].start(t)
	healsAs(t, r.dc3[1], nil, 30*time.Second)
	r.put(t, r.dc1, ownedKeys("after", 0, 1, 20))
	r.put(t, r.dc4, ownedKeys("after4", 0, 1, 10))
	converged(t, r.all, r.keys)
}

// TestShardHealWholeDC: the whole of dc2 (both shards) stops in the same
// ring: both of dc3's shards heal around it through dc1, writes at dc1
// keep reaching dc3 and dc4, and once dc2 returns both hand back and
// every DC converges with every acked write.
func TestShardHealWholeDC(t *testing.T) {
	r := startHealRing(t)
	r.dc2[0].stop(t)
	r.dc2[1].stop(t)
	viaDC1 := []bridge.Bypass{{Dead: "dc2", Via: "dc1"}}
	healsAs(t, r.dc3[0], viaDC1, 15*time.Second)
	healsAs(t, r.dc3[1], viaDC1, 15*time.Second)
	down := ownedKeys("down", 0, 1, 20)
	r.put(t, r.dc1, down)
	arrived(t, r.dc3[1], down, viaHeal)
	arrived(t, r.dc4, down, viaHeal)

	r.dc2[0].start(t)
	r.dc2[1].start(t)
	healsAs(t, r.dc3[0], nil, 30*time.Second)
	healsAs(t, r.dc3[1], nil, 30*time.Second)
	r.put(t, r.dc1, ownedKeys("after", 0, 1, 20))
	converged(t, r.all, r.keys)
}
