package natsapi

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/httpapi"
)

// TestTTL: put's "ttl" gives the value an expiry, after which get answers
// 404 at this DC; a bad "ttl", on put, del or a txn op, is a 400 naming it
// and writes nothing.
func TestTTL(t *testing.T) {
	var mu sync.Mutex
	now := time.UnixMilli(1_800_000_000_000)
	clk := hlc.New(func() time.Time { mu.Lock(); defer mu.Unlock(); return now }, 0)
	st, _, call := serveClock(t, clk)
	text := "v"
	for _, tt := range []struct {
		op   string
		req  any
		want string
	}{
		{"put", Request{Key: "k", ValueText: &text, TTL: "later"}, `ttl "later" is not a Go duration`},
		{"put", Request{Key: "k", ValueText: &text, TTL: "-1s"}, `ttl "-1s" is not positive`},
		{"del", Request{Key: "k", TTL: "1s"}, "a del carries no ttl"},
		{"txn", map[string]any{"ops": []any{map[string]any{"op": "put", "key": "k", "value_text": "v", "ttl": "0"}}}, `op 0: ttl "0" is not positive`},
	} {
		m, err := call(tt.op, tt.req)
		if err != nil {
			t.Fatal(err)
		}
		if code, msg := m.Header.Get("Nats-Service-Error-Code"), m.Header.Get("Nats-Service-Error"); code != "400" || !strings.Contains(msg, tt.want) {
			t.Fatalf("%s %+v: %s %q; want 400 saying %q", tt.op, tt.req, code, msg, tt.want)
		}
		if _, ok, _ := st.Get("k"); ok {
			t.Fatalf("%s with a bad ttl wrote", tt.op)
		}
	}
	m, err := call("put", Request{Key: "k", ValueText: &text, TTL: "2s"})
	if err != nil || m.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("put with a ttl: %v %s", err, m.Header.Get("Nats-Service-Error"))
	}
	m, _ = call("get", Request{Key: "k"})
	var v httpapi.View
	if err := json.Unmarshal(m.Data, &v); err != nil || v.Expires == 0 || len(v.Values) != 1 {
		t.Fatalf("get before the expiry: %s", m.Data)
	}
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	m, _ = call("get", Request{Key: "k"})
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "404" {
		t.Fatalf("get after the expiry: %s %s; want 404", code, m.Data)
	}
}
