package changelog

// Snapshots: bootstrapping a new DC, or one whose data dir was lost, from a
// running peer (replicator join).
//
// The source side (Store.NewSnapshot) takes one Pebble snapshot and reads
// everything from it, so the copy is of one point in time: every key's
// stored state (clock and siblings, tombstones included), the applied
// vector (the peer's own row is its last issued sequence per partition),
// the purge frontiers, the lost ranges (Knowledge), and a digest of the
// key states. Key states and the applied vector commit in the same batch
// at the peer, so a dot the copied applied vector covers is either in the
// copied states or was superseded or purged before the snapshot: the
// joiner's gap detection continues exactly where the peer's was, and the
// events at or below the copied applied vector that its consumers later
// receive are duplicates (Apply is idempotent).
//
// Not copied: the peer's outbox and its own-event index (they are the
// peer's events to publish), its conflict log (each DC's own audit record),
// the applied vectors its peers reported (in memory only), and the found
// records of its own lost ranges (the copied lost ranges are already split
// around them).
//
// The joiner side (Store.Import) writes the snapshot into an empty store,
// one batch per chunk, between a first batch that records a join marker
// and a last one that sets the applied vector, the purge frontiers and the
// learned lost ranges and removes the marker. Until the last batch commits
// the store holds no applied vector, and the marker makes JoinIncomplete
// report the half-done import, so a sidecar refuses to start on it. A
// failed import removes what it wrote. The joiner's own sequence per
// partition is raised to what the peer had applied of the joiner's events
// (never lowered), so a restored DC never reissues a sequence; at start the
// bridge still raises it above what the DC's own stream holds.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// metaJoin is the marker of an import in progress: its value is the DC the
// snapshot comes from.
const metaJoin = "join"

// ErrNotEmpty reports that an import was asked of a store that already
// holds replicated state.
var ErrNotEmpty = errors.New("changelog: store is not empty")

// SnapshotHeader describes a snapshot: whose it is, the bookkeeping the
// joiner takes over, and what the key states add up to.
type SnapshotHeader struct {
	// DC is the DC the snapshot was taken at; DCs its configured DCs.
	DC  string   `msgpack:"dc" json:"dc"`
	DCs []string `msgpack:"dcs" json:"dcs"`
	// Partitions is its partition count, which must equal the joiner's.
	Partitions int `msgpack:"partitions" json:"partitions"`
	// Applied is its applied vector, its own row being its last issued
	// sequence per partition.
	Applied Applied `msgpack:"applied" json:"applied"`
	// Lost are its lost ranges, as Knowledge reports them.
	Lost []LostRange `msgpack:"lost" json:"lost,omitempty"`
	// Purged is the purge frontier of each partition.
	Purged []vclock.VV `msgpack:"purged" json:"purged"`
	// Keys counts the key states, tombstones included; Bytes is the size
	// of their encodings.
	Keys  int   `msgpack:"keys" json:"keys"`
	Bytes int64 `msgpack:"bytes" json:"bytes"`
	// Digest is Digest().Hex() of the key states: the joiner's digest once
	// it has imported them.
	Digest string `msgpack:"digest" json:"digest"`
}

// SnapshotEntry is one key and its state in the stored form (EncodeState).
type SnapshotEntry struct {
	_     struct{} `msgpack:",as_array"`
	Key   string
	State []byte
}

// SnapshotChunk is a run of a snapshot's keys, in key order.
type SnapshotChunk struct {
	Entries []SnapshotEntry `msgpack:"entries"`
	// Next is the cursor for the next chunk: the last key of this one.
	Next string `msgpack:"next"`
	// Done is set on the last chunk.
	Done bool `msgpack:"done"`
}

// Snapshot is a point-in-time copy of a store's replicated state. It pins
// a Pebble snapshot, which keeps the versions it reads from being
// compacted away: close it promptly. The store must not be closed before
// its snapshots are (Pebble reports them as leaked). Its methods are not
// safe for concurrent use.
type Snapshot struct {
	s    *Store
	snap *pebble.Snapshot
	hdr  SnapshotHeader
	// only, when not nil, holds the partitions the snapshot covers.
	only []bool
	once sync.Once
}

