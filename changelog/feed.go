package changelog

// The change feed (invariant 15 in docs/DESIGN.md): every change the
// committer makes to a key at this DC (a local write, a transaction's op, a
// remote event applied, an anti-entropy merge, a conflict resolution) gets
// a local cursor, 1, 2, 3, ..., and an entry written in the same Pebble
// batch as the change, so a crash never keeps one without the other:
//
//	c <cursor u64>  -> entry: commit time, op, origin, dot, HLC, key, the key's state after the change
//	m fhi           -> u64: the last cursor written
//	m flow          -> u64: the lowest cursor still retained (every lower one was pruned)
//	m fbytes        -> u64: the bytes of the entries held (keys and values)
//
// Readers read the entries from storage with an iterator, never from a
// channel, so a slow reader is never cut off while its cursor is retained.
// They read only entries whose batch is durable (the WAL sync finished),
// like the publisher reads the outbox: a cursor a reader has seen is never
// lost in a crash and so never given to another change. A reader waiting
// for more waits on FeedSignal, a channel closed and replaced each time
// more entries become durable.
//
// Retention bounds the feed by age (Options.FeedRetention, by each entry's
// commit time) and by size (Options.FeedMaxBytes): a pruner deletes the
// oldest entries past either bound, in batches, and records the lowest
// cursor it kept. A reader asking for changes after a cursor the feed no
// longer holds gets a *FeedGoneError and must start again from a snapshot
// (NewReadView), which reads key states and the feed's last cursor from one
// Pebble snapshot: the snapshot plus the changes after its cursor have no
// gap and no duplicate.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

const (
	pfxFeed       = 'c' // c <cursor u64> -> encoded feed entry
	metaFeedHi    = "fhi"
	metaFeedLow   = "flow"
	metaFeedBytes = "fbytes"
	// metaFeedOff is 1 while the store runs with Options.FeedOff, so that
	// only the start that turns the feed off skips a cursor.
	metaFeedOff = "foff"

	// feedEntryVersion is the first byte of every entry's encoding.
	feedEntryVersion = 1
	// feedPruneBatch bounds the entries one prune batch deletes.
	feedPruneBatch = 4096
	// DefaultFeedPruneEvery is how often the pruner looks at the feed's
	// age when Options.FeedPruneEvery is zero; it also runs as soon as a
	// commit takes the feed over its size bound.
	DefaultFeedPruneEvery = 10 * time.Second
	// feedMaxScan bounds the entries one ReadFeed looks at, matching or
	// not, so a reader filtering a prefix gets its position back often.
	feedMaxScan = 10_000
	// DefaultFeedPageBytes bounds the states one ReadFeed returns when
	// FeedQuery.MaxBytes is zero (it returns at least one entry).
	DefaultFeedPageBytes = 4 << 20
)

// ErrFeedGone reports a cursor the change feed cannot continue from: the
// changes after it were pruned, or the cursor is ahead of the feed (the
// store was replaced or restored since the reader saw it). The reader must
// start again from a snapshot. See FeedGoneError.
var ErrFeedGone = errors.New("changelog: the change feed no longer holds the changes after that cursor")

// ErrFeedOff reports a read of the change feed at a store opened with
// Options.FeedOff.
var ErrFeedOff = errors.New("changelog: the change feed is off at this DC (changes.off: true in its config)")

// FeedOff reports whether the store keeps no change feed (Options.FeedOff).
func (s *Store) FeedOff() bool { return s.opts.FeedOff }

// FeedGoneError is the ErrFeedGone of one read.
type FeedGoneError struct {
	// Since is the cursor asked for.
	Since uint64
	// Oldest is the lowest cursor the feed holds (Last+1 when it holds
	// none); Last is its last durable cursor.
	Oldest, Last uint64
}

func (e *FeedGoneError) Error() string {
	if e.Since > e.Last {
		return fmt.Sprintf("cursor %d is ahead of this DC's change feed, which ends at %d: the store was replaced or restored from an older copy since that cursor was read; "+
			"start again from a snapshot (snapshot=true) and continue from the cursor it gives", e.Since, e.Last)
	}
	return fmt.Sprintf("the changes after cursor %d are past the feed's retention (the oldest change held is cursor %d; changes.retention and changes.max_bytes bound it); "+
		"start again from a snapshot (snapshot=true) and continue from the cursor it gives", e.Since, e.Oldest)
}

