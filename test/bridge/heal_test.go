package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/names"
)

// healAfter is the heal_after of the healing tests: ten report intervals
// of the test cluster.
const healAfter = time.Second

// healing returns a tune function that turns healing on, with standby as
// the star's standby hub ("" for none). The catch-up from the origin
// (RepairAfter) is pushed out of the test's reach: it also fetches, slowly,
// the events a dead DC no longer forwards, and would hide whether the heal
// links carry them. Gap repair still runs.
func healing(standby string) func(*bridge.Options) {
	return func(o *bridge.Options) {
		o.HealAfter = healAfter
		o.StandbyHub = standby
		o.RepairAfter = time.Hour
	}
}

// healRun is a healing scenario: a cluster, the writes each DC made, and
// each DC's own sequences at the moment it was killed.
type healRun struct {
	*bridgeCluster
	written map[string]int
	ownAt   map[string][]uint64
}

func newHealRun(t *testing.T, topo string, n int, tune func(*bridge.Options)) *healRun {
	return &healRun{bridgeCluster: newCluster(t, topo, n, tune).start(), written: map[string]int{}, ownAt: map[string][]uint64{}}
}

// writes has each DC in dcs write keys×rounds values at once.
func (h *healRun) writes(dcs []string, keys, rounds int) {
	h.t.Helper()
	n := h.writeConcurrently(dcs, keys, rounds)
	for _, dc := range dcs {
		h.written[dc] += n
	}
}

// kill closes a DC's Replicator and store for good, as a crashed sidecar
// whose stream stays on the NATS server. Close flushes the outbox; the
// DC's own sequences are recorded so the others can be checked against
// what it published.
func (h *healRun) kill(dc string) {
	h.t.Helper()
	st := h.store(dc)
	// The test is about what the others do with what the DC published: let
	// its outbox drain first, rather than count on Close's bounded flush.
	cluster.Eventually(h.t, 20*time.Second, dc+"'s outbox to drain", func() (bool, string) {
		return st.OutboxDepth() == 0, fmt.Sprintf("%d events to publish", st.OutboxDepth())
	})
	h.stopRep(dc)
	if d := st.OutboxDepth(); d > 0 {
		h.t.Logf("%s died with %d events unpublished; they come when it returns", dc, d)
	}
	h.ownAt[dc] = slices.Clone(st.Applied()[dc])
	h.stop(dc)
}

// revive opens a killed DC again on the same data dir.
func (h *healRun) revive(dc string) {
	h.t.Helper()
	h.openStore(dc)
	h.startRep(dc)
	delete(h.ownAt, dc)
}

// live returns the DCs not killed.
func (h *healRun) live() []string {
	var out []string
	for _, dc := range h.dcs {
		if _, dead := h.ownAt[dc]; !dead {
			out = append(out, dc)
		}
	}
	return out
}

// waitLiveConverged waits until every live DC has applied every other live
// DC's events and every event the dead DCs had published, and checks that
// the live DCs' digests are equal.
func (h *healRun) waitLiveConverged(timeout time.Duration) {
	h.t.Helper()
	live := h.live()
	cluster.Eventually(h.t, timeout, fmt.Sprintf("convergence of %v with %v dead", live, slices.Sorted(maps.Keys(h.ownAt))), func() (bool, string) {
		own := map[string][]uint64{}
		for dc, row := range h.ownAt {
			own[dc] = row
		}
		for _, dc := range live {
			own[dc] = h.store(dc).Applied()[dc]
		}
		for _, dc := range live {
			st := h.store(dc)
			if d := st.OutboxDepth(); d > 0 {
				return false, fmt.Sprintf("%s has %d events to publish", dc, d)
			}
			a := st.Applied()
			for o, row := range own {
				for p, want := range row {
					var got uint64
					if r := a[o]; p < len(r) {
						got = r[p]
					}
					if got < want {
						return false, fmt.Sprintf("%s has applied %s's partition %d up to %d of %d; healing %v; stats %+v",
							dc, o, p, got, want, h.rep(dc).Healing(), h.stats(dc))
					}
				}
			}
		}
		var first string
		var lines []string
		equal := true
		for _, dc := range live {
			d, err := h.store(dc).Digest()
			if err != nil {
				return false, err.Error()
			}
			lines = append(lines, fmt.Sprintf("%s: %s", dc, d.Hex()[:16]))
			if first == "" {
				first = d.Hex()
			} else if d.Hex() != first {
				equal = false
			}
		}
		return equal, "digests " + strings.Join(lines, ", ")
	})
}

// waitHealing waits until dc's Replicator reports exactly want as its
// bypasses, and checks that its status and links show them.
func (h *healRun) waitHealing(dc string, want []bridge.Bypass) {
	h.t.Helper()
	cluster.Eventually(h.t, 20*time.Second, fmt.Sprintf("healing at %s to be %v", dc, want), func() (bool, string) {
		st := h.rep(dc).Status()
		if len(st.Healing) != len(want) || len(want) > 0 && !reflect.DeepEqual(st.Healing, want) {
			return false, fmt.Sprintf("healing %v, effective upstreams %v", st.Healing, st.EffectiveUpstreams)
		}
		ups := slices.Clone(st.Upstreams)
		for _, b := range want {
			ups = append(ups, b.Via)
		}
		slices.Sort(ups)
		if !slices.Equal(st.EffectiveUpstreams, ups) {
			return false, fmt.Sprintf("effective upstreams %v, want %v", st.EffectiveUpstreams, ups)
		}
		heal := 0
		for _, l := range st.Links {
			if l.Heal {
				heal++
				if l.Consumer != names.HealConsumer(dc, l.Upstream) {
					return false, fmt.Sprintf("heal link %+v", l)
				}
			}
		}
		return heal == len(want), fmt.Sprintf("%d heal links, want %d", heal, len(want))
	})
}

// waitHealConsumersGone waits until no heal consumer of dc is left on the
// server.
func (h *healRun) waitHealConsumersGone(dc string) {
	h.t.Helper()
	js := h.js(h.t)
	cluster.Eventually(h.t, 20*time.Second, "heal consumers deleted", func() (bool, string) {
		for _, up := range h.dcs {
			if up == dc {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := js.Consumer(ctx, names.Stream(up), names.HealConsumer(dc, up))
			cancel()
			if !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return false, fmt.Sprintf("consumer %s on %s: err %v", names.HealConsumer(dc, up), names.Stream(up), err)
			}
		}
		return true, ""
	})
}

// checkCounts checks that every DC applied each event of the others
// exactly once, that none was dead-lettered, and that loops came back only
// to where the topology and healing send them: loopy(dc) is the most loop
// drops DC dc may see.
func (h *healRun) checkCounts(loopy func(dc string) uint64) {
	h.t.Helper()
	total := 0
	for _, n := range h.written {
		total += n
	}
	want := map[string]uint64{}
	for _, dc := range h.dcs {
		want[dc] = uint64(total - h.written[dc])
	}
	h.checkAppliedOnce(want)
	for _, dc := range h.dcs {
		s := h.stats(dc)
		if s.DeadLetters != 0 {
			h.t.Errorf("%s dead-lettered %d messages", dc, s.DeadLetters)
		}
		if s.LoopsDropped > loopy(dc) {
			h.t.Errorf("%s dropped %d looping events, at most %d expected", dc, s.LoopsDropped, loopy(dc))
		}
		h.t.Logf("%s: wrote %d, published %d, changed %d, obsolete %d, duplicates %d, loops %d, gaps %d, repaired %d",
			dc, h.written[dc], s.Published, s.Applied, s.Obsolete, s.Duplicates, s.LoopsDropped, s.Gaps, s.RepairedEvents)
	}
}

// ringHeal kills the dead DCs of a ring of n while the others keep
// writing: the live DCs must converge through the heal links, including
// what the dead DCs had published; then it brings them back, and all must
// converge with every event applied exactly once and loops only at the
// DC that healed (its own events coming back over the heal links).
func ringHeal(t *testing.T, n int, dead []string, keys, rounds int) {
	h := newHealRun(t, "ring", n, healing(""))
	h.writes(h.dcs, keys, rounds)
	for _, dc := range dead {
		h.kill(dc)
	}
	live := h.live()
	h.writes(live, keys, rounds)
	h.waitLiveConverged(30 * time.Second)

	// The live DC after the dead run heals through the nearest live
	// predecessor, and reads the streams of the dead DCs it skips.
	healer := ""
	var want []bridge.Bypass
	for i, dc := range h.dcs {
		prev := h.dcs[(i+n-1)%n]
		if slices.Contains(dead, dc) || !slices.Contains(dead, prev) {
			continue
		}
		healer = dc
		for k := 1; k < n; k++ {
			via := h.dcs[(i+n-k-1)%n]
			want = append(want, bridge.Bypass{Dead: h.dcs[(i+n-k)%n], Via: via})
			if !slices.Contains(dead, via) {
				break
			}
		}
	}
	h.waitHealing(healer, want)
	for _, dc := range live {
		if dc != healer && len(h.rep(dc).Healing()) > 0 {
			t.Errorf("%s heals %v; only %s should", dc, h.rep(dc).Healing(), healer)
		}
	}

	for _, dc := range dead {
		h.revive(dc)
	}
	h.writes(h.dcs, keys, 1)
	h.waitConverged(30 * time.Second)
	h.waitHealing(healer, nil)
	h.waitHealConsumersGone(healer)
	h.checkCounts(func(dc string) uint64 {
		if dc == healer {
			// Each heal link may bring back, once, each event that had
			// passed the healer: its own, and the dead DCs' that went
			// round the ring before they died; a predecessor forwarded
			// them towards the dead DC.
			n := h.written[dc]
			for _, d := range dead {
				n += h.written[d]
			}
			return uint64(len(want) * n)
		}
		return 0
	})
}

