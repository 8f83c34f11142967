package changelog

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
)

// Get returns the key's committed state; ok is false when the store holds
// nothing for it (never written, or purged).
func (s *Store) Get(key string) (st dvv.State, ok bool, err error) {
	b, ok, err := s.get(keyKey(key))
	if err != nil || !ok {
		return dvv.State{}, false, err
	}
	st, err = decodeState(b)
	if err != nil {
		return dvv.State{}, false, fmt.Errorf("changelog: key %q: %w", key, err)
	}
	return st, true, nil
}

// Scan calls fn for every key that starts with prefix, in key order, with
// its committed state, from one consistent snapshot. fn returning an error
// stops the scan and Scan returns it.
func (s *Store) Scan(prefix string, fn func(key string, st dvv.State) error) error {
	if err := s.usable(); err != nil {
		return err
	}
	lo := keyKey(prefix)
	return scanStates(s.db, lo, prefixEnd(lo), fn)
}

// scanStates calls fn for every key state of r in [lo, hi), in key order.
func scanStates(r pebble.Reader, lo, hi []byte, fn func(key string, st dvv.State) error) error {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		st, err := decodeState(it.Value())
		if err != nil {
			return fmt.Errorf("changelog: key %q: %w", it.Key()[1:], err)
		}
		if err := fn(string(it.Key()[1:]), st); err != nil {
			return err
		}
	}
	return it.Error()
}

// Digest summarises the whole key state. Equal states give equal digests
// whatever order they were built in, so converged DCs show the same value.
type Digest struct {
	// Keys counts the stored keys, tombstones included.
	Keys int
	// Partitions holds one digest per partition: the sum, lane by lane, of
	// sha256(key, state) over the partition's keys, so it can be updated per
	// key and split into a tree later.
	Partitions [][32]byte
}

// Hex is the digest of the whole store, in hex.
func (d Digest) Hex() string {
	h := sha256.New()
	for _, p := range d.Partitions {
		h.Write(p[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Digest computes the state digest from one consistent snapshot.
func (s *Store) Digest() (Digest, error) {
	if err := s.usable(); err != nil {
		return Digest{}, err
	}
	d, _, err := s.digestFrom(s.db)
	return d, err
}

// digestFrom computes the state digest from r (the store or one of its
// snapshots), and the bytes of the encoded states it hashed.
func (s *Store) digestFrom(r pebble.Reader) (Digest, int64, error) { return s.digestOf(r, nil) }

// digestOf is digestFrom of the keys of the partitions in only (nil: every
// partition); the others count as empty.
func (s *Store) digestOf(r pebble.Reader, only []bool) (Digest, int64, error) {
	d := Digest{Partitions: make([][32]byte, s.opts.Partitions)}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxKey}, UpperBound: []byte{pfxKey + 1}})
	if err != nil {
		return Digest{}, 0, err
	}
	defer it.Close()
	var size int64
	for it.First(); it.Valid(); it.Next() {
		key := it.Key()[1:]
		p := event.PartitionOf(string(key), s.opts.Partitions)
		if !inSet(only, p) {
			continue
		}
		sum := stateHash(key, it.Value())
		addLanes(&d.Partitions[p], &sum)
		d.Keys++
		size += int64(len(it.Value()))
	}
	return d, size, it.Error()
}

// addLanes adds b to a as four independent 64-bit lanes.
func addLanes(a, b *[32]byte) {
	for i := 0; i < 32; i += 8 {
		binary.BigEndian.PutUint64(a[i:], binary.BigEndian.Uint64(a[i:])+binary.BigEndian.Uint64(b[i:]))
	}
}

func msgpackUnmarshal(b []byte, v any) error { return msgpack.Unmarshal(b, v) }