// NewSnapshot takes a snapshot of the store and reads its header: the
// applied vector, lost ranges and purge frontiers, and the digest of the
// key states, which costs one scan of them.
func (s *Store) NewSnapshot() (*Snapshot, error) { return s.NewSnapshotOf(nil) }

// NewSnapshotOf is NewSnapshot of the keys of partitions parts only (every
// partition when nil), for a shard's join (invariant 16 in
// docs/DESIGN.md): the header's Keys, Bytes and Digest count those
// partitions' keys (a digest as a store holding only them would show),
// and Read returns only them. The applied vector, purge frontiers and
// lost ranges stay whole; an importer takes the rows of its partitions.
func (s *Store) NewSnapshotOf(parts []uint32) (*Snapshot, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	only, err := s.partitionSet(parts)
	if err != nil {
		return nil, err
	}
	snap := s.db.NewSnapshot()
	sn := &Snapshot{s: s, snap: snap, only: only}
	hdr, err := s.snapshotHeader(snap, only)
	if err != nil {
		snap.Close()
		return nil, fmt.Errorf("changelog: snapshot: %w", err)
	}
	sn.hdr = hdr
	return sn, nil
}

// partitionSet is parts as a set; nil for nil (every partition).
func (s *Store) partitionSet(parts []uint32) ([]bool, error) {
	if parts == nil {
		return nil, nil
	}
	only := make([]bool, s.opts.Partitions)
	for _, p := range parts {
		if int(p) >= s.opts.Partitions {
			return nil, fmt.Errorf("%w: partition %d is out of range (partitions is %d)", ErrBadInput, p, s.opts.Partitions)
		}
		only[p] = true
	}
	return only, nil
}

// inSet reports whether p is in the set only (nil holds every partition).
func inSet(only []bool, p uint32) bool { return only == nil || (int(p) < len(only) && only[p]) }

func (s *Store) snapshotHeader(r pebble.Reader, only []bool) (SnapshotHeader, error) {
	h := SnapshotHeader{DC: s.opts.DC, DCs: slices.Clone(s.opts.DCs), Partitions: s.opts.Partitions, Applied: Applied{}}
	own := make([]uint64, s.opts.Partitions)
	h.Purged = make([]vclock.VV, s.opts.Partitions)
	for p := range own {
		v, ok, err := readerGet(r, seqKey(uint32(p)))
		if err != nil {
			return h, err
		}
		if ok {
			if len(v) != 8 {
				return h, fmt.Errorf("corrupt sequence of partition %d", p)
			}
			own[p] = binary.BigEndian.Uint64(v)
		}
		h.Purged[p] = vclock.VV{}
		b, ok, err := readerGet(r, purgedKey(uint32(p)))
		if err != nil {
			return h, err
		}
		if ok {
			if err := msgpackUnmarshal(b, &h.Purged[p]); err != nil {
				return h, fmt.Errorf("purge frontier of partition %d: %w", p, err)
			}
		}
	}
	h.Applied[s.opts.DC] = own
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxApplied}, UpperBound: []byte{pfxApplied + 1}})
	if err != nil {
		return h, err
	}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[1:]
		if len(k) < 5 || k[len(k)-5] != 0 || len(it.Value()) != 8 {
			it.Close()
			return h, fmt.Errorf("corrupt applied entry %q", it.Key())
		}
		origin, p := string(k[:len(k)-5]), binary.BigEndian.Uint32(k[len(k)-4:])
		if int(p) >= s.opts.Partitions {
			it.Close()
			return h, fmt.Errorf("applied entry for partition %d of %d", p, s.opts.Partitions)
		}
		if h.Applied[origin] == nil {
			h.Applied[origin] = make([]uint64, s.opts.Partitions)
		}
		h.Applied[origin][p] = binary.BigEndian.Uint64(it.Value())
	}
	if err := it.Close(); err != nil {
		return h, err
	}
	if h.Lost, err = s.lostTableFrom(r); err != nil {
		return h, err
	}
	d, size, err := s.digestOf(r, only)
	if err != nil {
		return h, err
	}
	h.Keys, h.Bytes, h.Digest = d.Keys, size, d.Hex()
	return h, nil
}

func readerGet(r pebble.Reader, k []byte) ([]byte, bool, error) {
	v, closer, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := append([]byte(nil), v...)
	closer.Close()
	return out, true, nil
}