// TestHealRing4 kills a member of a ring of four for good while the others
// write, and brings it back.
func TestHealRing4(t *testing.T) {
	ringHeal(t, 4, []string{"dc2"}, 20, 5)
}

// TestHealRing3And5 is TestHealRing4, shorter, on rings of three and five
// with one dead member, and of five with two adjacent dead members.
func TestHealRing3And5(t *testing.T) {
	for _, tc := range []struct {
		n    int
		dead []string
	}{
		{3, []string{"dc3"}},
		{5, []string{"dc1"}},
		{5, []string{"dc2", "dc3"}},
	} {
		t.Run(fmt.Sprintf("ring-%d-dead-%s", tc.n, strings.Join(tc.dead, "+")), func(t *testing.T) {
			ringHeal(t, tc.n, tc.dead, 10, 2)
		})
	}
}

// TestHealStar kills the hub of a star with a standby hub: the leaves keep
// replicating through the standby. When the hub comes back it catches up
// through its durable consumers (the standby's stream included, which
// holds what the standby forwarded), the standby stops relaying and the
// leaves drop their standby consumers; everything converges, applied
// exactly once.
func TestHealStar(t *testing.T) {
	const keys, rounds = 15, 4
	h := newHealRun(t, "star", 4, healing("dc2"))
	hub, standby := "dc1", "dc2"
	h.writes(h.dcs, keys, rounds)
	h.kill(hub)
	h.writes(h.live(), keys, rounds)
	h.waitLiveConverged(30 * time.Second)
	h.waitHealing(standby, []bridge.Bypass{{Dead: hub, Via: "dc3"}, {Dead: hub, Via: "dc4"}})
	h.waitHealing("dc3", []bridge.Bypass{{Dead: hub, Via: standby}})
	h.waitHealing("dc4", []bridge.Bypass{{Dead: hub, Via: standby}})

	h.revive(hub)
	h.writes(h.dcs, keys, 1)
	h.waitConverged(30 * time.Second)
	for _, dc := range h.live() {
		h.waitHealing(dc, nil)
		h.waitHealConsumersGone(dc)
	}
	total := 0
	for _, n := range h.written {
		total += n
	}
	h.checkCounts(func(dc string) uint64 {
		switch dc {
		case hub:
			return 0
		case standby:
			// Its own events from the hub and, once the hub is back, the
			// leaves' events the hub forwarded after the standby had.
			return uint64(total)
		}
		// Its own events, back from the hub and from the standby.
		return uint64(2 * h.written[dc])
	})
}

// TestHealOff is the control: with healing off, a dead ring member stops
// the flow past it, for three times as long as the healing tests need to
// heal around it; when it returns, everything flows again.
func TestHealOff(t *testing.T) {
	h := newHealRun(t, "ring", 4, func(o *bridge.Options) { o.RepairAfter = time.Hour })
	h.writes(h.dcs, 10, 1)
	h.waitConverged(30 * time.Second)
	h.kill("dc2")
	before := h.store("dc3").Applied()["dc1"]
	h.writes([]string{"dc1"}, 10, 2)
	// dc1's new writes travel dc1 -> dc2 (dead): dc3 must not see them.
	// This is a bounded watch, not a wait for something to happen.
	deadline := time.Now().Add(3 * (healAfter + 200*time.Millisecond))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for ; time.Now().Before(deadline); <-tick.C {
		if got := h.store("dc3").Applied()["dc1"]; !slices.Equal(got, before) {
			t.Fatalf("with healing off, dc3 applied dc1's events past dead dc2: %v -> %v", before, got)
		}
		if hl := h.rep("dc3").Healing(); len(hl) > 0 {
			t.Fatalf("with healing off, dc3 heals %v", hl)
		}
	}
	h.revive("dc2")
	h.waitConverged(30 * time.Second)
	h.checkCounts(func(string) uint64 { return 0 })
}