func (e *FeedGoneError) Unwrap() error { return ErrFeedGone }

// feedState is the feed's bookkeeping in memory. The committer moves next,
// low and bytes after each commit; the syncer moves sync after the WAL
// sync.
type feedState struct {
	sync.Mutex
	next   uint64 // the cursor the next change gets
	sync   uint64 // the last cursor whose batch is durable
	low    uint64 // the lowest cursor retained
	bytes  int64  // bytes of the entries held
	closed bool
	// moved is closed and replaced whenever sync moves, and closed for
	// good when the store closes or fails.
	moved chan struct{}
	// prune wakes the pruner early, when a commit takes the feed over
	// its size bound.
	prune chan struct{}
}

// feedTxn is what one batch does to the feed, folded into feedState once
// the batch is applied.
type feedTxn struct {
	written bool   // writeFeed ran
	next    uint64 // the cursor after the batch's last
	last    uint64 // the batch's last cursor, 0 if it wrote none
	pruned  bool   // the batch deletes entries
	low     uint64 // the lowest cursor retained after the batch
	delta   int64  // bytes the batch's deletions free
	bytes   int64  // bytes held after the batch
	// enc holds, per key, the encoding of the state putState last
	// stored and the index in txn.changes the change that made it takes,
	// so writeFeed need not encode the state again.
	enc map[string]encodedState
}

type encodedState struct {
	b   []byte
	idx int
}

// encoded records that the key's state encodes to b, the state of the
// change at index idx of txn.changes; a nil b forgets the key.
func (f *feedTxn) encoded(key string, b []byte, idx int) {
	if b == nil {
		delete(f.enc, key)
		return
	}
	if f.enc == nil {
		f.enc = make(map[string]encodedState)
	}
	f.enc[key] = encodedState{b, idx}
}

func feedKey(c uint64) []byte { return binary.BigEndian.AppendUint64([]byte{pfxFeed}, c) }

func (s *Store) loadFeed() error {
	hi, err := s.getU64(metaKey(metaFeedHi))
	if err != nil {
		return err
	}
	low, err := s.getU64(metaKey(metaFeedLow))
	if err != nil {
		return err
	}
	n, err := s.getU64(metaKey(metaFeedBytes))
	if err != nil {
		return err
	}
	wasOff, err := s.getU64(metaKey(metaFeedOff))
	if err != nil {
		return err
	}
	if s.opts.FeedOff != (wasOff == 1) {
		b := s.db.NewBatch()
		defer b.Close()
		var errs []error
		if s.opts.FeedOff {
			// The feed goes off: drop its entries and skip cursor hi+1,
			// so that when it is on again every cursor handed out before
			// answers 410 (the changes made while off have none).
			hi, low, n = hi+1, hi+2, 0
			errs = []error{
				b.DeleteRange([]byte{pfxFeed}, []byte{pfxFeed + 1}, nil),
				b.Set(metaKey(metaFeedHi), u64(hi), nil),
				b.Set(metaKey(metaFeedLow), u64(low), nil),
				b.Set(metaKey(metaFeedBytes), u64(0), nil),
				b.Set(metaKey(metaFeedOff), u64(1), nil),
			}
		} else {
			// On again: the next start that turns it off skips again.
			errs = []error{b.Delete(metaKey(metaFeedOff), nil)}
		}
		for _, err := range append(errs, b.Commit(pebble.Sync)) {
			if err != nil {
				return fmt.Errorf("turning the feed on or off: %w", err)
			}
		}
	}
	f := &s.feed
	f.next, f.sync, f.low, f.bytes = hi+1, hi, max(low, 1), int64(n)
	f.moved = make(chan struct{})
	f.prune = make(chan struct{}, 1)
	return nil
}

