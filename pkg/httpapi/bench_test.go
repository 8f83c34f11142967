package httpapi

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// discardWriter is a ResponseWriter that keeps only its header map and
// status, so that a benchmark counts the handler's work, not a recorder's.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// BenchmarkPut measures the handler's own work for PUT /v1/kv/{key} with a
// 100-byte value, over a backend that answers at once: what the API adds
// to each write beyond the store and net/http. The store is there for
// what the handler asks it besides the write (the session scope).
func BenchmarkPut(b *testing.B) {
	res := changelog.WriteResult{
		State: dvv.State{Clock: vclock.VV{"dc1": 12345}},
		Event: &event.Event{Origin: "dc1", Partition: 1, Seq: 12345, Dot: vclock.Dot{DC: "dc1", N: 12345}},
	}
	h := New(StoreBackend{Store: openStore(b, "dc1", nil, nil), WriteFn: func(context.Context, changelog.WriteOp) (changelog.WriteResult, error) {
		return res, nil
	}}, Options{Registry: prometheus.NewRegistry()})
	val := bytes.Repeat([]byte("v"), 100)
	body := bytes.NewReader(val)
	r := httptest.NewRequest(http.MethodPut, "/v1/kv/bench-000012345", body)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		body.Reset(val)
		r.Body = readCloser{body}
		clear(w.h)
		w.code = 0
		h.ServeHTTP(w, r)
	}
	if w.code != http.StatusOK {
		b.Fatalf("PUT answered %d, want 200: the benchmark measured an error path", w.code)
	}
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }
