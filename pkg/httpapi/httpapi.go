// Package httpapi is the sidecar's HTTP API: the key-value routes an
// application reads and writes through, the digest, the conflict log, the
// status, a watch stream of applied changes, /healthz and /metrics.
//
// New builds an http.Handler over a Backend (StoreBackend wraps a
// changelog.Store); the node serves it on its listener after CheckListen
// has approved the address. Every route but /healthz and /readyz (probes)
// and the status page (/ui, which holds no data and sends the token on its own API calls) takes
// the bearer token when one is set. Every error body is {"error": "..."}, saying what was
// wrong and what to do, with a 4xx status for bad requests.
//
// Routes (docs/DESIGN.md "External interfaces"):
//
//	PUT    /v1/kv/{key}                 body = raw value; X-Repl-Context, X-Repl-Session, X-Repl-Wait optional
//	DELETE /v1/kv/{key}                 X-Repl-Context, X-Repl-Session, X-Repl-Wait optional
//	GET    /v1/kv/{key}                 the key's values, siblings and context; X-Repl-Context
//	                                    (?min_context=) and X-Repl-Session (?min_session=) optional
//	GET    /v1/kv?prefix=P&limit=N&after=K
//	                                    NDJSON, one line per key with a live value; X-Repl-Session
//	                                    (?min_session=) optional
//	GET    /v1/digest                   {"digest", "keys", "partitions"}
//	GET    /v1/digests                  {"dcs": [{"dc", "digest", "keys", "self", "error", "ms"}], "agree"}: every DC's, asked now
//	GET    /v1/conflicts?status=&prefix=&limit=
//	GET    /v1/conflicts/{id}
//	POST   /v1/conflicts/{id}/resolve   {"value": base64 | "value_text": s | "delete": true}
//	GET    /v1/status
//	GET    /v1/watch?prefix=P           NDJSON of applied changes, until the client leaves
//	GET    /v1/changes?since=&prefix=&limit=&feed=&heartbeat=&snapshot=
//	                                    NDJSON change feed with cursors (changes.go)
//	GET    /v1/deadletters?limit=N      {"dead_letters": [...], "total"}, newest first
//	GET    /v1/openapi.json             the API reference, an OpenAPI 3 document (openapi.json), no token
//	GET    /ui, /ui/...                 the status page (package ui)
//	GET    /healthz
//	GET    /readyz                      200 once caught up since the start, else 503 saying what it waits for
//	GET    /metrics
//
// Keys are path segments after /v1/kv/: a key may contain '/', and a client
// should percent-encode it (url.PathEscape), which also carries empty, "."
// and ".." segments intact. A path with such segments left unencoded is
// rejected with 400 rather than redirected to a different key.
//
// The context is the key's clock in vclock's text form, "{dc1:3,dc2:1}". A
// client passes it back unchanged; "{}" means "I read the key and it was
// absent", while no header at all is a blind write.
//
// Session guarantees (invariant 12 in docs/DESIGN.md): every write answer
// carries a session token (X-Repl-Session, "session"), the write's
// Nats-Msg-Id merged with the token the request carried. A read carrying a
// context or tokens waits, up to the sidecar's context_wait, until this DC
// covers them, else answers 503 with Retry-After. A write with
// X-Repl-Wait: N|all (X-Repl-Wait-Timeout, default 5s, at most 1m) answers
// once N DCs have applied it, with X-Repl-Replicated and "replicated"; on
// timeout the write stands and the answer is 202 with "error" saying how
// far it got.
//
// Additions to the routes in docs/DESIGN.md (docs/INTERFACES.md lists them
// all): GET /v1/kv/{key} and the NDJSON
// lines also carry "resolver" (the key's resolver name); a 404 from
// GET /v1/kv/{key} carries "key" and "context" beside "error"; the write
// responses carry "dot"; conflict entries carry "context" (the clock a
// resolution supersedes); GET /v1/conflicts/{id}, GET /v1/watch and
// GET /v1/changes are new.
//
// The HTTP interface it serves is API (docs/INTERFACES.md, and the OpenAPI
// document at /v1/openapi.json); the Go package is internal to the sidecar.
package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/apierr"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/ui"
)

