package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// keyJSON is a key as GET /v1/kv/{key} and the NDJSON streams show it.
type keyJSON struct {
	Key      string        `json:"key"`
	Context  string        `json:"context"`
	Values   [][]byte      `json:"values"`
	Siblings []siblingJSON `json:"siblings"`
	Conflict bool          `json:"conflict"`
	Resolver string        `json:"resolver"`
	// Dot is set on the answer to a conflict resolution: the write's dot.
	Dot string `json:"dot,omitempty"`
}

type siblingJSON struct {
	Value   []byte `json:"value"`
	Deleted bool   `json:"deleted"`
	Origin  string `json:"origin"`
	Dot     string `json:"dot"`
	HLC     uint64 `json:"hlc"`
}

// writeJSONBody is the answer to PUT and DELETE.
type writeJSONBody struct {
	Key     string `json:"key"`
	Context string `json:"context"`
	Dot     string `json:"dot"`
}

// notFoundBody is the 404 of GET /v1/kv/{key}: the context lets a client
// write the key again without a blind write.
type notFoundBody struct {
	Error   string `json:"error"`
	Key     string `json:"key"`
	Context string `json:"context"`
}

// view runs the key's resolver over st; deleted reports that no live value
// is shown.
func view(r resolve.Resolver, key string, st dvv.State) (out keyJSON, deleted bool) {
	res := r.Resolve(key, st.Siblings)
	out = keyJSON{
		Key:      key,
		Context:  st.Clock.String(),
		Values:   res.Values,
		Siblings: make([]siblingJSON, len(st.Siblings)),
		Conflict: res.Conflict,
		Resolver: r.Name(),
	}
	if out.Values == nil || res.Deleted {
		out.Values = [][]byte{}
	}
	if n := r.Name(); (n == resolve.NameSiblings || n == resolve.NameRecord) && st.LiveCount() > 1 {
		out.Conflict = true
	}
	for i, sb := range st.Siblings {
		out.Siblings[i] = siblingJSON{Value: sb.Value, Deleted: sb.Deleted, Origin: sb.Origin(), Dot: sb.Dot.String(), HLC: sb.HLC}
	}
	return out, res.Deleted || len(st.Siblings) == 0
}

// checkKey says why key cannot be stored, with the rules an event applies
// to keys (they travel in NATS headers), or returns "".
func checkKey(key string, maxBytes int) string {
	if key == "" {
		return "the key is empty; put it in the path: /v1/kv/{key}"
	}
	if len(key) > maxBytes {
		return fmt.Sprintf("the key is %d bytes, over the %d-byte limit; use a shorter key", len(key), maxBytes)
	}
	if !utf8.ValidString(key) {
		return fmt.Sprintf("key %q is not valid UTF-8; keys must be UTF-8 text", key)
	}
	for i, c := range key {
		if c < 0x20 || c == 0x7f {
			return fmt.Sprintf("key %q has control character %U at byte %d; keys must not contain control characters", key, c, i)
		}
	}
	return ""
}

// pathKey returns the {key} path value, or answers 400 and returns false.
func (s *server) pathKey(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.PathValue("key")
	if msg := checkKey(key, s.opts.MaxKeyBytes); msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return "", false
	}
	return key, true
}

// requestContext parses X-Repl-Context: nil when absent (a blind write).
// On a bad one it answers 400 and returns false.
func requestContext(w http.ResponseWriter, r *http.Request) (vclock.VV, bool) {
	vals := r.Header.Values(ContextHeader)
	switch len(vals) {
	case 0:
		return nil, true
	case 1:
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s is given %d times; send the one context your last read returned", ContextHeader, len(vals)))
		return nil, false
	}
	bad := func(why string) (vclock.VV, bool) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s %q is not a valid context: %s; send it exactly as a read of the key returned it, or leave the header out for a blind write", ContextHeader, vals[0], why))
		return nil, false
	}
	vv, err := vclock.Parse(vals[0])
	if err != nil {
		return bad(err.Error())
	}
	if len(vv) > vclock.MaxEntries {
		return bad(fmt.Sprintf("it has %d entries, over the %d-DC limit", len(vv), vclock.MaxEntries))
	}
	for dc, n := range vv {
		if n >= event.MaxCounter {
			return bad(fmt.Sprintf("counter %s:%d is absurd (must be below 2^62)", dc, n))
		}
	}
	return vv, true
}

func (s *server) missingKey(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusBadRequest, fmt.Sprintf("%s needs a key: use %s /v1/kv/{key}", r.Method, r.Method))
}

func (s *server) putKey(w http.ResponseWriter, r *http.Request) {
	key, ok := s.pathKey(w, r)
	if !ok || !s.query(w, r, nil) {
		return
	}
	vctx, ok := requestContext(w, r)
	if !ok {
		return
	}
	value, ok := s.readBody(w, r, s.opts.MaxBodyBytes)
	if !ok {
		return
	}
	s.write(w, r, changelog.WriteOp{Key: key, Value: value, Context: vctx})
}

func (s *server) deleteKey(w http.ResponseWriter, r *http.Request) {
	key, ok := s.pathKey(w, r)
	if !ok || !s.query(w, r, nil) {
		return
	}
	vctx, ok := requestContext(w, r)
	if !ok {
		return
	}
	s.write(w, r, changelog.WriteOp{Key: key, Delete: true, Context: vctx})
}

