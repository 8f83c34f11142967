package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/changelog"
)

// feedLine is any line of GET /v1/changes, as a client decodes it.
type feedLine struct {
	Type     string    `json:"type"`
	Cursor   *uint64   `json:"cursor"`
	More     *bool     `json:"more"`
	Key      string    `json:"key"`
	Op       string    `json:"op"`
	Origin   string    `json:"origin"`
	Dot      string    `json:"dot"`
	HLC      uint64    `json:"hlc"`
	Time     string    `json:"time"`
	Deleted  bool      `json:"deleted"`
	Context  string    `json:"context"`
	Values   [][]byte  `json:"values"`
	Siblings []sibResp `json:"siblings"`
	Conflict bool      `json:"conflict"`
	Resolver string    `json:"resolver"`
	Error    string    `json:"error"`
	Status   int       `json:"status"`
}

func (l feedLine) cursor() uint64 {
	if l.Cursor == nil {
		return 0
	}
	return *l.Cursor
}

// lines decodes an NDJSON body.
func lines(tb testing.TB, body string) []feedLine {
	tb.Helper()
	var out []feedLine
	for _, s := range strings.Split(strings.TrimSpace(body), "\n") {
		if s == "" {
			continue
		}
		var l feedLine
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			tb.Fatalf("line %q: %v", s, err)
		}
		out = append(out, l)
	}
	return out
}

// changesOf returns the change lines' keys and the final line.
func changesOf(tb testing.TB, ls []feedLine) (keys []string, end feedLine) {
	tb.Helper()
	if len(ls) == 0 {
		tb.Fatal("no lines")
	}
	for _, l := range ls[:len(ls)-1] {
		if l.Type != LineChange {
			tb.Fatalf("line %+v before the end, want a change", l)
		}
		keys = append(keys, l.Key)
	}
	return keys, ls[len(ls)-1]
}

// TestChangesBadParams: every bad parameter answers 400 with a message
// naming it, before anything is read.
func TestChangesBadParams(t *testing.T) {
	f := newFixture(t, Options{})
	for _, tc := range []struct{ query, names string }{
		{"since=x", `since "x"`},
		{"since=-1", `since "-1"`},
		{"since=1.5", `since "1.5"`},
		{"limit=0", `limit "0"`},
		{"limit=-3", `limit "-3"`},
		{"limit=ten", `limit "ten"`},
		{"feed=longpoll", `feed "longpoll"`},
		{"feed=continuous&heartbeat=soon", `heartbeat "soon"`},
		{"feed=continuous&heartbeat=10ms", "heartbeat 10ms is out of range"},
		{"feed=continuous&heartbeat=1h", "heartbeat 1h0m0s is out of range"},
		{"heartbeat=5s", "heartbeat is only for feed=continuous"},
		{"snapshot=maybe", `snapshot "maybe"`},
		{"snapshot=true&since=3", "since and snapshot=true exclude each other"},
		{"snapshot=true&since=now", "since and snapshot=true exclude each other"},
		{"prefix=" + strings.Repeat("p", 5000), "prefix is 5000 bytes"},
		{"cursor=3", `unknown query parameter "cursor"`},
		{"since=1&since=2", `query parameter "since" is given 2 times`},
	} {
		w := f.do(t, req{method: "GET", target: "/v1/changes?" + tc.query})
		if w.Code != http.StatusBadRequest || !strings.Contains(decode[errResp](t, w).Error, tc.names) {
			t.Errorf("?%.40s: %d %s; want 400 naming %s", tc.query, w.Code, strings.TrimSpace(w.Body.String()), tc.names)
		}
	}
}