// The headers of the key-value routes.
const (
	// ContextHeader carries a key's causal context in both directions.
	ContextHeader = "X-Repl-Context"
	// SessionHeader carries a session token: in a write's answer, the
	// write's; in a request, the tokens of earlier answers, joined.
	SessionHeader = "X-Repl-Session"
	// WaitHeader asks a write to answer once that many DCs ("all" for
	// every one) have applied it; WaitTimeoutHeader bounds the wait.
	WaitHeader        = "X-Repl-Wait"
	WaitTimeoutHeader = "X-Repl-Wait-Timeout"
	// ReplicatedHeader says, on the answer to a write with WaitHeader,
	// how many DCs had applied it.
	ReplicatedHeader = "X-Repl-Replicated"
	// TTLHeader gives a PUT's value a time to live (Go duration text,
	// "30s"): it expires then at every DC.
	TTLHeader = "X-Repl-TTL"
)

// Options configure the API handler.
type Options struct {
	// Token, when set, is the bearer token every route but /healthz
	// requires. Default "" (no authentication; loopback only, see
	// CheckListen).
	Token string
	// MaxBodyBytes bounds a request body: a PUT body (the value) and a
	// resolution's JSON. Default event.DefaultLimits().MaxValueBytes.
	MaxBodyBytes int64
	// MaxValueBytes bounds a value: a PUT body, a resolution's value, a
	// transaction op's. Over it the answer is 413 naming
	// limits.max_value_bytes, the store's limit (the value a DC takes must
	// fit an event the others accept). Default
	// event.DefaultLimits().MaxValueBytes (1 MiB - 32 KiB).
	MaxValueBytes int
	// MaxTxnBodyBytes bounds a POST /v1/txn body. Default 8 MiB: a
	// transaction's values in base64, within the store's transaction
	// limits (4 MiB encoded by default), and their JSON.
	MaxTxnBodyBytes int64
	// MaxKeyBytes bounds a key. Default event.DefaultLimits().MaxKeyBytes
	// (4096), for the same reason.
	MaxKeyBytes int
	// Registry, if set, receives the request metrics (replicator_http_*).
	// /metrics serves it when it is also a prometheus.Gatherer, such as a
	// *prometheus.Registry; otherwise /metrics answers 404.
	Registry prometheus.Registerer
	// MetricLabels are constant labels on every request metric, such as
	// the node's {"dc": "dc1"}, so its HTTP series carry the DC as its
	// other series do. Default none.
	MetricLabels prometheus.Labels
	// Logger receives server errors and recovered panics. Default: discard.
	Logger *slog.Logger
	// Watch feeds GET /v1/watch. Default nil: the route answers 404.
	Watch WatchSource
	// Stop, when closed, ends the continuous GET /v1/changes streams with
	// a line saying the sidecar is shutting down (the node closes it when
	// its HTTP server shuts down). Default nil: they end when the client
	// leaves or the store closes.
	Stop <-chan struct{}
}

