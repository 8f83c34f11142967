package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/httpapi"
)

// feedServer is the HTTP API over a store holding writes of keys a/0..a/2
// and b/0..b/2, whose feed keeps changes one minute by a clock the test
// moves.
func feedServer(t *testing.T) (*httptest.Server, *changelog.Store, func(time.Duration) time.Time) {
	t.Helper()
	var mu sync.Mutex
	now := time.UnixMilli(1_700_000_000_000)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(d); return now }
	st, err := changelog.Open("/s", changelog.Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 2, FS: vfs.NewMem(),
		Now: clock, FeedRetention: time.Minute, FeedPruneEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for i := range 3 {
		for _, p := range []string{"a/", "b/"} {
			if _, err := st.Write(context.Background(), changelog.WriteOp{Key: fmt.Sprint(p, i), Value: []byte("v")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	srv := httptest.NewServer(httpapi.New(httpapi.StoreBackend{Store: st}, httpapi.Options{}))
	t.Cleanup(srv.Close)
	return srv, st, advance
}

// cliLines runs the CLI and decodes its output lines.
func cliLines(t *testing.T, args ...string) (int, []map[string]any, string) {
	t.Helper()
	code, out, errOut := runCLI(args...)
	var ls []map[string]any
	for _, s := range strings.Split(strings.TrimSpace(out), "\n") {
		if s == "" {
			continue
		}
		var l map[string]any
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("output line %q: %v", s, err)
		}
		ls = append(ls, l)
	}
	return code, ls, errOut
}

// summary is "type:key@cursor" for each line.
func summary(ls []map[string]any) string {
	var parts []string
	for _, l := range ls {
		s := fmt.Sprint(l["type"])
		if k, ok := l["key"]; ok {
			s += ":" + fmt.Sprint(k)
		}
		if c, ok := l["cursor"]; ok {
			s += fmt.Sprintf("@%v", c)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// TestChangesCommand: `replicator changes` prints the feed's lines, each
// change with its cursor, and the line that gives the cursor to continue
// from; --since resumes there; a cursor past retention exits 1 saying to
// start again with --snapshot.
func TestChangesCommand(t *testing.T) {
	srv, st, advance := feedServer(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "change:a/0@1 change:b/0@2 change:a/1@3 change:b/1@4 change:a/2@5 change:b/2@6 end@6"},
		{[]string{"--since", "4"}, "change:a/2@5 change:b/2@6 end@6"},
		{[]string{"--prefix", "b/", "--limit", "2"}, "change:b/0@2 change:b/1@4 end@4"},
		{[]string{"--since", "now"}, "end@6"},
		{[]string{"--snapshot", "--prefix", "a/"}, "snapshot:a/0 snapshot:a/1 snapshot:a/2 snapshot_end@6 end@6"},
	} {
		code, ls, errOut := cliLines(t, append([]string{"changes", "--addr", srv.URL}, tc.args...)...)
		if code != 0 || summary(ls) != tc.want {
			t.Errorf("changes %v: exit %d (%s), printed %s; want %s", tc.args, code, errOut, summary(ls), tc.want)
		}
	}
	if code, _, errOut := cliLines(t, "changes", "--addr", srv.URL, "--since", "99"); code != 1 || !strings.Contains(errOut, "410") || !strings.Contains(errOut, "snapshot") {
		t.Errorf("a cursor ahead of the feed: exit %d, %q; want 1 and the 410 saying to snapshot", code, errOut)
	}
	if _, err := st.PruneFeed(context.Background(), advance(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := cliLines(t, "changes", "--addr", srv.URL, "--since", "2"); code != 1 || !strings.Contains(errOut, "410") || !strings.Contains(errOut, "retention") {
		t.Errorf("a cursor past retention: exit %d, %q; want 1 and the 410 naming the retention", code, errOut)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"extra"}, "changes takes no arguments"},
		{[]string{"--snapshot", "--since", "3"}, "--since and --snapshot exclude each other"},
		{[]string{"--limit", "-1"}, "--limit -1 is negative"},
		{[]string{"--heartbeat", "5s"}, "--heartbeat is only for --follow"},
	} {
		if code, _, errOut := cliLines(t, append([]string{"changes", "--addr", srv.URL}, tc.args...)...); code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("changes %v: exit %d, %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

// lineWriter counts the lines written to it and reports each on a channel.
type lineWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for _, l := range strings.SplitAfter(string(p), "\n") {
		if strings.HasSuffix(l, "\n") {
			w.lines <- strings.TrimSpace(l)
		}
	}
	return len(p), nil
}

// TestChangesFollow: --follow prints changes as they are committed, skips
// heartbeats, and ends with exit 0 when interrupted; a stream the sidecar
// ends with an error line exits 1.
func TestChangesFollow(t *testing.T) {
	srv, st, _ := feedServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &lineWriter{lines: make(chan string, 16)}
	errOut := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"changes", "--addr", srv.URL, "--follow", "--since", "6", "--heartbeat", "1s"}, out, errOut)
	}()
	// Wait past two heartbeats: nothing is printed, then a write is.
	time.AfterFunc(2500*time.Millisecond, func() {
		st.Write(context.Background(), changelog.WriteOp{Key: "c/0", Value: []byte("v")})
	})
	if got := printedLine(t, out, errOut.String); got != "change:c/0@7" {
		t.Fatalf("first printed line %s, want the change of c/0 at cursor 7", got)
	}
	cancel()
	interrupted(t, done, errOut.String)
	if _, err := printFeed(context.Background(), strings.NewReader(`{"type":"change","cursor":1}`+"\n"+`{"type":"error","error":"gone","status":410}`+"\n"), &bytes.Buffer{}, &feedPos{}); err == nil || !strings.Contains(err.Error(), "410") {
		t.Fatalf("an error line: %v, want an error naming 410", err)
	}
}

// TestChangesFollowResumes: a --follow whose connection drops resumes after
// the last cursor it read, printing each change once, the ones committed
// while it was cut included; a resume the sidecar refuses with a 4xx (410:
// pruned meanwhile) ends it with that error.
func TestChangesFollowResumes(t *testing.T) {
	srv, st, _ := feedServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &lineWriter{lines: make(chan string, 16)}
	errOut := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"changes", "--addr", srv.URL, "--follow", "--since", "6", "--heartbeat", "1s"}, out, errOut)
	}()
	write := func(k string) {
		t.Helper()
		if _, err := st.Write(context.Background(), changelog.WriteOp{Key: k, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	next := func() string { return printedLine(t, out, errOut.String) }
	write("c/0")
	if got := next(); got != "change:c/0@7" {
		t.Fatalf("first line %s, want change:c/0@7", got)
	}
	// Cut the feed's connection, and write while it is cut.
	srv.CloseClientConnections()
	write("c/1")
	write("c/2")
	var got []string
	for range 2 {
		got = append(got, next())
	}
	if strings.Join(got, " ") != "change:c/1@8 change:c/2@9" {
		t.Fatalf("after the cut printed %v, want c/1@8 then c/2@9, once each", got)
	}
	if !strings.Contains(errOut.String(), "resuming after cursor 7") {
		t.Fatalf("stderr %q does not say it resumed after cursor 7", errOut.String())
	}
	select {
	case l := <-out.lines:
		t.Fatalf("printed %q after the changes, want nothing more", l)
	default:
	}
	cancel()
	interrupted(t, done, errOut.String)

	// A sidecar that drops the feed, then refuses the resume with 410.
	var sinces []string
	var mu sync.Mutex
	gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sinces = append(sinces, r.URL.Query().Get("since"))
		n := len(sinces)
		mu.Unlock()
		if n == 1 {
			fmt.Fprintln(w, `{"type":"change","key":"k","cursor":5}`)
			return // the body ends without an end line: dropped
		}
		w.WriteHeader(http.StatusGone)
		fmt.Fprintln(w, `{"error":"since 5: pruned; the oldest change held is 9"}`)
	}))
	defer gone.Close()
	code, stdout, stderr := runCLI("changes", "--addr", gone.URL, "--follow")
	if code != 1 || !strings.Contains(stderr, "410") || !strings.Contains(stderr, "pruned") {
		t.Fatalf("a refused resume exited %d, stderr %q; want 1 and the 410", code, stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(sinces, ",") != ",5" || strings.Count(stdout, "\n") != 1 {
		t.Fatalf("requests with since %q, stdout %q; want one change, then a resume after 5", sinces, stdout)
	}
}

// syncBuffer is a bytes.Buffer safe to write from the command's goroutine
// while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// interrupted checks that a canceled --follow ends, with exit 0.
func interrupted(t *testing.T, done <-chan int, stderr func() string) {
	t.Helper()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("interrupted --follow exited %d: %s", code, stderr())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("--follow did not end when interrupted")
	}
}

// printedLine waits up to 20s for the command's next line and returns it as
// "type:key@cursor".
func printedLine(t *testing.T, out *lineWriter, stderr func() string) string {
	t.Helper()
	select {
	case l := <-out.lines:
		var got struct {
			Type   string
			Key    string
			Cursor uint64
		}
		if err := json.Unmarshal([]byte(l), &got); err != nil {
			t.Fatalf("printed %q: %v", l, err)
		}
		return fmt.Sprintf("%s:%s@%d", got.Type, got.Key, got.Cursor)
	case <-time.After(20 * time.Second):
		t.Fatalf("nothing printed within 20s; stderr: %s", stderr())
		return ""
	}
}
