package changelog

import (
	"context"
	"fmt"

	"github.com/replicatorhq/replicator/pkg/event"
)

// Default bounds of a local transaction (Options.TxnMaxOps, TxnMaxBytes).
const (
	DefaultTxnMaxOps   = 1000
	DefaultTxnMaxBytes = 4 << 20
)

// TxnError is the error of a transaction refused because of one op: Index
// is the op's position in the request. It wraps the op's error, so
// errors.Is sees ErrBadInput or ErrContextAhead through it.
type TxnError struct {
	Index int
	Err   error
}

func (e *TxnError) Error() string { return fmt.Sprintf("op %d: %v", e.Index, e.Err) }

func (e *TxnError) Unwrap() error { return e.Err }

// txnLimits returns the bounds a local transaction must keep.
func (s *Store) txnLimits() (ops, bytes int) {
	lim := s.opts.Limits
	ops, bytes = s.opts.TxnMaxOps, s.opts.TxnMaxBytes
	if ops <= 0 {
		ops = DefaultTxnMaxOps
	}
	if bytes <= 0 {
		bytes = DefaultTxnMaxBytes
	}
	bytes = min(bytes, lim.MaxTxnBytes)
	if c := s.txnCap.Load(); c > 0 {
		bytes = min(bytes, int(c))
	}
	return min(ops, lim.MaxTxnOps), bytes
}

// CapTxnBytes lowers the largest transaction this store takes to n bytes
// encoded, such as to fit the NATS server's max_payload.
func (s *Store) CapTxnBytes(n int) { s.txnCap.Store(int64(max(n, 1))) }

// TxnLimits returns the most ops and encoded bytes a transaction may have
// here.
func (s *Store) TxnLimits() (ops, bytes int) { return s.txnLimits() }

// encodedBound bounds the bytes op takes in a transaction message, before
// its sequence number and final context are known: a context names at
// most every DC, and each counter takes at most 9 bytes.
func (s *Store) encodedBound(op WriteOp) int {
	n := 96 + len(op.Key) + len(op.Value) + 2*len(s.opts.DC)
	if op.TTL > 0 {
		n += 13 // "exp" and a uint64
	}
	for _, dc := range s.opts.DCs {
		n += len(dc) + 10
	}
	return n
}

