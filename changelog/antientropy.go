package changelog

// Anti-entropy support: digest trees over the key state, exports of key
// states with the knowledge they were read under, the dotted-version-vector
// state merge, and the bookkeeping of own sequences a restored data dir
// lost.
//
// Records this file adds to the key space (see keys.go):
//
//	l <origin> 0x00 <partition u32> <from u64> <to u64> -> empty: origin's sequences [from, to] of the partition are lost
//	f <partition u32> <seq u64>                          -> empty: a lost own sequence taken back by a merge
//
// Lost ranges of this DC are its own (MarkLost, ResumeAbove); those of other
// origins were learned from peers during merges. Each range is its own
// record, so writing one never rewrites another.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"

	"github.com/cockroachdb/pebble/v2"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

const (
	pfxLost  = 'l'
	pfxFound = 'f'
)

func lostKey(r LostRange) []byte {
	b := append([]byte{pfxLost}, r.Origin...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, r.Partition)
	b = binary.BigEndian.AppendUint64(b, r.From)
	return binary.BigEndian.AppendUint64(b, r.To)
}

func foundKey(p uint32, seq uint64) []byte {
	b := binary.BigEndian.AppendUint32([]byte{pfxFound}, p)
	return binary.BigEndian.AppendUint64(b, seq)
}

// TreeBuckets is the number of buckets in a partition's digest tree.
const TreeBuckets = 256

// BucketOf returns the tree bucket of key: the top byte of the key's
// FNV-1a 64 hash, which is independent of the partition (FNV-1a 32 mod n),
// so a partition's keys spread over every bucket.
func BucketOf(key string) int {
	h := fnv.New64a()
	h.Write([]byte(key))
	return int(h.Sum64() >> 56)
}

// PartitionTree is a partition's digest tree: one hash per bucket, each the
// lane-wise sum of sha256(len(key), key, stored state) over the bucket's
// keys, as Digest computes per partition. Two DCs with equal key states
// have equal trees; a differing bucket names the keys to compare.
type PartitionTree struct {
	// Keys counts the partition's stored keys, tombstones included.
	Keys    int
	Buckets [TreeBuckets][32]byte
}

// Sum is the partition's digest: the lane-wise sum of the buckets, equal to
// Digest().Partitions[p].
func (t *PartitionTree) Sum() [32]byte {
	var s [32]byte
	for i := range t.Buckets {
		addLanes(&s, &t.Buckets[i])
	}
	return s
}

// KeyHash is one key of a bucket and the hash of its stored state.
type KeyHash struct {
	Key    string
	Bucket int
	Hash   [32]byte
}

// stateHash is the hash of one key's stored state, as Digest computes it.
func stateHash(key, stored []byte) [32]byte {
	h := sha256.New()
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(key)))
	h.Write(n[:])
	h.Write(key)
	h.Write(stored)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// scanKeys calls fn with every stored key and its encoded state, from one
// consistent snapshot, in key order.
func (s *Store) scanKeys(fn func(key, stored []byte) error) error {
	if s.isClosed() {
		return ErrClosed
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxKey}, UpperBound: []byte{pfxKey + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if err := fn(it.Key()[1:], it.Value()); err != nil {
			return err
		}
	}
	return it.Error()
}

func (s *Store) checkPartition(p uint32) error {
	if int(p) >= s.opts.Partitions {
		return fmt.Errorf("%w: partition %d of %d", ErrBadInput, p, s.opts.Partitions)
	}
	return nil
}

// Tree computes partition p's digest tree. The store keeps no index by
// partition, so it scans every key: O(n) in the store's size.
func (s *Store) Tree(p uint32) (PartitionTree, error) {
	if err := s.checkPartition(p); err != nil {
		return PartitionTree{}, err
	}
	var t PartitionTree
	err := s.scanKeys(func(key, stored []byte) error {
		if event.PartitionOf(string(key), s.opts.Partitions) != p {
			return nil
		}
		h := stateHash(key, stored)
		addLanes(&t.Buckets[BucketOf(string(key))], &h)
		t.Keys++
		return nil
	})
	return t, err
}

