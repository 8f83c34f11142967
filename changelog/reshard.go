package changelog

// Resharding: changing the number of sidecars (shards) of a DC offline
// (replicator reshard; invariant 16 in docs/DESIGN.md). Every record of
// the store belongs to one partition, or to the whole store:
//
//	k t e          a key's state, tombstone mark and expiry: its key's partition
//	s g a l f      sequence, purge frontier, applied entry, lost and found
//	               ranges: the partition in their key
//	x y            a conflict-log entry and its age index: its key's partition
//	h              home-DC epochs: every new store takes the highest of each
//	m              metadata: the HLC high water (the highest); the outbox
//	               checkpoints start afresh, the conflict index mark is
//	               the new store's own
//	c              the change feed: not copied; the new feed starts above
//	               every old one, so a reader's cursor of an old store is
//	               gone at the new one (FeedGoneError)
//	o i p          outbox, own-event index, prepared transactions: refused;
//	               the old sidecars must have drained them
//
// so the new stores are the old ones' records regrouped by partition, each
// partition's from the one old store that owned it.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/event"
)

// ReshardStore is one store of a reshard with the partitions it owns
// (every partition for a DC of one sidecar).
type ReshardStore struct {
	Store *Store
	Owns  []uint32
}

// ReshardStats counts what a reshard copied into one new store.
type ReshardStats struct {
	Partitions []uint32 `json:"partitions"`
	// Keys counts the key states; Records every record written.
	Keys    int    `json:"keys"`
	Records int    `json:"records"`
	Digest  string `json:"digest"`
}

// ErrNotDrained reports an old store still holding events or transactions
// in flight.
var ErrNotDrained = errors.New("changelog: the store holds events not yet applied by every DC")

