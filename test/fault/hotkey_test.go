package fault_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"
)

// TestHotKey (invariant 6 and the bound on siblings of docs/DESIGN.md "Data
// model"; figures in docs/RELIABILITY.md, "Hot key") writes one key from
// every DC as fast as the DCs take it, for 5 seconds (60 in the long form):
// each DC's client reads the key and writes a new value with the context it
// read (read-modify-write). A second key, under the lww rule, takes blind
// writes from every DC at the same time. A sampler reads both keys at every
// DC every 25ms. It requires, at every sample, at most one sibling per DC
// and a key count that does not move, and that the key's size (its GET
// answer) does not grow with time: the last quarter of the run may not
// exceed the first quarter's largest size by more than the digits its
// counters gained. The conflict log of the lww key is an audit record and
// grows by design; its growth rate is a figure.
func TestHotKey(t *testing.T) {
	begin := time.Now()
	seed := testSeed(t)
	runFor := pick(5*time.Second, 60*time.Second)
	c := newCluster(t, clusterOptions{mode: inProcess, reportInterval: 100 * time.Millisecond})
	dcs := c.opts.dcs
	hot, lwwHot := "hot/key", lwwPrefix+"hot"
	pad := strings.Repeat("x", 48)

	// Seed the keys, so the key count is the same from the first sample.
	for _, key := range []string{hot, lwwHot} {
		if _, _, err := c.write(c.members[0], key, []byte("seed"), nil); err != nil {
			t.Fatal(err)
		}
	}
	c.waitConverged(30 * time.Second)

	stop := make(chan struct{})
	var writes, failures atomic.Int64
	var wg sync.WaitGroup
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer halt()
	for i, dc := range dcs {
		m := c.member(dc)
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		wg.Go(func() { // read-modify-write on the hot key
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				v, _, err := c.get(m, hot)
				if err != nil {
					failures.Add(1)
					continue
				}
				ctx := v.Context
				if _, _, err := c.write(m, hot, fmt.Appendf(nil, "%s-%08d-%s", dc, n, pad), &ctx); err != nil {
					failures.Add(1)
					continue
				}
				writes.Add(1)
			}
		})
		wg.Go(func() { // blind writes on the lww key
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if rng.IntN(4) == 0 {
					repl.Hold(time.Millisecond, stop)
				}
				if _, _, err := c.write(m, lwwHot, fmt.Appendf(nil, "%s-%08d-%s", dc, n, pad), nil); err != nil {
					failures.Add(1)
					continue
				}
				writes.Add(1)
			}
		})
	}

	type sample struct {
		at               time.Duration
		size, siblings   int
		storeSibs, clock int
		keys             int
	}
	samples := map[string][]sample{} // key -> samples over every DC
	var violations []string
	tick := time.NewTicker(25 * time.Millisecond)
	start := time.Now()
	for time.Since(start) < runFor {
		<-tick.C
		for _, m := range c.members {
			for _, key := range []string{hot, lwwHot} {
				v, status, err := c.get(m, key)
				if err != nil || status != 200 {
					violations = append(violations, fmt.Sprintf("%s at %s: %d %v", key, m.name, status, err))
					continue
				}
				st, ok, err := m.node().Store().Get(key)
				if err != nil || !ok {
					t.Fatalf("%s at %s: store: %v %v", key, m.name, ok, err)
				}
				d, err := m.node().Store().Digest()
				if err != nil {
					t.Fatal(err)
				}
				s := sample{at: time.Since(start), size: v.Size, siblings: len(v.Siblings), storeSibs: len(st.Siblings), clock: len(st.Clock), keys: d.Keys}
				samples[key] = append(samples[key], s)
				if s.siblings > len(dcs) || s.storeSibs > len(dcs) {
					violations = append(violations, fmt.Sprintf("%s at %s after %s: %d siblings (store: %d), more than the %d DCs: %s",
						key, m.name, round(s.at), s.siblings, s.storeSibs, len(dcs), v.Canonical()))
				}
				if s.clock > len(dcs) {
					violations = append(violations, fmt.Sprintf("%s at %s: clock %v has more entries than DCs", key, m.name, st.Clock))
				}
				if s.keys != 2 {
					violations = append(violations, fmt.Sprintf("%s: the store holds %d keys, want 2", m.name, s.keys))
				}
			}
		}
	}
	tick.Stop()
	halt()
	took := c.waitConverged(time.Minute)
	for _, v := range violations[:min(len(violations), 20)] {
		t.Error(v)
	}

	extra := map[string]any{"writes_per_second": fmt.Sprintf("%.0f", float64(writes.Load())/runFor.Seconds()), "failed_requests": failures.Load()}
	for _, key := range []string{hot, lwwHot} {
		ss := samples[key]
		q := len(ss) / 4
		var firstMax, lastMax, maxSibs int
		var firstSum, lastSum int
		for i, s := range ss {
			maxSibs = max(maxSibs, s.siblings)
			if i < q {
				firstMax = max(firstMax, s.size)
				firstSum += s.size
			}
			if i >= len(ss)-q {
				lastMax = max(lastMax, s.size)
				lastSum += s.size
			}
		}
		// Counters gain digits as they grow: at most 3 per DC in the clock
		// and in each sibling's dot and value, over the run.
		slack := 3 * 3 * len(dcs) * 2
		if lastMax > firstMax+slack {
			t.Errorf("%s grows with time: its GET answer was at most %d bytes in the first quarter of the run, %d in the last", key, firstMax, lastMax)
		}
		desc := fmt.Sprintf("%d samples; max siblings %d; GET size max %d B (first quarter) vs %d B (last quarter), mean %d vs %d",
			len(ss), maxSibs, firstMax, lastMax, firstSum/max(q, 1), lastSum/max(q, 1))
		t.Logf("%s: %s", key, desc)
		extra[key] = desc
	}
	conflicts := 0
	for _, m := range c.members {
		cs, err := c.conflicts(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, cf := range cs {
			if cf.Key == hot {
				t.Errorf("%s logged a conflict for %s, whose siblings resolver discards nothing: %+v", m.name, hot, cf)
			}
			conflicts++
		}
	}
	extra["lww_conflict_log_entries"] = conflicts
	extra["lww_conflict_log_growth_per_second"] = fmt.Sprintf("%.1f", float64(conflicts)/runFor.Seconds())
	var outbox []string
	for _, m := range c.members {
		outbox = append(outbox, fmt.Sprintf("%s %d", m.name, m.node().Store().OutboxDepth()))
	}
	extra["outbox_depth_after"] = strings.Join(outbox, ", ")
	c.checkLogs()
	report(t, figures{
		Seed:       seed,
		Faults:     fmt.Sprintf("one key read-modify-written and one lww key blind-written from all %d DCs for %s", len(dcs), runFor),
		Operations: writes.Load() + failures.Load(),
		Acked:      writes.Load(),
		Converge:   round(took),
		Extra:      extra,
	}, begin)
}
