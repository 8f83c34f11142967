// Package changelog is the DC's durable store, on Pebble: the state of every
// key (a causal clock and its siblings), the outbox of events still to
// publish, the applied vector per (origin, partition), the conflict log, and
// the bookkeeping for tombstone purging.
//
// Every mutation goes through one committer goroutine. It takes the requests
// waiting, applies them in order to one Pebble batch, commits that batch with
// one fsync and only then answers the callers: concurrent writers share one
// fsync (group commit), a write is acknowledged only once durable, and an
// event's new key state, applied-vector entry and forward entry commit
// together or not at all. Applies of remote events wait in a queue of their
// own: each batch takes every other request waiting first, then applies up
// to a share of events (Options.GroupApplyEvents), and ends early when a
// local request arrives, so a local write waits for the Apply running and
// its batch's sync however long the apply backlog, and a steady local load
// still lets an Apply through every batch.
//
// Internal to the sidecar: not a stable Go API. Its stored format is a
// contract: a data dir stays readable by later versions.
package changelog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// Errors the store returns.
var (
	ErrClosed   = errors.New("changelog: closed")
	ErrBadInput = errors.New("changelog: bad input")
	// ErrLocked reports a store another process (or this one) has open:
	// a running sidecar holds its store's lock.
	ErrLocked = errors.New("changelog: the store is open in another process, such as this DC's running sidecar")
	// ErrValueTooLarge marks a value over Limits.MaxValueBytes (the
	// config's limits.max_value_bytes); its errors also wrap ErrBadInput.
	// The HTTP API answers it with 413.
	ErrValueTooLarge = errors.New("changelog: value too large")
	// ErrContextAhead reports a client context naming another DC's event
	// that this DC has not applied yet. The write is not made; it can be
	// retried once this DC has caught up (see ContextAheadError).
	ErrContextAhead = errors.New("changelog: context is ahead of this DC")
	// ErrTooManySiblings refuses a local write that would leave its key
	// with more siblings than Options.MaxSiblings (the config's
	// limits.max_siblings), and more than it holds: a write without the
	// read's context under the siblings or record resolver keeps every
	// value it does not supersede (see TooManySiblingsError). The HTTP API
	// answers it with 409.
	ErrTooManySiblings = errors.New("changelog: too many siblings")
	// ErrFailed reports a store stopped by a failed WAL write or sync
	// (invariant 17 in docs/DESIGN.md): it serves nothing more, and the
	// sidecar must be restarted.
	ErrFailed = errors.New("changelog: the store stopped after a failed write to its log; restart the sidecar")
)

// Clock supplies hybrid logical clock readings for local writes.
type Clock interface {
	Now() uint64
}

// Resolvers picks the resolver for a key.
type Resolvers interface {
	For(key string) resolve.Resolver
}

