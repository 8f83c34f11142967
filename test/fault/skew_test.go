package fault_test

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// skewedClock is a DC's physical clock: the wall clock plus an offset the
// test can change, as NTP stepping a clock does.
type skewedClock struct{ offset atomic.Int64 }

func newSkewedClock(d time.Duration) *skewedClock {
	s := &skewedClock{}
	s.offset.Store(int64(d))
	return s
}

func (s *skewedClock) now() time.Time { return time.Now().Add(time.Duration(s.offset.Load())) }

// jump moves the clock by d.
func (s *skewedClock) jump(d time.Duration) { s.offset.Add(int64(d)) }

// TestClockSkew (invariants 5 and 6 and the HLC of docs/DESIGN.md "Data
// model"; figures in docs/RELIABILITY.md, "Clock skew") runs three
// in-process DCs whose physical clocks disagree: dc1 is 5 minutes ahead, and
// dc3's clock jumps back 10 seconds in the middle of the run (the long form
// also puts dc2 5 minutes behind and makes dc3 jump back three times).
// Meanwhile clients write:
//
//   - causal chains on lww keys: each write carries the context of the one
//     before it, and hops between DCs, half the time writing at a DC that
//     has not seen the write before yet, half the time reading there
//     first (once the DC has it) and writing with the read's context;
//   - concurrent blind puts, read-modify-writes and deletes on other lww
//     keys at every DC.
//
// It requires that no causally later write is ever overwritten by an
// earlier one (a sampler watches every chain key at every DC, and the final
// value of each chain is its last write), that every acknowledged write is
// accounted for, that every live lww sibling the resolver does not show is
// in a conflict log (100% of LWW losses logged), that every DC shows the
// (HLC, DC) maximum, and that each DC's own HLC timestamps rise in the
// order it wrote, across the backward jump.
//
// The max drift is set to 15 minutes so that these events are within it;
// TestKnownBugDriftBoundNotEnforced shows what happens beyond it.
func TestClockSkew(t *testing.T) {
	begin := time.Now()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	clocks := map[string]*skewedClock{
		"dc1": newSkewedClock(5 * time.Minute),
		"dc2": newSkewedClock(pick(time.Duration(0), -5*time.Minute)),
		"dc3": newSkewedClock(0),
	}
	c := newCluster(t, clusterOptions{
		mode:           inProcess,
		maxClockDrift:  15 * time.Minute,
		reportInterval: 100 * time.Millisecond,
		clocks: map[string]func() time.Time{
			"dc1": clocks["dc1"].now, "dc2": clocks["dc2"].now, "dc3": clocks["dc3"].now,
		},
	})
	dcs := c.opts.dcs
	chains, steps := pick(24, 100), pick(12, 40)
	jumps := pick(1, 3)
	runFor := pick(5*time.Second, 60*time.Second)
	keys := make([]string, pick(60, 200))
	for i := range keys {
		keys[i] = fmt.Sprintf("%sconc%03d", lwwPrefix, i)
	}

	led := newLedger(dcs)
	w := newWorkload(c, led, keys)
	defer w.Halt()
	for i, dc := range dcs {
		w.Start(dc, 1, 0, seed+uint64(i))
	}

	// The sampler watches every chain key at every DC: the step a DC shows
	// must never go down.
	chainKeys := make([]string, chains)
	for i := range chainKeys {
		chainKeys[i] = fmt.Sprintf("%schain%03d", lwwPrefix, i)
	}
	smp := newChainSampler(c, chainKeys)
	smpDone := make(chan struct{})
	go func() { defer close(smpDone); smp.run() }()
	stopSampler := sync.OnceFunc(func() { smp.halt(); <-smpDone })
	defer stopSampler()

	// The clocks jump while the chains run.
	jumpDone := make(chan struct{})
	go func() {
		defer close(jumpDone)
		for range jumps {
			repl.Hold(runFor/time.Duration(jumps+1), nil)
			clocks["dc3"].jump(-10 * time.Second)
		}
	}()

	var wg sync.WaitGroup
	results := make([]chainResult, chains)
	for i := range chains {
		crng := rand.New(rand.NewPCG(rng.Uint64(), uint64(i)))
		wg.Go(func() { results[i] = runChain(c, chainKeys[i], steps, 2*runFor/time.Duration(steps), crng) })
	}
	wg.Wait()
	<-jumpDone
	w.Halt()
	took := c.waitConverged(time.Minute)
	stopSampler()

	// The final value of each chain is its last write, alone.
	var chainWrites, hlcBackwards, hlcBackwardsAfterSeen int
	for i, r := range results {
		if r.err != nil {
			t.Errorf("chain %s: %v", chainKeys[i], r.err)
			continue
		}
		chainWrites += len(r.writes)
		last := r.writes[len(r.writes)-1]
		for _, m := range c.members {
			v, status, err := c.get(m, chainKeys[i])
			if err != nil || status != 200 {
				t.Errorf("final read of %s at %s: %d %v", chainKeys[i], m.name, status, err)
				continue
			}
			if len(v.Siblings) != 1 || string(v.Siblings[0].Value) != last.value {
				t.Errorf("CAUSALITY: %s at %s shows %s, want only the chain's last write %s (%s)", chainKeys[i], m.name, v.Canonical(), last.value, last.dot)
			}
		}
		for j := 1; j < len(r.writes); j++ {
			if r.writes[j].hlc < r.writes[j-1].hlc {
				hlcBackwards++
				if r.writes[j].sawPrev {
					hlcBackwardsAfterSeen++
				}
			}
		}
	}
	for _, v := range smp.violations() {
		t.Errorf("CAUSALITY: %s", v)
	}

	a := account(t, c, led, keys)
	lww := checkLWW(t, c, keys)
	mono := checkOwnHLCRise(t, c)
	c.checkLogs()
	t.Logf("%d chains of %d writes: %d steps got a lower HLC than the write they causally follow (%d of them at a DC that had already applied that write, so its HLC never moved past a timestamp it received)",
		chains, steps, hlcBackwards, hlcBackwardsAfterSeen)
	report(t, figures{
		Seed: seed,
		Faults: fmt.Sprintf("dc1 clock +5m, dc2 %s, dc3 jumps back 10s %d time(s); max_clock_drift 15m",
			pick("0", "-5m"), jumps),
		Operations: led.Ops.Load() + int64(chainWrites),
		Acked:      int64(a.Puts+a.Deletes) + int64(chainWrites),
		Lost:       a.Lost,
		Converge:   round(took),
		Extra: map[string]any{
			"chains":                               fmt.Sprintf("%d x %d causally chained writes", chains, steps),
			"chain_steps_with_lower_hlc":           hlcBackwards,
			"chain_steps_with_lower_hlc_seen_prev": hlcBackwardsAfterSeen,
			"sampler_reads":                        smp.reads.Load(),
			"lww":                                  lww,
			"own_hlc_checked_events":               mono,
			"accounting":                           a.String(),
		},
	}, begin)
}

