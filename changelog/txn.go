package changelog

import (
	"bytes"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// txn is one group's batch plus an overlay of what the batch changes, so
// that requests later in the group read what earlier ones wrote. The
// overlay is folded into the store's in-memory bookkeeping only after the
// batch commits.
type txn struct {
	s      *Store
	b      *pebble.Batch
	states map[string]*dvv.State // nil value: deleted in this batch
	// keys reads the committed key states for the whole group: one
	// iterator seeked per key costs a fraction of a Get each, since Get
	// sets up the memtable and level iterators anew every time. Opened on
	// the first read, after the previous group's batch was applied, and
	// closed before this group's batch is.
	keys    *pebble.Iterator
	seq     map[uint32]uint64
	applied map[appliedRef]uint64
	purged  map[uint32]vclock.VV
	conf    map[string]Conflict // conflict entries written in this batch
	next    uint64              // next outbox index
	hlcMax  uint64
	ckpt    uint64
	outbox  bool
	pending bool   // applied, WAL sync not yet waited for
	trimTo  uint64 // outbox entries below this index were deleted
	changes []Change
	feed    feedTxn // what the batch does to the change feed (feed.go)
	after   []func()
	changed int // changes made so far, to the batch or the overlay
}

type appliedRef struct {
	origin string
	p      uint32
}

func (s *Store) newTxn() *txn {
	s.mu.RLock()
	next, ckpt := s.mu.outboxNext, s.mu.ckpt
	s.mu.RUnlock()
	return &txn{
		s:       s,
		b:       s.db.NewBatch(),
		states:  map[string]*dvv.State{},
		seq:     map[uint32]uint64{},
		applied: map[appliedRef]uint64{},
		purged:  map[uint32]vclock.VV{},
		conf:    map[string]Conflict{},
		next:    next,
		ckpt:    ckpt,
	}
}

func (t *txn) close() {
	t.closeKeys()
	t.b.Close()
}

func (t *txn) closeKeys() {
	if t.keys != nil {
		t.keys.Close()
		t.keys = nil
	}
}

// committedState returns the encoded state of the key as committed before
// this group, or ok false when the store holds none.
func (t *txn) committedState(key string) (b []byte, ok bool, err error) {
	// As every read: nothing from a closed or failed store.
	if err := t.s.usable(); err != nil {
		return nil, false, err
	}
	if t.keys == nil {
		it, err := t.s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxKey}, UpperBound: []byte{pfxKey + 1}})
		if err != nil {
			return nil, false, fmt.Errorf("changelog: read key states: %w", err)
		}
		t.keys = it
	}
	k := keyKey(key)
	if !t.keys.SeekPrefixGE(k) || !bytes.Equal(t.keys.Key(), k) {
		return nil, false, t.keys.Error()
	}
	v, err := t.keys.ValueAndErr()
	if err != nil {
		return nil, false, fmt.Errorf("changelog: get %q: %w", k, err)
	}
	return bytes.Clone(v), true, nil
}

// mark and dirtySince let commitGroup tell a request that failed before
// changing anything from one that failed half way; every change to the
// batch or to the overlay counts.
func (t *txn) mark() int { return t.changed }

func (t *txn) dirtySince(m int) bool { return t.changed != m }

func (t *txn) set(k, v []byte) error {
	t.changed++
	return t.b.Set(k, v, nil)
}

func (t *txn) del(k []byte) error {
	t.changed++
	return t.b.Delete(k, nil)
}

// state returns the key's current state, as this batch has left it.
func (t *txn) state(key string) (dvv.State, bool, error) {
	if st, ok := t.states[key]; ok {
		if st == nil {
			return dvv.State{Clock: vclock.VV{}}, false, nil
		}
		return *st, true, nil
	}
	b, ok, err := t.committedState(key)
	if err != nil || !ok {
		return dvv.State{Clock: vclock.VV{}}, false, err
	}
	st, err := decodeState(b)
	if err != nil {
		return dvv.State{}, false, fmt.Errorf("key %q: %w", key, err)
	}
	return st, true, nil
}