// Reshard copies the state of a DC's old stores (its sidecars stopped and
// drained) into its new, empty ones, each new store taking the records of
// its partitions from the old store that owned them. The old stores are
// only read. It refuses, writing nothing, when the old or the new
// partition sets do not each cover every partition exactly once, when an
// old store holds outbox entries or prepared transactions (not drained),
// or when a new store is not empty. Each new store's digest of each of its
// partitions is then checked against the old owner's.
func Reshard(ctx context.Context, from, to []ReshardStore) ([]ReshardStats, error) {
	if len(from) == 0 || len(to) == 0 {
		return nil, fmt.Errorf("%w: a reshard needs old and new stores", ErrBadInput)
	}
	n, dc := from[0].Store.opts.Partitions, from[0].Store.opts.DC
	for _, x := range append(slices.Clone(from), to...) {
		if x.Store.opts.Partitions != n || x.Store.opts.DC != dc {
			return nil, fmt.Errorf("%w: every store of a reshard must be of DC %s with %d partitions; one is of %s with %d", ErrBadInput, dc, n, x.Store.opts.DC, x.Store.opts.Partitions)
		}
	}
	oldOwner, err := ownerTable(n, from, "old")
	if err != nil {
		return nil, err
	}
	newOwner, err := ownerTable(n, to, "new")
	if err != nil {
		return nil, err
	}
	for i, x := range from {
		if err := x.Store.checkDrained(); err != nil {
			return nil, fmt.Errorf("old store %d (partitions %v): %w", i, x.Owns, err)
		}
	}
	for i, x := range to {
		if err := x.Store.CheckEmpty(); err != nil {
			return nil, fmt.Errorf("new store %d (partitions %v): %w; a reshard writes into empty stores: point its data_dir at an empty directory", i, x.Owns, err)
		}
	}
	stats := make([]ReshardStats, len(to))
	ws := make([]*reshardWriter, len(to))
	for i, x := range to {
		stats[i].Partitions = slices.Clone(x.Owns)
		ws[i] = &reshardWriter{db: x.Store.db}
	}
	var hlc uint64
	var feedHi uint64
	homes := map[string][]byte{}
	for i, x := range from {
		err := x.Store.eachRecord(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			switch k[0] {
			case pfxMeta:
				switch string(k[1:]) {
				case metaHLC:
					if len(v) == 8 {
						hlc = max(hlc, binary.BigEndian.Uint64(v))
					}
				case metaFeedHi:
					if len(v) == 8 {
						feedHi = max(feedHi, binary.BigEndian.Uint64(v))
					}
				}
				return nil
			case pfxHome:
				if old, ok := homes[string(k)]; !ok || len(v) >= 8 && len(old) >= 8 && binary.BigEndian.Uint64(v) > binary.BigEndian.Uint64(old) {
					homes[string(k)] = slices.Clone(v)
				}
				return nil
			case pfxFeed:
				return nil
			}
			p, err := x.Store.recordPartition(k, v)
			if err != nil {
				return err
			}
			if oldOwner[p] != i {
				return nil // not this store's partition: a stray, the owner's copy counts
			}
			j := newOwner[p]
			if k[0] == pfxKey {
				stats[j].Keys++
			}
			stats[j].Records++
			return ws[j].set(k, v)
		})
		if err != nil {
			return nil, fmt.Errorf("old store %d (partitions %v): %w", i, x.Owns, err)
		}
	}
	for j, w := range ws {
		if hlc > 0 {
			if err := w.set(metaKey(metaHLC), u64(hlc)); err != nil {
				return nil, err
			}
		}
		// The feed starts above every old store's, its first cursor
		// never written: a reader's cursor of an old store is gone here
		// (it followed other partitions), and it starts again from a
		// snapshot.
		if err := w.set(metaKey(metaFeedHi), u64(feedHi+1)); err != nil {
			return nil, err
		}
		if err := w.set(metaKey(metaFeedLow), u64(feedHi+2)); err != nil {
			return nil, err
		}
		for k, v := range homes {
			if err := w.set([]byte(k), v); err != nil {
				return nil, err
			}
		}
		if err := w.flush(); err != nil {
			return nil, fmt.Errorf("new store %d: %w", j, err)
		}
	}
	// The new stores' in-memory state (sequences, applied vector) is
	// read again at their next open: the caller closes them now.
	for j, x := range to {
		if err := checkReshardDigest(from, x, oldOwner); err != nil {
			return nil, fmt.Errorf("new store %d (partitions %v): %w", j, x.Owns, err)
		}
		d, _, err := x.Store.digestFrom(x.Store.db)
		if err != nil {
			return nil, err
		}
		stats[j].Digest = d.Hex()
	}
	return stats, nil
}

// ownerTable maps each partition to the index of the store of stores that
// owns it, and refuses a set that leaves one out or owns one twice.
func ownerTable(n int, stores []ReshardStore, which string) ([]int, error) {
	owner := make([]int, n)
	for p := range owner {
		owner[p] = -1
	}
	for i, x := range stores {
		for _, p := range x.Owns {
			switch {
			case int(p) >= n:
				return nil, fmt.Errorf("%w: %s store %d owns partition %d, out of range (partitions is %d)", ErrBadInput, which, i, p, n)
			case owner[p] >= 0:
				return nil, fmt.Errorf("%w: partition %d is owned by %s stores %d and %d; each must own its own partitions", ErrBadInput, p, which, owner[p], i)
			}
			owner[p] = i
		}
	}
	var missing []int
	for p, o := range owner {
		if o < 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: no %s store owns partitions %v; the %s shards must own every partition between them (give every one of them)", ErrBadInput, which, missing, which)
	}
	return owner, nil
}

// checkDrained refuses a store holding outbox entries (events not yet
// applied by every DC), own-event index entries, prepared transactions or
// a half-done import.
func (s *Store) checkDrained() error {
	if peer, ok, err := s.JoinIncomplete(); err != nil || ok {
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: an import from %s was interrupted in it; run join again first", ErrBadInput, peer)
	}
	for _, k := range []struct {
		pfx  byte
		what string
	}{{pfxOutbox, "outbox entries"}, {pfxOwn, "own events not yet applied by every DC"}, {pfxPrepared, "prepared transactions spanning shards"}} {
		c, err := s.countPrefix(k.pfx, 1000)
		if err != nil {
			return err
		}
		if c > 0 {
			return fmt.Errorf("%w: it holds %d %s. Start the old sidecars until every one reports bridge.OutboxHeld 0 in GET /v1/status (and no write reaches them), stop them, and run reshard again", ErrNotDrained, c, k.what)
		}
	}
	return nil
}

// eachRecord calls fn with every record of the store, in key order.
func (s *Store) eachRecord(fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if len(it.Key()) == 0 {
			continue
		}
		if err := fn(it.Key(), it.Value()); err != nil {
			return err
		}
	}
	return it.Error()
}

// recordPartition returns the partition a record belongs to.
func (s *Store) recordPartition(k, v []byte) (uint32, error) {
	n := s.opts.Partitions
	of := func(key []byte) uint32 { return event.PartitionOf(string(key), n) }
	u32 := func(b []byte) (uint32, error) {
		if len(b) < 4 {
			return 0, fmt.Errorf("changelog: corrupt record %q", k)
		}
		p := binary.BigEndian.Uint32(b)
		if int(p) >= n {
			return 0, fmt.Errorf("changelog: record %q names partition %d of %d", k, p, n)
		}
		return p, nil
	}
	switch k[0] {
	case pfxKey, pfxTomb:
		return of(k[1:]), nil
	case pfxExpiry:
		if len(k) < 9 {
			return 0, fmt.Errorf("changelog: corrupt expiry record %q", k)
		}
		return of(k[9:]), nil
	case pfxSeq, pfxPurged, pfxFound:
		return u32(k[1:])
	case pfxApplied:
		return u32(k[max(len(k)-4, 1):])
	case pfxLost:
		if len(k) < 21 {
			return 0, fmt.Errorf("changelog: corrupt lost range %q", k)
		}
		return u32(k[len(k)-20:])
	case pfxConflict:
		var c struct {
			Key string `msgpack:"key"`
		}
		if err := msgpack.Unmarshal(v, &c); err != nil {
			return 0, fmt.Errorf("changelog: conflict %q: %w", k[1:], err)
		}
		return of([]byte(c.Key)), nil
	case pfxConflictAge:
		if len(k) < 9 {
			return 0, fmt.Errorf("changelog: corrupt conflict age record %q", k)
		}
		c, ok, err := s.getConflict(string(k[9:]))
		if err != nil || !ok {
			return 0, fmt.Errorf("changelog: conflict age record %q without its conflict (%v)", k, err)
		}
		return of([]byte(c.Key)), nil
	}
	return 0, fmt.Errorf("changelog: a record of kind %q, which this reshard does not know; use the replicator release that wrote the store", k[:1])
}

// reshardWriter writes records into a new store in batches.
type reshardWriter struct {
	db *pebble.DB
	b  *pebble.Batch
}

func (w *reshardWriter) set(k, v []byte) error {
	if w.b == nil {
		w.b = w.db.NewBatch()
	}
	if err := w.b.Set(k, v, nil); err != nil {
		return err
	}
	if w.b.Len() > 4<<20 {
		return w.flush()
	}
	return nil
}

func (w *reshardWriter) flush() error {
	if w.b == nil {
		return nil
	}
	err := w.b.Commit(pebble.Sync)
	w.b.Close()
	w.b = nil
	return err
}

// checkReshardDigest compares each partition of x with the old store that
// owned it.
func checkReshardDigest(from []ReshardStore, x ReshardStore, oldOwner []int) error {
	got, _, err := x.Store.digestFrom(x.Store.db)
	if err != nil {
		return err
	}
	for _, p := range x.Owns {
		old := from[oldOwner[p]].Store
		want, _, err := old.digestOf(old.db, onlyOf(old.opts.Partitions, p))
		if err != nil {
			return err
		}
		if !bytes.Equal(got.Partitions[p][:], want.Partitions[p][:]) {
			return fmt.Errorf("changelog: partition %d's digest after the reshard differs from the old store's", p)
		}
	}
	return nil
}

func onlyOf(n int, p uint32) []bool {
	only := make([]bool, n)
	only[p] = true
	return only
}
