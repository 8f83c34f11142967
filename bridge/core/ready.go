package core

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/replicatorhq/replicator/changelog"
)

// Readiness says whether this DC has caught up since it started, for
// GET /readyz. A DC is ready once every peer that reports has been heard
// from and this DC's applied vector covers, for every origin but itself,
// what each peer had applied in the first report this DC received from it
// after starting. A peer that has not reported for SilentAfter since the
// start is not waited for. Once ready, a DC stays ready (the state is
// latched) until it restarts: lag after that is what the link figures and
// the lag metrics show.
type Readiness struct {
	Ready bool `json:"ready"`
	// Started is when the Replicator started; ReadyAt when it became ready.
	Started time.Time  `json:"started"`
	ReadyAt *time.Time `json:"ready_at,omitempty"`
	// SilentAfter is how long a peer may stay silent after the start
	// before it is no longer waited for (heal_after, or 30s when healing
	// is off).
	SilentAfter string `json:"silent_after"`
	// WaitingFor lists what the DC still waits for, one entry per peer.
	WaitingFor []ReadyWait `json:"waiting_for,omitempty"`
	// NotWaitedFor lists the peers given up on: silent since the start
	// for longer than SilentAfter.
	NotWaitedFor []string `json:"not_waited_for,omitempty"`
}

// ReadyWait is what a DC waits for from one peer before it is ready: the
// peer's first report, or the events that report named and this DC has not
// applied (the first such partition, and how many partitions lack
// events).
type ReadyWait struct {
	Peer   string `json:"peer"`
	Reason string `json:"reason"`
	// Origin, Partition, Applied and Reported name the first (origin,
	// partition) this DC lacks events of: it has applied up to Applied,
	// the peer had reported Reported.
	Origin    string `json:"origin,omitempty"`
	Partition *int   `json:"partition,omitempty"`
	Applied   uint64 `json:"applied,omitempty"`
	Reported  uint64 `json:"reported,omitempty"`
	// Behind counts the (origin, partition) pairs this DC lacks events of.
	Behind int `json:"behind,omitempty"`
}

// DefaultSilentAfter is how long readiness waits for a silent peer when
// healing is off (heal_after 0): the config's default heal_after.
const DefaultSilentAfter = 30 * time.Second

// Ready decides Readiness from the first report of each peer after
// start and this DC's applied vector, and keeps each peer's last report
// time. The clock and the applied vector come in as arguments.
type Ready struct {
	self   string
	peers  []string
	start  time.Time
	silent time.Duration

	first   map[string]changelog.Applied
	last    map[string]time.Time
	readyAt time.Time
	// notWaited is NotWaitedFor when the DC became ready.
	notWaited []string
}

// NewReady starts judging readiness at start for DC self among dcs; a
// peer silent for silent since start is not waited for.
func NewReady(self string, dcs []string, silent time.Duration, start time.Time) *Ready {
	rd := &Ready{self: self, start: start, silent: silent}
	for _, dc := range dcs {
		if dc != self {
			rd.peers = append(rd.peers, dc)
		}
	}
	rd.first = map[string]changelog.Applied{}
	rd.last = map[string]time.Time{}
	return rd
}

// Seen records a report from peer at now: the first one after start is
// kept as the target this DC must cover.
func (rd *Ready) Seen(peer string, a changelog.Applied, now time.Time) {
	if _, ok := rd.first[peer]; !ok {
		rd.first[peer] = a.Clone()
	}
	rd.last[peer] = now
}

// Judge returns the readiness at now, given this DC's applied vector
// (read only while not yet ready), and latches it once ready.
func (rd *Ready) Judge(now time.Time, mine func() changelog.Applied) Readiness {
	out := Readiness{Started: rd.start, SilentAfter: rd.silent.String()}
	if !rd.readyAt.IsZero() {
		at := rd.readyAt
		out.Ready, out.ReadyAt, out.NotWaitedFor = true, &at, slices.Clone(rd.notWaited)
		return out
	}
	own := mine()
	for _, peer := range rd.peers {
		first, ok := rd.first[peer]
		if !ok {
			if now.Sub(rd.start) >= rd.silent {
				out.NotWaitedFor = append(out.NotWaitedFor, peer)
				continue
			}
			out.WaitingFor = append(out.WaitingFor, ReadyWait{Peer: peer,
				Reason: fmt.Sprintf("its first applied-vector report since this DC started (waited %s; a peer silent for %s is not waited for)",
					now.Sub(rd.start).Round(time.Millisecond), rd.silent)})
			continue
		}
		if w, behind := rd.lacking(peer, first, own); behind {
			out.WaitingFor = append(out.WaitingFor, w)
		}
	}
	if len(out.WaitingFor) == 0 {
		rd.readyAt, rd.notWaited = now, slices.Clone(out.NotWaitedFor)
		out.Ready, out.ReadyAt = true, &now
	}
	return out
}

// lacking compares what peer first reported with own, origins other than
// this DC only, and describes the first gap.
func (rd *Ready) lacking(peer string, first, own changelog.Applied) (ReadyWait, bool) {
	w := ReadyWait{Peer: peer}
	for _, origin := range slices.Sorted(maps.Keys(first)) {
		if origin == rd.self {
			continue
		}
		have := own[origin]
		for p, want := range first[origin] {
			var h uint64
			if p < len(have) {
				h = have[p]
			}
			if h >= want {
				continue
			}
			if w.Behind == 0 {
				p := p
				w.Origin, w.Partition, w.Applied, w.Reported = origin, &p, h, want
			}
			w.Behind++
		}
	}
	if w.Behind == 0 {
		return w, false
	}
	w.Reason = fmt.Sprintf("events %s reported applied and this DC lacks: %s partition %d up to %d (applied %d), %d partition(s) behind in all",
		peer, w.Origin, *w.Partition, w.Reported, w.Applied, w.Behind)
	return w, true
}

// Peer is one peer as this DC sees it through its applied-vector
// reports.
type Peer struct {
	DC string
	// LastReport is when the peer's last report arrived; zero if none has
	// since start.
	LastReport time.Time
	// Age is the time since then (or since start, for a peer never heard
	// from).
	Age time.Duration
	// State is "alive" (a report within three report intervals), "silent"
	// (none for longer), "unreachable" (none for longer than the silence
	// bound) or "never reported" (none since start, for less than that).
	State string
}

// Peers returns each peer's report age and state at now, in DCs order,
// given the report interval.
func (rd *Ready) Peers(now time.Time, reportInterval time.Duration) []Peer {
	out := make([]Peer, 0, len(rd.peers))
	for _, dc := range rd.peers {
		ps := Peer{DC: dc}
		t, ok := rd.last[dc]
		since := rd.start
		if ok {
			ps.LastReport, since = t, t
		}
		ps.Age = max(0, now.Sub(since))
		switch {
		case ps.Age > rd.silent:
			ps.State = "unreachable"
		case !ok:
			ps.State = "never reported"
		case ps.Age > 3*reportInterval:
			ps.State = "silent"
		default:
			ps.State = "alive"
		}
		out = append(out, ps)
	}
	return out
}
