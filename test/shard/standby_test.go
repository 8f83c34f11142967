package shard_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

// starDCs are the DCs of the standby tests' star: hub dc1, standby hub
// dc2, leaves dc3 and dc4.
var starDCs = []string{"dc1", "dc2", "dc3", "dc4"}

// healStar is the star the standby tests use: hub dc1 on 2 shards, its
// standby dc2 on 2 or 3, leaf dc3 on one sidecar and leaf dc4 on 2,
// heal_after 3s (as the ring's heal tests).
type healStar struct {
	url                    string
	all                    []*sidecar
	hub, standby, dc3, dc4 []*sidecar
	// down holds the sidecars stopped.
	down map[*sidecar]bool
	// keys counts the keys written so far.
	keys int
}

// startHealStar starts the star, the standby on standbyShards shards,
// and writes through every sidecar, converged.
func startHealStar(t *testing.T, standbyShards int) *healStar {
	t.Helper()
	ns, all := deploy(t, layout{topology: config.Star, dcs: starDCs, hub: "dc1", standby: "dc2",
		shards: map[string]int{"dc1": 2, "dc2": standbyShards, "dc4": 2}, healAfter: 3 * time.Second})
	h := &healStar{url: ns.ClientURL(), all: all, hub: shardsOf(all, "dc1"), standby: shardsOf(all, "dc2"),
		dc3: shardsOf(all, "dc3"), dc4: shardsOf(all, "dc4"), down: map[*sidecar]bool{}}
	h.writeLive(t, "before", 4)
	converged(t, all, h.keys)
	return h
}

// stop stops sidecars, as shards going away.
func (h *healStar) stop(t *testing.T, ss ...*sidecar) {
	t.Helper()
	for _, s := range ss {
		s.stop(t)
		h.down[s] = true
	}
}

// start starts stopped sidecars again.
func (h *healStar) start(t *testing.T, ss ...*sidecar) {
	t.Helper()
	for _, s := range ss {
		s.start(t)
		delete(h.down, s)
	}
}

// live returns the sidecars running.
func (h *healStar) live() []*sidecar {
	var out []*sidecar
	for _, s := range h.all {
		if !h.down[s] {
			out = append(out, s)
		}
	}
	return out
}

// owns reports whether s owns key's partition.
func owns(s *sidecar, key string) bool {
	return slices.Contains(s.cfg.OwnedPartitions(), event.PartitionOf(key, partitions))
}

// serves reports whether the shard of dc owning key runs.
func (h *healStar) serves(dc, key string) bool {
	for _, s := range shardsOf(h.all, dc) {
		if owns(s, key) {
			return !h.down[s]
		}
	}
	return false
}

// writeLive writes n keys through every running sidecar, each one a key
// its DC's running shards own (most of them owned by another shard than
// the one taking the write), and returns them.
func (h *healStar) writeLive(t *testing.T, round string, n int) []string {
	t.Helper()
	var out []string
	for i, s := range h.all {
		if h.down[s] {
			continue
		}
		var ks []string
		for j := 0; len(ks) < n; j++ {
			if k := fmt.Sprintf("%s/%d/%d", round, i, j); h.serves(s.dc, k) {
				ks = append(ks, k)
			}
		}
		putAll(t, s, ks)
		out = append(out, ks...)
	}
	h.keys += len(out)
	return out
}

// arrivedAt waits up to timeout until every sidecar of at holds each key
// of keys in its partitions, and logs how long that took.
func arrivedAt(t *testing.T, at []*sidecar, keys []string, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	var who []string
	for _, s := range at {
		who = append(who, s.name)
	}
	what := fmt.Sprintf("%d keys to reach %s", len(keys), strings.Join(who, ", "))
	cluster.EventuallyEvery(t, timeout, 20*time.Millisecond, what, func() (bool, string) {
		for _, s := range at {
			for _, k := range keys {
				if !owns(s, k) {
					continue
				}
				if _, ok, err := s.n.Store().Get(k); err != nil || !ok {
					return false, fmt.Sprintf("%s lacks %s (err %v); %s", s.name, k, err, behind(at))
				}
			}
		}
		return true, ""
	})
	t.Logf("%s in %s", what, time.Since(start).Round(time.Millisecond))
}

// healConsumersGone waits until no stream holds a heal consumer.
func healConsumersGone(t *testing.T, url string) {
	t.Helper()
	js := testutil.JetStream(t, url)
	cluster.EventuallyEvery(t, 20*time.Second, 100*time.Millisecond, "every heal consumer deleted", func() (bool, string) {
		var left []string
		for _, dc := range starDCs {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			s, err := js.Stream(ctx, names.Stream(dc))
			if err != nil {
				cancel()
				return false, fmt.Sprintf("stream %s: %v", names.Stream(dc), err)
			}
			lister := s.ConsumerNames(ctx)
			for name := range lister.Name() {
				if strings.HasSuffix(name, "_heal") {
					left = append(left, names.Stream(dc)+"/"+name)
				}
			}
			err = lister.Err()
			cancel()
			if err != nil {
				return false, fmt.Sprintf("consumers of %s: %v", names.Stream(dc), err)
			}
		}
		return len(left) == 0, fmt.Sprintf("heal consumers left: %v", left)
	})
}

