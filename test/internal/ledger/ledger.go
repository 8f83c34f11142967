// Package ledger records what clients of the replicator's HTTP API did and
// saw, so that after convergence every acknowledged write can be
// accounted for: a live sibling at every DC, superseded by an
// acknowledged write whose context covered it, or logged as discarded by
// a resolver (invariants 1, 5, 6 of docs/DESIGN.md).
package ledger

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// LWWPrefix is the key prefix the test configs give the lww resolver.
const LWWPrefix = "lww/"

// Op is a write the sidecar acknowledged with 200.
type Op struct {
	DC, Key string
	Value   string // "" for a delete
	Delete  bool
	Dot     string
}

// overwrite is an acknowledged blind put to an lww key and the context the
// sidecar returned for it: the DC's clock for the key, plus its own dot.
type overwrite struct {
	desc  string
	dot   string
	clock map[string]uint64
	// seen holds the live values a read at the same DC returned just
	// before the put (the put itself sends no context).
	seen map[string]bool
}

// Doubt is a write that got neither a 200 nor a certain refusal: it may
// or may not have been committed.
type Doubt struct {
	DC     string
	Key    string
	Blind  bool
	At     time.Time
	Desc   string
	Value  string   // "" for a delete
	Covers []string // the live values the write's context covered
}

// Options tune a Ledger.
type Options struct {
	// BlindDoubts makes a blind write of uncertain outcome cover the live
	// values a read just before it returned; otherwise only writes with a
	// context are remembered as doubtful.
	BlindDoubts bool
	// MaxExamples is how many failed requests are kept as examples.
	MaxExamples int
	// Tag makes values unique across ledgers of one test.
	Tag string
}

// Ledger records what the clients did and saw. Every method is safe for
// concurrent use.
type Ledger struct {
	dcs  []string
	opts Options
	mu   struct {
		sync.Mutex
		acked []Op
		// superseded maps a value to the acknowledged put whose context
		// covered it.
		superseded map[string]string
		// deleted maps a value to the acknowledged delete whose context
		// covered it.
		deleted map[string]string
		// doubtful maps a value to the doubtful writes whose context
		// covered it.
		doubtful map[string][]Doubt
		// overwrites lists, per key, the acknowledged blind puts to lww
		// keys. Such a put's context is implicitly the DC's clock for the
		// key (a write without context to a key whose resolver runs on
		// write), so it supersedes every version the DC held.
		overwrites map[string][]overwrite
		// observed holds every value any read ever returned.
		observed map[string]bool
		// observedDot maps a value a read returned to its dot.
		observedDot map[string]string
		// doubtfulByKey lists every write of uncertain outcome per key,
		// blind ones included when Options.BlindDoubts.
		doubtfulByKey map[string][]Doubt
		// failures counts failed requests by DC and kind.
		failures map[string]int
		examples []string
	}
	ackedPerDC map[string]*atomic.Int64
	seqPerDC   map[string]*atomic.Int64
	// Ops counts the write requests sent (each after a read, except
	// blind puts to keys outside LWWPrefix).
	Ops atomic.Int64
}

// New returns an empty ledger of writes at dcs.
func New(dcs []string, o Options) *Ledger {
	l := &Ledger{dcs: dcs, opts: o, ackedPerDC: map[string]*atomic.Int64{}, seqPerDC: map[string]*atomic.Int64{}}
	l.mu.superseded = map[string]string{}
	l.mu.deleted = map[string]string{}
	l.mu.doubtful = map[string][]Doubt{}
	l.mu.overwrites = map[string][]overwrite{}
	l.mu.observed = map[string]bool{}
	l.mu.observedDot = map[string]string{}
	l.mu.doubtfulByKey = map[string][]Doubt{}
	l.mu.failures = map[string]int{}
	for _, dc := range dcs {
		l.ackedPerDC[dc] = new(atomic.Int64)
		l.seqPerDC[dc] = new(atomic.Int64)
	}
	return l
}

// DCs are the DCs the ledger was made for.
func (l *Ledger) DCs() []string { return l.dcs }

// Acked is the number of acknowledged operations at dc.
func (l *Ledger) Acked(dc string) int64 { return l.ackedPerDC[dc].Load() }

// AckedTotal is the number of acknowledged operations at every DC.
func (l *Ledger) AckedTotal() int64 {
	var n int64
	for _, dc := range l.dcs {
		n += l.Acked(dc)
	}
	return n
}

// AckedOps returns a copy of the acknowledged writes, in the order they
// were acknowledged.
func (l *Ledger) AckedOps() []Op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Op(nil), l.mu.acked...)
}

// SupersededBy is the acknowledged put whose context covered v, or "".
func (l *Ledger) SupersededBy(v string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.superseded[v]
}

