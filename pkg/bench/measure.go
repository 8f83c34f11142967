package bench

import (
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// values hands out distinct-looking values of one size from a random pool,
// so that neither Pebble's block compression nor anything else sees the
// same bytes over and over. Values alias the pool: nobody may modify them.
type values struct {
	pool []byte
	size int
}

func newValues(size, n int) values {
	// Enough pool that consecutive values do not repeat within a Pebble
	// block or a JetStream message block.
	poolSize := min(max(1<<20, 64*size), 16<<20) + size
	pool := make([]byte, poolSize)
	rng := rand.New(rand.NewPCG(uint64(size), uint64(n)))
	for i := 0; i+8 <= len(pool); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			pool[i+j] = byte(v >> (8 * j))
		}
	}
	return values{pool: pool, size: size}
}

// at returns the value of write i.
func (v values) at(i int) []byte {
	span := len(v.pool) - v.size
	off := (i * 7919) % (span + 1)
	return v.pool[off : off+v.size : off+v.size]
}

// key returns the key of write i: every write makes a new key, so no write
// conflicts with another and the measure is replication, not resolution.
func key(i int) string { return fmt.Sprintf("bench-%09d", i) }

// percentile returns the nearest-rank q-quantile (0 < q <= 1) of sorted
// durations, in milliseconds; 0 for none.
func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	i = min(max(i, 0), len(sorted)-1)
	return ms(sorted[i])
}

func sortDurations(d []time.Duration) []time.Duration {
	slices.Sort(d)
	return d
}

// usage is a reading of the process's resource use.
type usage struct {
	cpu         time.Duration // user + system
	maxRSSBytes int64
	mallocs     uint64
	allocBytes  uint64
}

func readUsage() usage {
	cpu, rss := rusage()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return usage{cpu: cpu, maxRSSBytes: rss, mallocs: ms.Mallocs, allocBytes: ms.TotalAlloc}
}

// progress draws a bar on w until stop is called: done out of total, and a
// second figure (applied) when the phase has one.
type progress struct {
	w     io.Writer
	phase string
	total int64
	done  atomic.Int64
	// second, when secondTotal > 0, is a second bar figure: the applies of
	// the replicator phase.
	second      atomic.Int64
	secondTotal int64
	secondName  string
	start       time.Time
	stopc       chan struct{}
	exited      chan struct{}
	once        sync.Once
}

func startProgress(w io.Writer, phase string, total int64) *progress {
	p := &progress{w: w, phase: phase, total: total, start: time.Now(), stopc: make(chan struct{}), exited: make(chan struct{})}
	go p.run()
	return p
}

func (p *progress) withSecond(name string, total int64) *progress {
	p.secondName, p.secondTotal = name, total
	return p
}

func (p *progress) run() {
	defer close(p.exited)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stopc:
			p.draw()
			fmt.Fprintln(p.w)
			return
		case <-t.C:
			p.draw()
		}
	}
}

func (p *progress) draw() {
	const width = 30
	done := p.done.Load()
	frac := float64(done) / float64(max(p.total, 1))
	if p.secondTotal > 0 {
		frac = (frac + float64(p.second.Load())/float64(p.secondTotal)) / 2
	}
	fill := int(frac * width)
	fill = min(max(fill, 0), width)
	el := time.Since(p.start)
	line := fmt.Sprintf("\r%-10s [%s%s] %d/%d", p.phase, strings.Repeat("#", fill), strings.Repeat(".", width-fill), done, p.total)
	if p.secondTotal > 0 {
		line += fmt.Sprintf(", %s %d/%d", p.secondName, p.second.Load(), p.secondTotal)
	}
	line += fmt.Sprintf("  %.0f/s  %.1fs ", float64(done)/max(el.Seconds(), 1e-9), el.Seconds())
	fmt.Fprint(p.w, line)
}

// stop draws the final state and ends the bar's line. Safe to call twice.
func (p *progress) stop() {
	p.once.Do(func() { close(p.stopc) })
	<-p.exited
}
