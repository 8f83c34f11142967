package core

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// Shard is what one of several sidecars of a DC (shards, docs/DESIGN.md
// invariant 16) decides differently: it owns some partitions, applies
// only their ops, and coordinates a transaction spanning the DC's shards
// with the other owners before applying its part. A nil *Shard owns
// every partition.
type Shard struct {
	// Owns reports whether this shard owns partition p.
	Owns func(p uint32) bool
	// Coordinator makes a transaction spanning the DC's shards visible at
	// once; nil applies each shard's part on its own.
	Coordinator Coordinator
}

// Coordinator makes a transaction whose ops span this DC's shards visible
// at every shard at once (invariants 11 and 16 in docs/DESIGN.md). A
// shard ready to apply its ops (no gap before them) first prepares: it
// records them durably and makes reads of their keys wait; once every
// other shard owning an op has prepared or applied the transaction, it
// applies its ops and forgets them. Reads of one shard's keys thus never
// show the transaction while another's show it, then not.
type Coordinator interface {
	// Prepare records that this shard holds id's own ops, ready, and
	// reports whether every other owner of one of all's partitions has
	// prepared or applied it; with wait it waits a little for them,
	// without it asks once.
	Prepare(ctx context.Context, id string, all, own []*event.Event, wait bool) (bool, error)
	// Done forgets id once its own ops are applied here.
	Done(ctx context.Context, id string)
}

// TxnID names a transaction in the shards' coordination: its first op's
// Nats-Msg-Id.
func TxnID(all []*event.Event) string {
	return fmt.Sprintf("%s:%d:%d", all[0].Origin, all[0].Partition, all[0].Seq)
}

// owns reports whether the shard owns p; a nil shard owns everything.
func (s *Shard) owns(p uint32) bool { return s == nil || s.Owns == nil || s.Owns(p) }

// Own keeps, of a message's events (one event, or a transaction's ops),
// those of this shard's partitions; a transaction keeps its ops of those
// partitions as a smaller transaction, applied in one batch here (its
// other ops are the other shards'), as copies: evs stay as they came. A
// nil shard keeps everything.
func (s *Shard) Own(evs []*event.Event) []*event.Event {
	if s == nil || s.Owns == nil {
		return evs
	}
	groups, err := event.Group(evs)
	if err != nil {
		return evs // the store refuses it with the same error
	}
	out := evs[:0:0]
	for _, g := range groups {
		start := len(out)
		for _, ev := range g {
			if s.Owns(ev.Partition) {
				out = append(out, ev)
			}
		}
		if n := len(out) - start; g[0].TxnOps > 0 && n < len(g) {
			for i, ev := range out[start:] {
				c := *ev
				c.TxnOps = n
				out[start+i] = &c
			}
		}
	}
	return out
}

// Forwards reports whether this shard is the one of its DC that forwards
// the transaction all (its ops, as they came), when the plan forwards it:
// the owner of its first op's partition. That shard always applies part
// of it, and publishes it on repl.<dc>.txn.<p>, p that partition, one of
// its own subjects (TxnSubjectFor); every other shard forwards nothing
// of it, so a transaction leaves a DC whole and once. A nil shard
// forwards everything.
func (s *Shard) Forwards(all []*event.Event) bool {
	return len(all) > 0 && s.owns(all[0].Partition)
}

// whole returns what is forwarded in place of own, this shard's part of
// the transaction all: all when this shard forwards it, else nothing.
// part is false when own is all of it (a single event, or a transaction
// wholly in this shard's partitions), which forwards as it is.
func (s *Shard) whole(all, own []*event.Event) (fw []*event.Event, part bool) {
	if len(own) == len(all) {
		return nil, false
	}
	if s.Forwards(all) {
		return all, true
	}
	return nil, true
}

// WholeApplier is a Store that applies a shard's part of a transaction
// and forwards the transaction whole (changelog.Store.ApplyWhole).
type WholeApplier interface {
	ApplyWhole(ctx context.Context, evs []*event.Event, whole map[*event.Event][]*event.Event, forward func(*event.Event) bool) ([]changelog.ApplyResult, error)
}

// applyWhole applies evs, forwarding for each part of a transaction in
// whole (keyed by its first op) what whole maps it to; with no part, it
// is Store.Apply.
func applyWhole(ctx context.Context, st Store, evs []*event.Event, whole map[*event.Event][]*event.Event, forward func(*event.Event) bool) ([]changelog.ApplyResult, error) {
	if len(whole) == 0 {
		return st.Apply(ctx, evs, forward)
	}
	w, ok := st.(WholeApplier)
	if !ok {
		return nil, errors.New("core: this store cannot apply a shard's part of a transaction (it has no ApplyWhole)")
	}
	return w.ApplyWhole(ctx, evs, whole, forward)
}

// spans reports whether a message whose events are all had ops this
// shard does not own, to be coordinated.
func (s *Shard) spans(all, own []*event.Event) bool {
	return s != nil && s.Coordinator != nil && len(own) < len(all)
}

