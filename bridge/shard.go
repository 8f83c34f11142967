package bridge

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
)

// Sharding (invariant 16 in docs/DESIGN.md): a DC may run several
// sidecars, each owning a disjoint set of partitions with its own store.
// They share the DC's stream REPL_<dc>: each publishes its own partitions'
// subjects, and its transactions on repl.<dc>.txn.<p>, p being the
// transaction's first op's partition (one of the shard's own, since a
// transaction never spans a DC's shards at its origin). A shard consumes
// only its partitions' subjects, and every transaction subject, from
// each upstream, and applies the ops of its own partitions.

// ShardTxnSubject returns the subject a sharded DC publishes a transaction
// on, repl.<dc>.txn.<p>, p being its first op's partition: the last
// message of the subjects of a shard's partitions then names (in
// Repl-Seq-His) the highest own sequence of each of them, as the last
// message of repl.<dc>.txn does for an unsharded DC.
func ShardTxnSubject(dc string, p uint32) string {
	return TxnSubject(dc) + "." + strconv.FormatUint(uint64(p), 10)
}

// ShardConsumerName returns the durable consumer name of a shard of DC
// self (shard being its ShardName) on up's stream, repl_<self>_from_<up>
// _shard<i>of<S>; ConsumerName(self, up) when shard is "".
func ShardConsumerName(self, up, shard string) string {
	if shard == "" {
		return ConsumerName(self, up)
	}
	return ConsumerName(self, up) + "_shard" + shard
}

// ShardName is the token naming shard i of n in consumer names, "<i>of<n>".
func ShardName(i, n int) string {
	if n < 2 {
		return ""
	}
	return strconv.Itoa(i) + "of" + strconv.Itoa(n)
}

// sharded reports whether this DC runs several shards.
func (r *Replicator) sharded() bool { return r.owned != nil }

// owns reports whether this shard owns partition p (every partition when
// the DC is not sharded).
func (r *Replicator) owns(p uint32) bool {
	return r.owned == nil || (int(p) < len(r.owned) && r.owned[p])
}

// ownedPartitions lists the partitions this shard owns, in order.
func (r *Replicator) ownedPartitions() []uint32 {
	out := make([]uint32, 0, r.opts.Partitions)
	for p := range r.opts.Partitions {
		if r.owns(uint32(p)) {
			out = append(out, uint32(p))
		}
	}
	return out
}

// filterSubjects returns what a shard's consumer of up reads: its own
// partitions' subjects and every transaction subject; nil (the whole
// stream) for an unsharded DC.
func (r *Replicator) filterSubjects(up string) []string {
	if !r.sharded() {
		return nil
	}
	var out []string
	for _, p := range r.ownedPartitions() {
		out = append(out, Subject(up, p))
	}
	return append(out, TxnSubject(up), TxnSubject(up)+".*")
}

// txnSubject is the subject this DC publishes a transaction on.
func (r *Replicator) txnSubject(ops []*event.Event) string {
	if !r.sharded() || len(ops) == 0 {
		return TxnSubject(r.self)
	}
	return ShardTxnSubject(r.self, ops[0].Partition)
}

// ownSubjects lists the subjects of this DC's stream this shard publishes
// and keeps trimmed: its partitions' subjects and transaction subjects,
// and repl.<dc>.txn.
func (r *Replicator) ownSubjects() []string {
	var out []string
	for _, p := range r.ownedPartitions() {
		out = append(out, Subject(r.self, p))
		if r.sharded() {
			out = append(out, ShardTxnSubject(r.self, p))
		}
	}
	return append(out, TxnSubject(r.self))
}

// ownOps keeps, of a message's events (one event, or a transaction's
// ops), those of this shard's partitions; a transaction keeps its ops of
// those partitions as a smaller transaction, applied in one batch here
// (its other ops are the other shards'). Unsharded DCs keep everything.
func (r *Replicator) ownOps(evs []*event.Event) []*event.Event {
	if !r.sharded() {
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
			if r.owns(ev.Partition) {
				out = append(out, ev)
			}
		}
		if g[0].TxnOps > 0 {
			for _, ev := range out[start:] {
				ev.TxnOps = len(out) - start
			}
		}
	}
	return out
}

// isTxnSubject reports whether subject is one of up's transaction subjects
// (repl.<up>.txn, or repl.<up>.txn.<p> for a sharded DC) and, for the
// latter, the partition it names.
func isTxnSubject(up, subject string) (p uint32, named, ok bool) {
	if subject == TxnSubject(up) {
		return 0, false, true
	}
	rest, found := strings.CutPrefix(subject, TxnSubject(up)+".")
	if !found {
		return 0, false, false
	}
	n, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, false, false
	}
	return uint32(n), true, true
}

