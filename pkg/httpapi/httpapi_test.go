package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
)

// The wire shapes, spelled out independently of the handler's types so a
// renamed field fails here.
type (
	keyResp struct {
		Key      string    `json:"key"`
		Context  string    `json:"context"`
		Values   [][]byte  `json:"values"`
		Siblings []sibResp `json:"siblings"`
		Conflict bool      `json:"conflict"`
		Resolver string    `json:"resolver"`
		Dot      string    `json:"dot"`
		Error    string    `json:"error"`
		// Expires and ExpiresTime: a value with a TTL.
		Expires     uint64 `json:"expires"`
		ExpiresTime string `json:"expires_time"`
	}
	sibResp struct {
		Value   []byte `json:"value"`
		Deleted bool   `json:"deleted"`
		Origin  string `json:"origin"`
		Dot     string `json:"dot"`
		HLC     uint64 `json:"hlc"`
		Expires uint64 `json:"expires"`
	}
	writeResp struct {
		Key     string `json:"key"`
		Context string `json:"context"`
		Dot     string `json:"dot"`
	}
	errResp struct {
		Error string `json:"error"`
	}
	conflictResp struct {
		ID        string `json:"id"`
		Key       string `json:"key"`
		Resolver  string `json:"resolver"`
		Status    string `json:"status"`
		Context   string `json:"context"`
		Kept      []sibResp
		Discarded []sibResp
	}
)

func strs(vals [][]byte) []string {
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = string(v)
	}
	return out
}

// put writes key=value with ctx ("" for a blind write) and checks the
// answer; it returns the new context.
func (f *fixture) put(t *testing.T, key, value, ctx string) string {
	t.Helper()
	h := http.Header{}
	if ctx != "" {
		h.Set(ContextHeader, ctx)
	}
	w := f.do(t, req{method: "PUT", target: "/v1/kv/" + key, body: value, header: h})
	wantStatus(t, w, http.StatusOK)
	got := decode[writeResp](t, w)
	if got.Key != key || got.Context == "" || got.Dot == "" {
		t.Fatalf("PUT %s: answer %+v, want key, context and dot", key, got)
	}
	if hc := w.Header().Get(ContextHeader); hc != got.Context {
		t.Fatalf("PUT %s: %s header %q, body context %q", key, ContextHeader, hc, got.Context)
	}
	return got.Context
}

func (f *fixture) get(t *testing.T, key string, code int) keyResp {
	t.Helper()
	w := f.do(t, req{method: "GET", target: "/v1/kv/" + key})
	wantStatus(t, w, code)
	got := decode[keyResp](t, w)
	if hc := w.Header().Get(ContextHeader); hc != got.Context {
		t.Fatalf("GET %s: %s header %q, body context %q", key, ContextHeader, hc, got.Context)
	}
	return got
}

func TestKVContexts(t *testing.T) {
	f := newFixture(t, Options{})

	ctx1 := f.put(t, "k", "v1", "")
	if ctx1 != "{dc1:1}" {
		t.Fatalf("first write's context %q, want {dc1:1}", ctx1)
	}
	got := f.get(t, "k", http.StatusOK)
	if got.Context != ctx1 || !slices.Equal(strs(got.Values), []string{"v1"}) || got.Conflict {
		t.Fatalf("after one write: %+v", got)
	}

	// A write with the read's context replaces the value.
	f.put(t, "k", "v2", got.Context)
	got = f.get(t, "k", http.StatusOK)
	if !slices.Equal(strs(got.Values), []string{"v2"}) || got.Conflict || len(got.Siblings) != 1 {
		t.Fatalf("after a write with the read's context: %+v, want only v2", got)
	}

	// A blind write under siblings keeps both, flagged as a conflict.
	f.put(t, "k", "v3", "")
	got = f.get(t, "k", http.StatusOK)
	if !slices.Equal(strs(got.Values), []string{"v2", "v3"}) || !got.Conflict || len(got.Siblings) != 2 || got.Resolver != "siblings" {
		t.Fatalf("after a blind write: %+v, want siblings v2 and v3 with conflict", got)
	}
	for _, sb := range got.Siblings {
		if sb.Origin != "dc1" || sb.Deleted || sb.HLC == 0 || !strings.HasPrefix(sb.Dot, "dc1:") {
			t.Fatalf("sibling %+v: want origin dc1, a dot and an HLC", sb)
		}
	}

	// Writing with that context resolves them.
	f.put(t, "k", "v4", got.Context)
	got = f.get(t, "k", http.StatusOK)
	if !slices.Equal(strs(got.Values), []string{"v4"}) || got.Conflict {
		t.Fatalf("after resolving: %+v, want only v4", got)
	}

	// A delete makes GET 404, with the context to write again with.
	w := f.do(t, req{method: "DELETE", target: "/v1/kv/k", header: hdr(ContextHeader, got.Context)})
	wantStatus(t, w, http.StatusOK)
	del := decode[writeResp](t, w)
	gone := f.get(t, "k", http.StatusNotFound)
	if gone.Error == "" || gone.Key != "k" || gone.Context != del.Context || gone.Context == "{}" {
		t.Fatalf("GET after delete: %+v, want an error, the key and the delete's context %s", gone, del.Context)
	}
	f.put(t, "k", "v5", gone.Context)
	got = f.get(t, "k", http.StatusOK)
	if !slices.Equal(strs(got.Values), []string{"v5"}) || len(got.Siblings) != 1 {
		t.Fatalf("after re-creating with the 404's context: %+v, want only v5 and no tombstone", got)
	}

	// An absent key is a 404 with the empty context.
	absent := f.get(t, "never", http.StatusNotFound)
	if absent.Context != "{}" {
		t.Fatalf("absent key's context %q, want {}", absent.Context)
	}
}

