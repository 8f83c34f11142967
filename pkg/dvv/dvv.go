// Package dvv holds the per-key state of the data model: a causal clock and
// the concurrent versions (siblings) it has not yet superseded, following
// the dotted-version-vector scheme (Riak 2.0; Preguiça, Almeida et al.).
//
// It is a pure function core. A DC's write path is
//
//	ctx := st.WriteContext(clientCtx, implicit, purged)
//	st = st.Write(dot, ctx, v)          // dot = next sequence in the key's partition
//	emit Event{Dot: dot, Context: ctx, ...}
//
// and its apply path is
//
//	st, ok = st.Apply(ev.Dot, ev.Context, v) // ok == false: duplicate or obsolete
//
// Two DCs that applied the same set of events, in any order, hold equal
// states. That is the property the simulator and the reference model of
// docs/DESIGN.md "Data model" check.
//
// Internal to the sidecar: not a stable Go API.
package dvv

import (
	"bytes"
	"sort"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// Version is the payload of one sibling: a value or a tombstone.
type Version struct {
	Value   []byte
	Deleted bool
	// HLC is the origin's hybrid logical clock reading at the write; it
	// orders last-writer-wins and never decides causality.
	HLC uint64
	// Expires is the HLC time the value expires at (the origin's HLC at
	// the write plus the TTL); 0 for a value without a TTL.
	Expires uint64
}

// Sibling is one stored version and the event that made it.
type Sibling struct {
	Dot vclock.Dot
	Version
}

// Origin is the DC that wrote the sibling.
func (s Sibling) Origin() string { return s.Dot.DC }

// State is everything a DC stores for one key.
type State struct {
	// Clock is the causal history of the key as this DC knows it.
	Clock vclock.VV
	// Siblings are the versions no later event has superseded, sorted by dot.
	Siblings []Sibling
}

// IsZero reports whether the state holds nothing (an absent key).
func (s State) IsZero() bool { return len(s.Clock) == 0 && len(s.Siblings) == 0 }

// Live returns the siblings that are values, not tombstones.
func (s State) Live() []Sibling {
	out := make([]Sibling, 0, len(s.Siblings))
	for _, sb := range s.Siblings {
		if !sb.Deleted {
			out = append(out, sb)
		}
	}
	return out
}

// LiveCount counts the siblings that are values.
func (s State) LiveCount() int {
	n := 0
	for _, sb := range s.Siblings {
		if !sb.Deleted {
			n++
		}
	}
	return n
}

// Expiry is when the key's live value expires, by the rule that the
// longest TTL wins: the latest Expires of its live siblings, or 0 (never)
// when it has no live sibling or any live sibling has no TTL. It depends
// only on the set of siblings, so every DC holding the same state agrees.
func (s State) Expiry() uint64 {
	var at uint64
	for _, sb := range s.Siblings {
		switch {
		case sb.Deleted:
		case sb.Expires == 0:
			return 0
		case sb.Expires > at:
			at = sb.Expires
		}
	}
	return at
}

// Expirer is the DC that owns the expiry of the key's live value: the
// origin of the live sibling whose expiry is Expiry (the first by dot on a
// tie); "" when the key does not expire.
func (s State) Expirer() string {
	at := s.Expiry()
	if at == 0 {
		return ""
	}
	for _, sb := range s.Siblings {
		if !sb.Deleted && sb.Expires == at {
			return sb.Origin()
		}
	}
	return ""
}

// Expired reports whether the key's live value has expired at HLC time now.
func (s State) Expired(now uint64) bool {
	at := s.Expiry()
	return at != 0 && at <= now
}

// Visible is the state a read at HLC time now shows: s itself, or, once
// the key has expired, a copy whose live siblings read as tombstones. The
// clock is kept, so a write with the context of such a read supersedes the
// expired versions.
func (s State) Visible(now uint64) State {
	if !s.Expired(now) {
		return s
	}
	out := State{Clock: s.Clock, Siblings: make([]Sibling, len(s.Siblings))}
	for i, sb := range s.Siblings {
		if !sb.Deleted {
			sb.Deleted, sb.Value = true, nil
		}
		out.Siblings[i] = sb
	}
	return out
}

// Clone returns a deep copy that shares no memory with s.
func (s State) Clone() State {
	out := State{Clock: s.Clock.Clone(), Siblings: make([]Sibling, len(s.Siblings))}
	for i, sb := range s.Siblings {
		sb.Value = bytes.Clone(sb.Value)
		out.Siblings[i] = sb
	}
	return out
}

// WriteContext returns the causal context a local write carries.
//
// client is the context the application sent (nil or empty when it sent
// none). implicit asks for the write to supersede everything this DC holds
// for the key: a delete without context, or a blind write to a key whose
// resolver resolves on write. purged is the partition's purge frontier: the
// clock entries of tombstones this DC has purged (see Stable).
//
// When the key holds no live value, the context also covers the key's whole
// clock and the purge frontier. Covering only tombstones loses nothing, and
// it makes every write that follows a stable delete causally after it, which
// is what lets a DC purge a tombstone without a concurrent write reviving a
// different state elsewhere.
func (s State) WriteContext(client vclock.VV, implicit bool, purged vclock.VV) vclock.VV {
	ctx := client.Clone()
	if implicit || s.LiveCount() == 0 {
		ctx.MergeFrom(s.Clock)
	}
	if s.LiveCount() == 0 {
		ctx.MergeFrom(purged)
	}
	return ctx
}

// Write applies a local write of v with dot and context ctx. The dot must be
// the writer's next sequence number in the key's partition, so it is above
// every counter the clock holds for the writer.
func (s State) Write(dot vclock.Dot, ctx vclock.VV, v Version) State {
	out := s.supersede(ctx)
	out.Clock.Add(dot)
	out.insert(Sibling{Dot: dot, Version: v})
	return out
}

// Apply applies a remote event. It returns the state unchanged and false
// when the clock already covers the event's dot: a duplicate, or an event an
// applied write's context made obsolete.
func (s State) Apply(dot vclock.Dot, ctx vclock.VV, v Version) (State, bool) {
	if s.Clock.Covers(dot) {
		return s, false
	}
	return s.Write(dot, ctx, v), true
}

// Superseded returns the siblings of s that a write with context ctx removes.
func (s State) Superseded(ctx vclock.VV) []Sibling {
	var out []Sibling
	for _, sb := range s.Siblings {
		if ctx.Covers(sb.Dot) {
			out = append(out, sb)
		}
	}
	return out
}

// Stable reports whether the key is a purgeable tombstone: it holds no live
// value and every entry of its clock is within sv, the partition's stable
// vector (what every DC has applied and this DC has caught up with).
func (s State) Stable(sv vclock.VV) bool {
	return len(s.Clock) > 0 && s.LiveCount() == 0 && s.Clock.LessEq(sv)
}

func (s State) supersede(ctx vclock.VV) State {
	out := State{Clock: s.Clock.Merge(ctx), Siblings: make([]Sibling, 0, len(s.Siblings)+1)}
	for _, sb := range s.Siblings {
		if !ctx.Covers(sb.Dot) {
			out.Siblings = append(out.Siblings, sb)
		}
	}
	return out
}

func (s *State) insert(sb Sibling) {
	i := sort.Search(len(s.Siblings), func(i int) bool { return !Less(s.Siblings[i].Dot, sb.Dot) })
	s.Siblings = append(s.Siblings, Sibling{})
	copy(s.Siblings[i+1:], s.Siblings[i:])
	s.Siblings[i] = sb
}

// Less orders dots by DC id, then counter; siblings are kept in this order.
func Less(a, b vclock.Dot) bool {
	if a.DC != b.DC {
		return a.DC < b.DC
	}
	return a.N < b.N
}