// mergePeer folds a report from peer dc into the pointwise highest of its
// reports so far and returns that: a sharded peer's shards each report
// their own partitions (the others at 0), and a report that does not move
// forward changes nothing, as before (a peer restored from an old copy
// keeps counting at what it last reported).
func (r *Replicator) mergePeer(dc string, a changelog.Applied) changelog.Applied {
	m := r.peerMax[dc]
	if m == nil {
		r.peerMax[dc] = a.Clone()
		return r.ownView(a)
	}
	for origin, row := range a {
		have := m[origin]
		if len(have) < len(row) {
			have = append(have, make([]uint64, len(row)-len(have))...)
		}
		for p, n := range row {
			have[p] = max(have[p], n)
		}
		m[origin] = have
	}
	return r.ownView(m.Clone())
}

// ownView zeroes, in a peer's report, the partitions this shard does not
// own: the shard's store knows nothing of them (its applied vector holds
// 0 there), and purging and trimming compare the peer's report with it,
// entry by entry.
func (r *Replicator) ownView(a changelog.Applied) changelog.Applied {
	if !r.sharded() {
		return a
	}
	for _, row := range a {
		for p := range row {
			if !r.owns(uint32(p)) {
				row[p] = 0
			}
		}
	}
	return a
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
	// prepared or applied it (it waits a little for them).
	Prepare(ctx context.Context, id string, all, own []*event.Event) (bool, error)
	// Done forgets id once its own ops are applied here.
	Done(ctx context.Context, id string)
}

// TxnID names a transaction in the shards' coordination: its first op's
// Nats-Msg-Id.
func TxnID(all []*event.Event) string {
	return fmt.Sprintf("%s:%d:%d", all[0].Origin, all[0].Partition, all[0].Seq)
}

// applySpanning applies this shard's ops of a transaction that spans the
// DC's shards, through the Coordinator: already applied, it is
// acknowledged; held by a gap, repaired and offered again later; ready,
// prepared, and applied once every other owner is prepared too, else
// offered again later.
func (r *Replicator) applySpanning(ctx context.Context, l *link, x inbound) {
	id := TxnID(x.all)
	applied := r.store.Applied()[x.evs[0].Origin]
	next := map[uint32]uint64{}
	dup, gap := true, false
	for _, ev := range x.evs {
		n, ok := next[ev.Partition]
		if !ok && int(ev.Partition) < len(applied) {
			n = applied[ev.Partition] + 1
		} else if !ok {
			n = 1
		}
		switch {
		case ev.Seq < n:
			continue
		case ev.Seq > n:
			gap = true
			if err := r.repair(ctx, ev.Origin, ev.Partition, n, ev.Seq-1); err != nil {
				r.log.Debug("gap repair before a transaction spanning shards", "id", id, "err", err)
			}
		}
		dup = false
		next[ev.Partition] = ev.Seq + 1
	}
	switch {
	case dup:
		r.opts.Coordinator.Done(ctx, id)
		r.ack(l, x.msg)
		return
	case gap:
		r.nak(x.msg, r.opts.GapDelay)
		return
	}
	ready, err := r.opts.Coordinator.Prepare(ctx, id, x.all, x.evs)
	if err != nil || !ready {
		if err != nil {
			r.log.Warn("prepare a transaction spanning shards", "id", id, "err", err)
		}
		r.nak(x.msg, r.opts.GapDelay)
		return
	}
	res, err := r.store.Apply(ctx, x.evs, r.forwardEvent)
	if err != nil {
		r.applyFailed(ctx, l, []inbound{x}, err)
		return
	}
	if gapped(res) {
		r.nak(x.msg, r.opts.GapDelay)
		return
	}
	r.settle(l, x, res)
	r.opts.Coordinator.Done(ctx, id)
}

// repairedOwn keeps, of repaired events, this shard's ops; a transaction
// spanning the DC's shards is prepared through the Coordinator first (ids
// lists them, to be forgotten once applied), and when the other shards
// are not ready yet, it and everything after it are left for later (held).
func (r *Replicator) repairedOwn(ctx context.Context, evs []*event.Event) (own []*event.Event, ids []string, held bool) {
	if !r.sharded() || r.opts.Coordinator == nil {
		return r.ownOps(evs), nil, false
	}
	groups, err := event.Group(evs)
	if err != nil {
		return r.ownOps(evs), nil, false
	}
	for _, g := range groups {
		mine := r.ownOps(slices.Clone(g))
		if len(mine) == 0 {
			continue
		}
		if len(mine) < len(g) {
			id := TxnID(g)
			ready, err := r.opts.Coordinator.Prepare(ctx, id, g, mine)
			if err != nil || !ready {
				return own, ids, true
			}
			ids = append(ids, id)
		}
		own = append(own, mine...)
	}
	return own, ids, false
}
