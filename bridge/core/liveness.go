package core

import (
	"maps"
	"slices"
	"time"

	"github.com/replicatorhq/replicator/changelog"
)

// Liveness tells, from the applied-vector reports each DC sends every
// report interval, which DCs are unreachable: a DC is dead once it has
// sent nothing for longer than after, and alive again once it has
// reported for after, or earlier once its reports cover what this DC had
// applied when it came back (it has caught up, so the static wiring
// carries everything at once). The clock comes in as now.
type Liveness struct {
	self  string
	after time.Duration
	// last is when each DC last reported; a DC never heard from counts
	// from start.
	start time.Time
	last  map[string]time.Time
	dead  map[string]bool
	// back is when a dead DC reported again, and want what this DC had
	// applied then (without the dead DC's own row).
	back map[string]time.Time
	want map[string]changelog.Applied
}

// NewLiveness tracks the DCs of dcs other than self from start, taking a
// DC silent for longer than after as dead.
func NewLiveness(self string, dcs []string, after time.Duration, start time.Time) *Liveness {
	lv := &Liveness{self: self, after: after, start: start, last: map[string]time.Time{},
		dead: map[string]bool{}, back: map[string]time.Time{}, want: map[string]changelog.Applied{}}
	for _, dc := range dcs {
		if dc != self {
			lv.last[dc] = start
		}
	}
	return lv
}

// Seen records a report from dc at now; mine is this DC's applied vector,
// read only when dc was dead, as the catch-up target. Reports from DCs
// not tracked are ignored.
func (lv *Liveness) Seen(dc string, now time.Time, mine func() changelog.Applied) {
	if _, ok := lv.last[dc]; !ok {
		return
	}
	if lv.dead[dc] && lv.back[dc].IsZero() {
		lv.back[dc] = now
		want := mine()
		delete(want, dc)
		lv.want[dc] = want
	}
	lv.last[dc] = now
}

// Transition is one DC changing state.
type Transition struct {
	DC   string
	Dead bool
	// Silent is how long the DC had been silent, for a death.
	Silent time.Duration
	// Reason says why a dead DC counts as alive again.
	Reason string
}

// Tick updates the dead set at now; peers are the applied vectors the
// other DCs last reported. It returns the DCs whose state changed, in DC
// order.
func (lv *Liveness) Tick(now time.Time, peers map[string]changelog.Applied) []Transition {
	var out []Transition
	for _, dc := range slices.Sorted(maps.Keys(lv.last)) {
		silent := now.Sub(lv.last[dc])
		switch {
		case !lv.dead[dc] && silent > lv.after:
			lv.dead[dc] = true
			delete(lv.back, dc)
			out = append(out, Transition{DC: dc, Dead: true, Silent: silent})
		case lv.dead[dc] && !lv.back[dc].IsZero() && silent > lv.after:
			// It came back and went silent again: still dead.
			delete(lv.back, dc)
			delete(lv.want, dc)
		case lv.dead[dc] && !lv.back[dc].IsZero():
			reason := ""
			if Covers(peers[dc], lv.want[dc]) {
				reason = "caught up"
			} else if now.Sub(lv.back[dc]) >= lv.after {
				reason = "reporting again for heal_after"
			}
			if reason != "" {
				delete(lv.dead, dc)
				delete(lv.back, dc)
				delete(lv.want, dc)
				out = append(out, Transition{DC: dc, Reason: reason})
			}
		}
	}
	return out
}

// IsDead reports whether dc is taken as unreachable.
func (lv *Liveness) IsDead(dc string) bool { return lv.dead[dc] }

// Covers reports whether a has applied at least what want holds; a nil a
// covers nothing.
func Covers(a, want changelog.Applied) bool {
	if a == nil {
		return false
	}
	for origin, row := range want {
		have := a[origin]
		for p, n := range row {
			if n == 0 {
				continue
			}
			if p >= len(have) || have[p] < n {
				return false
			}
		}
	}
	return true
}

// Healer is one DC's healing state machine: liveness from the peers'
// reports, and the effective plan (the static plan healed around the dead
// DCs) that follows from it. A driver feeds it every report (Seen) and
// ticks it every report interval (Tick); when Tick says the plan changed,
// the driver reconciles its heal links with the new plan (Reconcile) and
// then uses it for forwarding.
type Healer struct {
	static  Plan
	standby string
	lv      *Liveness
	plan    Plan
}

// NewHealer starts healing static at start, tracking the liveness of the
// DCs of dcs (nil for the plan's): a DC silent for longer than after is
// dead; standby is the star's standby hub, or "".
func NewHealer(static Plan, dcs []string, standby string, after time.Duration, start time.Time) *Healer {
	if dcs == nil {
		dcs = static.dcs
	}
	return &Healer{static: static, standby: standby, lv: NewLiveness(static.DC, dcs, after, start), plan: static}
}

// Seen records a report from dc at now (see Liveness.Seen).
func (h *Healer) Seen(dc string, now time.Time, mine func() changelog.Applied) {
	h.lv.Seen(dc, now, mine)
}

// Tick judges liveness at now from the peers' last reports. When a DC died
// or came back it returns the transitions and the new effective plan,
// which from then on is Plan; otherwise it returns nothing and the plan
// stays.
func (h *Healer) Tick(now time.Time, peers map[string]changelog.Applied) ([]Transition, Plan, bool) {
	changes := h.lv.Tick(now, peers)
	if len(changes) == 0 {
		return nil, h.plan, false
	}
	h.plan = h.static.Heal(h.lv.IsDead, h.standby)
	return changes, h.plan, true
}

// Plan returns the effective plan.
func (h *Healer) Plan() Plan { return h.plan }

// IsDead reports whether dc is taken as unreachable.
func (h *Healer) IsDead(dc string) bool { return h.lv.IsDead(dc) }
