package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/resolve"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// counterClock is a deterministic HLC.
type counterClock struct{ n atomic.Uint64 }

func (c *counterClock) Now() uint64 { return c.n.Add(1) }

const testPartitions = 4

// testRules: siblings by default, lww under "l/", record under "r/".
func testRules(tb testing.TB) *resolve.Rules {
	tb.Helper()
	rules, err := resolve.NewRules(resolve.Siblings(), []resolve.Rule{
		{Prefix: "l/", Resolver: resolve.LWW()},
		{Prefix: "r/", Resolver: resolve.Record()},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return rules
}

// openStore opens a store for dc on an in-memory filesystem; it is closed
// when the test ends.
func openStore(tb testing.TB, dc string, rules *resolve.Rules, onCommit func([]changelog.Change)) *changelog.Store {
	tb.Helper()
	st, err := changelog.Open("data-"+dc, changelog.Options{
		DC:         dc,
		DCs:        []string{"dc1", "dc2"},
		Partitions: testPartitions,
		FS:         vfs.NewMem(),
		Clock:      &counterClock{},
		Resolvers:  rules,
		OnCommit:   onCommit,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}

// fixture is an API handler over a real store at dc1.
type fixture struct {
	store  *changelog.Store
	remote *changelog.Store // dc2, a source of concurrent writes
	rules  *resolve.Rules
	h      http.Handler
}

func newFixture(tb testing.TB, opts Options) *fixture {
	tb.Helper()
	rules := testRules(tb)
	st := openStore(tb, "dc1", rules, nil)
	return &fixture{
		store:  st,
		remote: openStore(tb, "dc2", rules, nil),
		rules:  rules,
		h:      New(StoreBackend{Store: st, Rules: rules}, opts),
	}
}

// remoteWrite writes key=value at a second DC, dc2, and applies the event
// to f's store: concurrent with whatever dc1 holds for the key.
func (f *fixture) remoteWrite(tb testing.TB, key, value string) {
	tb.Helper()
	res, err := f.remote.Write(context.Background(), changelog.WriteOp{Key: key, Value: []byte(value)})
	if err != nil {
		tb.Fatal(err)
	}
	out, err := f.store.Apply(context.Background(), []*event.Event{res.Event}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if out[0].Outcome != changelog.Changed {
		tb.Fatalf("applying dc2's write of %q: outcome %v, want changed", key, out[0].Outcome)
	}
}

// req is one request to the handler.
type req struct {
	method, target, body string
	header               http.Header
}

func (f *fixture) do(tb testing.TB, r req) *httptest.ResponseRecorder {
	tb.Helper()
	return serve(f.h, r)
}

func serve(h http.Handler, r req) *httptest.ResponseRecorder {
	hr := httptest.NewRequest(r.method, r.target, strings.NewReader(r.body))
	for k, vs := range r.header {
		for _, v := range vs {
			hr.Header.Add(k, v)
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, hr)
	return w
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// decode unmarshals the response body into a new T, failing the test on
// anything that is not JSON of that shape.
func decode[T any](tb testing.TB, w *httptest.ResponseRecorder) T {
	tb.Helper()
	var v T
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		tb.Fatalf("response %d body %q is not JSON: %v", w.Code, w.Body.String(), err)
	}
	return v
}

// wantStatus fails the test when w's status is not code.
func wantStatus(tb testing.TB, w *httptest.ResponseRecorder, code int) {
	tb.Helper()
	if w.Code != code {
		tb.Fatalf("status %d, want %d; body: %s", w.Code, code, w.Body.String())
	}
}

// readAll reads a response body, for streams already ended.
func readAll(tb testing.TB, r io.Reader) string {
	tb.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}
