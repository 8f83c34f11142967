package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"

	"github.com/replicatorhq/replicator/client"
)

// feedServer speaks GET /v1/changes as docs/INTERFACES.md ("Change feed")
// describes it, over a fixed list of changes (cursors 1..n): a snapshot
// of two keys at cursor 3, pages (limit), continuous feeds, 410 below
// oldest. Each continuous stream breaks after two changes, as a restarting
// sidecar's would, so the client must resume.
type feedServer struct {
	mu     sync.Mutex
	n      uint64
	oldest uint64
	asked  []string
}

func (f *feedServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f.mu.Lock()
	f.asked = append(f.asked, r.URL.RawQuery)
	n, oldest := f.n, f.oldest
	f.mu.Unlock()
	var since uint64
	lines := []map[string]any{}
	switch {
	case q.Get("snapshot") == "true":
		lines = append(lines, map[string]any{"type": "snapshot", "key": "k1", "values": []string{}},
			map[string]any{"type": "snapshot", "key": "k2"}, map[string]any{"type": "snapshot_end", "cursor": 3})
		since = 3
	case q.Get("since") == "now":
		since = n
	default:
		s, err := strconv.ParseUint(q.Get("since"), 10, 64)
		if err != nil {
			http.Error(w, `{"error":"since"}`, http.StatusBadRequest)
			return
		}
		since = s
	}
	if since+1 < oldest {
		w.WriteHeader(http.StatusGone)
		fmt.Fprintf(w, `{"error":"pruned","oldest":%d,"last":%d}`, oldest, n)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	for c := since + 1; c <= n; c++ {
		lines = append(lines, map[string]any{"type": "change", "cursor": c, "op": "put", "key": fmt.Sprintf("k%d", c), "origin": "dc1"})
	}
	continuous := q.Get("feed") == "continuous"
	changes := 0
	for i, l := range lines {
		if l["type"] == "change" {
			changes++
		}
		if continuous && changes > 2 {
			lines = lines[:i] // the stream breaks after two changes
			break
		}
	}
	if !continuous {
		lines = append(lines, map[string]any{"type": "end", "cursor": n})
	} else if changes <= 2 {
		lines = append(lines, map[string]any{"type": "heartbeat", "cursor": n})
	}
	enc := json.NewEncoder(w)
	for _, l := range lines {
		enc.Encode(l)
	}
}

// TestChangesResumes: Changes starts from a snapshot, resumes from the
// cursor of the last line it handled each time the stream breaks, so it
// sees every change exactly once, and reports a pruned cursor as
// ErrFeedGone. The feed is the documented one, served by a fake: the
// resume is checked here; client_test reads a real sidecar's feed.
func TestChangesResumes(t *testing.T) {
	f := &feedServer{n: 8, oldest: 1}
	srv := httptest.NewServer(f)
	defer srv.Close()
	c, err := client.New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seen []string
	err = c.Changes(ctx, client.FeedOptions{Snapshot: true, Follow: true}, func(ch client.Change) error {
		seen = append(seen, fmt.Sprintf("%s:%s:%d", ch.Type, ch.Key, ch.Cursor))
		if ch.Cursor == 8 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Changes: %v", err)
	}
	want := "[snapshot:k1:0 snapshot:k2:0 snapshot_end::3 change:k4:4 change:k5:5 change:k6:6 change:k7:7 change:k8:8]"
	if fmt.Sprint(seen) != want {
		t.Errorf("saw %v\nwant %s", seen, want)
	}
	f.mu.Lock()
	asked := fmt.Sprint(f.asked)
	f.mu.Unlock()
	if want := "[feed=continuous&snapshot=true feed=continuous&since=5 feed=continuous&since=7]"; asked != want {
		t.Errorf("asked %s\nwant  %s", asked, want)
	}

	// Unfollowed: from a cursor to the end, then nil.
	seen = nil
	if err := c.Changes(context.Background(), client.FeedOptions{Since: 6}, func(ch client.Change) error {
		seen = append(seen, ch.Key)
		return nil
	}); err != nil || fmt.Sprint(seen) != "[k7 k8]" {
		t.Errorf("Changes since 6: %v %v", seen, err)
	}

	// Past retention.
	f.mu.Lock()
	f.oldest = 5
	f.mu.Unlock()
	if err := c.Changes(context.Background(), client.FeedOptions{Since: 2}, func(client.Change) error { return nil }); !errors.Is(err, client.ErrFeedGone) {
		t.Errorf("Changes since a pruned cursor: %v, want ErrFeedGone", err)
	}
}