// Header returns the snapshot's header.
func (sn *Snapshot) Header() SnapshotHeader { return sn.hdr }

// Read returns the keys after the cursor after ("" for the first chunk),
// in key order, up to about maxBytes of keys and states, and at least one
// key when any is left.
func (sn *Snapshot) Read(after string, maxBytes int) (SnapshotChunk, error) {
	lo := keyKey(after)
	if after != "" {
		lo = append(lo, 0) // the first key after the cursor
	}
	it, err := sn.snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: []byte{pfxKey + 1}})
	if err != nil {
		return SnapshotChunk{}, err
	}
	defer it.Close()
	var c SnapshotChunk
	size := 0
	for it.First(); ; it.Next() {
		if !it.Valid() {
			c.Done = true
			break
		}
		if sn.only != nil && !inSet(sn.only, event.PartitionOf(string(it.Key()[1:]), sn.s.opts.Partitions)) {
			continue
		}
		n := len(it.Key()) + len(it.Value()) + 16
		if len(c.Entries) > 0 && size+n > maxBytes {
			break
		}
		size += n
		c.Entries = append(c.Entries, SnapshotEntry{Key: string(it.Key()[1:]), State: slices.Clone(it.Value())})
	}
	if len(c.Entries) > 0 {
		c.Next = c.Entries[len(c.Entries)-1].Key
	}
	return c, it.Error()
}

// Close releases the snapshot. It is safe to call more than once.
func (sn *Snapshot) Close() error {
	var err error
	sn.once.Do(func() { err = sn.snap.Close() })
	return err
}

// JoinIncomplete reports whether an import into the store started and did
// not finish (the process died during it), and from which DC.
func (s *Store) JoinIncomplete() (string, bool, error) {
	b, ok, err := s.get(metaKey(metaJoin))
	return string(b), ok, err
}

// CheckEmpty returns an error wrapping ErrNotEmpty when the store holds
// replicated state: key states, applied entries, outbox entries or an
// interrupted import. Own sequence numbers alone do not count: an import
// only ever raises them.
func (s *Store) CheckEmpty() error {
	if peer, ok, err := s.JoinIncomplete(); err != nil || ok {
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: an import from %s was interrupted and left part of a snapshot in it", ErrNotEmpty, peer)
	}
	var held []string
	for _, k := range []struct {
		pfx  byte
		what string
	}{{pfxKey, "keys"}, {pfxApplied, "applied-vector entries"}, {pfxOutbox, "outbox entries"}} {
		n, err := s.countPrefix(k.pfx, 1000)
		if err != nil {
			return err
		}
		if n > 0 {
			more := ""
			if n >= 1000 {
				more = " or more"
			}
			held = append(held, fmt.Sprintf("%d%s %s", n, more, k.what))
		}
	}
	if len(held) > 0 {
		return fmt.Errorf("%w: it holds %v", ErrNotEmpty, held)
	}
	return nil
}

func (s *Store) countPrefix(pfx byte, limit int) (int, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfx}, UpperBound: []byte{pfx + 1}})
	if err != nil {
		return 0, err
	}
	n := 0
	for it.First(); it.Valid() && n < limit; it.Next() {
		n++
	}
	return n, it.Close()
}

// ImportStats is what an import wrote.
type ImportStats struct {
	// From is the DC the snapshot came from.
	From string `json:"from"`
	// Keys counts the key states imported, Tombstones those holding only
	// tombstones, Bytes the size of their encodings, Chunks the chunks.
	Keys       int   `json:"keys"`
	Tombstones int   `json:"tombstones"`
	Bytes      int64 `json:"bytes"`
	Chunks     int   `json:"chunks"`
	// Digest is the store's digest after the import, equal to the
	// snapshot's.
	Digest string `json:"digest"`
}

// Import writes a peer's snapshot into this store, which must be empty
// (CheckEmpty). hdr is the snapshot's header; next returns its chunks in
// order, the last one with Done set. Each chunk is one batch. The import
// checks every state as anti-entropy checks a peer's, and the final digest
// against the header's; on any error it removes the keys it wrote, so the
// store is empty again, and returns the error. See the file comment for
// what is copied and why.
func (s *Store) Import(ctx context.Context, hdr SnapshotHeader, next func(context.Context) (SnapshotChunk, error)) (ImportStats, error) {
	return s.ImportSources(ctx, []ImportSource{{Header: hdr, Next: next}})
}

