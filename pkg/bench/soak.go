package bench

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync/atomic"
	"time"

	"github.com/replicatorhq/replicator/changelog"
)

// MemorySample is one reading of the process during a timed run
// (Options.Duration).
type MemorySample struct {
	// ElapsedS is the time since the first write, in seconds.
	ElapsedS float64 `json:"elapsed_s"`
	// RSSMB is the resident set (/proc/self/statm); 0 where unknown.
	RSSMB float64 `json:"rss_mb"`
	// HeapInuseMB is the Go heap's in-use spans (runtime.MemStats.HeapInuse).
	HeapInuseMB float64 `json:"heap_inuse_mb"`
	Goroutines  int     `json:"goroutines"`
	// OutboxDepth is the unpublished events summed over the DCs.
	OutboxDepth uint64 `json:"outbox_depth"`
	// PebbleDiskMB is the DCs' Pebble disk usage; PebbleCacheMB their block
	// caches' contents and PebbleMemtableMB their memtables, which count in
	// the RSS.
	PebbleDiskMB     float64 `json:"pebble_disk_mb"`
	PebbleCacheMB    float64 `json:"pebble_cache_mb"`
	PebbleMemtableMB float64 `json:"pebble_memtable_mb"`
	// NATSDiskMB is the embedded NATS server's store directory.
	NATSDiskMB float64 `json:"nats_disk_mb"`
	// Writes is the number of acknowledged writes so far.
	Writes int64 `json:"writes"`
}

// MemorySummary condenses the samples of a timed run.
type MemorySummary struct {
	// The figures at the first sample at or after one minute (the last
	// sample if the run was shorter), at the last sample, and the largest.
	RSSAt1MinMB  float64 `json:"rss_at_1min_mb"`
	RSSEndMB     float64 `json:"rss_end_mb"`
	RSSMaxMB     float64 `json:"rss_max_mb"`
	HeapAt1MinMB float64 `json:"heap_at_1min_mb"`
	HeapEndMB    float64 `json:"heap_end_mb"`
	HeapMaxMB    float64 `json:"heap_max_mb"`
	// The slopes are least-squares fits over the samples of the second half
	// of the run, in MB per minute: about 0 when memory is flat.
	RSSSlopeMBPerMin  float64 `json:"rss_slope_mb_per_min"`
	HeapSlopeMBPerMin float64 `json:"heap_slope_mb_per_min"`
	GoroutinesAt1Min  int     `json:"goroutines_at_1min"`
	GoroutinesEnd     int     `json:"goroutines_end"`
	GoroutinesMax     int     `json:"goroutines_max"`
}

// summarize condenses samples taken in order; the zero summary for none.
func summarize(samples []MemorySample) MemorySummary {
	var s MemorySummary
	if len(samples) == 0 {
		return s
	}
	at1 := samples[len(samples)-1]
	for _, m := range samples {
		if m.ElapsedS >= 60 {
			at1 = m
			break
		}
	}
	end := samples[len(samples)-1]
	s.RSSAt1MinMB, s.HeapAt1MinMB, s.GoroutinesAt1Min = at1.RSSMB, at1.HeapInuseMB, at1.Goroutines
	s.RSSEndMB, s.HeapEndMB, s.GoroutinesEnd = end.RSSMB, end.HeapInuseMB, end.Goroutines
	var xs, rss, heap []float64
	for _, m := range samples {
		s.RSSMaxMB = max(s.RSSMaxMB, m.RSSMB)
		s.HeapMaxMB = max(s.HeapMaxMB, m.HeapInuseMB)
		s.GoroutinesMax = max(s.GoroutinesMax, m.Goroutines)
		if m.ElapsedS >= end.ElapsedS/2 {
			xs = append(xs, m.ElapsedS/60)
			rss = append(rss, m.RSSMB)
			heap = append(heap, m.HeapInuseMB)
		}
	}
	s.RSSSlopeMBPerMin = slope(xs, rss)
	s.HeapSlopeMBPerMin = slope(xs, heap)
	return s
}

// slope is the least-squares slope of y over x; 0 for fewer than two
// distinct x.
func slope(x, y []float64) float64 {
	n := float64(len(x))
	if len(x) < 2 {
		return 0
	}
	var sx, sy float64
	for i := range x {
		sx += x[i]
		sy += y[i]
	}
	mx, my := sx/n, sy/n
	var sxy, sxx float64
	for i := range x {
		sxy += (x[i] - mx) * (y[i] - my)
		sxx += (x[i] - mx) * (x[i] - mx)
	}
	if sxx == 0 {
		return 0
	}
	return sxy / sxx
}

// memSampler reads the process's memory, the DCs' outboxes and their
// Pebble stores every interval until its context ends, then once more.
type memSampler struct {
	stores  []*changelog.Store
	natsDir string
	t0      time.Time
	writes  *atomic.Int64
	samples []MemorySample
}

func (m *memSampler) run(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	m.sample()
	for {
		select {
		case <-ctx.Done():
			m.sample()
			return
		case <-tick.C:
			m.sample()
		}
	}
}

func (m *memSampler) sample() {
	const mb = 1 << 20
	s := MemorySample{ElapsedS: time.Since(m.t0).Seconds(), Goroutines: runtime.NumGoroutine(), Writes: m.writes.Load()}
	if rss, ok := currentRSS(); ok {
		s.RSSMB = float64(rss) / mb
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.HeapInuseMB = float64(ms.HeapInuse) / mb
	for _, st := range m.stores {
		s.OutboxDepth += st.OutboxDepth()
		pm := st.DB().Metrics()
		s.PebbleDiskMB += float64(pm.DiskSpaceUsage()) / mb
		s.PebbleCacheMB += float64(pm.BlockCache.Size) / mb
		s.PebbleMemtableMB += float64(pm.MemTable.Size) / mb
	}
	s.NATSDiskMB = float64(dirSize(m.natsDir)) / mb
	m.samples = append(m.samples, s)
}

// dirSize sums the sizes of the regular files under dir, skipping what
// vanishes or cannot be read while it walks.
func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			n += info.Size()
		}
		return nil
	})
	return n
}

