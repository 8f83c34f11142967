package main

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

// cmdChanges prints a running sidecar's change feed (GET /v1/changes): one
// JSON line per change, each with its cursor, and the line that ends a
// snapshot or a page with the cursor to continue from; heartbeats are not
// printed. A script stores the cursor of the last line it handled and
// passes it as --since to carry on.
func cmdChanges(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("changes", "[--since C|now] [--prefix P] [--follow] [--snapshot] [--limit N]", stderr)
	var c clientFlags
	c.register(fs)
	since := fs.String("since", "", "continue after this cursor, or now; default: from the oldest change held")
	prefix := fs.String("prefix", "", "only keys that start with this")
	follow := fs.Bool("follow", false, "keep printing new changes as they are committed (feed=continuous), until interrupted")
	snapshot := fs.Bool("snapshot", false, "first print every key with a live value under --prefix (type snapshot), then the cursor they were read at (type snapshot_end), then the changes after it")
	limit := fs.Int("limit", 0, "stop after this many changes (0: no bound)")
	heartbeat := fs.Duration("heartbeat", 0, "with --follow: how often the sidecar sends a heartbeat while idle (default 10s); heartbeats are not printed")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(rest) > 0:
		return usagef("changes takes no arguments, got %q", rest)
	case *snapshot && *since != "":
		return usagef("--since and --snapshot exclude each other: a snapshot starts at its own cursor")
	case *limit < 0:
		return usagef("--limit %d is negative", *limit)
	case *heartbeat != 0 && !*follow:
		return usagef("--heartbeat is only for --follow")
	}
	if err := c.finish(); err != nil {
		return err
	}
	q := url.Values{}
	if *since != "" {
		q.Set("since", *since)
	}
	if *prefix != "" {
		q.Set("prefix", *prefix)
	}
	if *follow {
		q.Set("feed", "continuous")
	}
	if *heartbeat != 0 {
		q.Set("heartbeat", heartbeat.String())
	}
	if *snapshot {
		q.Set("snapshot", "true")
	}
	if *limit > 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	// No overall timeout: a followed feed runs until interrupted. Getting
	// the answer's status line is bounded.
	cl := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 30 * time.Second}}
	var (
		pos     feedPos
		printed int
		backoff = resumeBackoff{min: 100 * time.Millisecond, max: 5 * time.Second}
	)
	for {
		if pos.known {
			// Resuming a dropped --follow: after the last cursor seen,
			// without the snapshot (already printed), and only what is left
			// of --limit.
			q.Set("since", strconv.FormatUint(pos.cursor, 10))
			q.Del("snapshot")
			if *limit > 0 {
				q.Set("limit", strconv.Itoa(*limit-printed))
			}
		}
		n, err := followOnce(ctx, cl, &c, q, stdout, &pos)
		printed += n
		var drop *feedDropped
		switch {
		case err == nil || ctx.Err() != nil:
			return nil
		case !*follow || !errors.As(err, &drop):
			return err
		case !pos.known:
			// Dropped before any cursor came: there is nothing to resume
			// after that would not print the snapshot twice or skip changes.
			return fmt.Errorf("the feed was cut before its first cursor: %w", err)
		}
		wait := backoff.next(n > 0)
		fmt.Fprintf(stderr, "replicator changes: %v; resuming after cursor %d in %v\n", err, pos.cursor, wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// feedPos is where a feed has been read to: the cursor of the last line
// that carried one (a change, snapshot_end, heartbeat or end), once known.
type feedPos struct {
	cursor uint64
	known  bool
}

// feedDropped is a feed that ended without its end or error line, or whose
// sidecar could not be reached or answered 5xx while resuming: --follow
// resumes after it.
type feedDropped struct{ err error }

func (e *feedDropped) Error() string { return "the feed connection dropped: " + e.err.Error() }
func (e *feedDropped) Unwrap() error { return e.err }

// resumeBackoff doubles the wait between resumes from min to max, and goes
// back to min once a resumed feed has printed something.
type resumeBackoff struct{ min, max, cur time.Duration }

func (b *resumeBackoff) next(progressed bool) time.Duration {
	if progressed || b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

// followOnce makes one GET /v1/changes and prints its lines, moving pos. It
// returns how many changes it printed, and a *feedDropped when a resume
// should follow (the connection failed or broke, or a 5xx), any other error
// when it should not (a 4xx such as 410 Gone, an error line).
func followOnce(ctx context.Context, cl *http.Client, c *clientFlags, q url.Values, stdout io.Writer, pos *feedPos) (int, error) {
	req, err := c.request(ctx, http.MethodGet, "/v1/changes?"+q.Encode(), nil, nil)
	if err != nil {
		return 0, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		if pos.known {
			return 0, &feedDropped{err}
		}
		return 0, err // the first request: say so rather than retry
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e struct{ Error string }
		err := fmt.Errorf("%s", resp.Status)
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			err = fmt.Errorf("%s: %s", resp.Status, e.Error)
		}
		if resp.StatusCode >= 500 && pos.known {
			return 0, &feedDropped{err}
		}
		return 0, err
	}
	return printFeed(ctx, resp.Body, stdout, pos)
}

// printFeed copies the feed's lines to w, but heartbeats, and turns an
// error line into an error. It moves pos to each cursor it reads, counts
// the change lines, and returns a *feedDropped when the body ends (or
// breaks) without its end line, as a dropped continuous feed does.
func printFeed(ctx context.Context, body io.Reader, w io.Writer, pos *feedPos) (int, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 64<<20) // a line holds a key's values, in base64
	changes := 0
	for sc.Scan() {
		var l struct {
			Type   string  `json:"type"`
			Error  string  `json:"error"`
			Status int     `json:"status"`
			Cursor *uint64 `json:"cursor"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return changes, fmt.Errorf("the sidecar sent a line that is not JSON: %v", err)
		}
		if l.Type == "error" {
			return changes, fmt.Errorf("the feed ended with status %d: %s", l.Status, l.Error)
		}
		if l.Type != "heartbeat" {
			if _, err := fmt.Fprintf(w, "%s\n", sc.Bytes()); err != nil {
				return changes, err
			}
		}
		if l.Type == "change" {
			changes++
		}
		if l.Cursor != nil && l.Type != "snapshot" {
			pos.cursor, pos.known = *l.Cursor, true
		}
		if l.Type == "end" {
			return changes, nil
		}
	}
	err := sc.Err()
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
		return changes, nil // interrupted: the normal end of --follow
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return changes, &feedDropped{err}
}
