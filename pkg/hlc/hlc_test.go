package hlc

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable physical clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFake(ms int64) *fakeClock { return &fakeClock{t: time.UnixMilli(ms)} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Set(ms int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = time.UnixMilli(ms)
}

func (f *fakeClock) Add(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

const t0 = 1_700_000_000_000 // 2023-11-14T22:13:20Z in Unix ms

func ts(ms uint64, l uint16) uint64 { return uint64(Make(ms, l)) }

func TestTimestampParts(t *testing.T) {
	tests := []struct {
		ms      uint64
		logical uint16
		want    string
	}{
		{0, 0, "1970-01-01T00:00:00.000Z/0"},
		{t0, 0, "2023-11-14T22:13:20.000Z/0"},
		{t0 + 123, 7, "2023-11-14T22:13:20.123Z/7"},
		{t0, 0xffff, "2023-11-14T22:13:20.000Z/65535"},
	}
	for _, tt := range tests {
		x := Make(tt.ms, tt.logical)
		if uint64(x) != tt.ms<<16|uint64(tt.logical) {
			t.Errorf("Make(%d, %d) = %#x, want physical<<16|logical", tt.ms, tt.logical, uint64(x))
		}
		if p, l := x.Split(); p != tt.ms || l != tt.logical {
			t.Errorf("Make(%d, %d).Split() = %d, %d", tt.ms, tt.logical, p, l)
		}
		if got := x.String(); got != tt.want {
			t.Errorf("Make(%d, %d).String() = %q, want %q", tt.ms, tt.logical, got, tt.want)
		}
		if got := x.Time(); got.UnixMilli() != int64(tt.ms) {
			t.Errorf("Make(%d, %d).Time() = %v", tt.ms, tt.logical, got)
		}
	}
}

// TestNow drives a clock through a script of physical-clock moves and checks
// each timestamp it returns.
func TestNow(t *testing.T) {
	type step struct {
		setMs  int64  // physical clock before the call; 0 keeps it
		remote uint64 // when non-zero, Update(remote) instead of Now
		want   uint64 // the Now result, or Last after an Update
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"follows physical time", []step{
			{setMs: t0, want: ts(t0, 0)},
			{setMs: t0 + 5, want: ts(t0+5, 0)},
			{setMs: t0 + 6, want: ts(t0+6, 0)},
		}},
		{"same millisecond counts logically", []step{
			{setMs: t0, want: ts(t0, 0)},
			{want: ts(t0, 1)},
			{want: ts(t0, 2)},
			{setMs: t0 + 1, want: ts(t0+1, 0)},
		}},
		{"backward jump of 10s stays monotonic", []step{
			{setMs: t0 + 10_000, want: ts(t0+10_000, 0)},
			{setMs: t0, want: ts(t0+10_000, 1)},
			{setMs: t0 + 5_000, want: ts(t0+10_000, 2)},
			{setMs: t0 + 10_001, want: ts(t0+10_001, 0)},
		}},
		{"logical overflow carries into physical", []step{
			{setMs: t0, remote: ts(t0, 0xfffe), want: ts(t0, 0xfffe)},
			{want: ts(t0, 0xffff)},
			{want: ts(t0+1, 0)},
			{want: ts(t0+1, 1)},
		}},
		{"remote ahead within drift pulls the clock forward", []step{
			{setMs: t0, want: ts(t0, 0)},
			{remote: ts(t0+2_000, 3), want: ts(t0+2_000, 3)},
			{want: ts(t0+2_000, 4)},
			{setMs: t0 + 2_001, want: ts(t0+2_001, 0)},
		}},
		{"remote behind changes nothing", []step{
			{setMs: t0, want: ts(t0, 0)},
			{remote: ts(t0-1_000, 9), want: ts(t0, 0)},
			{want: ts(t0, 1)},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t0)
			c := New(f.Now, 5*time.Second)
			for i, s := range tt.steps {
				if s.setMs != 0 {
					f.Set(s.setMs)
				}
				var got uint64
				if s.remote != 0 {
					if err := c.Update(s.remote); err != nil {
						t.Fatalf("step %d: Update(%s): %v", i, Timestamp(s.remote), err)
					}
					got = c.Last()
				} else {
					got = c.Now()
				}
				if got != s.want {
					t.Fatalf("step %d: got %s, want %s", i, Timestamp(got), Timestamp(s.want))
				}
			}
		})
	}
}

