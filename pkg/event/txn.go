package event

// Transaction wire form (schema v2)
//
// A transaction travels as one message: a msgpack map with exactly two
// fields, in this order,
//
//	"v"   uint          2
//	"tx"  array of bin  the ops, each the complete v1 encoding of one event
//
// Every op is an ordinary v1 event (its own partition, sequence number,
// key, op, value and context), and the ops of one transaction share the
// origin, the HLC and the path. Keys are distinct. One message carries
// them all, so a DC applies a transaction whole or not at all; a DC on a
// build that reads only v1 rejects the message as an unknown version and
// dead-letters it, rather than applying part of it.
//
// The envelope has no room for extensions: a newer envelope is a new
// schema version. Each op keeps v1's pass-through of unknown fields.

import (
	"fmt"
	"slices"
)

// TxnVersion is the schema version of a transaction message.
const TxnVersion = 2

const keyTxn = "tx"

// Limits of a transaction message that DefaultLimits gives: a receiver
// accepts up to these, whatever a sender is configured with.
const (
	DefaultMaxTxnOps   = 4096
	DefaultMaxTxnBytes = 8 << 20
)

// EncodeTxn appends the wire form of a transaction with the given ops to
// dst. The ops must already satisfy CheckTxn.
func EncodeTxn(dst []byte, ops []*Event) ([]byte, error) {
	if err := CheckTxn(ops, Limits{MaxTxnOps: len(ops) + 1}); err != nil {
		return dst, err
	}
	dst = appendMapLen(dst, 2)
	dst = appendStr(dst, keyVersion)
	dst = appendUint(dst, TxnVersion)
	dst = appendStr(dst, keyTxn)
	dst = appendArrayLen(dst, len(ops))
	var buf []byte
	for _, op := range ops {
		var err error
		buf, err = op.Encode(buf[:0])
		if err != nil {
			return dst, err
		}
		dst = appendBin(dst, buf)
	}
	return dst, nil
}

// CheckTxn reports why ops are not the ops of one transaction, or nil: at
// least one op and at most lim.MaxTxnOps, each a valid event, all with the
// same origin, HLC and path, and no key twice.
func CheckTxn(ops []*Event, lim Limits) error {
	lim = lim.withDefaults()
	for i, op := range ops {
		if err := op.Validate(lim); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
	}
	return checkShape(ops, lim)
}

// checkShape is CheckTxn for ops each already valid, as Decode leaves them.
func checkShape(ops []*Event, lim Limits) error {
	if len(ops) == 0 {
		return fmt.Errorf("%w: a transaction has no ops", ErrInvalid)
	}
	if len(ops) > lim.MaxTxnOps {
		return fmt.Errorf("%w: a transaction of %d ops, over the %d-op limit", ErrLimit, len(ops), lim.MaxTxnOps)
	}
	first := ops[0]
	keys := make(map[string]struct{}, len(ops))
	for i, op := range ops {
		switch {
		case op.Origin != first.Origin:
			return fmt.Errorf("%w: op %d has origin %q, op 0 %q", ErrInvalid, i, op.Origin, first.Origin)
		case op.HLC != first.HLC:
			return fmt.Errorf("%w: op %d has HLC %d, op 0 %d: the ops of a transaction share one", ErrInvalid, i, op.HLC, first.HLC)
		case !slices.Equal(op.Path, first.Path):
			return fmt.Errorf("%w: op %d has path %v, op 0 %v", ErrInvalid, i, op.Path, first.Path)
		}
		if _, dup := keys[op.Key]; dup {
			return fmt.Errorf("%w: op %d: key %q appears twice in one transaction", ErrInvalid, i, op.Key)
		}
		keys[op.Key] = struct{}{}
	}
	return nil
}