// Options configure a Store.
type Options struct {
	// DC is this datacenter's id.
	DC string
	// DCs lists every DC; an outbox entry or a tombstone is kept until all of
	// them have applied it.
	DCs []string
	// Partitions is the partition count, the same at every DC.
	Partitions int
	// FS is the filesystem; nil means the OS's.
	FS vfs.FS
	// NoSync commits without fsync. Only for benchmarks that measure the
	// difference; a store opened so breaks invariant 1 (docs/DESIGN.md).
	NoSync bool
	// Clock reads the DC's HLC for local writes.
	Clock Clock
	// Resolvers choose each key's resolver; nil means siblings for all.
	Resolvers Resolvers
	// OnCommit, if set, is called by the committer after each commit with the
	// key changes it made, in order. It must not block.
	OnCommit func([]Change)
	// OnFatal, if set, is called once when a batch's WAL write or sync
	// fails and the store stops (see ErrFailed). It must not block; the
	// sidecar exits non-zero for its supervisor to restart it.
	OnFatal func(error)
	// MaxGroup bounds the requests other than applies committed in one
	// batch (default 512).
	MaxGroup int
	// GroupApplyEvents bounds the remote events (Apply) one batch takes
	// after the other requests waiting (default 512). A single Apply of
	// more events is taken whole, alone. Every batch takes at least one
	// Apply when one waits, however many local requests wait.
	GroupApplyEvents int
	// Logger receives the store's log lines; nil discards them.
	Logger *slog.Logger
	// Limits bound the keys and values a local write accepts, so that no
	// write is acknowledged here that other DCs would reject; zero fields
	// take event.DefaultLimits.
	Limits event.Limits
	// MaxSiblings bounds the siblings a local write may leave a key with
	// (default DefaultMaxSiblings): a write that would leave more, and
	// more than the key holds, is refused with ErrTooManySiblings. Remote
	// events are always applied, so a key holds at most about this many
	// siblings per DC.
	MaxSiblings int
	// ContextWait is how long Write waits for this DC to apply the other
	// DCs' events a client context names before it gives up with
	// ErrContextAhead, and how long WaitRead waits for what a reader's
	// context or session token names. Zero does not wait.
	ContextWait time.Duration
	// Owns, for one of several sidecars (shards) of a DC, says which
	// partitions this store holds (docs/DESIGN.md, invariant 16): a
	// session token's entries of other partitions are the other shards'
	// to wait for. Nil: every partition.
	Owns func(p uint32) bool
	// TxnMaxOps and TxnMaxBytes bound a local transaction (WriteTxn): its
	// ops, and its encoded message. Defaults DefaultTxnMaxOps and
	// DefaultTxnMaxBytes; never above what Limits lets other DCs accept.
	TxnMaxOps   int
	TxnMaxBytes int
	// ConflictRetention and ConflictMaxEntries bound the conflict log:
	// logged and resolved entries older than the retention, or beyond the
	// count (oldest first), are pruned every ConflictPruneEvery (default 1
	// minute). Open records are never pruned. Zero disables each bound.
	ConflictRetention  time.Duration
	ConflictMaxEntries int
	ConflictPruneEvery time.Duration
	// FeedRetention and FeedMaxBytes bound the change feed (feed.go):
	// entries committed longer ago than the retention, and the oldest
	// while the feed holds more bytes than the bound, are pruned every
	// FeedPruneEvery (default DefaultFeedPruneEvery). Zero disables each
	// bound.
	FeedRetention  time.Duration
	FeedMaxBytes   int64
	FeedPruneEvery time.Duration
	// FeedOff writes no change feed entries: changes get no cursor,
	// ReadFeed and WaitFeed answer ErrFeedOff. Opening with it drops the
	// entries held and skips a cursor, so when the feed is on again every
	// earlier cursor is gone (410), changes made while off having none.
	FeedOff bool
	// Now is the physical clock the change feed stamps entries with and
	// prunes by; default time.Now.
	Now func() time.Time

	// enqueueHook, set only by tests, runs in enqueue between its closed
	// check and its send, to hold a caller in that window.
	enqueueHook func(*Store)

	// serial makes each group wait for its own sync before the next group
	// starts: the one-fsync-per-write baseline of the benchmarks.
	serial bool
}

// Change describes one key change, for watchers and the change feed.
type Change struct {
	Key   string
	State dvv.State
	// Origin is the DC whose event caused the change.
	Origin string
	Op     event.Op
	// Dot and HLC are those of the version that made the change; the Dot
	// is zero for an anti-entropy merge (Origin is then the peer).
	Dot vclock.Dot
	HLC uint64
	// Cursor is the change's position in the change feed, set when its
	// batch commits.
	Cursor uint64
}