// Trees computes every partition's digest tree in one scan: O(n).
func (s *Store) Trees() ([]PartitionTree, error) {
	out := make([]PartitionTree, s.opts.Partitions)
	err := s.scanKeys(func(key, stored []byte) error {
		t := &out[event.PartitionOf(string(key), s.opts.Partitions)]
		h := stateHash(key, stored)
		addLanes(&t.Buckets[BucketOf(string(key))], &h)
		t.Keys++
		return nil
	})
	return out, err
}

// Bucket lists bucket b of partition p: its keys in key order, each with
// the hash of its state. It scans every key: O(n).
func (s *Store) Bucket(p uint32, b int) ([]KeyHash, error) {
	return s.Buckets(p, []int{b})
}

// Buckets lists the given buckets of partition p in one scan, ordered by
// bucket, then key.
func (s *Store) Buckets(p uint32, buckets []int) ([]KeyHash, error) {
	if err := s.checkPartition(p); err != nil {
		return nil, err
	}
	var want [TreeBuckets]bool
	for _, b := range buckets {
		if b < 0 || b >= TreeBuckets {
			return nil, fmt.Errorf("%w: bucket %d: want 0 to %d", ErrBadInput, b, TreeBuckets-1)
		}
		want[b] = true
	}
	var out []KeyHash
	err := s.scanKeys(func(key, stored []byte) error {
		b := BucketOf(string(key))
		if !want[b] || event.PartitionOf(string(key), s.opts.Partitions) != p {
			return nil
		}
		out = append(out, KeyHash{Key: string(key), Bucket: b, Hash: stateHash(key, stored)})
		return nil
	})
	// The scan is in key order, so a stable sort by bucket keeps it within
	// each bucket.
	slices.SortStableFunc(out, func(a, b KeyHash) int { return a.Bucket - b.Bucket })
	return out, err
}

// States returns the committed states of the keys the store holds; absent
// keys are left out. A peer that merges them must also get the knowledge
// they were read under: see Export.
func (s *Store) States(keys []string) (map[string]dvv.State, error) {
	out := make(map[string]dvv.State, len(keys))
	for _, k := range keys {
		st, ok, err := s.Get(k)
		if err != nil {
			return nil, err
		}
		if ok {
			out[k] = st
		}
	}
	return out, nil
}

// Export returns the encoded states of the keys the store holds (absent
// keys are left out) together with this DC's knowledge, read before the
// states. The order matters: a peer drops its sibling when this DC's
// knowledge covers the dot and the state does not hold it, and every dot
// the knowledge covers was applied before the states were read, so a dot
// missing from them was superseded, not merely not yet applied.
func (s *Store) Export(keys []string) (Knowledge, map[string][]byte, error) {
	k, err := s.Knowledge()
	if err != nil {
		return Knowledge{}, nil, err
	}
	out := make(map[string][]byte, len(keys))
	for _, key := range keys {
		b, ok, err := s.get(keyKey(key))
		if err != nil {
			return Knowledge{}, nil, err
		}
		if ok {
			out[key] = b
		}
	}
	return k, out, nil
}

// EncodeState returns the stored (deterministic) form of a state; equal
// states have equal bytes. Anti-entropy carries states in this form.
func EncodeState(st dvv.State) ([]byte, error) { return encodeState(st) }

// DecodeState reads a state EncodeState wrote.
func DecodeState(b []byte) (dvv.State, error) { return decodeRemoteState(b) }

// decodeRemoteState decodes a key state that came over the network (an
// anti-entropy answer, a snapshot chunk): it is checked first, since the
// msgpack decoder trusts declared lengths (package msgpackcheck).
func decodeRemoteState(b []byte) (dvv.State, error) {
	if err := msgpackcheck.Check(b); err != nil {
		return dvv.State{}, fmt.Errorf("decode key state: %w", err)
	}
	return decodeState(b)
}

// SeqRange is a closed range of sequence numbers.
type SeqRange struct {
	From uint64 `msgpack:"from" json:"from"`
	To   uint64 `msgpack:"to" json:"to"`
}

// LostRange names sequences of one origin in one partition that were
// issued but are held by neither the origin's store nor its stream: the
// origin's data dir was restored from an old copy. Such dots cannot be
// known from a key clock: the origin's later writes raised its clock entry
// above them without the origin having seen them.
type LostRange struct {
	Origin    string `msgpack:"origin" json:"origin"`
	Partition uint32 `msgpack:"p" json:"partition"`
	From      uint64 `msgpack:"from" json:"from"`
	To        uint64 `msgpack:"to" json:"to"`
}