// writeFeed gives each change of the batch the next cursor and writes its
// entry, and the feed's counters, into the batch. txn.commit calls it
// before the batch is applied.
func (t *txn) writeFeed() error {
	if t.s.opts.FeedOff {
		return nil
	}
	if len(t.changes) == 0 && !t.feed.pruned {
		return nil
	}
	s := t.s
	s.feed.Lock()
	next, held := s.feed.next, s.feed.bytes
	s.feed.Unlock()
	held += t.feed.delta
	now := s.opts.Now().UnixMilli()
	var buf []byte
	for i := range t.changes {
		c := &t.changes[i]
		c.Cursor = next
		k := feedKey(next)
		st := t.feed.enc[c.Key]
		if st.idx != i || st.b == nil {
			var err error
			if st.b, err = encodeState(c.State); err != nil {
				return fmt.Errorf("feed entry of %q: %w", c.Key, err)
			}
		}
		buf = appendFeedEntry(buf[:0], now, c, st.b)
		if err := t.set(k, buf); err != nil {
			return err
		}
		held += int64(len(k) + len(buf))
		t.feed.last = next
		next++
	}
	if t.feed.last > 0 {
		if err := t.set(metaKey(metaFeedHi), u64(t.feed.last)); err != nil {
			return err
		}
	}
	if t.feed.pruned {
		if err := t.set(metaKey(metaFeedLow), u64(t.feed.low)); err != nil {
			return err
		}
	}
	if err := t.set(metaKey(metaFeedBytes), u64(uint64(max(held, 0)))); err != nil {
		return err
	}
	t.feed.written, t.feed.next, t.feed.bytes = true, next, held
	return nil
}

// foldFeed moves the feed's bookkeeping once the batch is applied.
func (t *txn) foldFeed() {
	if !t.feed.written {
		return
	}
	f := &t.s.feed
	f.Lock()
	f.next, f.bytes = t.feed.next, t.feed.bytes
	if t.feed.pruned {
		f.low = t.feed.low
	}
	over := t.s.opts.FeedMaxBytes > 0 && f.bytes > t.s.opts.FeedMaxBytes
	f.Unlock()
	if over {
		select {
		case f.prune <- struct{}{}:
		default:
		}
	}
}

// feedSynced makes the batch's entries readable once its WAL sync is done,
// and wakes the readers waiting for them.
func (t *txn) feedSynced() {
	if t.feed.last == 0 {
		return
	}
	f := &t.s.feed
	f.Lock()
	defer f.Unlock()
	if t.feed.last > f.sync {
		f.sync = t.feed.last
		if !f.closed {
			close(f.moved)
			f.moved = make(chan struct{})
		}
	}
}

// wakeFeed wakes every waiting reader for good: the store closed or
// failed, and their next read says so.
func (s *Store) wakeFeed() {
	f := &s.feed
	f.Lock()
	defer f.Unlock()
	if !f.closed && f.moved != nil {
		f.closed = true
		close(f.moved)
	}
}

// appendFeedEntry appends the encoding of change c committed at ms (Unix
// milliseconds) to dst, with state, c.State encoded (EncodeState):
//
//	version byte (1) | uvarint ms | op byte | uvarint len, origin |
//	uvarint dot counter (0: no dot) [| uvarint len, dot DC (0: the origin)] |
//	uvarint hlc | uvarint len, key | the key's state (EncodeState)
func appendFeedEntry(dst []byte, ms int64, c *Change, state []byte) []byte {
	dst = append(dst, feedEntryVersion)
	dst = binary.AppendUvarint(dst, uint64(max(ms, 0)))
	dst = append(dst, byte(c.Op))
	dst = appendFeedString(dst, c.Origin)
	dst = binary.AppendUvarint(dst, c.Dot.N)
	if c.Dot.N > 0 {
		dc := c.Dot.DC
		if dc == c.Origin {
			dc = ""
		}
		dst = appendFeedString(dst, dc)
	}
	dst = binary.AppendUvarint(dst, c.HLC)
	dst = appendFeedString(dst, c.Key)
	return append(dst, state...)
}

func appendFeedString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// feedReader decodes one entry's fields in order.
type feedReader struct {
	b   []byte
	err error
}

func (r *feedReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("truncated or overlong integer")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *feedReader) byte1() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.err = errors.New("truncated")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *feedReader) str() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errors.New("truncated string")
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// feedHead is an entry's fields up to its key, which a reader filtering by
// prefix needs before it decodes the state.
type feedHead struct {
	ms     int64
	op     event.Op
	origin string
	dot    vclock.Dot
	hlc    uint64
	key    string
	rest   []byte // the encoded state
}

