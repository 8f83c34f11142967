package natsapi

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/httpapi"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/resolve"
)

// serve runs the API of a store at dc1 (DCs dc1 and dc2, two partitions)
// on an embedded NATS server, and returns the store, the connection and a
// caller of its endpoints.
func serve(t *testing.T) (*changelog.Store, *nats.Conn, func(op string, req any) (*nats.Msg, error)) {
	t.Helper()
	return serveWith(t, nil, nil)
}

// serveClock is serve with the store's HLC clock.
func serveClock(t *testing.T, clock changelog.Clock) (*changelog.Store, *nats.Conn, func(op string, req any) (*nats.Msg, error)) {
	return serveWith(t, clock, nil)
}

// serveRules is serve with the store and the API under rules.
func serveRules(t *testing.T, rules *resolve.Rules) (*changelog.Store, *nats.Conn, func(op string, req any) (*nats.Msg, error)) {
	return serveWith(t, nil, rules)
}

// serveWith is serve with the store's clock and resolver rules (nil: the
// default clock; siblings for every key).
func serveWith(t *testing.T, clock changelog.Clock, rules *resolve.Rules) (*changelog.Store, *nats.Conn, func(op string, req any) (*nats.Msg, error)) {
	t.Helper()
	if rules == nil {
		rules, _ = resolve.NewRules(resolve.Siblings(), nil)
	}
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	st, err := changelog.Open("/s", changelog.Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 2, FS: vfs.NewMem(), Clock: clock, Resolvers: rules})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := Serve(nc, "dc1", st, rules)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	return st, nc, func(op string, req any) (*nats.Msg, error) {
		b, _ := json.Marshal(req)
		return nc.Request(names.APISubject("dc1", op), b, 5*time.Second)
	}
}

