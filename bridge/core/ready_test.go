package core

import (
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
)

// TestReadiness walks the readiness rule through its cases: no report yet,
// a report this DC does not cover (its own row ignored), covered, latched,
// and a peer silent since the start given up on after the silence bound.
func TestReadiness(t *testing.T) {
	t0 := time.Unix(1000, 0)
	dcs := []string{"dc1", "dc2", "dc3"}
	type step struct {
		at      time.Duration
		report  string // peer whose report arrives at this step, with rep
		rep     changelog.Applied
		mine    changelog.Applied
		ready   bool
		waiting string // substring of the waiting reasons, joined
		given   string // NotWaitedFor, joined
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"waits for the first reports, then for the events they name", []step{
			{at: 0, mine: changelog.Applied{}, waiting: "dc2: its first applied-vector report|dc3: its first applied-vector report"},
			{at: time.Second, report: "dc2", rep: changelog.Applied{"dc2": {4, 0}, "dc1": {9, 9}, "dc3": {1, 0}},
				mine: changelog.Applied{"dc1": {9, 9}, "dc3": {0, 0}}, waiting: "dc2: events dc2 reported applied and this DC lacks: dc2 partition 0 up to 4 (applied 0), 2 partition(s) behind"},
			{at: 2 * time.Second, report: "dc3", rep: changelog.Applied{"dc3": {5, 5}},
				mine: changelog.Applied{"dc2": {4, 0}}, waiting: "dc3: events dc3 reported applied and this DC lacks: dc3 partition 0 up to 5 (applied 0), 2 partition(s) behind"},
			// Later reports of dc2 raise nothing: the target is its first.
			{at: 3 * time.Second, report: "dc2", rep: changelog.Applied{"dc2": {40, 40}},
				mine: changelog.Applied{"dc2": {4, 0}, "dc3": {5, 5}}, ready: true},
			// Latched: a later, lower vector changes nothing.
			{at: 4 * time.Second, mine: changelog.Applied{}, ready: true},
		}},
		{"this DC's own row in a peer's report is not waited for", []step{
			{at: 0, report: "dc2", rep: changelog.Applied{"dc1": {7, 7}}, mine: changelog.Applied{}, waiting: "dc3: its first"},
			{at: time.Second, report: "dc3", rep: changelog.Applied{"dc1": {7, 7}}, mine: changelog.Applied{}, ready: true},
		}},
		{"a peer silent since the start is given up on after the bound", []step{
			{at: time.Second, report: "dc2", rep: changelog.Applied{"dc2": {1, 1}}, mine: changelog.Applied{"dc2": {1, 1}}, waiting: "dc3: its first"},
			{at: 9 * time.Second, mine: changelog.Applied{"dc2": {1, 1}}, waiting: "dc3: its first"},
			{at: 10 * time.Second, mine: changelog.Applied{"dc2": {1, 1}}, ready: true, given: "dc3"},
		}},
		{"a silent peer given up on does not make a behind DC ready", []step{
			{at: time.Second, report: "dc2", rep: changelog.Applied{"dc2": {3, 1}}, mine: changelog.Applied{"dc2": {1, 1}}, waiting: "dc3: its first"},
			{at: 11 * time.Second, mine: changelog.Applied{"dc2": {2, 1}}, waiting: "dc2: events", given: "dc3"},
			{at: 12 * time.Second, mine: changelog.Applied{"dc2": {3, 1}}, ready: true, given: "dc3"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rd := NewReady("dc1", dcs, 10*time.Second, t0)
			for i, s := range tt.steps {
				now := t0.Add(s.at)
				if s.report != "" {
					rd.Seen(s.report, s.rep, now)
				}
				got := rd.Judge(now, func() changelog.Applied { return s.mine })
				if got.Ready != s.ready {
					t.Fatalf("step %d: ready %v, want %v (%+v)", i, got.Ready, s.ready, got)
				}
				var reasons []string
				for _, w := range got.WaitingFor {
					reasons = append(reasons, w.Peer+": "+w.Reason)
				}
				joined := strings.Join(reasons, "|")
				for _, want := range strings.Split(s.waiting, "|") {
					if want != "" && !strings.Contains(joined, want) {
						t.Errorf("step %d: waiting for %q, want it to mention %q", i, joined, want)
					}
				}
				if s.waiting == "" && len(reasons) > 0 {
					t.Errorf("step %d: still waiting for %q", i, joined)
				}
				if g := strings.Join(got.NotWaitedFor, ","); g != s.given && !got.Ready {
					t.Errorf("step %d: not waited for %q, want %q", i, g, s.given)
				}
				if got.Ready && (got.ReadyAt == nil || got.ReadyAt.Before(t0)) {
					t.Errorf("step %d: ready without a time: %+v", i, got)
				}
			}
		})
	}
}

// TestReadyPeers: each peer's state follows the age of its last report.
func TestReadyPeers(t *testing.T) {
	t0 := time.Unix(1000, 0)
	rd := NewReady("dc1", []string{"dc1", "dc2", "dc3", "dc4"}, 10*time.Second, t0)
	rd.Seen("dc2", changelog.Applied{}, t0.Add(8*time.Second))
	rd.Seen("dc3", changelog.Applied{}, t0.Add(time.Second))
	for _, tc := range []struct {
		at   time.Duration
		want string // states of dc2, dc3, dc4
	}{
		{9 * time.Second, "alive silent never reported"},
		{11 * time.Second, "alive silent unreachable"},
		{12 * time.Second, "silent unreachable unreachable"},
	} {
		var got []string
		for _, p := range rd.Peers(t0.Add(tc.at), time.Second) {
			got = append(got, p.State)
		}
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("at %s: states %q, want %q", tc.at, g, tc.want)
		}
	}
}
