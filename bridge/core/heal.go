package core

import (
	"maps"
	"slices"
	"strings"

	"github.com/replicatorhq/replicator/pkg/config"
)

// Bypass is one upstream a DC consumes through a heal consumer while a DC
// is unreachable: it reads Via's stream in place of Dead, the DC that
// normally consumes that stream and forwards what it holds.
type Bypass struct {
	// Dead is the unreachable DC whose consumer on Via's stream this one
	// stands in for.
	Dead string
	// Via is the DC whose stream the heal consumer reads.
	Via string
}

// Heal returns the effective plan of this DC while the DCs for which dead
// reports true are unreachable; standby is the star's standby hub, or "".
// It is pure: the static plan is not changed, and the result depends on
// nothing else.
//
//	mesh: nothing to heal; every DC already consumes every other.
//	ring: when the predecessor is dead, this DC also consumes the nearest
//	      live predecessor, skipping consecutive dead DCs, and the streams
//	      of the dead DCs it skips but the first (which it consumes
//	      already), so their last events are not stranded. The forwarding
//	      rule is the static one. With no live DC left besides this one
//	      nothing changes.
//	star: when the hub is dead and standby is set and live, the standby
//	      consumes every other leaf and forwards their events as the hub
//	      does, and the other leaves also consume the standby.
//
// A returning DC needs nothing from this: its durable consumers kept their
// place, and once the others drop their heal consumers the static wiring
// carries everything again. Duplicates the overlap brings are dropped by
// the store (Apply is idempotent) and forwarded only on first apply, and
// loops by Accept.
func (p Plan) Heal(dead func(dc string) bool, standby string) Plan {
	h := p
	h.Healing = nil
	switch p.Topology {
	case config.Ring:
		n := len(p.dcs)
		i := slices.Index(p.dcs, p.DC)
		if i < 0 || !dead(p.dcs[(i+n-1)%n]) {
			return h
		}
		// Walk back over the dead predecessors: each one's stream is read
		// in place of the dead DC after it (its static consumer), ending
		// at the nearest live predecessor.
		for k := 2; k < n; k++ {
			via := p.dcs[(i+n-k)%n]
			h.Healing = append(h.Healing, Bypass{Dead: p.dcs[(i+n-k+1)%n], Via: via})
			if !dead(via) {
				return h
			}
		}
		h.Healing = nil // every other DC is dead: nobody to heal through
		return h
	case config.Star:
		if standby == "" || standby == p.hub || !slices.Contains(p.dcs, standby) || !dead(p.hub) {
			return h
		}
		if p.DC == standby {
			for _, dc := range p.dcs {
				if dc != p.DC && dc != p.hub {
					h.Healing = append(h.Healing, Bypass{Dead: p.hub, Via: dc})
				}
			}
			h.Forward = len(h.Healing) > 0
			h.relay = h.Forward
			return h
		}
		if p.DC != p.hub && !dead(standby) {
			h.Healing = []Bypass{{Dead: p.hub, Via: standby}}
		}
		return h
	}
	return h
}

// EffectiveUpstreams returns the static upstreams and those of Healing,
// sorted.
func (p Plan) EffectiveUpstreams() []string {
	ups := slices.Clone(p.Upstreams)
	for _, b := range p.Healing {
		if !slices.Contains(ups, b.Via) {
			ups = append(ups, b.Via)
		}
	}
	slices.Sort(ups)
	return ups
}

// Reconcile compares the heal links running, by upstream, with the
// bypasses plan wants, and returns the upstreams whose links must stop
// (sorted) and the bypasses whose links must start (by upstream, sorted).
// A link whose bypass changed is both stopped and started. A driver stops
// the links first, then puts plan in force (so a standby forwards from the
// first event it takes in place of the hub), then starts the new ones.
func Reconcile(running map[string]Bypass, plan Plan) (stop []string, start []Bypass) {
	want := map[string]Bypass{}
	for _, b := range plan.Healing {
		want[b.Via] = b
	}
	for _, up := range slices.Sorted(maps.Keys(running)) {
		if b, ok := want[up]; !ok || b != running[up] {
			stop = append(stop, up)
		}
	}
	for _, up := range slices.Sorted(maps.Keys(want)) {
		if b, ok := running[up]; !ok || b != want[up] {
			start = append(start, want[up])
		}
	}
	return stop, start
}

// HealStart returns the stream sequence a heal consumer on a stream starts
// at, given the ack floor of the dead DC's consumer on that stream (found
// false when the dead DC has none): one past the floor, so that the heal
// consumer reads what the dead DC has not, and not the whole stream. What
// the dead DC acknowledged but had not yet forwarded when it died is
// missing there; gap repair and the catch-up from the origin fetch it. 0
// means the whole stream.
func HealStart(floor uint64, found bool) uint64 {
	if !found || floor == 0 {
		return 0
	}
	return floor + 1
}

// DescribeBypasses renders bypasses for a log line: "dead via via, ...",
// or "none".
func DescribeBypasses(bs []Bypass) string {
	if len(bs) == 0 {
		return "none"
	}
	parts := make([]string, len(bs))
	for i, b := range bs {
		parts[i] = b.Dead + " via " + b.Via
	}
	return strings.Join(parts, ", ")
}
