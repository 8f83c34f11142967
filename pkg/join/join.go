// Package join bootstraps a new DC, or one whose data dir was lost, from a
// running peer's consistent snapshot (replicator join), over NATS
// request/reply on repl.snap.<dc>.
//
// The peer's sidecar runs a Server. A joiner opens a session: the server
// takes one Pebble snapshot (changelog Store.NewSnapshot), keeps it open
// under a random session id and answers with its header (applied vector,
// purge frontiers, lost ranges, key count, digest). The joiner then asks
// for chunks, each request carrying the session and a cursor (the last key
// it got); every chunk is read from the same snapshot, so the copy is of
// one point in time however long it takes, and a lost reply is simply
// asked for again with the same cursor. A session unused for IdleTimeout
// is closed and its snapshot released (a joiner that died does not pin
// old data for ever); the joiner closes it when done. Chunks stay under
// the connection's max payload.
//
//	srv, _ := join.NewServer(join.ServerOptions{Store: st, NC: nc})
//	srv.Start(ctx)                                   // in the peer's sidecar
//	res, err := join.Run(ctx, cfg, nc, join.Options{From: "dc1"}) // at the joiner, sidecar stopped
//
// Run imports the snapshot into the joiner's empty store (changelog
// Store.Import) and deletes the joiner's durable consumers left on the
// other DCs' streams from an earlier life, so that `replicator run`
// recreates them with DeliverAll and catches up from the streams: events
// the snapshot covered are duplicates, the rest apply in order, and a gap
// (a stream trimmed past what the snapshot covered) goes to gap repair.
//
// Internal to the sidecar: not a stable Go API. Its snapshot protocol
// (repl.snap.<dc>, package rpc) is versioned wire, described in
// docs/DESIGN.md.
package join

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/rpc"
)

// HeaderError carries a server's error instead of a reply body.
const HeaderError = "Repl-Snap-Error"

// Operations of a request.
const (
	opOpen  = "open"
	opRead  = "read"
	opClose = "close"
)

// snapProtocol is the snapshots' request/reply.
var snapProtocol = rpc.Protocol{Name: "snapshot", ErrorHeader: HeaderError}

// request is what a joiner sends, msgpack-encoded.
type request struct {
	// V is the protocol version (package rpc); zero is left out, which a
	// server reads as version 1.
	V       int    `msgpack:"v,omitempty"`
	Op      string `msgpack:"op"`
	Session string `msgpack:"session,omitempty"`
	After   string `msgpack:"after,omitempty"`
	// Partitions, on open, asks for a snapshot of these partitions only
	// (a shard joining); nil asks for every partition.
	Partitions []uint32 `msgpack:"partitions,omitempty"`
}

// openReply answers opOpen.
type openReply struct {
	Session string                   `msgpack:"session"`
	Header  changelog.SnapshotHeader `msgpack:"header"`
	// Partitions are the partitions the snapshot covers, those asked for
	// that the serving store owns; nil when it covers every partition.
	Partitions []uint32 `msgpack:"partitions,omitempty"`
}

// ErrClosed is returned by a closed Server.
var ErrClosed = errors.New("join: closed")

// ServerOptions configure a Server.
type ServerOptions struct {
	// Store is the DC's change log; NC its NATS connection.
	Store *changelog.Store
	NC    *nats.Conn
	// IdleTimeout closes a session unused for this long (default 2m).
	IdleTimeout time.Duration
	// MaxSessions bounds the snapshots open at once (default 4).
	MaxSessions int
	// ChunkBytes bounds a chunk's keys and states (default 512 KiB); a
	// chunk also stays under the connection's max payload.
	ChunkBytes int
	// Logger receives the server's log lines; nil discards them.
	Logger *slog.Logger
	// Now is the clock for idle timeouts; default time.Now.
	Now func() time.Time
	// Owned are the partitions the store owns, for a shard of a sharded
	// DC (invariant 16 in docs/DESIGN.md); nil for every partition. A
	// shard serves on names.SnapshotShardSubject of each, a DC of one
	// sidecar on names.SnapshotSubject.
	Owned []uint32
}

// Server serves the DC's snapshots. Start subscribes; Close releases every
// open snapshot, and must come before the store is closed.
type Server struct {
	o    ServerOptions
	log  *slog.Logger
	subs []*nats.Subscription
	stop context.CancelFunc
	wg   sync.WaitGroup
	once sync.Once
	// sessions belong to the serving goroutine.
	sessions map[string]*session
}

type session struct {
	snap *changelog.Snapshot
	used time.Time
}

