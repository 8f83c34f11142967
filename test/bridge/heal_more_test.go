package bridge_test

// More topology-healing tests (written in review): flapping, non-adjacent dead DCs, a
// star losing its standby too, heal links stopped mid-batch, and DCs whose
// reports are slow relative to heal_after.

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// bgWriter writes continuously at some DCs until stopped, counting writes.
type bgWriter struct {
	h    *healRun
	dcs  []string
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	n    map[string]int
	// slow is each DC's slowest write since the last waitMore began.
	slow map[string]time.Duration
	err  atomic.Value
}

// startWriters has each DC of dcs write, one write per pace at most, until
// finish. Each write of a key carries the clock its DC's last write of the
// key returned, as a client of the siblings resolver does: blind writes
// would keep every value as a sibling, and a key's state, which each write
// and apply rewrites, would grow with every write (15 KB per key within a
// minute, when these writers wrote blind and local writes took seconds).
func startWriters(h *healRun, dcs []string, pace time.Duration) *bgWriter {
	w := &bgWriter{h: h, dcs: dcs, stop: make(chan struct{}), n: map[string]int{}, slow: map[string]time.Duration{}}
	for _, dc := range dcs {
		st := h.store(dc)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			tick := time.NewTicker(pace)
			defer tick.Stop()
			seen := map[string]vclock.VV{}
			for i := 0; ; i++ {
				select {
				case <-w.stop:
					return
				case <-tick.C:
				}
				key := fmt.Sprintf("bg%02d", i%17)
				t0 := time.Now()
				res, err := st.Write(context.Background(), changelog.WriteOp{Key: key, Value: fmt.Appendf(nil, "%s-bg-%d", dc, i), Context: seen[key]})
				if err != nil {
					w.err.Store(err)
					return
				}
				seen[key] = res.State.Clock
				took := time.Since(t0)
				w.mu.Lock()
				w.n[dc]++
				w.slow[dc] = max(w.slow[dc], took)
				w.mu.Unlock()
			}
		}()
	}
	return w
}

// waitMore waits until each writer has made n more writes than when it was
// called: the workload has run that far through the current fault.
func (w *bgWriter) waitMore(n int) {
	w.h.t.Helper()
	w.mu.Lock()
	from := maps.Clone(w.n)
	clear(w.slow)
	w.mu.Unlock()
	start := time.Now()
	defer func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.h.t.Logf("%d more writes at each of %v took %s; the slowest write of each: %v", n, w.dcs, time.Since(start).Round(time.Millisecond), w.slow)
	}()
	// 60s is a liveness budget for -race on a loaded 2-core machine; a
	// healthy run takes well under a second and returns as soon as the
	// writes are made.
	cluster.Eventually(w.h.t, 60*time.Second, fmt.Sprintf("%d more background writes at each of %v", n, w.dcs), func() (bool, string) {
		if err, _ := w.err.Load().(error); err != nil {
			w.h.t.Fatalf("background write: %v", err)
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, dc := range w.dcs {
			if w.n[dc]-from[dc] < n {
				return false, fmt.Sprintf("writes %v, from %v", w.n, from)
			}
		}
		return true, ""
	})
}

func (w *bgWriter) finish() {
	close(w.stop)
	w.wg.Wait()
	if err, _ := w.err.Load().(error); err != nil {
		w.h.t.Fatalf("background write: %v", err)
	}
	for dc, n := range w.n {
		w.h.written[dc] += n
	}
}

// crash stops a DC without waiting for its outbox to drain first (Close
// still flushes for FlushTimeout).
func (h *healRun) crash(dc string) {
	h.t.Helper()
	st := h.store(dc)
	h.stopRep(dc)
	h.ownAt[dc] = slices.Clone(st.Applied()[dc])
	h.stop(dc)
}

func noLoopLimit(string) uint64 { return math.MaxUint64 }