// Store is one DC's change log. Its methods are safe for concurrent use.
type Store struct {
	opts Options
	db   *pebble.DB
	log  *slog.Logger
	wo   *pebble.WriteOptions
	reqs chan *request // local writes and every other request but applies
	// applies queues Apply's requests: remote events, taken a share per
	// batch after reqs (commitLoop).
	applies chan *request
	syncs   chan synced
	notify  chan struct{}
	stop    chan struct{}
	// idle is closed once the committer and the syncer have exited, every
	// request they took answered (enqueue's check for one never taken).
	idle chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	// expiries receives a value after each commit that indexed a new
	// expiry (ExpiryAdded), to wake an expirer sleeping until a later one.
	expiries chan struct{}

	// hlcHigh is the highest HLC of a local write the store had persisted
	// when it opened.
	hlcHigh uint64

	groups, requests, writes atomic.Uint64
	// siblingsRefused counts local writes refused with ErrTooManySiblings.
	siblingsRefused atomic.Uint64
	// txnCap, if above 0, caps TxnMaxBytes (CapTxnBytes).
	txnCap atomic.Int64
	// failed holds the error that stopped the store, once one has.
	failed atomic.Pointer[error]
	// conflictsIndexed counts the prunable conflict-log entries;
	// conflictsPruned the entries retention deleted.
	conflictsIndexed atomic.Int64
	conflictsPruned  atomic.Uint64
	conflictsMu      sync.Mutex
	conflicts        map[string]uint64 // entries logged or opened, by resolver
	// feed is the change feed's bookkeeping (feed.go).
	feed        feedState
	feedPruneMu sync.Mutex

	// mu guards the in-memory copies of persisted bookkeeping. The
	// committer changes them only after a batch commits.
	mu struct {
		sync.RWMutex
		closed     bool
		seq        []uint64                // own last sequence per partition
		applied    map[string][]uint64     // origin -> partition -> contiguous applied sequence
		purged     []vclock.VV             // purge frontier per partition
		outboxNext uint64                  // index of the next outbox entry
		outboxSync uint64                  // entries below this index are durable
		outboxLow  uint64                  // lowest index possibly still stored
		ckpt       uint64                  // highest outbox index JetStream acknowledged
		hlcHigh    uint64                  // highest local-write HLC persisted
		peers      map[string]*peerReports // applied vectors the other DCs reported
		// progress is closed and replaced whenever a commit moves the
		// applied vector or changes key states, to wake WaitContext and
		// WaitApplied.
		progress chan struct{}
		// durable is the applied vector (own row: last issued sequence)
		// of the batches whose WAL sync has completed: what this DC
		// reports to its peers. durableMoved is closed and replaced
		// whenever it moves.
		durable      Applied
		durableMoved chan struct{}
		// reported is closed and replaced whenever a peer's newest
		// report moves, to wake WaitReplicated.
		reported chan struct{}
	}
}

// lockHeld reports whether Pebble's open failed on the directory's lock:
// another process holds it (fcntl's EAGAIN, "resource temporarily
// unavailable") or this one does (Pebble's own message).
func lockHeld(err error) bool {
	return errors.Is(err, syscall.EAGAIN) || strings.Contains(err.Error(), "lock held by current process")
}

