package event

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// The NATS headers every published event carries, so that the NATS CLI
// shows what an event is without decoding it. The payload stays the source
// of truth: a consumer decodes it and cross-checks the headers with
// HeaderInfo.Check to catch forgery and bugs.
const (
	HeaderMsgID       = "Nats-Msg-Id"  // <origin>:<partition>:<seq>, JetStream's dedup id
	HeaderOrigin      = "Repl-Origin"  // origin DC id
	HeaderPath        = "Repl-Path"    // DC ids, comma-separated, origin first
	HeaderKey         = "Repl-Key"     // the key
	HeaderOp          = "Repl-Op"      // put, delete or resolve
	HeaderDot         = "Repl-Dot"     // dc:n
	HeaderContext     = "Repl-Context" // {a:1,b:2}
	HeaderContentType = "Content-Type" // ContentType
	// HeaderTxn is on a transaction's message only: the number of its ops.
	// The other headers then describe its first op.
	HeaderTxn = "Repl-Txn"
)

// ContentType is the Content-Type of an event payload.
const ContentType = "application/msgpack"

var (
	// ErrHeader reports a missing, repeated or unparsable event header.
	ErrHeader = errors.New("event: bad header")
	// ErrHeaderMismatch reports headers that disagree with the payload.
	ErrHeaderMismatch = errors.New("event: headers do not match the payload")
)

// MsgID returns the JetStream message id of an event: unique per origin,
// partition and sequence number, so a republished event is deduplicated.
func MsgID(origin string, partition uint32, seq uint64) string {
	return origin + ":" + strconv.FormatUint(uint64(partition), 10) + ":" + strconv.FormatUint(seq, 10)
}

// ParseMsgID parses the form MsgID writes.
func ParseMsgID(s string) (origin string, partition uint32, seq uint64, err error) {
	// Cut rather than Split: this runs for every consumed event, and Split
	// allocates the slice of parts.
	origin, rest, ok1 := strings.Cut(s, ":")
	ps, ns, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || strings.Contains(ns, ":") {
		return "", 0, 0, fmt.Errorf("%w: message id %q: want origin:partition:seq", ErrHeader, s)
	}
	if err := vclock.ValidID(origin); err != nil {
		return "", 0, 0, fmt.Errorf("%w: message id %q: %w", ErrHeader, s, err)
	}
	p, err := strconv.ParseUint(ps, 10, 32)
	if err != nil {
		return "", 0, 0, fmt.Errorf("%w: message id %q: partition is not a 32-bit unsigned integer", ErrHeader, s)
	}
	n, err := strconv.ParseUint(ns, 10, 64)
	if err != nil || n == 0 {
		return "", 0, 0, fmt.Errorf("%w: message id %q: seq must be a positive integer", ErrHeader, s)
	}
	return origin, uint32(p), n, nil
}

// ParseOp parses an op's name as Op.String writes it.
func ParseOp(s string) (Op, error) {
	for _, op := range []Op{OpPut, OpDelete, OpResolve} {
		if s == op.String() {
			return op, nil
		}
	}
	return 0, fmt.Errorf("%w: op %q: want put, delete or resolve", ErrHeader, s)
}

// ToHeaders returns the NATS headers for e. The result converts directly to
// nats.Header. e should have passed Validate: a key with a line break would
// break the header block. The values share one backing array, each slice
// capped at its one value, so that appending to one copies it instead of
// overwriting its neighbour.
func ToHeaders(e *Event) map[string][]string {
	v := [...]string{
		MsgID(e.Origin, e.Partition, e.Seq),
		e.Origin,
		strings.Join(e.Path, ","),
		e.Key,
		e.Op.String(),
		e.Dot.String(),
		e.Context.String(),
		ContentType,
	}
	one := func(i int) []string { return v[i : i+1 : i+1] }
	h := make(map[string][]string, len(v))
	h[HeaderMsgID] = one(0)
	h[HeaderOrigin] = one(1)
	h[HeaderPath] = one(2)
	h[HeaderKey] = one(3)
	h[HeaderOp] = one(4)
	h[HeaderDot] = one(5)
	h[HeaderContext] = one(6)
	h[HeaderContentType] = one(7)
	return h
}

// TxnHeaders returns the NATS headers for the message of a transaction:
// those of its first op (the message id is the first op's, which no other
// message can carry) and HeaderTxn with the number of ops.
func TxnHeaders(ops []*Event) map[string][]string {
	h := ToHeaders(ops[0])
	h[HeaderTxn] = []string{strconv.Itoa(len(ops))}
	return h
}

// HeaderInfo is what an event's headers say about it.
type HeaderInfo struct {
	// TxnOps is HeaderTxn: the ops of a transaction's message, 0 when the
	// header is absent (a single event).
	TxnOps    int
	MsgID     string
	Origin    string
	Partition uint32
	Seq       uint64
	Path      []string
	Key       string
	Op        Op
	Dot       vclock.Dot
	Context   vclock.VV
}