// viaLeaves is what a standby shard heals around: the hub, through every
// leaf's stream.
var viaLeaves = []bridge.Bypass{{Dead: "dc1", Via: "dc3"}, {Dead: "dc1", Via: "dc4"}}

// viaStandby is what a leaf heals around: the hub, through the standby's
// stream.
var viaStandby = []bridge.Bypass{{Dead: "dc1", Via: "dc2"}}

// stopHub stops both hub shards and waits until every standby shard heals
// around the hub through both leaves, and every leaf sidecar through the
// standby.
func (h *healStar) stopHub(t *testing.T) {
	t.Helper()
	h.stop(t, h.hub...)
	for _, s := range h.standby {
		healsAs(t, s, viaLeaves, 15*time.Second)
	}
	for _, s := range append(slices.Clone(h.dc3), h.dc4...) {
		healsAs(t, s, viaStandby, 15*time.Second)
	}
}

// handBack starts the stopped hub shards hub again and waits until no
// sidecar heals and no heal consumer is left; then it writes through
// every sidecar and waits until every DC converges with every acked
// write.
func (h *healStar) handBack(t *testing.T, hub ...*sidecar) {
	t.Helper()
	h.start(t, hub...)
	for _, s := range h.all {
		healsAs(t, s, nil, 30*time.Second)
	}
	healConsumersGone(t, h.url)
	h.writeLive(t, "after", 4)
	converged(t, h.all, h.keys)
}

// TestShardStandbyHubOneShard (invariant 16): in a star of hub dc1 (2
// shards), standby dc2 (3 shards), leaves dc3 (1) and dc4 (2), the hub's
// shard 1 stops. The sidecars owning some of its (odd) partitions see the
// hub fall silent and heal around it: every standby shard (3 does not
// divide 2, so each owns odd partitions) consumes both leaves and relays,
// dc3 and dc4's shard 1 consume the standby; dc4's shard 0 (even
// partitions, owned by the hub's live shard) keeps the static wiring.
// Writes at dc4 while the hub's shard is silent but nobody heals yet are
// read by the standby's heal links (each starts at the lowest ack floor
// of the hub's shards' consumers reading its partitions). Writes at
// every live shard keep reaching every live shard, in the partitions the
// hub's stopped shard owns too, before the catch-up from the origin could
// bring them. Transactions spanning the hub's shards then hold up, at the
// hub's live shard, their origin's later events in their partitions; the
// sidecars out of the hub reach them all the same (dc4's shard 0 only
// through the catch-up) and never show part of one. When the hub's shard
// returns the heal is handed back, the heal consumers deleted, and every
// DC converges with every acked write.
func TestShardStandbyHubOneShard(t *testing.T) {
	h := startHealStar(t, 3)
	h.stop(t, h.hub[1])
	// Writes at dc4 in every partition while the hub's shard is silent
	// and nobody heals yet: those in its partitions reach nobody.
	silent := ownedKeys("silent", 0, 1, 16)
	putAll(t, h.dc4[0], silent)
	h.keys += len(silent)
	for _, s := range h.standby {
		if got := healing(s); len(got) != 0 {
			t.Fatalf("%s heals around %v already: the writes took longer than heal_after", s.name, got)
		}
	}
	for _, s := range h.standby {
		healsAs(t, s, viaLeaves, 15*time.Second)
	}
	// Each standby shard's heal link on dc4's stream starts below them:
	// at the lowest ack floor of the hub's consumers reading any of its
	// partitions, which is the stopped shard's (the live shard's is past
	// them), so it reads every one in its partitions.
	for _, s := range h.standby {
		want := 0
		for _, k := range silent {
			if owns(s, k) && owns(h.hub[1], k) {
				want++
			}
		}
		cluster.EventuallyEvery(t, 10*time.Second, 20*time.Millisecond, s.name+"'s heal link on dc4's stream to read the writes made while the hub's shard was silent", func() (bool, string) {
			l := s.n.Replicator().Stats().Links["dc4"]
			return l.Heal && l.Received >= uint64(want), fmt.Sprintf("it received %d events (heal %v), want at least %d", l.Received, l.Heal, want)
		})
	}
	healsAs(t, h.dc3[0], viaStandby, 15*time.Second)
	healsAs(t, h.dc4[1], viaStandby, 15*time.Second)
	if got := healing(h.dc4[0]); len(got) != 0 {
		t.Fatalf("dc4's shard 0 heals around %v, but the hub's shard owning its partitions runs", got)
	}
	cluster.EventuallyEvery(t, 10*time.Second, 20*time.Millisecond, "dc4's shard 1 to show dc1 unreachable, shard 0 alive", func() (bool, string) {
		one, zero := peerState(h.dc4[1], "dc1"), peerState(h.dc4[0], "dc1")
		return one == "unreachable" && zero == "alive", fmt.Sprintf("shard 1 shows %s, shard 0 %s", one, zero)
	})

	down := h.writeLive(t, "down", 8)
	arrivedAt(t, h.live(), down, viaHeal)
	// Transactions at the standby and the leaves, spanning the shards of
	// every other DC and so the hub's stopped shard: the hub's live shard
	// prepares its part and holds it, with every later event of the same
	// origin in those partitions, until its sibling returns. The standby
	// relays them to the leaves' healing shards; dc4's shard 0, which
	// still takes the hub as alive, gets them (and what they hold up)
	// only from the catch-up from the origin, after RepairAfter. Readers
	// never see part of one.
	var notHub []*sidecar
	for _, s := range h.live() {
		if s.dc != "dc1" {
			notHub = append(notHub, s)
		}
	}
	keys, txns := load(t, notHub, "txn", 0, 4)
	h.keys += keys
	stop := watchTxns(t, h.all, []string{"dc2", "dc3", "dc4"}, txns)
	held := h.writeLive(t, "held", 4)
	for _, ks := range txns {
		held = append(held, ks...)
	}
	arrivedAt(t, notHub, held, 30*time.Second)
	stop()
	if got := healing(h.dc4[0]); len(got) != 0 {
		t.Fatalf("dc4's shard 0 heals around %v, but the hub's shard owning its partitions runs", got)
	}

	h.handBack(t, h.hub[1])
}

