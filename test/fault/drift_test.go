package fault_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/pkg/hlc"
)

// driftCluster runs dc1 with its clock 5 minutes ahead and dc2 on time,
// with the default max_clock_drift of 1 minute.
func driftCluster(t *testing.T) (*cluster, *skewedClock) {
	t.Helper()
	ahead := newSkewedClock(5 * time.Minute)
	c := newCluster(t, clusterOptions{
		dcs:            []string{"dc1", "dc2"},
		mode:           inProcess,
		reportInterval: 100 * time.Millisecond,
		clocks:         map[string]func() time.Time{"dc1": ahead.now, "dc2": time.Now},
	})
	return c, ahead
}

// hlcOf writes value at key at m and returns the HLC of the new sibling.
func hlcOf(t *testing.T, c *cluster, m *member, key, value string) uint64 {
	t.Helper()
	wr, _, err := c.write(m, key, []byte(value), nil)
	if err != nil {
		t.Fatal(err)
	}
	v, _, err := c.get(m, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range v.Siblings {
		if s.Dot == wr.Dot {
			return s.HLC
		}
	}
	t.Fatalf("%s: the write %s of %s is not among its siblings: %s", m.name, wr.Dot, key, v.Canonical())
	return 0
}

// ahead returns how far ts is past now.
func ahead(ts uint64) time.Duration { return hlc.Timestamp(ts).Time().Sub(time.Now()) }

// TestClockDriftBound records what a DC does with a remote event whose HLC
// is beyond durability.max_clock_drift (1m) ahead of its clock: dc1 runs 5
// minutes ahead. It requires what the product does today: the event is
// applied, its timestamp is not taken into the receiving DC's clock, and a
// WARN line and replicator_clock_drift_rejected_total say so. It also
// measures the consequence for last-writer-wins: a write dc2 makes later
// in real time, concurrent with one of dc1, loses to it. See
// TestDriftDoesNotPoisonClockAfterRestart for the bound bypassed.
func TestClockDriftBound(t *testing.T) {
	begin := time.Now()
	c, _ := driftCluster(t)
	dc1, dc2 := c.member("dc1"), c.member("dc2")

	ts1 := hlcOf(t, c, dc1, lwwPrefix+"drift", "from-the-future")
	c.waitConverged(30 * time.Second)
	v, status, err := c.get(dc2, lwwPrefix+"drift")
	if err != nil {
		t.Fatal(err)
	}
	applied := status == 200 && len(v.Values) == 1 && string(v.Values[0]) == "from-the-future"
	// The event is visible before the applying batch's fsync returns, and
	// the refusal is counted and logged right after: wait for both.
	var rejected float64
	logLine := ""
	_ = repl.WaitFor(10*time.Second, 20*time.Millisecond, func() bool {
		rejected = metric(t, c, "dc2", "replicator_clock_drift_rejected_total")
		if b, err := os.ReadFile(dc2.logPath); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "drift") {
					logLine = l
					break
				}
			}
		}
		return rejected >= 1 && logLine != ""
	})
	dead := metric(t, c, "dc2", "replicator_dead_letters_total")
	ts2 := hlcOf(t, c, dc2, lwwPrefix+"after", "x")
	t.Logf("dc1's event carries HLC %s (%s ahead); at dc2 it was applied: %t; dead-lettered: %v; replicator_clock_drift_rejected_total: %v; dc2's next write has HLC %s (%s ahead); log: %s",
		hlc.Timestamp(ts1), ahead(ts1).Round(time.Second), applied, dead, rejected, hlc.Timestamp(ts2), ahead(ts2).Round(time.Second), logLine)
	if rejected < 1 || logLine == "" {
		t.Errorf("dc2 took an event 5m ahead of its clock, beyond max_clock_drift 1m, without a visible error: counter %v, log line %q", rejected, logLine)
	}
	if ahead(ts2) > time.Minute {
		t.Errorf("dc2's clock took the timestamp of dc1's event, beyond the drift bound: its next write has HLC %s", hlc.Timestamp(ts2))
	}

	// A concurrent pair: dc1 writes first, dc2 a second later (in real
	// time), neither seeing the other.
	dc1.proxy.Cut()
	dc2.proxy.Cut()
	if _, _, err := c.write(dc1, lwwPrefix+"race", []byte("dc1-earlier"), nil); err != nil {
		t.Fatal(err)
	}
	repl.Hold(time.Second, nil)
	if _, _, err := c.write(dc2, lwwPrefix+"race", []byte("dc2-later"), nil); err != nil {
		t.Fatal(err)
	}
	dc1.proxy.Heal()
	dc2.proxy.Heal()
	took := c.waitConverged(30 * time.Second)
	v, _, err = c.get(dc2, lwwPrefix+"race")
	if err != nil {
		t.Fatal(err)
	}
	winner := fmt.Sprintf("%q", v.Values)
	t.Logf("lww race: dc1 (5m ahead) wrote first, dc2 a second later; both DCs show %s", winner)
	report(t, figures{
		Faults:   "dc1 clock +5m, max_clock_drift 1m (default)",
		Acked:    4,
		Converge: round(took),
		Extra: map[string]any{
			"remote_event_applied":                 applied,
			"clock_drift_rejected_total":           rejected,
			"dead_lettered":                        dead,
			"receiver_clock_took_remote_time":      ahead(ts2) > time.Minute,
			"lww_winner_of_later_concurrent_write": winner,
			"log":                                  logLine,
		},
	}, begin)
}

