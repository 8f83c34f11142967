package changelog

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// WriteOp is a local write.
type WriteOp struct {
	Key   string
	Value []byte
	// Delete writes a tombstone instead of Value.
	Delete bool
	// Resolve marks a write that resolves a conflict (op resolve).
	Resolve bool
	// Context is the causal context the client read; nil when it sent none.
	// A write supersedes exactly the siblings its context covers.
	Context vclock.VV
	// TTL, when positive, makes the value expire at the write's HLC plus
	// TTL (dvv.Version.Expires), the same instant at every DC; 0 writes a
	// value that never expires. It must be within (0, MaxTTL] when set and
	// is refused on a delete.
	TTL time.Duration
	// Typed is a typed operation (incr, patch, add, remove) on a key whose
	// resolver is a resolve.Typed; Value and Delete are then unused. A
	// plain write to such a key becomes the type's put or delete. The
	// store reads the key's siblings and writes the new state in its
	// committer, with a context covering every sibling it read.
	Typed *resolve.Op
}

// MaxTTL bounds WriteOp.TTL: ten years.
const MaxTTL = 10 * 365 * 24 * time.Hour

// CheckTTL says why ttl is not a TTL a write may carry, or nil.
func CheckTTL(ttl time.Duration) error {
	switch {
	case ttl < 0:
		return fmt.Errorf("%w: ttl %s is negative; give a positive duration such as 30s, or none for a value that never expires", ErrBadInput, ttl)
	case ttl > MaxTTL:
		return fmt.Errorf("%w: ttl %s is over the maximum of %s", ErrBadInput, ttl, MaxTTL)
	case ttl > 0 && ttl < time.Millisecond:
		return fmt.Errorf("%w: ttl %s is under the 1ms resolution of the HLC; give at least 1ms", ErrBadInput, ttl)
	}
	return nil
}

// ExpiryAt is the expiry of a value written at HLC time hlc with ttl: hlc
// plus ttl's whole milliseconds in the HLC's physical part; 0 when ttl is
// not positive.
func ExpiryAt(at uint64, ttl time.Duration) uint64 {
	if ttl <= 0 {
		return 0
	}
	return at + uint64(ttl.Milliseconds())<<hlc.LogicalBits
}

// WriteResult is what a durable local write produced.
type WriteResult struct {
	// State is the key's state after the write; its Clock is the context a
	// client sends with its next write.
	State dvv.State
	Event *event.Event
}

