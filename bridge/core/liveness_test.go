package core

import (
	"reflect"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
)

// TestLiveness walks one DC's view of two peers through silence, return
// and catch-up, with an injected clock.
func TestLiveness(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	mine := changelog.Applied{"a": {5, 3}, "b": {7, 0}, "c": {2, 2}}
	lv := NewLiveness("a", []string{"a", "b", "c"}, 2*time.Second, t0)
	snap := func() changelog.Applied { return mine }
	steps := []struct {
		at     float64
		report []string // DCs reporting just before the tick
		peers  map[string]changelog.Applied
		want   []Transition
		dead   []string
	}{
		// Both peers report; nobody is dead, even past the start's grace.
		{at: 1, report: []string{"b", "c"}},
		{at: 2.5, report: []string{"b", "c"}},
		// b goes silent: dead once silent for longer than 2s.
		{at: 4, report: []string{"c"}},
		{at: 4.6, report: []string{"c"}, want: []Transition{{DC: "b", Dead: true, Silent: 2101 * time.Millisecond}}, dead: []string{"b"}},
		// b reports again but has not caught up (b's row is left out of
		// the target; c's row of mine is not covered): still dead.
		{at: 5, report: []string{"b", "c"}, peers: map[string]changelog.Applied{"b": {"a": {5, 3}, "b": {9, 9}, "c": {1, 2}}}, dead: []string{"b"}},
		// It catches up: alive again at once.
		{at: 5.5, report: []string{"b", "c"}, peers: map[string]changelog.Applied{"b": {"a": {5, 3}, "b": {9, 9}, "c": {2, 2}}},
			want: []Transition{{DC: "b", Reason: "caught up"}}},
		// c goes silent and comes back without catching up: alive after
		// reporting for 2s.
		{at: 8, report: []string{"b"}, want: []Transition{{DC: "c", Dead: true, Silent: 2501 * time.Millisecond}}, dead: []string{"c"}},
		{at: 8.5, report: []string{"b", "c"}, peers: map[string]changelog.Applied{"c": {}}, dead: []string{"c"}},
		{at: 10, report: []string{"b", "c"}, peers: map[string]changelog.Applied{"c": {}}, dead: []string{"c"}},
		{at: 10.5, report: []string{"b", "c"}, peers: map[string]changelog.Applied{"c": {}}, want: []Transition{{DC: "c", Reason: "reporting again for heal_after"}}},
		// A DC that comes back and goes silent again stays dead.
		{at: 13, report: []string{"c"}, want: []Transition{{DC: "b", Dead: true, Silent: 2501 * time.Millisecond}}, dead: []string{"b"}},
		{at: 13.5, report: []string{"b", "c"}, peers: map[string]changelog.Applied{}, dead: []string{"b"}},
		{at: 16, report: []string{"c"}, dead: []string{"b"}},
		{at: 17, report: []string{"c"}, dead: []string{"b"}},
	}
	for i, s := range steps {
		now := at(s.at)
		for _, dc := range s.report {
			lv.Seen(dc, now.Add(-time.Millisecond), snap)
		}
		got := lv.Tick(now, s.peers)
		if !reflect.DeepEqual(got, s.want) {
			t.Fatalf("step %d at %.1fs: transitions %+v, want %+v", i, s.at, got, s.want)
		}
		for _, dc := range []string{"b", "c"} {
			want := false
			for _, d := range s.dead {
				want = want || d == dc
			}
			if lv.IsDead(dc) != want {
				t.Fatalf("step %d at %.1fs: %s dead = %v, want %v", i, s.at, dc, lv.IsDead(dc), want)
			}
		}
	}
	lv.Seen("zz", at(20), snap) // unknown DCs are ignored
	if _, ok := lv.last["zz"]; ok {
		t.Error("liveness tracks a DC not in the deployment")
	}
}

