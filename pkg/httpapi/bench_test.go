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

// discardWriter is a ResponseWriter that keeps only its header map, so
// that a benchmark counts the handler's work, not a recorder's.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

// BenchmarkPut measures the handler's own work for PUT /v1/kv/{key} with a
// 100-byte value, over a backend that answers at once: what the API adds
// to each write beyond the store and net/http.
func BenchmarkPut(b *testing.B) {
	res := changelog.WriteResult{
		State: dvv.State{Clock: vclock.VV{"dc1": 12345}},
		Event: &event.Event{Dot: vclock.Dot{DC: "dc1", N: 12345}},
	}
	h := New(StoreBackend{WriteFn: func(context.Context, changelog.WriteOp) (changelog.WriteResult, error) {
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
		h.ServeHTTP(w, r)
	}
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }
