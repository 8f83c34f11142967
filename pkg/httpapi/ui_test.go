package httpapi

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestStatusPageAuth checks the token rule around the status page: the page
// and its assets hold no data and load without the token, like /healthz;
// every API route they call still needs it, and no path trick reaches an
// API route through the page's exemption.
func TestStatusPageAuth(t *testing.T) {
	f := newFixture(t, Options{Token: "s3cret"})
	tests := []struct {
		name, target, auth string
		code               int
		contentType        string
	}{
		{"page without token", "/ui", "", http.StatusOK, "text/html; charset=utf-8"},
		{"page with slash", "/ui/", "", http.StatusOK, "text/html; charset=utf-8"},
		{"page with query token", "/ui?token=s3cret", "", http.StatusOK, "text/html; charset=utf-8"},
		{"script", "/ui/app.js", "", http.StatusOK, "text/javascript; charset=utf-8"},
		{"style", "/ui/style.css", "", http.StatusOK, "text/css; charset=utf-8"},
		{"unknown asset", "/ui/secret.json", "", http.StatusNotFound, "application/json"},
		{"deadletters without token", "/v1/deadletters", "", http.StatusUnauthorized, "application/json"},
		{"deadletters wrong token", "/v1/deadletters", "Bearer nope", http.StatusUnauthorized, "application/json"},
		{"status without token", "/v1/status", "", http.StatusUnauthorized, "application/json"},
		{"dot-dot out of the page", "/ui/../v1/status", "", http.StatusUnauthorized, "application/json"},
		{"encoded dot-dot stays in the page", "/ui/%2e%2e/v1/status", "", http.StatusNotFound, "application/json"},
		{"page prefix lookalike", "/uix", "", http.StatusUnauthorized, "application/json"},
		{"status with token", "/v1/status", "Bearer s3cret", http.StatusOK, "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := f.do(t, req{method: "GET", target: tt.target, header: hdr("Authorization", tt.auth)})
			wantStatus(t, w, tt.code)
			if got := w.Header().Get("Content-Type"); got != tt.contentType {
				t.Errorf("Content-Type %q, want %q", got, tt.contentType)
			}
		})
	}
	if w := f.do(t, req{method: "POST", target: "/ui"}); w.Code == http.StatusOK {
		t.Errorf("POST /ui: status %d, want an error", w.Code)
	}
}

// fakeDeadLetters records the limit it was asked for.
type fakeDeadLetters struct {
	limits []int
	out    DeadLetters
	err    error
}

func (f *fakeDeadLetters) read(_ context.Context, limit int) (DeadLetters, error) {
	f.limits = append(f.limits, limit)
	return f.out, f.err
}

func TestDeadLettersParams(t *testing.T) {
	st := openStore(t, "dc1", nil, nil)
	fake := &fakeDeadLetters{}
	h := New(StoreBackend{Store: st, DeadLettersFn: fake.read}, Options{})
	tests := []struct {
		target string
		code   int
		msg    string // in the error body
		limit  int    // passed to the backend on success
	}{
		{"/v1/deadletters", http.StatusOK, "", DefaultDeadLetters},
		{"/v1/deadletters?limit=1", http.StatusOK, "", 1},
		{"/v1/deadletters?limit=1000", http.StatusOK, "", MaxDeadLetters},
		{"/v1/deadletters?limit=0", http.StatusBadRequest, "from 1 to 1000", 0},
		{"/v1/deadletters?limit=-3", http.StatusBadRequest, "from 1 to 1000", 0},
		{"/v1/deadletters?limit=1001", http.StatusBadRequest, "from 1 to 1000", 0},
		{"/v1/deadletters?limit=ten", http.StatusBadRequest, `limit "ten"`, 0},
		{"/v1/deadletters?limit=", http.StatusOK, "", DefaultDeadLetters},
		{"/v1/deadletters?limit=1&limit=2", http.StatusBadRequest, "given 2 times", 0},
		{"/v1/deadletters?since=4", http.StatusBadRequest, `unknown query parameter "since"`, 0},
		{"/v1/deadletters?limit=%zz", http.StatusBadRequest, "malformed", 0},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			fake.limits = nil
			w := serve(h, req{method: "GET", target: tt.target})
			wantStatus(t, w, tt.code)
			if tt.code != http.StatusOK {
				if msg := decode[errResp](t, w).Error; !strings.Contains(msg, tt.msg) {
					t.Errorf("error %q, want it to mention %q", msg, tt.msg)
				}
				if len(fake.limits) != 0 {
					t.Errorf("bad request reached the backend with limits %v", fake.limits)
				}
				return
			}
			if !slices.Equal(fake.limits, []int{tt.limit}) {
				t.Errorf("backend asked for limits %v, want [%d]", fake.limits, tt.limit)
			}
		})
	}
}

func TestDeadLettersBody(t *testing.T) {
	st := openStore(t, "dc1", nil, nil)
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	fake := &fakeDeadLetters{out: DeadLetters{Total: 7, DeadLetters: []DeadLetter{
		{Seq: 7, Time: at, Reason: "malformed event", Upstream: "dc2", Subject: "repl.dc2.3", StreamSeq: 41, MsgID: "dc2:3:9", Size: 12},
	}}}
	h := New(StoreBackend{Store: st, DeadLettersFn: fake.read}, Options{})
	w := serve(h, req{method: "GET", target: "/v1/deadletters"})
	wantStatus(t, w, http.StatusOK)
	want := `{"dead_letters":[{"seq":7,"time":"2025-01-02T03:04:05Z","reason":"malformed event","upstream":"dc2","subject":"repl.dc2.3","stream_seq":41,"msg_id":"dc2:3:9","size":12}],"total":7}`
	if got := strings.TrimSpace(w.Body.String()); got != want {
		t.Errorf("body\n%s\nwant\n%s", got, want)
	}

	fake.out = DeadLetters{}
	w = serve(h, req{method: "GET", target: "/v1/deadletters"})
	wantStatus(t, w, http.StatusOK)
	if got := strings.TrimSpace(w.Body.String()); got != `{"dead_letters":[],"total":0}` {
		t.Errorf("empty stream: body %s, want an empty list", got)
	}

	fake.err = errors.New("nats: no responders available for request")
	w = serve(h, req{method: "GET", target: "/v1/deadletters"})
	wantStatus(t, w, http.StatusServiceUnavailable)
	if msg := decode[errResp](t, w).Error; !strings.Contains(msg, "no responders") || !strings.Contains(msg, "NATS connection") {
		t.Errorf("backend failure: error %q, want the cause and what to check", msg)
	}

	// Without a dead-letter reader (no replication) the route says so.
	w = serve(New(StoreBackend{Store: st}, Options{}), req{method: "GET", target: "/v1/deadletters"})
	wantStatus(t, w, http.StatusNotFound)
	if msg := decode[errResp](t, w).Error; !strings.Contains(msg, "without replication") {
		t.Errorf("no reader: error %q", msg)
	}
}