// putState stores the key's new state; prev is the state it replaces, so
// the tombstone index changes only when the key enters or leaves the
// tombstone-only condition.
func (t *txn) putState(key string, prev, st dvv.State) error {
	b, err := encodeState(st)
	if err != nil {
		return err
	}
	if err := t.set(keyKey(key), b); err != nil {
		return err
	}
	switch was, is := tombOnly(prev), tombOnly(st); {
	case is && !was:
		if err := t.set(tombKey(key), nil); err != nil {
			return err
		}
	case was && !is:
		if err := t.del(tombKey(key)); err != nil {
			return err
		}
	}
	if err := t.indexExpiry(key, prev.Expiry(), st.Expiry()); err != nil {
		return err
	}
	t.states[key] = &st
	t.feed.encoded(key, b, len(t.changes))
	return nil
}

// deleteState removes the key's state; prev is the state it held.
func (t *txn) deleteState(key string, prev dvv.State) error {
	if err := t.del(keyKey(key)); err != nil {
		return err
	}
	if err := t.del(tombKey(key)); err != nil {
		return err
	}
	if err := t.indexExpiry(key, prev.Expiry(), 0); err != nil {
		return err
	}
	t.states[key] = nil
	t.feed.encoded(key, nil, -1)
	return nil
}

// observeHLC records the HLC of a local write. Only local writes raise the
// persisted high-water mark: it is what keeps this DC's own clock monotonic
// across restarts, and a remote reading (perhaps from a clock far ahead)
// must not become this DC's time after a restart.
func (t *txn) observeHLC(h uint64) {
	if h > t.hlcMax {
		t.hlcMax = h
	}
}

func (t *txn) lastSeq(p uint32) uint64 {
	if v, ok := t.seq[p]; ok {
		return v
	}
	t.s.mu.RLock()
	defer t.s.mu.RUnlock()
	return t.s.mu.seq[p]
}

// setSeq records the partition's last issued sequence; commit writes it
// once per batch.
func (t *txn) setSeq(p uint32, v uint64) error {
	t.changed++
	t.seq[p] = v
	return nil
}

func (t *txn) appliedSeq(origin string, p uint32) uint64 {
	if origin == t.s.opts.DC {
		return t.lastSeq(p)
	}
	if v, ok := t.applied[appliedRef{origin, p}]; ok {
		return v
	}
	t.s.mu.RLock()
	defer t.s.mu.RUnlock()
	if row := t.s.mu.applied[origin]; row != nil {
		return row[p]
	}
	return 0
}

func (t *txn) setApplied(origin string, p uint32, v uint64) error {
	if origin == t.s.opts.DC {
		return t.setSeq(p, v) // own events recovered after a restore
	}
	t.applied[appliedRef{origin, p}] = v
	return t.set(appliedKey(origin, p), u64(v))
}

func (t *txn) purgeFrontier(p uint32) vclock.VV {
	if v, ok := t.purged[p]; ok {
		return v
	}
	t.s.mu.RLock()
	defer t.s.mu.RUnlock()
	return t.s.mu.purged[p]
}

func (t *txn) setPurgeFrontier(p uint32, vv vclock.VV) error {
	b, err := msgpack.Marshal(vv)
	if err != nil {
		return err
	}
	t.purged[p] = vv
	return t.set(purgedKey(p), b)
}

// appendOutbox queues ev for publishing. Own events are also indexed by
// (partition, sequence), so a DC that lost them can ask for them again.
func (t *txn) appendOutbox(ev *event.Event) error {
	b, err := ev.Encode(nil)
	if err != nil {
		return fmt.Errorf("encode event %s: %w", ev.Dot, err)
	}
	idx := t.next
	t.next++
	if err := t.set(outboxKey(idx), b); err != nil {
		return err
	}
	if ev.Origin == t.s.opts.DC && len(ev.Path) == 1 {
		if err := t.set(ownKey(ev.Partition, ev.Seq), u64(idx)); err != nil {
			return err
		}
	}
	t.outbox = true
	return nil
}