// NewServer checks the options and builds a Server.
func NewServer(o ServerOptions) (*Server, error) {
	if o.Store == nil || o.NC == nil {
		return nil, errors.New("join: server options: Store and NC are required")
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	if o.MaxSessions <= 0 {
		o.MaxSessions = 4
	}
	if o.ChunkBytes <= 0 {
		o.ChunkBytes = 512 << 10
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Server{o: o, log: o.Logger.With("component", "join"), sessions: map[string]*session{}}, nil
}

// Start subscribes to names.SnapshotSubject(dc) (for a shard, to
// names.SnapshotShardSubject of each partition it owns) and serves until
// Close.
func (s *Server) Start(ctx context.Context) error {
	reqs := make(chan *nats.Msg, 16)
	subjects := []string{names.SnapshotSubject(s.o.Store.DC())}
	if s.o.Owned != nil {
		subjects = subjects[:0]
		for _, p := range s.o.Owned {
			subjects = append(subjects, names.SnapshotShardSubject(s.o.Store.DC(), p))
		}
	}
	for _, subj := range subjects {
		sub, err := s.o.NC.ChanSubscribe(subj, reqs)
		if err != nil {
			s.unsubscribe()
			return fmt.Errorf("join: subscribe %s: %w", subj, err)
		}
		s.subs = append(s.subs, sub)
	}
	ctx, s.stop = context.WithCancel(context.WithoutCancel(ctx))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.serve(ctx, reqs)
	}()
	return nil
}

// Close stops serving and releases every open snapshot. It is safe to
// call more than once.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.unsubscribe()
		if s.stop != nil {
			s.stop()
		}
		s.wg.Wait()
		s.closeAll()
	})
	return nil
}

func (s *Server) unsubscribe() {
	for _, sub := range s.subs {
		sub.Unsubscribe()
	}
	s.subs = nil
}

func (s *Server) closeAll() {
	for id, ss := range s.sessions {
		ss.snap.Close()
		delete(s.sessions, id)
	}
}

// serve owns the sessions: it answers requests one at a time and closes
// idle sessions on a ticker (a bounded fallback; a joiner closes its own).
func (s *Server) serve(ctx context.Context, reqs <-chan *nats.Msg) {
	tick := time.NewTicker(max(s.o.IdleTimeout/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.reap()
		case m := <-reqs:
			s.answer(m)
		}
	}
}

func (s *Server) reap() {
	now := s.o.Now()
	for id, ss := range s.sessions {
		if now.Sub(ss.used) > s.o.IdleTimeout {
			ss.snap.Close()
			delete(s.sessions, id)
			s.log.Info("closed an idle snapshot session", "session", id)
		}
	}
}

func (s *Server) answer(m *nats.Msg) {
	body, err := s.handle(m.Data)
	if err != nil {
		s.log.Warn("snapshot request failed", "err", err)
	}
	if err := snapProtocol.Respond(m, body, err); err != nil {
		s.log.Warn("snapshot reply failed", "err", err)
	}
}

func (s *Server) handle(data []byte) ([]byte, error) {
	var req request
	if err := snapProtocol.Decode(data, &req, &req.V); err != nil {
		return nil, fmt.Errorf("bad request: %v", err)
	}
	switch req.Op {
	case opOpen:
		s.reap()
		if len(s.sessions) >= s.o.MaxSessions {
			return nil, fmt.Errorf("%d snapshot sessions are open already; retry once one finishes or times out (%s idle)", len(s.sessions), s.o.IdleTimeout)
		}
		covered, err := s.cover(req.Partitions)
		if err != nil {
			return nil, err
		}
		snap, err := s.o.Store.NewSnapshotOf(covered)
		if err != nil {
			return nil, err
		}
		id := newID()
		body, err := msgpack.Marshal(openReply{Session: id, Header: snap.Header(), Partitions: covered})
		if err != nil {
			snap.Close()
			return nil, err
		}
		if len(body) > s.payload() {
			snap.Close()
			return nil, fmt.Errorf("the snapshot header is %d bytes, over the %d-byte max payload", len(body), s.payload())
		}
		s.sessions[id] = &session{snap: snap, used: s.o.Now()}
		h := snap.Header()
		s.log.Info("opened a snapshot session", "session", id, "keys", h.Keys, "bytes", h.Bytes)
		return body, nil
	case opRead:
		ss := s.sessions[req.Session]
		if ss == nil {
			return nil, fmt.Errorf("no snapshot session %q: it finished or was idle for over %s; start the join again", req.Session, s.o.IdleTimeout)
		}
		ss.used = s.o.Now()
		c, err := ss.snap.Read(req.After, min(s.o.ChunkBytes, s.payload()-4096))
		if err != nil {
			return nil, err
		}
		body, err := msgpack.Marshal(c)
		if err != nil {
			return nil, err
		}
		if len(body) > s.payload() {
			return nil, fmt.Errorf("key %q's state is %d bytes, over the %d-byte max payload; raise the NATS max_payload", c.Entries[0].Key, len(body), s.payload())
		}
		return body, nil
	case opClose:
		if ss := s.sessions[req.Session]; ss != nil {
			ss.snap.Close()
			delete(s.sessions, req.Session)
		}
		return []byte{0xc0}, nil // msgpack nil
	}
	return nil, fmt.Errorf("bad request: unknown op %q (want open, read or close)", req.Op)
}

// cover returns the partitions a snapshot asked for with want covers: those
// of want the store owns; nil (every partition) when both are nil.
func (s *Server) cover(want []uint32) ([]uint32, error) {
	if want == nil && s.o.Owned == nil {
		return nil, nil
	}
	owned := s.o.Owned
	if owned == nil {
		for p := range s.o.Store.Partitions() {
			owned = append(owned, uint32(p))
		}
	}
	if want == nil {
		return owned, nil
	}
	var out []uint32
	for _, p := range want {
		if slices.Contains(owned, p) && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("this store owns none of partitions %v (it owns %v): ask the shard owning them", want, owned)
	}
	slices.Sort(out)
	return out, nil
}

func (s *Server) payload() int {
	if p := s.o.NC.MaxPayload(); p > 0 {
		return int(p)
	}
	return 1 << 20
}

func newID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
