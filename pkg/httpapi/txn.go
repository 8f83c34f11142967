package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/apierr"
	"github.com/replicatorhq/replicator/pkg/session"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// TxnOp is one op of a POST /v1/txn body.
type TxnOp struct {
	// Op is "put" or "del".
	Op  string `json:"op"`
	Key string `json:"key"`
	// Value (base64) or ValueText holds a put's value; a delete has
	// neither.
	Value     *string `json:"value,omitempty"`
	ValueText *string `json:"value_text,omitempty"`
	// Context is the key's context from a read, in its text form; empty
	// for a blind write.
	Context string `json:"context,omitempty"`
	// TTL gives a put's value a time to live, in Go duration text ("30s"),
	// as X-Repl-TTL does; empty for none.
	TTL string `json:"ttl,omitempty"`
}

// TxnRequest is the body of POST /v1/txn.
type TxnRequest struct {
	Ops []TxnOp `json:"ops"`
}

// TxnResult is one op's answer: the key, its new context and the op's
// dot, in the order of the ops.
type TxnResult struct {
	Key     string `json:"key"`
	Context string `json:"context"`
	Dot     string `json:"dot"`
}

// TxnResponse is the body POST /v1/txn answers 200 (or 202) with.
type TxnResponse struct {
	Results []TxnResult `json:"results"`
	// Session is the session token of every op, merged with the token the
	// request carried.
	Session string `json:"session"`
	// Replicated and Error are as in WriteAnswer: set when the request
	// asked to wait for other DCs (X-Repl-Wait).
	Replicated int    `json:"replicated,omitempty"`
	Error      string `json:"error,omitempty"`
}

// ParseTxn checks a transaction request and returns its write ops, or an
// error saying which op is wrong and why. maxKey bounds keys and maxValue
// values; the store checks the rest (limits, contexts, repeated keys).
func ParseTxn(req TxnRequest, maxKey, maxValue int) ([]changelog.WriteOp, error) {
	if len(req.Ops) == 0 {
		return nil, fmt.Errorf(`"ops" is empty or missing: send {"ops":[{"op":"put","key":K,"value_text":V}, ...]}`)
	}
	out := make([]changelog.WriteOp, len(req.Ops))
	for i, op := range req.Ops {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("op %d: %s", i, fmt.Sprintf(format, args...))
		}
		if msg := checkKey(op.Key, maxKey); msg != "" {
			return nil, bad("%s", msg)
		}
		w := changelog.WriteOp{Key: op.Key}
		switch op.Op {
		case "put":
			switch {
			case op.Value != nil && op.ValueText != nil:
				return nil, bad(`has both "value" and "value_text"; send one`)
			case op.Value != nil:
				v, err := base64.StdEncoding.DecodeString(*op.Value)
				if err != nil {
					return nil, bad(`"value" is not standard base64 (%v); use "value_text" for text`, err)
				}
				w.Value = v
			case op.ValueText != nil:
				w.Value = []byte(*op.ValueText)
			default:
				return nil, bad(`a put needs "value" (base64) or "value_text"`)
			}
			if len(w.Value) > maxValue {
				return nil, fmt.Errorf("op %d: %w", i, changelog.ValueTooLarge(len(w.Value), maxValue))
			}
			ttl, err := ParseTTL(op.TTL)
			if err != nil {
				return nil, bad("%v", err)
			}
			w.TTL = ttl
		case "del", "delete":
			if op.Value != nil || op.ValueText != nil {
				return nil, bad("a delete carries no value")
			}
			if op.TTL != "" {
				return nil, bad("a delete carries no ttl: only a value expires")
			}
			w.Delete = true
		default:
			return nil, bad(`"op" is %q; want "put" or "del"`, op.Op)
		}
		if op.Context != "" {
			vv, err := vclock.Parse(op.Context)
			if err != nil {
				return nil, bad("context %q is not a valid context: %v; send it as a read of the key returned it", op.Context, err)
			}
			if len(vv) > vclock.MaxEntries {
				return nil, bad("context has %d entries, over the %d-DC limit", len(vv), vclock.MaxEntries)
			}
			w.Context = vv
		}
		out[i] = w
	}
	return out, nil
}

// AnswerTxn builds the answer to a committed transaction, whose request
// carried the session token carried, waiting first, when ack asks, up to
// ack.Timeout for ack.N DCs to have applied every op. It reports false when
// the transaction stood but fewer DCs had applied it in time; the answer's
// Error then says so (HTTP 202), as AnswerWrite does.
func AnswerTxn(ctx context.Context, rep Replicas, ops []changelog.WriteOp, res []changelog.WriteResult, carried session.Token, ack session.Ack) (TxnResponse, bool) {
	out := TxnResponse{Results: make([]TxnResult, len(res))}
	var mine []session.Entry
	for i, r := range res {
		out.Results[i] = TxnResult{Key: ops[i].Key, Context: r.State.Clock.String()}
		if ev := r.Event; ev != nil {
			out.Results[i].Dot = ev.Dot.String()
			mine = append(mine, session.Entry{Origin: ev.Origin, Partition: ev.Partition, Seq: ev.Seq})
		}
	}
	tok := session.Of(mine...)
	out.Session = carried.Merge(tok).String()
	if ack.N == 0 || len(tok) == 0 {
		return out, true
	}
	var complete bool
	out.Replicated, out.Error, complete = replicate(ctx, rep, tok, ack)
	return out, complete
}

// txn serves POST /v1/txn: the ops commit at this DC in one durable batch
// and reach every other DC together, or nothing is written. Like a single
// write it waits first for a session token it carries (X-Repl-Session or
// ?min_session=), and with X-Repl-Wait answers once that many DCs applied
// every op, or 202 saying how far it got.
func (s *server) txn(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, []string{"min_session"}) {
		return
	}
	tok, ok := s.requestSession(w, r, "min_session")
	if !ok {
		return
	}
	ack, ok := s.requestAck(w, r)
	if !ok {
		return
	}
	body, ok := s.readBody(w, r, s.opts.MaxTxnBodyBytes)
	if !ok {
		return
	}
	var req TxnRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf(`the body is not a transaction: %v; send {"ops":[{"op":"put"|"del","key":K,"value":B64|"value_text":S,"context":C}, ...]}`, err))
		return
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "the body holds more than one JSON value; send one transaction")
		return
	}
	ops, err := ParseTxn(req, s.opts.MaxKeyBytes, s.opts.MaxValueBytes)
	if err != nil {
		writeError(w, apierr.InputStatus(err), "txn: "+err.Error())
		return
	}
	if len(tok) > 0 {
		if err := s.b.WaitRead(r.Context(), "", nil, tok); err != nil {
			s.backendError(w, r, "txn", err)
			return
		}
	}
	res, err := s.b.WriteTxn(r.Context(), ops)
	if err != nil {
		s.backendError(w, r, "txn", err)
		return
	}
	out, complete := AnswerTxn(r.Context(), s.b, ops, res, tok, ack)
	h := w.Header()
	h[SessionHeader] = []string{out.Session}
	code := http.StatusOK
	if ack.N > 0 {
		h.Set(ReplicatedHeader, strconv.Itoa(out.Replicated))
		if !complete {
			code = http.StatusAccepted
		}
	}
	writeJSON(w, code, out)
}
