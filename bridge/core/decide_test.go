package core

import (
	"reflect"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
)

func TestCatchUp(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	c := &CatchUp{After: 5 * time.Second, Known: map[string]bool{"a": true, "b": true, "c": true}}
	// b reports its own row (and a row of c's, which does not count); z
	// is not a DC.
	peers := map[string]changelog.Applied{
		"b": {"b": {4, 2}, "c": {9, 9}},
		"z": {"z": {7, 7}},
	}
	for _, s := range []struct {
		at   int
		mine changelog.Applied
		want []Behind
	}{
		{0, changelog.Applied{"b": {1, 2}}, nil},                                        // behind from now on
		{4, changelog.Applied{"b": {1, 2}}, nil},                                        // not for long enough
		{5, changelog.Applied{"b": {2, 2}}, nil},                                        // progress restarts the wait
		{9, changelog.Applied{"b": {2, 2}}, nil},                                        //
		{10, changelog.Applied{"b": {2, 2}}, []Behind{{"b", 0, 3, 4, 5 * time.Second}}}, // stuck for 5s: repair
		{14, changelog.Applied{"b": {2, 2}}, nil},                                       // the repair counts as progress
		{15, changelog.Applied{"b": {2, 1}}, []Behind{{"b", 0, 3, 4, 5 * time.Second}}}, // partition 1 fell behind just now
		{20, changelog.Applied{"b": {2, 1}}, []Behind{{"b", 0, 3, 4, 5 * time.Second}, {"b", 1, 2, 2, 5 * time.Second}}},
		{21, changelog.Applied{"b": {4, 2}}, nil}, // caught up
		{30, changelog.Applied{"b": {4, 2}}, nil},
	} {
		if got := c.Due(at(s.at), s.mine, peers); !reflect.DeepEqual(got, s.want) {
			t.Fatalf("at %ds: due %+v, want %+v", s.at, got, s.want)
		}
	}
}

func TestReplays(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := &Replays{Every: 10 * time.Second}
	ups := []string{"b", "c"}
	for _, s := range []struct {
		at     int
		origin string
		want   []string
	}{
		{0, "b", []string{"b"}},       // the origin's own link
		{1, "z", []string{"c"}},       // no link from z: every link, b replayed just now
		{9, "b", nil},                 // too soon
		{10, "b", []string{"b"}},      //
		{12, "z", []string{"c"}},      //
		{15, "c", nil},                //
		{22, "z", []string{"b", "c"}}, //
	} {
		if got := r.Due(t0.Add(time.Duration(s.at)*time.Second), s.origin, ups); !reflect.DeepEqual(got, s.want) {
			t.Fatalf("at %ds for %s: replay %v, want %v", s.at, s.origin, got, s.want)
		}
	}
}

func TestRetention(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := &Retention{Keep: 10 * time.Second}
	type step struct {
		at          int
		last, bytes uint64
		maxBytes    int64
		cutoff      uint64
		acked       []uint64
		floor       uint64
		trim        bool
	}
	for i, s := range []step{
		{at: 0, last: 100, cutoff: 0}, // nothing old enough
		{at: 5, last: 150, cutoff: 0}, //
		{at: 10, last: 200, cutoff: 100, acked: []uint64{180, 90}, floor: 90, trim: true}, // the slowest downstream bounds it
		{at: 11, last: 210, cutoff: 0}, // the sample at 0 was used up
		{at: 15, last: 220, cutoff: 150, acked: []uint64{80, 220}, floor: 80, trim: false},                       // no further than already trimmed
		{at: 16, last: 300, bytes: 81, maxBytes: 100, cutoff: 300, acked: []uint64{250}, floor: 250, trim: true}, // over 80%: age no longer counts
		{at: 17, last: 300, bytes: 80, maxBytes: 100, cutoff: 0},                                                 // at 80%: it does
		{at: 30, last: 310, cutoff: 300},                                                                         // every sample old enough: the newest counts
	} {
		cutoff := r.Cutoff(t0.Add(time.Duration(s.at)*time.Second), s.last, s.bytes, s.maxBytes)
		if cutoff != s.cutoff {
			t.Fatalf("step %d: cutoff %d, want %d", i, cutoff, s.cutoff)
		}
		if s.acked == nil {
			continue
		}
		floor, trim := r.Floor(cutoff, s.acked)
		if floor != s.floor || trim != s.trim {
			t.Fatalf("step %d: floor %d (trim %v), want %d (%v)", i, floor, trim, s.floor, s.trim)
		}
		if trim {
			r.Trimmed(floor)
		}
	}
	for _, tc := range []struct{ floor, last, want uint64 }{
		{90, 200, 91}, // purge 1..90
		{90, 50, 50},  // the subject's last message stays
		{0, 10, 0},    // nothing acknowledged
		{5, 1, 0},     // one message only: it stays
		{200, 200, 200},
	} {
		if got := PurgeBelow(tc.floor, tc.last); got != tc.want {
			t.Errorf("PurgeBelow(%d, %d) = %d, want %d", tc.floor, tc.last, got, tc.want)
		}
	}
}

