package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/session"
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
	// Expires is when the live value expires (the longest TTL of its live
	// siblings wins), an HLC time, and ExpiresTime the same as wall-clock
	// time; both absent for a value without a TTL.
	Expires     uint64 `json:"expires,omitempty"`
	ExpiresTime string `json:"expires_time,omitempty"`
	// Dot is set on the answer to a conflict resolution: the write's dot.
	Dot string `json:"dot,omitempty"`
}

type siblingJSON struct {
	Value   []byte `json:"value"`
	Deleted bool   `json:"deleted"`
	Origin  string `json:"origin"`
	Dot     string `json:"dot"`
	HLC     uint64 `json:"hlc"`
	// Expires is the sibling's own expiry (its TTL), an HLC time; absent
	// without a TTL.
	Expires uint64 `json:"expires,omitempty"`
}

// WriteAnswer is the answer to a write: HTTP PUT and DELETE, NATS put and
// del.
type WriteAnswer struct {
	Key     string `json:"key"`
	Context string `json:"context"`
	Dot     string `json:"dot"`
	// Session is the session token of the write (its Nats-Msg-Id), merged
	// with the token the request carried.
	Session string `json:"session"`
	// Replicated is how many DCs, this one included, had applied the
	// write when it was answered; set only when the request asked to wait
	// for them.
	Replicated int `json:"replicated,omitempty"`
	// Error says, on a write that stood but did not reach the DCs it
	// waited for in time (HTTP 202), how far it got.
	Error string `json:"error,omitempty"`
}

// Replicas is what answering a write needs to wait for other DCs;
// *changelog.Store and every Backend have it.
type Replicas interface {
	WaitReplicated(ctx context.Context, tok session.Token, n int) (int, error)
}

// AnswerWrite builds the answer to the write that made res, whose request
// carried the session token carried, waiting first, when ack asks, up to
// ack.Timeout for ack.N DCs to have applied it. It reports false when the
// write stood but fewer DCs had applied it in time: the answer's Error
// then says so, and HTTP answers 202. Transactions answer the same way.
func AnswerWrite(ctx context.Context, rep Replicas, key string, res changelog.WriteResult, carried session.Token, ack session.Ack) (WriteAnswer, bool) {
	out := WriteAnswer{Key: key, Context: res.State.Clock.String(), Session: carried.String()}
	if res.Event == nil {
		return out, true
	}
	ev := res.Event
	out.Dot = ev.Dot.String()
	mine := session.Of(session.Entry{Origin: ev.Origin, Partition: ev.Partition, Seq: ev.Seq})
	out.Session = carried.Merge(mine).String()
	if ack.N == 0 {
		return out, true
	}
	var complete bool
	out.Replicated, out.Error, complete = replicate(ctx, rep, mine, ack)
	return out, complete
}

// replicate waits, up to ack.Timeout, for ack.N DCs to have applied every
// event tok names. It returns how many had, and when fewer did, says so.
func replicate(ctx context.Context, rep Replicas, tok session.Token, ack session.Ack) (k int, shortfall string, complete bool) {
	wctx, cancel := context.WithTimeout(ctx, ack.Timeout)
	defer cancel()
	k, err := rep.WaitReplicated(wctx, tok, ack.N)
	if k >= ack.N {
		return k, "", true
	}
	shortfall = session.Shortfall(k, ack.N, ack.Timeout)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		shortfall += fmt.Sprintf(" (the wait ended early: %v)", err)
	}
	return k, shortfall, false
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
		out.Siblings[i] = siblingJSON{Value: sb.Value, Deleted: sb.Deleted, Origin: sb.Origin(), Dot: sb.Dot.String(), HLC: sb.HLC, Expires: sb.Expires}
	}
	if at := st.Expiry(); at != 0 {
		out.Expires, out.ExpiresTime = at, hlc.Timestamp(at).String()
	}
	return out, res.Deleted || len(st.Siblings) == 0
}

