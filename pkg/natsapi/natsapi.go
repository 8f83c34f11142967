// Package natsapi serves the sidecar's key-value API over NATS
// request/reply, as a NATS micro service that `nats micro ls` discovers,
// for applications that already speak NATS.
//
// Endpoints, for DC d: repl.api.d.get, repl.api.d.put, repl.api.d.del,
// repl.api.d.incr, repl.api.d.patch, repl.api.d.add, repl.api.d.remove,
// repl.api.d.txn and repl.api.d.changes. A get, put or del request is
// JSON {"key", "value" (base64) or "value_text", "context", "session",
// "wait", "wait_timeout", and on put "ttl"}; incr takes "by" instead of a value, add and
// remove "elements", patch "patch" (the operations of POST and PATCH
// /v1/kv/{key}). The answer to get is the same JSON as GET
// /v1/kv/{key}, to the writes {"key","context","dot","session"} (plus
// "replicated", and "error" when the wait timed out). A txn request and
// its answer are those of POST /v1/txn. A changes request {"since",
// "prefix", "limit"} answers a page of the change feed, {"changes",
// "next", "more"} (changes.go), and 410 when the feed no longer holds the
// changes after since. Errors use the micro error headers with an HTTP
// status code as the code: 400 bad request, 404 no live value, 503 closed
// or not caught up with the request's context or session (retry), 500
// otherwise.
//
// The fields mean what the HTTP headers do (invariant 12 in
// docs/DESIGN.md): "context" is X-Repl-Context, on a get too, where it
// makes the get wait until this DC covers it; "session" is X-Repl-Session,
// on get, put and del; "wait" (a number of DCs or "all") and
// "wait_timeout" (Go duration text) are X-Repl-Wait and
// X-Repl-Wait-Timeout. A write whose wait times out still stands: its
// answer is a normal reply, not an error, with "replicated" below what was
// asked and "error" saying so.
//
// The NATS interface it serves (repl.api.<dc>.*) is API
// (docs/INTERFACES.md); the Go package is internal to the sidecar.
package natsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/apierr"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/httpapi"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/session"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// Version is the service version micro reports.
const Version = "0.1.0"

// Request is the body of every endpoint.
type Request struct {
	Key       string  `json:"key"`
	Value     []byte  `json:"value,omitempty"`
	ValueText *string `json:"value_text,omitempty"`
	// Context is the context from a read, in text form ({dc1:3}); empty
	// for a blind write. A get with one waits until this DC covers it.
	Context string `json:"context,omitempty"`
	// Session is a session token (the "session" of write answers, joined
	// by commas); the request waits until this DC covers it.
	Session string `json:"session,omitempty"`
	// Wait, on put and del, asks to be answered once that many DCs have
	// applied the write: a number or "all".
	Wait Wait `json:"wait,omitempty"`
	// WaitTimeout bounds Wait, in Go duration text ("2s"); default 5s, at
	// most 1m.
	WaitTimeout string `json:"wait_timeout,omitempty"`
	// TTL, on put, gives the value a time to live in Go duration text
	// ("30s"), as X-Repl-TTL does.
	TTL string `json:"ttl,omitempty"`
	// By is incr's non-zero amount (counter keys).
	By *int64 `json:"by,omitempty"`
	// Elements are add's and remove's JSON values (set keys).
	Elements []json.RawMessage `json:"elements,omitempty"`
	// Patch is patch's RFC 7386 merge patch, a JSON object (fields keys).
	Patch json.RawMessage `json:"patch,omitempty"`
}

// Wait is the "wait" field: a JSON number or a string ("all", "2").
type Wait string

