package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// series makes samples every 10 s for d seconds, with RSS and heap given
// by f of the elapsed minutes.
func series(d int, f func(min float64) float64) []MemorySample {
	var out []MemorySample
	for s := 0; s <= d; s += 10 {
		v := f(float64(s) / 60)
		out = append(out, MemorySample{ElapsedS: float64(s), RSSMB: v, HeapInuseMB: v / 2, Goroutines: 100 + s/10})
	}
	return out
}

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		name             string
		samples          []MemorySample
		at1, end, maxRSS float64
		slope, heapSlope float64
		gAt1, gEnd, gMax int
	}{
		{name: "none"},
		{name: "flat", samples: series(600, func(float64) float64 { return 100 }),
			at1: 100, end: 100, maxRSS: 100, gAt1: 106, gEnd: 160, gMax: 160},
		{name: "grows 3 MB/min", samples: series(600, func(m float64) float64 { return 80 + 3*m }),
			at1: 83, end: 110, maxRSS: 110, slope: 3, heapSlope: 1.5, gAt1: 106, gEnd: 160, gMax: 160},
		// A warm-up spike in the first half weighs neither the slope nor
		// the figure at one minute, only the maximum.
		{name: "early spike, then flat", samples: series(600, func(m float64) float64 {
			if m > 0.4 && m < 0.6 {
				return 300
			}
			return 120
		}), at1: 120, end: 120, maxRSS: 300, gAt1: 106, gEnd: 160, gMax: 160},
		// Shorter than a minute: the figure at one minute is the last.
		{name: "30 s", samples: series(30, func(m float64) float64 { return 50 + 60*m }),
			at1: 80, end: 80, maxRSS: 80, slope: 60, heapSlope: 30, gAt1: 103, gEnd: 103, gMax: 103},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := summarize(tc.samples)
			for _, c := range []struct {
				name      string
				got, want float64
			}{
				{"rss_at_1min_mb", s.RSSAt1MinMB, tc.at1},
				{"rss_end_mb", s.RSSEndMB, tc.end},
				{"rss_max_mb", s.RSSMaxMB, tc.maxRSS},
				{"rss_slope_mb_per_min", s.RSSSlopeMBPerMin, tc.slope},
				{"heap_slope_mb_per_min", s.HeapSlopeMBPerMin, tc.heapSlope},
				{"heap_end_mb", s.HeapEndMB, tc.end / 2},
				{"goroutines_at_1min", float64(s.GoroutinesAt1Min), float64(tc.gAt1)},
				{"goroutines_end", float64(s.GoroutinesEnd), float64(tc.gEnd)},
				{"goroutines_max", float64(s.GoroutinesMax), float64(tc.gMax)},
			} {
				if math.Abs(c.got-c.want) > 1e-9 {
					t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
				}
			}
		})
	}
}

func TestSlope(t *testing.T) {
	for _, tc := range []struct {
		x, y []float64
		want float64
	}{
		{nil, nil, 0},
		{[]float64{1}, []float64{5}, 0},
		{[]float64{2, 2}, []float64{1, 9}, 0}, // no spread in x
		{[]float64{0, 1, 2, 3}, []float64{1, 3, 5, 7}, 2},
		{[]float64{0, 1, 2, 3}, []float64{7, 5, 3, 1}, -2},
		// Noise around a flat line fits a slope of 0.
		{[]float64{0, 1, 2, 3}, []float64{10, 12, 12, 10}, 0},
	} {
		if got := slope(tc.x, tc.y); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("slope(%v, %v) = %v, want %v", tc.x, tc.y, got, tc.want)
		}
	}
}

