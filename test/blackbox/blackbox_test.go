// Package blackbox_test tests the real replicator binary from the outside:
// three `replicator run` processes on one JetStream server, driven over
// HTTP while they are killed and restarted. It checks the correctness
// contract of docs/DESIGN.md as a client sees it: every acknowledged write
// survives (invariants 1, 2, 6), the DCs converge (10), and a version
// superseded through a context never comes back (5).
package blackbox_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// binPath is the replicator binary TestMain builds; skipReason or buildErr
// say why there is none.
var (
	binPath    string
	skipReason string
	buildErr   error
)

func TestMain(m *testing.M) {
	sidecar.Main(m, "blackbox", buildBinary)
}

// buildBinary runs `go build -o DIR/replicator ./cmd/replicator` at the
// module root.
func buildBinary(dir string) {
	binPath, skipReason, buildErr = sidecar.Build(dir, "BLACKBOX_RACE", "")
}

func requireBinary(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if buildErr != nil {
		t.Fatalf("building the replicator binary failed: %v", buildErr)
	}
}

// TestKillAndRestart writes concurrently at three DCs, SIGKILLs dc2 in the
// middle and restarts it, then requires convergence and that every
// acknowledged write is accounted for.
func TestKillAndRestart(t *testing.T) {
	begin := time.Now()
	c := startCluster(t)
	t.Logf("cluster up in %s", time.Since(begin).Round(time.Millisecond))
	led := newLedger()
	w := newWorkload(c, led)
	defer w.Halt()

	const workers, perWorker = 3, 500 // at most 1500 acknowledged operations per DC
	for i, dc := range dcNames {
		w.Start(dc, workers, perWorker, uint64(i+1))
	}
	phase := func(what string, cond func() bool) {
		t.Helper()
		if err := repl.WaitFor(30*time.Second, 10*time.Millisecond, cond); err != nil {
			w.Halt()
			t.Fatalf("%s: %v (acked so far: dc1 %d, dc2 %d, dc3 %d)", what, err, led.Acked("dc1"), led.Acked("dc2"), led.Acked("dc3"))
		}
	}

	phase("warm-up writes", func() bool { return led.AckedTotal() >= 600 })
	dc2 := c.proc("dc2")
	dc2.kill()
	killedAt := time.Now()
	base := led.Acked("dc1") + led.Acked("dc3")
	t.Logf("SIGKILLed dc2 after %d acked operations (dc1 %d, dc2 %d, dc3 %d)", led.AckedTotal(), led.Acked("dc1"), led.Acked("dc2"), led.Acked("dc3"))

	phase("writes at dc1 and dc3 while dc2 is down", func() bool { return led.Acked("dc1")+led.Acked("dc3") >= base+1200 })
	dc2.start()
	c.waitHealthy(dc2, 30*time.Second)
	t.Logf("dc2 restarted after %s down; healthy again", time.Since(killedAt).Round(time.Millisecond))
	restarted := led.Acked("dc2")

	phase("writes at dc2 after its restart", func() bool { return led.Acked("dc2") >= restarted+400 })
	w.Halt()
	t.Logf("writers stopped after %s: acked dc1 %d, dc2 %d, dc3 %d", time.Since(begin).Round(time.Millisecond), led.Acked("dc1"), led.Acked("dc2"), led.Acked("dc3"))

	took := c.waitConverged(60 * time.Second)
	t.Logf("digests equal %s after the writers stopped", took.Round(time.Millisecond))
	account(t, c, led)
	c.checkLogs()
	stopAll(t, c)
}

// TestSIGTERMFlushes stops dc1 with SIGTERM right after a burst of
// acknowledged writes, while its writers are still sending. The graceful
// shutdown must flush the outbox: the other DCs receive every write dc1
// acknowledged, while dc1 is still down. After dc1 restarts, everything
// converges with nothing lost.
func TestSIGTERMFlushes(t *testing.T) {
	begin := time.Now()
	c := startCluster(t)
	led := newLedger()
	w := newWorkload(c, led)
	defer w.Halt()

	w.Start("dc1", 6, 100, 11)
	w.Start("dc2", 1, 100, 12)
	w.Start("dc3", 1, 100, 13)
	if err := repl.WaitFor(30*time.Second, time.Millisecond, func() bool { return led.Acked("dc1") >= 300 }); err != nil {
		t.Fatalf("burst at dc1: %v (acked %d)", err, led.Acked("dc1"))
	}

	dc1 := c.proc("dc1")
	atSignal := led.Acked("dc1")
	took, err := dc1.stop(30 * time.Second)
	if err != nil {
		t.Error(err)
	}
	t.Logf("dc1 had acked %d operations at SIGTERM, %d more during its shutdown; it exited %s after SIGTERM",
		atSignal, led.Acked("dc1")-atSignal, took.Round(time.Millisecond))
	w.Halt()

	// Every dot dc1 acknowledged must reach dc2 and dc3 without dc1.
	want := map[string]uint64{} // key -> highest dc1 dot acknowledged
	// deleted marks the keys whose highest dc1 dot is a delete: once
	// every DC has applied it, the tombstone is purged, and the key reads
	// as absent (context {}), which is the delete received.
	deleted := map[string]bool{}
	for _, op := range led.AckedOps() {
		if op.DC != "dc1" {
			continue
		}
		_, n, err := sidecar.ParseDot(op.Dot)
		if err != nil {
			t.Errorf("acked write of %s at dc1: %v", op.Key, err)
			continue
		}
		if n > want[op.Key] {
			want[op.Key], deleted[op.Key] = n, op.Delete
		}
	}
	var missing []string
	err = repl.WaitFor(20*time.Second, 100*time.Millisecond, func() bool {
		missing = missing[:0]
		for _, dc := range []string{"dc2", "dc3"} {
			p := c.proc(dc)
			for key, n := range want {
				v, _, err := c.get(p, key)
				if err != nil {
					missing = append(missing, err.Error())
					continue
				}
				clock, err := sidecar.ParseClock(v.Context)
				if err != nil {
					missing = append(missing, err.Error())
					continue
				}
				if clock["dc1"] < n && !(len(clock) == 0 && deleted[key]) {
					missing = append(missing, fmt.Sprintf("%s: key %s has context %s, not covering dc1:%d", dc, key, v.Context, n))
				}
			}
		}
		return len(missing) == 0
	})
	if err != nil {
		t.Errorf("after dc1's graceful shutdown, dc2 and dc3 never received all of dc1's acknowledged writes (was the outbox flushed?):\n  %s", strings.Join(missing, "\n  "))
	} else {
		t.Logf("dc2 and dc3 hold all %d keys' acknowledged dc1 writes while dc1 is down", len(want))
	}

	dc1.start()
	c.waitHealthy(dc1, 30*time.Second)
	took = c.waitConverged(60 * time.Second)
	t.Logf("digests equal %s after dc1's restart (%s since start)", took.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
	account(t, c, led)
	c.checkLogs()
	stopAll(t, c)
}

// stopAll stops every DC with SIGTERM and requires a clean exit.
func stopAll(t *testing.T, c *cluster) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(c.procs))
	for i, p := range c.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = p.stop(20 * time.Second)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