// healConsumers lists the heal consumers left on the server.
func (h *healRun) healConsumers() []string {
	js := h.js(h.t)
	var out []string
	for _, up := range h.dcs {
		for _, dc := range h.dcs {
			if up == dc {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := js.Consumer(ctx, names.Stream(up), names.HealConsumer(dc, up))
			cancel()
			if err == nil {
				out = append(out, names.Stream(up)+"/"+names.HealConsumer(dc, up))
			} else if err != jetstream.ErrConsumerNotFound {
				h.t.Logf("consumer lookup: %v", err)
			}
		}
	}
	return out
}

// Scenario 1: ring of 4, dc2 dies while writes flow, comes back, dies
// again soon after, comes back.
func TestHealMoreRingFlap(t *testing.T) {
	h := newHealRun(t, "ring", 4, healing(""))
	h.writes(h.dcs, 10, 2)
	w := startWriters(h, []string{"dc1", "dc3", "dc4"}, 2*time.Millisecond)
	w.waitMore(50) // writes flow before the crash
	h.crash("dc2")
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc2", Via: "dc1"}})
	w.waitMore(50) // and while dc3 heals around dc2
	h.revive("dc2")
	cluster.Hold(700*time.Millisecond, nil) // the flap: dc2 up 700ms, maybe not yet counted as alive
	h.crash("dc2")
	cluster.Hold(1500*time.Millisecond, nil) // down 1.5s, maybe before the others count it dead
	h.revive("dc2")
	cluster.Hold(300*time.Millisecond, nil) // up 300ms
	h.crash("dc2")
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc2", Via: "dc1"}})
	w.waitMore(50) // writes while dc3 heals around dc2 again
	h.revive("dc2")
	w.waitMore(50) // and once dc2 is back
	w.finish()
	settleRing(h)
}

// Scenario 2: ring of 4 with two non-adjacent dead DCs.
func TestHealMoreRingTwoNonAdjacent(t *testing.T) {
	h := newHealRun(t, "ring", 4, healing(""))
	h.writes(h.dcs, 10, 2)
	h.kill("dc2")
	h.kill("dc4")
	h.writes(h.live(), 10, 3)
	h.waitLiveConverged(20 * time.Second)
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc2", Via: "dc1"}})
	h.waitHealing("dc1", []bridge.Bypass{{Dead: "dc4", Via: "dc3"}})
	h.revive("dc2")
	h.revive("dc4")
	h.writes(h.dcs, 10, 1)
	h.waitConverged(30 * time.Second)
	h.waitHealing("dc1", nil)
	h.waitHealing("dc3", nil)
	h.waitHealConsumersGone("dc1")
	h.waitHealConsumersGone("dc3")
	h.checkCounts(noLoopLimit)
}

// Scenario 3: star, hub dc1 dies, then standby dc2 while healing is
// active; they come back in the opposite order (standby first).
func TestHealMoreStarStandbyDiesToo(t *testing.T) {
	h := newHealRun(t, "star", 4, func(o *bridge.Options) {
		healing("dc2")(o)
		// Leaf-to-leaf flow has no path with both hubs dead; let the
		// catch-up fetch it in the meantime.
		o.RepairAfter = 300 * time.Millisecond
	})
	h.writes(h.dcs, 10, 2)
	h.kill("dc1")
	h.writes(h.live(), 10, 2)
	h.waitHealing("dc2", []bridge.Bypass{{Dead: "dc1", Via: "dc3"}, {Dead: "dc1", Via: "dc4"}})
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc1", Via: "dc2"}})
	h.waitLiveConverged(20 * time.Second)
	w := startWriters(h, []string{"dc2", "dc3", "dc4"}, 3*time.Millisecond)
	w.waitMore(50) // writes flow through the standby
	w.finish()
	h.crash("dc2")
	h.writes(h.live(), 10, 2)
	h.waitHealing("dc3", nil)
	h.waitHealing("dc4", nil)
	h.waitLiveConverged(20 * time.Second)
	h.revive("dc2")
	h.writes(h.live(), 10, 1)
	h.waitHealing("dc2", []bridge.Bypass{{Dead: "dc1", Via: "dc3"}, {Dead: "dc1", Via: "dc4"}})
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc1", Via: "dc2"}})
	h.waitLiveConverged(20 * time.Second)
	reviveHubAndCheck(h)
}

// Scenario 3b: the same, without the catch-up (RepairAfter 1h): only the
// heal links carry leaf-to-leaf events.
func TestHealMoreStarStandbyDiesTooNoCatchup(t *testing.T) {
	h := newHealRun(t, "star", 4, healing("dc2"))
	h.writes(h.dcs, 10, 2)
	h.kill("dc1")
	h.writes(h.live(), 10, 2)
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc1", Via: "dc2"}})
	h.waitLiveConverged(20 * time.Second)
	h.kill("dc2")
	h.writes(h.live(), 10, 2)
	h.waitHealing("dc3", nil)
	h.revive("dc2")
	h.writes(h.live(), 10, 1)
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc1", Via: "dc2"}})
	h.waitLiveConverged(20 * time.Second)
	reviveHubAndCheck(h)
}

// settleRing writes once more at every DC, then requires every DC to
// converge, dc3 (the ring DC after dc2) to stop healing and delete its heal
// consumers, and each DC to have applied every other DC's writes once.
func settleRing(h *healRun) {
	h.writes(h.dcs, 10, 1)
	h.waitConverged(30 * time.Second)
	h.waitHealing("dc3", nil)
	h.waitHealConsumersGone("dc3")
	h.checkCounts(noLoopLimit)
}

// reviveHubAndCheck brings the star's hub dc1 back, then requires every
// DC to converge, every leaf to stop healing and delete its heal
// consumers, and each DC to have applied every other DC's writes once.
func reviveHubAndCheck(h *healRun) {
	h.revive("dc1")
	h.writes(h.dcs, 10, 1)
	h.waitConverged(30 * time.Second)
	for _, dc := range []string{"dc2", "dc3", "dc4"} {
		h.waitHealing(dc, nil)
		h.waitHealConsumersGone(dc)
	}
	h.checkCounts(noLoopLimit)
}

// Scenario 4: a heal link stopped while it is working through a backlog
// (dc2 returns right after the heal starts), and the healer closed while
// its heal link is mid-batch.
func TestHealMoreHealStopMidBatch(t *testing.T) {
	h := newHealRun(t, "ring", 4, func(o *bridge.Options) {
		healing("")(o)
		o.Batch = 32
	})
	h.writes(h.dcs, 10, 1)
	h.waitConverged(20 * time.Second)
	h.kill("dc2")
	h.writes([]string{"dc1", "dc4"}, 200, 5) // a backlog on dc1's stream
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc2", Via: "dc1"}})
	h.revive("dc2")                        // the heal link stops once dc2 catches up
	cluster.Hold(50*time.Millisecond, nil) // the fault's moment: 50ms into dc2's return
	h.stopRep("dc3")                       // or the healer closes mid-batch
	h.startRep("dc3")
	settleRing(h)
}

// Scenario 4b: the healer itself closes right after its heal link starts
// on a large backlog, and stays down while dc2 is still dead.
func TestHealMoreHealerClosesMidHeal(t *testing.T) {
	h := newHealRun(t, "ring", 4, func(o *bridge.Options) {
		healing("")(o)
		o.Batch = 16
	})
	h.writes(h.dcs, 10, 1)
	h.waitConverged(20 * time.Second)
	h.kill("dc2")
	h.writes([]string{"dc1"}, 300, 5)
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc2", Via: "dc1"}})
	for range 3 {
		// The healer closes once its heal link has applied a batch more,
		// mid-backlog (unless the backlog is through already).
		from := h.stats("dc3").Applied
		cluster.Eventually(t, 20*time.Second, "dc3 healing a batch more", func() (bool, string) {
			got := h.stats("dc3").Applied
			if done, _ := h.CaughtUp("dc3", "dc1"); done {
				return true, ""
			}
			return got >= from+16, fmt.Sprintf("dc3 applied %d, from %d", got, from)
		})
		h.stopRep("dc3")
		h.startRep("dc3")
	}
	h.waitLiveConverged(30 * time.Second)
	h.revive("dc2")
	settleRing(h)
}

// Scenario 5: dc2 is alive but reports only every 1.5s, longer than the
// others' heal_after of 1s.
func TestHealMoreSlowReporter(t *testing.T) {
	h := newHealRun(t, "ring", 4, func(o *bridge.Options) {
		healing("")(o)
		if o.Store.DC() == "dc2" {
			o.ReportInterval = 1500 * time.Millisecond
			o.HealAfter = 3 * time.Second
		}
	})
	// Watch dc3's healing for flapping.
	var flips atomic.Int64
	stopWatch := make(chan struct{})
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		was := false
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stopWatch:
				return
			case <-tk.C:
			}
			now := len(h.rep("dc3").Healing()) > 0
			if now != was {
				flips.Add(1)
				was = now
			}
		}
	}()
	w := startWriters(h, []string{"dc1", "dc2", "dc3", "dc4"}, 3*time.Millisecond)
	cluster.Hold(5*time.Second, nil) // the slow reporter watched for 5s of writes
	w.finish()
	flipsBusy := flips.Load()
	cluster.Hold(4*time.Second, nil) // and for 4s idle
	close(stopWatch)
	watch.Wait()
	t.Logf("dc3 healing flips: %d while busy, %d in total", flipsBusy, flips.Load())
	h.writes(h.dcs, 10, 1)
	h.waitConverged(30 * time.Second)
	h.checkCounts(noLoopLimit)
	s := h.stats("dc3")
	t.Logf("dc3 duplicates %d loops %d", s.Duplicates, s.LoopsDropped)
}