// Knowledge is what a DC knows to have happened: the events its applied
// vector covers (its own entry is its last issued sequence) and, per key,
// those its clock covers, except lost ones. A dot a DC knows but whose key
// state does not hold it was superseded there.
type Knowledge struct {
	DC      string      `msgpack:"dc" json:"dc"`
	Applied Applied     `msgpack:"applied" json:"applied"`
	Lost    []LostRange `msgpack:"lost" json:"lost,omitempty"`
}

// Knowledge returns this DC's knowledge: its applied vector, then its lost
// ranges (its own, less what merges took back, and those learned from
// peers).
func (s *Store) Knowledge() (Knowledge, error) {
	a := s.Applied()
	lost, err := s.lostTable()
	if err != nil {
		return Knowledge{}, err
	}
	return Knowledge{DC: s.opts.DC, Applied: a, Lost: lost}, nil
}

// lostTable reads the lost ranges, own ones split around the sequences a
// merge took back.
func (s *Store) lostTable() ([]LostRange, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	return s.lostTableFrom(s.db)
}

// lostTableFrom is lostTable read from r: the store or one of its
// snapshots.
func (s *Store) lostTableFrom(r pebble.Reader) ([]LostRange, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxLost}, UpperBound: []byte{pfxLost + 1}})
	if err != nil {
		return nil, err
	}
	var rs []LostRange
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[1:]
		if len(k) < 21 || k[len(k)-21] != 0 {
			it.Close()
			return nil, fmt.Errorf("changelog: corrupt lost-range key %q", it.Key())
		}
		n := len(k)
		rs = append(rs, LostRange{
			Origin:    string(k[:n-21]),
			Partition: binary.BigEndian.Uint32(k[n-20:]),
			From:      binary.BigEndian.Uint64(k[n-16:]),
			To:        binary.BigEndian.Uint64(k[n-8:]),
		})
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	found := map[uint32][]uint64{}
	it, err = r.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxFound}, UpperBound: []byte{pfxFound + 1}})
	if err != nil {
		return nil, err
	}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[1:]
		if len(k) != 12 {
			it.Close()
			return nil, fmt.Errorf("changelog: corrupt found key %q", it.Key())
		}
		p := binary.BigEndian.Uint32(k)
		found[p] = append(found[p], binary.BigEndian.Uint64(k[4:]))
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	var out []LostRange
	for _, r := range rs {
		if r.Origin != s.opts.DC || len(found[r.Partition]) == 0 {
			out = append(out, r)
			continue
		}
		out = append(out, splitRange(r, found[r.Partition])...)
	}
	return out, nil
}

// splitRange returns r less the sorted sequences in holes.
func splitRange(r LostRange, holes []uint64) []LostRange {
	var out []LostRange
	from := r.From
	for _, h := range holes {
		if h < from || h > r.To {
			continue
		}
		if h > from {
			out = append(out, LostRange{Origin: r.Origin, Partition: r.Partition, From: from, To: h - 1})
		}
		from = h + 1
	}
	if from <= r.To && from > 0 {
		out = append(out, LostRange{Origin: r.Origin, Partition: r.Partition, From: from, To: r.To})
	}
	return out
}

// lostIndex answers whether a dot is lost.
type lostIndex map[appliedRef][]SeqRange

func indexLost(rs []LostRange) lostIndex {
	ix := lostIndex{}
	for _, r := range rs {
		k := appliedRef{r.Origin, r.Partition}
		ix[k] = append(ix[k], SeqRange{r.From, r.To})
	}
	return ix
}

func (ix lostIndex) covers(origin string, p uint32, n uint64) bool {
	for _, r := range ix[appliedRef{origin, p}] {
		if r.From <= n && n <= r.To {
			return true
		}
	}
	return false
}

// lowest returns the lowest lost sequence of origin in p that is at most n.
func (ix lostIndex) lowest(origin string, p uint32, n uint64) (uint64, bool) {
	lo, ok := uint64(0), false
	for _, r := range ix[appliedRef{origin, p}] {
		if r.From <= n && (!ok || r.From < lo) {
			lo, ok = r.From, true
		}
	}
	return lo, ok
}

