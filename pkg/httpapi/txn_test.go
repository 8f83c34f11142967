package httpapi

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func TestTxn(t *testing.T) {
	f := newFixture(t, Options{})
	put := f.do(t, req{method: "PUT", target: "/v1/kv/acct/2", body: "old"})
	if put.Code != http.StatusOK {
		t.Fatalf("put: %d %s", put.Code, put.Body)
	}
	ctx := put.Header().Get(ContextHeader)
	body := fmt.Sprintf(`{"ops":[
		{"op":"put","key":"acct/1","value_text":"90"},
		{"op":"put","key":"acct/2","value":"MTEw","context":%q},
		{"op":"del","key":"gone"}]}`, ctx)
	w := f.do(t, req{method: "POST", target: "/v1/txn", body: body})
	if w.Code != http.StatusOK {
		t.Fatalf("txn: %d %s", w.Code, w.Body)
	}
	res := decode[TxnResponse](t, w)
	if len(res.Results) != 3 || res.Results[0].Key != "acct/1" || res.Results[1].Key != "acct/2" || res.Results[2].Key != "gone" {
		t.Fatalf("results %+v, want the ops' keys in order", res.Results)
	}
	for _, r := range res.Results {
		if r.Dot == "" || r.Context == "" {
			t.Fatalf("result %+v lacks its dot or context", r)
		}
	}
	got := decode[View](t, f.do(t, req{method: "GET", target: "/v1/kv/acct/2"}))
	if len(got.Values) != 1 || string(got.Values[0]) != "110" {
		t.Fatalf("acct/2 shows %q after the transaction, want only 110 (its context replaced old)", got.Values)
	}
}

func TestTxnRefusals(t *testing.T) {
	f := newFixture(t, Options{})
	before := f.do(t, req{method: "GET", target: "/v1/digest"}).Body.String()
	for _, c := range []struct {
		name, body string
		code       int
		says       string
	}{
		{"not JSON", `{"ops":`, 400, "not a transaction"},
		{"unknown field", `{"ops":[],"x":1}`, 400, "unknown field"},
		{"no ops", `{"ops":[]}`, 400, "is empty or missing"},
		{"two values", `{"ops":[{"op":"put","key":"a","value":"eA==","value_text":"x"}]}`, 400, "op 0: has both"},
		{"no value", `{"ops":[{"op":"put","key":"a"}]}`, 400, "op 0: a put needs"},
		{"bad base64", `{"ops":[{"op":"put","key":"a","value_text":"x"},{"op":"put","key":"b","value":"!!"}]}`, 400, "op 1:"},
		{"delete with value", `{"ops":[{"op":"del","key":"a","value_text":"x"}]}`, 400, "op 0: a delete carries no value"},
		{"bad op", `{"ops":[{"op":"incr","key":"a"}]}`, 400, "want \\\"put\\\" or"},
		{"empty key", `{"ops":[{"op":"put","key":"","value_text":"x"}]}`, 400, "op 0:"},
		{"bad context", `{"ops":[{"op":"put","key":"a","value_text":"x","context":"{nope"}]}`, 400, "op 0: context"},
		{"key twice", `{"ops":[{"op":"put","key":"a","value_text":"x"},{"op":"del","key":"a"}]}`, 400, "op 1:"},
		{"unknown DC in context", `{"ops":[{"op":"put","key":"a","value_text":"x"},{"op":"put","key":"b","value_text":"x","context":"{dc9:1}"}]}`, 400, "op 1:"},
		{"context ahead", `{"ops":[{"op":"put","key":"a","value_text":"x"},{"op":"put","key":"b","value_text":"x","context":"{dc2:7}"}]}`, 503, "op 1:"},
		{"query", `{"ops":[{"op":"put","key":"a","value_text":"x"}]}`, 400, "unknown query parameter"},
	} {
		t.Run(c.name, func(t *testing.T) {
			target := "/v1/txn"
			if c.name == "query" {
				target += "?x=1"
			}
			w := f.do(t, req{method: "POST", target: target, body: c.body})
			if w.Code != c.code || !strings.Contains(w.Body.String(), c.says) {
				t.Fatalf("%d %s, want %d saying %q", w.Code, w.Body, c.code, c.says)
			}
			if c.code == 503 && w.Header().Get("Retry-After") == "" {
				t.Fatal("a 503 without Retry-After")
			}
		})
	}
	if after := f.do(t, req{method: "GET", target: "/v1/digest"}).Body.String(); after != before {
		t.Fatal("a refused transaction changed the state")
	}
	big := `{"ops":[{"op":"put","key":"a","value_text":"` + strings.Repeat("x", 9<<20) + `"}]}`
	if w := f.do(t, req{method: "POST", target: "/v1/txn", body: big}); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("a 9 MiB body: %d, want 413", w.Code)
	}
}

