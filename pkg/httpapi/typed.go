package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/resolve"
)

// The typed operations POST /v1/kv/{key}?op= takes.
var postOps = []string{string(resolve.OpIncr), string(resolve.OpAdd), string(resolve.OpRemove)}

// errTypedBody reports a typed operation's body that is not what the
// operation takes.
var errTypedBody = errors.New("httpapi: bad typed operation body")

// parseTypedOp parses the JSON body of a typed operation: incr takes
// {"by": N} (a non-zero int64), add and remove {"elements": [...]} (JSON
// values), patch an RFC 7386 merge patch (checked by the key's resolver).
// Unknown fields are refused, so a misspelt one is not silently ignored.
func parseTypedOp(kind resolve.OpKind, body []byte) (resolve.Op, error) {
	op := resolve.Op{Kind: kind}
	strict := func(v any) error {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return err
		}
		if dec.More() {
			return errors.New("data after the JSON object")
		}
		return nil
	}
	switch kind {
	case resolve.OpIncr:
		var b struct {
			By *int64 `json:"by"`
		}
		if err := strict(&b); err != nil {
			return op, fmt.Errorf(`%w: incr takes {"by": N}, N a non-zero integer within int64: %v`, errTypedBody, err)
		}
		if b.By == nil || *b.By == 0 {
			return op, fmt.Errorf(`%w: incr takes {"by": N}, N a non-zero integer within int64; "by" is missing or 0`, errTypedBody)
		}
		op.By = *b.By
	case resolve.OpAdd, resolve.OpRemove:
		var b struct {
			Elements []json.RawMessage `json:"elements"`
		}
		if err := strict(&b); err != nil {
			return op, fmt.Errorf(`%w: %s takes {"elements": [...]}, JSON values: %v`, errTypedBody, kind, err)
		}
		if len(b.Elements) == 0 {
			return op, fmt.Errorf(`%w: %s takes {"elements": [...]} with at least one element`, errTypedBody, kind)
		}
		op.Elements = b.Elements
	case resolve.OpPatch:
		op.Body = body
	default:
		return op, fmt.Errorf("%w: unknown operation %q", errTypedBody, kind)
	}
	return op, nil
}

// postKey is POST /v1/kv/{key}?op=incr|add|remove.
func (s *server) postKey(w http.ResponseWriter, r *http.Request) {
	op, req, ok := s.writeRequestQuery(w, r, []string{"op"})
	if !ok {
		return
	}
	kind := r.URL.Query().Get("op")
	if !slices.Contains(postOps, kind) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("POST /v1/kv/{key} needs ?op=incr, ?op=add or ?op=remove (got %q); to write a whole value use PUT", kind))
		return
	}
	s.typedWrite(w, r, op, req, resolve.OpKind(kind))
}

// patchKey is PATCH /v1/kv/{key}: an RFC 7386 merge patch of a fields key.
func (s *server) patchKey(w http.ResponseWriter, r *http.Request) {
	op, req, ok := s.writeRequest(w, r)
	if !ok {
		return
	}
	s.typedWrite(w, r, op, req, resolve.OpPatch)
}

func (s *server) typedWrite(w http.ResponseWriter, r *http.Request, op changelog.WriteOp, req writeReq, kind resolve.OpKind) {
	body, ok := s.readValue(w, r)
	if !ok {
		return
	}
	t, err := parseTypedOp(kind, body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error()+"; nothing was written")
		return
	}
	op.Typed = &t
	s.write(w, r, op, req)
}