// knower decides whether one DC knows a dot of one partition.
type knower struct {
	dc      string
	applied func(origin string, p uint32) uint64
	lost    lostIndex
}

// knows reports whether the DC knows d, given the key's clock there. Its
// applied vector is the truth about the events it applied in order, except
// its own lost sequences (its own entry is its last issued sequence); a key
// clock is the truth except for lost dots, which a later write of the
// origin covered without having seen them.
func (k knower) knows(clock vclock.VV, p uint32, d vclock.Dot) bool {
	lost := k.lost.covers(d.DC, p, d.N)
	if k.applied(d.DC, p) >= d.N && !(d.DC == k.dc && lost) {
		return true
	}
	return clock.Covers(d) && !lost
}

// MergeStats counts what a merge did.
type MergeStats struct {
	// Keys is the number of keys compared.
	Keys int
	// Changed is the number of keys whose state changed.
	Changed int
	// Taken counts remote siblings taken: versions this DC had not seen.
	Taken int
	// Dropped counts local siblings dropped: versions the peer knows were
	// superseded.
	Dropped int
	// Removed counts keys removed because nothing of them remained: the
	// peer had purged them.
	Removed int
	// Mismatched counts siblings with the same dot and different contents
	// on the two sides; the larger encoding is kept at both, so they
	// converge, and a warning is logged.
	Mismatched int
	// Found counts own lost versions taken back.
	Found int
}

// Add adds o's counts to m.
func (m *MergeStats) Add(o MergeStats) {
	m.Keys += o.Keys
	m.Changed += o.Changed
	m.Taken += o.Taken
	m.Dropped += o.Dropped
	m.Removed += o.Removed
	m.Mismatched += o.Mismatched
	m.Found += o.Found
}

// Merge merges a peer's state of key into this DC's, in one batch through
// the committer, and reports whether the key changed. from is the peer's
// knowledge, read before its state (see Export); a zero remote state means
// the peer holds nothing for the key. See MergeStates for the rules.
func (s *Store) Merge(ctx context.Context, key string, remote dvv.State, from Knowledge) (bool, error) {
	st, err := s.MergeStates(ctx, map[string]dvv.State{key: remote}, from)
	return st.Changed > 0, err
}