// Write commits a local write and its outbox entry in one batch and returns
// once the batch is durable.
func (s *Store) Write(ctx context.Context, op WriteOp) (WriteResult, error) {
	if err := event.CheckKey(op.Key, s.opts.Limits.MaxKeyBytes); err != nil {
		return WriteResult{}, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	if len(op.Value) > s.opts.Limits.MaxValueBytes {
		return WriteResult{}, ValueTooLarge(len(op.Value), s.opts.Limits.MaxValueBytes)
	}
	if err := op.checkTTL(); err != nil {
		return WriteResult{}, err
	}
	if s.opts.ContextWait > 0 && len(op.Context) > 0 {
		wctx, cancel := context.WithTimeout(ctx, s.opts.ContextWait)
		err := s.WaitContext(wctx, op.Key, op.Context)
		cancel()
		if err != nil {
			return WriteResult{}, err
		}
		// The committer checks again: the wait is a courtesy, the check
		// in the batch is the rule.
	}
	var res WriteResult
	err := s.do(ctx, func(t *txn) error {
		var err error
		res, err = t.write(op)
		return err
	})
	return res, err
}

// checkTTL refuses a bad TTL, or one on a delete.
func (op WriteOp) checkTTL() error {
	if err := CheckTTL(op.TTL); err != nil {
		return err
	}
	if op.TTL != 0 && op.Delete {
		return fmt.Errorf("%w: a delete cannot carry a ttl (%s); only a value expires", ErrBadInput, op.TTL)
	}
	return nil
}

// DefaultMaxSiblings is Options.MaxSiblings' default, Riak's max_siblings.
const DefaultMaxSiblings = 100

// TooManySiblingsError is the ErrTooManySiblings a local write gets when
// it would add a sibling to a key that holds Max or more. Each write
// without the read's context under the siblings or record resolver keeps
// the values it does not supersede, so a client that never sends one
// grows the key, and every later write and apply of it, without bound.
type TooManySiblingsError struct {
	Key      string
	Siblings int // what the key holds
	Max      int
}

func (e *TooManySiblingsError) Error() string {
	return fmt.Sprintf("key %q holds %d siblings, and this write would add one beyond limits.max_siblings (%d): "+
		"read the key and write with the read's context, which replaces the siblings it read", e.Key, e.Siblings, e.Max)
}

func (e *TooManySiblingsError) Unwrap() error { return ErrTooManySiblings }

// ContextAheadError is the ErrContextAhead a write gets when its context
// names an event of another DC this DC has neither applied nor seen.
type ContextAheadError struct {
	Key       string
	Partition uint32
	DC        string
	Named     uint64 // the counter the context names
	Applied   uint64 // this DC's contiguous applied sequence of DC there
	// Read marks the error of a read (WaitRead) rather than a write.
	Read bool
}

func (e *ContextAheadError) Error() string {
	op := "write"
	if e.Read {
		op = "read"
	}
	return fmt.Sprintf("context names event %s:%d in the partition of key %q (%d), but this DC has applied %s's events only up to %d there; "+
		"retry once this DC has caught up, or %s at %s", e.DC, e.Named, e.Key, e.Partition, e.DC, e.Applied, op, e.DC)
}

func (e *ContextAheadError) Unwrap() error { return ErrContextAhead }

// contextAhead returns the first counter of client, for a DC other than
// this one, that neither the key's clock nor the applied vector covers.
func contextAhead(client, clock vclock.VV, self string, applied func(dc string) uint64) (string, uint64, uint64, bool) {
	for _, dc := range client.DCs() {
		n := client[dc]
		if dc == self || n <= clock[dc] {
			continue
		}
		if have := applied(dc); n > have {
			return dc, n, have, true
		}
	}
	return "", 0, 0, false
}

// WaitContext waits until this DC knows every event of another DC that
// client names for key: each counter is covered by the key's clock or by
// the contiguous applied sequence of the key's partition. It returns a
// *ContextAheadError when ctx ends first.
func (s *Store) WaitContext(ctx context.Context, key string, client vclock.VV) error {
	// A DC outside the configuration never catches up: refuse at once
	// rather than after the wait (a DC added to dcs elsewhere before
	// this sidecar restarted with it).
	if err := s.checkContextDCs(client); err != nil {
		return err
	}
	p := event.PartitionOf(key, s.opts.Partitions)
	for {
		s.mu.RLock()
		progress := s.mu.progress
		s.mu.RUnlock()
		st, _, err := s.Get(key)
		if err != nil {
			return err
		}
		dc, n, have, ahead := contextAhead(client, st.Clock, s.opts.DC, func(dc string) uint64 {
			s.mu.RLock()
			defer s.mu.RUnlock()
			if row := s.mu.applied[dc]; row != nil {
				return row[p]
			}
			return 0
		})
		if !ahead {
			return nil
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return &ContextAheadError{Key: key, Partition: p, DC: dc, Named: n, Applied: have}
		}
	}
}

func (t *txn) write(op WriteOp) (WriteResult, error) {
	w, err := t.prepare(op)
	if err != nil {
		return WriteResult{}, err
	}
	var hlc uint64
	if t.s.opts.Clock != nil {
		hlc = t.s.opts.Clock.Now()
	}
	res, err := t.make(w, hlc)
	if err != nil {
		return WriteResult{}, err
	}
	if err := t.appendOutbox(res.Event); err != nil {
		return WriteResult{}, err
	}
	return res, nil
}

// prepared is a local write checked against the key's state, not yet made.
type prepared struct {
	op    WriteOp
	p     uint32
	st    dvv.State
	ctx   vclock.VV     // the write's causal context
	typed resolve.Typed // the key's typed resolver, with op.Typed set
	size  int           // a bound of the typed state's encoded size
}

// prepare checks op against the key's state as this batch has left it. It
// changes nothing, so a failure leaves the batch as it was.
func (t *txn) prepare(op WriteOp) (prepared, error) {
	s := t.s
	p := event.PartitionOf(op.Key, s.opts.Partitions)
	st, _, err := t.state(op.Key)
	if err != nil {
		return prepared{}, err
	}
	r := s.opts.Resolvers.For(op.Key)
	implicit := op.Context == nil && (op.Delete || r.OnWrite())
	tr, typed := r.(resolve.Typed)
	typedSize := 0
	switch {
	case typed:
		op.Typed = typedOp(op)
		// A typed write reads the whole state, so it supersedes every
		// sibling it read; its join carries what they held.
		implicit = true
		// Check the operation against the state now, so a refusal leaves
		// the batch as it was; make applies it again with the final dot
		// and HLC, which the largest ones here bound in size.
		v, err := tr.Apply(st.Live(), *op.Typed, vclock.Dot{DC: s.opts.DC, N: math.MaxUint64}, math.MaxUint64>>1)
		if err != nil {
			return prepared{}, fmt.Errorf("%w: key %q: %v", ErrBadInput, op.Key, err)
		}
		if len(v) > s.opts.Limits.MaxValueBytes {
			return prepared{}, ValueTooLarge(len(v), s.opts.Limits.MaxValueBytes)
		}
		typedSize = len(v)
	case op.Typed != nil:
		return prepared{}, fmt.Errorf("%w: key %q uses the %s resolver; %s applies only to keys whose resolver is %s, %s or %s", ErrBadInput,
			op.Key, r.Name(), op.Typed.Kind, resolve.NameCounter, resolve.NameFields, resolve.NameSet)
	}
	client, err := t.checkContext(op.Key, op.Context, st.Clock, p)
	if err != nil {
		return prepared{}, err
	}
	w := prepared{op: op, p: p, st: st, ctx: st.WriteContext(client, implicit, t.purgeFrontier(p))}
	// Refused only when the write adds a sibling (supersedes none) to a
	// key already at the limit: a write that drops one never grows it.
	if len(st.Siblings) >= s.opts.MaxSiblings && len(st.Superseded(w.ctx)) == 0 {
		s.siblingsRefused.Add(1)
		return prepared{}, &TooManySiblingsError{Key: op.Key, Siblings: len(st.Siblings), Max: s.opts.MaxSiblings}
	}
	if typed {
		w.typed, w.size = tr, typedSize
	}
	return w, nil
}

// typedOp is the typed operation op makes on a typed key: its own, or the
// put or delete a plain write becomes.
func typedOp(op WriteOp) *resolve.Op {
	switch {
	case op.Typed != nil:
		return op.Typed
	case op.Delete:
		return &resolve.Op{Kind: resolve.OpDelete}
	}
	return &resolve.Op{Kind: resolve.OpPut, Body: op.Value}
}

// make makes a prepared write at HLC hlc: the next sequence of its
// partition, the key's new state, its conflict entries. The caller queues
// the event for publishing.
func (t *txn) make(w prepared, hlc uint64) (WriteResult, error) {
	s := t.s
	op, p := w.op, w.p
	seq := t.lastSeq(p) + 1
	dot := vclock.Dot{DC: s.opts.DC, N: seq}
	ver := dvv.Version{Value: op.Value, Deleted: op.Delete, HLC: hlc}
	if w.typed != nil {
		// prepare checked the same operation on the same state.
		v, err := w.typed.Apply(w.st.Live(), *op.Typed, dot, hlc)
		if err != nil {
			return WriteResult{}, fmt.Errorf("changelog: a typed write prepare accepted failed: %w", err)
		}
		ver = dvv.Version{Value: v, HLC: hlc}
		op.Delete, op.Resolve = false, false
	}
	if !op.Delete {
		ver.Expires = ExpiryAt(hlc, op.TTL)
	}
	ver.Value = normValue(ver)
	next := w.st.Write(dot, w.ctx, ver)
	ev := &event.Event{
		Version:   event.SchemaVersion,
		Origin:    s.opts.DC,
		Partition: p,
		Seq:       seq,
		Key:       op.Key,
		Op:        event.OpPut,
		Value:     ver.Value,
		Dot:       dot,
		Context:   w.ctx,
		HLC:       ver.HLC,
		Path:      []string{s.opts.DC},
		Expires:   ver.Expires,
	}
	switch {
	case op.Delete:
		ev.Op = event.OpDelete
	case op.Resolve:
		ev.Op = event.OpResolve
	}
	if err := t.setSeq(p, seq); err != nil {
		return WriteResult{}, err
	}
	t.observeHLC(ver.HLC)
	if err := t.putState(op.Key, w.st, next); err != nil {
		return WriteResult{}, err
	}
	if err := t.noteConflicts(op.Key, next, ver.HLC, cause{dc: s.opts.DC, op: ev.Op}); err != nil {
		return WriteResult{}, err
	}
	t.changes = append(t.changes, Change{Key: op.Key, State: next, Origin: s.opts.DC, Op: ev.Op, Dot: dot, HLC: ver.HLC})
	t.after = append(t.after, func() { s.writes.Add(1) })
	return WriteResult{State: next, Event: ev}, nil
}

// Outcome is what applying one remote event did.
type Outcome int

// The outcomes of Apply.
const (
	// Changed: the event changed the key's state.
	Changed Outcome = iota
	// Obsolete: the event was next in sequence, but an applied write's
	// context already covered it; only the applied vector moved.
	Obsolete
	// Duplicate: the event's sequence was already applied; nothing changed.
	Duplicate
	// Gap: an earlier event of the same origin and partition is missing;
	// nothing changed, and the event must be offered again once the gap is
	// filled.
	Gap
)

func (o Outcome) String() string {
	switch o {
	case Changed:
		return "changed"
	case Obsolete:
		return "obsolete"
	case Duplicate:
		return "duplicate"
	case Gap:
		return "gap"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// ApplyResult reports one event's outcome.
type ApplyResult struct {
	Outcome Outcome
	// Forwarded is set when the event was queued for forwarding.
	Forwarded bool
	// Expected is the sequence the store waits for on a Gap.
	Expected uint64
	// ClockErr is the refusal of the event's HLC by the store's clock
	// (a ClockUpdater), such as a reading beyond the drift bound.
	ClockErr error
}

// ClockUpdater is a Clock that also takes remote readings (the HLC receive
// rule). When Options.Clock is one, Apply feeds it the HLC of every event
// that changes a key, in the batch, before the batch commits: a local write
// that waited for that event (WaitContext) then gets a later HLC than the
// version it supersedes.
type ClockUpdater interface {
	Update(remote uint64) error
}

// Apply applies remote events in order, in one batch, and returns once it is
// durable. The ops of a transaction (event.Event.TxnOps) must be
// consecutive in evs; they are applied together or not at all (see
// applyGroup). forward, if not nil, decides for each event taken in sequence
// whether to queue it for forwarding (with this DC appended to its path).
// Events must already be validated (see event.Validate); the partition must
// match the key.
func (s *Store) Apply(ctx context.Context, evs []*event.Event, forward func(*event.Event) bool) ([]ApplyResult, error) {
	if err := s.checkRemote(evs); err != nil {
		return nil, err
	}
	return s.applyGroups(ctx, evs, nil, forward, s.doApply)
}

// checkRemote refuses remote events whose partition, origin or dot do not
// hold together.
func (s *Store) checkRemote(evs []*event.Event) error {
	for _, ev := range evs {
		if int(ev.Partition) >= s.opts.Partitions || ev.Partition != event.PartitionOf(ev.Key, s.opts.Partitions) {
			return fmt.Errorf("%w: event %s for key %q names partition %d", ErrBadInput, ev.Dot, ev.Key, ev.Partition)
		}
		if ev.Origin == s.opts.DC {
			return fmt.Errorf("%w: event %s originates here", ErrBadInput, ev.Dot)
		}
		if ev.Dot.DC != ev.Origin || ev.Dot.N != ev.Seq || ev.Seq == 0 {
			return fmt.Errorf("%w: event dot %s does not match origin %s seq %d", ErrBadInput, ev.Dot, ev.Origin, ev.Seq)
		}
	}
	return nil
}

// ApplyWhole is Apply for one of several sidecars of a DC (shards,
// docs/DESIGN.md invariant 16), which applies only its own ops of a
// transaction: whole maps the first op of such a part (an element of evs)
// to what is queued for forwarding in its place when forward allows it
// and the part was taken, the transaction whole; an empty one queues
// nothing (another shard forwards it). A downstream DC thus never
// receives part of a transaction.
func (s *Store) ApplyWhole(ctx context.Context, evs []*event.Event, whole map[*event.Event][]*event.Event, forward func(*event.Event) bool) ([]ApplyResult, error) {
	if err := s.checkRemote(evs); err != nil {
		return nil, err
	}
	return s.applyGroups(ctx, evs, whole, forward, s.doApply)
}

// applyGroups applies evs, a transaction's ops together, in one batch,
// submitted by do: Apply's share of the batch (doApply), or a request like
// any other; whole is as in ApplyWhole.
func (s *Store) applyGroups(ctx context.Context, evs []*event.Event, whole map[*event.Event][]*event.Event, forward func(*event.Event) bool,
	do func(ctx context.Context, n int, fn func(t *txn) error) error) ([]ApplyResult, error) {
	groups, err := event.Group(evs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	out := make([]ApplyResult, 0, len(evs))
	err = do(ctx, len(evs), func(t *txn) error {
		out = out[:0]
		for _, g := range groups {
			fw, part := whole[g[0]]
			if !part {
				fw = g
			}
			r, err := t.applyGroup(g, fw, forward)
			if err != nil {
				return err
			}
			out = append(out, r...)
		}
		return nil
	})
	return out, err
}

func (t *txn) apply(ev *event.Event, forward func(*event.Event) bool) (ApplyResult, error) {
	cur := t.appliedSeq(ev.Origin, ev.Partition)
	switch {
	case ev.Seq <= cur:
		return ApplyResult{Outcome: Duplicate}, nil
	case ev.Seq > cur+1:
		return ApplyResult{Outcome: Gap, Expected: cur + 1}, nil
	}
	st, _, err := t.state(ev.Key)
	if err != nil {
		return ApplyResult{}, err
	}
	ver := dvv.Version{Value: ev.Value, Deleted: ev.Op == event.OpDelete, HLC: ev.HLC, Expires: ev.Expires}
	ver.Value = normValue(ver)
	res := ApplyResult{Outcome: Obsolete}
	if next, ok := st.Apply(ev.Dot, ev.Context, ver); ok {
		res.Outcome = Changed
		if u, ok := t.s.opts.Clock.(ClockUpdater); ok {
			res.ClockErr = u.Update(ev.HLC)
		}
		if err := t.putState(ev.Key, st, next); err != nil {
			return ApplyResult{}, err
		}
		if err := t.noteConflicts(ev.Key, next, ev.HLC, cause{dc: ev.Origin, op: ev.Op}); err != nil {
			return ApplyResult{}, err
		}
		t.changes = append(t.changes, Change{Key: ev.Key, State: next, Origin: ev.Origin, Op: ev.Op, Dot: ev.Dot, HLC: ev.HLC})
	}
	if err := t.setApplied(ev.Origin, ev.Partition, ev.Seq); err != nil {
		return ApplyResult{}, err
	}
	if forward != nil && forward(ev) {
		fw := *ev
		fw.Path = append(append(make([]string, 0, len(ev.Path)+1), ev.Path...), t.s.opts.DC)
		if err := t.appendOutbox(&fw); err != nil {
			return ApplyResult{}, err
		}
		res.Forwarded = true
	}
	return res, nil
}

// EnsureSeqAbove raises the partition's sequence to at least seq, so the DC
// never reissues a sequence number its stream already holds, even when its
// data dir was restored from an old copy.
func (s *Store) EnsureSeqAbove(ctx context.Context, p uint32, seq uint64) error {
	if int(p) >= s.opts.Partitions {
		return fmt.Errorf("%w: partition %d of %d", ErrBadInput, p, s.opts.Partitions)
	}
	return s.do(ctx, func(t *txn) error {
		if t.lastSeq(p) >= seq {
			return nil
		}
		return t.setSeq(p, seq)
	})
}

// checkContext rejects a client context that names a DC outside the
// configuration, or an event of this DC that does not exist yet: no client
// can have read either. A counter of another DC must be one this DC knows:
// covered by the key's clock, or by the contiguous applied sequence of that
// DC in the key's partition. Otherwise the write is refused with
// ErrContextAhead, never cut: cutting would break causality for a client
// that read at a DC that is ahead (its write would not supersede what it
// read), and taking it as it is would let the clock cover that DC's events
// not applied yet, which then arrive as obsolete and are lost (a forged
// {dc2:1000} swallowed dc2's next writes of the key). Write waits up to
// Options.ContextWait for this DC to catch up first.
func (t *txn) checkContext(key string, client, clock vclock.VV, p uint32) (vclock.VV, error) {
	if len(client) == 0 {
		return client, nil
	}
	if err := t.s.checkContextDCs(client); err != nil {
		return nil, err
	}
	for dc, n := range client {
		if dc == t.s.opts.DC && n > t.lastSeq(p) {
			return nil, fmt.Errorf("%w: context names event %s:%d, but this DC has issued only %d in the key's partition", ErrBadInput, dc, n, t.lastSeq(p))
		}
	}
	dc, n, have, ahead := contextAhead(client, clock, t.s.opts.DC, func(dc string) uint64 { return t.appliedSeq(dc, p) })
	if ahead {
		return nil, &ContextAheadError{Key: key, Partition: p, DC: dc, Named: n, Applied: have}
	}
	return client, nil
}

// ValueTooLarge is the error for a value of n bytes over the limit of max
// bytes: ErrBadInput and ErrValueTooLarge, naming the limit's config key.
func ValueTooLarge(n, max int) error {
	return fmt.Errorf("%w: %w: the value is %d bytes, over limits.max_value_bytes (%d bytes); store a smaller value", ErrBadInput, ErrValueTooLarge, n, max)
}

// checkContextDCs refuses a context naming a DC outside Options.DCs.
func (s *Store) checkContextDCs(client vclock.VV) error {
	for dc := range client {
		if !slices.Contains(s.opts.DCs, dc) {
			return fmt.Errorf("%w: context names dc %q, which is not one of %v; a DC added elsewhere is known here once this sidecar restarts with it in dcs", ErrBadInput, dc, s.opts.DCs)
		}
	}
	return nil
}

// Recover applies events this DC itself wrote that its store no longer
// holds, because its data dir was restored from an old copy while its
// stream (and the other DCs) kept them. Each event must be the partition's
// next sequence; it is applied like a remote event and raises the
// partition's sequence, and it gets no outbox entry, since it is already in
// the stream. Events the store holds come back as Duplicate.
func (s *Store) Recover(ctx context.Context, evs []*event.Event) ([]ApplyResult, error) {
	for _, ev := range evs {
		if ev.Origin != s.opts.DC || ev.Dot.DC != ev.Origin || ev.Dot.N != ev.Seq || ev.Seq == 0 {
			return nil, fmt.Errorf("%w: event %s is not one of this DC's own", ErrBadInput, ev.Dot)
		}
		if int(ev.Partition) >= s.opts.Partitions || ev.Partition != event.PartitionOf(ev.Key, s.opts.Partitions) {
			return nil, fmt.Errorf("%w: event %s for key %q names partition %d", ErrBadInput, ev.Dot, ev.Key, ev.Partition)
		}
	}
	// Recovered events take this DC's own sequences, as local writes do:
	// they keep the local writes' queue, and its order.
	return s.applyGroups(ctx, evs, nil, nil, func(ctx context.Context, _ int, fn func(t *txn) error) error {
		return s.do(ctx, fn)
	})
}
