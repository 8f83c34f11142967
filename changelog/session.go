package changelog

import (
	"context"
	"fmt"
	"slices"

	"github.com/replicatorhq/replicator/pkg/session"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// Session guarantees (invariant 12 in docs/DESIGN.md): a read that carries what
// its client has seen waits until this DC covers it, and a write can wait
// until other DCs have applied it.

// Scope returns what a session token at this store may name.
func (s *Store) Scope() session.Scope {
	return session.Scope{DCs: s.opts.DCs, Partitions: s.opts.Partitions}
}

// DCs returns every DC of the deployment, in configuration order.
func (s *Store) DCs() []string { return slices.Clone(s.opts.DCs) }

// SessionAheadError is the ErrContextAhead a wait for a session token gets
// when this DC has not applied every event the token names in time.
type SessionAheadError struct {
	// Entry is the first entry not covered.
	Entry session.Entry
	// Applied is this DC's contiguous applied sequence of Entry's origin
	// and partition.
	Applied uint64
	// Missing counts the entries not covered.
	Missing int
}

func (e *SessionAheadError) Error() string {
	more := ""
	if e.Missing > 1 {
		more = fmt.Sprintf(" (and %d more entries are not covered)", e.Missing-1)
	}
	return fmt.Sprintf("the session names event %s, but this DC has applied %s's events of partition %d only up to %d%s; retry once this DC has caught up, or read at %s",
		e.Entry, e.Entry.Origin, e.Entry.Partition, e.Applied, more, e.Entry.Origin)
}

func (e *SessionAheadError) Unwrap() error { return ErrContextAhead }

// uncovered returns the first entry of tok, of another DC, that this DC
// has not applied contiguously, this DC's sequence there, and how many
// such entries there are. Entries of this DC are always covered. The
// caller holds s.mu.
func (s *Store) uncovered(tok session.Token) (first session.Entry, have uint64, n int) {
	for _, e := range tok {
		if e.Origin == s.opts.DC || (s.opts.Owns != nil && !s.opts.Owns(e.Partition)) {
			// This DC's own events are covered; another shard's
			// partitions are that shard's to cover.
			continue
		}
		var got uint64
		if row := s.mu.applied[e.Origin]; row != nil {
			got = row[e.Partition]
		}
		if got < e.Seq {
			if n == 0 {
				first, have = e, got
			}
			n++
		}
	}
	return first, have, n
}

// WaitApplied waits until this DC's contiguous applied sequence of every
// (origin, partition) tok names reaches the entry's seq; entries of this
// DC are covered already. It wakes on the store's commits, and returns a
// *SessionAheadError when ctx ends first, ErrBadInput for a token naming
// an unknown DC or partition, ErrClosed once the store closes, ErrFailed
// once it has stopped. A transaction calls it with the token the client
// sent.
func (s *Store) WaitApplied(ctx context.Context, tok session.Token) error {
	if err := s.Scope().Check(tok); err != nil {
		return fmt.Errorf("%w: session token: %w", ErrBadInput, err)
	}
	for {
		if err := s.usable(); err != nil {
			return err
		}
		s.mu.RLock()
		progress := s.mu.progress
		first, have, n := s.uncovered(tok)
		s.mu.RUnlock()
		if n == 0 {
			return nil
		}
		select {
		case <-progress:
		case <-s.stop:
			return ErrClosed
		case <-ctx.Done():
			return &SessionAheadError{Entry: first, Applied: have, Missing: n}
		}
	}
}

// WaitRead waits, up to Options.ContextWait (zero: not at all), until this
// DC covers what a reader has seen: client, the context it read key with
// (nil for none), by WaitContext's rule, and every entry of tok, by
// WaitApplied's. A context naming a DC outside the configuration is
// ErrBadInput. When the bound passes first it returns a
// *ContextAheadError (with Read set) or a *SessionAheadError, both
// ErrContextAhead: the read should answer 503 and be retried.
func (s *Store) WaitRead(ctx context.Context, key string, client vclock.VV, tok session.Token) error {
	if err := s.checkContextDCs(client); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.ContextWait)
	defer cancel()
	if len(client) > 0 {
		if err := s.WaitContext(ctx, key, client); err != nil {
			if ca, ok := err.(*ContextAheadError); ok {
				ca.Read = true
			}
			return err
		}
	}
	return s.WaitApplied(ctx, tok)
}

// replicatedLocked returns how many DCs have applied every event tok
// names, the weakest entry deciding: an event's origin counts (it wrote
// it durably), this DC counts once its durable applied vector covers it,
// and every other DC once its newest report does. The caller holds s.mu.
func (s *Store) replicatedLocked(tok session.Token) int {
	least := len(s.opts.DCs)
	for _, e := range tok {
		k := 0
		for _, dc := range s.opts.DCs {
			var a Applied
			switch {
			case dc == e.Origin:
				k++
				continue
			case dc == s.opts.DC:
				a = s.mu.durable
			case s.mu.peers[dc] != nil:
				a = s.mu.peers[dc].latest
			}
			if a.Covers(e.Origin, e.Partition, e.Seq) {
				k++
			}
		}
		least = min(least, k)
	}
	return least
}

// Replicated returns how many DCs, as this DC knows from its own durable
// applied vector and its peers' reports, have applied every event tok
// names (see WaitReplicated).
func (s *Store) Replicated(tok session.Token) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.replicatedLocked(tok)
}

// WaitReplicated waits until at least n DCs, the events' origins and this
// DC included, have applied every event tok names (a write's dot, or a
// transaction's), judged from this DC's durable applied vector and the
// applied vectors its peers report on repl.applied.<dc>. It wakes when a
// report or this DC's durable vector moves, and returns how many DCs had
// applied them: at least n with a nil error, fewer with ctx's error when
// ctx ended first, or ErrClosed (ErrFailed). The writes stand either way.
func (s *Store) WaitReplicated(ctx context.Context, tok session.Token, n int) (int, error) {
	if err := s.Scope().Check(tok); err != nil {
		return 0, fmt.Errorf("%w: session token: %w", ErrBadInput, err)
	}
	for {
		s.mu.RLock()
		reported, durable := s.mu.reported, s.mu.durableMoved
		k := s.replicatedLocked(tok)
		s.mu.RUnlock()
		if k >= n {
			return k, nil
		}
		if err := s.usable(); err != nil {
			return k, err
		}
		select {
		case <-reported:
		case <-durable:
		case <-s.stop:
			return k, ErrClosed
		case <-ctx.Done():
			return k, ctx.Err()
		}
	}
}

// AppliedDurable returns this DC's applied vector, its own sequences
// included, as far as batches whose WAL sync completed: what it reports
// to its peers, so that a peer counting this DC for a replicated write
// never counts a write a power failure here could still lose.
func (s *Store) AppliedDurable() Applied {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.durable.Clone()
}

// DurableMoved returns a channel closed once AppliedDurable next moves.
func (s *Store) DurableMoved() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.durableMoved
}