// MergeStates merges a peer's states of several keys into this DC's, in one
// batch; a zero state means the peer holds nothing for that key. It is the
// dotted-version-vector merge, with the applied vectors as knowledge:
//
//   - a local sibling is kept when the peer holds it too, or when the peer
//     does not know its dot; a sibling whose dot the peer knows and does not
//     hold was superseded or purged there, and is dropped;
//   - a remote sibling is taken only when this DC does not know its dot: a
//     dot this DC applied or covers and no longer holds was superseded or
//     purged here, and taking it back would resurrect it (a key deleted
//     elsewhere never comes back); a dot this DC does not know was lost on
//     the way (JetStream lost it, or this DC's data dir was restored);
//   - this DC's own sequences in a lost range (MarkLost) count as not known,
//     so own writes lost by a restore come back from the peers, and the
//     peer's lost ranges are learned, so no clock imported from it counts as
//     knowing what it lost;
//   - the clock is the merge of both clocks; a key left with no sibling is
//     removed, as Purge would, and its clock, capped at what this DC has
//     applied, joins the partition's purge frontier.
//
// The applied vector does not move: anti-entropy does not replace the
// per-origin order of the event stream. An event that later arrives for a
// merged dot is in sequence and its dot is covered by the key's clock, so
// Apply counts it obsolete and only the applied vector moves. Conflicts the
// merged state reveals are logged as for an applied event.
func (s *Store) MergeStates(ctx context.Context, remote map[string]dvv.State, from Knowledge) (MergeStats, error) {
	if err := s.checkKnowledge(from); err != nil {
		return MergeStats{}, err
	}
	keys := make([]string, 0, len(remote))
	for key := range remote {
		if err := event.CheckKey(key, s.opts.Limits.MaxKeyBytes); err != nil {
			return MergeStats{}, fmt.Errorf("%w: %v", ErrBadInput, err)
		}
		keys = append(keys, key)
	}
	sort.Strings(keys)
	local, err := s.lostTable()
	if err != nil {
		return MergeStats{}, err
	}
	have := map[LostRange]bool{}
	for _, r := range local {
		have[r] = true
	}
	// Ranges learned from the peer; this DC's own are its own business.
	var learn []LostRange
	for _, r := range from.Lost {
		if r.Origin != s.opts.DC && !have[r] {
			have[r] = true
			learn = append(learn, r)
		}
	}
	localIx := indexLost(append(local, learn...))
	remoteIx := indexLost(from.Lost)
	remoteKnows := knower{dc: from.DC, lost: remoteIx, applied: func(o string, p uint32) uint64 {
		if row := from.Applied[o]; int(p) < len(row) {
			return row[p]
		}
		return 0
	}}
	var stats MergeStats
	err = s.do(ctx, func(t *txn) error {
		stats = MergeStats{}
		for _, key := range keys {
			if err := s.checkRemoteState(t, key, remote[key]); err != nil {
				return err
			}
		}
		for _, r := range learn {
			if err := t.set(lostKey(r), nil); err != nil {
				return err
			}
		}
		localKnows := knower{dc: s.opts.DC, lost: localIx, applied: t.appliedSeq}
		for _, key := range keys {
			if err := t.merge(key, remote[key], from.DC, localKnows, remoteKnows, &stats); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return MergeStats{}, err
	}
	if stats.Mismatched > 0 {
		s.log.Warn("anti-entropy found versions with the same dot and different contents; kept the larger encoding",
			"peer", from.DC, "versions", stats.Mismatched)
	}
	return stats, nil
}

func (t *txn) merge(key string, remote dvv.State, peer string, localKnows, remoteKnows knower, stats *MergeStats) error {
	s := t.s
	p := event.PartitionOf(key, s.opts.Partitions)
	cur, ok, err := t.state(key)
	if err != nil {
		return err
	}
	stats.Keys++
	next, c := mergeState(cur, remote,
		func(d vclock.Dot) bool { return localKnows.knows(cur.Clock, p, d) },
		func(d vclock.Dot) bool { return remoteKnows.knows(remote.Clock, p, d) })
	if len(next.Siblings) == 0 {
		if !ok {
			return nil // absent here, nothing to take
		}
		if err := t.deleteState(key, cur); err != nil {
			return err
		}
		// Later writes to the absent key must cover what it held; but
		// only up to what this DC applied, and never an own lost dot, or
		// they would supersede versions this DC has not seen.
		frontier := vclock.VV{}
		for dc, n := range cur.Clock {
			n = min(n, t.appliedSeq(dc, p))
			if dc == s.opts.DC {
				if lo, lost := localKnows.lost.lowest(dc, p, n); lost {
					n = lo - 1
				}
			}
			if n > 0 {
				frontier[dc] = n
			}
		}
		if err := t.setPurgeFrontier(p, t.purgeFrontier(p).Merge(frontier)); err != nil {
			return err
		}
		stats.Changed++
		stats.Dropped += c.dropped
		stats.Removed++
		t.changes = append(t.changes, Change{Key: key, State: dvv.State{Clock: vclock.VV{}}, Origin: peer, Op: event.OpDelete})
		return nil
	}
	if ok {
		a, err := encodeState(cur)
		if err != nil {
			return err
		}
		b, err := encodeState(next)
		if err != nil {
			return err
		}
		if bytes.Equal(a, b) {
			return nil
		}
	}
	if err := t.putState(key, cur, next); err != nil {
		return err
	}
	if err := t.noteConflicts(key, next, c.hlc, cause{}); err != nil {
		return err
	}
	for _, n := range c.ownTaken(s.opts.DC) {
		if localKnows.lost.covers(s.opts.DC, p, n) {
			if err := t.set(foundKey(p, n), nil); err != nil {
				return err
			}
			stats.Found++
		}
	}
	stats.Changed++
	stats.Taken += len(c.taken)
	stats.Dropped += c.dropped
	stats.Mismatched += c.mismatched
	op := event.OpPut
	if next.LiveCount() == 0 {
		op = event.OpDelete
	}
	t.changes = append(t.changes, Change{Key: key, State: next, Origin: peer, Op: op, HLC: c.hlc})
	return nil
}

// mergeCounts is what mergeState did to one key.
type mergeCounts struct {
	taken      []vclock.Dot
	dropped    int
	mismatched int
	hlc        uint64 // the highest HLC among the taken siblings
}

func (c mergeCounts) ownTaken(dc string) []uint64 {
	var out []uint64
	for _, d := range c.taken {
		if d.DC == dc {
			out = append(out, d.N)
		}
	}
	return out
}

// mergeState is the pure merge of one key's local and remote states, given
// which dots each side knows (see MergeStates).
func mergeState(local, remote dvv.State, localKnows, remoteKnows func(vclock.Dot) bool) (dvv.State, mergeCounts) {
	var c mergeCounts
	out := dvv.State{Clock: local.Clock.Merge(remote.Clock)}
	rs := make([]dvv.Sibling, len(remote.Siblings))
	theirs := make(map[vclock.Dot]dvv.Sibling, len(remote.Siblings))
	for i, sb := range remote.Siblings {
		sb.Value = normValue(sb.Version)
		rs[i] = sb
		theirs[sb.Dot] = sb
	}
	mine := make(map[vclock.Dot]bool, len(local.Siblings))
	for _, sb := range local.Siblings {
		mine[sb.Dot] = true
		if r, ok := theirs[sb.Dot]; ok {
			if !sameVersion(sb.Version, r.Version) {
				c.mismatched++
				if versionLess(sb.Version, r.Version) {
					sb = r
				}
			}
			out.Siblings = append(out.Siblings, sb)
			continue
		}
		if remoteKnows(sb.Dot) {
			c.dropped++
			continue
		}
		out.Siblings = append(out.Siblings, sb)
	}
	for _, sb := range rs {
		if mine[sb.Dot] || localKnows(sb.Dot) {
			continue
		}
		out.Siblings = append(out.Siblings, sb)
		c.taken = append(c.taken, sb.Dot)
		c.hlc = max(c.hlc, sb.HLC)
	}
	sort.Slice(out.Siblings, func(i, j int) bool { return dvv.Less(out.Siblings[i].Dot, out.Siblings[j].Dot) })
	for _, sb := range out.Siblings {
		out.Clock.Add(sb.Dot)
	}
	return out, c
}

func sameVersion(a, b dvv.Version) bool {
	return a.Deleted == b.Deleted && a.HLC == b.HLC && a.Expires == b.Expires && bytes.Equal(a.Value, b.Value)
}

// versionLess orders two versions of one dot deterministically, so both
// sides of a mismatch keep the same one.
func versionLess(a, b dvv.Version) bool {
	if a.HLC != b.HLC {
		return a.HLC < b.HLC
	}
	if a.Deleted != b.Deleted {
		return !a.Deleted
	}
	if a.Expires != b.Expires {
		return a.Expires < b.Expires
	}
	return bytes.Compare(a.Value, b.Value) < 0
}

// checkKnowledge rejects a peer's knowledge that names unknown DCs, this
// DC, a wrong partition count or absurd ranges.
func (s *Store) checkKnowledge(k Knowledge) error {
	if !slices.Contains(s.opts.DCs, k.DC) || k.DC == s.opts.DC {
		return fmt.Errorf("%w: knowledge of dc %q: want one of the other DCs %v", ErrBadInput, k.DC, s.opts.DCs)
	}
	for o, row := range k.Applied {
		if !slices.Contains(s.opts.DCs, o) {
			return fmt.Errorf("%w: knowledge of %s names dc %q, which is not one of %v", ErrBadInput, k.DC, o, s.opts.DCs)
		}
		if len(row) != s.opts.Partitions {
			return fmt.Errorf("%w: knowledge of %s has %d partitions for %s, want %d", ErrBadInput, k.DC, len(row), o, s.opts.Partitions)
		}
		for _, n := range row {
			if n >= event.MaxCounter {
				return fmt.Errorf("%w: knowledge of %s: counter %d for %s is absurd", ErrBadInput, k.DC, n, o)
			}
		}
	}
	for _, r := range k.Lost {
		if !slices.Contains(s.opts.DCs, r.Origin) || int(r.Partition) >= s.opts.Partitions ||
			r.From == 0 || r.To < r.From || r.To >= event.MaxCounter {
			return fmt.Errorf("%w: knowledge of %s: lost range %s/%d [%d, %d] is invalid", ErrBadInput, k.DC, r.Origin, r.Partition, r.From, r.To)
		}
	}
	return nil
}

// checkRemoteState rejects a peer's state that breaks the model: unknown
// DCs, unsorted or repeated dots, dots its clock does not cover, oversize
// values, or own dots this DC never issued.
func (s *Store) checkRemoteState(t *txn, key string, st dvv.State) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: state of key %q: %s", ErrBadInput, key, fmt.Sprintf(format, args...))
	}
	p := event.PartitionOf(key, s.opts.Partitions)
	for dc, n := range st.Clock {
		if !slices.Contains(s.opts.DCs, dc) {
			return bad("clock names dc %q, which is not one of %v", dc, s.opts.DCs)
		}
		if n >= event.MaxCounter {
			return bad("clock counter %d for %s is absurd", n, dc)
		}
	}
	for i, sb := range st.Siblings {
		switch {
		case sb.Dot.N == 0 || !slices.Contains(s.opts.DCs, sb.Dot.DC):
			return bad("sibling dot %s is invalid", sb.Dot)
		case i > 0 && !dvv.Less(st.Siblings[i-1].Dot, sb.Dot):
			return bad("siblings are not sorted by dot, or repeat one (%s)", sb.Dot)
		case !st.Clock.Covers(sb.Dot):
			return bad("clock %s does not cover sibling %s", st.Clock, sb.Dot)
		case len(sb.Value) > s.opts.Limits.MaxValueBytes:
			return bad("sibling %s holds %d bytes, over the %d-byte limit", sb.Dot, len(sb.Value), s.opts.Limits.MaxValueBytes)
		case sb.Dot.DC == s.opts.DC && sb.Dot.N > t.lastSeq(p):
			return bad("sibling %s is an event of this DC it never issued (last %d)", sb.Dot, t.lastSeq(p))
		}
	}
	return nil
}

