package changelog

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/replicatorhq/replicator/pkg/hlc"
)

// Retention of the conflict log. Every discarded version is logged
// (docs/DESIGN.md, invariant 6, whose known gap this retention is), so a
// hot key under lww writes an entry per loss, for ever; without a
// bound the log, not the key, is what grows with time. Entries whose story
// is over (logged: the loss is recorded; resolved: a person closed the
// record) are kept for ConflictRetention and at most ConflictMaxEntries of
// them, oldest first out; open records wait for a person and are never
// pruned. The index below orders the prunable entries by HLC:
//
//	y <hlc u64> <id> -> empty
//
// where hlc is the entry's DetectedHLC (logged) or ResolvedHLC (resolved).
// Stores written before the index existed are indexed once at open.

const (
	pfxConflictAge = 'y'
	metaConflictIx = "cidx"
	// pruneBatch bounds the entries one prune batch deletes, so that
	// pruning a large backlog never holds up writes for long.
	pruneBatch = 4096
)

func conflictAgeKey(h uint64, id string) []byte {
	return append(binary.BigEndian.AppendUint64([]byte{pfxConflictAge}, h), id...)
}

// prunable reports whether an entry may age out, and the HLC it ages from.
func prunable(c Conflict) (uint64, bool) {
	switch c.Status {
	case StatusLogged:
		return c.DetectedHLC, true
	case StatusResolved:
		return c.ResolvedHLC, true
	}
	return 0, false
}

// indexConflict adds c to the age index when its story is over.
func (t *txn) indexConflict(c Conflict) error {
	h, ok := prunable(c)
	if !ok {
		return nil
	}
	t.after = append(t.after, func() { t.s.conflictsIndexed.Add(1) })
	return t.set(conflictAgeKey(h, c.ID), nil)
}

// indexConflicts builds the age index of a store written before it existed.
func (s *Store) indexConflicts() error {
	done, err := s.getU64(metaKey(metaConflictIx))
	if err != nil {
		return err
	}
	if done != 1 {
		b := s.db.NewBatch()
		defer b.Close()
		// Page through the log, so an old store's log is never all in memory.
		for after := ""; ; {
			cs, err := s.Conflicts(ConflictFilter{After: after, Limit: 10_000})
			if err != nil {
				return err
			}
			if len(cs) == 0 {
				break
			}
			for _, c := range cs {
				if h, ok := prunable(c); ok {
					if err := b.Set(conflictAgeKey(h, c.ID), nil, nil); err != nil {
						return err
					}
				}
			}
			after = cs[len(cs)-1].ID
		}
		if err := b.Set(metaKey(metaConflictIx), u64(1), nil); err != nil {
			return err
		}
		if err := b.Commit(pebble.Sync); err != nil {
			return err
		}
	}
	return s.countIndexed()
}

func (s *Store) countIndexed() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxConflictAge}, UpperBound: []byte{pfxConflictAge + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	var n int64
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	s.conflictsIndexed.Store(n)
	return it.Error()
}

// PruneConflicts deletes the logged and resolved conflict-log entries older
// than Options.ConflictRetention (by their HLC, against now), and the
// oldest beyond Options.ConflictMaxEntries. Open records stay. It returns
// how many entries it deleted.
func (s *Store) PruneConflicts(ctx context.Context, now time.Time) (int, error) {
	var cutoff uint64
	if r := s.opts.ConflictRetention; r > 0 && now.After(time.UnixMilli(0).Add(r)) {
		cutoff = uint64(hlc.Make(uint64(now.Add(-r).UnixMilli()), 0))
	}
	total := 0
	for {
		n, err := s.pruneOnce(ctx, cutoff)
		total += n
		if err != nil || n < pruneBatch {
			return total, err
		}
	}
}

func (s *Store) pruneOnce(ctx context.Context, cutoff uint64) (int, error) {
	max := int64(s.opts.ConflictMaxEntries)
	n := 0
	err := s.do(ctx, func(t *txn) error {
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxConflictAge}, UpperBound: []byte{pfxConflictAge + 1}})
		if err != nil {
			return err
		}
		defer it.Close()
		held := s.conflictsIndexed.Load()
		for it.First(); it.Valid() && n < pruneBatch; it.Next() {
			k := it.Key()
			h := binary.BigEndian.Uint64(k[1:9])
			over := max > 0 && held-int64(n) > max
			if h >= cutoff && !over {
				break
			}
			id := string(k[9:])
			if err := t.del(append([]byte(nil), k...)); err != nil {
				return err
			}
			// The entry may have changed since it was indexed (a record
			// reopened): only a still-prunable entry goes.
			c, ok, err := t.conflict(id)
			if err != nil {
				return err
			}
			if hc, still := prunable(c); ok && still && hc == h {
				if err := t.del(conflictKey(id)); err != nil {
					return err
				}
				delete(t.conf, id)
			}
			n++
		}
		if err := it.Error(); err != nil {
			return err
		}
		pruned := int64(n)
		t.after = append(t.after, func() {
			s.conflictsIndexed.Add(-pruned)
			s.conflictsPruned.Add(uint64(pruned))
		})
		return nil
	})
	return n, err
}

// pruneLoop prunes the conflict log every ConflictPruneEvery.
func (s *Store) pruneLoop() {
	s.pruneEvery(s.opts.ConflictPruneEvery, nil, "the conflict log", slog.LevelInfo, func() (int, error) {
		return s.PruneConflicts(context.Background(), time.Now())
	})
}

// pruneEvery runs prune every interval, and whenever wake receives, until
// the store closes; it logs what prune deleted at level, and its errors.
// The caller has added the goroutine to s.wg.
func (s *Store) pruneEvery(every time.Duration, wake <-chan struct{}, what string, level slog.Level, prune func() (int, error)) {
	defer s.wg.Done()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		case <-wake:
		}
		n, err := prune()
		switch {
		case errors.Is(err, ErrClosed):
			return
		case err != nil:
			s.log.Warn("pruning "+what+" failed; retried at the next interval", "err", err)
		case n > 0:
			s.log.Log(context.Background(), level, "pruned "+what, "entries", n)
		}
	}
}
