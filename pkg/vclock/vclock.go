// Package vclock implements version vectors and dots, the causality
// primitives of the replicator's data model.
//
// A VV maps a datacenter id to a counter. A Dot names one event: the
// origin DC and that origin's per-partition sequence number. The usual loop
// at a DC is:
//
//	if clock.Covers(ev.Dot) { return } // duplicate or obsolete
//	clock = clock.Merge(ev.Context)
//	clock.Add(ev.Dot)
//
// The package is pure: it has no I/O and no dependencies beyond msgpack's
// low-level encoder for the deterministic wire form.
//
// API as far as pkg/event's types use it (Dot, VV) and as the text form of
// contexts in X-Repl-Context (docs/INTERFACES.md); the rest is internal to
// the sidecar.
package vclock

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Order is the result of comparing two version vectors.
type Order int

// The four possible relations between two version vectors.
const (
	Equal Order = iota
	Before
	After
	Concurrent
)

func (o Order) String() string {
	switch o {
	case Equal:
		return "equal"
	case Before:
		return "before"
	case After:
		return "after"
	case Concurrent:
		return "concurrent"
	}
	return "Order(" + strconv.Itoa(int(o)) + ")"
}

// Dot identifies one event: its origin DC and the origin's sequence number
// in the event's partition.
type Dot struct {
	DC string
	N  uint64
}

// IsZero reports whether d is the zero dot (no event).
func (d Dot) IsZero() bool { return d.DC == "" && d.N == 0 }

func (d Dot) String() string { return d.DC + ":" + strconv.FormatUint(d.N, 10) }

// ParseDot parses the text form "dc:n".
func ParseDot(s string) (Dot, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return Dot{}, fmt.Errorf("vclock: dot %q: want dc:n", s)
	}
	n, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil || n == 0 {
		return Dot{}, fmt.Errorf("vclock: dot %q: counter must be a positive integer", s)
	}
	if err := checkID(s[:i]); err != nil {
		return Dot{}, err
	}
	return Dot{DC: s[:i], N: n}, nil
}

// VV is a version vector: DC id to counter. A missing entry is zero. The nil
// VV is the empty vector and is valid for reads.
type VV map[string]uint64

// Get returns the counter for dc (zero when absent).
func (v VV) Get(dc string) uint64 { return v[dc] }

// Covers reports whether the vector includes the event d.
func (v VV) Covers(d Dot) bool { return v[d.DC] >= d.N }

// Clone returns an independent copy of v; the clone of nil is an empty VV.
func (v VV) Clone() VV {
	out := make(VV, len(v))
	for k, n := range v {
		out[k] = n
	}
	return out
}

// Merge returns the pointwise maximum of v and o as a new vector.
func (v VV) Merge(o VV) VV {
	out := v.Clone()
	out.MergeFrom(o)
	return out
}

// MergeFrom sets v to the pointwise maximum of v and o in place. v must not
// be nil unless o is empty.
func (v VV) MergeFrom(o VV) {
	for k, n := range o {
		if n > v[k] {
			v[k] = n
		}
	}
}

// Add records the event d in v in place (v[d.DC] = max(v[d.DC], d.N)).
func (v VV) Add(d Dot) {
	if d.N > v[d.DC] {
		v[d.DC] = d.N
	}
}

// Increment bumps dc's counter by one in place and returns the new dot.
func (v VV) Increment(dc string) Dot {
	v[dc]++
	return Dot{DC: dc, N: v[dc]}
}

// LessEq reports whether every counter of v is at most o's.
func (v VV) LessEq(o VV) bool {
	for k, n := range v {
		if n > o[k] {
			return false
		}
	}
	return true
}

// Equal reports whether v and o hold the same counters; zero entries count
// as absent.
func (v VV) Equal(o VV) bool { return v.LessEq(o) && o.LessEq(v) }

// Compare returns how v relates to o: Before when v happened before o, After
// when o happened before v, Equal, or Concurrent.
func Compare(v, o VV) Order {
	le, ge := v.LessEq(o), o.LessEq(v)
	switch {
	case le && ge:
		return Equal
	case le:
		return Before
	case ge:
		return After
	}
	return Concurrent
}

// DCs returns the ids with a non-zero counter, sorted.
func (v VV) DCs() []string {
	ids := make([]string, 0, len(v))
	for k, n := range v {
		if n > 0 {
			ids = append(ids, k)
		}
	}
	sort.Strings(ids)
	return ids
}

// String renders the text form used in headers and transcripts:
// "{blue:2,green:1}", sorted by DC id, zero entries left out.
func (v VV) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range v.DCs() {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte(':')
		b.WriteString(strconv.FormatUint(v[k], 10))
	}
	b.WriteByte('}')
	return b.String()
}

// MaxTextLen bounds the text form Parse accepts, so a hostile header cannot
// make it allocate much.
const MaxTextLen = 64 << 10

// Parse reads the text form written by String. Spaces around tokens are
// allowed; "{}" and "" are the empty vector.
func Parse(s string) (VV, error) {
	if len(s) > MaxTextLen {
		return nil, fmt.Errorf("vclock: text form is %d bytes, over the %d limit", len(s), MaxTextLen)
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return VV{}, nil
	}
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return nil, fmt.Errorf("vclock: %q: want {dc:n,...}", s)
	}
	body := strings.TrimSpace(s[1 : len(s)-1])
	out := VV{}
	if body == "" {
		return out, nil
	}
	for _, part := range strings.Split(body, ",") {
		part = strings.TrimSpace(part)
		i := strings.LastIndexByte(part, ':')
		if i <= 0 {
			return nil, fmt.Errorf("vclock: entry %q: want dc:n", part)
		}
		id := strings.TrimSpace(part[:i])
		if err := checkID(id); err != nil {
			return nil, err
		}
		n, err := strconv.ParseUint(strings.TrimSpace(part[i+1:]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("vclock: entry %q: counter is not an unsigned integer", part)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("vclock: entry %q: dc %q appears twice", part, id)
		}
		if n > 0 {
			out[id] = n
		} else {
			out[id] = 0
			delete(out, id)
		}
	}
	return out, nil
}

// ErrBadID reports a DC id that is not a valid NATS subject token.
var ErrBadID = errors.New("vclock: invalid dc id")

// MaxIDLen is the longest DC id accepted.
const MaxIDLen = 64

// ValidID reports why id cannot be a DC id, or nil. DC ids become NATS
// subject tokens, so they are 1 to 64 characters of [A-Za-z0-9_-].
func ValidID(id string) error { return checkID(id) }

func checkID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("%w %q: want 1 to %d characters", ErrBadID, id, MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w %q: only letters, digits, '_' and '-' are allowed", ErrBadID, id)
		}
	}
	return nil
}
