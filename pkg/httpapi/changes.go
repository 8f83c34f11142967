package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/resolve"
)

// Feed is what GET /v1/changes and the paged key listing read: the
// store's change feed and its point-in-time views (changelog/feed.go).
type Feed interface {
	// ReadFeed returns durable changes after a cursor.
	ReadFeed(q changelog.FeedQuery) (changelog.FeedPage, error)
	// FeedSignal is closed when more changes become readable.
	FeedSignal() <-chan struct{}
	// FeedBounds returns the oldest cursor held, the last durable one
	// and the bytes held.
	FeedBounds() (oldest, last uint64, bytes int64)
	// WaitFeed waits until the changes up to a cursor are durable.
	WaitFeed(ctx context.Context, cursor uint64) error
	// NewReadView takes key states and the feed's cursor from one
	// snapshot.
	NewReadView() (*changelog.ReadView, error)
	// FeedOff reports a store that keeps no change feed (changes.off).
	FeedOff() bool
}

var _ Feed = (*changelog.Store)(nil)

// The line types of GET /v1/changes (ChangeLine.Type and the others).
const (
	LineChange      = "change"
	LineSnapshot    = "snapshot"
	LineSnapshotEnd = "snapshot_end"
	LineHeartbeat   = "heartbeat"
	LineEnd         = "end"
	LineError       = "error"
)

// Bounds of GET /v1/changes' heartbeat parameter.
const (
	DefaultHeartbeat = 10 * time.Second
	MinHeartbeat     = time.Second
	MaxHeartbeat     = 5 * time.Minute
)

// feedPage bounds the changes one storage read of a stream takes.
const feedPage = 1000

// ChangeLine is one change of the feed as GET /v1/changes streams it and
// the NATS changes endpoint answers with it: its cursor, what made it,
// and the key as GET /v1/kv/{key} shows it after the change.
type ChangeLine struct {
	Type   string `json:"type"`
	Cursor uint64 `json:"cursor"`
	// Op is put, delete, resolve, or merge for an anti-entropy merge
	// (which has no dot; Origin is the peer merged from).
	Op     string `json:"op"`
	Origin string `json:"origin"`
	Dot    string `json:"dot"`
	HLC    uint64 `json:"hlc"`
	// Time is when the change was committed at this DC (RFC 3339, ms).
	Time string `json:"time"`
	// Deleted reports that no live value is shown after the change: a
	// mirror removes the key.
	Deleted bool `json:"deleted"`
	keyJSON
}

// NewChangeLine renders e with r, the key's resolver.
func NewChangeLine(r resolve.Resolver, e changelog.FeedEntry) ChangeLine {
	kj, deleted := view(r, e.Key, e.State)
	l := ChangeLine{Type: LineChange, Cursor: e.Cursor, Op: e.Op.String(), Origin: e.Origin, Dot: e.Dot.String(), HLC: e.HLC,
		Time: e.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"), Deleted: deleted, keyJSON: kj}
	if e.Dot.N == 0 {
		l.Op, l.Dot = "merge", ""
	}
	return l
}

// snapshotLine is a key's state in the snapshot that snapshot=true sends
// first: the GET /v1/kv/{key} shape.
type snapshotLine struct {
	Type string `json:"type"`
	keyJSON
}

// cursorLine ends a snapshot, a page or a quiet interval with the cursor
// to continue after.
type cursorLine struct {
	Type   string `json:"type"`
	Cursor uint64 `json:"cursor"`
	// More, on an end line, reports that the feed held changes after
	// Cursor when the page ended: read again from Cursor at once.
	More *bool `json:"more,omitempty"`
}

// errorLine ends a stream that failed after its status was sent.
type errorLine struct {
	Type   string `json:"type"`
	Error  string `json:"error"`
	Status int    `json:"status"`
}

// goneBody is the 410 of GET /v1/changes.
type goneBody struct {
	Error  string `json:"error"`
	Oldest uint64 `json:"oldest"`
	Last   uint64 `json:"last"`
}

// changesQuery is GET /v1/changes' parameters.
type changesQuery struct {
	since      uint64
	now        bool // since=now
	prefix     string
	limit      int // 0: no bound
	continuous bool
	heartbeat  time.Duration
	snapshot   bool
}

// changesParams parses the parameters; on a bad one it answers 400 naming
// it and returns false.
func (s *server) changesParams(w http.ResponseWriter, r *http.Request) (changesQuery, bool) {
	if !s.query(w, r, []string{"since", "prefix", "limit", "feed", "heartbeat", "snapshot"}) {
		return changesQuery{}, false
	}
	q := r.URL.Query()
	bad := func(format string, args ...any) (changesQuery, bool) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf(format, args...))
		return changesQuery{}, false
	}
	var c changesQuery
	var ok bool
	if c.prefix, ok = s.prefixParam(w, r); !ok {
		return changesQuery{}, false
	}
	switch v := q.Get("since"); v {
	case "":
	case "now":
		c.now = true
	default:
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return bad("since %q is not a cursor; give the cursor of a line you read, 0 for the oldest change held, or now", v)
		}
		c.since = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return bad("limit %q is not a positive integer; leave it out to read to the end", v)
		}
		c.limit = n
	}
	switch v := q.Get("feed"); v {
	case "", "normal":
	case "continuous":
		c.continuous = true
	default:
		return bad("feed %q is not a feed type; use normal (the default: up to the last change, then an end line) or continuous (follow, with heartbeats)", v)
	}
	c.heartbeat = DefaultHeartbeat
	if v := q.Get("heartbeat"); v != "" {
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			return bad("heartbeat %q is not a duration; use Go syntax such as 10s", v)
		case d < MinHeartbeat || d > MaxHeartbeat:
			return bad("heartbeat %s is out of range; want %s to %s", d, MinHeartbeat, MaxHeartbeat)
		case !c.continuous:
			return bad("heartbeat is only for feed=continuous; a normal feed ends by itself")
		}
		c.heartbeat = d
	}
	if v := q.Get("snapshot"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return bad("snapshot %q is not true or false", v)
		}
		c.snapshot = b
	}
	if c.snapshot && q.Has("since") {
		return bad("since and snapshot=true exclude each other: a snapshot starts the feed at its own cursor; leave since out")
	}
	return c, true
}