// New returns the API handler over b.
func New(b Backend, opts Options) http.Handler {
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = int64(event.DefaultLimits().MaxValueBytes)
	}
	if opts.MaxValueBytes <= 0 {
		opts.MaxValueBytes = event.DefaultLimits().MaxValueBytes
	}
	if opts.MaxKeyBytes <= 0 {
		opts.MaxKeyBytes = event.DefaultLimits().MaxKeyBytes
	}
	if opts.MaxTxnBodyBytes <= 0 {
		opts.MaxTxnBodyBytes = 8 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &server{b: b, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	if opts.Token != "" {
		sum := sha256.Sum256([]byte(opts.Token))
		s.tokenSum = sum[:]
	}
	s.metrics = newMetrics(opts.Registry, opts.MetricLabels, opts.Logger)
	s.routes()
	return s
}

type server struct {
	b        Backend
	opts     Options
	log      *slog.Logger
	mux      *http.ServeMux
	tokenSum []byte
	metrics  *metrics
	// patterns are the routes registered on mux.
	patterns []string
}

func (s *server) routes() {
	m := routeRecorder{s}
	m.HandleFunc("PUT /v1/kv/{key...}", s.putKey)
	m.HandleFunc("DELETE /v1/kv/{key...}", s.deleteKey)
	m.HandleFunc("POST /v1/kv/{key...}", s.postKey)
	m.HandleFunc("PATCH /v1/kv/{key...}", s.patchKey)
	m.HandleFunc("GET /v1/kv/{key...}", s.getKey)
	m.HandleFunc("GET /v1/kv", s.listKeys)
	// Without these, the mux would redirect PUT /v1/kv to /v1/kv/.
	m.HandleFunc("PUT /v1/kv", s.missingKey)
	m.HandleFunc("DELETE /v1/kv", s.missingKey)
	m.HandleFunc("POST /v1/txn", s.txn)
	m.HandleFunc("GET /v1/digest", s.digest)
	m.HandleFunc("GET /v1/digests", s.digests)
	m.HandleFunc("GET /v1/conflicts", s.listConflicts)
	m.HandleFunc("GET /v1/conflicts/{id}", s.getConflict)
	m.HandleFunc("POST /v1/conflicts/{id}/resolve", s.resolveConflict)
	m.HandleFunc("GET /v1/status", s.status)
	m.HandleFunc("GET /v1/watch", s.watch)
	m.HandleFunc("GET /v1/changes", s.changes)
	m.HandleFunc("GET /v1/deadletters", s.deadLetters)
	for p := range uiPatterns {
		m.Handle(p, ui.Handler())
	}
	m.HandleFunc("GET /v1/openapi.json", serveOpenAPI)
	m.HandleFunc("GET /healthz", s.healthz)
	m.HandleFunc("GET /readyz", s.readyz)
	m.HandleFunc("GET /metrics", s.serveMetrics)
}

// routeRecorder registers routes on the server's mux and keeps their
// patterns, which TestOpenAPI holds against the API reference.
type routeRecorder struct{ s *server }

func (m routeRecorder) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.Handle(pattern, http.HandlerFunc(h))
}

func (m routeRecorder) Handle(pattern string, h http.Handler) {
	m.s.mux.Handle(pattern, h)
	m.s.patterns = append(m.s.patterns, pattern)
}

// uiPatterns are the status page's routes: served without the token, since
// the page holds no data and sends the token on its own API calls.
var uiPatterns = map[string]bool{"GET " + ui.Prefix: true, "GET " + ui.Prefix + "/": true}

// openPaths need no token: probes of supervisors and load balancers,
// which hold no data.
var openPaths = map[string]bool{"/healthz": true, "/readyz": true, "/v1/openapi.json": true}

// probeMethods are the methods the routes use, tried to tell 405 from 404.
var probeMethods = []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPost, http.MethodPatch}

// ServeHTTP records metrics, recovers from panics, checks the token and the
// path, and dispatches; 404 and 405 get JSON bodies like every other error.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	_, pattern := s.mux.Handler(r)
	defer func() {
		s.metrics.observe(pattern, r.Method, rec.status(), time.Since(start))
	}()
	defer s.recoverPanic(rec, r)

	if !openPaths[r.URL.Path] && !uiPatterns[pattern] && !s.authorized(r) {
		rec.Header().Set("WWW-Authenticate", `Bearer realm="replicator"`)
		writeError(rec, http.StatusUnauthorized, "missing or wrong bearer token: send the header \"Authorization: Bearer <token>\" with the sidecar's http.token")
		return
	}
	if p := r.URL.EscapedPath(); p != "" && cleanPath(p) != p {
		writeError(rec, http.StatusBadRequest, fmt.Sprintf("path %q has empty, \".\" or \"..\" segments; percent-encode keys (url.PathEscape) so every byte, '/' included, reaches the server as written", p))
		return
	}
	if pattern == "" {
		var allowed []string
		for _, m := range probeMethods {
			probe := *r
			probe.Method = m
			if _, p := s.mux.Handler(&probe); p != "" {
				allowed = append(allowed, m)
			}
		}
		if len(allowed) > 0 {
			if slices.Contains(allowed, http.MethodGet) {
				allowed = append(allowed, http.MethodHead)
			}
			rec.Header().Set("Allow", strings.Join(allowed, ", "))
			writeError(rec, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s; use %s", r.Method, r.URL.Path, strings.Join(allowed, ", ")))
			return
		}
		writeError(rec, http.StatusNotFound, fmt.Sprintf("no route %s %s; the API lives under /v1/ (kv, txn, changes, digest, digests, conflicts, status, watch, deadletters), plus /healthz, /readyz, /metrics and the status page /ui", r.Method, r.URL.Path))
		return
	}
	s.mux.ServeHTTP(rec, r)
}