// hardKill drops dc's NATS connection before closing it, so forwards it
// applied but had not published stay in its outbox (a crash).
func (h *healRun) hardKill(dc string) {
	h.t.Helper()
	h.CloseConn(dc)
	h.crash(dc)
}

// Scenario 1b: rapid flapping with crashes that leave forwards
// unpublished, with the catch-up on (RepairAfter 300ms).
func TestHealMoreRingRapidFlapCrash(t *testing.T) {
	h := newHealRun(t, "ring", 4, func(o *bridge.Options) {
		healing("")(o)
		o.RepairAfter = 300 * time.Millisecond
		o.FlushTimeout = 100 * time.Millisecond
	})
	h.writes(h.dcs, 10, 2)
	w := startWriters(h, []string{"dc1", "dc3", "dc4"}, 2*time.Millisecond)
	for i := range 4 {
		cluster.Hold(200*time.Millisecond, nil) // the flap: dc2 up 200ms
		h.hardKill("dc2")
		cluster.Hold(time.Duration(1200+300*i)*time.Millisecond, nil) // down 1.2s to 2.1s, around heal_after
		h.revive("dc2")
	}
	// Writes flow once dc2 is back, dc4's too while its committer applies
	// the catch-up backlog of the flaps: local writes go first in each
	// batch, beside a bounded share of applies (changelog's commit policy).
	w.waitMore(50)
	w.finish()
	settleRing(h)
}