// TestChangesPage: a normal feed streams every change after since, in
// cursor order, each with its cursor, op, origin, dot and the key's view
// after it, and ends with the cursor to continue from; limit pages through
// the same changes with no gap and no repeat; prefix filters; since=now
// starts at the end.
func TestChangesPage(t *testing.T) {
	f := newFixture(t, Options{})
	f.put(t, "p/a", "1", "")
	f.put(t, "q/x", "x", "")
	ctx := f.put(t, "p/b", "2", "")
	f.remoteWrite(t, "p/b", "two") // concurrent: siblings
	w := f.do(t, req{method: "DELETE", target: "/v1/kv/p/a"})
	wantStatus(t, w, http.StatusOK)
	f.put(t, "l/1", "a", "")
	f.remoteWrite(t, "l/1", "b") // lww: one value shown

	w = f.do(t, req{method: "GET", target: "/v1/changes"})
	wantStatus(t, w, http.StatusOK)
	if ct := w.Header().Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("Content-Type %q", ct)
	}
	all := lines(t, w.Body.String())
	keys, end := changesOf(t, all)
	if !slices.Equal(keys, []string{"p/a", "q/x", "p/b", "p/b", "p/a", "l/1", "l/1"}) {
		t.Fatalf("changes %q", keys)
	}
	if end.Type != LineEnd || end.cursor() != 7 || end.More == nil || *end.More {
		t.Fatalf("end line %+v, want end at cursor 7, more false", end)
	}
	for i, l := range all[:7] {
		if l.cursor() != uint64(i+1) || l.Time == "" || l.Resolver == "" {
			t.Fatalf("line %d: %+v", i, l)
		}
	}
	if l := all[2]; l.Op != "put" || l.Origin != "dc1" || l.Dot != "dc1:1" || l.Context != ctx || !slices.Equal(strs(l.Values), []string{"2"}) || l.Deleted {
		t.Fatalf("the local put of p/b: %+v", l)
	}
	if l := all[3]; l.Origin != "dc2" || !strings.HasPrefix(l.Dot, "dc2:") || len(l.Values) != 2 || len(l.Siblings) != 2 || !l.Conflict || l.Resolver != "siblings" {
		t.Fatalf("dc2's concurrent put of p/b: %+v", l)
	}
	if l := all[4]; l.Op != "delete" || !l.Deleted || len(l.Values) != 0 || len(l.Siblings) != 1 || !l.Siblings[0].Deleted {
		t.Fatalf("the delete of p/a: %+v", l)
	}
	if l := all[6]; l.Resolver != "lww" || len(l.Values) != 1 || len(l.Siblings) != 2 {
		t.Fatalf("lww l/1 after dc2's write: %+v", l)
	}
	// The view is what GET /v1/kv/{key} shows.
	var kv keyResp
	if err := json.Unmarshal([]byte(strings.Split(w.Body.String(), "\n")[6]), &kv); err != nil {
		t.Fatal(err)
	}
	got := decode[keyResp](t, f.do(t, req{method: "GET", target: "/v1/kv/l/1"}))
	kv.Dot = "" // the change's dot; the rest is the view
	if fmt.Sprint(kv) != fmt.Sprint(got) {
		t.Fatalf("the change line's view %+v differs from GET /v1/kv/l/1 %+v", kv, got)
	}

	// Pages of 3 hold the same changes, once each.
	var paged []string
	for since, pages := uint64(0), 0; ; pages++ {
		w := f.do(t, req{method: "GET", target: fmt.Sprintf("/v1/changes?limit=3&since=%d", since)})
		wantStatus(t, w, http.StatusOK)
		ks, end := changesOf(t, lines(t, w.Body.String()))
		paged = append(paged, ks...)
		since = end.cursor()
		if !*end.More {
			if pages != 2 || since != 7 {
				t.Fatalf("%d pages ending at %d, want 3 ending at 7", pages+1, since)
			}
			break
		}
	}
	if !slices.Equal(paged, keys) {
		t.Fatalf("pages of 3 gave %q, the whole feed %q", paged, keys)
	}

	for _, tc := range []struct {
		query string
		keys  []string
		end   uint64
	}{
		{"since=4", []string{"p/a", "l/1", "l/1"}, 7},
		{"prefix=p/", []string{"p/a", "p/b", "p/b", "p/a"}, 7},
		{"prefix=p/&since=3", []string{"p/b", "p/a"}, 7},
		{"prefix=zz", nil, 7},
		{"since=now", nil, 7},
		{"since=7", nil, 7},
	} {
		w := f.do(t, req{method: "GET", target: "/v1/changes?" + tc.query})
		wantStatus(t, w, http.StatusOK)
		ks, end := changesOf(t, lines(t, w.Body.String()))
		if !slices.Equal(ks, tc.keys) || end.Type != LineEnd || end.cursor() != tc.end {
			t.Errorf("?%s: changes %q, end %+v; want %q and cursor %d", tc.query, ks, end, tc.keys, tc.end)
		}
	}
}

