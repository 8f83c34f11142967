package changelog

import (
	"context"

	"github.com/cockroachdb/pebble/v2"

	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// Applied is an applied vector per partition: for each origin DC, the
// highest sequence applied contiguously in each partition. A DC's own
// entry is its last issued sequence.
type Applied map[string][]uint64

// Covers reports whether a has applied origin's event seq in partition p.
func (a Applied) Covers(origin string, p uint32, seq uint64) bool {
	row := a[origin]
	return int(p) < len(row) && row[p] >= seq
}

// LessEq reports whether every entry of a is at most b's.
func (a Applied) LessEq(b Applied) bool {
	for o, row := range a {
		for p, v := range row {
			if v > 0 && !b.Covers(o, uint32(p), v) {
				return false
			}
		}
	}
	return true
}

// Clone returns a deep copy.
func (a Applied) Clone() Applied {
	out := make(Applied, len(a))
	for o, row := range a {
		out[o] = append([]uint64(nil), row...)
	}
	return out
}

// Vector returns partition p's column as a version vector.
func (a Applied) Vector(p uint32) vclock.VV {
	vv := vclock.VV{}
	for o, row := range a {
		if int(p) < len(row) && row[p] > 0 {
			vv[o] = row[p]
		}
	}
	return vv
}

// peerReports keeps what a peer reported: its newest applied vector, and
// a short history of reports, newest last, that purging chooses from.
type peerReports struct {
	latest  Applied
	reports []Applied
}

const keepReports = 4

// Applied returns this DC's applied vector, its own sequences included.
func (s *Store) Applied() Applied {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(Applied, len(s.mu.applied)+1)
	for o, row := range s.mu.applied {
		out[o] = append([]uint64(nil), row...)
	}
	out[s.opts.DC] = append([]uint64(nil), s.mu.seq...)
	return out
}

// SetPeerApplied records the applied vector a peer DC reported, as its
// newest and in the history of its last few reports. The store keeps them
// in memory: they decide when outbox entries and tombstones may go, and
// how far a write has replicated. After a restart nothing goes until peers
// report again.
func (s *Store) SetPeerApplied(dc string, a Applied) { s.setPeerApplied(dc, a, true) }

// UpdatePeerApplied records a peer's report as its newest only, leaving
// the history alone: for reports sent between the periodic ones, which
// would otherwise crowd the history into a few milliseconds and leave
// purging no report this DC has caught up with.
func (s *Store) UpdatePeerApplied(dc string, a Applied) { s.setPeerApplied(dc, a, false) }

func (s *Store) setPeerApplied(dc string, a Applied, history bool) {
	if dc == s.opts.DC {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	pr := s.mu.peers[dc]
	if pr == nil {
		pr = &peerReports{}
		s.mu.peers[dc] = pr
	}
	if pr.latest == nil || !a.LessEq(pr.latest) {
		pr.latest = a.Clone()
		close(s.mu.reported)
		s.mu.reported = make(chan struct{})
	}
	if !history {
		return
	}
	if n := len(pr.reports); n > 0 && a.LessEq(pr.reports[n-1]) {
		return // stale or repeated
	}
	pr.reports = append(pr.reports, a.Clone())
	if len(pr.reports) > keepReports {
		pr.reports = pr.reports[1:]
	}
}

// PeerApplied returns the newest applied vector each peer reported.
func (s *Store) PeerApplied() map[string]Applied {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]Applied, len(s.mu.peers))
	for dc, pr := range s.mu.peers {
		out[dc] = pr.latest.Clone()
	}
	return out
}

// everyone returns, for each DC in Options.DCs other than this one, the
// report chosen by pick; ok is false when some DC has none.
func (s *Store) everyone(pick func(*peerReports) Applied) ([]Applied, bool) {
	var out []Applied
	for _, dc := range s.opts.DCs {
		if dc == s.opts.DC {
			continue
		}
		pr := s.mu.peers[dc]
		if pr == nil {
			return nil, false
		}
		a := pick(pr)
		if a == nil {
			return nil, false
		}
		out = append(out, a)
	}
	return out, true
}