// highs records, by origin and partition, the highest sequence number
// acknowledged: all a timed run keeps per write, so its own bookkeeping
// does not grow with the run.
type highs [][]atomic.Uint64

func newHighs(dcs, partitions int) highs {
	h := make(highs, dcs)
	for i := range h {
		h[i] = make([]atomic.Uint64, partitions)
	}
	return h
}

func (h highs) record(origin int, p uint32, seq uint64) {
	a := &h[origin][p]
	for {
		cur := a.Load()
		if seq <= cur || a.CompareAndSwap(cur, seq) {
			return
		}
	}
}

func (h highs) targets() [][]uint64 {
	out := make([][]uint64, len(h))
	for o := range h {
		out[o] = make([]uint64, len(h[o]))
		for p := range h[o] {
			out[o][p] = h[o][p].Load()
		}
	}
	return out
}

// waitApplied polls until every DC has applied every other origin's
// sequence numbers up to target, and returns when it saw that.
func waitApplied(ctx context.Context, stores []*changelog.Store, names []string, target [][]uint64, timeout time.Duration) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for {
		if appliedAll(stores, names, target) {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-deadline.C:
			return time.Time{}, fmt.Errorf("bench: not every DC applied every write within %s; raise --timeout or look at the nodes' logs", timeout)
		case <-tick.C:
		}
	}
}

func appliedAll(stores []*changelog.Store, names []string, target [][]uint64) bool {
	for d, st := range stores {
		a := st.Applied()
		for o, row := range target {
			if o == d {
				continue
			}
			got := a[names[o]]
			for p, hi := range row {
				if hi > 0 && (p >= len(got) || got[p] < hi) {
					return false
				}
			}
		}
	}
	return true
}

// runTimed writes for o.Duration at o.Rate over o.Keys keys, sampling
// memory every o.SampleEvery, then waits until every DC has applied every
// write. It fills in the replicator's figures of res and its memory series.
func runTimed(ctx context.Context, o Options, dir string, vals values, res *Result) error {
	phaseStart := time.Now()
	peakReset := resetPeakRSS()
	c, err := startCluster(ctx, o, dir)
	if err != nil {
		return err
	}
	defer c.close()
	fmt.Fprintf(o.Progress, "replicator: %d DCs (%s) on embedded NATS; writing for %s at %.0f/s over %d keys of %d B by %d writers; memory every %s\n",
		o.DCs, o.Topology, o.Duration, o.Rate, o.Keys, o.ValueSize, o.Concurrency, o.SampleEvery)
	stores := c.stores()
	settle()
	expect := int64(o.Rate * o.Duration.Seconds())
	if expect == 0 {
		expect = 1
	}
	bar := startProgress(o.Progress, "timed", expect)
	defer bar.stop()
	before := readUsage()
	stopProfiles, err := startProfiles(o)
	if err != nil {
		return err
	}
	defer stopProfiles()
	t0 := time.Now()
	hs := newHighs(o.DCs, o.Partitions)
	mem := &memSampler{stores: stores, natsDir: filepath.Join(dir, "nats"), t0: t0, writes: &bar.done}
	mctx, stopMem := context.WithCancel(ctx)
	defer stopMem()
	memDone := make(chan struct{})
	go func() {
		defer close(memDone)
		mem.run(mctx, o.SampleEvery)
	}()
	w := &writers{o: o, nodes: c.nodes, vals: vals, t0: t0, done: &bar.done, until: t0.Add(o.Duration), highs: hs}
	_, werr := w.run(ctx)
	acked := time.Since(t0)
	stopMem()
	<-memDone
	if werr != nil {
		return werr
	}
	writes := int(bar.done.Load())
	if o.MemProfile != nil {
		runtime.GC() // the heap profile shows the live heap as of the last GC
		if err := pprof.Lookup("heap").WriteTo(o.MemProfile, 0); err != nil {
			return fmt.Errorf("bench: heap profile: %w", err)
		}
	}
	coveredAt, err := waitApplied(ctx, stores, c.names, hs.targets(), o.Timeout)
	after := readUsage()
	stopProfiles()
	bar.stop()
	if err != nil {
		return err
	}
	total := coveredAt.Sub(t0)
	res.Writes = writes
	res.WritesPerS = float64(writes) / total.Seconds()
	res.AckedWritesPerS = float64(writes) / acked.Seconds()
	res.ConvergeTailMS = ms(total - acked)
	res.MemorySamples = mem.samples
	sum := summarize(mem.samples)
	res.Memory = &sum
	for _, s := range mem.samples {
		res.MaxOutboxDepth = max(res.MaxOutboxDepth, s.OutboxDepth)
	}
	fillUsage(res, before, after, writes, peakReset)
	o.Writes = max(writes, 1)
	if err := c.measure(ctx, o, res); err != nil {
		return err
	}
	res.ReplicatorMS = ms(time.Since(phaseStart))
	fmt.Fprintf(o.Progress, "replicator: %d writes in %s, RSS %.0f MB at 1 min, %.0f MB at the end (%+.2f MB/min over the second half)\n",
		writes, o.Duration, sum.RSSAt1MinMB, sum.RSSEndMB, sum.RSSSlopeMBPerMin)
	return nil
}