// gcStore opens a dc1 store whose change feed keeps changes one minute,
// by a clock the test moves with the returned function.
func gcStore(t *testing.T) (*changelog.Store, http.Handler, func(time.Duration) time.Time) {
	t.Helper()
	rules := testRules(t)
	var mu sync.Mutex
	now := time.UnixMilli(1_700_000_000_000)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
		return now
	}
	st, err := changelog.Open("gc", changelog.Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: testPartitions,
		FS: vfs.NewMem(), Clock: &counterClock{}, Resolvers: rules, Now: clock, FeedRetention: time.Minute, FeedPruneEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, New(StoreBackend{Store: st, Rules: rules}, Options{}), advance
}

// TestChangesGone: a cursor whose next change retention pruned, or one
// ahead of the feed, answers 410 saying to start again from a snapshot,
// with the oldest and last cursors held; a cursor right at the edge reads
// on; and a snapshot there, then the changes after its cursor, hold every
// key (no gap at the retention edge).
func TestChangesGone(t *testing.T) {
	st, h, advance := gcStore(t)
	ctx := context.Background()
	for i := range 5 {
		if _, err := st.Write(ctx, changelog.WriteOp{Key: fmt.Sprint("k/", i), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.PruneFeed(ctx, advance(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(ctx, changelog.WriteOp{Key: "k/5", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	for _, since := range []string{"1", "4", "9"} {
		w := serve(h, req{method: "GET", target: "/v1/changes?since=" + since})
		wantStatus(t, w, http.StatusGone)
		body := decode[struct {
			Error        string
			Oldest, Last uint64
		}](t, w)
		if !strings.Contains(body.Error, "snapshot=true") || body.Oldest != 6 || body.Last != 6 {
			t.Errorf("since=%s: 410 %+v; want the message to say snapshot=true, oldest 6, last 6", since, body)
		}
	}
	w := serve(h, req{method: "GET", target: "/v1/changes?since=5"})
	wantStatus(t, w, http.StatusOK)
	if ks, end := changesOf(t, lines(t, w.Body.String())); !slices.Equal(ks, []string{"k/5"}) || end.cursor() != 6 {
		t.Fatalf("right at the edge: %q, end %+v", ks, end)
	}
	// Everything pruned again: a snapshot is the way back in.
	if _, err := st.PruneFeed(ctx, advance(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	w = serve(h, req{method: "GET", target: "/v1/changes?snapshot=true&prefix=k/"})
	wantStatus(t, w, http.StatusOK)
	ls := lines(t, w.Body.String())
	if len(ls) != 8 || ls[6].Type != LineSnapshotEnd || ls[6].cursor() != 6 || ls[7].Type != LineEnd || ls[7].cursor() != 6 {
		t.Fatalf("snapshot at the edge: %+v", ls)
	}
	for i, l := range ls[:6] {
		if l.Type != LineSnapshot || l.Key != fmt.Sprint("k/", i) || len(l.Values) != 1 || l.Cursor != nil {
			t.Fatalf("snapshot line %d: %+v", i, l)
		}
	}
}

// TestChangesSnapshot: snapshot=true sends the live keys under the prefix
// from one view, then its cursor, then the changes after it. Writes made
// while the snapshot is being sent (the server is held up by a client
// that reads slowly) are not in it, and come after its cursor: a mirror
// built from the stream equals the listing.
func TestChangesSnapshot(t *testing.T) {
	f := newFixture(t, Options{})
	// Small socket buffers on both ends, so that a few hundred kilobytes
	// of snapshot hold the server up on the connection; with the kernel's
	// autotuned buffers (up to tens of megabytes on loopback) it could
	// send a snapshot of any size the test can afford before the writes.
	srv := httptest.NewUnstartedServer(f.h)
	sent := &countingListener{Listener: srv.Listener}
	srv.Listener = sent
	srv.Start()
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			err = conn.(*net.TCPConn).SetReadBuffer(smallSocketBuffer)
		}
		return conn, err
	}}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const keys = 1000
	value := strings.Repeat("v", 256)
	for i := 0; i < keys; i += 100 {
		ops := make([]changelog.WriteOp, 100)
		for j := range ops {
			ops[j] = changelog.WriteOp{Key: fmt.Sprintf("m/%04d", i+j), Value: []byte(value)}
		}
		if _, err := f.store.WriteTxn(ctx, ops); err != nil {
			t.Fatal(err)
		}
	}
	f.do(t, req{method: "DELETE", target: "/v1/kv/m/0003"})
	f.put(t, "other", "x", "")

	hr, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/changes?snapshot=true&prefix=m/&feed=continuous&heartbeat=1s", nil)
	resp, err := client.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	if !sc.Scan() {
		t.Fatal(sc.Err())
	}
	first := sc.Bytes()
	// The server is now part way through the snapshot: write meanwhile.
	for i := range 60 {
		k := fmt.Sprintf("m/%04d", (i*53)%(keys+100))
		var err error
		if i%7 == 0 {
			_, err = f.store.Write(ctx, changelog.WriteOp{Key: k, Delete: true})
		} else {
			_, err = f.store.Write(ctx, changelog.WriteOp{Key: k, Value: []byte(fmt.Sprint("w", i))})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	sentBeforeEnd := sent.written.Load()
	_, last, _ := f.store.FeedBounds()
	mirror := map[string]string{}
	snapshotDone, pos := false, uint64(0)
	var snapshotBytes int64 // the snapshot's lines, its end line included
	apply := func(b []byte) {
		var l feedLine
		if err := json.Unmarshal(b, &l); err != nil {
			t.Fatal(err)
		}
		switch l.Type {
		case LineSnapshot:
			if snapshotDone || !strings.HasPrefix(l.Key, "m/") || l.Deleted || l.Cursor != nil || len(l.Values) == 0 {
				t.Fatalf("snapshot line %+v", l)
			}
			mirror[l.Key] = fmt.Sprint(l.Values)
			snapshotBytes += int64(len(b)) + 1
		case LineSnapshotEnd:
			snapshotDone, pos = true, l.cursor()
			snapshotBytes += int64(len(b)) + 1
		case LineChange:
			if !snapshotDone || l.cursor() <= pos {
				t.Fatalf("change %+v at position %d (snapshot done %v)", l, pos, snapshotDone)
			}
			pos = l.cursor()
			if l.Deleted {
				delete(mirror, l.Key)
			} else {
				mirror[l.Key] = fmt.Sprint(l.Values)
			}
		case LineHeartbeat:
			pos = max(pos, l.cursor())
		default:
			t.Fatalf("line %+v", l)
		}
	}
	apply(first)
	for pos < last && sc.Scan() {
		apply(sc.Bytes())
	}
	// What the server wrote also holds the headers and the chunks'
	// framing: having written less than the snapshot's lines, it was
	// still sending them.
	if sentBeforeEnd >= snapshotBytes {
		t.Fatalf("the server had written %d bytes when the writes were done, the snapshot is %d: it was not held up mid-snapshot, the test did not write during it", sentBeforeEnd, snapshotBytes)
	}
	want := map[string]string{}
	w := f.do(t, req{method: "GET", target: "/v1/kv?prefix=m/"})
	for _, l := range lines(t, w.Body.String()) {
		want[l.Key] = fmt.Sprint(l.Values)
	}
	if len(mirror) != len(want) {
		t.Fatalf("the mirror built from the snapshot and the feed holds %d keys, the listing %d", len(mirror), len(want))
	}
	for k, v := range want {
		if mirror[k] != v {
			t.Fatalf("key %s: the mirror has %.40s, the listing %.40s", k, mirror[k], v)
		}
	}
}

// smallSocketBuffer is the socket buffer size, in bytes, of the
// connections in TestChangesSnapshot.
const smallSocketBuffer = 32 << 10

// countingListener gives its connections a small send buffer and counts
// the bytes written on them.
type countingListener struct {
	net.Listener
	written atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if err := conn.(*net.TCPConn).SetWriteBuffer(smallSocketBuffer); err != nil {
		conn.Close()
		return nil, err
	}
	return countingConn{Conn: conn, written: &l.written}, nil
}

type countingConn struct {
	net.Conn
	written *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// TestChangesContinuousIdle: a continuous feed left idle for 30 s, with
// heartbeat=5s, gets a heartbeat line carrying the cursor about every 5 s,
// so a proxy never sees a silent connection; a change then arrives at
// once, and closing Stop ends the stream with a line saying why.
func TestChangesContinuousIdle(t *testing.T) {
	t.Parallel()
	stop := make(chan struct{})
	f := newFixture(t, Options{Stop: stop})
	f.put(t, "a", "1", "")
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hr, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/changes?feed=continuous&heartbeat=5s&since=now", nil)
	resp, err := srv.Client().Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	next := func() (feedLine, time.Time) {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("the stream ended: %v", sc.Err())
		}
		var l feedLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		return l, time.Now()
	}
	begin := time.Now()
	prev := begin
	beats := 0
	for time.Since(begin) < 30*time.Second {
		l, at := next()
		if l.Type != LineHeartbeat || l.cursor() != 1 {
			t.Fatalf("idle stream sent %+v, want a heartbeat at cursor 1", l)
		}
		if gap := at.Sub(prev); gap > 8*time.Second || gap < 4*time.Second {
			t.Fatalf("heartbeat %d came %s after the previous line, want about 5s", beats+1, gap)
		}
		prev = at
		beats++
	}
	if beats < 6 {
		t.Fatalf("%d heartbeats in %s of idleness, want 6", beats, time.Since(begin))
	}
	f.put(t, "b", "2", "")
	if l, at := next(); l.Type != LineChange || l.Key != "b" || l.cursor() != 2 || at.Sub(prev) > 5*time.Second {
		t.Fatalf("after the write: %+v", l)
	}
	close(stop)
	if l, _ := next(); l.Type != LineError || l.Status != http.StatusServiceUnavailable || !strings.Contains(l.Error, "shutting down") {
		t.Fatalf("at shutdown: %+v", l)
	}
	if sc.Scan() {
		t.Fatalf("a line after the shutdown line: %s", sc.Text())
	}
	t.Logf("%d heartbeats over %s of idleness", beats, prev.Sub(begin).Round(time.Millisecond))
}

// TestChangesSlowReader: a reader that falls far behind is not cut off: it
// reads every change from storage, however many were written meanwhile.
func TestChangesSlowReader(t *testing.T) {
	f := newFixture(t, Options{})
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hr, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/changes?feed=continuous&since=now", nil)
	resp, err := srv.Client().Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	const n = 3000 // far more than a watcher's buffer (DefaultHubBuffer)
	for i := range n / 100 {
		ops := make([]changelog.WriteOp, 100)
		for j := range ops {
			ops[j] = changelog.WriteOp{Key: fmt.Sprintf("s/%d/%d", i, j), Value: []byte("v")}
		}
		if _, err := f.store.WriteTxn(ctx, ops); err != nil {
			t.Fatal(err)
		}
	}
	sc := bufio.NewScanner(resp.Body)
	for want := uint64(1); want <= n; want++ {
		if !sc.Scan() {
			t.Fatalf("the stream ended before cursor %d: %v", want, sc.Err())
		}
		var l feedLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.Type != LineChange || l.cursor() != want {
			t.Fatalf("line %s, want the change at cursor %d (%v)", sc.Text(), want, err)
		}
	}
}

// TestListKeysPaging: GET /v1/kv?prefix= with limit holds at most limit
// keys with live values and names the last in X-Repl-Next-After when more
// follow; after= continues, so the pages hold every live key once.
func TestListKeysPaging(t *testing.T) {
	f := newFixture(t, Options{})
	var want []string
	for i := range 23 {
		k := fmt.Sprintf("pg/%02d", i)
		f.put(t, k, "v", "")
		if i%5 == 2 {
			wantStatus(t, f.do(t, req{method: "DELETE", target: "/v1/kv/" + k}), http.StatusOK)
			continue
		}
		want = append(want, k)
	}
	f.put(t, "pz", "outside", "")
	var got []string
	after, pages := "", 0
	for {
		target := "/v1/kv?prefix=pg/&limit=5"
		if after != "" {
			target += "&after=" + url.QueryEscape(after)
		}
		w := f.do(t, req{method: "GET", target: target})
		wantStatus(t, w, http.StatusOK)
		page := lines(t, w.Body.String())
		pages++
		for _, l := range page {
			got = append(got, l.Key)
		}
		next := w.Header().Get(NextAfterHeader)
		if next == "" {
			if len(page) > 5 {
				t.Fatalf("last page holds %d keys", len(page))
			}
			break
		}
		if len(page) != 5 || next != page[4].Key {
			t.Fatalf("page %d holds %d keys and names %q next; want 5 and the last key", pages, len(page), next)
		}
		after = next
	}
	if !slices.Equal(got, want) || pages != 4 {
		t.Fatalf("%d pages gave %q, want 4 pages of %q", pages, got, want)
	}
	// A full last page says nothing more follows.
	w := f.do(t, req{method: "GET", target: "/v1/kv?prefix=pg/&limit=3&after=pg/18"})
	if ls := lines(t, w.Body.String()); len(ls) != 3 || w.Header().Get(NextAfterHeader) != "" {
		t.Fatalf("the last 3 keys: %d lines, %s %q", len(ls), NextAfterHeader, w.Header().Get(NextAfterHeader))
	}
	for _, tc := range []struct{ query, names string }{
		{"limit=0", `limit "0"`},
		{"after=" + strings.Repeat("a", 5000), "after is 5000 bytes"},
		{"page=2", `unknown query parameter "page"`},
	} {
		w := f.do(t, req{method: "GET", target: "/v1/kv?" + tc.query})
		if w.Code != http.StatusBadRequest || !strings.Contains(decode[errResp](t, w).Error, tc.names) {
			t.Errorf("?%.30s: %d %s; want 400 naming %s", tc.query, w.Code, w.Body.String(), tc.names)
		}
	}
}

// TestWatchLinesCarryCursor: a /v1/watch line names the change's cursor,
// so a watcher that fell behind continues with /v1/changes?since=.
func TestWatchLinesCarryCursor(t *testing.T) {
	hub := NewHub(0)
	defer hub.Close()
	st := openStore(t, "dc1", testRules(t), hub.Publish)
	ch, cancel := hub.Subscribe("")
	defer cancel()
	for _, k := range []string{"a", "b"} {
		if _, err := st.Write(context.Background(), changelog.WriteOp{Key: k, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	for want := uint64(1); want <= 2; want++ {
		if c := <-ch; c.Cursor != want {
			t.Fatalf("change %s has cursor %d, want %d", c.Key, c.Cursor, want)
		}
	}
	srv := httptest.NewServer(New(StoreBackend{Store: st}, Options{Watch: hub}))
	defer srv.Close()
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	hr, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/watch", nil)
	resp, err := srv.Client().Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := st.Write(ctx, changelog.WriteOp{Key: "c", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() {
		t.Fatal(sc.Err())
	}
	var l feedLine
	if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.Key != "c" || l.cursor() != 3 {
		t.Fatalf("watch line %s, want c at cursor 3 (%v)", sc.Text(), err)
	}
}