// UnmarshalJSON takes a number or a string.
func (w *Wait) UnmarshalJSON(b []byte) error {
	var n json.Number
	if err := json.Unmarshal(b, &n); err == nil {
		*w = Wait(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("wait is %s: want a number of DCs or \"all\"", b)
	}
	*w = Wait(s)
	return nil
}

// WriteReply answers put and del.
type WriteReply = httpapi.WriteAnswer

// WriteFunc is the write path put and del use.
type WriteFunc func(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error)

// Serve registers the service on nc, writing to store directly. Stop it
// with the returned Service's Stop.
func Serve(nc *nats.Conn, dc string, store *changelog.Store, rules *resolve.Rules) (micro.Service, error) {
	return ServeWrites(nc, dc, store, rules, store.Write)
}

// TxnFunc is the write path txn uses.
type TxnFunc func(ctx context.Context, ops []changelog.WriteOp) ([]changelog.WriteResult, error)

// ServeWrites is Serve with put and del going through write (the node's
// write path, which forwards writes to keys with a home DC elsewhere).
func ServeWrites(nc *nats.Conn, dc string, store *changelog.Store, rules *resolve.Rules, write WriteFunc) (micro.Service, error) {
	return ServeNode(nc, dc, store, rules, write, store.WriteTxn)
}

// ServeNode is ServeWrites with txn going through txn (the node's, which
// checks the keys' home DCs).
func ServeNode(nc *nats.Conn, dc string, store *changelog.Store, rules *resolve.Rules, write WriteFunc, txn TxnFunc) (micro.Service, error) {
	svc, _, err := ServeRouted(nc, dc, store, rules, write, txn, nil)
	return svc, err
}

// Route, when a sidecar is one of its DC's shards, sees every request
// first (op is the endpoint: get, put, del, txn, changes) and returns true
// when it has answered it itself, by forwarding it to the shard that owns
// its keys and relaying the answer, or refusing it.
type Route func(op string, r micro.Request) bool

// Handler runs an endpoint's handler on a request that did not come
// through the service (a request another shard forwarded); false for an
// unknown op.
type Handler func(op string, r micro.Request) bool

// ServeRouted is ServeNode with route (nil for none) asked before every
// endpoint; it also returns the endpoints' handler for forwarded requests.
func ServeRouted(nc *nats.Conn, dc string, store *changelog.Store, rules *resolve.Rules, write WriteFunc, txn TxnFunc, route Route) (micro.Service, Handler, error) {
	h := handler{store: store, rules: rules, writeFn: write, txnFn: txn}
	eps := map[string]micro.HandlerFunc{
		"txn":     h.txn,
		"changes": func(r micro.Request) { h.changes(r, nc.MaxPayload()) },
	}
	for op, fn := range map[string]func(micro.Request, Request){"get": h.get, "put": h.put, "del": h.del,
		"incr": h.typed(resolve.OpIncr), "patch": h.typed(resolve.OpPatch), "add": h.typed(resolve.OpAdd), "remove": h.typed(resolve.OpRemove)} {
		eps[op] = func(r micro.Request) {
			var req Request
			if err := json.Unmarshal(r.Data(), &req); err != nil {
				r.Error("400", "request is not JSON {key, value|value_text, by, elements, patch, context, session, wait, wait_timeout, ttl}: "+err.Error(), nil)
				return
			}
			if req.Key == "" {
				r.Error("400", "key is empty", nil)
				return
			}
			fn(r, req)
		}
	}
	direct := func(op string, r micro.Request) bool {
		fn, ok := eps[op]
		if ok {
			fn(r)
		}
		return ok
	}
	svc, err := micro.AddService(nc, micro.Config{
		Name:        "replicator",
		Version:     Version,
		Description: "replicator key-value API of DC " + dc,
		Metadata:    map[string]string{"dc": dc},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("natsapi: add service: %w", err)
	}
	g := svc.AddGroup(names.APIGroup(dc))
	for _, op := range []string{"get", "put", "del", "incr", "patch", "add", "remove", "txn", "changes"} {
		fn := eps[op]
		if route != nil {
			fn = func(r micro.Request) {
				if !route(op, r) {
					eps[op](r)
				}
			}
		}
		if err := g.AddEndpoint(op, fn); err != nil {
			svc.Stop()
			return nil, nil, fmt.Errorf("natsapi: add endpoint %s: %w", op, err)
		}
	}
	// Once Serve returns, a request from any connection reaches the
	// endpoints: the server has their subscriptions (a request sent just
	// after start otherwise found "no responders" now and then).
	if err := nc.Flush(); err != nil {
		svc.Stop()
		return nil, nil, fmt.Errorf("natsapi: flush the endpoints' subscriptions: %w", err)
	}
	return svc, direct, nil
}

// MsgRequest is a micro.Request over a plain NATS message, for requests
// another shard forwarded: answers go to the message's reply subject.
type MsgRequest struct{ Msg *nats.Msg }

var _ micro.Request = MsgRequest{}

func (r MsgRequest) respond(m *nats.Msg, opts []micro.RespondOpt) error {
	for _, opt := range opts {
		opt(m)
	}
	return r.Msg.RespondMsg(m)
}

// Respond answers data.
func (r MsgRequest) Respond(data []byte, opts ...micro.RespondOpt) error {
	return r.respond(&nats.Msg{Data: data}, opts)
}

// RespondJSON answers v as JSON.
func (r MsgRequest) RespondJSON(v any, opts ...micro.RespondOpt) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.Respond(b, opts...)
}

// Error answers an error as micro does, in its headers.
func (r MsgRequest) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	h := nats.Header{micro.ErrorHeader: {description}, micro.ErrorCodeHeader: {code}}
	return r.respond(&nats.Msg{Header: h, Data: data}, opts)
}