func TestRestartWithHighWaterMark(t *testing.T) {
	f := newFake(t0 + 60_000)
	c := New(f.Now, time.Second)
	var persisted uint64
	for range 3 {
		persisted = c.Now()
	}

	// The process restarts on a host whose clock is a minute behind.
	f.Set(t0)
	restarted := New(f.Now, time.Second)
	restarted.Restore(persisted)
	if got := restarted.Last(); got != persisted {
		t.Fatalf("Last after Restore = %s, want %s", Timestamp(got), Timestamp(persisted))
	}
	if got := restarted.Now(); got <= persisted {
		t.Fatalf("Now after restart = %s, not after the persisted %s", Timestamp(got), Timestamp(persisted))
	}

	// Restore never lowers the clock.
	before := restarted.Last()
	restarted.Restore(ts(t0-1, 0))
	if got := restarted.Last(); got != before {
		t.Fatalf("Restore of an older mark moved Last from %s to %s", Timestamp(before), Timestamp(got))
	}
}

func TestUpdateRejectsDrift(t *testing.T) {
	tests := []struct {
		name     string
		maxDrift time.Duration
		remote   uint64
		wantErr  bool
	}{
		{"exactly at the bound", 5 * time.Second, ts(t0+5_000, 0xffff), false},
		{"one millisecond over", 5 * time.Second, ts(t0+5_001, 0), true},
		{"an hour ahead", 5 * time.Second, ts(t0+3_600_000, 0), true},
		{"far future", 5 * time.Second, ts(MaxPhysical, 0xffff), true},
		{"behind is always fine", 5 * time.Second, ts(t0-3_600_000, 0), false},
		{"check disabled", 0, ts(t0+3_600_000, 0), false},
		{"disabled check still refuses the end of time", 0, ts(MaxPhysical, 0xffff), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(newFake(t0).Now, tt.maxDrift)
			first := c.Now()
			err := c.Update(tt.remote)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Update(%s): %v", Timestamp(tt.remote), err)
				}
				return
			}
			if !errors.Is(err, ErrDrift) {
				t.Fatalf("Update(%s) = %v, want ErrDrift", Timestamp(tt.remote), err)
			}
			var de *DriftError
			if !errors.As(err, &de) || de.Remote != Timestamp(tt.remote) {
				t.Fatalf("Update(%s) = %#v, want a *DriftError naming the remote", Timestamp(tt.remote), err)
			}
			if got := c.Last(); got != first {
				t.Fatalf("rejected Update moved Last from %s to %s", Timestamp(first), Timestamp(got))
			}
		})
	}
}

func TestDriftErrorMessage(t *testing.T) {
	c := New(newFake(t0).Now, 5*time.Second)
	err := c.Update(ts(t0+12_500, 0))
	want := "hlc: remote timestamp 2023-11-14T22:13:32.500Z/0 is 12.5s ahead of local clock, over the max drift 5s"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error = %v, want prefix %q", err, want)
	}
}

func TestPhysicalClockBeforeEpoch(t *testing.T) {
	f := newFake(-5_000)
	c := New(f.Now, time.Second)
	if a, b := c.Now(), c.Now(); a != ts(0, 1) || b != ts(0, 2) {
		t.Fatalf("Now before the epoch = %s, %s; want 0 physical, counting logically", Timestamp(a), Timestamp(b))
	}
}

func TestConcurrentNowIsUniqueAndMonotonic(t *testing.T) {
	f := newFake(t0)
	c := New(f.Now, time.Second)
	const workers, perWorker = 8, 2000
	results := make([][]uint64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]uint64, 0, perWorker)
			for i := range perWorker {
				switch i % 100 {
				case 0:
					f.Add(-time.Second) // jump backwards now and then
				case 50:
					f.Add(1500 * time.Millisecond)
				case 75:
					_ = c.Update(c.Last() + 3)
				}
				out = append(out, c.Now())
			}
			results[w] = out
		}()
	}
	wg.Wait()

	seen := make(map[uint64]bool, workers*perWorker)
	for w, out := range results {
		for i, x := range out {
			if i > 0 && x <= out[i-1] {
				t.Fatalf("worker %d: Now went from %s to %s", w, Timestamp(out[i-1]), Timestamp(x))
			}
			if seen[x] {
				t.Fatalf("worker %d: timestamp %s issued twice", w, Timestamp(x))
			}
			seen[x] = true
		}
	}
}