// chainWrite is one acknowledged write of a causal chain.
type chainWrite struct {
	dc, value, dot string
	hlc            uint64
	// sawPrev: the DC had applied the previous write when this one was
	// made (the client read it there first).
	sawPrev bool
}

type chainResult struct {
	writes []chainWrite
	err    error
}

// runChain writes steps causally chained values to key, each at a random
// DC other than the previous one, pausing up to maxPause between them.
func runChain(c *cluster, key string, steps int, maxPause time.Duration, rng *rand.Rand) chainResult {
	var r chainResult
	ctx := "" // the context the client carries: the last write's answer
	prev := ""
	for i := range steps {
		repl.Hold(time.Duration(rng.Int64N(int64(maxPause))), nil)
		var m *member
		for m == nil || m.name == prev {
			m = c.members[rng.IntN(len(c.members))]
		}
		value := fmt.Sprintf("%s-step%03d", strings.TrimPrefix(key, lwwPrefix), i)
		sendCtx, sawPrev := ctx, false
		if i > 0 && rng.IntN(2) == 0 {
			// Read at the DC once it has the previous write, and write with
			// what the read returned.
			last := r.writes[len(r.writes)-1]
			pdc, pn, _ := sidecar.ParseDot(last.dot)
			err := repl.WaitFor(20*time.Second, 5*time.Millisecond, func() bool {
				v, _, err := c.get(m, key)
				if err != nil {
					return false
				}
				clock, err := sidecar.ParseClock(v.Context)
				if err != nil || clock[pdc] < pn {
					return false
				}
				sendCtx = v.Context
				return true
			})
			if err != nil {
				r.err = fmt.Errorf("step %d: %s never received %s: %w", i, m.name, last.dot, err)
				return r
			}
			sawPrev = true
		}
		var vctx *string
		if i > 0 {
			vctx = &sendCtx
		}
		wr, _, err := c.write(m, key, []byte(value), vctx)
		if err != nil {
			r.err = fmt.Errorf("step %d: %w", i, err)
			return r
		}
		// The HLC of the new sibling, read back where it was written.
		v, _, err := c.get(m, key)
		if err != nil {
			r.err = fmt.Errorf("step %d: read back: %w", i, err)
			return r
		}
		var ts uint64
		for _, s := range v.Siblings {
			if s.Dot == wr.Dot {
				ts = s.HLC
			}
		}
		r.writes = append(r.writes, chainWrite{dc: m.name, value: value, dot: wr.Dot, hlc: ts, sawPrev: sawPrev})
		ctx, prev = wr.Context, m.name
	}
	return r
}

// chainSampler reads every chain key at every DC in a loop and records
// when a DC shows an earlier step than it showed before.
type chainSampler struct {
	c     *cluster
	keys  []string
	stop  chan struct{}
	reads atomic.Int64

	mu struct {
		sync.Mutex
		last       map[string]int // dc/key -> highest step shown
		violations []string
	}
}