func decodeFeedHead(b []byte) (feedHead, error) {
	r := feedReader{b: b}
	var h feedHead
	if v := r.byte1(); r.err == nil && v != feedEntryVersion {
		return h, fmt.Errorf("feed entry version %d, want %d", v, feedEntryVersion)
	}
	h.ms = int64(r.uvarint())
	h.op = event.Op(r.byte1())
	h.origin = r.str()
	if n := r.uvarint(); n > 0 {
		h.dot = vclock.Dot{DC: r.str(), N: n}
		if h.dot.DC == "" {
			h.dot.DC = h.origin
		}
	}
	h.hlc = r.uvarint()
	h.key = r.str()
	h.rest = r.b
	if r.err != nil {
		return h, fmt.Errorf("feed entry: %w", r.err)
	}
	return h, nil
}

// feedTime returns an entry's commit time in Unix milliseconds, reading
// nothing else.
func feedTime(b []byte) (int64, error) {
	r := feedReader{b: b}
	if v := r.byte1(); r.err == nil && v != feedEntryVersion {
		return 0, fmt.Errorf("feed entry version %d, want %d", v, feedEntryVersion)
	}
	ms := r.uvarint()
	return int64(ms), r.err
}

// FeedEntry is one change of the feed.
type FeedEntry struct {
	// Change is the change: its Cursor, Key, Op, Origin, Dot (zero for an
	// anti-entropy merge, whose Origin is the peer merged from), HLC (of
	// the version that made the change; for a merge the highest HLC it
	// took, or 0) and State, the key's state after it (no siblings when
	// the key was removed).
	Change
	// Time is when the change was committed here (millisecond precision).
	Time time.Time
}

func decodeFeedEntry(cursor uint64, b []byte) (FeedEntry, error) {
	h, err := decodeFeedHead(b)
	if err != nil {
		return FeedEntry{}, fmt.Errorf("cursor %d: %w", cursor, err)
	}
	st, err := decodeState(h.rest)
	if err != nil {
		return FeedEntry{}, fmt.Errorf("cursor %d: key %q: %w", cursor, h.key, err)
	}
	if st.Clock == nil {
		st.Clock = vclock.VV{}
	}
	return FeedEntry{
		Change: Change{Cursor: cursor, Key: h.key, State: st, Origin: h.origin, Op: h.op, Dot: h.dot, HLC: h.hlc},
		Time:   time.UnixMilli(h.ms).UTC(),
	}, nil
}

// FeedQuery selects the changes ReadFeed returns.
type FeedQuery struct {
	// Since is the cursor to continue after: changes with a higher cursor
	// are returned. 0 starts at the oldest change retained.
	Since uint64
	// Prefix keeps only the changes of keys starting with it.
	Prefix string
	// Limit bounds the changes returned; 0 means no bound but MaxBytes.
	Limit int
	// MaxBytes bounds the encoded size of the changes returned
	// (DefaultFeedPageBytes when 0); at least one is returned when any is
	// left.
	MaxBytes int
	// Until, when not 0, stops the read at that cursor.
	Until uint64
}

// FeedPage is what ReadFeed read.
type FeedPage struct {
	// Entries are the changes, in cursor order.
	Entries []FeedEntry
	// Next is the cursor to continue after: the last one the read looked
	// at, returned or filtered out. Every change at or below it that
	// matched the query is in Entries or in an earlier page.
	Next uint64
	// More is set when the read stopped before the end it could see (a
	// bound was reached): reading again from Next returns more at once.
	More bool
}

// FeedBounds returns the lowest cursor the feed retains (last+1 when it
// holds none), its last durable cursor, and the bytes of its entries.
func (s *Store) FeedBounds() (oldest, last uint64, bytes int64) {
	f := &s.feed
	f.Lock()
	defer f.Unlock()
	return min(f.low, f.sync+1), f.sync, f.bytes
}

// FeedSignal returns a channel that is closed when more changes become
// readable, or the store closes or fails. Take it before a read that found
// nothing new, then wait on it: no change is missed in between.
func (s *Store) FeedSignal() <-chan struct{} {
	f := &s.feed
	f.Lock()
	defer f.Unlock()
	return f.moved
}

