// Package natsapi serves the sidecar's key-value API over NATS
// request/reply, as a NATS micro service that `nats micro ls` discovers,
// for applications that already speak NATS.
//
// Endpoints, for DC d: repl.api.d.get, repl.api.d.put, repl.api.d.del and
// repl.api.d.txn. A get, put or del request is JSON {"key", "value"
// (base64) or "value_text", "context"}; the answer to get is the same JSON
// as GET /v1/kv/{key}, to put and del {"key","context","dot"}. A txn
// request and its answer are those of POST /v1/txn. Errors use the micro error headers with an HTTP
// status code as the code: 400 bad request, 404 no live value, 503 closed,
// 500 otherwise.
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
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/httpapi"
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
	// for a blind write.
	Context string `json:"context,omitempty"`
}

// WriteReply answers put and del.
type WriteReply struct {
	Key     string `json:"key"`
	Context string `json:"context"`
	Dot     string `json:"dot"`
}

// Subject returns the subject of an endpoint at dc.
func Subject(dc, op string) string { return "repl.api." + dc + "." + op }

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
	svc, err := micro.AddService(nc, micro.Config{
		Name:        "replicator",
		Version:     Version,
		Description: "replicator key-value API of DC " + dc,
		Metadata:    map[string]string{"dc": dc},
	})
	if err != nil {
		return nil, fmt.Errorf("natsapi: add service: %w", err)
	}
	h := handler{store: store, rules: rules, writeFn: write, txnFn: txn}
	g := svc.AddGroup("repl.api." + dc)
	for op, fn := range map[string]func(micro.Request, Request){"get": h.get, "put": h.put, "del": h.del} {
		if err := g.AddEndpoint(op, micro.HandlerFunc(func(r micro.Request) {
			var req Request
			if err := json.Unmarshal(r.Data(), &req); err != nil {
				r.Error("400", "request is not JSON {key, value|value_text, context}: "+err.Error(), nil)
				return
			}
			if req.Key == "" {
				r.Error("400", "key is empty", nil)
				return
			}
			fn(r, req)
		})); err != nil {
			svc.Stop()
			return nil, fmt.Errorf("natsapi: add endpoint %s: %w", op, err)
		}
	}
	if err := g.AddEndpoint("txn", micro.HandlerFunc(h.txn)); err != nil {
		svc.Stop()
		return nil, fmt.Errorf("natsapi: add endpoint txn: %w", err)
	}
	return svc, nil
}

// maxTxnRequest bounds a txn request before it is parsed.
const maxTxnRequest = 8 << 20

func (h handler) txn(r micro.Request) {
	if len(r.Data()) > maxTxnRequest {
		r.Error("413", fmt.Sprintf("the request is %d bytes, over the %d-byte limit", len(r.Data()), maxTxnRequest), nil)
		return
	}
	var req httpapi.TxnRequest
	dec := json.NewDecoder(bytes.NewReader(r.Data()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		r.Error("400", `request is not a transaction {"ops":[{"op":"put"|"del","key","value"|"value_text","context"}...]}: `+err.Error(), nil)
		return
	}
	lim := event.DefaultLimits()
	ops, err := httpapi.ParseTxn(req, lim.MaxKeyBytes, lim.MaxValueBytes)
	if err != nil {
		r.Error("400", "txn: "+err.Error(), nil)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := h.txnFn(ctx, ops)
	if err != nil {
		fail(r, err)
		return
	}
	r.RespondJSON(httpapi.TxnResults(ops, res))
}

type handler struct {
	store   *changelog.Store
	rules   *resolve.Rules
	writeFn WriteFunc
	txnFn   TxnFunc
}

func (h handler) get(r micro.Request, req Request) {
	st, _, err := h.store.Get(req.Key)
	if err != nil {
		fail(r, err)
		return
	}
	v, deleted := httpapi.NewView(h.rules.For(req.Key), req.Key, st)
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
	h.write(r, req, changelog.WriteOp{Key: req.Key, Value: val})
}

func (h handler) del(r micro.Request, req Request) {
	h.write(r, req, changelog.WriteOp{Key: req.Key, Delete: true})
}

func (h handler) write(r micro.Request, req Request, op changelog.WriteOp) {
	if req.Context != "" {
		ctx, err := vclock.Parse(req.Context)
		if err != nil {
			r.Error("400", "bad context: "+err.Error(), nil)
			return
		}
		op.Context = ctx
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := h.writeFn(ctx, op)
	if err != nil {
		fail(r, err)
		return
	}
	r.RespondJSON(WriteReply{Key: op.Key, Context: res.State.Clock.String(), Dot: res.Event.Dot.String()})
}

func fail(r micro.Request, err error) {
	var se interface{ HTTPStatus() int }
	switch {
	case errors.As(err, &se):
		r.Error(strconv.Itoa(se.HTTPStatus()), err.Error(), nil)
	case errors.Is(err, changelog.ErrBadInput):
		r.Error("400", err.Error(), nil)
	case errors.Is(err, changelog.ErrClosed):
		r.Error("503", "the sidecar is shutting down; retry at another moment", nil)
	case errors.Is(err, changelog.ErrContextAhead):
		r.Error("503", err.Error(), nil)
	case errors.Is(err, context.DeadlineExceeded):
		// The write may still commit (or may have, at a home DC): say so.
		r.Error("503", "the write did not complete in time and may still be applied; read the key before retrying: "+err.Error(), nil)
	default:
		r.Error("500", err.Error(), nil)
	}
}
