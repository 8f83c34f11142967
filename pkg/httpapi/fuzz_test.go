package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// FuzzHandler sends arbitrary requests to the API over a real store and
// requires that none panics, none gets a 500, and every error has a JSON
// body with a message.
func FuzzHandler(f *testing.F) {
	const token = "fuzz-token"
	seeds := []struct {
		method, target, hname, hval string
		body                        []byte
		auth                        bool
	}{
		{"PUT", "/v1/kv/a", "", "", []byte("v"), false},
		{"PUT", "/v1/kv/a", ContextHeader, "{dc1:1}", []byte("v"), false},
		{"PUT", "/v1/kv/a", ContextHeader, "{dc1:99,dc2:3}", nil, false},
		{"PUT", "/v1/kv/r/doc", ContextHeader, "{}", []byte("x"), true},
		{"DELETE", "/v1/kv/a", ContextHeader, "{dc1:", nil, false},
		{"DELETE", "/v1/kv/l/x", "", "", nil, false},
		{"GET", "/v1/kv/a", "", "", nil, false},
		{"GET", "/v1/kv/a", ContextHeader, "{dc2:4}", nil, false},
		{"GET", "/v1/kv/a?min_context={dc1:1}&min_session=dc2:1:1", "", "", nil, false},
		{"GET", "/v1/kv?prefix=a", SessionHeader, "dc1:0:1,dc2:3:9, ,dc2:3:1", nil, false},
		{"PUT", "/v1/kv/a", SessionHeader, "dc1:0:1", []byte("v"), false},
		{"PUT", "/v1/kv/a", WaitHeader, "1", []byte("v"), false},
		{"DELETE", "/v1/kv/a", WaitTimeoutHeader, "1s", nil, false},
		{"GET", "/v1/kv/%FF%00", "", "", nil, false},
		{"GET", "/v1/kv/a//b/../c", "", "", nil, false},
		{"GET", "/v1/kv?prefix=a&limit=2", "", "", nil, false},
		{"GET", "/v1/kv?limit=0x10", "", "", nil, false},
		{"HEAD", "/v1/kv", "", "", nil, false},
		{"GET", "/v1/digest", "", "", nil, true},
		{"GET", "/v1/conflicts?status=open&prefix=r/&limit=1", "", "", nil, false},
		{"GET", "/v1/conflicts/abc", "", "", nil, false},
		{"POST", "/v1/conflicts/abc/resolve", "Content-Type", "application/json", []byte(`{"value":"QUJD"}`), false},
		{"POST", "/v1/conflicts//resolve", "", "", []byte(`{"delete":true}`), false},
		{"GET", "/v1/status", "Authorization", "Bearer " + token, nil, true},
		{"GET", "/v1/status", "Authorization", "Bearer", nil, true},
		{"GET", "/v1/watch?prefix=a", "", "", nil, false},
		{"GET", "/v1/changes?since=1&prefix=a&limit=2", "", "", nil, false},
		{"GET", "/v1/changes?snapshot=true&prefix=a", "", "", nil, false},
		{"GET", "/v1/changes?since=now&feed=continuous&heartbeat=1s", "", "", nil, false},
		{"GET", "/v1/kv?prefix=a&limit=1&after=a", "", "", nil, false},
		{"GET", "/healthz", "", "", nil, true},
		{"GET", "/metrics", "", "", nil, false},
		{"OPTIONS", "*", "", "", nil, false},
		{"CONNECT", "/v1/kv/a", "", "", nil, false},
		{"PATCH", "/v1/digest/", "", "", nil, false},
	}
	for _, s := range seeds {
		f.Add(s.method, s.target, s.hname, s.hval, s.body, s.auth)
	}

	rules := testRules(f)
	st := openStore(f, "dc1", rules, nil)
	b := StoreBackend{Store: st, Rules: rules}
	open := New(b, Options{Watch: closedSource{}, Registry: prometheus.NewRegistry(), MaxBodyBytes: 4096})
	authed := New(b, Options{Watch: closedSource{}, Token: token, MaxBodyBytes: 4096})

	f.Fuzz(func(t *testing.T, method, target, hname, hval string, body []byte, auth bool) {
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		// A continuous change feed ends only when its client leaves.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		r, err := http.NewRequestWithContext(ctx, method, "http://sidecar"+target, bytes.NewReader(body))
		if err != nil {
			return // net/http's server would refuse it before any handler
		}
		if hname != "" && validHeader(hname, hval) {
			r.Header.Add(hname, hval)
		}
		h := open
		if auth {
			h = authed
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code == http.StatusInternalServerError {
			t.Fatalf("%s %s (%s: %q, %d-byte body): 500: %s", method, target, hname, hval, len(body), w.Body.String())
		}
		if w.Code >= 400 {
			var e struct {
				Error string `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %s: %d with body %q, want JSON {\"error\": ...}", method, target, w.Code, w.Body.String())
			}
		}
	})
}

// validHeader reports whether the HTTP server could deliver this header:
// a token name and a value without control characters but tab.
func validHeader(name, value string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
