package core

import (
	"maps"
	"slices"
	"time"

	"github.com/replicatorhq/replicator/changelog"
)

// CatchUp finds what gap detection cannot see: a loss that no later event
// follows, such as the last events of a partition. It compares this DC's
// applied vector with each origin's own sequences, as the origin last
// reported them, and says to ask the origin for the missing events once
// this DC has made no progress for After.
type CatchUp struct {
	// After is how long this DC may stay behind without progress.
	After time.Duration
	// Known holds every DC; reports about others are ignored.
	Known map[string]bool

	behind map[gapKey]lag
}

// lag is where this DC stood behind an origin, and since when.
type lag struct {
	since time.Time
	have  uint64
}

// Behind is one catch-up repair to make: origin's events [From, To] of
// Partition, this DC having been stuck at From-1 for For.
type Behind struct {
	Origin    string
	Partition uint32
	From, To  uint64
	For       time.Duration
}

// Due returns the repairs due at now, in origin and partition order, given
// this DC's applied vector mine and the vectors the peers last reported
// (of which only each origin's own row counts). A repair it returns
// counts as progress: the next is due After later.
func (c *CatchUp) Due(now time.Time, mine changelog.Applied, peers map[string]changelog.Applied) []Behind {
	if c.behind == nil {
		c.behind = map[gapKey]lag{}
	}
	var out []Behind
	for _, origin := range slices.Sorted(maps.Keys(peers)) {
		if !c.Known[origin] {
			continue
		}
		have := mine[origin]
		for p, target := range peers[origin][origin] {
			var h uint64
			if p < len(have) {
				h = have[p]
			}
			k := gapKey{origin, uint32(p)}
			b, seen := c.behind[k]
			switch {
			case target <= h:
				delete(c.behind, k)
				continue
			case !seen || h > b.have:
				c.behind[k] = lag{since: now, have: h}
				continue
			case now.Sub(b.since) < c.After:
				continue
			}
			c.behind[k] = lag{since: now, have: h}
			out = append(out, Behind{Origin: origin, Partition: uint32(p), From: h + 1, To: target, For: now.Sub(b.since)})
		}
	}
	return out
}

// Replays rations the last resort of catch-up: when an origin no longer
// holds events this DC lacks (ErrOriginLacks), the links that carry
// them replay their upstream's stream from its first message.
type Replays struct {
	// Every is the least time between two replays of one link.
	Every time.Duration

	last map[string]time.Time
}

// Due returns the upstreams whose links replay at now to recover origin's
// events: the link from origin if there is one, else every link (ups),
// leaving out those replayed within Every. The ones it returns count as
// replayed at now.
func (r *Replays) Due(now time.Time, origin string, ups []string) []string {
	if r.last == nil {
		r.last = map[string]time.Time{}
	}
	if slices.Contains(ups, origin) {
		ups = []string{origin}
	}
	var out []string
	for _, up := range ups {
		if last, ok := r.last[up]; ok && now.Sub(last) < r.Every {
			continue
		}
		r.last[up] = now
		out = append(out, up)
	}
	return out
}