// repaired keeps, of repaired events, this shard's ops, and maps each part
// of a transaction it keeps to what is forwarded in its place (whole, see
// ApplyWhole); a transaction spanning the DC's shards is prepared through
// the Coordinator first (ids names them by their first op in own, to be
// forgotten once applied), and when the other shards are not ready yet,
// it and everything after it are left for later (held). wait says whether
// to wait a little for the other shards (Coordinator.Prepare).
func (s *Shard) repaired(ctx context.Context, evs []*event.Event, wait bool) (own []*event.Event, whole map[*event.Event][]*event.Event, ids map[*event.Event]string, held bool) {
	if s == nil || s.Owns == nil {
		return evs, nil, nil, false
	}
	groups, err := event.Group(evs)
	if err != nil {
		return s.Own(evs), nil, nil, false
	}
	whole, ids = map[*event.Event][]*event.Event{}, map[*event.Event]string{}
	for _, g := range groups {
		mine := s.Own(slices.Clone(g))
		if len(mine) == 0 {
			continue
		}
		if len(mine) < len(g) && s.Coordinator != nil {
			id := TxnID(g)
			ready, err := s.Coordinator.Prepare(ctx, id, g, mine, wait)
			if err != nil || !ready {
				return own, whole, ids, true
			}
			ids[mine[0]] = id
		}
		if fw, part := s.whole(g, mine); part {
			whole[mine[0]] = fw
		}
		own = append(own, mine...)
	}
	return own, whole, ids, false
}

// TxnSubjectFor is the subject a DC publishes a transaction on:
// repl.<dc>.txn, or for a shard repl.<dc>.txn.<p>, p its first op's
// partition (names.ShardTxnSubject).
func TxnSubjectFor(dc string, sharded bool, ops []*event.Event) string {
	if !sharded || len(ops) == 0 {
		return names.TxnSubject(dc)
	}
	return names.ShardTxnSubject(dc, ops[0].Partition)
}

// isTxnSubject reports whether subject is one of up's transaction subjects
// (repl.<up>.txn, or repl.<up>.txn.<p> of a sharded DC) and, for the
// latter, the partition it names.
func isTxnSubject(up, subject string) (p uint32, named, ok bool) {
	if subject == names.TxnSubject(up) {
		return 0, false, true
	}
	rest, found := strings.CutPrefix(subject, names.TxnSubject(up)+".")
	if !found {
		return 0, false, false
	}
	n, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, false, false
	}
	return uint32(n), true, true
}

// spanning applies this shard's ops of a transaction that spans the DC's
// shards, through the Coordinator: already applied, it is acknowledged;
// held by a gap, repaired and offered again later; ready, prepared, and
// applied once every other owner is prepared too, else offered again
// later. wait says whether to wait a little for the other owners, and to
// repair a gap before it (see Receive).
func (l *Link) spanning(ctx context.Context, t *Tally, m Msg, x inbound, all []*event.Event, wait bool) Verdict {
	sh := l.cfg.Shard
	id := TxnID(all)
	applied := l.cfg.Repair.Store.Applied()[x.evs[0].Origin]
	next := map[uint32]uint64{}
	dup, gap := true, false
	for _, ev := range x.evs {
		n, ok := next[ev.Partition]
		if !ok {
			n = 1
			if int(ev.Partition) < len(applied) {
				n = applied[ev.Partition] + 1
			}
		}
		switch {
		case ev.Seq < n:
			continue
		case ev.Seq > n:
			gap = true
			if !wait {
				// An earlier transaction of the batch was not ready: the
				// gap is most likely it, offered again shortly; repairing
				// would prepare it and wait for it here once more.
				break
			}
			rt, err := l.repairer().Repair(ctx, ev.Origin, ev.Partition, n, ev.Seq-1)
			t.Add(rt)
			if err != nil {
				l.log.Debug("gap repair before a transaction spanning shards", "id", id, "err", err)
			}
		}
		dup = false
		next[ev.Partition] = ev.Seq + 1
	}
	switch {
	case dup:
		sh.Coordinator.Done(ctx, id)
		return l.ack(m)
	case gap:
		return Verdict{Action: Nak, Delay: l.cfg.GapDelay}
	}
	// Once every owner has prepared, the transaction is this DC's (its
	// commit point: each part is durable and reads of its keys wait until
	// it is applied), and the shard that forwards it does so as it
	// applies its own part.
	ready, err := sh.Coordinator.Prepare(ctx, id, all, x.evs, wait)
	if err != nil || !ready {
		if err != nil {
			l.log.Warn("prepare a transaction spanning shards", "id", id, "err", err)
		}
		return Verdict{Action: Nak, Delay: l.cfg.GapDelay}
	}
	res, err := applyWhole(ctx, l.cfg.Repair.Store, x.evs, x.whole(), l.cfg.Repair.Forward)
	if err != nil {
		t.ApplyErrors++
		l.log.Warn("apply a transaction spanning shards", "id", id, "err", err)
		return Verdict{Action: Nak, Delay: l.cfg.RetryDelay}
	}
	if gapped(res) {
		return Verdict{Action: Nak, Delay: l.cfg.GapDelay}
	}
	v := l.settle(t, m, x, res)
	sh.Coordinator.Done(ctx, id)
	return v
}