// Data is the request's body.
func (r MsgRequest) Data() []byte { return r.Msg.Data }

// Headers are the request's headers.
func (r MsgRequest) Headers() micro.Headers { return micro.Headers(r.Msg.Header) }

// Subject is the subject the request arrived on.
func (r MsgRequest) Subject() string { return r.Msg.Subject }

// Reply is where the answer goes.
func (r MsgRequest) Reply() string { return r.Msg.Reply }

// maxTxnRequest bounds a txn request before it is parsed.
const maxTxnRequest = 8 << 20

// TxnRequest is the body of txn: the ops of POST /v1/txn, and what a put
// carries besides its op: a session token to wait for, and a wait for
// other DCs to apply the transaction.
type TxnRequest struct {
	Ops         []httpapi.TxnOp `json:"ops"`
	Session     string          `json:"session,omitempty"`
	Wait        Wait            `json:"wait,omitempty"`
	WaitTimeout string          `json:"wait_timeout,omitempty"`
}

func (h handler) txn(r micro.Request) {
	if len(r.Data()) > maxTxnRequest {
		r.Error("413", fmt.Sprintf("the request is %d bytes, over the %d-byte limit", len(r.Data()), maxTxnRequest), nil)
		return
	}
	var req TxnRequest
	dec := json.NewDecoder(bytes.NewReader(r.Data()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		r.Error("400", `request is not a transaction {"ops":[{"op":"put"|"del","key","value"|"value_text","context","ttl"}...], "session", "wait", "wait_timeout"}: `+err.Error(), nil)
		return
	}
	lim := event.DefaultLimits()
	ops, err := httpapi.ParseTxn(httpapi.TxnRequest{Ops: req.Ops}, lim.MaxKeyBytes, lim.MaxValueBytes)
	if err != nil {
		r.Error(strconv.Itoa(apierr.InputStatus(err)), "txn: "+err.Error(), nil)
		return
	}
	tok, err := h.store.Scope().Parse(req.Session)
	if err != nil {
		r.Error("400", "session is not a valid session token: "+err.Error()+"; nothing was written", nil)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ack, ok := h.begin(ctx, r, tok, req.Wait, req.WaitTimeout)
	if !ok {
		return
	}
	res, err := h.txnFn(ctx, ops)
	if err != nil {
		fail(r, err)
		return
	}
	// The wait has its own bound (wait_timeout), not the write's.
	reply, _ := httpapi.AnswerTxn(context.Background(), h.store, ops, res, tok, ack)
	r.RespondJSON(reply)
}

type handler struct {
	store   *changelog.Store
	rules   *resolve.Rules
	writeFn WriteFunc
	txnFn   TxnFunc
}

// need parses what a request carries of what its client has seen: its
// context (nil when it has none) and its session token. It answers 400
// and returns false on a bad one.
func (h handler) need(r micro.Request, req Request) (vclock.VV, session.Token, bool) {
	var vctx vclock.VV
	if req.Context != "" {
		var err error
		if vctx, err = httpapi.ParseContext(req.Context); err != nil {
			r.Error("400", fmt.Sprintf("context %q is not a valid context: %v", req.Context, err), nil)
			return nil, nil, false
		}
	}
	tok, err := h.store.Scope().Parse(req.Session)
	if err != nil {
		r.Error("400", "session is not a valid session token: "+err.Error(), nil)
		return nil, nil, false
	}
	return vctx, tok, true
}

func (h handler) get(r micro.Request, req Request) {
	vctx, tok, ok := h.need(r, req)
	if !ok {
		return
	}
	if len(vctx) > 0 || len(tok) > 0 {
		if err := h.store.WaitRead(context.Background(), req.Key, vctx, tok); err != nil {
			fail(r, err)
			return
		}
	}
	st, _, err := h.store.Get(req.Key)
	if err != nil {
		fail(r, err)
		return
	}
	v, deleted := httpapi.NewView(h.rules.For(req.Key), req.Key, st, h.store.Now())
	if deleted {
		r.Error("404", fmt.Sprintf("key %q has no live value (context %s)", req.Key, v.Context), nil)
		return
	}
	r.RespondJSON(v)
}

func (h handler) put(r micro.Request, req Request) {
	val := req.Value
	if req.ValueText != nil {
		if req.Value != nil {
			r.Error("400", "give value or value_text, not both", nil)
			return
		}
		val = []byte(*req.ValueText)
	}
	ttl, err := httpapi.ParseTTL(req.TTL)
	if err != nil {
		r.Error("400", err.Error()+"; nothing was written", nil)
		return
	}
	h.write(r, req, changelog.WriteOp{Key: req.Key, Value: val, TTL: ttl})
}

func (h handler) del(r micro.Request, req Request) {
	if req.TTL != "" {
		r.Error("400", "a del carries no ttl: only a value expires; nothing was written", nil)
		return
	}
	h.write(r, req, changelog.WriteOp{Key: req.Key, Delete: true})
}

// typed returns the handler of a typed operation: incr takes "by", add
// and remove "elements", patch "patch"; a value or another operation's
// field is a 400.
func (h handler) typed(kind resolve.OpKind) func(micro.Request, Request) {
	return func(r micro.Request, req Request) {
		op := resolve.Op{Kind: kind, Elements: req.Elements, Body: req.Patch}
		var msg string
		switch {
		case req.Value != nil || req.ValueText != nil:
			msg = fmt.Sprintf("%s takes no value; incr takes \"by\", add and remove \"elements\", patch \"patch\"", kind)
		case kind != resolve.OpIncr && req.By != nil, kind != resolve.OpAdd && kind != resolve.OpRemove && req.Elements != nil, kind != resolve.OpPatch && req.Patch != nil:
			msg = fmt.Sprintf("%s takes only its own field: incr \"by\", add and remove \"elements\", patch \"patch\"", kind)
		case kind == resolve.OpIncr && (req.By == nil || *req.By == 0):
			msg = `incr needs "by", a non-zero integer within int64`
		case kind == resolve.OpIncr:
			op.By = *req.By
		case kind == resolve.OpPatch && len(req.Patch) == 0:
			msg = `patch needs "patch", an RFC 7386 merge patch object`
		case (kind == resolve.OpAdd || kind == resolve.OpRemove) && len(req.Elements) == 0:
			msg = fmt.Sprintf(`%s needs "elements", a non-empty array of JSON values`, kind)
		}
		if msg != "" {
			r.Error("400", msg+"; nothing was written", nil)
			return
		}
		h.write(r, req, changelog.WriteOp{Key: req.Key, Typed: &op})
	}
}

// begin parses what a write or transaction asks to wait for after it, and
// waits until this DC covers the session token tok it carries. It answers
// the request itself (400, 503) and returns false when nothing may be
// written.
func (h handler) begin(ctx context.Context, r micro.Request, tok session.Token, wait Wait, timeout string) (session.Ack, bool) {
	ack, err := h.store.Scope().ParseAck(string(wait), timeout, "wait", "wait_timeout")
	if err != nil {
		r.Error("400", err.Error()+"; nothing was written", nil)
		return ack, false
	}
	if len(tok) > 0 {
		if err := h.store.WaitRead(ctx, "", nil, tok); err != nil {
			fail(r, err)
			return ack, false
		}
	}
	return ack, true
}

func (h handler) write(r micro.Request, req Request, op changelog.WriteOp) {
	var tok session.Token
	var ok bool
	if op.Context, tok, ok = h.need(r, req); !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ack, ok := h.begin(ctx, r, tok, req.Wait, req.WaitTimeout)
	if !ok {
		return
	}
	res, err := h.writeFn(ctx, op)
	if err != nil {
		fail(r, err)
		return
	}
	// The wait has its own bound (wait_timeout), not the write's.
	reply, _ := httpapi.AnswerWrite(context.Background(), h.store, op.Key, res, tok, ack)
	r.RespondJSON(reply)
}

// fail answers err with the status apierr.Status gives it.
func fail(r micro.Request, err error) {
	code := strconv.Itoa(apierr.Status(err))
	var se apierr.StatusError
	switch {
	case errors.As(err, &se):
		// It says why itself.
	case errors.Is(err, changelog.ErrClosed):
		r.Error(code, "the sidecar is shutting down; retry at another moment", nil)
		return
	case errors.Is(err, context.DeadlineExceeded):
		// The write may still commit (or may have, at a home DC): say so.
		r.Error(code, "the write did not complete in time and may still be applied; read the key before retrying: "+err.Error(), nil)
		return
	}
	r.Error(code, err.Error(), nil)
}