// recoverPanic turns a handler panic into a logged 500, as a last resort:
// no input should reach it.
func (s *server) recoverPanic(w *recorder, r *http.Request) {
	v := recover()
	if v == nil {
		return
	}
	if v == http.ErrAbortHandler {
		panic(v)
	}
	s.log.Error("http handler panicked", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
	if !w.wroteHeader {
		writeError(w, http.StatusInternalServerError, "internal error; the sidecar logged the details")
	}
}

func (s *server) authorized(r *http.Request) bool {
	if s.tokenSum == nil {
		return true
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	// Comparing digests keeps the comparison constant-time in the length too.
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(sum[:], s.tokenSum) == 1
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	if err := s.b.Ready(); err != nil {
		writeError(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprintln(w, "ok")
}

// readyz answers 200 once the DC is healthy and has caught up since it
// started, else 503 with what it waits for (see bridge.Readiness).
func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, nil) {
		return
	}
	// A probe without the token (when one is set) gets the verdict only:
	// the detail names peers, origins and how far behind they are.
	full := s.authorized(r)
	if err := s.b.Ready(); err != nil {
		why := "not healthy"
		if full {
			why += ": " + err.Error()
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "error": why})
		return
	}
	ready, detail := s.b.Readiness()
	code := http.StatusOK
	if !ready {
		code = http.StatusServiceUnavailable
	}
	if detail == nil || !full {
		detail = map[string]bool{"ready": ready}
	}
	writeJSON(w, code, detail)
}

func (s *server) status(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, nil) {
		return
	}
	writeJSON(w, http.StatusOK, s.b.Status())
}

func (s *server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if s.metrics.handler == nil {
		writeError(w, http.StatusNotFound, "metrics are not enabled: the sidecar was started without a Prometheus registry")
		return
	}
	s.metrics.handler.ServeHTTP(w, r)
}

// query parses the query string, accepting only the allowed parameters,
// each at most once. It answers 400 and returns false on a bad one.
func (s *server) query(w http.ResponseWriter, r *http.Request, allowed []string) bool {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("query string %q is malformed: %v; percent-encode parameter values", r.URL.RawQuery, err))
		return false
	}
	for name, vals := range q {
		if !slices.Contains(allowed, name) {
			msg := fmt.Sprintf("unknown query parameter %q; %s takes none", name, r.URL.Path)
			if len(allowed) > 0 {
				msg = fmt.Sprintf("unknown query parameter %q; %s takes %s", name, r.URL.Path, strings.Join(allowed, ", "))
			}
			writeError(w, http.StatusBadRequest, msg)
			return false
		}
		if len(vals) > 1 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("query parameter %q is given %d times; give it once", name, len(vals)))
			return false
		}
	}
	return true
}

// backendError answers for an error from the Backend with the status
// apierr.Status gives it: input errors 4xx, a DC behind the client's
// context 503 with Retry-After, a closed store 503, anything else a logged
// 500.
func (s *server) backendError(w http.ResponseWriter, r *http.Request, what string, err error) {
	code := apierr.Status(err)
	if apierr.RetryHere(err) {
		w.Header().Set("Retry-After", "1")
	}
	var se apierr.StatusError
	switch {
	case errors.As(err, &se):
		// An error that knows its status (a home-DC refusal) says why
		// itself.
	case errors.Is(err, changelog.ErrClosed):
		writeError(w, code, fmt.Sprintf("%s: the store is closed (the sidecar is shutting down); retry against a running sidecar", what))
		return
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The client left or the server is shutting down; nobody reads this.
		writeError(w, code, fmt.Sprintf("%s: request canceled before it completed; retry", what))
		return
	case code == http.StatusInternalServerError:
		s.log.Error("http request failed", "method", r.Method, "path", r.URL.Path, "op", what, "err", err)
		writeError(w, code, fmt.Sprintf("%s failed inside the sidecar; the sidecar logged the details", what))
		return
	}
	writeError(w, code, fmt.Sprintf("%s: %v", what, err))
}