// stableVector returns, per partition, what every DC has applied and this
// DC has caught up with: for each peer, the newest report (its latest, or
// one of its history) this DC's own applied vector covers, then the
// pointwise minimum of those and our own. A key whose clock is within it
// and holds only tombstones can be purged.
func (s *Store) stableVector() ([]vclock.VV, bool) {
	own := s.Applied()
	s.mu.RLock()
	reports, ok := s.everyone(func(pr *peerReports) Applied {
		if pr.latest.LessEq(own) {
			return pr.latest
		}
		for i := len(pr.reports) - 1; i >= 0; i-- {
			if pr.reports[i].LessEq(own) {
				return pr.reports[i]
			}
		}
		return nil
	})
	s.mu.RUnlock()
	if !ok {
		return nil, false
	}
	out := make([]vclock.VV, s.opts.Partitions)
	for p := range out {
		vv := own.Vector(uint32(p))
		for _, r := range reports {
			for o, n := range vv {
				if m := r.Vector(uint32(p))[o]; m < n {
					vv[o] = m
				}
			}
		}
		out[p] = vv
	}
	return out, true
}

// Purge removes keys that hold only tombstones once every DC has applied
// everything in their clocks (causal stability, never a timer), and returns
// how many it removed. The purged clocks join the partition's purge
// frontier, which later writes to an absent key carry in their context.
func (s *Store) Purge(ctx context.Context) (int, error) {
	sv, ok := s.stableVector()
	if !ok {
		return 0, nil
	}
	var cands []string
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxTomb}, UpperBound: []byte{pfxTomb + 1}})
	if err != nil {
		return 0, err
	}
	for it.First(); it.Valid(); it.Next() {
		cands = append(cands, string(it.Key()[1:]))
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	purged := 0
	for len(cands) > 0 {
		chunk := cands[:min(len(cands), 256)]
		cands = cands[len(chunk):]
		err := s.do(ctx, func(t *txn) error {
			for _, key := range chunk {
				st, ok, err := t.state(key)
				if err != nil {
					return err
				}
				p := event.PartitionOf(key, s.opts.Partitions)
				if !ok || !st.Stable(sv[p]) {
					continue
				}
				if err := t.deleteState(key, st); err != nil {
					return err
				}
				if err := t.setPurgeFrontier(p, t.purgeFrontier(p).Merge(st.Clock)); err != nil {
					return err
				}
				purged++
			}
			return nil
		})
		if err != nil {
			return purged, err
		}
	}
	return purged, nil
}

// TrimOutbox deletes published outbox entries that every DC has applied,
// oldest first, stopping at the first one some DC still lacks. It returns
// how many it deleted.
func (s *Store) TrimOutbox(ctx context.Context) (int, error) {
	s.mu.RLock()
	reports, ok := s.everyone(func(pr *peerReports) Applied { return pr.latest })
	low, ckpt := s.mu.outboxLow, s.mu.ckpt
	s.mu.RUnlock()
	if !ok || low > ckpt {
		return 0, nil
	}
	entries, err := s.ReadOutbox(low-1, int(min(ckpt-low+1, 4096)))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if e.Index > ckpt {
			break
		}
		all := true
		for _, r := range reports {
			for _, ev := range e.Events() {
				if !r.Covers(ev.Origin, ev.Partition, ev.Seq) {
					all = false
				}
			}
		}
		if !all {
			break
		}
		n++
	}
	if n == 0 {
		return 0, nil
	}
	last := entries[n-1].Index
	err = s.do(ctx, func(t *txn) error {
		for _, e := range entries[:n] {
			if err := t.del(outboxKey(e.Index)); err != nil {
				return err
			}
			for _, ev := range e.Events() {
				if ev.Origin == s.opts.DC && len(ev.Path) == 1 {
					if err := t.del(ownKey(ev.Partition, ev.Seq)); err != nil {
						return err
					}
				}
			}
		}
		t.trimTo = last + 1
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