// ImportSource is one snapshot of an import from several (ImportSources).
type ImportSource struct {
	Header SnapshotHeader
	// Partitions are the partitions taken from this snapshot (a snapshot
	// taken with NewSnapshotOf of them); nil takes every partition.
	Partitions []uint32
	// Next returns the snapshot's chunks in order, the last with Done.
	Next func(context.Context) (SnapshotChunk, error)
}

// ImportSources is Import from several snapshots, each giving its own
// partitions: a shard of a DC (invariant 16 in docs/DESIGN.md) joining
// from a peer whose partitions live in several stores, or taking only its
// own partitions from one. The partitions of the sources must not
// overlap. Each source's keys are checked against its header's count and
// digest; the applied vector, purge frontiers and lost ranges of a
// source's partitions are taken from its header, all in the last batch,
// so the store holds no applied vector until every source is in. On any
// error the store is left empty again, as Import leaves it.
func (s *Store) ImportSources(ctx context.Context, srcs []ImportSource) (ImportStats, error) {
	if err := s.CheckEmpty(); err != nil {
		return ImportStats{}, err
	}
	if len(srcs) == 0 {
		return ImportStats{}, fmt.Errorf("%w: an import needs a snapshot", ErrBadInput)
	}
	taken := make([]bool, s.opts.Partitions)
	ims := make([]*importer, len(srcs))
	for i, src := range srcs {
		if err := s.checkHeader(src.Header); err != nil {
			return ImportStats{}, err
		}
		keep, err := s.partitionSet(src.Partitions)
		if err != nil {
			return ImportStats{}, err
		}
		for p := range taken {
			if inSet(keep, uint32(p)) {
				if taken[p] {
					return ImportStats{}, fmt.Errorf("%w: partition %d is taken from two snapshots (of %s)", ErrBadInput, p, src.Header.DC)
				}
				taken[p] = true
			}
		}
		ims[i] = &importer{s: s, hdr: src.Header, keep: keep, stats: ImportStats{From: src.Header.DC}}
	}
	total := ImportStats{From: srcs[0].Header.DC}
	for i, im := range ims {
		if err := im.begin(ctx); err != nil {
			return ImportStats{}, im.abort(err)
		}
		for {
			c, err := srcs[i].Next(ctx)
			if err != nil {
				return ImportStats{}, im.abort(fmt.Errorf("read chunk %d of the snapshot from %s: %w", im.stats.Chunks+1, im.hdr.DC, err))
			}
			if err := im.add(ctx, c); err != nil {
				return ImportStats{}, im.abort(fmt.Errorf("chunk %d of the snapshot from %s: %w", im.stats.Chunks+1, im.hdr.DC, err))
			}
			if c.Done {
				break
			}
		}
		if err := im.check(); err != nil {
			return ImportStats{}, im.abort(err)
		}
		total.Keys += im.stats.Keys
		total.Tombstones += im.stats.Tombstones
		total.Bytes += im.stats.Bytes
		total.Chunks += im.stats.Chunks
	}
	if err := finish(ctx, s, ims); err != nil {
		return ImportStats{}, ims[0].abort(err)
	}
	d, err := s.Digest()
	if err != nil {
		return ImportStats{}, err
	}
	total.Digest = d.Hex()
	return total, nil
}