type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: "encode response: " + err.Error()})
	}
	writeJSONBytes(w, code, append(b, '\n'))
}

// The headers of every JSON answer, in canonical form. Assigning these
// shared slices saves an allocation each per answer; nothing changes a
// header value in place (Add appends past their capacity).
var (
	contentTypeJSON = []string{"application/json"}
	noSniff         = []string{"nosniff"}
	noStore         = []string{"no-store"}
)

// writeJSONBytes sends b, a JSON document and its newline, with code.
func writeJSONBytes(w http.ResponseWriter, code int, b []byte) {
	h := w.Header()
	h["Content-Type"] = contentTypeJSON
	h["X-Content-Type-Options"] = noSniff
	h["Cache-Control"] = noStore
	w.WriteHeader(code)
	w.Write(b)
}

// cleanPath is net/http's canonical form of a request path: path.Clean,
// keeping a trailing slash.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		if len(p) == len(np)+1 && strings.HasPrefix(p, np) {
			return p
		}
		np += "/"
	}
	return np
}

// recorder remembers the status written, for metrics and for the panic
// handler; Unwrap lets http.ResponseController reach Flush.
type recorder struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.code, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.wroteHeader {
		r.code, r.wroteHeader = http.StatusOK, true
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		if !r.wroteHeader {
			r.code, r.wroteHeader = http.StatusOK, true
		}
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) status() int {
	if !r.wroteHeader {
		return http.StatusOK
	}
	return r.code
}

// metrics are the request metrics; handler serves /metrics.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	watchers prometheus.Gauge
	handler  http.Handler
	// series holds each (route, method, code)'s counter and histogram
	// once resolved, so that a request does not hash its labels again.
	series sync.Map // seriesKey -> *series
}

type seriesKey struct {
	route, method string
	code          int
}

type series struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

func newMetrics(reg prometheus.Registerer, labels prometheus.Labels, log *slog.Logger) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "replicator_http_requests_total",
			Help:        "HTTP API requests, by route pattern, method and status code.",
			ConstLabels: labels,
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "replicator_http_request_duration_seconds",
			Help:        "HTTP API request latency, by route pattern and method; streams count until they end.",
			Buckets:     prometheus.DefBuckets,
			ConstLabels: labels,
		}, []string{"route", "method"}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "replicator_http_watchers",
			Help:        "Open GET /v1/watch streams.",
			ConstLabels: labels,
		}),
	}
	if reg == nil {
		return m
	}
	m.requests = register(reg, log, m.requests)
	m.duration = register(reg, log, m.duration)
	m.watchers = register(reg, log, m.watchers)
	if g, ok := reg.(prometheus.Gatherer); ok {
		m.handler = promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	}
	return m
}

// register registers c, or reuses the collector already registered under
// its name, so two handlers on one registry share their metrics.
func register[C prometheus.Collector](reg prometheus.Registerer, log *slog.Logger, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	log.Error("register http metrics", "err", err)
	return c
}

func (m *metrics) observe(route, method string, code int, d time.Duration) {
	if route == "" {
		route = "unmatched"
	}
	if !slices.Contains(probeMethods, method) && method != http.MethodHead {
		method = "other"
	}
	k := seriesKey{route, method, code}
	v, ok := m.series.Load(k)
	if !ok {
		v, _ = m.series.LoadOrStore(k, &series{
			requests: m.requests.WithLabelValues(route, method, strconv.Itoa(code)),
			duration: m.duration.WithLabelValues(route, method),
		})
	}
	sr := v.(*series)
	sr.requests.Inc()
	sr.duration.Observe(d.Seconds())
}
