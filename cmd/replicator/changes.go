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
	req, err := c.request(ctx, http.MethodGet, "/v1/changes?"+q.Encode(), nil, nil)
	if err != nil {
		return err
	}
	// No overall timeout: a followed feed runs until interrupted. Getting
	// the answer's status line is bounded.
	cl := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 30 * time.Second}}
	resp, err := cl.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s: %s", resp.Status, e.Error)
		}
		return fmt.Errorf("%s", resp.Status)
	}
	return printFeed(ctx, resp.Body, stdout)
}

// printFeed copies the feed's lines to w, but heartbeats, and turns an
// error line into an error.
func printFeed(ctx context.Context, body io.Reader, w io.Writer) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 64<<20) // a line holds a key's values, in base64
	for sc.Scan() {
		var l struct {
			Type   string `json:"type"`
			Error  string `json:"error"`
			Status int    `json:"status"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("the sidecar sent a line that is not JSON: %v", err)
		}
		switch l.Type {
		case "heartbeat":
			continue
		case "error":
			return fmt.Errorf("the feed ended with status %d: %s", l.Status, l.Error)
		}
		if _, err := fmt.Fprintf(w, "%s\n", sc.Bytes()); err != nil {
			return err
		}
	}
	err := sc.Err()
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
		return nil // interrupted: the normal end of --follow
	}
	if err != nil {
		return err
	}
	return nil
}