// TestTxnSession: a transaction answers with the session token of every
// op, waits for the token it carries, and takes X-Repl-Wait as a single
// write does (invariant 12 in docs/DESIGN.md).
func TestTxnSession(t *testing.T) {
	f := newFixture(t, Options{})
	body := `{"ops":[{"op":"put","key":"s/a","value_text":"1"},{"op":"put","key":"s/b","value_text":"2"}]}`
	w := f.do(t, req{method: "POST", target: "/v1/txn", body: body, header: hdr(WaitHeader, "1")})
	if w.Code != http.StatusOK {
		t.Fatalf("txn: %d %s", w.Code, w.Body)
	}
	res := decode[TxnResponse](t, w)
	for _, r := range res.Results {
		var seq int
		if _, err := fmt.Sscanf(r.Dot, "dc1:%d", &seq); err != nil {
			t.Fatalf("dot %q", r.Dot)
		}
		if !strings.Contains(res.Session, fmt.Sprintf(":%d", seq)) {
			t.Fatalf("session %q does not name op %s", res.Session, r.Dot)
		}
	}
	if res.Session == "" || w.Header().Get(SessionHeader) != res.Session {
		t.Fatalf("session %q, header %q", res.Session, w.Header().Get(SessionHeader))
	}
	if res.Replicated != 1 || w.Header().Get(ReplicatedHeader) != "1" {
		t.Fatalf("replicated %d (header %q), want 1: this DC", res.Replicated, w.Header().Get(ReplicatedHeader))
	}
	// Two DCs cannot be reached with no peer reporting: 202, and the
	// transaction stands.
	w = f.do(t, req{method: "POST", target: "/v1/txn", body: `{"ops":[{"op":"put","key":"s/c","value_text":"3"}]}`,
		header: hdr(WaitHeader, "all", WaitTimeoutHeader, "50ms")})
	if w.Code != http.StatusAccepted {
		t.Fatalf("X-Repl-Wait: all without peers: %d %s, want 202", w.Code, w.Body)
	}
	if got := decode[TxnResponse](t, w); got.Replicated != 1 || got.Error == "" {
		t.Fatalf("answer %+v, want replicated 1 and an error saying so", got)
	}
	if g := f.do(t, req{method: "GET", target: "/v1/kv/s/c"}); g.Code != http.StatusOK {
		t.Fatalf("the transaction that timed out waiting did not stand: %d", g.Code)
	}
	// Bad waits and tokens are 400 before anything is written.
	before := f.do(t, req{method: "GET", target: "/v1/digest"}).Body.String()
	for _, h := range []http.Header{
		hdr(WaitHeader, "0"), hdr(WaitHeader, "nine"), hdr(WaitHeader, "3"),
		hdr(SessionHeader, "dc9:0:1"), hdr(SessionHeader, "garbage"),
	} {
		w := f.do(t, req{method: "POST", target: "/v1/txn", body: `{"ops":[{"op":"put","key":"s/d","value_text":"4"}]}`, header: h})
		if w.Code != http.StatusBadRequest {
			t.Fatalf("%v: %d %s, want 400", h, w.Code, w.Body)
		}
	}
	// A token naming an event this DC has not applied: 503, nothing written.
	w = f.do(t, req{method: "POST", target: "/v1/txn", body: `{"ops":[{"op":"put","key":"s/d","value_text":"4"}]}`, header: hdr(SessionHeader, "dc2:0:5")})
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("a token ahead of this DC: %d %s, want 503 with Retry-After", w.Code, w.Body)
	}
	if after := f.do(t, req{method: "GET", target: "/v1/digest"}).Body.String(); after != before {
		t.Fatal("a refused transaction changed the state")
	}
}