// WriteTxn commits the ops of one transaction in one batch, with one HLC,
// and queues them as one outbox entry, so that every other DC applies them
// together (invariant 11 in docs/DESIGN.md). It returns once the batch is
// durable, with one result per op in order. Nothing is written when any op
// is refused: a bad key or value, a key named twice, a context naming an
// event this DC has not applied within Options.ContextWait. The error is
// then a *TxnError naming the op.
func (s *Store) WriteTxn(ctx context.Context, ops []WriteOp) ([]WriteResult, error) {
	maxOps, maxBytes := s.txnLimits()
	switch {
	case len(ops) == 0:
		return nil, fmt.Errorf("%w: a transaction needs at least one op", ErrBadInput)
	case len(ops) > maxOps:
		return nil, fmt.Errorf("%w: a transaction of %d ops, over the %d-op limit", ErrBadInput, len(ops), maxOps)
	}
	seen := make(map[string]int, len(ops))
	size := 16
	for i, op := range ops {
		if err := event.CheckKey(op.Key, s.opts.Limits.MaxKeyBytes); err != nil {
			return nil, &TxnError{i, fmt.Errorf("%w: %v", ErrBadInput, err)}
		}
		if len(op.Value) > s.opts.Limits.MaxValueBytes {
			return nil, &TxnError{i, ValueTooLarge(len(op.Value), s.opts.Limits.MaxValueBytes)}
		}
		if err := op.checkTTL(); err != nil {
			return nil, &TxnError{i, err}
		}
		if op.Resolve {
			return nil, &TxnError{i, fmt.Errorf("%w: a transaction cannot resolve a conflict; resolve it on its own", ErrBadInput)}
		}
		if j, dup := seen[op.Key]; dup {
			return nil, &TxnError{i, fmt.Errorf("%w: key %q is already op %d; a key may appear once per transaction", ErrBadInput, op.Key, j)}
		}
		seen[op.Key] = i
		size += s.encodedBound(op)
	}
	if size > maxBytes {
		return nil, fmt.Errorf("%w: the transaction takes up to %d bytes encoded, over the %d-byte limit", ErrBadInput, size, maxBytes)
	}
	if s.opts.ContextWait > 0 {
		wctx, cancel := context.WithTimeout(ctx, s.opts.ContextWait)
		for i, op := range ops {
			if len(op.Context) == 0 {
				continue
			}
			if err := s.WaitContext(wctx, op.Key, op.Context); err != nil {
				cancel()
				return nil, &TxnError{i, err}
			}
		}
		cancel()
	}
	out := make([]WriteResult, len(ops))
	err := s.do(ctx, func(t *txn) error {
		ws := make([]prepared, len(ops))
		typedSize := size
		for i, op := range ops {
			w, err := t.prepare(op)
			if err != nil {
				return &TxnError{i, err}
			}
			ws[i] = w
			typedSize += w.size
		}
		if typedSize > maxBytes {
			return fmt.Errorf("%w: the transaction's typed values take up to %d bytes encoded with the rest, over the %d-byte limit", ErrBadInput, typedSize, maxBytes)
		}
		// Every check has passed; from here on the batch changes.
		var hlc uint64
		if s.opts.Clock != nil {
			hlc = s.opts.Clock.Now()
		}
		evs := make([]*event.Event, len(ws))
		for i, w := range ws {
			res, err := t.make(w, hlc)
			if err != nil {
				return err
			}
			res.Event.TxnOps = len(ws)
			out[i], evs[i] = res, res.Event
		}
		return t.appendOutboxTxn(evs)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// appendOutboxTxn queues the ops of one transaction as one outbox entry.
// Each own op is indexed by (partition, sequence) to that entry.
func (t *txn) appendOutboxTxn(ops []*event.Event) error {
	b, err := event.EncodeTxn(nil, ops)
	if err != nil {
		return fmt.Errorf("encode transaction %s: %w", ops[0].Dot, err)
	}
	idx := t.next
	t.next++
	if err := t.set(outboxKey(idx), b); err != nil {
		return err
	}
	for _, ev := range ops {
		if ev.Origin == t.s.opts.DC && len(ev.Path) == 1 {
			if err := t.set(ownKey(ev.Partition, ev.Seq), u64(idx)); err != nil {
				return err
			}
		}
	}
	t.outbox = true
	return nil
}

// applyGroup applies one unit of remote events: a single event, or the ops
// of one transaction, which are applied together or not at all. When any
// op of a transaction follows a gap, none is applied: each op gapped is
// reported Gap with the sequence its partition waits for, and every other
// op Gap with Expected its own sequence (its partition misses nothing). Ops
// already applied are Duplicates; the others are applied in order, and the
// transaction is forwarded whole when any of them was taken: fw, which is
// g itself but for a shard's part of a transaction (see ApplyWhole).
func (t *txn) applyGroup(g, fw []*event.Event, forward func(*event.Event) bool) ([]ApplyResult, error) {
	if len(g) == 1 && g[0].TxnOps == 0 {
		r, err := t.apply(g[0], forward)
		return []ApplyResult{r}, err
	}
	out := make([]ApplyResult, len(g))
	next := make(map[appliedRef]uint64, len(g))
	gap, fresh := false, 0
	for i, ev := range g {
		ref := appliedRef{ev.Origin, ev.Partition}
		cur, ok := next[ref]
		if !ok {
			cur = t.appliedSeq(ev.Origin, ev.Partition)
		}
		switch {
		case ev.Seq <= cur:
			out[i].Outcome = Duplicate
			continue
		case ev.Seq > cur+1:
			out[i] = ApplyResult{Outcome: Gap, Expected: cur + 1}
			gap = true
		default:
			out[i] = ApplyResult{Outcome: Gap, Expected: ev.Seq}
		}
		next[ref] = ev.Seq
		fresh++
	}
	if gap {
		for i := range out {
			if out[i].Outcome == Duplicate {
				out[i] = ApplyResult{Outcome: Gap, Expected: g[i].Seq}
			}
		}
		return out, nil
	}
	if fresh == 0 {
		return out, nil
	}
	for i, ev := range g {
		if out[i].Outcome == Duplicate {
			continue
		}
		r, err := t.apply(ev, nil)
		if err != nil {
			return nil, err
		}
		if r.Outcome == Gap || r.Outcome == Duplicate {
			// The checks above saw the same overlay; this cannot happen.
			return nil, fmt.Errorf("changelog: transaction %s op %d: %s after the check", g[0].Dot, i, r.Outcome)
		}
		out[i] = r
	}
	if len(fw) > 0 && forward != nil && forward(fw[0]) {
		copies := make([]*event.Event, len(fw))
		for i, ev := range fw {
			c := *ev
			c.Path = append(append(make([]string, 0, len(ev.Path)+1), ev.Path...), t.s.opts.DC)
			copies[i] = &c
		}
		if err := t.appendOutboxTxn(copies); err != nil {
			return nil, err
		}
		for i := range out {
			out[i].Forwarded = true
		}
	}
	return out, nil
}