func TestKVKeysWithSlashes(t *testing.T) {
	f := newFixture(t, Options{})
	tests := []struct {
		target, key string
	}{
		{"/v1/kv/a/b/c", "a/b/c"},
		{"/v1/kv/a%2F%2Fb", "a//b"},
		{"/v1/kv/%2E%2E", ".."},
		{"/v1/kv/sp%20ace", "sp ace"},
		{"/v1/kv/%E2%82%AC", "€"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			w := f.do(t, req{method: "PUT", target: tt.target, body: "x"})
			wantStatus(t, w, http.StatusOK)
			if got := decode[writeResp](t, w).Key; got != tt.key {
				t.Fatalf("PUT %s stored key %q, want %q", tt.target, got, tt.key)
			}
			if _, ok, _ := f.store.Get(tt.key); !ok {
				t.Fatalf("store holds nothing for %q", tt.key)
			}
		})
	}
}

func TestResolverViews(t *testing.T) {
	f := newFixture(t, Options{})
	tests := []struct {
		key          string
		wantValues   []string
		wantSiblings int
		wantConflict bool
		wantResolver string
	}{
		// Concurrent writes at dc1 and dc2: siblings shows both,
		// lww shows one (dc2's write came later in HLC-then-DC order),
		// record shows both and flags them.
		{"s/doc", []string{"local", "remote"}, 2, true, "siblings"},
		{"l/doc", []string{"remote"}, 2, false, "lww"},
		{"r/doc", []string{"local", "remote"}, 2, true, "record"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			f.put(t, tt.key, "local", "")
			f.remoteWrite(t, tt.key, "remote")
			got := f.get(t, tt.key, http.StatusOK)
			if !slices.Equal(strs(got.Values), tt.wantValues) || len(got.Siblings) != tt.wantSiblings ||
				got.Conflict != tt.wantConflict || got.Resolver != tt.wantResolver {
				t.Fatalf("GET %s: values %q, %d siblings, conflict %v, resolver %s; want %q, %d, %v, %s",
					tt.key, strs(got.Values), len(got.Siblings), got.Conflict, got.Resolver,
					tt.wantValues, tt.wantSiblings, tt.wantConflict, tt.wantResolver)
			}
		})
	}
}

func TestListPrefix(t *testing.T) {
	f := newFixture(t, Options{})
	for _, k := range []string{"a/1", "a/2", "a/3", "b/1"} {
		f.put(t, k, "val-"+k, "")
	}
	w := f.do(t, req{method: "DELETE", target: "/v1/kv/a/2"})
	wantStatus(t, w, http.StatusOK)

	tests := []struct {
		target   string
		wantKeys []string
	}{
		{"/v1/kv?prefix=a/", []string{"a/1", "a/3"}},
		{"/v1/kv?prefix=a/&limit=1", []string{"a/1"}},
		{"/v1/kv", []string{"a/1", "a/3", "b/1"}},
		{"/v1/kv?prefix=zzz", nil},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			w := f.do(t, req{method: "GET", target: tt.target})
			wantStatus(t, w, http.StatusOK)
			if ct := w.Header().Get("Content-Type"); ct != "application/x-ndjson" {
				t.Fatalf("Content-Type %q, want application/x-ndjson", ct)
			}
			var keys []string
			sc := bufio.NewScanner(w.Body)
			for sc.Scan() {
				var line keyResp
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					t.Fatalf("line %q: %v", sc.Text(), err)
				}
				if want := "val-" + line.Key; len(line.Values) != 1 || string(line.Values[0]) != want || line.Context == "" {
					t.Fatalf("line %s: want one value %q and a context", sc.Text(), want)
				}
				keys = append(keys, line.Key)
			}
			if !slices.Equal(keys, tt.wantKeys) {
				t.Fatalf("keys %q, want %q", keys, tt.wantKeys)
			}
		})
	}
}

func TestDigest(t *testing.T) {
	f := newFixture(t, Options{})
	f.put(t, "a", "1", "")
	f.put(t, "b", "2", "")
	w := f.do(t, req{method: "GET", target: "/v1/digest"})
	wantStatus(t, w, http.StatusOK)
	got := decode[struct {
		Digest     string   `json:"digest"`
		Keys       int      `json:"keys"`
		Partitions []string `json:"partitions"`
	}](t, w)
	want, err := f.store.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != want.Hex() || got.Keys != 2 || len(got.Partitions) != testPartitions {
		t.Fatalf("digest %+v, want %s over 2 keys and %d partitions", got, want.Hex(), testPartitions)
	}
}