// TestHighs checks that concurrent records keep the highest sequence per
// origin and partition.
func TestHighs(t *testing.T) {
	h := newHighs(2, 3)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := uint64(1); seq <= 1000; seq++ {
				h.record(g%2, uint32(seq%3), seq+uint64(g))
			}
		}()
	}
	wg.Wait()
	got := h.targets()
	// Origin 0 has writers g = 0, 2, 4, 6; its highest is 1000+6 at
	// partition 1000 % 3 = 1, and 999+6 at 0, 998+6 at 2.
	want := [][]uint64{{1005, 1006, 1004}, {1006, 1007, 1005}}
	for o := range want {
		for p := range want[o] {
			if got[o][p] != want[o][p] {
				t.Errorf("targets()[%d][%d] = %d, want %d", o, p, got[o][p], want[o][p])
			}
		}
	}
}

// TestTimedRun writes for a short while over fewer keys than writes and
// checks the memory series, its summary and convergence.
func TestTimedRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var progress bytes.Buffer
	res, err := Run(ctx, Options{
		DCs: 2, Concurrency: 4, Rate: 300, Duration: 2 * time.Second, Keys: 50,
		SampleEvery: 200 * time.Millisecond, Dir: t.TempDir(), Progress: &progress,
	})
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}
	if !res.Converged {
		t.Error("converged = false after a timed run")
	}
	// Writes are paced at 300/s for 2 s: never more than the rate allows,
	// and more than the key space, so keys were overwritten (a loaded
	// machine may fall behind the rate).
	if res.Writes < 150 || res.Writes > 660 {
		t.Errorf("writes = %d in 2 s at 300/s, want at most about 600 and well above the 50 keys", res.Writes)
	}
	if res.BaselineMsgsPerS != 0 || res.KVPutsPerS != 0 {
		t.Errorf("a timed run ran the references: baseline %.0f, KV %.0f", res.BaselineMsgsPerS, res.KVPutsPerS)
	}
	// About 11 (one at the start, one per tick, one at the end); a loaded
	// machine may drop a few ticks.
	if n := len(res.MemorySamples); n < 5 || n > 14 {
		t.Fatalf("%d memory samples in 2 s every 200 ms, want about 11", n)
	}
	prev := -1.0
	for i, s := range res.MemorySamples {
		if s.ElapsedS <= prev {
			t.Errorf("sample %d at %.3f s is not after the previous one at %.3f s", i, s.ElapsedS, prev)
		}
		prev = s.ElapsedS
		if s.HeapInuseMB <= 0 || s.Goroutines <= 0 || s.PebbleDiskMB <= 0 || s.NATSDiskMB <= 0 {
			t.Errorf("sample %d lacks a figure: %+v", i, s)
		}
		if runtime.GOOS == "linux" && s.RSSMB <= 0 {
			t.Errorf("sample %d has no RSS on linux: %+v", i, s)
		}
	}
	if last := res.MemorySamples[len(res.MemorySamples)-1]; last.Writes != int64(res.Writes) {
		t.Errorf("the last sample counts %d writes, the run %d", last.Writes, res.Writes)
	}
	if res.Memory == nil || *res.Memory != summarize(res.MemorySamples) {
		t.Errorf("memory summary %+v is not the summary of the samples", res.Memory)
	}
	var out bytes.Buffer
	if err := WriteJSON(&out, res); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"memory_samples", "memory", "duration_s", "keys"} {
		if _, ok := m[k]; !ok {
			t.Errorf("the JSON form lacks %q", k)
		}
	}
	var table strings.Builder
	WriteTable(&table, res)
	if !strings.Contains(table.String(), "RSS at 1 min") {
		t.Errorf("the table lacks the memory summary:\n%s", table.String())
	}
}

func TestValidateTimed(t *testing.T) {
	o := Options{Topology: "mesh", DCs: 3, Writes: 1, ValueSize: 10, Concurrency: 1, Via: ViaHTTP, Partitions: 16,
		Duration: time.Minute, Keys: 0, SampleEvery: time.Millisecond}
	err := o.Validate()
	if err == nil {
		t.Fatal("Validate accepted a timed run via http with no keys and a 1 ms sample interval")
	}
	for _, want := range []string{"keys 0", "sample-every 1ms", `via "http"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %q does not mention %s", err, want)
		}
	}
}