func TestServe(t *testing.T) {
	_, nc, call := serve(t)
	text := "hello"
	m, err := call("put", Request{Key: "k", ValueText: &text})
	if err != nil || m.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("put: %v %v", m, err)
	}
	var w WriteReply
	if err := json.Unmarshal(m.Data, &w); err != nil || w.Dot != "dc1:1" {
		t.Fatalf("put reply %s: %v", m.Data, err)
	}
	m, _ = call("get", Request{Key: "k"})
	var v httpapi.View
	if err := json.Unmarshal(m.Data, &v); err != nil || len(v.Values) != 1 || string(v.Values[0]) != "hello" {
		t.Fatalf("get reply %s: %v", m.Data, err)
	}
	m, _ = call("txn", map[string]any{"ops": []any{
		map[string]any{"op": "put", "key": "t/a", "value_text": "1"},
		map[string]any{"op": "put", "key": "t/b", "value": "Mg=="},
		map[string]any{"op": "del", "key": "k", "context": w.Context},
	}})
	var tr httpapi.TxnResponse
	if err := json.Unmarshal(m.Data, &tr); err != nil || len(tr.Results) != 3 || tr.Results[1].Key != "t/b" || tr.Results[2].Dot == "" {
		t.Fatalf("txn reply %s (%s): %v", m.Data, m.Header.Get("Nats-Service-Error"), err)
	}
	m, _ = call("get", Request{Key: "t/b"})
	if err := json.Unmarshal(m.Data, &v); err != nil || len(v.Values) != 1 || string(v.Values[0]) != "2" {
		t.Fatalf("get t/b after the txn %s: %v", m.Data, err)
	}
	if tr.Session == "" {
		t.Fatalf("txn reply %s has no session token", m.Data)
	}
	m, _ = call("txn", map[string]any{"wait": "all", "wait_timeout": "50ms", "session": tr.Session,
		"ops": []any{map[string]any{"op": "put", "key": "t/c", "value_text": "3"}}})
	var tw httpapi.TxnResponse
	if err := json.Unmarshal(m.Data, &tw); err != nil || tw.Replicated != 1 || tw.Error == "" {
		t.Fatalf("txn with wait all and no peers: %s: %v; want replicated 1 and an error", m.Data, err)
	}
	w.Context = tr.Results[2].Context
	m, _ = call("del", Request{Key: "k", Context: w.Context})
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		t.Fatalf("del: error %s", code)
	}
	for _, c := range []struct {
		op   string
		req  any
		code string
	}{
		{"get", Request{Key: "k"}, "404"},
		{"get", "not an object", "400"},
		{"put", Request{Key: ""}, "400"},
		{"put", Request{Key: "k", Context: "{bad"}, "400"},
		{"put", Request{Key: "bad\nkey"}, "400"},
		{"txn", map[string]any{"ops": []any{}}, "400"},
		{"txn", map[string]any{"ops": []any{map[string]any{"op": "put", "key": "a"}}}, "400"},
		{"txn", map[string]any{"ops": []any{map[string]any{"op": "frob", "key": "a", "value_text": "x"}}}, "400"},
		{"txn", map[string]any{"ops": []any{
			map[string]any{"op": "put", "key": "a", "value_text": "x"},
			map[string]any{"op": "put", "key": "a", "value_text": "y"},
		}}, "400"},
		{"txn", map[string]any{"ops": []any{}, "extra": 1}, "400"},
		{"txn", map[string]any{"ops": []any{map[string]any{"op": "put", "key": "a", "value_text": "x"}}, "wait": 0}, "400"},
		{"txn", map[string]any{"ops": []any{map[string]any{"op": "put", "key": "a", "value_text": "x"}}, "session": "zz"}, "400"},
	} {
		m, err := call(c.op, c.req)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Header.Get("Nats-Service-Error-Code"); got != c.code {
			t.Errorf("%s %v: code %q (%s), want %s", c.op, c.req, got, m.Header.Get("Nats-Service-Error"), c.code)
		}
	}
	// Discoverable the way `nats micro ls` finds services.
	m, err = nc.Request("$SRV.INFO.replicator", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Name      string `json:"name"`
		Endpoints []struct {
			Subject string `json:"subject"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(m.Data, &info); err != nil || info.Name != "replicator" || len(info.Endpoints) != 9 { // get, put, del, incr, patch, add, remove, txn, changes
		t.Fatalf("service info %s: %v", m.Data, err)
	}
}

// errCode is the micro error code of an answer, "" for a success.
func errCode(m *nats.Msg) string { return m.Header.Get("Nats-Service-Error-Code") }

// TestServeSession: get waits for its context and session (here not at
// all: the store's ContextWait is 0) and answers 503 until this DC covers
// them; put and del answer with their session token and, with wait, how
// many DCs applied them; bad fields are 400 and write nothing.
func TestServeSession(t *testing.T) {
	st, _, call := serve(t)
	remote, err := changelog.Open("/r", changelog.Options{DC: "dc2", DCs: []string{"dc1", "dc2"}, Partitions: 2, FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	ctx := context.Background()
	res, err := remote.Write(ctx, changelog.WriteOp{Key: "k", Value: []byte("at-dc2")})
	if err != nil {
		t.Fatal(err)
	}
	ev := res.Event
	tok := event.MsgID(ev.Origin, ev.Partition, ev.Seq)
	for _, req := range []Request{{Key: "k", Context: res.State.Clock.String()}, {Key: "k", Session: tok}} {
		m, err := call("get", req)
		if err != nil {
			t.Fatal(err)
		}
		if errCode(m) != "503" || !strings.Contains(m.Header.Get("Nats-Service-Error"), "dc2") {
			t.Errorf("get %+v before dc1 applied dc2's write: %q %q; want 503 naming dc2", req, errCode(m), m.Header.Get("Nats-Service-Error"))
		}
	}
	if _, err := st.Apply(ctx, []*event.Event{ev}, nil); err != nil {
		t.Fatal(err)
	}
	m, err := call("get", Request{Key: "k", Context: res.State.Clock.String(), Session: tok})
	if err != nil || errCode(m) != "" {
		t.Fatalf("get after the apply: %v %q %s", err, errCode(m), m.Header.Get("Nats-Service-Error"))
	}

	text := "v"
	var w WriteReply
	m, _ = call("put", Request{Key: "a", ValueText: &text, Session: tok})
	if err := json.Unmarshal(m.Data, &w); err != nil || errCode(m) != "" || !strings.Contains(w.Session, tok) || !strings.Contains(w.Session, "dc1:") || w.Replicated != 0 {
		t.Fatalf("put with a session: %q %s", errCode(m), m.Data)
	}
	m, _ = call("put", json.RawMessage(`{"key":"a","value_text":"w","wait":1}`))
	if err := json.Unmarshal(m.Data, &w); err != nil || errCode(m) != "" || w.Replicated != 1 || w.Error != "" {
		t.Fatalf("put with wait 1: %q %s", errCode(m), m.Data)
	}
	m, _ = call("del", Request{Key: "a", Wait: "all", WaitTimeout: "30ms"})
	if err := json.Unmarshal(m.Data, &w); err != nil || errCode(m) != "" || w.Replicated != 1 || !strings.Contains(w.Error, "only 1 of 2 DCs") {
		t.Fatalf("del with wait all timing out: %q %s; want a reply (the delete stands) with replicated 1 and an error", errCode(m), m.Data)
	}

	before := st.Stats().Writes
	for _, raw := range []string{
		`{"key":"b","value_text":"x","wait":0}`,
		`{"key":"b","value_text":"x","wait":3}`,
		`{"key":"b","value_text":"x","wait":"most"}`,
		`{"key":"b","value_text":"x","wait":{}}`,
		`{"key":"b","value_text":"x","wait":"all","wait_timeout":"2m"}`,
		`{"key":"b","value_text":"x","wait_timeout":"1s"}`,
		`{"key":"b","value_text":"x","session":"dc1:0"}`,
		`{"key":"b","value_text":"x","session":"dc9:0:1"}`,
		`{"key":"b","session":"dc2:5:1"}`,
		`{"key":"b","context":"{dc2:x}"}`,
	} {
		op := "put"
		if !strings.Contains(raw, "value_text") {
			op = "get"
		}
		m, err := call(op, json.RawMessage(raw))
		if err != nil {
			t.Fatal(err)
		}
		if errCode(m) != "400" {
			t.Errorf("%s %s: code %q (%s), want 400", op, raw, errCode(m), m.Header.Get("Nats-Service-Error"))
		}
	}
	if after := st.Stats().Writes; after != before {
		t.Errorf("bad requests made %d writes", after-before)
	}
}

func TestTypedOps(t *testing.T) {
	rules, err := resolve.NewRules(resolve.Siblings(), []resolve.Rule{
		{Prefix: "c/", Resolver: resolve.Counter()},
		{Prefix: "f/", Resolver: resolve.Fields()},
		{Prefix: "s/", Resolver: resolve.Set()},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, _, call := serveRules(t, rules)
	by := func(n int64) *int64 { return &n }
	ok := func(op string, req Request) {
		t.Helper()
		m, err := call(op, req)
		if err != nil || m.Header.Get("Nats-Service-Error-Code") != "" {
			t.Fatalf("%s %+v: %v %s %s", op, req, err, m.Header.Get("Nats-Service-Error"), m.Data)
		}
	}
	shows := func(key string) string {
		t.Helper()
		m, err := call("get", Request{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ Values [][]byte }
		if err := json.Unmarshal(m.Data, &v); err != nil || len(v.Values) != 1 {
			t.Fatalf("get %s: %s %v", key, m.Data, err)
		}
		return string(v.Values[0])
	}
	ok("incr", Request{Key: "c/1", By: by(7)})
	ok("incr", Request{Key: "c/1", By: by(-3)})
	ok("patch", Request{Key: "f/1", Patch: json.RawMessage(`{"title":"T"}`)})
	ok("add", Request{Key: "s/1", Elements: []json.RawMessage{json.RawMessage(`"x"`), json.RawMessage(`"y"`)}})
	ok("remove", Request{Key: "s/1", Elements: []json.RawMessage{json.RawMessage(`"x"`)}})
	for k, want := range map[string]string{"c/1": "4", "f/1": `{"title":"T"}`, "s/1": `["y"]`} {
		if got := shows(k); got != want {
			t.Errorf("%s shows %s, want %s", k, got, want)
		}
	}
	text := "5"
	for _, c := range []struct {
		op   string
		req  Request
		want string
	}{
		{"put", Request{Key: "c/2", ValueText: &text}, "use POST"},
		{"incr", Request{Key: "c/2"}, "non-zero"},
		{"incr", Request{Key: "c/2", By: by(1), ValueText: &text}, "takes no value"},
		{"incr", Request{Key: "s/2", By: by(1)}, "the key is a set"},
		{"patch", Request{Key: "f/2", Patch: json.RawMessage(`[1]`)}, "must be a JSON object"},
		{"add", Request{Key: "s/2", By: by(1)}, "only its own field"},
	} {
		m, err := call(c.op, c.req)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get("Nats-Service-Error-Code") != "400" || !strings.Contains(m.Header.Get("Nats-Service-Error"), c.want) {
			t.Errorf("%s %+v: %q %q, want 400 saying %q", c.op, c.req, m.Header.Get("Nats-Service-Error-Code"), m.Header.Get("Nats-Service-Error"), c.want)
		}
	}
}

// TestTooManySiblings: a blind put that would add a sibling to a key
// holding changelog.DefaultMaxSiblings is error code 409 naming the limit,
// and writes nothing; a put with the read's context is taken.
func TestTooManySiblings(t *testing.T) {
	st, _, call := serve(t)
	text := "v"
	for i := range changelog.DefaultMaxSiblings {
		if m, err := call("put", Request{Key: "s", ValueText: &text}); err != nil || errCode(m) != "" {
			t.Fatalf("blind put %d: %v %s", i, err, m.Header.Get("Nats-Service-Error"))
		}
	}
	m, err := call("put", Request{Key: "s", ValueText: &text})
	if err != nil || errCode(m) != "409" || !strings.Contains(m.Header.Get("Nats-Service-Error"), "limits.max_siblings") {
		t.Fatalf("blind put %d: %v code %q (%s), want 409 naming limits.max_siblings", changelog.DefaultMaxSiblings+1, err, errCode(m), m.Header.Get("Nats-Service-Error"))
	}
	if s, _, _ := st.Get("s"); len(s.Siblings) != changelog.DefaultMaxSiblings {
		t.Fatalf("after the refusal s holds %d siblings, want %d", len(s.Siblings), changelog.DefaultMaxSiblings)
	}
	m, _ = call("get", Request{Key: "s"})
	var v httpapi.View
	if err := json.Unmarshal(m.Data, &v); err != nil {
		t.Fatal(err)
	}
	if m, err := call("put", Request{Key: "s", ValueText: &text, Context: v.Context}); err != nil || errCode(m) != "" {
		t.Fatalf("put with the read's context: %v %s", err, m.Header.Get("Nats-Service-Error"))
	}
}
