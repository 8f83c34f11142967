package changelog

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/replicatorhq/replicator/pkg/event"
)

// Expiry (invariant 14 in docs/DESIGN.md). A value written with a TTL
// carries its expiry, an HLC time (dvv.Version.Expires), and a key's live
// value expires at dvv.State.Expiry: the longest TTL of its live siblings
// wins. Reads hide an expired value by this DC's HLC (dvv.State.Visible);
// the stored state, and so the digest, keep it until the replicated delete
// arrives. One DC writes that delete (ExpireDue), with the expired
// state's clock as its context, so a write it has not seen survives.
//
// The expiry index holds one entry per key whose live value expires,
// e <expiry u64> <key>, kept by putState in the batch that changes the
// key, so the expirer reads only the entries due, in expiry order.

// indexExpiry moves the key's expiry index entry from was to is (0: none).
func (t *txn) indexExpiry(key string, was, is uint64) error {
	if was == is {
		return nil
	}
	if was != 0 {
		if err := t.del(expiryKey(was, key)); err != nil {
			return err
		}
	}
	if is != 0 {
		if err := t.set(expiryKey(is, key), nil); err != nil {
			return err
		}
		t.after = append(t.after, t.s.expiryAdded)
	}
	return nil
}

func (s *Store) expiryAdded() {
	select {
	case s.expiries <- struct{}{}:
	default:
	}
}

// ExpiryAdded returns a channel that receives a value after a commit that
// gave a key a new expiry, which may be earlier than any indexed before.
func (s *Store) ExpiryAdded() <-chan struct{} { return s.expiries }

// Peeker is a Clock that can be read without issuing a timestamp, as
// hlc.Clock can. Expiry needs one: with a Clock that is not a Peeker, Now
// is 0 and nothing expires.
type Peeker interface {
	Peek() uint64
}

// Now is this DC's HLC time for reads: the time a read compares expiries
// against (dvv.State.Visible). It issues no timestamp.
func (s *Store) Now() uint64 {
	if c, ok := s.opts.Clock.(Peeker); ok {
		return c.Peek()
	}
	return 0
}

// NextExpiry returns the earliest expiry the index holds after HLC time
// after; ok is false when there is none.
func (s *Store) NextExpiry(after uint64) (at uint64, ok bool, err error) {
	if after == ^uint64(0) {
		return 0, false, nil
	}
	err = s.scanExpiries(after+1, ^uint64(0), func(e uint64, _ string) bool {
		at, ok = e, true
		return false
	})
	return at, ok, err
}

// scanExpiries calls fn with the index entries due from HLC time from to
// now, both included, in expiry order, until fn returns false.
func (s *Store) scanExpiries(from, now uint64, fn func(at uint64, key string) bool) error {
	if err := s.usable(); err != nil {
		return err
	}
	lo := binary.BigEndian.AppendUint64([]byte{pfxExpiry}, from)
	hi := []byte{pfxExpiry + 1}
	if now < ^uint64(0) {
		hi = binary.BigEndian.AppendUint64([]byte{pfxExpiry}, now+1)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("changelog: read the expiry index: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) < 9 {
			continue
		}
		if !fn(binary.BigEndian.Uint64(k[1:9]), string(k[9:])) {
			break
		}
	}
	return it.Error()
}

// Due returns the keys whose live value has expired at HLC time now,
// earliest first.
func (s *Store) Due(now uint64) ([]string, error) {
	var out []string
	err := s.scanExpiries(0, now, func(_ uint64, key string) bool {
		out = append(out, key)
		return true
	})
	return out, err
}

// Deleter names the DC that writes the delete of a value expirer owns
// (dvv.State.Expirer): expirer itself while it is reachable; once it has
// been unreachable past the bound, the first DC of dcs, in config order,
// that is neither the expirer nor unreachable. unreachable reports the DCs
// silent past the bound (never this DC itself, which is in dcs, so
// some DC is always named). It is the same at every DC that agrees on
// which DCs are unreachable; with shards, unreachable answers for the
// key's partition (see Expire).
func Deleter(expirer string, dcs []string, unreachable func(dc string) bool) string {
	if !unreachable(expirer) {
		return expirer
	}
	for _, dc := range dcs {
		if dc != expirer && !unreachable(dc) {
			return dc
		}
	}
	return expirer
}

// Expire deletes key if its live value has expired at HLC time now and
// mine says this DC is the one to delete a value that expirer owns in the
// key's partition p (the deleter is judged per partition: with shards,
// invariant 16, a DC may be unreachable for some partitions only). The
// delete is a normal local write, replicated like any other, whose context
// is the expired state's clock: it supersedes exactly the versions this DC
// holds, so a write it has not seen survives. It returns the write, or
// ok false when the key has not expired (a write since moved or cleared
// its expiry) or is another DC's to delete.
func (s *Store) Expire(ctx context.Context, key string, now uint64, mine func(expirer string, p uint32) bool) (res WriteResult, ok bool, err error) {
	p := event.PartitionOf(key, s.opts.Partitions)
	err = s.do(ctx, func(t *txn) error {
		st, _, err := t.state(key)
		if err != nil {
			return err
		}
		if !st.Expired(now) || !mine(st.Expirer(), p) {
			return nil
		}
		if res, err = t.write(WriteOp{Key: key, Delete: true, Context: st.Clock.Clone()}); err != nil {
			return err
		}
		ok = true
		return nil
	})
	return res, ok, err
}

// ExpireDue expires, with Expire, the keys due at HLC time now that mine
// says are this DC's to delete, asking it with each key's partition. It
// returns how many it deleted and how many due keys it left for another
// DC. The due keys are those expired and not yet deleted: few, since each
// is deleted once its expiry passes, unless its deleter is down.
func (s *Store) ExpireDue(ctx context.Context, now uint64, mine func(expirer string, p uint32) bool) (deleted, others int, err error) {
	keys, err := s.Due(now)
	if err != nil {
		return 0, 0, err
	}
	for _, key := range keys {
		// A cheap read first: another DC's keys need no trip through
		// the committer. Expire checks again in the batch.
		st, _, err := s.Get(key)
		if err != nil {
			return deleted, others, err
		}
		if st.Expired(now) && !mine(st.Expirer(), event.PartitionOf(key, s.opts.Partitions)) {
			others++
			continue
		}
		_, ok, err := s.Expire(ctx, key, now, mine)
		if err != nil {
			return deleted, others, fmt.Errorf("expire %q: %w", key, err)
		}
		if ok {
			deleted++
		}
	}
	return deleted, others, nil
}