// Open opens or creates the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if opts.DC == "" || opts.Partitions < 1 {
		return nil, fmt.Errorf("changelog: open %s: DC and Partitions are required", dir)
	}
	if opts.MaxGroup <= 0 {
		opts.MaxGroup = 512
	}
	if opts.GroupApplyEvents <= 0 {
		opts.GroupApplyEvents = 512
	}
	if opts.Resolvers == nil {
		opts.Resolvers = defaultResolvers{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	def := event.DefaultLimits()
	if opts.Limits.MaxKeyBytes <= 0 {
		opts.Limits.MaxKeyBytes = def.MaxKeyBytes
	}
	if opts.Limits.MaxValueBytes <= 0 {
		opts.Limits.MaxValueBytes = def.MaxValueBytes
	}
	if opts.MaxSiblings <= 0 {
		opts.MaxSiblings = DefaultMaxSiblings
	}
	if opts.Limits.MaxTxnOps <= 0 {
		opts.Limits.MaxTxnOps = def.MaxTxnOps
	}
	if opts.Limits.MaxTxnBytes <= 0 {
		opts.Limits.MaxTxnBytes = def.MaxTxnBytes
	}
	cache := pebble.NewCache(64 << 20)
	defer cache.Unref()
	po := &pebble.Options{FS: opts.FS, Logger: quietLogger{opts.Logger}, Cache: cache}
	// Bloom filters let a write to a new key learn it is new without
	// reading data blocks: most writes' first step is reading the key.
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	po.EnsureDefaults()
	db, err := pebble.Open(dir, po)
	if err != nil {
		if lockHeld(err) {
			return nil, fmt.Errorf("%w: %s (%v)", ErrLocked, dir, err)
		}
		return nil, fmt.Errorf("changelog: open pebble at %s: %w", dir, err)
	}
	s := &Store{
		opts:     opts,
		db:       db,
		log:      opts.Logger,
		wo:       pebble.Sync,
		reqs:     make(chan *request, opts.MaxGroup),
		applies:  make(chan *request, opts.MaxGroup),
		notify:   make(chan struct{}, 1),
		stop:     make(chan struct{}),
		idle:     make(chan struct{}),
		expiries: make(chan struct{}, 1),
		syncs:    make(chan synced, 2),
	}
	if opts.NoSync {
		s.wo = pebble.NoSync
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.loadFeed(); err != nil {
		db.Close()
		return nil, fmt.Errorf("changelog: open %s: the change feed: %w", dir, err)
	}
	if err := s.indexConflicts(); err != nil {
		db.Close()
		return nil, fmt.Errorf("changelog: open %s: index the conflict log: %w", dir, err)
	}
	s.wg.Add(2)
	go s.commitLoop()
	go s.syncLoop()
	if s.opts.ConflictRetention > 0 || s.opts.ConflictMaxEntries > 0 {
		if s.opts.ConflictPruneEvery <= 0 {
			s.opts.ConflictPruneEvery = time.Minute
		}
		s.wg.Add(1)
		go s.pruneLoop()
	}
	if !s.opts.FeedOff && (s.opts.FeedRetention > 0 || s.opts.FeedMaxBytes > 0) {
		if s.opts.FeedPruneEvery <= 0 {
			s.opts.FeedPruneEvery = DefaultFeedPruneEvery
		}
		s.wg.Add(1)
		go s.feedPruneLoop()
	}
	return s, nil
}

func (s *Store) load() error {
	m := &s.mu
	m.seq = make([]uint64, s.opts.Partitions)
	m.purged = make([]vclock.VV, s.opts.Partitions)
	m.applied = map[string][]uint64{}
	m.peers = map[string]*peerReports{}
	m.progress = make(chan struct{})
	m.durableMoved = make(chan struct{})
	m.reported = make(chan struct{})
	for p := range m.seq {
		v, err := s.getU64(seqKey(uint32(p)))
		if err != nil {
			return err
		}
		m.seq[p] = v
		m.purged[p] = vclock.VV{}
		b, ok, err := s.get(purgedKey(uint32(p)))
		if err != nil {
			return err
		}
		if ok {
			var vv vclock.VV
			if err := msgpackUnmarshal(b, &vv); err != nil {
				return fmt.Errorf("changelog: purge frontier of partition %d: %w", p, err)
			}
			m.purged[p] = vv
		}
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxApplied}, UpperBound: []byte{pfxApplied + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[1:]
		if len(k) < 5 || k[len(k)-5] != 0 {
			it.Close()
			return fmt.Errorf("changelog: corrupt applied key %q", it.Key())
		}
		origin := string(k[:len(k)-5])
		p := binary.BigEndian.Uint32(k[len(k)-4:])
		if int(p) >= s.opts.Partitions {
			it.Close()
			return fmt.Errorf("changelog: applied entry for partition %d, but the store has %d partitions; the partition count must not change", p, s.opts.Partitions)
		}
		row := m.applied[origin]
		if row == nil {
			row = make([]uint64, s.opts.Partitions)
			m.applied[origin] = row
		}
		row[p] = binary.BigEndian.Uint64(it.Value())
	}
	if err := it.Close(); err != nil {
		return err
	}
	m.durable = Applied{s.opts.DC: slices.Clone(m.seq)}
	for o, row := range m.applied {
		m.durable[o] = slices.Clone(row)
	}
	var err2 error
	if m.ckpt, err2 = s.getU64(metaKey(metaCkpt)); err2 != nil {
		return err2
	}
	if s.hlcHigh, err2 = s.getU64(metaKey(metaHLC)); err2 != nil {
		return err2
	}
	m.hlcHigh = s.hlcHigh
	hi, err := s.getU64(metaKey(metaOutboxHi))
	if err != nil {
		return err
	}
	m.outboxNext = hi + 1
	m.outboxSync = m.outboxNext
	m.outboxLow = m.outboxNext
	it, err = s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxOutbox}, UpperBound: []byte{pfxOutbox + 1}})
	if err != nil {
		return err
	}
	if it.First() {
		m.outboxLow = binary.BigEndian.Uint64(it.Key()[1:])
	}
	return it.Close()
}

