// Package txncheck plans transactions whose keys name their transaction,
// and checks what readers saw of them against invariant 11 of
// docs/DESIGN.md: a consistent snapshot, or single-key reads in sequence,
// never shows part of a transaction.
//
// Transaction n of DC o writes one key per op, g/<o>/<n>/<j><kind>, and
// only o ever writes these keys:
//   - kind p (Fresh) puts a key nothing wrote before;
//   - kind u (Over) puts over the value a single-key write of o ("pre")
//     put there just before the transaction;
//   - kind d (Delete) deletes such a value.
//
// After the commit, o may overwrite some of the keys with single-key puts
// ("post"): a reader may meet a transaction already overtaken. One
// origin's events for one key apply in the order it made them (invariant
// 4), so each key only moves forward, pre → transaction → post, and a
// reader can tell exactly, key by key, whether it shows the transaction
// (or a later write) or not yet. The one blind spot: a Delete key that is
// absent may be not yet written or already deleted and purged (or hidden,
// in a listing of live keys), so it counts for neither side.
//
// A transaction may also write one hot key under HotPrefix, which every DC
// writes with conflicts; hot keys are not checked here.
package txncheck

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// Prefix is the prefix of every key a planned transaction checks; a reader
// lists it.
const Prefix = "g/"

// HotPrefix is the prefix of the hot keys, and HotKeys how many there are.
const (
	HotPrefix = "h/"
	HotKeys   = 6
)

// Kind is what an op of a planned transaction does to its key.
type Kind byte

// The kinds of op.
const (
	Fresh  Kind = 'p'
	Over   Kind = 'u'
	Delete Kind = 'd'
)

// Op is one checked op of a transaction.
type Op struct {
	Key  string
	Kind Kind
}

// Txn is a planned transaction.
type Txn struct {
	Origin string
	N      int
	Ops    []Op
	// Hot, if not "", is a hot key the transaction also puts.
	Hot string
}

// ID names the transaction: "dc1/0007".
func (t Txn) ID() string { return fmt.Sprintf("%s/%04d", t.Origin, t.N) }

// Key returns the key of op j of transaction n of origin.
func Key(origin string, n, j int, k Kind) string {
	return fmt.Sprintf("%s%s/%04d/%d%c", Prefix, origin, n, j, k)
}

// ParseKey returns the transaction a key under Prefix names.
func ParseKey(key string) (origin string, n int, ok bool) {
	parts := strings.Split(key, "/")
	if len(parts) != 4 || parts[0]+"/" != Prefix {
		return "", 0, false
	}
	n, err := strconv.Atoi(parts[2])
	return parts[1], n, err == nil
}

// Plan returns transaction n of origin, the same for the same seed: 2 to
// 8 ops of every kind, at least one of them a put, and a hot key half the
// time.
func Plan(seed uint64, origin string, n int) Txn {
	h := fnv.New64a()
	h.Write([]byte(origin))
	rng := rand.New(rand.NewPCG(seed, h.Sum64()^uint64(n)))
	t := Txn{Origin: origin, N: n, Ops: make([]Op, 2+rng.IntN(7))}
	puts := 0
	for j := range t.Ops {
		k := []Kind{Fresh, Over, Delete}[rng.IntN(3)]
		if k != Delete {
			puts++
		}
		t.Ops[j] = Op{Key: Key(origin, n, j, k), Kind: k}
	}
	if puts == 0 {
		t.Ops[0] = Op{Key: Key(origin, n, 0, Over), Kind: Over}
	}
	if rng.IntN(2) == 0 {
		t.Hot = fmt.Sprintf("%s%d", HotPrefix, rng.IntN(HotKeys))
	}
	return t
}

// Op names the op of t that writes key, if any.
func (t Txn) Op(key string) (Op, bool) {
	for _, op := range t.Ops {
		if op.Key == key {
			return op, true
		}
	}
	return Op{}, false
}

// Pre is the value a single-key write puts to an Over or Delete key
// before its transaction.
func Pre(key string) []byte { return []byte("pre " + key) }