// feedFailed answers for an error of the feed: with its own status when
// none was sent yet (feedError), else with the line that ends the stream.
func (s *server) feedFailed(w http.ResponseWriter, r *http.Request, out *ndjson, err error) {
	if !out.started {
		s.feedError(w, r, err)
		return
	}
	s.endStream(out, r, err)
}

// feedError answers for an error of the feed before the status is sent:
// 410 for a cursor the feed no longer holds, the usual mapping otherwise.
func (s *server) feedError(w http.ResponseWriter, r *http.Request, err error) {
	var gone *changelog.FeedGoneError
	if errors.As(err, &gone) {
		writeJSON(w, http.StatusGone, goneBody{Error: gone.Error(), Oldest: gone.Oldest, Last: gone.Last})
		return
	}
	s.backendError(w, r, "read the change feed", err)
}

// endStream sends the error line that ends a stream whose status was
// sent already.
func (s *server) endStream(out *ndjson, r *http.Request, err error) {
	var gone *changelog.FeedGoneError
	switch {
	case errors.As(err, &gone):
		out.send(errorLine{Type: LineError, Error: gone.Error(), Status: http.StatusGone})
	case errors.Is(err, changelog.ErrClosed), errors.Is(err, errStopping):
		out.send(errorLine{Type: LineError, Error: "the sidecar is shutting down; reconnect and continue from the last cursor you stored", Status: http.StatusServiceUnavailable})
	case errors.Is(err, changelog.ErrFailed):
		out.send(errorLine{Type: LineError, Error: err.Error(), Status: http.StatusServiceUnavailable})
	case r.Context().Err() != nil:
		// The client is gone; nobody reads this.
	default:
		s.log.Error("change feed stream failed", "err", err)
		out.send(errorLine{Type: LineError, Error: "the change feed failed inside the sidecar; the sidecar logged the details; reconnect and continue from the last cursor you stored", Status: http.StatusInternalServerError})
	}
}

// errStopping ends a continuous stream when the server shuts down.
var errStopping = errors.New("httpapi: shutting down")

