package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
)

// remotePending writes key=value at dc2 without applying it at dc1, and
// returns the write.
func (f *fixture) remotePending(tb testing.TB, key, value string) changelog.WriteResult {
	tb.Helper()
	res, err := f.remote.Write(context.Background(), changelog.WriteOp{Key: key, Value: []byte(value)})
	if err != nil {
		tb.Fatal(err)
	}
	return res
}

func (f *fixture) apply(tb testing.TB, evs ...*event.Event) {
	tb.Helper()
	if _, err := f.store.Apply(context.Background(), evs, nil); err != nil {
		tb.Fatal(err)
	}
}

// want503 checks a read refused for what it carries: 503, Retry-After, and
// a message naming what is missing.
func want503(tb testing.TB, w *httptest.ResponseRecorder, missing string) {
	tb.Helper()
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), missing) {
		tb.Fatalf("answer %d, Retry-After %q, body %s; want 503 with Retry-After naming %s", w.Code, w.Header().Get("Retry-After"), w.Body, missing)
	}
}

// TestReadWithContext: GET /v1/kv/{key} with X-Repl-Context or
// ?min_context= is served only once this DC covers the context (the store
// here waits not at all: context_wait 0).
func TestReadWithContext(t *testing.T) {
	f := newFixture(t, Options{})
	res := f.remotePending(t, "k", "at-dc2")
	vctx := res.State.Clock.String()
	for _, r := range []req{
		{method: "GET", target: "/v1/kv/k", header: hdr(ContextHeader, vctx)},
		{method: "GET", target: "/v1/kv/k?min_context=" + url.QueryEscape(vctx)},
	} {
		w := f.do(t, r)
		want503(t, w, res.Event.Dot.String())
		if !strings.Contains(w.Body.String(), "or read at dc2") {
			t.Errorf("503 body %s does not say where to read", w.Body)
		}
	}
	// Without a context the read answers from what dc1 holds.
	wantStatus(t, f.do(t, req{method: "GET", target: "/v1/kv/k"}), http.StatusNotFound)
	f.apply(t, res.Event)
	w := f.do(t, req{method: "GET", target: "/v1/kv/k", header: hdr(ContextHeader, vctx)})
	wantStatus(t, w, http.StatusOK)
	if got := decode[keyJSON](t, w); len(got.Values) != 1 || string(got.Values[0]) != "at-dc2" {
		t.Errorf("read after the apply = %+v", got)
	}
}