// DecodeMessage reads what one message carries: a v1 event, or the ops of
// a v2 transaction (each with TxnOps set to their number). It is as strict
// as Decode and never panics; a transaction may be up to
// lim.MaxTxnBytes long.
func DecodeMessage(b []byte, lim Limits) ([]*Event, error) {
	lim = lim.withDefaults()
	if !isTxn(b) {
		ev, err := Decode(b, lim)
		if err != nil {
			return nil, err
		}
		return []*Event{ev}, nil
	}
	return decodeTxn(b, lim)
}

// IsTxn reports whether b starts like a transaction message: a map whose
// first field is "v" with value 2. Our encoder always writes "v" first; a
// v1 event never has version 2.
func isTxn(b []byte) bool {
	r := reader{b: b}
	if _, isNil, err := r.mapLen("top level"); err != nil || isNil {
		return false
	}
	name, err := r.str("field name", maxFieldName)
	if err != nil || string(name) != keyVersion {
		return false
	}
	v, err := r.uint("version")
	return err == nil && v == TxnVersion
}

func decodeTxn(b []byte, lim Limits) ([]*Event, error) {
	if len(b) > lim.MaxTxnBytes {
		return nil, fmt.Errorf("%w: transaction is %d bytes, over the %d-byte limit", ErrTooLarge, len(b), lim.MaxTxnBytes)
	}
	r := reader{b: b}
	n, _, err := r.mapLen("top level")
	if err != nil {
		return nil, err
	}
	if n != 2 {
		return nil, fmt.Errorf("%w: a transaction has %d fields, want 2 (\"v\", \"tx\")", ErrMalformed, n)
	}
	if _, err := r.str("field name", maxFieldName); err != nil { // "v", checked by isTxn
		return nil, err
	}
	if _, err := r.uint(`"v" (version)`); err != nil {
		return nil, err
	}
	name, err := r.str("field name", maxFieldName)
	if err != nil {
		return nil, err
	}
	if string(name) != keyTxn {
		return nil, fmt.Errorf("%w: a transaction's second field is %q, want %q", ErrMalformed, name, keyTxn)
	}
	count, isNil, err := r.containerLen(`"tx" (ops)`, false)
	if err != nil {
		return nil, err
	}
	if isNil || count == 0 {
		return nil, fmt.Errorf("%w: a transaction has no ops", ErrInvalid)
	}
	if count > lim.MaxTxnOps {
		return nil, fmt.Errorf("%w: a transaction of %d ops, over the %d-op limit", ErrLimit, count, lim.MaxTxnOps)
	}
	ops := make([]*Event, 0, count)
	for i := range count {
		raw, err := r.bin(fmt.Sprintf(`"tx" op %d`, i), lim.MaxEventBytes)
		if err != nil {
			return nil, err
		}
		op, err := Decode(raw, lim)
		if err != nil {
			return nil, fmt.Errorf("op %d: %w", i, err)
		}
		op.TxnOps = count
		ops = append(ops, op)
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("%w: %d bytes after the end of the transaction", ErrMalformed, len(b)-r.off)
	}
	if err := checkShape(ops, lim); err != nil { // Decode validated each op
		return nil, err
	}
	return ops, nil
}

// Group splits evs into the units a DC applies whole: a single event, or
// the TxnOps consecutive ops of one transaction. It fails when a
// transaction's ops are not consecutive and complete.
func Group(evs []*Event) ([][]*Event, error) {
	var out [][]*Event
	for i := 0; i < len(evs); {
		n := max(evs[i].TxnOps, 1)
		if i+n > len(evs) {
			return nil, fmt.Errorf("%w: event %s opens a transaction of %d ops, only %d follow", ErrInvalid, evs[i].Dot, n, len(evs)-i)
		}
		g := evs[i : i+n : i+n]
		for _, ev := range g[1:] {
			if ev.TxnOps != evs[i].TxnOps || ev.Origin != evs[i].Origin || ev.HLC != evs[i].HLC {
				return nil, fmt.Errorf("%w: event %s is not an op of the transaction of %s", ErrInvalid, ev.Dot, evs[i].Dot)
			}
		}
		out = append(out, g)
		i += n
	}
	return out, nil
}