// Scenario 5b: the star's hub reports only every 1.5s, longer than the
// others' heal_after: the standby relays while the hub is alive.
func TestHealMoreStarSlowHub(t *testing.T) {
	h := newHealRun(t, "star", 4, func(o *bridge.Options) {
		healing("dc2")(o)
		if o.Store.DC() == "dc1" {
			o.ReportInterval = 1500 * time.Millisecond
			o.HealAfter = 3 * time.Second
		}
	})
	w := startWriters(h, []string{"dc1", "dc2", "dc3", "dc4"}, 3*time.Millisecond)
	cluster.Hold(5*time.Second, nil) // the slow hub's fault lasts 5s of writes
	w.finish()
	cluster.Hold(2*time.Second, nil) // and 2s idle
	h.writes(h.dcs, 10, 1)
	h.waitConverged(30 * time.Second)
	h.checkCounts(noLoopLimit)
}

// Scenario 2b: ring of 4, dc2 dies, then its heal via (dc1) dies too while
// writes flow; dc1 returns before dc2.
func TestHealMoreRingViaDies(t *testing.T) {
	h := newHealRun(t, "ring", 4, healing(""))
	h.writes(h.dcs, 10, 2)
	w := startWriters(h, []string{"dc3", "dc4"}, 3*time.Millisecond)
	h.kill("dc2")
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc2", Via: "dc1"}})
	h.crash("dc1")
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc2", Via: "dc1"}, {Dead: "dc1", Via: "dc4"}})
	w.waitMore(50) // writes flow around both dead DCs
	h.revive("dc1")
	h.waitHealing("dc3", []bridge.Bypass{{Dead: "dc2", Via: "dc1"}})
	w.finish()
	h.writes(h.live(), 10, 1)
	h.waitLiveConverged(20 * time.Second)
	h.revive("dc2")
	settleRing(h)
}
