package fault_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/test/internal/ledger"
)

// TestSIGKILL (docs/DESIGN.md, invariants 1, 3 and 4; figures in
// docs/RELIABILITY.md, "SIGKILL of sidecar processes") SIGKILLs sidecar
// processes of a 3-DC mesh at random moments while every DC takes concurrent
// writes on ~1k keys, restarts them, and requires after the heal that every
// acknowledged write is accounted for, that the digests are equal, and that
// nothing was applied twice.
//
// Nothing applied twice is checked two ways. From outside, by the ledger:
// each live value carries the dot its write was acknowledged with and
// lives once, and nothing superseded comes back. And by the counters of
// dc1, which is never killed so its counters cover the whole run: remote
// events applied (changed or obsolete) must equal exactly the events the
// other DCs issued, the sum of their own sequence numbers over partitions.
// An event applied twice would push the count above; one skipped, below.
// Redeliveries and republished events may only show up as duplicates.
func TestSIGKILL(t *testing.T) {
	begin := time.Now()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	cycles := pick(20, 200)
	keys := ledger.KeySet(pick(1000, 2000))
	gapMax := pick(400*time.Millisecond, 1500*time.Millisecond) // writes between kills
	downMax := pick(500*time.Millisecond, 3*time.Second)        // how long a victim stays dead

	c := newCluster(t, clusterOptions{})
	dcs := c.opts.dcs
	const observer = "dc1"
	victims := []string{"dc2", "dc3"}
	led := newLedger(dcs)
	w := newWorkload(c, led, keys)
	defer w.Halt()
	for i, dc := range dcs {
		w.Start(dc, 2, 0, seed+uint64(i))
	}
	if err := repl.WaitFor(30*time.Second, 10*time.Millisecond, func() bool { return led.AckedTotal() >= 300 }); err != nil {
		t.Fatalf("warm-up writes: %v (acked %d)", err, led.AckedTotal())
	}

	var kills int
	var down time.Duration
	var restartTimes []time.Duration
	for cycle := range cycles {
		repl.Hold(time.Duration(rng.Int64N(int64(gapMax))), nil)
		var dead []*member
		if rng.IntN(5) == 0 {
			dead = []*member{c.member(victims[0]), c.member(victims[1])}
		} else {
			dead = []*member{c.member(victims[rng.IntN(len(victims))])}
		}
		for _, m := range dead {
			m.kill()
			kills++
		}
		d := time.Duration(rng.Int64N(int64(downMax)))
		repl.Hold(d, nil)
		down += d
		restarted := time.Now()
		for _, m := range dead {
			m.start()
		}
		for _, m := range dead {
			m.waitHealthy(30 * time.Second)
		}
		restartTimes = append(restartTimes, time.Since(restarted))
		if cycle%10 == 9 {
			t.Logf("cycle %d: %d kills so far; acked %d (%s)", cycle+1, kills, led.AckedTotal(), perDC(led))
		}
	}
	// Every DC writes after its last restart.
	base := map[string]int64{}
	for _, dc := range dcs {
		base[dc] = led.Acked(dc)
	}
	if err := repl.WaitFor(30*time.Second, 10*time.Millisecond, func() bool {
		for _, dc := range dcs {
			if led.Acked(dc) < base[dc]+50 {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatalf("writes after the last restart: %v (%s)", err, perDC(led))
	}
	w.Halt()
	t.Logf("%d kill/restart cycles, %d SIGKILLs, %s dead in total; writers stopped after %s: acked %s",
		cycles, kills, round(down), round(time.Since(begin)), perDC(led))

	took := c.waitConverged(2 * time.Minute)
	t.Logf("digests and applied vectors equal %s after the writers stopped", round(took))
	a := account(t, c, led, keys)
	lww := checkLWW(t, c, ledger.LWWKeys(keys))
	extra := exactlyOnce(t, c, observer)
	extra["lww"] = lww
	c.checkLogs()
	for _, m := range c.members {
		if err := m.stop(20 * time.Second); err != nil {
			t.Error(err)
		}
	}
	var maxRestart time.Duration
	for _, d := range restartTimes {
		maxRestart = max(maxRestart, d)
	}
	extra["kill_restart_cycles"] = cycles
	extra["sigkills"] = kills
	extra["time_dead_total"] = round(down)
	extra["slowest_restart_to_healthy"] = round(maxRestart)
	extra["keys"] = len(keys)
	extra["accounting"] = a.String()
	report(t, figures{
		Seed:       seed,
		Faults:     fmt.Sprintf("%d SIGKILLs of dc2/dc3 processes at random moments over %d cycles (1 in 5 kills both), dead 0-%s each", kills, cycles, downMax),
		Operations: led.Ops.Load(),
		Acked:      int64(a.Puts + a.Deletes),
		Lost:       a.Lost,
		Converge:   round(took),
		Extra:      extra,
	}, begin)
}

func perDC(led *ledger.Ledger) string {
	var parts []string
	for _, dc := range led.DCs() {
		parts = append(parts, fmt.Sprintf("%s %d", dc, led.Acked(dc)))
	}
	return strings.Join(parts, ", ")
}

// exactlyOnce checks, at converged DCs, that each DC in counted applied
// every remote event exactly once in the life of its current process:
// replicator_applies_total + replicator_obsolete_total equals the number
// of events the other DCs issued. Only DCs whose counters cover the whole
// run (never restarted) may be passed. It returns figures.
func exactlyOnce(t *testing.T, c *cluster, counted ...string) map[string]any {
	t.Helper()
	extra := map[string]any{}
	for _, dc := range counted {
		m := c.member(dc)
		st, err := c.status(m)
		if err != nil {
			t.Fatal(err)
		}
		var issued uint64
		for origin, row := range st.Bridge.Applied {
			if origin == dc {
				continue
			}
			for _, n := range row {
				issued += n
			}
		}
		mt, err := c.metrics(m)
		if err != nil {
			t.Fatal(err)
		}
		applied := uint64(mt["replicator_applies_total"] + mt["replicator_obsolete_total"])
		if applied != issued {
			t.Errorf("%s applied %v remote events as changed and %v as obsolete, %d in all, but the other DCs issued %d: "+
				"an event was applied more than once (above) or skipped (below)",
				dc, mt["replicator_applies_total"], mt["replicator_obsolete_total"], applied, issued)
		}
		extra[dc+"_remote_events_issued"] = issued
		extra[dc+"_applied_changed"] = mt["replicator_applies_total"]
		extra[dc+"_applied_obsolete"] = mt["replicator_obsolete_total"]
		extra[dc+"_duplicates_dropped"] = mt["replicator_duplicates_dropped_total"]
		extra[dc+"_gaps"] = mt["replicator_gaps_total"]
		extra[dc+"_repaired_events"] = mt["replicator_repaired_events_total"]
		t.Logf("%s: %d remote events issued by the others; applied %v changed + %v obsolete; %v duplicates dropped; %v gaps; %v repaired",
			dc, issued, mt["replicator_applies_total"], mt["replicator_obsolete_total"], mt["replicator_duplicates_dropped_total"],
			mt["replicator_gaps_total"], mt["replicator_repaired_events_total"])
	}
	return extra
}