// MarkLost records that this DC's own sequences [from, to] of partition p
// were issued but its store no longer holds them, and its stream could not
// give them back: the data dir was restored from an old copy. Merges then
// take those versions back from the peers that hold them, and peers do not
// take this DC's knowledge for having seen them. The partition's sequence
// is raised to at least to, since those numbers were issued.
func (s *Store) MarkLost(ctx context.Context, p uint32, from, to uint64) error {
	if err := s.checkPartition(p); err != nil {
		return err
	}
	if from == 0 || to < from || to >= event.MaxCounter {
		return fmt.Errorf("%w: lost range [%d, %d]: want 1 <= from <= to", ErrBadInput, from, to)
	}
	return s.do(ctx, func(t *txn) error { return t.markLost(p, from, to) })
}

func (t *txn) markLost(p uint32, from, to uint64) error {
	if err := t.set(lostKey(LostRange{Origin: t.s.opts.DC, Partition: p, From: from, To: to}), nil); err != nil {
		return err
	}
	if t.lastSeq(p) < to {
		return t.setSeq(p, to)
	}
	return nil
}

// ResumeAbove raises partition p's sequence to at least seq, like
// EnsureSeqAbove, and records the sequences it skips as lost (MarkLost), in
// one batch: every number between the store's last sequence and seq was
// issued (the stream names seq) and the store does not hold it. It returns
// the range marked, empty when the store was not behind. The bridge calls
// it at start, after taking back what its stream still held.
func (s *Store) ResumeAbove(ctx context.Context, p uint32, seq uint64) (SeqRange, error) {
	if err := s.checkPartition(p); err != nil {
		return SeqRange{}, err
	}
	if seq >= event.MaxCounter {
		return SeqRange{}, fmt.Errorf("%w: sequence %d is absurd", ErrBadInput, seq)
	}
	var r SeqRange
	err := s.do(ctx, func(t *txn) error {
		r = SeqRange{}
		if last := t.lastSeq(p); last < seq {
			r = SeqRange{From: last + 1, To: seq}
			return t.markLost(p, r.From, r.To)
		}
		return nil
	})
	return r, err
}