// Close stops the committer, failing requests still queued, and closes
// Pebble. It is safe to call more than once.
func (s *Store) Close() error {
	var err error
	s.once.Do(func() {
		s.mu.Lock()
		s.mu.closed = true
		s.mu.Unlock()
		s.wakeFeed()
		close(s.stop)
		s.wg.Wait()
		err = s.db.Close()
	})
	return err
}

// DC returns this store's DC id.
func (s *Store) DC() string { return s.opts.DC }

// Partitions returns the partition count.
func (s *Store) Partitions() int { return s.opts.Partitions }

// HLCHighWater returns the highest HLC reading the store had persisted when
// it opened; the caller restores its clock above it after a restart.
func (s *Store) HLCHighWater() uint64 { return s.hlcHigh }

// Notify returns a channel that receives a value after each commit that adds
// outbox entries. It has a buffer of one, so a slow reader sees one wake-up
// for many commits.
func (s *Store) Notify() <-chan struct{} { return s.notify }

// DB exposes the underlying Pebble database for metrics. Callers must not
// write to it.
func (s *Store) DB() *pebble.DB { return s.db }

// request is one unit of work for the committer.
type request struct {
	ctx  context.Context
	fn   func(t *txn) error
	done chan error
	// events is the number of remote events of an apply (doApply), what
	// it counts against the batch's share of applies.
	events int
}

// do runs fn in the committer's next batch and waits for the batch to
// commit. fn must check its input before it changes t: an error it returns
// discards the whole group, so fn must not fail for input reasons after it
// has written.
func (s *Store) do(ctx context.Context, fn func(t *txn) error) error {
	return s.enqueue(ctx, s.reqs, &request{ctx: ctx, fn: fn, done: make(chan error, 1)})
}

// doApply is do for an apply of n remote events: it waits in the applies
// queue, which each batch serves after the other requests, a share at a
// time (commitLoop).
func (s *Store) doApply(ctx context.Context, n int, fn func(t *txn) error) error {
	return s.enqueue(ctx, s.applies, &request{ctx: ctx, fn: fn, done: make(chan error, 1), events: max(n, 1)})
}

func (s *Store) enqueue(ctx context.Context, q chan<- *request, r *request) error {
	if err := s.failure(); err != nil {
		return err
	}
	s.mu.RLock()
	closed := s.mu.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if s.opts.enqueueHook != nil {
		s.opts.enqueueHook(s)
	}
	select {
	case q <- r:
	case <-s.stop:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-s.stop:
		// The committer answers every request it took before it exits; a
		// request sent as it closed, after it drained the queues, is
		// never taken: idle tells that apart once both loops are done.
		select {
		case err := <-r.done:
			return err
		case <-s.idle:
			select {
			case err := <-r.done:
				return err
			default:
				return ErrClosed
			}
		}
	}
}

