package bridge

import (
	"sync"
	"time"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
)

// Readiness says whether this DC has caught up since it started, for
// GET /readyz (see core.Readiness).
type Readiness = core.Readiness

// ReadyWait is what a DC waits for from one peer before it is ready (see
// core.ReadyWait).
type ReadyWait = core.ReadyWait

// defaultSilentAfter is how long readiness waits for a silent peer when
// healing is off (heal_after 0): the config's default heal_after.
const defaultSilentAfter = core.DefaultSilentAfter

// readiness guards the core's readiness judge (core.Ready): the report
// intake feeds it, and any goroutine asks it.
type readiness struct {
	mu sync.Mutex
	rd *core.Ready
}

func newReadiness(self string, dcs []string, silent time.Duration, start time.Time) *readiness {
	return &readiness{rd: core.NewReady(self, dcs, silent, start)}
}

func (r *readiness) seen(peer string, a changelog.Applied, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rd.Seen(peer, a, now)
}

func (r *readiness) judge(now time.Time, mine func() changelog.Applied) Readiness {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rd.Judge(now, mine)
}

func (r *readiness) peers(now time.Time, reportInterval time.Duration) []core.Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rd.Peers(now, reportInterval)
}

// Readiness returns whether this DC has caught up since it started (see
// Readiness). Before Start it is not ready.
func (r *Replicator) Readiness() Readiness { return r.env.readiness() }

// PeerStatus is one peer as this DC sees it through its applied-vector
// reports.
type PeerStatus struct {
	DC string
	// LastReport is when the peer's last report arrived; nil if none has
	// since this DC started.
	LastReport *time.Time
	// ReportAgeSeconds is the time since then (or since this DC started,
	// for a peer never heard from).
	ReportAgeSeconds float64
	// State is "alive" (a report within three report intervals), "silent"
	// (none for longer), "unreachable" (none for longer than heal_after,
	// or 30s when healing is off) or "never reported" (none since this
	// DC started, for less than that).
	State string
}

// Peers returns each other DC's report age and liveness, in DCs order.
func (r *Replicator) Peers() []PeerStatus {
	rd := r.env.ready.Load()
	if rd == nil {
		return nil
	}
	peers := rd.peers(r.env.now(), r.env.opts.ReportInterval)
	out := make([]PeerStatus, 0, len(peers))
	for _, p := range peers {
		ps := PeerStatus{DC: p.DC, ReportAgeSeconds: p.Age.Seconds(), State: p.State}
		if !p.LastReport.IsZero() {
			t := p.LastReport
			ps.LastReport = &t
		}
		out = append(out, ps)
	}
	return out
}
