package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Change is one line of the change feed (GET /v1/changes): a change of a
// key (Type "change", with its Cursor and the key as a read shows it after
// the change), a key of the initial snapshot ("snapshot"), or the end of
// the snapshot ("snapshot_end", with the cursor it was taken at).
type Change struct {
	Type   string `json:"type"`
	Cursor uint64 `json:"cursor"`
	// Op is put, delete, resolve or merge (anti-entropy); Origin the DC
	// that wrote it, Dot its dot ("" for a merge), HLC its clock, Time
	// when it was committed at this DC.
	Op     string `json:"op"`
	Origin string `json:"origin"`
	Dot    string `json:"dot"`
	HLC    uint64 `json:"hlc"`
	Time   string `json:"time"`
	// Deleted: the key has no live value after the change.
	Deleted bool `json:"deleted"`
	Item
	More   bool   `json:"more"`
	Error  string `json:"error"`
	Status int    `json:"status"`
}

// FeedOptions say where a change feed starts and what it carries.
type FeedOptions struct {
	// Since is the cursor to continue after: the cursor of the last line
	// the reader handled, stored with the data it derived from it. 0
	// starts at the oldest change the sidecar holds.
	Since uint64
	// FromNow starts at the feed's current end instead (Since ignored).
	FromNow bool
	// Snapshot first sends every key with a live value under Prefix
	// ("snapshot" lines), then a "snapshot_end" with the cursor it was
	// taken at, then the changes after it: how a new mirror starts.
	Snapshot bool
	// Prefix keeps the changes of keys with this prefix.
	Prefix string
	// Follow keeps reading as changes are committed, until ctx ends;
	// without it Changes returns once it has read to the end.
	Follow bool
	// Heartbeat is how often an idle followed feed says where it is
	// (default the sidecar's 10s).
	Heartbeat time.Duration
}

// ErrFeedGone is the error of Changes when the sidecar no longer holds the
// changes after the cursor (retention pruned them, or the store was
// replaced): start again with Snapshot.
var ErrFeedGone = errors.New("client: the change feed no longer holds the changes after this cursor; start again with a snapshot")

// Changes reads the change feed and calls fn with each change, snapshot
// and snapshot_end line, in order. It resumes by itself, from the cursor
// of the last line it handled, when the connection breaks or the sidecar
// restarts (with a growing delay, up to 5 s), and pages through a
// feed that is not followed. It returns nil at the end of an unfollowed
// feed, fn's error, ErrFeedGone, another refusal of the sidecar (an
// *Error), or ctx's error.
//
// It reads GET /v1/changes (docs/INTERFACES.md, "Change feed") with since,
// prefix, feed=continuous, heartbeat and snapshot.
func (c *Client) Changes(ctx context.Context, o FeedOptions, fn func(Change) error) error {
	cursor, snapshot, fromNow := o.Since, o.Snapshot, o.FromNow && !o.Snapshot
	delay := 100 * time.Millisecond
	for {
		q := url.Values{}
		switch {
		case snapshot:
			q.Set("snapshot", "true")
		case fromNow:
			q.Set("since", "now")
		default:
			q.Set("since", strconv.FormatUint(cursor, 10))
		}
		if o.Prefix != "" {
			q.Set("prefix", o.Prefix)
		}
		if o.Follow {
			q.Set("feed", "continuous")
			if o.Heartbeat > 0 {
				q.Set("heartbeat", o.Heartbeat.String())
			}
		}
		done, progressed, err := c.feedOnce(ctx, q, func(ch Change) error {
			switch ch.Type {
			case "change", "snapshot_end", "heartbeat", "end":
				cursor = ch.Cursor
				snapshot, fromNow = false, false
			}
			if ch.Type == "heartbeat" || ch.Type == "end" {
				return nil
			}
			return fn(ch)
		})
		if done || err != nil && !retryable(err) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if progressed {
			delay = 100 * time.Millisecond
		}
		if err != nil || o.Follow {
			// The stream broke: resume from the cursor after a delay.
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			delay = min(2*delay, 5*time.Second)
		}
	}
}

// errResume marks a stream that ended in a way Changes recovers from.
type errResume struct{ err error }

func (e errResume) Error() string { return e.err.Error() }
func (e errResume) Unwrap() error { return e.err }

func retryable(err error) bool {
	var r errResume
	return errors.As(err, &r)
}

// feedOnce reads one request's stream. done is true when an unfollowed
// feed has nothing more; progressed when some line arrived.
func (c *Client) feedOnce(ctx context.Context, q url.Values, fn func(Change) error) (done, progressed bool, err error) {
	cl := c.options(nil)
	cl.query = q
	resp, err := c.send(ctx, http.MethodGet, "/v1/changes", nil, cl)
	if err != nil {
		if ctx.Err() != nil {
			return false, false, ctx.Err()
		}
		return false, false, errResume{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		e := errorOf(resp, b)
		switch e.Status {
		case http.StatusGone:
			return false, false, fmt.Errorf("%w: %s", ErrFeedGone, e.Message)
		case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
			return false, false, errResume{e}
		}
		return false, false, e
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var ch Change
		if err := json.Unmarshal(sc.Bytes(), &ch); err != nil {
			return false, progressed, fmt.Errorf("client: a change feed line is not JSON: %w", err)
		}
		progressed = true
		if ch.Type == "error" {
			switch ch.Status {
			case http.StatusGone:
				return false, true, fmt.Errorf("%w: %s", ErrFeedGone, ch.Error)
			case http.StatusServiceUnavailable:
				return false, true, errResume{&Error{Status: ch.Status, Message: ch.Error}}
			}
			return false, true, &Error{Status: ch.Status, Message: ch.Error}
		}
		if err := fn(ch); err != nil {
			return false, true, err
		}
		if ch.Type == "end" && !ch.More {
			return true, true, nil
		}
		if ch.Type == "end" {
			return false, true, nil // the next page, from its cursor
		}
	}
	if ctx.Err() != nil {
		return false, progressed, ctx.Err()
	}
	err = sc.Err()
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return false, progressed, errResume{fmt.Errorf("client: the change feed stream broke: %w", err)}
}

// WatchEvent is one line of GET /v1/watch: the key as a read shows it
// after a change applied at this DC, and what made the change.
type WatchEvent struct {
	Item
	Op      string `json:"op"`
	Origin  string `json:"origin"`
	Deleted bool   `json:"deleted"`
	Error   string `json:"error"`
}

// ErrWatchBehind is the error of Watch when the watcher fell behind and
// the sidecar ended the stream: changes were missed. Use Changes, which
// resumes from a cursor, where none may be missed.
var ErrWatchBehind = errors.New("client: the watch fell behind and was ended; changes were missed")

// Watch streams the changes this DC applies to keys under prefix, from
// now on, and calls fn with each, until ctx ends (nil), fn fails, or the
// watch falls behind (ErrWatchBehind). It has no position to resume from:
// a reader that must not miss a change reads Changes.
func (c *Client) Watch(ctx context.Context, prefix string, fn func(WatchEvent) error) error {
	cl := c.options(nil)
	cl.query.Set("prefix", prefix)
	resp, err := c.send(ctx, http.MethodGet, "/v1/watch", nil, cl)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return errorOf(resp, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var ev WatchEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("client: a watch line is not JSON: %w", err)
		}
		if ev.Error != "" {
			return fmt.Errorf("%w: %s", ErrWatchBehind, ev.Error)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("client: the watch stream broke: %w", err)
	}
	return fmt.Errorf("client: the watch stream ended: the sidecar is shutting down")
}
