package httpapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/hlc"
)

// peekClock is a deterministic HLC that reads can peek at, moved by hand.
type peekClock struct{ n atomic.Uint64 }

func (c *peekClock) Now() uint64  { return c.n.Add(1) }
func (c *peekClock) Peek() uint64 { return c.n.Load() }

// advance moves the clock d of physical time on.
func (c *peekClock) advance(d time.Duration) { c.n.Add(uint64(d.Milliseconds()) << hlc.LogicalBits) }

func ttlFixture(t *testing.T) (*fixture, *peekClock) {
	t.Helper()
	clk := &peekClock{}
	clk.n.Store(1_800_000_000_000 << hlc.LogicalBits)
	rules := testRules(t)
	st, err := changelog.Open("data-dc1", changelog.Options{
		DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: testPartitions,
		FS: vfs.NewMem(), Clock: clk, Resolvers: rules,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &fixture{store: st, rules: rules, h: New(StoreBackend{Store: st, Rules: rules}, Options{})}, clk
}

// TestTTLHeader: X-Repl-TTL gives a PUT's value an expiry that GET and the
// list show, and from which on they no longer show the value; a bad TTL
// is a 400 naming it, and writes nothing.
func TestTTLHeader(t *testing.T) {
	f, clk := ttlFixture(t)
	for _, tt := range []struct {
		name   string
		method string
		header http.Header
		want   string
	}{
		{"not a duration", "PUT", hdr(TTLHeader, "soon"), `X-Repl-TTL: ttl "soon" is not a Go duration`},
		{"no unit", "PUT", hdr(TTLHeader, "30"), `ttl "30" is not a Go duration`},
		{"zero", "PUT", hdr(TTLHeader, "0s"), `ttl "0s" is not positive`},
		{"negative", "PUT", hdr(TTLHeader, "-5s"), `ttl "-5s" is not positive`},
		{"over the maximum", "PUT", hdr(TTLHeader, "100000h"), `is over the maximum of 87600h0m0s`},
		{"under a millisecond", "PUT", hdr(TTLHeader, "10us"), `under the 1ms resolution`},
		{"given twice", "PUT", hdr(TTLHeader, "1s", TTLHeader, "2s"), `X-Repl-TTL is given 2 times`},
		{"on a delete", "DELETE", hdr(TTLHeader, "1s"), `a DELETE carries no X-Repl-TTL`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := f.do(t, req{method: tt.method, target: "/v1/kv/k", body: "v", header: tt.header})
			wantStatus(t, w, http.StatusBadRequest)
			if msg := decode[keyResp](t, w).Error; !strings.Contains(msg, tt.want) {
				t.Fatalf("error %q; want it to say %q", msg, tt.want)
			}
			if _, ok, _ := f.store.Get("k"); ok {
				t.Fatal("a refused write stored the key")
			}
		})
	}

	wantStatus(t, f.do(t, req{method: "PUT", target: "/v1/kv/k", body: "v", header: hdr(TTLHeader, "30s")}), http.StatusOK)
	wantStatus(t, f.do(t, req{method: "PUT", target: "/v1/kv/plain", body: "p"}), http.StatusOK)
	got := f.get(t, "k", http.StatusOK)
	if got.Expires == 0 || got.ExpiresTime == "" || len(got.Siblings) != 1 || got.Siblings[0].Expires != got.Expires {
		t.Fatalf("GET shows expires %d (%q), siblings %+v; want the expiry on the key and its sibling", got.Expires, got.ExpiresTime, got.Siblings)
	}
	clk.advance(29 * time.Second)
	f.get(t, "k", http.StatusOK)
	clk.advance(time.Second)
	gone := f.do(t, req{method: "GET", target: "/v1/kv/k"})
	wantStatus(t, gone, http.StatusNotFound)
	if gone.Header().Get(ContextHeader) == "{}" {
		t.Fatal("the 404 of an expired key lost its context")
	}
	list := f.do(t, req{method: "GET", target: "/v1/kv"})
	wantStatus(t, list, http.StatusOK)
	if strings.Contains(list.Body.String(), `"key":"k"`) || !strings.Contains(list.Body.String(), `"key":"plain"`) {
		t.Fatalf("list after the expiry: %s; want plain and not k", list.Body.String())
	}
	if st, _, _ := f.store.Get("k"); st.LiveCount() != 1 {
		t.Fatal("the read changed the stored state; only the expirer's delete may")
	}
	// A write without a TTL, with the 404's context, clears the expiry.
	w := f.do(t, req{method: "PUT", target: "/v1/kv/k", body: "again", header: hdr(ContextHeader, gone.Header().Get(ContextHeader))})
	wantStatus(t, w, http.StatusOK)
	if got := f.get(t, "k", http.StatusOK); got.Expires != 0 || len(got.Siblings) != 1 {
		t.Fatalf("after a plain write: expires %d, %d siblings; want none, 1", got.Expires, len(got.Siblings))
	}
}

// TestTxnTTL: a transaction's put takes "ttl" as X-Repl-TTL; a bad one
// refuses the whole transaction.
func TestTxnTTL(t *testing.T) {
	f, _ := ttlFixture(t)
	post := func(body string) *http.Response {
		return f.do(t, req{method: "POST", target: "/v1/txn", body: body}).Result()
	}
	for _, tt := range []struct{ body, want string }{
		{`{"ops":[{"op":"put","key":"a","value_text":"1"},{"op":"put","key":"b","value_text":"2","ttl":"forever"}]}`, `op 1: ttl \"forever\" is not a Go duration`},
		{`{"ops":[{"op":"del","key":"a","ttl":"1s"}]}`, `op 0: a delete carries no ttl`},
	} {
		r := post(tt.body)
		var e struct{ Error string }
		json.NewDecoder(r.Body).Decode(&e)
		if r.StatusCode != http.StatusBadRequest || !strings.Contains(e.Error, strings.ReplaceAll(tt.want, `\"`, `"`)) {
			t.Fatalf("POST %s: %d %q; want 400 saying %s", tt.body, r.StatusCode, e.Error, tt.want)
		}
		if _, ok, _ := f.store.Get("a"); ok {
			t.Fatal("a refused transaction wrote")
		}
	}
	if r := post(`{"ops":[{"op":"put","key":"a","value_text":"1","ttl":"1m"},{"op":"put","key":"b","value_text":"2"}]}`); r.StatusCode != http.StatusOK {
		t.Fatalf("POST with a ttl: %d", r.StatusCode)
	}
	a, _, _ := f.store.Get("a")
	b, _, _ := f.store.Get("b")
	if a.Expiry() == 0 || b.Expiry() != 0 || a.Expiry() != a.Siblings[0].HLC+60_000<<hlc.LogicalBits {
		t.Fatalf("expiries a %d, b %d; want a at its HLC + 1m, b none", a.Expiry(), b.Expiry())
	}
}