// commit applies the batch and folds the overlay into the store's
// bookkeeping, so the next group reads what this one wrote. With fsync on it
// does not wait for the WAL sync: the caller must call wait before it
// acknowledges anything, and the batch is pipelined with the next group's.
func (t *txn) commit() error {
	s := t.s
	t.closeKeys()
	if t.b.Empty() && len(t.seq) == 0 {
		return nil
	}
	s.mu.RLock()
	hw := s.mu.hlcHigh
	s.mu.RUnlock()
	if t.hlcMax > hw {
		if err := t.set(metaKey(metaHLC), u64(t.hlcMax)); err != nil {
			return err
		}
	}
	for p, v := range t.seq {
		if err := t.set(seqKey(p), u64(v)); err != nil {
			return err
		}
	}
	if t.outbox {
		if err := t.set(metaKey(metaOutboxHi), u64(t.next-1)); err != nil {
			return err
		}
	}
	// Each change's feed entry goes into the same batch (invariant 15 in
	// docs/DESIGN.md).
	if err := t.writeFeed(); err != nil {
		return err
	}
	var err error
	if s.wo.Sync {
		err = s.db.ApplyNoSyncWait(t.b, s.wo)
		t.pending = err == nil
	} else {
		err = t.b.Commit(s.wo)
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	for p, v := range t.seq {
		s.mu.seq[p] = v
	}
	for r, v := range t.applied {
		row := s.mu.applied[r.origin]
		if row == nil {
			row = make([]uint64, s.opts.Partitions)
			s.mu.applied[r.origin] = row
		}
		row[r.p] = v
	}
	for p, v := range t.purged {
		s.mu.purged[p] = v
	}
	s.mu.outboxNext = t.next
	s.mu.ckpt = t.ckpt
	s.mu.hlcHigh = max(s.mu.hlcHigh, t.hlcMax)
	if t.trimTo > s.mu.outboxLow {
		s.mu.outboxLow = t.trimTo
	}
	if len(t.applied) > 0 || len(t.states) > 0 {
		close(s.mu.progress)
		s.mu.progress = make(chan struct{})
	}
	s.mu.Unlock()
	t.foldFeed()
	return nil
}

// wait blocks until the batch is durable, then wakes the publisher and
// tells watchers. Nothing leaves the DC before its batch is synced.
func (t *txn) wait() error {
	s := t.s
	if t.pending {
		if err := t.b.SyncWait(); err != nil {
			return err
		}
	}
	if err := s.failure(); err != nil {
		// An earlier batch failed: this one may have synced, but the
		// store stopped, and nothing leaves it any more.
		return err
	}
	s.mu.Lock()
	if t.next > s.mu.outboxSync {
		s.mu.outboxSync = t.next
	}
	t.foldDurable()
	s.mu.Unlock()
	t.feedSynced()
	if t.outbox {
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	if s.opts.OnCommit != nil && len(t.changes) > 0 {
		s.opts.OnCommit(t.changes)
	}
	for _, f := range t.after {
		f()
	}
	return nil
}

// foldDurable folds the synced batch's sequences and applied entries into
// the durable applied vector, and wakes its watchers if it moved. The
// caller holds s.mu.
func (t *txn) foldDurable() {
	s := t.s
	d := s.mu.durable
	moved := false
	set := func(origin string, p uint32, v uint64) {
		row := d[origin]
		if row == nil {
			row = make([]uint64, s.opts.Partitions)
			d[origin] = row
		}
		if row[p] != v {
			row[p], moved = v, true
		}
	}
	for p, v := range t.seq {
		set(s.opts.DC, p, v)
	}
	for r, v := range t.applied {
		set(r.origin, r.p, v)
	}
	if moved {
		close(s.mu.durableMoved)
		s.mu.durableMoved = make(chan struct{})
	}
}

// tombOnly reports whether st holds siblings and all are tombstones.
func tombOnly(st dvv.State) bool { return len(st.Siblings) > 0 && st.LiveCount() == 0 }