// TxnValue is the value a transaction puts to its key.
func TxnValue(key string) []byte { return []byte("txn " + key) }

// Post is the value of the i-th single-key write over a key after its
// transaction.
func Post(key string, i int) []byte { return fmt.Appendf(nil, "post %s #%d", key, i) }

// HotValue is what transaction t puts to its hot key.
func HotValue(t Txn) []byte { return []byte("hot from txn " + t.ID()) }

// Observation is what a reader saw of one key.
type Observation struct {
	// Present: the key exists (a store holds it, or a listing shows it).
	Present bool
	// Live holds its live values; a present key with none is a tombstone.
	Live []string
}

// Stage is how far a key shows its transaction.
type Stage int

// The stages.
const (
	// Unknown: an absent Delete key; it may be either side.
	Unknown Stage = iota
	// Before: the key shows nothing of the transaction yet.
	Before
	// Seen: the key shows the transaction, or a later write.
	Seen
	// Stray: the key shows something no write of the workload put there.
	Stray
)

// Observe returns the stage an observation of op's key shows.
func Observe(op Op, ob Observation) Stage {
	switch {
	case !ob.Present && op.Kind == Delete:
		return Unknown
	case !ob.Present:
		return Before
	case len(ob.Live) == 0 && op.Kind == Delete:
		return Seen // the transaction's tombstone
	case len(ob.Live) == 0:
		return Stray
	}
	st := Unknown
	for _, v := range ob.Live {
		var s Stage
		switch {
		case v == string(Pre(op.Key)) && op.Kind != Fresh:
			s = Before
		case v == string(TxnValue(op.Key)) && op.Kind != Delete:
			s = Seen
		case strings.HasPrefix(v, "post "+op.Key+" #"):
			s = Seen
		default:
			return Stray
		}
		st = max(st, s)
	}
	return st
}

// Whole reports whether a DC's view of op shows it whole after the DC
// converged: its key shows the op or a later write, under a clock that
// covers the op's dot; or it is a Delete key that is gone.
func Whole(op Op, ob Observation, clock vclock.VV, dot vclock.Dot) bool {
	switch Observe(op, ob) {
	case Unknown:
		return true
	case Seen:
		return clock.Covers(dot)
	}
	return false
}

// describe shows what a reader saw of a key, for failure messages.
func describe(op Op, ob Observation) string {
	var what string
	switch {
	case !ob.Present:
		what = "absent"
	case len(ob.Live) == 0:
		what = "tombstone"
	default:
		what = fmt.Sprintf("%q", ob.Live)
	}
	return fmt.Sprintf("%s=%s(%s)", op.Key, what, [...]string{"unknown", "before", "seen", "stray"}[Observe(op, ob)])
}

// Tally counts what readers checked and keeps the first violations. Its
// methods are safe for concurrent use.
type Tally struct {
	// Snapshots counts consistent snapshots checked; Groups the
	// transactions they showed at least in part; Complete those shown
	// whole; Pending those they showed keys of (pre values) but nothing of
	// the transaction yet; Sequences the transactions read key by key;
	// Violations the transactions a reader saw in part (or with a stray
	// value).
	Snapshots, Groups, Complete, Pending, Sequences, Violations atomic.Int64

	mu struct {
		sync.Mutex
		examples []string
	}
}

// maxExamples bounds the violations a Tally keeps.
const maxExamples = 20

func (t *Tally) violation(format string, args ...any) {
	t.Violations.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.mu.examples) < maxExamples {
		t.mu.examples = append(t.mu.examples, fmt.Sprintf(format, args...))
	}
}

// Examples returns the first violations, described.
func (t *Tally) Examples() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.mu.examples...)
}

// String sums the counts up.
func (t *Tally) String() string {
	return fmt.Sprintf("%d snapshots showing %d transactions (%d whole) and %d not yet, %d transactions read key by key, %d seen in part",
		t.Snapshots.Load(), t.Groups.Load(), t.Complete.Load(), t.Pending.Load(), t.Sequences.Load(), t.Violations.Load())
}

