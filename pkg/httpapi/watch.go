package httpapi

import (
	"net/http"
	"strings"
	"sync"

	"github.com/replicatorhq/replicator/changelog"
)

// WatchSource feeds GET /v1/watch with applied key changes.
type WatchSource interface {
	// Subscribe returns the changes to keys starting with prefix, from now
	// on, and a cancel function that releases the subscription (safe to
	// call more than once). The source closes the channel when the
	// subscriber falls behind or the source closes.
	Subscribe(prefix string) (<-chan changelog.Change, func())
}

// DefaultHubBuffer is how many changes a Hub subscriber may lag by before
// it is dropped.
const DefaultHubBuffer = 1024

var _ WatchSource = (*Hub)(nil)

// Hub fans committed changes out to watchers. The node passes Publish as
// changelog.Options.OnCommit; Publish never blocks the committer: each
// subscriber has a buffered channel, and one that falls behind is dropped
// (its channel closed) rather than waited for.
type Hub struct {
	buf int

	mu struct {
		sync.Mutex
		subs   map[*hubSub]struct{}
		closed bool
	}
}

type hubSub struct {
	prefix string
	ch     chan changelog.Change
}

// NewHub returns a Hub whose subscribers may lag by buf changes; buf <= 0
// means DefaultHubBuffer.
func NewHub(buf int) *Hub {
	if buf <= 0 {
		buf = DefaultHubBuffer
	}
	h := &Hub{buf: buf}
	h.mu.subs = map[*hubSub]struct{}{}
	return h
}

// Subscribe implements WatchSource. After Close it returns a closed
// channel.
func (h *Hub) Subscribe(prefix string) (<-chan changelog.Change, func()) {
	sub := &hubSub{prefix: prefix, ch: make(chan changelog.Change, h.buf)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.closed {
		close(sub.ch)
		return sub.ch, func() {}
	}
	h.mu.subs[sub] = struct{}{}
	return sub.ch, func() { h.drop(sub) }
}

// drop removes sub and closes its channel, once.
func (h *Hub) drop(sub *hubSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(sub)
}

func (h *Hub) dropLocked(sub *hubSub) {
	if _, ok := h.mu.subs[sub]; ok {
		delete(h.mu.subs, sub)
		close(sub.ch)
	}
}

// Publish hands changes to every subscriber whose prefix they match, in
// order. It never blocks: a subscriber with no room left is dropped.
func (h *Hub) Publish(changes []changelog.Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.mu.subs {
		for _, c := range changes {
			if !strings.HasPrefix(c.Key, sub.prefix) {
				continue
			}
			select {
			case sub.ch <- c:
				continue
			default:
			}
			h.dropLocked(sub)
			break
		}
	}
}

// Closed reports whether Close was called, so a watcher whose channel
// closed can tell shutdown from falling behind.
func (h *Hub) Closed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.closed
}

// Close drops every subscriber and refuses new ones. It is safe to call
// more than once.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.closed = true
	for sub := range h.mu.subs {
		h.dropLocked(sub)
	}
}

// watchLine is one line of GET /v1/watch: the key as a read would show it
// after the change, with what made the change.
type watchLine struct {
	keyJSON
	Op      string `json:"op"`
	Origin  string `json:"origin"`
	Deleted bool   `json:"deleted"`
	// Cursor is the change's position in the change feed: a watcher that
	// falls behind continues with GET /v1/changes?since=<cursor>.
	Cursor uint64 `json:"cursor,omitempty"`
}

func (s *server) watch(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, []string{"prefix"}) {
		return
	}
	prefix, ok := s.prefixParam(w, r)
	if !ok {
		return
	}
	if s.opts.Watch == nil {
		writeError(w, http.StatusNotFound, "watch is not enabled on this sidecar")
		return
	}
	ch, cancel := s.opts.Watch.Subscribe(prefix)
	defer cancel()
	s.metrics.watchers.Inc()
	defer s.metrics.watchers.Dec()

	out := newNDJSON(w)
	// The subscription is live before the client sees the status line, so
	// a client that writes after it gets the headers sees its own change.
	if out.start() != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case c, ok := <-ch:
			if !ok {
				msg := "watcher fell behind; reconnect"
				if cl, isCloser := s.opts.Watch.(interface{ Closed() bool }); isCloser && cl.Closed() {
					msg = "the sidecar is shutting down; reconnect"
				}
				out.send(errorBody{Error: msg})
				return
			}
			kj, deleted := s.view(c.Key, c.State)
			line := watchLine{keyJSON: kj, Op: c.Op.String(), Origin: c.Origin, Deleted: deleted, Cursor: c.Cursor}
			if out.send(line) != nil {
				return
			}
		}
	}
}
