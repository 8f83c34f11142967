package sim

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// seedOutcome is what one seed of a random test leaves: its first failure,
// its trace, and its figures.
type seedOutcome struct {
	err   error
	trace []string
	stats map[string]int
}

// runSeeds runs seeds first to first+n-1 with run, on every CPU (seeds are
// independent: each opens its own stores), then reports in seed order: the
// first few failures in full, with replay's command and the trace's last
// maxTrace lines, the rest in one line each, and the figures summed.
func runSeeds(t *testing.T, first uint64, n int, maxTrace int, run func(seed uint64) seedOutcome, replay func(seed uint64) string) {
	t.Helper()
	results := make([]seedOutcome, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				o := run(first + uint64(i))
				if o.err == nil {
					o.trace = nil
				}
				results[i] = o
			}
		}()
	}
	wg.Wait()
	failed := 0
	total := map[string]int{}
	for i, o := range results {
		seed := first + uint64(i)
		for k, v := range o.stats {
			total[k] += v
		}
		if o.err == nil {
			continue
		}
		failed++
		if failed > 3 {
			t.Errorf("seed %d: %s", seed, strings.SplitN(o.err.Error(), "\n", 2)[0])
			continue
		}
		tail := o.trace
		if len(tail) > maxTrace {
			tail = tail[len(tail)-maxTrace:]
		}
		t.Errorf("seed %d: %v\nreplay: %s\ntrace (last %d lines):\n  %s", seed, o.err, replay(seed), len(tail), strings.Join(tail, "\n  "))
	}
	var parts []string
	for _, k := range sortedKeys(total) {
		parts = append(parts, fmt.Sprintf("%s %d", k, total[k]))
	}
	t.Logf("%d seeds (%d to %d) in %s: %s", n, first, first+uint64(n)-1, time.Since(start).Round(time.Millisecond), strings.Join(parts, ", "))
	if failed > 0 {
		t.Errorf("%d of %d seeds failed (the first three in full above)", failed, n)
	}
}