// Snapshot checks one consistent snapshot of the keys under Prefix at
// where: snap holds every key it showed. lookup returns the transaction a
// key names. Every transaction the snapshot shows in part is a violation:
// one op seen while another is not yet.
func (t *Tally) Snapshot(where string, snap map[string]Observation, lookup func(origin string, n int) (Txn, bool)) {
	t.Snapshots.Add(1)
	done := map[string]bool{}
	for key := range snap {
		origin, n, ok := ParseKey(key)
		if !ok {
			t.violation("%s: the snapshot holds key %q, which names no transaction", where, key)
			continue
		}
		txn, ok := lookup(origin, n)
		if !ok || done[txn.ID()] {
			continue
		}
		done[txn.ID()] = true
		obs := make([]Observation, len(txn.Ops))
		for i, op := range txn.Ops {
			obs[i] = snap[op.Key]
		}
		seen, before, stray := count(txn, obs)
		if seen > 0 {
			t.Groups.Add(1)
		}
		switch {
		case stray > 0 || seen > 0 && before > 0:
			t.violation("%s: one snapshot shows transaction %s in part: %s", where, txn.ID(), describeAll(txn, obs))
		case seen > 0:
			t.Complete.Add(1)
		case before > 0:
			t.Pending.Add(1)
		}
	}
}

// Sequence checks transaction txn read key by key at where, obs in the
// order read: once a read showed one op, every later read must show its
// op too (or a later write).
func (t *Tally) Sequence(where string, txn Txn, obs []Observation) {
	t.Sequences.Add(1)
	seenAt := -1
	for i, op := range txn.Ops {
		switch s := Observe(op, obs[i]); {
		case s == Stray:
			t.violation("%s: reads of transaction %s in sequence show a stray value: %s", where, txn.ID(), describeAll(txn, obs))
			return
		case s == Seen && seenAt < 0:
			seenAt = i
		case s == Before && seenAt >= 0:
			t.violation("%s: reads of transaction %s in sequence showed op %d, then not op %d: %s",
				where, txn.ID(), seenAt, i, describeAll(txn, obs))
			return
		}
	}
}

func count(txn Txn, obs []Observation) (seen, before, stray int) {
	for i, op := range txn.Ops {
		switch Observe(op, obs[i]) {
		case Seen:
			seen++
		case Before:
			before++
		case Stray:
			stray++
		}
	}
	return seen, before, stray
}

func describeAll(txn Txn, obs []Observation) string {
	parts := make([]string, len(txn.Ops))
	for i, op := range txn.Ops {
		parts[i] = describe(op, obs[i])
	}
	return strings.Join(parts, ", ")
}

// Acked is a transaction its origin acknowledged, with the dot of each
// checked op.
type Acked struct {
	Txn  Txn
	Dots []vclock.Dot
}

// Log records acknowledged transactions. Its methods are safe for
// concurrent use.
type Log struct {
	mu       sync.Mutex
	byOrigin map[string][]Acked
}

// Add records a transaction its origin acknowledged.
func (l *Log) Add(a Acked) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byOrigin == nil {
		l.byOrigin = map[string][]Acked{}
	}
	l.byOrigin[a.Txn.Origin] = append(l.byOrigin[a.Txn.Origin], a)
}

// All returns every transaction recorded.
func (l *Log) All() []Acked {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Acked
	for _, as := range l.byOrigin {
		out = append(out, as...)
	}
	return out
}

// Counts returns how many transactions each origin acknowledged.
func (l *Log) Counts() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for origin, as := range l.byOrigin {
		out[origin] = len(as)
	}
	return out
}

// Latest returns the last n transactions of each origin but except: the
// ones most likely still on their way to except.
func (l *Log) Latest(except string, n int) []Txn {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Txn
	for origin, as := range l.byOrigin {
		if origin == except {
			continue
		}
		for _, a := range as[max(0, len(as)-n):] {
			out = append(out, a.Txn)
		}
	}
	return out
}