// TestCoverage: a shard owning partitions 1 and 3 counts a peer as
// reporting at the oldest of the latest reports covering each of them;
// reports of the peer's other shards, covering other partitions, keep
// nothing alive, and a report without partitions covers every one.
func TestCoverage(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	c := NewCoverage([]uint32{3, 1}, 4, t0)
	steps := []struct {
		dc    string
		parts []uint32
		now   int
		want  int
	}{
		{"b", []uint32{0, 2}, 1, 0}, // b's other shard: nothing of mine
		{"b", []uint32{1, 3}, 2, 2}, // the shard owning mine
		{"b", []uint32{0, 2}, 5, 2}, // only the other shard goes on
		{"b", []uint32{1}, 6, 2},    // 3 still last covered at 2
		{"b", []uint32{3}, 7, 6},
		{"c", nil, 8, 8}, // one sidecar: every partition
		{"c", []uint32{0, 1, 2, 3}, 9, 9},
	}
	for i, s := range steps {
		if got := c.Seen(s.dc, s.parts, at(s.now)); !got.Equal(at(s.want)) {
			t.Errorf("step %d: %s reports %v at %ds: covered at %s, want %ds", i, s.dc, s.parts, s.now, got.Sub(t0), s.want)
		}
	}
	all := NewCoverage(nil, 2, t0)
	if got := all.Seen("b", []uint32{0}, at(3)); !got.Equal(t0) {
		t.Errorf("an unsharded sidecar hearing one of two partitions: covered at %s, want the start", got.Sub(t0))
	}
	if got := all.Seen("b", []uint32{1}, at(4)); !got.Equal(at(3)) {
		t.Errorf("then the other: covered at %s, want 3s", got.Sub(t0))
	}
}

// TestCoverageSilentOn: the expirer's question (invariant 14 with shards,
// invariant 16) is asked per partition. A sidecar owning every partition
// hears dc1 of two shards, one of which stops reporting: dc1 is silent
// past the bound on the stopped shard's partitions only, while the
// DC-wide answer (Seen's, the oldest) is silent on all. A DC of one
// sidecar speaks for every partition, and a DC never heard from counts
// from the start.
func TestCoverageSilentOn(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	const bound = 2 * time.Second
	c := NewCoverage(nil, 4, t0)
	c.Seen("dc1", []uint32{0, 2}, at(1))
	c.Seen("dc1", []uint32{1, 3}, at(1))
	c.Seen("dc3", nil, at(1))
	c.Seen("dc1", []uint32{0, 2}, at(5)) // shard 1 of dc1 has stopped
	c.Seen("dc3", nil, at(5))
	if got := c.Seen("dc1", []uint32{0, 2}, at(5)); !got.Equal(at(1)) {
		t.Fatalf("dc1 covered at %s, want 1s (the oldest partition's report)", got.Sub(t0))
	}
	for _, tt := range []struct {
		dc     string
		p      uint32
		now    int
		silent bool
	}{
		{"dc1", 0, 5, false}, {"dc1", 2, 5, false}, // shard 0 runs
		{"dc1", 1, 5, true}, {"dc1", 3, 5, true}, // shard 1 stopped at 1s
		{"dc1", 1, 3, false}, // not yet past the bound
		{"dc3", 0, 5, false}, {"dc3", 3, 5, false},
		{"dc4", 0, 2, false}, {"dc4", 0, 3, true}, // never heard: from the start
	} {
		if got := c.SilentOn(tt.dc, tt.p, at(tt.now), bound); got != tt.silent {
			t.Errorf("SilentOn(%s, partition %d) at %ds = %v, want %v", tt.dc, tt.p, tt.now, got, tt.silent)
		}
	}
	// A shard owning 1 and 3 still answers for the partitions it does not
	// own, from the reports that spoke for them.
	sh := NewCoverage([]uint32{1, 3}, 4, t0)
	sh.Seen("dc1", []uint32{0, 2}, at(5))
	if sh.SilentOn("dc1", 0, at(5), bound) || !sh.SilentOn("dc1", 1, at(5), bound) {
		t.Errorf("a shard owning 1 and 3: dc1 reported on 0 at 5s and never on 1; got silent on 0 %v, on 1 %v",
			sh.SilentOn("dc1", 0, at(5), bound), sh.SilentOn("dc1", 1, at(5), bound))
	}
}

// TestParsePartitions: the header round-trips, and anything else is
// refused naming the entry.
func TestParsePartitions(t *testing.T) {
	if got, err := ParsePartitions(FormatPartitions([]uint32{0, 4, 8}), 16); err != nil || !reflect.DeepEqual(got, []uint32{0, 4, 8}) {
		t.Fatalf("round trip: %v %v", got, err)
	}
	if got, err := ParsePartitions("", 16); err != nil || got != nil {
		t.Fatalf("no header: %v %v, want every partition (nil)", got, err)
	}
	for _, bad := range []string{"16", "1,,2", "-1", "a", "1, 2", "99999999999"} {
		if _, err := ParsePartitions(bad, 16); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}