// view shows key as a read at this DC shows it now: an expired value
// reads as deleted (dvv.State.Visible, by this DC's HLC).
func (s *server) view(key string, st dvv.State) (keyJSON, bool) {
	return view(s.b.Resolver(key), key, st.Visible(s.b.Now()))
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

// ParseContext parses a client's context, "{dc1:3,dc2:1}", rejecting more
// entries than there can be DCs and absurd counters.
func ParseContext(text string) (vclock.VV, error) {
	vv, err := vclock.Parse(text)
	if err != nil {
		return nil, err
	}
	if len(vv) > vclock.MaxEntries {
		return nil, fmt.Errorf("it has %d entries, over the %d-DC limit", len(vv), vclock.MaxEntries)
	}
	for dc, n := range vv {
		if n >= event.MaxCounter {
			return nil, fmt.Errorf("counter %s:%d is absurd (must be below 2^62)", dc, n)
		}
	}
	return vv, nil
}

// oneValue returns the one value of header name, or of query parameter
// param when it is not ""; given reports whether either is there. Giving
// the header twice, or both, answers 400 and returns false.
func oneValue(w http.ResponseWriter, r *http.Request, name, param string) (text string, given, ok bool) {
	vals := r.Header.Values(name)
	inQuery := param != "" && r.URL.Query().Has(param)
	switch {
	case len(vals) > 1:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s is given %d times; give it once", name, len(vals)))
		return "", false, false
	case len(vals) == 1 && inQuery:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("both %s and ?%s= are given; give one", name, param))
		return "", false, false
	case len(vals) == 1:
		return vals[0], true, true
	case inQuery:
		return r.URL.Query().Get(param), true, true
	}
	return "", false, true
}

// requestContext parses X-Repl-Context (or, when param is not "", that
// query parameter): nil when absent (a blind write). On a bad one it
// answers 400 and returns false.
func requestContext(w http.ResponseWriter, r *http.Request, param string) (vclock.VV, bool) {
	text, given, ok := oneValue(w, r, ContextHeader, param)
	if !given {
		return nil, ok
	}
	vv, err := ParseContext(text)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s %q is not a valid context: %v; send it exactly as a read of the key returned it, or leave the header out for a blind write", ContextHeader, text, err))
		return nil, false
	}
	return vv, true
}

// requestSession parses X-Repl-Session, every value of it joined (or,
// when param is not "", that query parameter instead): nil when absent.
// On a bad one it answers 400 and returns false.
func (s *server) requestSession(w http.ResponseWriter, r *http.Request, param string) (session.Token, bool) {
	text := strings.Join(r.Header.Values(SessionHeader), ",")
	if param != "" && r.URL.Query().Has(param) {
		if text != "" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("both %s and ?%s= are given; give one", SessionHeader, param))
			return nil, false
		}
		text = r.URL.Query().Get(param)
	}
	tok, err := s.b.Scope().Parse(text)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s is not a valid session token: %v; send the tokens write answers gave, joined by commas", SessionHeader, err))
		return nil, false
	}
	return tok, true
}

// requestAck parses X-Repl-Wait and X-Repl-Wait-Timeout. On a bad one it
// answers 400 and returns false.
func (s *server) requestAck(w http.ResponseWriter, r *http.Request) (session.Ack, bool) {
	wait, given, ok := oneValue(w, r, WaitHeader, "")
	if !ok {
		return session.Ack{}, false
	}
	if given && wait == "" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s is empty; give a number of DCs or %q, or leave it out; nothing was written", WaitHeader, session.WaitAll))
		return session.Ack{}, false
	}
	timeout, _, ok := oneValue(w, r, WaitTimeoutHeader, "")
	if !ok {
		return session.Ack{}, false
	}
	ack, err := s.b.Scope().ParseAck(wait, timeout, WaitHeader, WaitTimeoutHeader)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error()+"; nothing was written")
		return session.Ack{}, false
	}
	return ack, true
}

func (s *server) missingKey(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusBadRequest, fmt.Sprintf("%s needs a key: use %s /v1/kv/{key}", r.Method, r.Method))
}