// TestShardStandbyHubWholeHub (invariant 16): the whole hub (both its
// shards) stops in the same star: every standby shard heals through both
// leaves, every leaf sidecar through the standby, and writes at every
// live shard reach every live shard (leaf to standby to leaf) before the
// catch-up could bring them, transactions spanning the receivers' shards
// among them, never seen in part. When the hub returns every sidecar
// hands back, the heal consumers are deleted, every DC converges with
// every acked write, and each transaction is whole and once in each
// stream: the standby relayed it whole, once.
func TestShardStandbyHubWholeHub(t *testing.T) {
	h := startHealStar(t, 3)
	h.stopHub(t)
	// Single writes at every live shard, and transactions at every live
	// DC whose keys span the other DCs' shards, while readers watch for
	// part of a transaction.
	down := h.writeLive(t, "down", 8)
	keys, txns := load(t, h.live(), "txn", 0, 4)
	h.keys += keys
	stop := watchTxns(t, h.all, []string{"dc2", "dc3", "dc4"}, txns)
	for _, ks := range txns {
		down = append(down, ks...)
	}
	arrivedAt(t, h.live(), down, viaHeal)
	stop()

	h.handBack(t, h.hub...)
	// Each transaction is whole and once in each stream holding it: its
	// origin's, the standby's when it relayed a leaf's, and the hub's,
	// which forwards it once back.
	txnsWhole(t, h.url, starDCs, len(txns), func(origin string) int {
		if origin == "dc2" {
			return 2
		}
		return 3
	})
}

// TestShardStandbyHubAndStandbyShard (invariant 16): with the hub down
// and the star healed around it (standby dc2 on 2 shards, the same layout
// as dc4), the standby's shard 1 stops too. Each leaf sidecar owning some
// of its (odd) partitions now sees the standby silent as well and has
// nobody to heal through (dc3 and dc4's shard 1 drop their heal links);
// dc4's shard 0, whose partitions the standby's shard 0 owns, keeps
// healing through it, and that shard keeps relaying: writes in the even
// partitions reach dc4's shard 0 and the standby's shard 0 through the
// heal links. Nothing else carries events between the leaves but the
// catch-up from the origin. Once the standby's shard returns the leaves
// heal through it again; once the hub returns every sidecar hands back,
// and every DC converges with every acked write.
func TestShardStandbyHubAndStandbyShard(t *testing.T) {
	h := startHealStar(t, 2)
	h.stopHub(t)
	h.stop(t, h.standby[1])
	healsAs(t, h.dc3[0], nil, 15*time.Second)
	healsAs(t, h.dc4[1], nil, 15*time.Second)
	if got := healing(h.dc4[0]); !slices.Equal(got, viaStandby) {
		t.Fatalf("dc4's shard 0 heals around %v, want %v: the standby's shard owning its partitions runs", got, viaStandby)
	}
	if got := healing(h.standby[0]); !slices.Equal(got, viaLeaves) {
		t.Fatalf("the standby's shard 0 heals around %v, want %v", got, viaLeaves)
	}

	down := h.writeLive(t, "down", 8)
	var even []string
	for _, k := range down {
		if owns(h.dc4[0], k) {
			even = append(even, k)
		}
	}
	arrivedAt(t, []*sidecar{h.standby[0], h.dc4[0]}, even, viaHeal)
	// The rest, between the leaves and in the standby's stopped shard's
	// partitions, is left to the catch-up from the origin (RepairAfter,
	// 5s, after a partition stops moving).
	arrivedAt(t, h.live(), down, 30*time.Second)

	h.start(t, h.standby[1])
	for _, s := range append(slices.Clone(h.dc3), h.dc4...) {
		healsAs(t, s, viaStandby, 30*time.Second)
	}
	h.handBack(t, h.hub...)
}