// changes serves GET /v1/changes.
func (s *server) changes(w http.ResponseWriter, r *http.Request) {
	c, ok := s.changesParams(w, r)
	if !ok {
		return
	}
	feed := s.b.Feed()
	if feed.FeedOff() {
		writeError(w, http.StatusNotFound, changelog.ErrFeedOff.Error()+"; set changes.off: false (the default) and restart to keep a feed")
		return
	}
	out := newNDJSON(w)
	if c.snapshot {
		cursor, err := s.sendSnapshot(out, r, feed, c.prefix)
		if err != nil {
			s.feedFailed(w, r, out, err)
			return
		}
		c.since = cursor
	} else if c.now {
		_, c.since, _ = feed.FeedBounds()
	}
	until := uint64(0)
	if !c.continuous {
		_, until, _ = feed.FeedBounds()
		until = max(until, c.since)
	}
	var heartbeat *time.Timer
	if c.continuous {
		heartbeat = time.NewTimer(c.heartbeat)
		defer heartbeat.Stop()
	}
	sent := 0
	for {
		signal := feed.FeedSignal()
		want := feedPage
		if c.limit > 0 {
			want = min(want, c.limit-sent)
		}
		page, err := feed.ReadFeed(changelog.FeedQuery{Since: c.since, Prefix: c.prefix, Limit: want, Until: until})
		if err != nil {
			s.feedFailed(w, r, out, err)
			return
		}
		for _, e := range page.Entries {
			if out.send(NewChangeLine(s.b.Resolver(e.Key), e)) != nil {
				return
			}
			sent++
		}
		c.since = page.Next
		if len(page.Entries) > 0 && heartbeat != nil {
			heartbeat.Reset(c.heartbeat)
		}
		if (c.limit > 0 && sent >= c.limit) || (!c.continuous && !page.More) {
			_, last, _ := feed.FeedBounds()
			more := last > c.since
			out.send(cursorLine{Type: LineEnd, Cursor: c.since, More: &more})
			return
		}
		if page.More {
			continue
		}
		if out.start() != nil {
			return
		}
		select {
		case <-signal:
		case <-heartbeat.C:
			if out.send(cursorLine{Type: LineHeartbeat, Cursor: c.since}) != nil {
				return
			}
			heartbeat.Reset(c.heartbeat)
		case <-r.Context().Done():
			return
		case <-s.opts.Stop:
			s.endStream(out, r, errStopping)
			return
		}
	}
}

// sendSnapshot streams every live key under prefix from one read view,
// then the line with the view's cursor, and returns the cursor. Nothing is
// sent before the view's changes are durable.
func (s *server) sendSnapshot(out *ndjson, r *http.Request, feed Feed, prefix string) (uint64, error) {
	v, err := feed.NewReadView()
	if err != nil {
		return 0, err
	}
	defer v.Close()
	if err := feed.WaitFeed(r.Context(), v.Cursor()); err != nil {
		return 0, err
	}
	if err := out.start(); err != nil {
		return 0, err
	}
	err = v.Scan(prefix, "", func(key string, st dvv.State) error {
		kj, deleted := s.view(key, st)
		if deleted {
			return nil
		}
		return out.send(snapshotLine{Type: LineSnapshot, keyJSON: kj})
	})
	if err != nil {
		return 0, err
	}
	return v.Cursor(), out.send(cursorLine{Type: LineSnapshotEnd, Cursor: v.Cursor()})
}

// listPage serves GET /v1/kv?prefix=: every key with a live value under
// prefix after the key after, from one read view, at most limit of them
// (0: no bound). When more follow, the answer carries NextAfterHeader with
// the last key listed; the header goes out before the first line, so a
// first pass over the view finds the page's end.
func (s *server) listPage(w http.ResponseWriter, r *http.Request, prefix, after string, limit int) {
	v, err := s.b.Feed().NewReadView()
	if err != nil {
		s.backendError(w, r, "list keys", err)
		return
	}
	defer v.Close()
	end, more := "", false
	if limit > 0 {
		n := 0
		err := v.Scan(prefix, after, func(key string, st dvv.State) error {
			if _, deleted := s.view(key, st); deleted {
				return nil
			}
			if n == limit {
				more = true
				return errStop
			}
			n++
			end = key
			return nil
		})
		if err != nil && !errors.Is(err, errStop) {
			s.backendError(w, r, "list keys", err)
			return
		}
	}
	if more {
		w.Header().Set(NextAfterHeader, end)
	}
	out := newNDJSON(w)
	var sendErr error
	err = v.Scan(prefix, after, func(key string, st dvv.State) error {
		if err := r.Context().Err(); err != nil {
			return err
		}
		line, deleted := s.view(key, st)
		if deleted {
			return nil
		}
		if sendErr = out.send(line); sendErr != nil {
			return sendErr
		}
		if key == end && more {
			return errStop
		}
		return nil
	})
	switch {
	case err == nil || errors.Is(err, errStop):
		out.start() // an empty listing is still a 200
	case sendErr != nil || r.Context().Err() != nil:
		// The client is gone; nobody reads the rest.
	case !out.started:
		s.backendError(w, r, "list keys", err)
	default:
		s.log.Error("http key listing failed midway", "prefix", prefix, "err", err)
		out.enc.Encode(errorBody{Error: "the listing failed midway inside the sidecar and is incomplete; retry"})
		out.flush()
	}
}