// ParseTTL reads a TTL given as Go duration text ("30s", "1h"); "" is no
// TTL. The error names the value and the bounds.
func ParseTTL(text string) (time.Duration, error) {
	if text == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(text)
	if err != nil {
		return 0, fmt.Errorf("ttl %q is not a Go duration such as 30s or 1h30m", text)
	}
	if d <= 0 {
		return 0, fmt.Errorf("ttl %q is not positive; give a positive duration, or none for a value that never expires", text)
	}
	if err := changelog.CheckTTL(d); err != nil {
		return 0, fmt.Errorf("ttl %q: %w", text, err)
	}
	return d, nil
}

func (s *server) putKey(w http.ResponseWriter, r *http.Request) {
	op, req, ok := s.writeRequest(w, r)
	if !ok {
		return
	}
	text, _, ok := oneValue(w, r, TTLHeader, "")
	if !ok {
		return
	}
	if op.TTL, ok = s.ttl(w, text); !ok {
		return
	}
	if op.Value, ok = s.readValue(w, r); !ok {
		return
	}
	s.write(w, r, op, req)
}

// ttl parses a TTLHeader's text, or answers 400 naming it and returns
// false.
func (s *server) ttl(w http.ResponseWriter, text string) (time.Duration, bool) {
	d, err := ParseTTL(text)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %v; nothing was written", TTLHeader, err))
		return 0, false
	}
	return d, true
}

func (s *server) deleteKey(w http.ResponseWriter, r *http.Request) {
	op, req, ok := s.writeRequest(w, r)
	if !ok {
		return
	}
	if r.Header.Get(TTLHeader) != "" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("a DELETE carries no %s: only a value expires; nothing was written", TTLHeader))
		return
	}
	op.Delete = true
	s.write(w, r, op, req)
}

// writeReq is what a write request carries besides its op.
type writeReq struct {
	session session.Token
	ack     session.Ack
}

// writeRequest parses a PUT's or DELETE's key and headers. On a bad one
// it answers 400 and returns false, before anything is written.
func (s *server) writeRequest(w http.ResponseWriter, r *http.Request) (changelog.WriteOp, writeReq, bool) {
	var op changelog.WriteOp
	var req writeReq
	var ok bool
	if op.Key, ok = s.pathKey(w, r); !ok || !s.query(w, r, nil) {
		return op, req, false
	}
	if op.Context, ok = requestContext(w, r, ""); !ok {
		return op, req, false
	}
	if req.session, ok = s.requestSession(w, r, ""); !ok {
		return op, req, false
	}
	req.ack, ok = s.requestAck(w, r)
	return op, req, ok
}

func (s *server) write(w http.ResponseWriter, r *http.Request, op changelog.WriteOp, req writeReq) {
	what := "write " + strconv.Quote(op.Key)
	if len(req.session) > 0 {
		if err := s.b.WaitRead(r.Context(), "", nil, req.session); err != nil {
			s.backendError(w, r, what, err)
			return
		}
	}
	res, err := s.b.Write(r.Context(), op)
	if err != nil {
		s.backendError(w, r, what, err)
		return
	}
	body, complete := AnswerWrite(r.Context(), s.b, op.Key, res, req.session, req.ack)
	h := w.Header()
	// Assigned, not Set: both names are already canonical, and every write
	// answers with them.
	h[ContextHeader] = []string{body.Context}
	h[SessionHeader] = []string{body.Session}
	code := http.StatusOK
	if req.ack.N > 0 {
		h.Set(ReplicatedHeader, strconv.Itoa(body.Replicated))
		if !complete {
			code = http.StatusAccepted
		}
	}
	writeJSONBytes(w, code, body.append(make([]byte, 0, 48+len(body.Key)+len(body.Context)+len(body.Dot)+len(body.Session)+len(body.Error))))
}