// checkHeader rejects a header this store cannot take over: another
// partition count, DCs outside this store's configuration, absurd counters,
// or a peer that lost own events it has not taken back yet.
func (s *Store) checkHeader(h SnapshotHeader) error {
	if h.Partitions != s.opts.Partitions {
		return fmt.Errorf("%w: the snapshot of %s has %d partitions and this DC %d; the partition count must be the same everywhere", ErrBadInput, h.DC, h.Partitions, s.opts.Partitions)
	}
	if err := s.checkKnowledge(Knowledge{DC: h.DC, Applied: h.Applied, Lost: h.Lost}); err != nil {
		return fmt.Errorf("snapshot header: %w", err)
	}
	for _, r := range h.Lost {
		if r.Origin == h.DC {
			// The joiner would count those dots as applied without
			// holding them, and anti-entropy would then drop them from
			// the DCs that still hold them.
			return fmt.Errorf("%w: %s lost its own events %d to %d of partition %d in a restore and has not taken them back yet; run `replicator repair` at %s first, or join from another DC",
				ErrBadInput, h.DC, r.From, r.To, r.Partition, h.DC)
		}
	}
	if len(h.Purged) != s.opts.Partitions {
		return fmt.Errorf("%w: the snapshot of %s has %d purge frontiers, want %d", ErrBadInput, h.DC, len(h.Purged), s.opts.Partitions)
	}
	for p, vv := range h.Purged {
		for dc, n := range vv {
			if !slices.Contains(s.opts.DCs, dc) || n >= event.MaxCounter {
				return fmt.Errorf("%w: the purge frontier of partition %d of %s names %s:%d; want a DC of %v and a sane counter", ErrBadInput, p, h.DC, dc, n, s.opts.DCs)
			}
		}
	}
	if h.Keys < 0 || h.Bytes < 0 {
		return fmt.Errorf("%w: the snapshot of %s counts %d keys and %d bytes", ErrBadInput, h.DC, h.Keys, h.Bytes)
	}
	return nil
}

// importer is one import in progress.
type importer struct {
	s     *Store
	hdr   SnapshotHeader
	stats ImportStats
	last  string // the last key written, for the order check
	hlc   uint64 // the highest HLC of this DC's own siblings
	// keep holds the partitions taken from this snapshot; nil for all.
	keep []bool
}