// FromHeaders parses and cross-checks the headers ToHeaders writes. Each
// must appear exactly once; names match exactly, or failing that without
// regard to case. Errors wrap ErrHeader and name the header.
func FromHeaders(h map[string][]string) (HeaderInfo, error) {
	var info HeaderInfo
	get := func(name string) (string, error) {
		vals, ok := h[name]
		if !ok {
			for k, v := range h {
				if strings.EqualFold(k, name) {
					vals, ok = v, true
					break
				}
			}
		}
		switch {
		case !ok || len(vals) == 0:
			return "", fmt.Errorf("%w: %s is missing", ErrHeader, name)
		case len(vals) > 1:
			return "", fmt.Errorf("%w: %s appears %d times", ErrHeader, name, len(vals))
		}
		return vals[0], nil
	}

	ct, err := get(HeaderContentType)
	if err != nil {
		return info, err
	}
	if ct != ContentType {
		return info, fmt.Errorf("%w: %s is %q, want %q", ErrHeader, HeaderContentType, ct, ContentType)
	}

	if info.MsgID, err = get(HeaderMsgID); err != nil {
		return info, err
	}
	if info.Origin, info.Partition, info.Seq, err = ParseMsgID(info.MsgID); err != nil {
		return info, fmt.Errorf("%s: %w", HeaderMsgID, err)
	}

	origin, err := get(HeaderOrigin)
	if err != nil {
		return info, err
	}
	if origin != info.Origin {
		return info, fmt.Errorf("%w: %s %q differs from the origin %q in %s %q", ErrHeader, HeaderOrigin, origin, info.Origin, HeaderMsgID, info.MsgID)
	}

	dot, err := get(HeaderDot)
	if err != nil {
		return info, err
	}
	if info.Dot, err = vclock.ParseDot(dot); err != nil {
		return info, fmt.Errorf("%w: %s: %w", ErrHeader, HeaderDot, err)
	}
	if info.Dot.DC != info.Origin || info.Dot.N != info.Seq {
		return info, fmt.Errorf("%w: %s %s is not the origin and seq of %s %q", ErrHeader, HeaderDot, info.Dot, HeaderMsgID, info.MsgID)
	}

	path, err := get(HeaderPath)
	if err != nil {
		return info, err
	}
	if n := strings.Count(path, ",") + 1; n > vclock.MaxEntries {
		return info, fmt.Errorf("%w: %s names %d DCs, over the %d limit", ErrHeader, HeaderPath, n, vclock.MaxEntries)
	}
	info.Path = strings.Split(path, ",")
	for i, dc := range info.Path {
		if err := vclock.ValidID(dc); err != nil {
			return info, fmt.Errorf("%w: %s entry %d: %w", ErrHeader, HeaderPath, i, err)
		}
	}
	if info.Path[0] != info.Origin {
		return info, fmt.Errorf("%w: %s %q does not start with the origin %q", ErrHeader, HeaderPath, path, info.Origin)
	}

	if info.Key, err = get(HeaderKey); err != nil {
		return info, err
	}
	if info.Key == "" {
		return info, fmt.Errorf("%w: %s is empty", ErrHeader, HeaderKey)
	}

	op, err := get(HeaderOp)
	if err != nil {
		return info, err
	}
	if info.Op, err = ParseOp(op); err != nil {
		return info, fmt.Errorf("%s: %w", HeaderOp, err)
	}

	if hasHeader(h, HeaderTxn) {
		v, err := get(HeaderTxn)
		if err != nil {
			return info, err
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > DefaultMaxTxnOps {
			return info, fmt.Errorf("%w: %s %q: want the number of ops, 1 to %d", ErrHeader, HeaderTxn, v, DefaultMaxTxnOps)
		}
		info.TxnOps = n
	}

	ctx, err := get(HeaderContext)
	if err != nil {
		return info, err
	}
	if info.Context, err = vclock.Parse(ctx); err != nil {
		return info, fmt.Errorf("%w: %s: %w", ErrHeader, HeaderContext, err)
	}
	if len(info.Context) > vclock.MaxEntries {
		return info, fmt.Errorf("%w: %s has %d entries, over the %d limit", ErrHeader, HeaderContext, len(info.Context), vclock.MaxEntries)
	}
	return info, nil
}

// Check reports the first way the headers disagree with the decoded
// payload e, wrapping ErrHeaderMismatch, or nil. Keys are compared without
// leading spaces and tabs, which NATS drops from header values.
func (h HeaderInfo) Check(e *Event) error {
	mismatch := func(name string, hv, ev any) error {
		return fmt.Errorf("%w: %s says %v, the payload %v", ErrHeaderMismatch, name, hv, ev)
	}
	switch {
	case h.Origin != e.Origin:
		return mismatch(HeaderOrigin, h.Origin, e.Origin)
	case h.Partition != e.Partition || h.Seq != e.Seq:
		return mismatch(HeaderMsgID, h.MsgID, MsgID(e.Origin, e.Partition, e.Seq))
	case h.Dot != e.Dot:
		return mismatch(HeaderDot, h.Dot, e.Dot)
	case strings.TrimLeft(h.Key, " \t") != strings.TrimLeft(e.Key, " \t"):
		return mismatch(HeaderKey, strconv.Quote(h.Key), strconv.Quote(e.Key))
	case h.Op != e.Op:
		return mismatch(HeaderOp, h.Op, e.Op)
	case !h.Context.Equal(e.Context):
		return mismatch(HeaderContext, h.Context, e.Context)
	case !slices.Equal(h.Path, e.Path):
		return mismatch(HeaderPath, strings.Join(h.Path, ","), strings.Join(e.Path, ","))
	case h.TxnOps != e.TxnOps:
		return mismatch(HeaderTxn, h.TxnOps, e.TxnOps)
	}
	return nil
}

// hasHeader reports whether h holds name, matched as FromHeaders matches.
func hasHeader(h map[string][]string, name string) bool {
	if _, ok := h[name]; ok {
		return true
	}
	for k := range h {
		if strings.EqualFold(k, name) {
			return true
		}
	}
	return false
}