// TestSessionToken: a write's answer carries its session token (header and
// body, merged with the request's); a read or a listing carrying the token
// of another DC's writes waits for them.
func TestSessionToken(t *testing.T) {
	f := newFixture(t, Options{})
	w := f.do(t, req{method: "PUT", target: "/v1/kv/p/a", body: "1"})
	wantStatus(t, w, http.StatusOK)
	mine := decode[WriteAnswer](t, w)
	res, _, err := f.store.Get("p/a")
	if err != nil {
		t.Fatal(err)
	}
	wantTok := event.MsgID("dc1", event.PartitionOf("p/a", testPartitions), res.Clock["dc1"])
	if mine.Session != wantTok || w.Header().Get(SessionHeader) != wantTok {
		t.Fatalf("session %q, header %q; want %q", mine.Session, w.Header().Get(SessionHeader), wantTok)
	}
	if mine.Replicated != 0 || w.Header().Get(ReplicatedHeader) != "" {
		t.Errorf("a write without X-Repl-Wait says replicated %d / %q", mine.Replicated, w.Header().Get(ReplicatedHeader))
	}

	// dc2 writes two keys under p/; dc1 has applied neither.
	b := f.remotePending(t, "p/b", "2")
	c := f.remotePending(t, "p/c", "3")
	tok := entryText(b.Event) + "," + entryText(c.Event) + "," + mine.Session

	// A write carrying the token waits for it too (its own entries are
	// covered): refused, nothing written.
	w = f.do(t, req{method: "PUT", target: "/v1/kv/p/d", body: "4", header: hdr(SessionHeader, tok)})
	want503(t, w, "the session names event dc2:")
	if _, ok, _ := f.store.Get("p/d"); ok {
		t.Fatal("a write refused for its session token was made")
	}
	for _, r := range []req{
		{method: "GET", target: "/v1/kv/p/b", header: hdr(SessionHeader, tok)},
		{method: "GET", target: "/v1/kv/p/b?min_session=" + url.QueryEscape(tok)},
		{method: "GET", target: "/v1/kv?prefix=p/", header: hdr(SessionHeader, entryText(b.Event), SessionHeader, entryText(c.Event))},
		{method: "GET", target: "/v1/kv?prefix=p/&min_session=" + url.QueryEscape(tok)},
	} {
		w := f.do(t, r)
		want503(t, w, "the session names event dc2:")
	}
	// With one of the two applied, the token is still not covered.
	f.apply(t, b.Event)
	w = f.do(t, req{method: "GET", target: "/v1/kv?prefix=p/", header: hdr(SessionHeader, tok)})
	want503(t, w, c.Event.Dot.String())

	f.apply(t, c.Event)
	w = f.do(t, req{method: "GET", target: "/v1/kv?prefix=p/", header: hdr(SessionHeader, tok)})
	wantStatus(t, w, http.StatusOK)
	if n := strings.Count(w.Body.String(), "\n"); n != 3 {
		t.Errorf("listing with the session token holds %d keys, want 3: %s", n, w.Body)
	}
	w = f.do(t, req{method: "PUT", target: "/v1/kv/p/d", body: "4", header: hdr(SessionHeader, tok)})
	wantStatus(t, w, http.StatusOK)
	// The answer's token covers the request's and the write.
	merged := decode[WriteAnswer](t, w).Session
	for _, e := range []string{entryText(b.Event), entryText(c.Event), "dc1:"} {
		if !strings.Contains(merged, e) {
			t.Errorf("answer token %q lacks %s", merged, e)
		}
	}
}

// TestReplicatedWait: X-Repl-Wait answers 200 with X-Repl-Replicated once
// enough DCs have applied the write, and 202 saying how far it got when
// the timeout passes first; the write stands either way.
func TestReplicatedWait(t *testing.T) {
	f := newFixture(t, Options{})
	w := f.do(t, req{method: "PUT", target: "/v1/kv/k", body: "1", header: hdr(WaitHeader, "1")})
	wantStatus(t, w, http.StatusOK)
	if got := decode[WriteAnswer](t, w); got.Replicated != 1 || w.Header().Get(ReplicatedHeader) != "1" {
		t.Errorf("X-Repl-Wait 1: replicated %d, header %q; want 1", got.Replicated, w.Header().Get(ReplicatedHeader))
	}

	w = f.do(t, req{method: "PUT", target: "/v1/kv/k", body: "2", header: hdr(WaitHeader, "all", WaitTimeoutHeader, "30ms")})
	wantStatus(t, w, http.StatusAccepted)
	got := decode[WriteAnswer](t, w)
	if got.Replicated != 1 || w.Header().Get(ReplicatedHeader) != "1" || !strings.Contains(got.Error, "only 1 of 2 DCs had applied the write within 30ms") || got.Dot == "" || got.Session == "" {
		t.Errorf("X-Repl-Wait all timing out: %+v, header %q", got, w.Header().Get(ReplicatedHeader))
	}
	if st, _, _ := f.store.Get("k"); st.Clock.String() != got.Context {
		t.Errorf("the write that timed out does not stand: dc1 holds %+v, the answer's context is %s", st, got.Context)
	}

	// dc2 reports having applied everything dc1 wrote: all is reached.
	f.store.SetPeerApplied("dc2", changelog.Applied{"dc1": {1000, 1000, 1000, 1000}})
	w = f.do(t, req{method: "DELETE", target: "/v1/kv/k", header: hdr(WaitHeader, "ALL")})
	wantStatus(t, w, http.StatusOK)
	if got := decode[WriteAnswer](t, w); got.Replicated != 2 || got.Error != "" || w.Header().Get(ReplicatedHeader) != "2" {
		t.Errorf("X-Repl-Wait all with dc2 caught up: %+v", got)
	}
}

func entryText(ev *event.Event) string { return event.MsgID(ev.Origin, ev.Partition, ev.Seq) }
