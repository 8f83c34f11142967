package resolve

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// Typed is a resolver whose values are merge states (counter, fields, set):
// every sibling holds a whole state, a read shows the join of the live
// siblings' states, and a local operation rewrites the joined state. The
// store applies an Op in its committer, reading the key's siblings and
// writing the new state with a context that covers all of them
// (docs/DESIGN.md "Typed values").
type Typed interface {
	Resolver
	// Apply returns the encoded state after op, made at DC dot.DC with dot
	// and HLC hlc, from the live siblings the writer holds. An error wraps
	// ErrBadOp and names the problem; nothing is written then.
	Apply(sibs []dvv.Sibling, op Op, dot vclock.Dot, hlc uint64) ([]byte, error)
}

// OpKind names a typed operation.
type OpKind string

// The typed operations. OpPut and OpDelete are what a plain PUT and DELETE
// to a typed key become.
const (
	OpIncr   OpKind = "incr"
	OpPatch  OpKind = "patch"
	OpAdd    OpKind = "add"
	OpRemove OpKind = "remove"
	OpPut    OpKind = "put"
	OpDelete OpKind = "delete"
)

// Op is one typed operation.
type Op struct {
	Kind OpKind `msgpack:"kind"`
	// By is what incr adds (may be negative, never zero).
	By int64 `msgpack:"by,omitempty"`
	// Body is the JSON of patch (an RFC 7386 merge patch) or put.
	Body []byte `msgpack:"body,omitempty"`
	// Elements are the JSON values add and remove name.
	Elements []json.RawMessage `msgpack:"elements,omitempty"`
}

// MaxElementBytes bounds one set element's canonical JSON encoding.
const MaxElementBytes = 4096

// ErrBadOp reports a typed operation the key's resolver refuses: the wrong
// operation for its type, or a malformed body.
var ErrBadOp = errors.New("resolve: bad typed operation")

func badOp(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadOp, fmt.Sprintf(format, args...))
}

// typedVersion is the encoding version of every typed state.
const typedVersion = 1

// dotEntry is one DC's counter in a version vector, or one dot.
type dotEntry struct {
	_msgpack struct{} `msgpack:",as_array"`
	DC       string
	N        uint64
}

// vvJoin merges b into a by pointwise max; both sorted by DC.
func vvJoin(a, b []dotEntry) []dotEntry {
	out := slices.Clone(a)
	for _, e := range b {
		i, ok := slices.BinarySearchFunc(out, e.DC, func(x dotEntry, dc string) int { return cmp.Compare(x.DC, dc) })
		switch {
		case !ok:
			out = slices.Insert(out, i, e)
		case e.N > out[i].N:
			out[i].N = e.N
		}
	}
	return out
}

// vvCovers reports whether vv holds d.
func vvCovers(vv []dotEntry, d dotEntry) bool {
	i, ok := slices.BinarySearchFunc(vv, d.DC, func(x dotEntry, dc string) int { return cmp.Compare(x.DC, dc) })
	return ok && vv[i].N >= d.N
}

// vvAdd returns vv with dot added.
func vvAdd(vv []dotEntry, dot vclock.Dot) []dotEntry {
	return vvJoin(vv, []dotEntry{{DC: dot.DC, N: dot.N}})
}

// encodeTyped is the one encoding of every typed state: msgpack arrays with
// the most compact integers.
func encodeTyped(v any) []byte {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("resolve: encoding a typed state: %v", err)) // plain structs always encode
	}
	return buf.Bytes()
}

// errNotTyped reports a value that is not a state of the expected type.
var errNotTyped = errors.New("resolve: not a typed state")

// decodeTyped checks b (it may come from the network) and decodes it into
// v, which must be a state of type typ, version typedVersion.
func decodeTyped(b []byte, typ string, v any) error {
	if err := msgpackcheck.Check(b); err != nil {
		return err
	}
	dec := msgpack.NewDecoder(bytes.NewReader(b))
	n, err := dec.DecodeArrayLen()
	if err != nil || n < 2 {
		return errNotTyped
	}
	if got, err := dec.DecodeString(); err != nil || got != typ {
		return errNotTyped
	}
	if version, err := dec.DecodeInt(); err != nil || version != typedVersion {
		return fmt.Errorf("%w: %s state of version %d, this build knows %d", errNotTyped, typ, version, typedVersion)
	}
	return msgpack.Unmarshal(b, v)
}