// ReadFeed returns the durable changes after q.Since, in cursor order, up
// to q's bounds. It returns a *FeedGoneError when the feed no longer holds
// the change after q.Since, or q.Since is ahead of the feed.
func (s *Store) ReadFeed(q FeedQuery) (FeedPage, error) {
	if err := s.usable(); err != nil {
		return FeedPage{}, err
	}
	if s.opts.FeedOff {
		return FeedPage{}, ErrFeedOff
	}
	s.feed.Lock()
	end, low := s.feed.sync, s.feed.low
	s.feed.Unlock()
	if q.Since > end {
		return FeedPage{}, &FeedGoneError{Since: q.Since, Oldest: min(low, end+1), Last: end}
	}
	if q.Until > 0 && q.Until < end {
		end = max(q.Until, q.Since)
	}
	page := FeedPage{Next: q.Since}
	if q.Since == end {
		return page, nil
	}
	maxBytes := q.MaxBytes
	if maxBytes <= 0 {
		maxBytes = DefaultFeedPageBytes
	}
	start := q.Since + 1
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: feedKey(start), UpperBound: feedKey(end + 1)})
	if err != nil {
		return FeedPage{}, err
	}
	defer it.Close()
	first, scanned, size := true, 0, 0
	for it.First(); it.Valid(); it.Next() {
		c := binary.BigEndian.Uint64(it.Key()[1:])
		if first && q.Since > 0 && c != start {
			// The iterator sees one consistent state: the change after
			// q.Since was pruned.
			return FeedPage{}, &FeedGoneError{Since: q.Since, Oldest: c, Last: end}
		}
		first = false
		if scanned >= feedMaxScan || (len(page.Entries) > 0 && (size >= maxBytes || q.Limit > 0 && len(page.Entries) >= q.Limit)) {
			page.More = true
			return page, nil
		}
		scanned++
		v := it.Value()
		if q.Prefix != "" {
			h, err := decodeFeedHead(v)
			if err != nil {
				return FeedPage{}, fmt.Errorf("changelog: change feed at cursor %d: %w", c, err)
			}
			if !strings.HasPrefix(h.key, q.Prefix) {
				page.Next = c
				continue
			}
		}
		e, err := decodeFeedEntry(c, v)
		if err != nil {
			return FeedPage{}, fmt.Errorf("changelog: change feed: %w", err)
		}
		page.Entries = append(page.Entries, e)
		page.Next = c
		size += len(v)
	}
	if err := it.Error(); err != nil {
		return FeedPage{}, err
	}
	if first && q.Since > 0 {
		// Nothing between q.Since and a durable end above it: pruned.
		s.feed.Lock()
		low = s.feed.low
		s.feed.Unlock()
		return FeedPage{}, &FeedGoneError{Since: q.Since, Oldest: min(low, end+1), Last: end}
	}
	page.Next = end
	return page, nil
}