// waitRead waits until this DC covers what a read carries: a context
// (when allowContext; over a listing it is refused) and a session token,
// from headers or the min_context and min_session parameters. It answers
// 400 or 503 and returns false when it cannot serve the read.
func (s *server) waitRead(w http.ResponseWriter, r *http.Request, key string, allowContext bool) bool {
	what := "read " + strconv.Quote(key)
	if !allowContext {
		what = "list keys"
		if r.Header.Get(ContextHeader) != "" || r.URL.Query().Has("min_context") {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("a listing covers many keys, and a context (%s, ?min_context=) says what to wait for of one key only; send the session token write answers gave, as %s or ?min_session=", ContextHeader, SessionHeader))
			return false
		}
	}
	var vctx vclock.VV
	var ok bool
	if allowContext {
		if vctx, ok = requestContext(w, r, "min_context"); !ok {
			return false
		}
	}
	tok, ok := s.requestSession(w, r, "min_session")
	if !ok {
		return false
	}
	if len(vctx) == 0 && len(tok) == 0 {
		return true
	}
	if err := s.b.WaitRead(r.Context(), key, vctx, tok); err != nil {
		s.backendError(w, r, what, err)
		return false
	}
	return true
}

// append appends b's JSON form and a newline to dst, byte for byte what
// json.Marshal writes, without its reflection: every write answers with it.
func (b WriteAnswer) append(dst []byte) []byte {
	dst = append(dst, `{"key":`...)
	dst = appendJSONString(dst, b.Key)
	dst = append(dst, `,"context":`...)
	dst = appendJSONString(dst, b.Context)
	dst = append(dst, `,"dot":`...)
	dst = appendJSONString(dst, b.Dot)
	dst = append(dst, `,"session":`...)
	dst = appendJSONString(dst, b.Session)
	if b.Replicated != 0 {
		dst = append(dst, `,"replicated":`...)
		dst = strconv.AppendInt(dst, int64(b.Replicated), 10)
	}
	if b.Error != "" {
		dst = append(dst, `,"error":`...)
		dst = appendJSONString(dst, b.Error)
	}
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

// readValue reads a PUT body, the value: at most the value limit (or the
// body limit, if lower); over it answers 413 naming the limit.
func (s *server) readValue(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	limit, name := int64(s.opts.MaxValueBytes), "limits.max_value_bytes"
	if s.opts.MaxBodyBytes < limit {
		limit, name = s.opts.MaxBodyBytes, "http.max_body_bytes"
	}
	return readLimited(w, r, limit, fmt.Sprintf("the value is over %s (%d bytes); store a smaller value (a value travels in one NATS message)", name, limit))
}

// readBody reads the whole body, at most limit bytes; over it answers 413.
func (s *server) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	return readLimited(w, r, limit, fmt.Sprintf("the body is over the %d-byte limit; store smaller values (a value travels in one NATS message)", limit))
}

// readLimited reads the whole body, at most limit bytes; over it answers
// 413 with tooLargeMsg.
func readLimited(w http.ResponseWriter, r *http.Request, limit int64, tooLargeMsg string) ([]byte, bool) {
	tooLarge := func() ([]byte, bool) {
		writeError(w, http.StatusRequestEntityTooLarge, tooLargeMsg)
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
	if !ok || !s.query(w, r, []string{"min_context", "min_session"}) || !s.waitRead(w, r, key, true) {
		return
	}
	st, _, err := s.b.Get(key)
	if err != nil {
		s.backendError(w, r, "read "+strconv.Quote(key), err)
		return
	}
	out, deleted := s.view(key, st)
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
	if !s.query(w, r, []string{"prefix", "limit", "after", "min_session", "min_context"}) || !s.waitRead(w, r, "", false) {
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
	after := r.URL.Query().Get("after")
	if len(after) > s.opts.MaxKeyBytes {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("after is %d bytes, longer than the %d-byte key limit; give the last key of the previous page (%s)", len(after), s.opts.MaxKeyBytes, NextAfterHeader))
		return
	}
	s.listPage(w, r, prefix, after, limit)
}

// View is the JSON shape of a key as reads show it; the NATS API answers
// with the same shape.
type View = keyJSON

// NewView runs the key's resolver over st as a read at HLC time now shows
// it (an expired value reads as deleted); deleted reports that no live
// value is shown.
func NewView(r resolve.Resolver, key string, st dvv.State, now uint64) (v View, deleted bool) {
	return view(r, key, st.Visible(now))
}
