package httpapi

import (
	"strings"
	"testing"

	"github.com/replicatorhq/replicator/resolve"
)

func typedFixture(tb testing.TB) *fixture {
	tb.Helper()
	rules, err := resolve.NewRules(resolve.Siblings(), []resolve.Rule{
		{Prefix: "c/", Resolver: resolve.Counter()},
		{Prefix: "f/", Resolver: resolve.Fields()},
		{Prefix: "s/", Resolver: resolve.Set()},
	})
	if err != nil {
		tb.Fatal(err)
	}
	st := openStore(tb, "dc1", rules, nil)
	return &fixture{store: st, rules: rules, h: New(StoreBackend{Store: st, Rules: rules}, Options{})}
}

// shown is the one value GET shows for key.
func (f *fixture) shown(tb testing.TB, key string) string {
	tb.Helper()
	w := f.do(tb, req{method: "GET", target: "/v1/kv/" + key})
	if w.Code == 404 {
		return "<404>"
	}
	wantStatus(tb, w, 200)
	v := decode[keyJSON](tb, w)
	if len(v.Values) != 1 {
		tb.Fatalf("GET %s shows %d values: %s", key, len(v.Values), w.Body.String())
	}
	return string(v.Values[0])
}

func TestTypedHTTP(t *testing.T) {
	f := typedFixture(t)
	ok := func(method, target, body string) {
		t.Helper()
		wantStatus(t, f.do(t, req{method: method, target: target, body: body}), 200)
	}
	ok("POST", "/v1/kv/c/1?op=incr", `{"by":5}`)
	ok("POST", "/v1/kv/c/1?op=incr", `{"by":-2}`)
	if got := f.shown(t, "c/1"); got != "3" {
		t.Fatalf("counter shows %s, want 3", got)
	}
	ok("PUT", "/v1/kv/f/1", `{"title":"t","body":"b"}`)
	ok("PATCH", "/v1/kv/f/1", `{"title":"T","tags":{"a":1},"body":null}`)
	ok("PATCH", "/v1/kv/f/1", `{"tags":{"b":2}}`)
	if got := f.shown(t, "f/1"); got != `{"tags":{"a":1,"b":2},"title":"T"}` {
		t.Fatalf("fields show %s", got)
	}
	ok("POST", "/v1/kv/s/1?op=add", `{"elements":["b",{"y":1, "x":2},"a"]}`)
	ok("POST", "/v1/kv/s/1?op=remove", `{"elements":["b"]}`)
	if got := f.shown(t, "s/1"); got != `["a",{"x":2,"y":1}]` {
		t.Fatalf("set shows %s", got)
	}
	// A GET's siblings show the typed state readably.
	w := f.do(t, req{method: "GET", target: "/v1/kv/c/1"})
	if !strings.Contains(w.Body.String(), `"typed":{"counter":3,`) {
		t.Fatalf("GET of a counter: %s", w.Body.String())
	}
	ok("DELETE", "/v1/kv/s/1", "")
	if got := f.shown(t, "s/1"); got != "<404>" {
		t.Fatalf("deleted set shows %s", got)
	}

	// Refusals: 4xx naming the problem, nothing written.
	long := `"` + strings.Repeat("x", resolve.MaxElementBytes) + `"`
	for _, c := range []struct {
		method, target, body, want string
		code                       int
	}{
		{"PUT", "/v1/kv/c/2", "5", "use POST /v1/kv/{key}?op=incr", 400},
		{"POST", "/v1/kv/c/2", `{"by":1}`, "needs ?op=incr", 400},
		{"POST", "/v1/kv/c/2?op=bump", `{"by":1}`, "needs ?op=incr", 400},
		{"POST", "/v1/kv/c/2?op=incr&x=1", `{"by":1}`, "unknown query parameter", 400},
		{"POST", "/v1/kv/c/2?op=incr", `{"by":0}`, "non-zero", 400},
		{"POST", "/v1/kv/c/2?op=incr", `{"by":1e30}`, "within int64", 400},
		{"POST", "/v1/kv/c/2?op=incr", `{"bye":1}`, "unknown field", 400},
		{"POST", "/v1/kv/c/2?op=add", `{"elements":[1]}`, "the key is a counter", 400},
		{"POST", "/v1/kv/plain?op=incr", `{"by":1}`, "uses the siblings resolver", 400},
		{"PATCH", "/v1/kv/f/2", `[1]`, "must be a JSON object", 400},
		{"PATCH", "/v1/kv/f/2", `{"a":`, "is not JSON", 400},
		{"PATCH", "/v1/kv/s/2", `{"a":1}`, "the key is a set", 400},
		{"PUT", "/v1/kv/f/2", `"text"`, "must be a JSON object", 400},
		{"POST", "/v1/kv/s/2?op=add", `{"elements":[` + long + `]}`, "element limit", 400},
		{"POST", "/v1/kv/s/2?op=add", `{"elements":[]}`, "at least one element", 400},
	} {
		w := f.do(t, req{method: c.method, target: c.target, body: c.body})
		if w.Code != c.code || !strings.Contains(w.Body.String(), c.want) {
			t.Errorf("%s %s %s: %d %s, want %d saying %q", c.method, c.target, c.body, w.Code, w.Body.String(), c.code, c.want)
		}
	}
	for _, k := range []string{"c/2", "f/2", "s/2", "plain"} {
		if _, ok, _ := f.store.Get(k); ok {
			t.Errorf("a refused request wrote %s", k)
		}
	}
	if got := f.shown(t, "c/1"); got != "3" {
		t.Fatalf("counter shows %s after refusals, want 3", got)
	}
}

func TestTypedTxn(t *testing.T) {
	f := typedFixture(t)
	w := f.do(t, req{method: "POST", target: "/v1/txn", body: `{"ops":[
		{"op":"incr","key":"c/1","by":2},
		{"op":"add","key":"s/1","elements":["x"]},
		{"op":"patch","key":"f/1","patch":{"a":1}},
		{"op":"put","key":"plain","value_text":"v"}]}`})
	wantStatus(t, w, 200)
	for k, want := range map[string]string{"c/1": "2", "s/1": `["x"]`, "f/1": `{"a":1}`} {
		if got := f.shown(t, k); got != want {
			t.Errorf("%s shows %s, want %s", k, got, want)
		}
	}
	w = f.do(t, req{method: "POST", target: "/v1/txn", body: `{"ops":[{"op":"incr","key":"c/1","by":1},{"op":"put","key":"c/2","value_text":"1"}]}`})
	if w.Code != 400 || !strings.Contains(w.Body.String(), "op 1") {
		t.Fatalf("txn with a PUT to a counter: %d %s", w.Code, w.Body.String())
	}
	if got := f.shown(t, "c/1"); got != "2" {
		t.Fatalf("a refused txn changed the counter: %s", got)
	}
}