// WaitFeed waits until the feed's changes up to cursor are durable (a
// snapshot's cursor, say, read before its batch's WAL sync finished).
func (s *Store) WaitFeed(ctx context.Context, cursor uint64) error {
	if s.opts.FeedOff {
		return ErrFeedOff
	}
	for {
		if err := s.usable(); err != nil {
			return err
		}
		s.feed.Lock()
		done, moved := s.feed.sync >= cursor, s.feed.moved
		s.feed.Unlock()
		if done {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ReadView is a point-in-time view of the store, read from one Pebble
// snapshot: key states, and the change feed's last cursor at that point.
// The view's states are the effect of exactly the changes up to Cursor, so
// a reader that copies them and then reads the feed after Cursor misses
// nothing and sees nothing twice. Close it promptly: it pins the versions
// it reads. Its methods are not safe for concurrent use.
type ReadView struct {
	snap   *pebble.Snapshot
	cursor uint64
	once   sync.Once
}

// NewReadView takes a view of the store. Its cursor may belong to a batch
// whose WAL sync has not finished: call WaitFeed(ctx, view.Cursor())
// before showing anything of it outside the DC.
func (s *Store) NewReadView() (*ReadView, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	snap := s.db.NewSnapshot()
	b, ok, err := readerGet(snap, metaKey(metaFeedHi))
	if err != nil {
		snap.Close()
		return nil, fmt.Errorf("changelog: read view: %w", err)
	}
	v := &ReadView{snap: snap}
	if ok {
		if len(b) != 8 {
			snap.Close()
			return nil, fmt.Errorf("changelog: read view: corrupt feed counter")
		}
		v.cursor = binary.BigEndian.Uint64(b)
	}
	return v, nil
}

// Cursor is the feed's last cursor in the view (0 before any change).
func (v *ReadView) Cursor() uint64 { return v.cursor }

// Scan calls fn for every key that starts with prefix and sorts after
// after ("" for the first), in key order, with its state in the view. fn
// returning an error stops the scan and Scan returns it.
func (v *ReadView) Scan(prefix, after string, fn func(key string, st dvv.State) error) error {
	pk := keyKey(prefix)
	lo := pk
	if after != "" && after >= prefix {
		lo = append(keyKey(after), 0)
	}
	return scanStates(v.snap, lo, prefixEnd(pk), fn)
}

// Close releases the view. It is safe to call more than once.
func (v *ReadView) Close() error {
	var err error
	v.once.Do(func() { err = v.snap.Close() })
	return err
}

// PruneFeed deletes the feed's entries committed before now minus
// Options.FeedRetention, and the oldest while the feed holds more than
// Options.FeedMaxBytes, oldest first, in batches; it records the lowest
// cursor kept. It returns how many entries it deleted.
func (s *Store) PruneFeed(ctx context.Context, now time.Time) (int, error) {
	s.feedPruneMu.Lock()
	defer s.feedPruneMu.Unlock()
	cutoff := int64(-1)
	if r := s.opts.FeedRetention; r > 0 {
		cutoff = now.Add(-r).UnixMilli()
	}
	total := 0
	for {
		n, err := s.pruneFeedOnce(ctx, cutoff)
		total += n
		if err != nil || n < feedPruneBatch {
			return total, err
		}
	}
}

func (s *Store) pruneFeedOnce(ctx context.Context, cutoff int64) (int, error) {
	n := 0
	err := s.do(ctx, func(t *txn) error {
		n = 0
		s.feed.Lock()
		low, end, held := s.feed.low, s.feed.sync, s.feed.bytes
		s.feed.Unlock()
		held += t.feed.delta
		maxBytes := s.opts.FeedMaxBytes
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: feedKey(low), UpperBound: feedKey(end + 1)})
		if err != nil {
			return err
		}
		defer it.Close()
		var freed int64
		newLow := low
		for it.First(); it.Valid() && n < feedPruneBatch; it.Next() {
			ms, err := feedTime(it.Value())
			if err != nil {
				return fmt.Errorf("change feed at cursor %d: %w", binary.BigEndian.Uint64(it.Key()[1:]), err)
			}
			over := maxBytes > 0 && held-freed > maxBytes
			if ms >= cutoff && !over {
				break
			}
			freed += int64(len(it.Key()) + len(it.Value()))
			newLow = binary.BigEndian.Uint64(it.Key()[1:]) + 1
			n++
		}
		if err := it.Error(); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if err := t.delRange(feedKey(low), feedKey(newLow)); err != nil {
			return err
		}
		t.feed.pruned, t.feed.low = true, newLow
		t.feed.delta -= freed
		return nil
	})
	return n, err
}

// dropFeed deletes every entry of the feed and moves its lowest retained
// cursor past them: after an import the key states no longer follow from
// the changes before it, so a reader must start again from a snapshot.
func (t *txn) dropFeed() error {
	s := t.s
	s.feed.Lock()
	next, held := s.feed.next, s.feed.bytes
	s.feed.Unlock()
	if err := t.delRange([]byte{pfxFeed}, []byte{pfxFeed + 1}); err != nil {
		return err
	}
	t.feed.pruned, t.feed.low = true, next
	t.feed.delta = -held
	return nil
}

// feedPruneLoop prunes the feed every Options.FeedPruneEvery, and as soon
// as a commit takes it over its size bound.
func (s *Store) feedPruneLoop() {
	s.pruneEvery(s.opts.FeedPruneEvery, s.feed.prune, "the change feed", slog.LevelDebug, func() (int, error) {
		return s.PruneFeed(context.Background(), s.opts.Now())
	})
}
