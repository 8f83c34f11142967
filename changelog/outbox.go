package changelog

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/replicatorhq/replicator/pkg/event"
)

// OutboxEntry is one event waiting to be published, or published but kept
// until every DC has applied it.
type OutboxEntry struct {
	// Index is the entry's position in this DC's outbox.
	Index uint64
	// Data is the encoded event, or transaction.
	Data []byte
	// Event is the event, or a transaction's first op.
	Event *event.Event
	// Txn holds a transaction's ops (Event is Txn[0]); nil for a single
	// event.
	Txn []*event.Event
}

// Events returns the entry's events: its one event, or its transaction's
// ops.
func (e OutboxEntry) Events() []*event.Event {
	if e.Txn != nil {
		return e.Txn
	}
	return []*event.Event{e.Event}
}

// Checkpoint returns the highest outbox index JetStream has acknowledged.
func (s *Store) Checkpoint() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.ckpt
}

// OutboxDepth returns how many entries wait to be published.
func (s *Store) OutboxDepth() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.outboxNext - 1 - s.mu.ckpt
}

// OutboxHeld returns how many entries the outbox holds: those not yet
// published, and those published but not yet applied by every DC (the
// outbox is trimmed once every DC's report covers an entry). 0 means
// every DC has applied every event this store issued: the check before a
// DC's sidecars are stopped for good, as when its shard count changes
// (README "Changing a DC's shard count").
func (s *Store) OutboxHeld() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.outboxNext - s.mu.outboxLow
}

// ReadOutbox returns up to max entries with an index above after, in order.
// It returns only entries whose batch is durable, so nothing is published
// that a crash could still take back.
func (s *Store) ReadOutbox(after uint64, max int) ([]OutboxEntry, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	end := s.mu.outboxSync
	s.mu.RUnlock()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: outboxKey(after + 1), UpperBound: outboxKey(end)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []OutboxEntry
	for it.First(); it.Valid() && len(out) < max; it.Next() {
		data := append([]byte(nil), it.Value()...)
		evs, err := event.DecodeMessage(data, event.DefaultLimits())
		if err != nil {
			return nil, fmt.Errorf("changelog: outbox entry %d: %w", binary.BigEndian.Uint64(it.Key()[1:]), err)
		}
		e := OutboxEntry{Index: binary.BigEndian.Uint64(it.Key()[1:]), Data: data, Event: evs[0]}
		if evs[0].TxnOps > 0 {
			e.Txn = evs
		}
		out = append(out, e)
	}
	return out, it.Error()
}

// SetCheckpoint records that JetStream acknowledged every outbox entry up to
// idx. The checkpoint never moves back.
func (s *Store) SetCheckpoint(ctx context.Context, idx uint64) error {
	return s.do(ctx, checkpointFn(idx))
}

// AdvanceCheckpoint records the checkpoint like SetCheckpoint but returns
// at once, without waiting for the batch, so the publisher can send the
// next window while the checkpoint is written. It drops the update when the
// committer's queue is full; a later one carries a higher index. A
// checkpoint lost in a crash only makes the publisher send events again,
// which the stream's dedup window and the receivers' applied vectors absorb.
func (s *Store) AdvanceCheckpoint(idx uint64) {
	if s.isClosed() {
		return
	}
	r := &request{ctx: context.Background(), fn: checkpointFn(idx), done: make(chan error, 1)}
	select {
	case s.reqs <- r:
	default:
	}
}

func checkpointFn(idx uint64) func(t *txn) error {
	return func(t *txn) error {
		if idx <= t.ckpt {
			return nil
		}
		if idx >= t.next {
			return fmt.Errorf("%w: checkpoint %d is past the last outbox entry %d", ErrBadInput, idx, t.next-1)
		}
		t.ckpt = idx
		return t.set(metaKey(metaCkpt), u64(idx))
	}
}

// OwnEvents returns this DC's own events of partition p with sequence in
// [from, to], as encoded, for a DC that found a gap. A transaction holding
// several of those sequences is returned once, whole. It stops at the first
// sequence the outbox no longer holds and returns what it has.
func (s *Store) OwnEvents(p uint32, from, to uint64, max int) ([][]byte, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	end := s.mu.outboxSync
	s.mu.RUnlock()
	var out [][]byte
	last := uint64(0) // the entry of the previous sequence: a transaction's ops in one partition share one
	for seq := from; seq <= to && len(out) < max; seq++ {
		b, ok, err := s.get(ownKey(p, seq))
		if err != nil {
			return out, err
		}
		if !ok || binary.BigEndian.Uint64(b) >= end {
			break
		}
		idx := binary.BigEndian.Uint64(b)
		if idx == last {
			continue
		}
		last = idx
		data, ok, err := s.get(outboxKey(idx))
		if err != nil {
			return out, err
		}
		if !ok {
			break
		}
		out = append(out, data)
	}
	return out, nil
}
