package bridge

import (
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/names"
)

// Sharding (invariant 16 in docs/DESIGN.md): a DC may run several
// sidecars, each owning a disjoint set of partitions with its own store.
// They share the DC's stream REPL_<dc>: each publishes its own partitions'
// subjects, and its transactions on repl.<dc>.txn.<p>, p being the
// transaction's first op's partition (one of the shard's own, since a
// transaction never spans a DC's shards at its origin). A shard consumes
// only its partitions' subjects, and every transaction subject, from
// each upstream, and applies the ops of its own partitions (core.Shard).

// sharded reports whether this DC runs several shards.
func (e *env) sharded() bool { return e.owned != nil }

// owns reports whether this shard owns partition p (every partition when
// the DC is not sharded).
func (e *env) owns(p uint32) bool {
	return e.owned == nil || (int(p) < len(e.owned) && e.owned[p])
}

// ownedPartitions lists the partitions this shard owns, in order.
func (e *env) ownedPartitions() []uint32 {
	out := make([]uint32, 0, e.opts.Partitions)
	for p := range e.opts.Partitions {
		if e.owns(uint32(p)) {
			out = append(out, uint32(p))
		}
	}
	return out
}

// filterSubjects returns what a shard's consumer of up reads: its own
// partitions' subjects and every transaction subject; nil (the whole
// stream) for an unsharded DC.
func (e *env) filterSubjects(up string) []string {
	if !e.sharded() {
		return nil
	}
	var out []string
	for _, p := range e.ownedPartitions() {
		out = append(out, names.Subject(up, p))
	}
	return append(out, names.TxnSubject(up), names.ShardTxnWildcard(up))
}

// ownSubjects lists the subjects of this DC's stream this shard publishes
// and keeps trimmed: its partitions' subjects and transaction subjects,
// and repl.<dc>.txn.
func (e *env) ownSubjects() []string {
	var out []string
	for _, p := range e.ownedPartitions() {
		out = append(out, names.Subject(e.self, p))
		if e.sharded() {
			out = append(out, names.ShardTxnSubject(e.self, p))
		}
	}
	return append(out, names.TxnSubject(e.self))
}

// peerView folds a report from peer dc into the pointwise highest of its
// reports so far (max, which only the report intake goroutine uses) and
// returns that, keeping for a shard only its own partitions: a sharded
// peer's shards each report their own partitions (the others at 0), a
// report that does not move forward changes nothing, as before (a peer
// restored from an old copy keeps counting at what it last reported), and
// a shard's purging and trimming compare a peer's report with its own
// applied vector entry by entry (0 outside its partitions).
func (e *env) peerView(max map[string]changelog.Applied, dc string, a changelog.Applied) changelog.Applied {
	m := max[dc]
	if m == nil {
		m = changelog.Applied{}
		max[dc] = m
	}
	for origin, row := range a {
		have := m[origin]
		if len(have) < len(row) {
			have = append(have, make([]uint64, len(row)-len(have))...)
		}
		for p, n := range row {
			have[p] = maxU(have[p], n)
		}
		m[origin] = have
	}
	out := m.Clone()
	if !e.sharded() {
		return out
	}
	for _, row := range out {
		for p := range row {
			if !e.owns(uint32(p)) {
				row[p] = 0
			}
		}
	}
	return out
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}