// TestDriftDoesNotPoisonClockAfterRestart: dc2 refuses to take the HLC
// of dc1's event 5 minutes ahead (beyond max_clock_drift 1m) into its
// clock while it runs, but it stores the event's sibling with that HLC,
// and the batch that does so records it as the store's HLC high-water mark
// (changelog txn.commit writes the batch's highest sibling HLC to
// meta "hlc"). At the next start node.New restores the clock from it
// (Store.HLCHighWater, then hlc.Clock.Restore, which applies no drift
// check). So if that batch was dc2's last before a restart, every write
// dc2 makes afterwards carries a timestamp 5 minutes in the future and
// wins LWW against concurrent writes of DCs whose clocks are right. The
// drift bound holds only until a restart.
func TestDriftDoesNotPoisonClockAfterRestart(t *testing.T) {
	c, _ := driftCluster(t)
	dc1, dc2 := c.member("dc1"), c.member("dc2")
	ts1 := hlcOf(t, c, dc1, lwwPrefix+"drift", "from-the-future")
	c.waitConverged(30 * time.Second)
	if err := dc2.stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	dc2.start()
	dc2.waitHealthy(30 * time.Second)
	after := hlcOf(t, c, dc2, lwwPrefix+"mine", "after-restart")
	t.Logf("dc1's event: HLC %s (%s ahead). dc2's first write after its restart: %s (%s ahead)",
		hlc.Timestamp(ts1), ahead(ts1).Round(time.Second), hlc.Timestamp(after), ahead(after).Round(time.Second))
	if ahead(after) > time.Minute {
		t.Errorf("after a restart dc2, whose clock is right, writes with HLC %s, %s ahead: it restored its clock from dc1's event, which max_clock_drift (1m) kept out of it while it ran",
			hlc.Timestamp(after), ahead(after).Round(time.Second))
	}
}

// TestHLCNeverGoesBackAfterRestart: the store's HLC high-water mark is
// not a maximum. Each batch that stores a key state overwrites meta "hlc"
// with that batch's highest sibling HLC (changelog txn.commit), even when
// it is lower than the mark already stored. dc2 writes (HLC about now);
// then it applies an event of dc1, whose clock is 10 seconds behind, and
// that batch lowers the mark by 10 seconds. dc2 restarts after its clock
// was stepped back 10 seconds (NTP), restores its clock from the lowered
// mark, and its next write gets an HLC below its own earlier write:
// hlc.Clock.Restore's promise, time stays monotonic across a restart even
// when the physical clock is now behind, does not hold.
func TestHLCNeverGoesBackAfterRestart(t *testing.T) {
	behind := newSkewedClock(-10 * time.Second)
	own := newSkewedClock(0)
	c := newCluster(t, clusterOptions{
		dcs:            []string{"dc1", "dc2"},
		mode:           inProcess,
		reportInterval: 100 * time.Millisecond,
		clocks:         map[string]func() time.Time{"dc1": behind.now, "dc2": own.now},
	})
	dc1, dc2 := c.member("dc1"), c.member("dc2")
	first := hlcOf(t, c, dc2, lwwPrefix+"mine", "before-restart")
	hlcOf(t, c, dc1, lwwPrefix+"theirs", "from-the-past")
	c.waitConverged(30 * time.Second)
	if err := dc2.stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	own.jump(-10 * time.Second)
	dc2.start()
	dc2.waitHealthy(30 * time.Second)
	next := hlcOf(t, c, dc2, lwwPrefix+"mine2", "after-restart")
	t.Logf("dc2's write before the restart: HLC %s; after the restart (its clock stepped back 10s): %s", hlc.Timestamp(first), hlc.Timestamp(next))
	if next <= first {
		t.Errorf("dc2's HLC went back across its restart: %s after %s", hlc.Timestamp(next), hlc.Timestamp(first))
	}
}