// commitLoop commits one group at a time, the group built as it runs
// (picker): local requests first, then applies of a bounded share, and the
// group ends early when a local request arrives while it applies.
// Requests of one queue keep their order; requests of different queues
// come from different callers, which never had an order between them
// (docs/DESIGN.md, "The committer's queues").
func (s *Store) commitLoop() {
	defer s.wg.Done()
	defer close(s.syncs)
	p := &picker{reqs: s.reqs, applies: s.applies, maxLocal: s.opts.MaxGroup, share: s.opts.GroupApplyEvents}
	group := make([]*request, 0, s.opts.MaxGroup)
	for {
		select {
		case <-s.stop:
			s.failQueued(p.held)
			return
		default:
		}
		if p.held == nil {
			select {
			case r := <-s.reqs:
				p.held = r
			case r := <-s.applies:
				p.held = r
			case <-s.stop:
				s.failQueued(nil)
				return
			}
		}
		p.reset()
		group = s.commitGroup(group[:0], p)
	}
}

// picker picks the requests of one group, one at a time while the group
// runs. It takes the local requests waiting (reqs: local writes,
// transactions, bookkeeping), up to maxLocal; then applies in their order
// while their events stay within share, at least one when one waits. Once
// the group has applied anything, a local request that arrives is taken
// next, and the group ends after the local requests waiting then. So a
// local write waits for the Apply running when it arrives, and its own
// group's sync, however long the apply backlog; and every group with
// applies waiting takes at least one, however steady the local load.
type picker struct {
	reqs, applies <-chan *request
	maxLocal      int
	share         int
	// held is a request taken from its queue but not yet run: the first
	// request of a group, or an apply that did not fit the last group.
	held *request

	locals, events int
	// cut ends the group once the local requests waiting are taken.
	cut bool
}

func (p *picker) reset() { p.locals, p.events, p.cut = 0, 0, false }

// next returns the group's next request, or nil when the group is complete.
func (p *picker) next() *request {
	if r := p.held; r != nil && r.events == 0 {
		p.held = nil
		p.locals++
		return r
	}
	if p.locals < p.maxLocal {
		select {
		case r := <-p.reqs:
			p.locals++
			p.cut = p.events > 0
			return r
		default:
		}
	}
	if p.events > 0 && (p.cut || len(p.reqs) > 0) {
		return nil
	}
	if p.held == nil {
		select {
		case p.held = <-p.applies:
		default:
			return nil
		}
	}
	r := p.held
	if p.events > 0 && p.events+r.events > p.share {
		return nil
	}
	p.held = nil
	p.events += r.events
	return r
}

// failQueued answers held and every request still queued with ErrClosed.
func (s *Store) failQueued(held *request) {
	if held != nil {
		held.done <- ErrClosed
	}
	for {
		select {
		case r := <-s.reqs:
			r.done <- ErrClosed
		case r := <-s.applies:
			r.done <- ErrClosed
		default:
			return
		}
	}
}

// commitGroup runs each request p picks against one batch and applies it,
// and returns the group. A request whose fn fails for its own input gets
// that error; the others still commit. A fn that fails after writing
// poisons the batch, and then every request in the group gets the error.
// The answers wait for the WAL sync, which happens on the syncer goroutine
// while the next group is built.
func (s *Store) commitGroup(group []*request, p *picker) []*request {
	t := s.newTxn()
	var errs []error
	for r := p.next(); r != nil; r = p.next() {
		group = append(group, r)
		errs = append(errs, nil)
		if err := r.ctx.Err(); err != nil {
			errs[len(errs)-1] = err
			continue
		}
		mark := t.mark()
		if err := r.fn(t); err != nil {
			if t.dirtySince(mark) {
				t.close()
				s.answerAll(group, fmt.Errorf("changelog: batch aborted: %w", err))
				return group
			}
			errs[len(errs)-1] = err
		}
	}
	s.groups.Add(1)
	s.requests.Add(uint64(len(group)))
	if err := t.commit(); err != nil {
		t.close()
		s.answerAll(group, s.fail(fmt.Errorf("commit: %w", err)))
		return group
	}
	g := synced{t: t, group: slices.Clone(group), errs: errs}
	if s.opts.serial {
		s.finish(g)
		return group
	}
	s.syncs <- g
	return group
}

// synced is a group whose batch is applied and waits for its WAL sync.
type synced struct {
	t     *txn
	group []*request
	errs  []error
}