// DeletedBy is the acknowledged delete whose context covered v, or "".
func (l *Ledger) DeletedBy(v string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.deleted[v]
}

// Doubts is the number of writes of uncertain outcome to key.
func (l *Ledger) Doubts(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mu.doubtfulByKey[key])
}

// Observe records the live values a read returned.
func (l *Ledger) Observe(v sidecar.KV) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range v.Siblings {
		if !s.Deleted {
			l.mu.observed[string(s.Value)] = true
			l.mu.observedDot[string(s.Value)] = s.Dot
		}
	}
}

// RecordAck records an acknowledged write. covered lists the live values
// the write's context covered (nil for a blind write); returned is the
// context the sidecar answered with.
func (l *Ledger) RecordAck(op Op, covered []string, blindLWW bool, preSeen []string, returned string) error {
	desc := fmt.Sprintf("%s at %s (dot %s)", Describe(op.Value), op.DC, op.Dot)
	var clock map[string]uint64
	if blindLWW {
		var err error
		if clock, err = sidecar.ParseClock(returned); err != nil {
			return fmt.Errorf("%s: returned context: %w", desc, err)
		}
	}
	l.mu.Lock()
	l.mu.acked = append(l.mu.acked, op)
	if blindLWW {
		seen := map[string]bool{}
		for _, v := range preSeen {
			seen[v] = true
		}
		l.mu.overwrites[op.Key] = append(l.mu.overwrites[op.Key], overwrite{desc: desc, dot: op.Dot, clock: clock, seen: seen})
	}
	for _, v := range covered {
		if op.Delete {
			l.mu.deleted[v] = desc
		} else {
			l.mu.superseded[v] = desc
		}
	}
	l.mu.Unlock()
	l.ackedPerDC[op.DC].Add(1)
	return nil
}

// Describe names a write of value: "delete" or "put VALUE".
func Describe(value string) string {
	if value == "" {
		return "delete"
	}
	return "put " + value
}

// RecordFailure counts a failed request. A write that may have been
// committed is remembered as doubtful.
func (l *Ledger) RecordFailure(dc, kind string, err error, doubt *Doubt) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.failures[dc+" "+kind]++
	if len(l.mu.examples) < l.opts.MaxExamples {
		l.mu.examples = append(l.mu.examples, fmt.Sprintf("%s %s: %v", dc, kind, err))
	}
	if doubt != nil {
		l.mu.doubtfulByKey[doubt.Key] = append(l.mu.doubtfulByKey[doubt.Key], *doubt)
		for _, v := range doubt.Covers {
			l.mu.doubtful[v] = append(l.mu.doubtful[v], *doubt)
		}
	}
}

// FailureSummary lists the failed requests by DC and kind.
func (l *Ledger) FailureSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]string, 0, len(l.mu.failures))
	for k := range l.mu.failures {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s: %d", k, l.mu.failures[k]))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// examples returns the first failed requests.
func (l *Ledger) examples() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.mu.examples...)
}

// overwrittenBy returns the acknowledged blind lww put, other than op
// itself, whose implicit context covered op's dot, or "". seen reports
// that a read at that DC just before the put returned op's value, so the
// DC certainly held it; otherwise only the returned clock says so. l.mu
// must be held.
func (l *Ledger) overwrittenBy(op Op) (by string, seen bool) {
	dc, n, err := sidecar.ParseDot(op.Dot)
	if err != nil {
		return "", false
	}
	for _, o := range l.mu.overwrites[op.Key] {
		if o.dot != op.Dot && o.clock[dc] >= n {
			if o.seen[op.Value] {
				return o.desc, true
			}
			by = o.desc
		}
	}
	return by, false
}

// committedDoubt reports whether v was covered by the context of a write
// whose outcome the client never learned but which was committed: a put
// whose value some read has seen, or a delete (which cannot be confirmed
// by value, so it is given the benefit of the doubt). l.mu must be held.
func (l *Ledger) committedDoubt(v string) bool {
	for _, d := range l.mu.doubtful[v] {
		if d.Value == "" || l.mu.observed[d.Value] {
			return true
		}
	}
	return false
}

// keyHistory describes every acknowledged and doubtful write to key, for
// a failure message. l.mu must be held.
func (l *Ledger) keyHistory(key string) string {
	var b strings.Builder
	b.WriteString("\n      history of the key:")
	for _, op := range l.mu.acked {
		if op.Key == key {
			fmt.Fprintf(&b, "\n        acked %s at %s dot %s", Describe(op.Value), op.DC, op.Dot)
		}
	}
	for _, d := range l.mu.doubtfulByKey[key] {
		fmt.Fprintf(&b, "\n        in doubt (blind %t, seen later with dot %q): %s; covered %v", d.Blind, l.mu.observedDot[d.Value], d.Desc, d.Covers)
	}
	return b.String()
}
