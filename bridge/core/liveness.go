package core

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
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

// HeaderReportPartitions is on the applied-vector report of one of
// several sidecars of a DC (shards, invariant 16): the partitions it owns,
// and so the ones its report speaks for, as "0,4,8". A report without it
// speaks for every partition.
const HeaderReportPartitions = "Repl-Shard-Partitions"

// FormatPartitions renders partitions for HeaderReportPartitions.
func FormatPartitions(ps []uint32) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(p), 10))
	}
	return b.String()
}

// ParsePartitions reads HeaderReportPartitions: partitions below
// partitions, at least one; "" (no header) is nil, every partition.
func ParsePartitions(v string, partitions int) ([]uint32, error) {
	if v == "" {
		return nil, nil
	}
	var out []uint32
	for part := range strings.SplitSeq(v, ",") {
		p, err := strconv.ParseUint(part, 10, 32)
		if err != nil || int(p) >= partitions {
			return nil, fmt.Errorf("%s entry %q: want partitions below %d, as \"0,4,8\"", HeaderReportPartitions, part, partitions)
		}
		out = append(out, uint32(p))
	}
	return out, nil
}

// Coverage tells, for one sidecar owning some partitions (mine; every
// partition when it is its DC's only one), when each other DC last
// reported on every one of them: a DC of several shards reports each
// shard's partitions apart, so when one of its shards dies, the sidecars
// owning those partitions see that DC fall silent and heal around it,
// while the others keep seeing it report. It also tells when a DC last
// reported on one partition (LastOn), which the expirer judges a key's
// owner by (invariant 14): a DC whose shard owning the key's partition
// runs is reachable for that key, whatever its other shards do. The clock
// comes in as now.
type Coverage struct {
	mine       []uint32
	partitions int
	start      time.Time
	// last is, by DC and partition, when a report last spoke for it.
	last map[string]map[uint32]time.Time
}

// NewCoverage tracks the partitions mine (nil: all of partitions) from
// start.
func NewCoverage(mine []uint32, partitions int, start time.Time) *Coverage {
	if mine == nil {
		for p := range partitions {
			mine = append(mine, uint32(p))
		}
	}
	mine = slices.Clone(mine)
	slices.Sort(mine)
	return &Coverage{mine: mine, partitions: partitions, start: start, last: map[string]map[uint32]time.Time{}}
}

// Seen records a report from dc at now speaking for parts (nil: every
// partition) and returns when dc last reported on all of this sidecar's
// partitions: the oldest of their latest reports, never earlier than
// start. That time is what liveness takes as dc's last report.
func (c *Coverage) Seen(dc string, parts []uint32, now time.Time) time.Time {
	last := c.last[dc]
	if last == nil {
		last = map[uint32]time.Time{}
		c.last[dc] = last
	}
	if parts == nil {
		for p := range c.partitions {
			last[uint32(p)] = now
		}
	} else {
		for _, p := range parts {
			if int(p) < c.partitions {
				last[p] = now
			}
		}
	}
	oldest := now
	for _, p := range c.mine {
		if t := c.LastOn(dc, p); t.Before(oldest) {
			oldest = t
		}
	}
	return oldest
}

// LastOn returns when dc last reported on partition p: the latest report
// speaking for p, or start if none has.
func (c *Coverage) LastOn(dc string, p uint32) time.Time {
	if t, ok := c.last[dc][p]; ok {
		return t
	}
	return c.start
}

// SilentOn reports whether dc has sent no report speaking for partition p
// for longer than bound at now. With DCs of one sidecar each, every
// report speaks for every partition, and the answer is the same for all.
func (c *Coverage) SilentOn(dc string, p uint32, now time.Time, bound time.Duration) bool {
	return now.Sub(c.LastOn(dc, p)) > bound
}