func TestReconcile(t *testing.T) {
	dcs4 := []string{"a", "b", "c", "d"}
	p := mustPlan(t, "ring", "d", dcs4, "")
	for _, tc := range []struct {
		name    string
		running map[string]Bypass
		dead    []string
		stop    []string
		start   []Bypass
	}{
		{"nothing to do", nil, nil, nil, nil},
		{"a death", nil, []string{"c"}, nil, []Bypass{{"c", "b"}}},
		{"two deaths", nil, []string{"b", "c"}, nil, []Bypass{{"b", "a"}, {"c", "b"}}},
		{"steady", map[string]Bypass{"b": {"c", "b"}}, []string{"c"}, nil, nil},
		{"a return", map[string]Bypass{"b": {"c", "b"}}, nil, []string{"b"}, nil},
		{"one of two returns", map[string]Bypass{"a": {"b", "a"}, "b": {"c", "b"}}, []string{"c"}, []string{"a"}, nil},
		{"a bypass changes", map[string]Bypass{"b": {"x", "b"}}, []string{"c"}, []string{"b"}, []Bypass{{"c", "b"}}},
	} {
		stop, start := Reconcile(tc.running, p.Heal(deadSet(tc.dead...), ""))
		if !reflect.DeepEqual(stop, tc.stop) || !reflect.DeepEqual(start, tc.start) {
			t.Errorf("%s: stop %v start %v, want stop %v start %v", tc.name, stop, start, tc.stop, tc.start)
		}
	}
}

func TestHealStart(t *testing.T) {
	for _, tc := range []struct {
		floor uint64
		found bool
		want  uint64
	}{{0, false, 0}, {7, false, 0}, {0, true, 0}, {7, true, 8}} {
		if got := HealStart(tc.floor, tc.found); got != tc.want {
			t.Errorf("HealStart(%d, %v) = %d, want %d", tc.floor, tc.found, got, tc.want)
		}
	}
}

// TestHealer: a star's standby takes over forwarding when the hub goes
// silent, and hands back once the hub has caught up.
func TestHealer(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	static := mustPlan(t, "star", "b", dcs5, "a")
	h := NewHealer(static, nil, "b", 2*time.Second, t0)
	mine := func() changelog.Applied { return changelog.Applied{"c": {3}} }
	all := func(now time.Time, dcs ...string) {
		for _, dc := range dcs {
			h.Seen(dc, now, mine)
		}
	}
	all(at(1), "a", "c", "d", "e")
	if _, _, changed := h.Tick(at(1.5), nil); changed {
		t.Fatal("changed with everyone reporting")
	}
	all(at(2), "c", "d", "e")
	all(at(3.2), "c", "d", "e")
	changes, plan, changed := h.Tick(at(3.2), nil)
	if !changed || !reflect.DeepEqual(changes, []Transition{{DC: "a", Dead: true, Silent: 2200 * time.Millisecond}}) {
		t.Fatalf("transitions %+v (changed %v), want a dead", changes, changed)
	}
	if want := []Bypass{{"a", "c"}, {"a", "d"}, {"a", "e"}}; !reflect.DeepEqual(plan.Healing, want) || !plan.Forward || !h.IsDead("a") {
		t.Fatalf("healed plan %v (forward %v), want %v forwarding", plan.Healing, plan.Forward, want)
	}
	if !plan.ShouldForward([]string{"c"}, "c") || plan.ShouldForward([]string{"c", "a"}, "c") {
		t.Fatal("the standby must forward the leaves' own events and not what the hub forwarded")
	}
	if !reflect.DeepEqual(h.Plan(), plan) {
		t.Fatal("Plan is not the healed plan")
	}
	// The hub comes back behind, then catches up.
	all(at(4), "a", "c", "d", "e")
	if _, _, changed := h.Tick(at(4), map[string]changelog.Applied{"a": {"c": {2}}}); changed {
		t.Fatal("the hub counts as back before catching up")
	}
	changes, plan, changed = h.Tick(at(4.5), map[string]changelog.Applied{"a": {"c": {3}}})
	if !changed || !reflect.DeepEqual(changes, []Transition{{DC: "a", Reason: "caught up"}}) || len(plan.Healing) != 0 || plan.Forward {
		t.Fatalf("transitions %+v, plan %+v; want the hub back and the static plan", changes, plan)
	}
}