func (s *server) write(w http.ResponseWriter, r *http.Request, op changelog.WriteOp) {
	res, err := s.b.Write(r.Context(), op)
	if err != nil {
		s.backendError(w, r, "write "+strconv.Quote(op.Key), err)
		return
	}
	body := writeJSONBody{Key: op.Key, Context: res.State.Clock.String()}
	if res.Event != nil {
		body.Dot = res.Event.Dot.String()
	}
	w.Header()[ContextHeader] = []string{body.Context}
	writeJSONBytes(w, http.StatusOK, body.append(make([]byte, 0, 32+len(body.Key)+len(body.Context)+len(body.Dot))))
}

// append appends b's JSON form and a newline to dst, byte for byte what
// json.Marshal writes, without its reflection: every write answers with it.
func (b writeJSONBody) append(dst []byte) []byte {
	dst = append(dst, `{"key":`...)
	dst = appendJSONString(dst, b.Key)
	dst = append(dst, `,"context":`...)
	dst = appendJSONString(dst, b.Context)
	dst = append(dst, `,"dot":`...)
	dst = appendJSONString(dst, b.Dot)
	return append(dst, "}\n"...)
}

// appendJSONString appends s as json.Marshal quotes it: printable ASCII
// that needs no escape (keys, contexts and dots almost always are) is
// copied; anything else is left to encoding/json.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(dst, q...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// readBody reads the whole body, at most limit bytes; over it answers 413.
func (s *server) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	tooLarge := func() ([]byte, bool) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is over the %d-byte limit; store smaller values (a value travels in one NATS message)", limit))
		return nil, false
	}
	if r.ContentLength > limit {
		return tooLarge()
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge()
		}
		writeError(w, http.StatusBadRequest, fmt.Sprintf("reading the body failed: %v; send the whole body", err))
		return nil, false
	}
	return b, true
}

func (s *server) getKey(w http.ResponseWriter, r *http.Request) {
	key, ok := s.pathKey(w, r)
	if !ok || !s.query(w, r, nil) {
		return
	}
	st, _, err := s.b.Get(key)
	if err != nil {
		s.backendError(w, r, "read "+strconv.Quote(key), err)
		return
	}
	out, deleted := view(s.b.Resolver(key), key, st)
	w.Header().Set(ContextHeader, out.Context)
	if deleted {
		writeJSON(w, http.StatusNotFound, notFoundBody{
			Error:   fmt.Sprintf("key %q has no live value; to create it, PUT with %s set to the context given here", key, ContextHeader),
			Key:     key,
			Context: out.Context,
		})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// errStop ends a scan early without an error.
var errStop = errors.New("httpapi: stop scan")

// limitParam parses a positive limit; 0 when absent. On a bad one it
// answers 400 and returns false.
func limitParam(w http.ResponseWriter, r *http.Request) (int, bool) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 0, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q is not a positive integer; leave it out for the default (all keys; %d conflicts)", v, DefaultConflictLimit))
		return 0, false
	}
	return n, true
}

// prefixParam returns the prefix parameter, or answers 400 for one longer
// than any key.
func (s *server) prefixParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	p := r.URL.Query().Get("prefix")
	if len(p) > s.opts.MaxKeyBytes {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("prefix is %d bytes, longer than the %d-byte key limit, so it can match nothing", len(p), s.opts.MaxKeyBytes))
		return "", false
	}
	return p, true
}

// ndjson writes one JSON document per line and flushes as it goes. The
// status line goes out with the first document, so an error before it can
// still get its own status.
type ndjson struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	enc     *json.Encoder
	started bool
}

func newNDJSON(w http.ResponseWriter) *ndjson {
	return &ndjson{w: w, rc: http.NewResponseController(w), enc: json.NewEncoder(w)}
}

// start sends the status line and headers now.
func (n *ndjson) start() error {
	if n.started {
		return nil
	}
	n.started = true
	h := n.w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	n.w.WriteHeader(http.StatusOK)
	return n.flush()
}

func (n *ndjson) send(v any) error {
	if err := n.start(); err != nil {
		return err
	}
	if err := n.enc.Encode(v); err != nil {
		return err
	}
	return n.flush()
}

func (n *ndjson) flush() error {
	if err := n.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

func (s *server) listKeys(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, []string{"prefix", "limit"}) {
		return
	}
	prefix, ok := s.prefixParam(w, r)
	if !ok {
		return
	}
	limit, ok := limitParam(w, r)
	if !ok {
		return
	}
	out := newNDJSON(w)
	var sendErr error
	sent := 0
	err := s.b.Scan(prefix, func(key string, st dvv.State) error {
		if err := r.Context().Err(); err != nil {
			return err
		}
		line, deleted := view(s.b.Resolver(key), key, st)
		if deleted {
			return nil
		}
		if sendErr = out.send(line); sendErr != nil {
			return sendErr
		}
		sent++
		if limit > 0 && sent >= limit {
			return errStop
		}
		return nil
	})
	switch {
	case err == nil || errors.Is(err, errStop):
		out.start() // an empty listing is still a 200
	case sendErr != nil || r.Context().Err() != nil:
		// The client is gone; nobody reads the rest.
	case !out.started:
		s.backendError(w, r, "list keys", err)
	default:
		s.log.Error("http key listing failed midway", "prefix", prefix, "err", err)
		out.enc.Encode(errorBody{Error: "the listing failed midway inside the sidecar and is incomplete; retry"})
		out.flush()
	}
}

// View is the JSON shape of a key as reads show it; the NATS API answers
// with the same shape.
type View = keyJSON

// NewView runs the key's resolver over st; deleted reports that no live
// value is shown.
func NewView(r resolve.Resolver, key string, st dvv.State) (v View, deleted bool) {
	return view(r, key, st)
}