func TestConflicts(t *testing.T) {
	f := newFixture(t, Options{})
	f.put(t, "r/doc", "B", "")
	f.remoteWrite(t, "r/doc", "C")
	f.put(t, "l/doc", "B", "")
	f.remoteWrite(t, "l/doc", "C")

	w := f.do(t, req{method: "GET", target: "/v1/conflicts?status=open"})
	wantStatus(t, w, http.StatusOK)
	open := decode[[]conflictResp](t, w)
	if len(open) != 1 || open[0].Key != "r/doc" || open[0].Resolver != "record" || len(open[0].Kept) != 2 || open[0].Context == "" {
		t.Fatalf("open conflicts %+v, want the record of r/doc with both versions", open)
	}
	w = f.do(t, req{method: "GET", target: "/v1/conflicts?status=logged&prefix=l/"})
	wantStatus(t, w, http.StatusOK)
	logged := decode[[]conflictResp](t, w)
	if len(logged) != 1 || logged[0].Key != "l/doc" || len(logged[0].Discarded) != 1 || string(logged[0].Discarded[0].Value) != "B" {
		t.Fatalf("logged conflicts %+v, want lww's loser B of l/doc", logged)
	}
	w = f.do(t, req{method: "GET", target: "/v1/conflicts?status=open&prefix=nothing/"})
	wantStatus(t, w, http.StatusOK)
	if body := strings.TrimSpace(w.Body.String()); body != "[]" {
		t.Fatalf("empty listing %q, want []", body)
	}

	w = f.do(t, req{method: "GET", target: "/v1/conflicts/" + open[0].ID})
	wantStatus(t, w, http.StatusOK)
	if c := decode[conflictResp](t, w); c.ID != open[0].ID || c.Status != "open" {
		t.Fatalf("GET conflict: %+v", c)
	}

	resolveURL := "/v1/conflicts/" + open[0].ID + "/resolve"
	badBodies := []struct {
		name, body string
		code       int
	}{
		{"not json", `B+C`, http.StatusBadRequest},
		{"nothing", `{}`, http.StatusBadRequest},
		{"two values", `{"value_text":"a","delete":true}`, http.StatusBadRequest},
		{"unknown field", `{"vaule_text":"a"}`, http.StatusBadRequest},
		{"bad base64", `{"value":"!!"}`, http.StatusBadRequest},
		{"trailing", `{"value_text":"a"} {}`, http.StatusBadRequest},
	}
	for _, tt := range badBodies {
		t.Run(tt.name, func(t *testing.T) {
			w := f.do(t, req{method: "POST", target: resolveURL, body: tt.body})
			wantStatus(t, w, tt.code)
			if decode[errResp](t, w).Error == "" {
				t.Fatal("no error message")
			}
		})
	}

	w = f.do(t, req{method: "POST", target: resolveURL, body: `{"value_text":"B+C"}`})
	wantStatus(t, w, http.StatusOK)
	res := decode[keyResp](t, w)
	if !slices.Equal(strs(res.Values), []string{"B+C"}) || res.Conflict || len(res.Siblings) != 1 || res.Dot == "" {
		t.Fatalf("resolution answer %+v, want the one value B+C", res)
	}
	if got := f.get(t, "r/doc", http.StatusOK); !slices.Equal(strs(got.Values), []string{"B+C"}) {
		t.Fatalf("GET after resolving: %+v", got)
	}
	w = f.do(t, req{method: "GET", target: "/v1/conflicts/" + open[0].ID})
	wantStatus(t, w, http.StatusOK)
	if c := decode[conflictResp](t, w); c.Status != "resolved" {
		t.Fatalf("conflict after resolving: status %q, want resolved", c.Status)
	}
	for _, want := range []string{`"resolved_to":[{"origin":"dc1"`, `"value_text":"B+C"`, `"resolved_by":"dc1"`, `"resolved_via":"resolve"`, `"detected_time":"`, `"resolved_time":"`, `"hlc_time":"`} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("resolved record %s lacks %s", w.Body.String(), want)
		}
	}

	refused := []struct {
		name, id string
		code     int
		msg      string
	}{
		{"again", open[0].ID, http.StatusConflict, "not open"},
		{"logged", logged[0].ID, http.StatusConflict, "automatically"},
		{"unknown", "nope", http.StatusNotFound, "no conflict"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			w := f.do(t, req{method: "POST", target: "/v1/conflicts/" + tt.id + "/resolve", body: `{"delete":true}`})
			wantStatus(t, w, tt.code)
			if msg := decode[errResp](t, w).Error; !strings.Contains(msg, tt.msg) {
				t.Fatalf("error %q, want it to mention %q", msg, tt.msg)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	f := newFixture(t, Options{Token: "s3cret"})
	tests := []struct {
		name, target, auth string
		code               int
	}{
		{"healthz needs no token", "/healthz", "", http.StatusOK},
		{"readyz needs no token", "/readyz", "", http.StatusOK},
		{"no token", "/v1/status", "", http.StatusUnauthorized},
		{"wrong token", "/v1/status", "Bearer nope", http.StatusUnauthorized},
		{"token prefix", "/v1/status", "Bearer s3cre", http.StatusUnauthorized},
		{"basic scheme", "/v1/status", "Basic s3cret", http.StatusUnauthorized},
		{"right token", "/v1/status", "Bearer s3cret", http.StatusOK},
		{"scheme case", "/v1/status", "bearer s3cret", http.StatusOK},
		{"unknown route without token", "/nope", "", http.StatusUnauthorized},
		{"kv without token", "/v1/kv/x", "", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.auth != "" {
				h.Set("Authorization", tt.auth)
			}
			w := f.do(t, req{method: "GET", target: tt.target, header: h})
			wantStatus(t, w, tt.code)
			if tt.code == http.StatusUnauthorized && decode[errResp](t, w).Error == "" {
				t.Fatal("401 without an error message")
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	f := newFixture(t, Options{MaxBodyBytes: 16, MaxValueBytes: 16, MaxKeyBytes: 8})
	tests := []struct {
		name string
		r    req
		code int
		msg  string // a fragment the error must contain
	}{
		{"oversize body", req{method: "PUT", target: "/v1/kv/k", body: strings.Repeat("x", 17)}, http.StatusRequestEntityTooLarge, "the value is over limits.max_value_bytes (16 bytes)"},
		{"bad context", req{method: "PUT", target: "/v1/kv/k", header: hdr(ContextHeader, "{dc1:x}")}, http.StatusBadRequest, ContextHeader},
		{"bad context id", req{method: "DELETE", target: "/v1/kv/k", header: hdr(ContextHeader, "{d c:1}")}, http.StatusBadRequest, ContextHeader},
		{"absurd counter", req{method: "PUT", target: "/v1/kv/k", header: hdr(ContextHeader, "{dc1:18446744073709551615}")}, http.StatusBadRequest, "absurd"},
		{"two contexts", req{method: "PUT", target: "/v1/kv/k", header: hdr(ContextHeader, "{}", ContextHeader, "{}")}, http.StatusBadRequest, "2 times"},
		{"empty key", req{method: "PUT", target: "/v1/kv/"}, http.StatusBadRequest, "empty"},
		{"no key", req{method: "PUT", target: "/v1/kv"}, http.StatusBadRequest, "needs a key"},
		{"long key", req{method: "GET", target: "/v1/kv/123456789"}, http.StatusBadRequest, "limit"},
		{"invalid utf-8", req{method: "PUT", target: "/v1/kv/%FF"}, http.StatusBadRequest, "UTF-8"},
		{"control char", req{method: "GET", target: "/v1/kv/a%0Ab"}, http.StatusBadRequest, "control"},
		{"unencoded empty segment", req{method: "GET", target: "/v1/kv/a//b"}, http.StatusBadRequest, "percent-encode"},
		{"unencoded dot segment", req{method: "PUT", target: "/v1/kv/a/../b"}, http.StatusBadRequest, "percent-encode"},
		{"unknown route", req{method: "GET", target: "/v2/kv/a"}, http.StatusNotFound, "no route"},
		{"wrong method", req{method: "OPTIONS", target: "/v1/kv/a"}, http.StatusMethodNotAllowed, "not allowed"},
		{"post without op", req{method: "POST", target: "/v1/kv/a"}, http.StatusBadRequest, "needs ?op=incr"},
		{"wrong method on digest", req{method: "DELETE", target: "/v1/digest"}, http.StatusMethodNotAllowed, "GET"},
		{"unknown parameter", req{method: "GET", target: "/v1/kv?prefx=a"}, http.StatusBadRequest, "prefix, limit"},
		{"repeated parameter", req{method: "GET", target: "/v1/kv?prefix=a&prefix=b"}, http.StatusBadRequest, "2 times"},
		{"bad limit", req{method: "GET", target: "/v1/kv?limit=-1"}, http.StatusBadRequest, "positive"},
		{"bad escape in query", req{method: "GET", target: "/v1/kv?prefix=%zz"}, http.StatusBadRequest, "malformed"},
		{"bad status", req{method: "GET", target: "/v1/conflicts?status=closed"}, http.StatusBadRequest, "open, logged or resolved"},
		{"resolution too large", req{method: "POST", target: "/v1/conflicts/x/resolve", body: `{"value_text":"` + strings.Repeat("x", 17) + `"}`}, http.StatusRequestEntityTooLarge, "the value is 17 bytes, over limits.max_value_bytes (16 bytes)"},
		{"watch disabled", req{method: "GET", target: "/v1/watch"}, http.StatusNotFound, "not enabled"},
		{"bad session", req{method: "PUT", target: "/v1/kv/k", header: hdr(SessionHeader, "dc1:0")}, http.StatusBadRequest, SessionHeader + " is not a valid session token: entry 1 \"dc1:0\""},
		{"session of unknown DC", req{method: "DELETE", target: "/v1/kv/k", header: hdr(SessionHeader, "dc1:0:1,dc9:0:1")}, http.StatusBadRequest, `entry 2 "dc9:0:1": DC "dc9" is not one of dc1, dc2`},
		{"session partition out of range", req{method: "GET", target: "/v1/kv/k?min_session=dc2:4:1"}, http.StatusBadRequest, "partition 4 is not in 0..3"},
		{"session too long", req{method: "GET", target: "/v1/kv", header: hdr(SessionHeader, strings.Repeat("dc2:1:1,", 4097))}, http.StatusBadRequest, "more than 4096 entries"},
		{"session twice", req{method: "GET", target: "/v1/kv/k?min_session=dc2:0:1", header: hdr(SessionHeader, "dc2:0:1")}, http.StatusBadRequest, "both X-Repl-Session and ?min_session="},
		{"context twice on a read", req{method: "GET", target: "/v1/kv/k?min_context={}", header: hdr(ContextHeader, "{}")}, http.StatusBadRequest, "both X-Repl-Context and ?min_context="},
		{"bad context on a read", req{method: "GET", target: "/v1/kv/k?min_context=dc2:1"}, http.StatusBadRequest, ContextHeader},
		{"unknown DC in a read's context", req{method: "GET", target: "/v1/kv/k", header: hdr(ContextHeader, "{dc9:1}")}, http.StatusBadRequest, `context names dc "dc9"`},
		{"context on a listing", req{method: "GET", target: "/v1/kv?prefix=a", header: hdr(ContextHeader, "{dc2:1}")}, http.StatusBadRequest, "send the session token"},
		{"min_context on a listing", req{method: "GET", target: "/v1/kv?min_context={dc2:1}"}, http.StatusBadRequest, "send the session token"},
		{"wait zero", req{method: "PUT", target: "/v1/kv/k", header: hdr(WaitHeader, "0")}, http.StatusBadRequest, WaitHeader + `: "0" is not a number of DCs: want 1..2`},
		{"wait over the DC count", req{method: "PUT", target: "/v1/kv/k", header: hdr(WaitHeader, "3")}, http.StatusBadRequest, WaitHeader + `: "3" is not a number of DCs`},
		{"wait garbage", req{method: "DELETE", target: "/v1/kv/k", header: hdr(WaitHeader, "most")}, http.StatusBadRequest, WaitHeader},
		{"wait empty", req{method: "PUT", target: "/v1/kv/k", header: hdr(WaitHeader, "")}, http.StatusBadRequest, WaitHeader + " is empty"},
		{"wait twice", req{method: "PUT", target: "/v1/kv/k", header: hdr(WaitHeader, "1", WaitHeader, "2")}, http.StatusBadRequest, "2 times"},
		{"wait timeout too long", req{method: "PUT", target: "/v1/kv/k", header: hdr(WaitHeader, "all", WaitTimeoutHeader, "2m")}, http.StatusBadRequest, WaitTimeoutHeader + `: "2m" is not a duration in (0, 1m0s]`},
		{"wait timeout garbage", req{method: "PUT", target: "/v1/kv/k", header: hdr(WaitHeader, "all", WaitTimeoutHeader, "5")}, http.StatusBadRequest, WaitTimeoutHeader},
		{"wait timeout alone", req{method: "PUT", target: "/v1/kv/k", header: hdr(WaitTimeoutHeader, "1s")}, http.StatusBadRequest, "X-Repl-Wait-Timeout is given without X-Repl-Wait"},
		{"metrics disabled", req{method: "GET", target: "/metrics"}, http.StatusNotFound, "not enabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := f.do(t, tt.r)
			wantStatus(t, w, tt.code)
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q, want application/json", ct)
			}
			if msg := decode[errResp](t, w).Error; !strings.Contains(msg, tt.msg) {
				t.Fatalf("error %q, want it to mention %q", msg, tt.msg)
			}
		})
	}
	if n, err := f.store.Digest(); err != nil || n.Keys != 0 {
		t.Fatalf("bad requests stored %d keys (err %v), want none", n.Keys, err)
	}
}

func TestMethodNotAllowedListsMethods(t *testing.T) {
	f := newFixture(t, Options{})
	w := f.do(t, req{method: "OPTIONS", target: "/v1/kv/a"})
	wantStatus(t, w, http.StatusMethodNotAllowed)
	if got := w.Header().Get("Allow"); got != "GET, PUT, DELETE, POST, PATCH, HEAD" {
		t.Fatalf("Allow %q, want GET, PUT, DELETE, POST, PATCH, HEAD", got)
	}
}

// TestValueLimitOneStatus: a value over the value limit is 413 naming
// limits.max_value_bytes, whichever layer sees it first: the handler (a
// PUT body, a resolution, a transaction op) or the store (whose limit may
// be the lower one), never a 400.
func TestValueLimitOneStatus(t *testing.T) {
	big := strings.Repeat("x", 20)
	rules := testRules(t)
	st, err := changelog.Open("data-small", changelog.Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: testPartitions,
		FS: vfs.NewMem(), Clock: &counterClock{}, Resolvers: rules, Limits: event.Limits{MaxValueBytes: 16}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"handler limit", Options{MaxBodyBytes: 1 << 20, MaxValueBytes: 16}},
		{"store limit", Options{MaxBodyBytes: 1 << 20, MaxValueBytes: 1 << 20}},
	} {
		h := New(StoreBackend{Store: st, Rules: rules}, tc.opts)
		for _, r := range []req{
			{method: "PUT", target: "/v1/kv/k", body: big},
			{method: "POST", target: "/v1/txn", body: `{"ops":[{"op":"put","key":"a","value_text":"` + big + `"}]}`},
		} {
			w := serve(h, r)
			wantStatus(t, w, http.StatusRequestEntityTooLarge)
			if msg := decode[errResp](t, w).Error; !strings.Contains(msg, "limits.max_value_bytes (16 bytes)") {
				t.Errorf("%s: %s %s: error %q does not name limits.max_value_bytes", tc.name, r.method, r.target, msg)
			}
		}
	}
}

func TestHealthz(t *testing.T) {
	rules := testRules(t)
	st := openStore(t, "dc1", rules, nil)
	tests := []struct {
		name  string
		ready error
		code  int
	}{
		{"ready", nil, http.StatusOK},
		{"not ready", errors.New("bridge not started"), http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := New(StoreBackend{Store: st, Rules: rules, ReadyFn: func() error { return tt.ready }}, Options{})
			w := serve(h, req{method: "GET", target: "/healthz"})
			wantStatus(t, w, tt.code)
			if tt.ready != nil && !strings.Contains(decode[errResp](t, w).Error, tt.ready.Error()) {
				t.Fatalf("503 body %q does not give the reason", w.Body.String())
			}
		})
	}
}

// TestReadyz: /readyz is 503 while the sidecar is unhealthy or not caught
// up, with the readiness detail as its body, and 200 once both hold; a
// probe without the token (one is set) gets only the verdict.
func TestReadyz(t *testing.T) {
	st := openStore(t, "dc1", nil, nil)
	tests := []struct {
		name    string
		healthy error
		ready   bool
		token   bool
		code    int
		body    string
	}{
		{"caught up", nil, true, true, http.StatusOK, `{"ready":true,"why":"caught up"}`},
		{"catching up", nil, false, true, http.StatusServiceUnavailable, `{"ready":false,"why":"waiting for dc2"}`},
		{"unhealthy", errors.New("not connected to NATS"), true, true, http.StatusServiceUnavailable, `{"error":"not healthy: not connected to NATS","ready":false}`},
		{"caught up, no token", nil, true, false, http.StatusOK, `{"ready":true}`},
		{"catching up, no token", nil, false, false, http.StatusServiceUnavailable, `{"ready":false}`},
		{"unhealthy, no token", errors.New("not connected to NATS"), true, false, http.StatusServiceUnavailable, `{"error":"not healthy","ready":false}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			why := "caught up"
			if !tt.ready {
				why = "waiting for dc2"
			}
			h := New(StoreBackend{Store: st, ReadyFn: func() error { return tt.healthy },
				ReadinessFn: func() (bool, any) { return tt.ready, map[string]any{"ready": tt.ready, "why": why} }}, Options{Token: "t"})
			r := req{method: "GET", target: "/readyz"}
			if tt.token {
				r.header = hdr("Authorization", "Bearer t")
			}
			w := serve(h, r)
			wantStatus(t, w, tt.code)
			if got := strings.TrimSpace(w.Body.String()); got != tt.body {
				t.Fatalf("body %s, want %s", got, tt.body)
			}
		})
	}
}

func TestStatus(t *testing.T) {
	st := openStore(t, "dc1", nil, nil)
	h := New(StoreBackend{Store: st, StatusFn: func() any { return map[string]string{"dc": "dc1", "topology": "mesh"} }}, Options{})
	w := serve(h, req{method: "GET", target: "/v1/status"})
	wantStatus(t, w, http.StatusOK)
	if got := decode[map[string]string](t, w); got["topology"] != "mesh" {
		t.Fatalf("status %v", got)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, Options{Registry: reg})
	f.put(t, "k", "v", "")
	f.do(t, req{method: "GET", target: "/nope"})
	// A second handler on the same registry shares the collectors.
	New(StoreBackend{Store: f.store}, Options{Registry: reg})

	w := f.do(t, req{method: "GET", target: "/metrics"})
	wantStatus(t, w, http.StatusOK)
	body := w.Body.String()
	for _, want := range []string{
		`replicator_http_requests_total{code="200",method="PUT",route="PUT /v1/kv/{key...}"} 1`,
		`replicator_http_requests_total{code="404",method="GET",route="unmatched"} 1`,
		`replicator_http_request_duration_seconds_count{method="PUT",route="PUT /v1/kv/{key...}"} 1`,
		`replicator_http_watchers 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// panicBackend panics on every read, to exercise the last-resort recovery.
type panicBackend struct{ Backend }

func (panicBackend) Get(string) (dvv.State, bool, error) { panic("boom") }

func TestRecoverPanic(t *testing.T) {
	h := New(panicBackend{}, Options{Logger: slog.New(slog.DiscardHandler)})
	w := serve(h, req{method: "GET", target: "/v1/kv/k"})
	wantStatus(t, w, http.StatusInternalServerError)
	if decode[errResp](t, w).Error == "" {
		t.Fatal("500 without an error message")
	}
}

func TestWatch(t *testing.T) {
	hub := NewHub(0)
	defer hub.Close()
	rules := testRules(t)
	st := openStore(t, "dc1", rules, hub.Publish)
	srv := httptest.NewServer(New(StoreBackend{Store: st, Rules: rules}, Options{Watch: hub}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/watch?prefix=w/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("watch answered %s, %q", resp.Status, resp.Header.Get("Content-Type"))
	}

	// The subscription is live once the headers arrive.
	for _, k := range []string{"x/other", "w/1"} {
		if _, err := st.Write(ctx, changelog.WriteOp{Key: k, Value: []byte("v-" + k)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Write(ctx, changelog.WriteOp{Key: "w/1", Delete: true}); err != nil {
		t.Fatal(err)
	}
	type line struct {
		keyResp
		Op      string `json:"op"`
		Origin  string `json:"origin"`
		Deleted bool   `json:"deleted"`
	}
	sc := bufio.NewScanner(resp.Body)
	var got []line
	for len(got) < 2 && sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, l)
	}
	if len(got) != 2 {
		t.Fatalf("got %d lines before the stream ended (%v), want 2", len(got), sc.Err())
	}
	if l := got[0]; l.Key != "w/1" || l.Op != "put" || l.Origin != "dc1" || l.Deleted || !slices.Equal(strs(l.Values), []string{"v-w/1"}) {
		t.Fatalf("first line %+v, want the put of w/1", l)
	}
	if l := got[1]; l.Key != "w/1" || l.Op != "delete" || !l.Deleted || len(l.Values) != 0 || l.Context == "" {
		t.Fatalf("second line %+v, want the delete of w/1", l)
	}
}

// closedSource is a WatchSource whose subscriber has already fallen behind.
type closedSource struct{}

func (closedSource) Subscribe(string) (<-chan changelog.Change, func()) {
	ch := make(chan changelog.Change)
	close(ch)
	return ch, func() {}
}

func TestWatchFellBehind(t *testing.T) {
	st := openStore(t, "dc1", nil, nil)
	h := New(StoreBackend{Store: st}, Options{Watch: closedSource{}})
	w := serve(h, req{method: "GET", target: "/v1/watch"})
	wantStatus(t, w, http.StatusOK)
	if got := strings.TrimSpace(w.Body.String()); got != `{"error":"watcher fell behind; reconnect"}` {
		t.Fatalf("stream %q, want the fell-behind line", got)
	}
}

func TestHub(t *testing.T) {
	change := func(k string) changelog.Change { return changelog.Change{Key: k} }
	keys := func(ch <-chan changelog.Change) (out []string, closed bool) {
		for {
			select {
			case c, ok := <-ch:
				if !ok {
					return out, true
				}
				out = append(out, c.Key)
			default:
				return out, false
			}
		}
	}

	hub := NewHub(2)
	slow, cancelSlow := hub.Subscribe("")
	filtered, cancelFiltered := hub.Subscribe("a/")
	hub.Publish([]changelog.Change{change("a/1"), change("b/1"), change("a/2")})

	if got, closed := keys(slow); !slices.Equal(got, []string{"a/1", "b/1"}) || !closed {
		t.Fatalf("slow subscriber got %q, closed %v; want the two that fit, then closed", got, closed)
	}
	if got, closed := keys(filtered); !slices.Equal(got, []string{"a/1", "a/2"}) || closed {
		t.Fatalf("prefix subscriber got %q, closed %v; want a/1 and a/2, still open", got, closed)
	}
	cancelSlow() // after the hub dropped it: no double close
	cancelFiltered()
	cancelFiltered()
	if _, closed := keys(filtered); !closed {
		t.Fatal("cancel did not close the channel")
	}

	hub.Close()
	hub.Close()
	late, _ := hub.Subscribe("")
	if _, closed := keys(late); !closed || !hub.Closed() {
		t.Fatal("subscribing to a closed hub must give a closed channel")
	}
	hub.Publish([]changelog.Change{change("a/3")}) // no subscribers, no panic
}

// TestContextAheadIs503: a write whose context names an event of dc2 that
// dc1 has not applied (the client read at dc2, which is ahead) answers 503
// with Retry-After and a message naming the event, and writes nothing;
// once dc1 has applied it, the same request succeeds.
func TestContextAheadIs503(t *testing.T) {
	f := newFixture(t, Options{})
	res, err := f.remote.Write(context.Background(), changelog.WriteOp{Key: "k", Value: []byte("at-dc2")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := res.State.Clock.String()
	put := req{method: "PUT", target: "/v1/kv/k", body: "v", header: hdr("X-Repl-Context", ctx)}
	w := f.do(t, put)
	wantStatus(t, w, http.StatusServiceUnavailable)
	if w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), res.Event.Dot.String()) {
		t.Fatalf("503 answer: Retry-After %q, body %s; want Retry-After and the body naming %s", w.Header().Get("Retry-After"), w.Body, res.Event.Dot)
	}
	if _, ok, err := f.store.Get("k"); err != nil || ok {
		t.Fatalf("the refused write left state (ok %t, err %v)", ok, err)
	}
	if _, err := f.store.Apply(context.Background(), []*event.Event{res.Event}, nil); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, f.do(t, put), http.StatusOK)
}

// TestConflictPaging: a listing holds at most limit entries (default 1000)
// and names the last id in X-Repl-Next-After when more follow; after=
// continues from there, so the pages together hold every entry once.
func TestConflictPaging(t *testing.T) {
	f := newFixture(t, Options{})
	const n = DefaultConflictLimit + 1
	for i := range n {
		key := fmt.Sprintf("l/%04d", i)
		f.put(t, key, "B", "")
		f.remoteWrite(t, key, "C")
	}
	w := f.do(t, req{method: "GET", target: "/v1/conflicts"})
	wantStatus(t, w, http.StatusOK)
	if got := decode[[]conflictResp](t, w); len(got) != DefaultConflictLimit || w.Header().Get(NextAfterHeader) != got[len(got)-1].ID {
		t.Fatalf("default listing: %d entries, %s %q; want %d and the last id", len(got), NextAfterHeader, w.Header().Get(NextAfterHeader), DefaultConflictLimit)
	}
	seen := map[string]bool{}
	after, pages := "", 0
	for {
		target := "/v1/conflicts?limit=300"
		if after != "" {
			target += "&after=" + url.QueryEscape(after)
		}
		w := f.do(t, req{method: "GET", target: target})
		wantStatus(t, w, http.StatusOK)
		page := decode[[]conflictResp](t, w)
		pages++
		for _, c := range page {
			if seen[c.ID] {
				t.Fatalf("page %d repeats %s", pages, c.ID)
			}
			seen[c.ID] = true
		}
		if after = w.Header().Get(NextAfterHeader); after == "" {
			break
		}
		if len(page) != 300 {
			t.Fatalf("page %d holds %d entries and says more follow; want 300", pages, len(page))
		}
	}
	if len(seen) != n || pages != 4 {
		t.Fatalf("%d pages held %d entries, want 4 pages and %d", pages, len(seen), n)
	}
	w = f.do(t, req{method: "GET", target: fmt.Sprintf("/v1/conflicts?limit=%d", MaxConflictLimit+1)})
	wantStatus(t, w, http.StatusBadRequest)
}

// TestTooManySiblings: a blind PUT, or a transaction's blind op, that would
// add a sibling to a key holding limits.max_siblings is a 409 naming the
// limit; the PUT with the read's context is taken.
func TestTooManySiblings(t *testing.T) {
	rules := testRules(t)
	st, err := changelog.Open("data-sibs", changelog.Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: testPartitions,
		FS: vfs.NewMem(), Clock: &counterClock{}, Resolvers: rules, MaxSiblings: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := New(StoreBackend{Store: st, Rules: rules}, Options{MaxBodyBytes: 1 << 20})
	for _, v := range []string{"a", "b"} {
		if w := serve(h, req{method: "PUT", target: "/v1/kv/k", body: v}); w.Code >= 300 {
			t.Fatalf("blind PUT %s: %d %s", v, w.Code, w.Body)
		}
	}
	for _, r := range []req{
		{method: "PUT", target: "/v1/kv/k", body: "c"},
		{method: "POST", target: "/v1/txn", body: `{"ops":[{"op":"put","key":"other","value_text":"x"},{"op":"put","key":"k","value_text":"c"}]}`},
	} {
		w := serve(h, r)
		wantStatus(t, w, http.StatusConflict)
		if msg := decode[errResp](t, w).Error; !strings.Contains(msg, "limits.max_siblings (2)") || !strings.Contains(msg, "context") {
			t.Errorf("%s %s: error %q does not name limits.max_siblings and the context", r.method, r.target, msg)
		}
	}
	read := serve(h, req{method: "GET", target: "/v1/kv/k"})
	wantStatus(t, read, http.StatusOK)
	w := serve(h, req{method: "PUT", target: "/v1/kv/k", body: "c", header: hdr(ContextHeader, read.Header().Get(ContextHeader))})
	if w.Code >= 300 {
		t.Fatalf("PUT with the read's context: %d %s", w.Code, w.Body)
	}
	if got := decode[keyResp](t, serve(h, req{method: "GET", target: "/v1/kv/k"})); len(got.Values) != 1 {
		t.Fatalf("after the PUT with the read's context k shows %d values, want 1", len(got.Values))
	}
}
