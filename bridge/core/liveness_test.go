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