// syncLoop waits for each applied batch to be durable, in order, and only
// then answers its requests.
func (s *Store) syncLoop() {
	defer s.wg.Done()
	defer close(s.idle)
	for g := range s.syncs {
		s.finish(g)
	}
}

func (s *Store) finish(g synced) {
	defer g.t.close()
	if err := g.t.wait(); err != nil {
		s.answerAll(g.group, s.fail(fmt.Errorf("sync: %w", err)))
		return
	}
	for i, r := range g.group {
		r.done <- g.errs[i]
	}
}

func (s *Store) answerAll(group []*request, err error) {
	for _, r := range group {
		r.done <- err
	}
}

// fail stops the store for good after err, a failed WAL write or sync,
// and returns the error requests get from then on. Pebble applied the
// batch to its memtable before the sync, so the store can no longer tell
// what is durable: it must neither acknowledge, nor publish, nor show
// anything more. The first failure calls Options.OnFatal.
func (s *Store) fail(err error) error {
	werr := fmt.Errorf("%w (%v)", ErrFailed, err)
	if s.failed.CompareAndSwap(nil, &werr) {
		s.log.Error("a write to the store's log failed; the store stops and serves nothing more", "err", err)
		s.wakeFeed()
		if s.opts.OnFatal != nil {
			s.opts.OnFatal(werr)
		}
	}
	return *s.failed.Load()
}

// failure returns the error that stopped the store, or nil.
func (s *Store) failure() error {
	if p := s.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// usable returns ErrClosed or the failure when the store serves nothing.
func (s *Store) usable() error {
	if s.isClosed() {
		return ErrClosed
	}
	return s.failure()
}

func (s *Store) get(k []byte) ([]byte, bool, error) {
	if err := s.usable(); err != nil {
		return nil, false, err
	}
	v, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("changelog: get %q: %w", k, err)
	}
	out := append([]byte(nil), v...)
	closer.Close()
	return out, true, nil
}

func (s *Store) getU64(k []byte) (uint64, error) {
	v, ok, err := s.get(k)
	if err != nil || !ok {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("changelog: corrupt counter at %q", k)
	}
	return binary.BigEndian.Uint64(v), nil
}

type defaultResolvers struct{}

func (defaultResolvers) For(string) resolve.Resolver { return resolve.Siblings() }

// quietLogger routes Pebble's log lines to slog at debug level.
type quietLogger struct{ l *slog.Logger }

func (q quietLogger) Infof(format string, args ...any) {
	q.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (q quietLogger) Errorf(format string, args ...any) {
	q.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

func (q quietLogger) Fatalf(format string, args ...any) {
	q.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf(format, args...))
}

// Stats counts the committer's work.
type Stats struct {
	// Groups is the number of batches committed, one fsync each.
	Groups uint64
	// Requests is the number of requests (writes, applies, bookkeeping)
	// those batches carried.
	Requests uint64
	// Writes counts durable local writes.
	Writes uint64
	// Conflicts counts conflict-log entries this DC wrote (a discarded
	// version logged, or a record opened), by resolver.
	Conflicts map[string]uint64
	// ConflictsHeld counts the logged and resolved entries the conflict
	// log holds; ConflictsPruned those retention deleted.
	ConflictsHeld   int64
	ConflictsPruned uint64
	// SiblingsRefused counts local writes refused because their key holds
	// Options.MaxSiblings siblings (ErrTooManySiblings).
	SiblingsRefused uint64
}

// Stats returns the committer's counters.
func (s *Store) Stats() Stats {
	s.conflictsMu.Lock()
	c := make(map[string]uint64, len(s.conflicts))
	for k, v := range s.conflicts {
		c[k] = v
	}
	s.conflictsMu.Unlock()
	return Stats{Groups: s.groups.Load(), Requests: s.requests.Load(), Writes: s.writes.Load(), Conflicts: c,
		ConflictsHeld: s.conflictsIndexed.Load(), ConflictsPruned: s.conflictsPruned.Load(), SiblingsRefused: s.siblingsRefused.Load()}
}

func (s *Store) isClosed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.closed
}