func newChainSampler(c *cluster, keys []string) *chainSampler {
	s := &chainSampler{c: c, keys: keys, stop: make(chan struct{})}
	s.mu.last = map[string]int{}
	return s
}

func (s *chainSampler) halt() { close(s.stop) }

func (s *chainSampler) run() {
	for {
		for _, key := range s.keys {
			for _, m := range s.c.members {
				select {
				case <-s.stop:
					return
				default:
				}
				v, status, err := s.c.get(m, key)
				if err != nil || status != 200 || len(v.Values) == 0 {
					continue
				}
				s.reads.Add(1)
				shown := string(v.Values[0])
				var step int
				if _, err := fmt.Sscanf(shown[strings.LastIndex(shown, "-step")+len("-step"):], "%d", &step); err != nil {
					s.record(fmt.Sprintf("%s at %s shows %q, which no chain wrote", key, m.name, shown))
					continue
				}
				s.observe(m.name, key, step, v)
			}
		}
	}
}

func (s *chainSampler) observe(dc, key string, step int, v kvView) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := dc + "/" + key
	if last, ok := s.mu.last[k]; ok && step < last {
		s.mu.violations = append(s.mu.violations, fmt.Sprintf("%s showed step %d of %s after it had shown step %d: an earlier write overwrote a causally later one (state %s)",
			dc, step, key, last, v.Canonical()))
	}
	s.mu.last[k] = max(s.mu.last[k], step)
}

func (s *chainSampler) record(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.violations = append(s.mu.violations, v)
}

func (s *chainSampler) violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.mu.violations)
}

// checkLWW requires, at converged DCs, that every DC shows the sibling
// with the highest (HLC, DC id, counter) of each lww key, and that every
// live sibling it does not show is in some DC's conflict log. It returns a
// summary.
func checkLWW(t *testing.T, c *cluster, keys []string) string {
	t.Helper()
	logged := map[string]bool{} // dot of a discarded version
	for _, m := range c.members {
		cs, err := c.conflicts(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, cf := range cs {
			for _, d := range cf.Discarded {
				logged[cf.Key+"/"+d.Dot] = true
			}
		}
	}
	var losers, loggedLosers, multi int
	winsByDC := map[string]int{}
	for _, key := range keys {
		for i, m := range c.members {
			v, _, err := c.get(m, key)
			if err != nil {
				t.Fatal(err)
			}
			if len(v.Siblings) < 2 {
				continue
			}
			win := slices.MaxFunc(v.Siblings, func(a, b sibling) int {
				if c := cmp.Compare(a.HLC, b.HLC); c != 0 {
					return c
				}
				if c := cmp.Compare(a.Origin, b.Origin); c != 0 {
					return c
				}
				_, an, _ := sidecar.ParseDot(a.Dot)
				_, bn, _ := sidecar.ParseDot(b.Dot)
				return cmp.Compare(an, bn)
			})
			switch {
			case win.Deleted && len(v.Values) != 0:
				t.Errorf("%s at %s: the LWW winner %s is a tombstone, yet it shows %q", key, m.name, win.Dot, v.Values)
			case !win.Deleted && (len(v.Values) != 1 || string(v.Values[0]) != string(win.Value)):
				t.Errorf("%s at %s shows %q, but the sibling with the highest (HLC, DC) is %s %q (hlc %s)", key, m.name, v.Values, win.Dot, win.Value, hlc.Timestamp(win.HLC))
			}
			if i > 0 {
				continue // count each key once; the DCs are equal
			}
			multi++
			winsByDC[win.Origin]++
			for _, s := range v.Siblings {
				if s.Dot == win.Dot || s.Deleted {
					continue
				}
				losers++
				if logged[key+"/"+s.Dot] {
					loggedLosers++
				} else {
					t.Errorf("LWW loss not logged: %s of %s (value %q, hlc %s) loses to %s (hlc %s) but no DC's conflict log lists it",
						s.Dot, key, s.Value, hlc.Timestamp(s.HLC), win.Dot, hlc.Timestamp(win.HLC))
				}
			}
		}
	}
	sum := fmt.Sprintf("%d keys hold concurrent siblings at the end; %d LWW losers, %d of them logged; winners by origin %v", multi, losers, loggedLosers, winsByDC)
	t.Logf("lww: %s", sum)
	return sum
}

// checkOwnHLCRise requires that each DC's own events carry strictly rising
// HLC timestamps in the order the DC wrote them (their order in its
// stream), whatever its physical clock did. It returns how many events it
// checked.
func checkOwnHLCRise(t *testing.T, c *cluster) int {
	t.Helper()
	n := 0
	for _, dc := range c.opts.dcs {
		evs := c.streamEvents(dc)
		var last uint64
		for _, ev := range evs {
			if ev.Origin != dc {
				continue
			}
			n++
			if ev.HLC <= last {
				t.Errorf("%s's own event %s has HLC %s, not above the %s of the event it wrote before", dc, ev.Dot, hlc.Timestamp(ev.HLC), hlc.Timestamp(last))
			}
			last = ev.HLC
		}
	}
	return n
}