// begin records the join marker and raises this DC's sequences to what
// the peer applied of them, with its own lost ranges the peer learned: the
// key checks need them, and they hold even if the import fails.
func (im *importer) begin(ctx context.Context) error {
	s := im.s
	own := im.hdr.Applied[s.opts.DC]
	return s.do(ctx, func(t *txn) error {
		if err := t.set(metaKey(metaJoin), []byte(im.hdr.DC)); err != nil {
			return err
		}
		for p, n := range own {
			if !inSet(im.keep, uint32(p)) {
				continue
			}
			if n > t.lastSeq(uint32(p)) {
				if err := t.setSeq(uint32(p), n); err != nil {
					return err
				}
			}
		}
		for _, r := range im.hdr.Lost {
			if r.Origin == s.opts.DC && inSet(im.keep, r.Partition) {
				if err := t.markLost(r.Partition, r.From, r.To); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// add writes one chunk in one batch, after checking all of it.
func (im *importer) add(ctx context.Context, c SnapshotChunk) error {
	s := im.s
	states := make([]dvv.State, len(c.Entries))
	last := im.last
	for i, e := range c.Entries {
		if e.Key <= last {
			return fmt.Errorf("%w: key %q is out of order (after %q)", ErrBadInput, e.Key, last)
		}
		last = e.Key
		if err := event.CheckKey(e.Key, s.opts.Limits.MaxKeyBytes); err != nil {
			return fmt.Errorf("%w: %v", ErrBadInput, err)
		}
		if p := event.PartitionOf(e.Key, s.opts.Partitions); !inSet(im.keep, p) {
			return fmt.Errorf("%w: key %q is of partition %d, which was not asked of this snapshot of %s", ErrBadInput, e.Key, p, im.hdr.DC)
		}
		st, err := decodeRemoteState(e.State)
		if err != nil {
			return fmt.Errorf("%w: key %q: %v", ErrBadInput, e.Key, err)
		}
		if len(st.Siblings) == 0 {
			return fmt.Errorf("%w: key %q: a stored state without siblings", ErrBadInput, e.Key)
		}
		states[i] = st
	}
	if !c.Done && len(c.Entries) == 0 {
		return fmt.Errorf("%w: an empty chunk that is not the last", ErrBadInput)
	}
	var n ImportStats
	err := s.do(ctx, func(t *txn) error {
		n = ImportStats{}
		// The peer may know events of this DC above what it applied of
		// them (taken by anti-entropy, or covered by another DC's
		// context). This DC never reissues those numbers: its sequence
		// goes above them, and the ones it does not hold are marked lost,
		// as ResumeAbove marks them, so that anti-entropy takes them back
		// from the peers instead of this DC claiming to know them.
		for i, e := range c.Entries {
			p := event.PartitionOf(e.Key, s.opts.Partitions)
			if own, last := states[i].Clock[s.opts.DC], t.lastSeq(p); own > last && own < event.MaxCounter {
				if err := t.markLost(p, last+1, own); err != nil {
					return err
				}
			}
		}
		for i, e := range c.Entries {
			if err := s.checkRemoteState(t, e.Key, states[i]); err != nil {
				return err
			}
		}
		for i, e := range c.Entries {
			st := states[i]
			if err := t.putState(e.Key, dvv.State{Clock: vclock.VV{}}, st); err != nil {
				return err
			}
			n.Keys++
			n.Bytes += int64(len(e.State))
			if tombOnly(st) {
				n.Tombstones++
			}
			for _, sb := range st.Siblings {
				if sb.Dot.DC == s.opts.DC {
					im.hlc = max(im.hlc, sb.HLC)
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	im.last = last
	im.stats.Keys += n.Keys
	im.stats.Bytes += n.Bytes
	im.stats.Tombstones += n.Tombstones
	im.stats.Chunks++
	return nil
}

// check compares the keys imported from this snapshot with its header:
// their count, and the digest of its partitions.
func (im *importer) check() error {
	h := im.hdr
	if im.stats.Keys != h.Keys {
		return fmt.Errorf("%w: imported %d keys, but the snapshot of %s has %d", ErrBadInput, im.stats.Keys, h.DC, h.Keys)
	}
	d, _, err := im.s.digestOf(im.s.db, im.keep)
	if err != nil {
		return err
	}
	if d.Hex() != h.Digest {
		return fmt.Errorf("%w: the imported keys' digest is %s, but the snapshot of %s says %s", ErrBadInput, d.Hex(), h.DC, h.Digest)
	}
	return nil
}

// finish commits the bookkeeping of every snapshot imported, each for its
// partitions, and removes the marker.
func finish(ctx context.Context, s *Store, ims []*importer) error {
	return s.do(ctx, func(t *txn) error {
		var hlc uint64
		for _, im := range ims {
			if err := im.bookkeep(t); err != nil {
				return err
			}
			hlc = max(hlc, im.hlc)
		}
		t.observeHLC(hlc)
		// The imported states follow from no change of this DC's feed:
		// a reader holding a cursor of it must start from a snapshot.
		if err := t.dropFeed(); err != nil {
			return err
		}
		return t.del(metaKey(metaJoin))
	})
}

// bookkeep writes the applied vector, purge frontiers and lost ranges of
// the snapshot's partitions.
func (im *importer) bookkeep(t *txn) error {
	s, h := im.s, im.hdr
	for o, row := range h.Applied {
		if o == s.opts.DC {
			continue // raised in begin
		}
		for p, n := range row {
			if inSet(im.keep, uint32(p)) && n > t.appliedSeq(o, uint32(p)) {
				if err := t.setApplied(o, uint32(p), n); err != nil {
					return err
				}
			}
		}
	}
	for p, vv := range h.Purged {
		if len(vv) > 0 && inSet(im.keep, uint32(p)) {
			if err := t.setPurgeFrontier(uint32(p), t.purgeFrontier(uint32(p)).Merge(vv)); err != nil {
				return err
			}
		}
	}
	for _, r := range h.Lost {
		if r.Origin != s.opts.DC && inSet(im.keep, r.Partition) {
			if err := t.set(lostKey(r), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// abort removes the keys the import wrote and its marker, and returns
// cause, saying whether the store is empty again.
func (im *importer) abort(cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := im.s.do(ctx, func(t *txn) error {
		if err := t.delRange([]byte{pfxKey}, []byte{pfxKey + 1}); err != nil {
			return err
		}
		if err := t.delRange([]byte{pfxTomb}, []byte{pfxTomb + 1}); err != nil {
			return err
		}
		return t.del(metaKey(metaJoin))
	})
	if err != nil {
		return fmt.Errorf("changelog: import: %w; removing what it wrote failed too (%v): run join again with --force", cause, err)
	}
	return fmt.Errorf("changelog: import: %w (nothing of it was kept)", cause)
}

// delRange deletes the keys in [lo, hi).
func (t *txn) delRange(lo, hi []byte) error {
	t.changed++
	return t.b.DeleteRange(lo, hi, nil)
}