// TypeOf returns the type of a typed state ("counter", "fields", "set"),
// or "" when v is not one.
func TypeOf(v []byte) string {
	if len(v) == 0 || msgpackcheck.Check(v) != nil {
		return ""
	}
	dec := msgpack.NewDecoder(bytes.NewReader(v))
	if n, err := dec.DecodeArrayLen(); err != nil || n < 2 {
		return ""
	}
	typ, err := dec.DecodeString()
	if err != nil {
		return ""
	}
	switch typ {
	case NameCounter, NameFields, NameSet:
		return typ
	}
	return ""
}

// Readable renders a typed state as JSON for people (inspect, the UI's
// conflict rows): its view and, for sets and counters, the metadata that
// decides merges. ok is false when v is not a typed state.
func Readable(v []byte) (out json.RawMessage, ok bool) {
	var x any
	switch TypeOf(v) {
	case NameCounter:
		var st counterState
		if decodeTyped(v, NameCounter, &st) != nil {
			return nil, false
		}
		per := map[string]any{}
		for _, e := range st.DCs {
			per[e.DC] = map[string]uint64{"p": e.P, "n": e.N, "removed_p": e.RP, "removed_n": e.RN}
		}
		x = map[string]any{"counter": json.Number(st.total().String()), "dcs": per}
	case NameFields:
		var st fieldsState
		if decodeTyped(v, NameFields, &st) != nil {
			return nil, false
		}
		x = map[string]any{"fields": json.RawMessage(st.view())}
	case NameSet:
		var st setState
		if decodeTyped(v, NameSet, &st) != nil {
			return nil, false
		}
		x = map[string]any{"set": json.RawMessage(st.view())}
	default:
		return nil, false
	}
	b, err := json.Marshal(x)
	if err != nil {
		return nil, false
	}
	return b, true
}

// canonicalJSON returns the canonical encoding of one JSON value: no
// insignificant whitespace, object keys sorted, numbers as written, no
// HTML escaping.
func canonicalJSON(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var x any
	if err := dec.Decode(&x); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON value")
	}
	return encodeJSON(x)
}

func encodeJSON(x any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(x); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// typedResolve is the Resolve of every typed resolver: the join of the
// live siblings' states, shown by view; a key whose join holds nothing
// shows a delete. When a live sibling is not a state of the type (a value
// written before the rule existed), every live value is shown with a
// conflict flag, as Siblings does, so nothing is hidden.
func typedResolve[S any](sibs []dvv.Sibling, decode func([]byte) (S, error), join func(S, S) S, view func(S) ([]byte, bool)) (Result, S, bool) {
	var zero S
	live := sorted(sibs, isLive)
	if len(live) == 0 {
		return deleted(sibs), zero, false
	}
	var acc S
	for i, sb := range live {
		st, err := decode(sb.Value)
		if err != nil {
			return showAll(sibs), zero, false
		}
		if i == 0 {
			acc = st
		} else {
			acc = join(acc, st)
		}
	}
	v, exists := view(acc)
	if !exists {
		return Result{Deleted: true, Kept: live}, acc, true
	}
	return Result{Values: [][]byte{v}, Kept: live}, acc, true
}

// joinLive decodes and joins the live siblings the writer holds; a live
// sibling that is not a state of the type is refused, naming the type.
func joinLive[S any](typ string, sibs []dvv.Sibling, decode func([]byte) (S, error), join func(S, S) S, empty S) (S, error) {
	acc := empty
	for _, sb := range sibs {
		if sb.Deleted {
			continue
		}
		st, err := decode(sb.Value)
		if err != nil {
			return empty, badOp("the key holds a value written by %s:%d that is not a %s (%v); delete the key first", sb.Dot.DC, sb.Dot.N, typ, err)
		}
		acc = join(acc, st)
	}
	return acc, nil
}
