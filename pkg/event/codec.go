package event

// Wire form (schema v1)
//
// An event is one msgpack map with short string keys, written in this fixed
// order, so equal events encode to equal bytes:
//
//	"v"    uint          schema version, 1
//	"o"    str           origin DC id
//	"p"    uint          partition (uint32)
//	"s"    uint          the origin's sequence number in the partition
//	"k"    str           key
//	"op"   uint          1 put, 2 delete, 3 resolve
//	"val"  bin           value; empty for deletes
//	"c"    map str→uint  causal context, sorted by DC id, zero counters left out
//	"h"    uint          HLC timestamp at the origin
//	"path" array of str  DCs the event passed through, origin first
//	"exp"  uint          expiry: the HLC time the value expires at (a TTL);
//	                     left out when 0 (no TTL), so an event without a
//	                     TTL encodes exactly as before the field existed
//
// followed by any fields a newer schema added, in the order they arrived.
// The dot is not on the wire: it is (origin, seq) by definition.
//
// Integers use the shortest msgpack form; the decoder also accepts any
// other integer form of a non-negative value. "val" and "c" may be nil or
// absent (empty); every other field is required. The encoder leaves out an
// empty "val" (a delete) and an empty "c" (a write to a new key), which
// saves 3–5 bytes an event; every v1 decoder has always read them as
// empty, so this is the same schema. Fields may arrive in any
// order, but never twice. Keys this version does not know are kept with
// their raw msgpack value and written back after the known fields, so an
// event from a newer node passes through an older one unchanged.

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"unicode/utf8"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// The wire keys of the known fields.
const (
	keyVersion   = "v"
	keyOrigin    = "o"
	keyPartition = "p"
	keySeq       = "s"
	keyKey       = "k"
	keyOp        = "op"
	keyValue     = "val"
	keyContext   = "c"
	keyHLC       = "h"
	keyPath      = "path"
	keyExpires   = "exp"

	numKnown = 11
)

// MaxCounter bounds sequence numbers and context counters: they must be
// below it. A counter that close to 2^64 is not a real count of writes but
// a forged or corrupt event, and one near the top could wrap.
const MaxCounter = 1 << 62

// maxFieldName bounds the length of a wire key.
const maxFieldName = 64

// Errors returned by Decode and Validate wrap one of these sentinels, with
// detail naming the field and the offending value.
var (
	// ErrTooLarge reports an encoded event over Limits.MaxEventBytes.
	ErrTooLarge = errors.New("event: too large")
	// ErrMalformed reports bytes that are not a well-formed v1 event:
	// truncated input, wrong msgpack types, lengths past the end of the
	// input, trailing bytes, repeated or missing fields.
	ErrMalformed = errors.New("event: malformed")
	// ErrUnknownVersion reports a schema version this build does not read.
	ErrUnknownVersion = errors.New("event: unknown schema version")
	// ErrLimit reports a field over one of the Limits.
	ErrLimit = errors.New("event: over limit")
	// ErrInvalid reports a well-formed event whose content is impossible:
	// a bad DC id, op or sequence number, an absurd counter, a path that
	// does not start at the origin.
	ErrInvalid = errors.New("event: invalid")
)

// Limits bound what Decode and Validate accept. A zero field takes its
// default from DefaultLimits.
type Limits struct {
	// MaxEventBytes bounds the encoded event. Default 1 MiB.
	MaxEventBytes int
	// MaxKeyBytes bounds the key. Default 4096.
	MaxKeyBytes int
	// MaxValueBytes bounds the value. Default 1 MiB - 32 KiB, so that a
	// valid event plus its NATS headers fits NATS's default 1 MiB
	// max_payload.
	MaxValueBytes int
	// MaxDCs bounds the entries of the context and the length of the
	// path. Default 64 (vclock.MaxEntries).
	MaxDCs int
	// MaxDepth bounds how deeply an unknown field's value may nest arrays
	// and maps. Default 8.
	MaxDepth int
	// MaxUnknownFields bounds how many unknown fields an event may carry,
	// which bounds the memory a small hostile event can make Decode
	// allocate. Default 16.
	MaxUnknownFields int
	// MaxTxnOps bounds the ops of one transaction message. Default
	// DefaultMaxTxnOps.
	MaxTxnOps int
	// MaxTxnBytes bounds an encoded transaction message. Default
	// DefaultMaxTxnBytes.
	MaxTxnBytes int
}

// DefaultLimits returns the limits every DC uses unless configured.
func DefaultLimits() Limits {
	return Limits{
		MaxEventBytes:    1 << 20,
		MaxKeyBytes:      4096,
		MaxValueBytes:    1<<20 - 32<<10,
		MaxDCs:           vclock.MaxEntries,
		MaxDepth:         8,
		MaxUnknownFields: 16,
		MaxTxnOps:        DefaultMaxTxnOps,
		MaxTxnBytes:      DefaultMaxTxnBytes,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxEventBytes <= 0 {
		l.MaxEventBytes = d.MaxEventBytes
	}
	if l.MaxKeyBytes <= 0 {
		l.MaxKeyBytes = d.MaxKeyBytes
	}
	if l.MaxValueBytes <= 0 {
		l.MaxValueBytes = d.MaxValueBytes
	}
	if l.MaxDCs <= 0 {
		l.MaxDCs = d.MaxDCs
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = d.MaxDepth
	}
	if l.MaxTxnOps <= 0 {
		l.MaxTxnOps = d.MaxTxnOps
	}
	if l.MaxTxnBytes <= 0 {
		l.MaxTxnBytes = d.MaxTxnBytes
	}
	if l.MaxUnknownFields <= 0 {
		l.MaxUnknownFields = d.MaxUnknownFields
	}
	return l
}

// MarshalBinary returns the wire form of e; see Encode.
func (e *Event) MarshalBinary() ([]byte, error) { return e.Encode(nil) }

// UnmarshalBinary decodes b into e with DefaultLimits; see Decode.
func (e *Event) UnmarshalBinary(b []byte) error {
	d, err := Decode(b, DefaultLimits())
	if err != nil {
		return err
	}
	*e = *d
	return nil
}

// Encode appends the wire form of e to dst and returns the extended slice.
// It checks only what the wire form needs (the version, and that Dot is
// (Origin, Seq)); call Validate to check the rest before sending.
func (e *Event) Encode(dst []byte) ([]byte, error) {
	if e.Version != SchemaVersion {
		return dst, fmt.Errorf("event: encode: version is %d, this build writes %d", e.Version, SchemaVersion)
	}
	if e.Dot.DC != e.Origin || e.Dot.N != e.Seq {
		return dst, fmt.Errorf("event: encode: dot %s is not (origin, seq) %s:%d", e.Dot, e.Origin, e.Seq)
	}
	dst = slices.Grow(dst, e.sizeHint())
	fields := numKnown + len(e.unknown)
	hasValue, hasContext := len(e.Value) > 0, nonZero(e.Context)
	if !hasValue {
		fields--
	}
	if !hasContext {
		fields--
	}
	if e.Expires == 0 {
		fields--
	}
	dst = appendMapLen(dst, fields)
	dst = appendStr(dst, keyVersion)
	dst = appendUint(dst, uint64(e.Version))
	dst = appendStr(dst, keyOrigin)
	dst = appendStr(dst, e.Origin)
	dst = appendStr(dst, keyPartition)
	dst = appendUint(dst, uint64(e.Partition))
	dst = appendStr(dst, keySeq)
	dst = appendUint(dst, e.Seq)
	dst = appendStr(dst, keyKey)
	dst = appendStr(dst, e.Key)
	dst = appendStr(dst, keyOp)
	dst = appendUint(dst, uint64(e.Op))
	if hasValue {
		dst = appendStr(dst, keyValue)
		dst = appendBin(dst, e.Value)
	}
	if hasContext {
		dst = appendStr(dst, keyContext)
		dst = appendVV(dst, e.Context)
	}
	dst = appendStr(dst, keyHLC)
	dst = appendUint(dst, e.HLC)
	dst = appendStr(dst, keyPath)
	dst = appendArrayLen(dst, len(e.Path))
	for _, dc := range e.Path {
		dst = appendStr(dst, dc)
	}
	if e.Expires != 0 {
		dst = appendStr(dst, keyExpires)
		dst = appendUint(dst, e.Expires)
	}
	for _, f := range e.unknown {
		dst = appendStr(dst, f.Key)
		dst = append(dst, f.Raw...)
	}
	return dst, nil
}

// sizeHint estimates the encoded size, to grow the buffer once.
func (e *Event) sizeHint() int {
	n := 64 + len(e.Origin) + len(e.Key) + len(e.Value) + 12*len(e.Context) + 2*len(e.Path)
	for k := range e.Context {
		n += len(k)
	}
	for _, dc := range e.Path {
		n += len(dc)
	}
	for _, f := range e.unknown {
		n += 4 + len(f.Key) + len(f.Raw)
	}
	return n
}

// Decode reads an event from its wire form. It is strict: it rejects, with
// an error wrapping ErrTooLarge, ErrMalformed, ErrUnknownVersion, ErrLimit
// or ErrInvalid, anything but one well-formed v1 event within lim that
// passes Validate. It never panics, and it allocates at most in proportion
// to len(b), whatever length headers b claims. The event does not alias b.
func Decode(b []byte, lim Limits) (*Event, error) {
	lim = lim.withDefaults()
	if len(b) > lim.MaxEventBytes {
		return nil, fmt.Errorf("%w: event is %d bytes, over the %d-byte limit", ErrTooLarge, len(b), lim.MaxEventBytes)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty input", ErrMalformed)
	}
	r := reader{b: b}
	n, isNil, err := r.mapLen("top level")
	if err != nil {
		return nil, err
	}
	if isNil {
		return nil, fmt.Errorf("%w: top level: want a map, got nil", ErrMalformed)
	}
	e := &Event{}
	var seen [numKnown]bool
	mark := func(i int, name string) error {
		if seen[i] {
			return fmt.Errorf("%w: field %q appears twice", ErrMalformed, name)
		}
		seen[i] = true
		return nil
	}
	for range n {
		nameb, err := r.str("field name", maxFieldName)
		if err != nil {
			return nil, err
		}
		switch string(nameb) {
		case keyVersion:
			if err := mark(0, keyVersion); err != nil {
				return nil, err
			}
			v, err := r.uint(`"v" (version)`)
			if err != nil {
				return nil, err
			}
			if v != SchemaVersion {
				return nil, fmt.Errorf("%w: version %d, this build reads %d; upgrade this DC", ErrUnknownVersion, v, SchemaVersion)
			}
			e.Version = SchemaVersion
		case keyOrigin:
			if err := mark(1, keyOrigin); err != nil {
				return nil, err
			}
			s, err := r.str(`"o" (origin)`, vclock.MaxIDLen)
			if err != nil {
				return nil, err
			}
			e.Origin = string(s)
		case keyPartition:
			if err := mark(2, keyPartition); err != nil {
				return nil, err
			}
			v, err := r.uint(`"p" (partition)`)
			if err != nil {
				return nil, err
			}
			if v > math.MaxUint32 {
				return nil, fmt.Errorf("%w: partition %d does not fit 32 bits", ErrInvalid, v)
			}
			e.Partition = uint32(v)
		case keySeq:
			if err := mark(3, keySeq); err != nil {
				return nil, err
			}
			if e.Seq, err = r.uint(`"s" (seq)`); err != nil {
				return nil, err
			}
		case keyKey:
			if err := mark(4, keyKey); err != nil {
				return nil, err
			}
			s, err := r.str(`"k" (key)`, lim.MaxKeyBytes)
			if err != nil {
				return nil, err
			}
			e.Key = string(s)
		case keyOp:
			if err := mark(5, keyOp); err != nil {
				return nil, err
			}
			v, err := r.uint(`"op"`)
			if err != nil {
				return nil, err
			}
			if v < uint64(OpPut) || v > uint64(OpResolve) {
				return nil, fmt.Errorf("%w: op %d, want 1 (put), 2 (delete) or 3 (resolve)", ErrInvalid, v)
			}
			e.Op = Op(v)
		case keyValue:
			if err := mark(6, keyValue); err != nil {
				return nil, err
			}
			v, err := r.bin(`"val" (value)`, lim.MaxValueBytes)
			if err != nil {
				return nil, err
			}
			if len(v) > 0 {
				e.Value = bytes.Clone(v)
			}
		case keyContext:
			if err := mark(7, keyContext); err != nil {
				return nil, err
			}
			if e.Context, err = r.context(lim.MaxDCs, e.Origin); err != nil {
				return nil, err
			}
		case keyHLC:
			if err := mark(8, keyHLC); err != nil {
				return nil, err
			}
			if e.HLC, err = r.uint(`"h" (hlc)`); err != nil {
				return nil, err
			}
		case keyPath:
			if err := mark(9, keyPath); err != nil {
				return nil, err
			}
			if e.Path, err = r.path(lim.MaxDCs, e.Origin); err != nil {
				return nil, err
			}
		case keyExpires:
			if err := mark(10, keyExpires); err != nil {
				return nil, err
			}
			if e.Expires, err = r.uint(`"exp" (expiry)`); err != nil {
				return nil, err
			}
		default:
			name := string(nameb)
			for _, f := range e.unknown {
				if f.Key == name {
					return nil, fmt.Errorf("%w: field %q appears twice", ErrMalformed, name)
				}
			}
			if len(e.unknown) >= lim.MaxUnknownFields {
				return nil, fmt.Errorf("%w: more than %d unknown fields", ErrLimit, lim.MaxUnknownFields)
			}
			start := r.off
			if err := r.skip(name, 0, lim.MaxDepth); err != nil {
				return nil, err
			}
			e.unknown = append(e.unknown, rawField{Key: name, Raw: bytes.Clone(b[start:r.off])})
		}
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("%w: %d bytes after the end of the event", ErrMalformed, len(b)-r.off)
	}
	for i, name := range [numKnown]string{keyVersion, keyOrigin, keyPartition, keySeq, keyKey, keyOp, keyValue, keyContext, keyHLC, keyPath, keyExpires} {
		if !seen[i] && name != keyValue && name != keyContext && name != keyExpires {
			return nil, fmt.Errorf("%w: required field %q is missing", ErrMalformed, name)
		}
	}
	e.Dot = vclock.Dot{DC: e.Origin, N: e.Seq}
	if err := e.Validate(lim); err != nil {
		return nil, err
	}
	return e, nil
}

// Validate reports why e is not an event a DC may send or apply, or nil.
// Decode calls it on every event; senders call it before Encode. Errors
// wrap ErrUnknownVersion, ErrLimit or ErrInvalid.
//
// Beyond the Limits, it requires: a valid origin (vclock.ValidID), a
// sequence number in [1, MaxCounter), Dot equal to (Origin, Seq), a known
// op, a non-empty key of valid UTF-8 without control characters (keys
// travel in NATS headers), no value on a delete, context counters below
// MaxCounter with valid DC ids, and a path that starts at the origin and
// names valid DCs, each once.
func (e *Event) Validate(lim Limits) error {
	lim = lim.withDefaults()
	if e.Version != SchemaVersion {
		return fmt.Errorf("%w: version %d, this build reads %d", ErrUnknownVersion, e.Version, SchemaVersion)
	}
	if err := vclock.ValidID(e.Origin); err != nil {
		return fmt.Errorf("%w: origin: %w", ErrInvalid, err)
	}
	if e.Seq == 0 {
		return fmt.Errorf("%w: seq is 0; sequence numbers start at 1", ErrInvalid)
	}
	if e.Seq >= MaxCounter {
		return fmt.Errorf("%w: seq %d is an absurd counter (must be below 2^62)", ErrInvalid, e.Seq)
	}
	if e.Dot.DC != e.Origin || e.Dot.N != e.Seq {
		return fmt.Errorf("%w: dot %s is not (origin, seq) %s:%d", ErrInvalid, e.Dot, e.Origin, e.Seq)
	}
	if e.Op < OpPut || e.Op > OpResolve {
		return fmt.Errorf("%w: op %d, want 1 (put), 2 (delete) or 3 (resolve)", ErrInvalid, e.Op)
	}
	if err := checkKey(e.Key, lim.MaxKeyBytes); err != nil {
		return err
	}
	if len(e.Value) > lim.MaxValueBytes {
		return fmt.Errorf("%w: value is %d bytes, over the %d-byte limit", ErrLimit, len(e.Value), lim.MaxValueBytes)
	}
	if e.Op == OpDelete && len(e.Value) > 0 {
		return fmt.Errorf("%w: a delete carries a %d-byte value", ErrInvalid, len(e.Value))
	}
	if e.Expires != 0 && e.Op == OpDelete {
		return fmt.Errorf("%w: a delete carries an expiry (%d); only a value expires", ErrInvalid, e.Expires)
	}
	if e.Expires != 0 && e.Expires <= e.HLC {
		return fmt.Errorf("%w: expiry %d is not after the event's HLC %d; a TTL must be positive", ErrInvalid, e.Expires, e.HLC)
	}
	entries := 0
	for dc, n := range e.Context {
		if n == 0 {
			continue
		}
		entries++
		if err := vclock.ValidID(dc); err != nil {
			return fmt.Errorf("%w: context: %w", ErrInvalid, err)
		}
		if n >= MaxCounter {
			return fmt.Errorf("%w: context counter %s:%d is absurd (must be below 2^62)", ErrInvalid, dc, n)
		}
	}
	if entries > lim.MaxDCs {
		return fmt.Errorf("%w: context has %d entries, over the %d-DC limit", ErrLimit, entries, lim.MaxDCs)
	}
	if len(e.Path) == 0 {
		return fmt.Errorf("%w: path is empty; it must start with the origin %q", ErrInvalid, e.Origin)
	}
	if len(e.Path) > lim.MaxDCs {
		return fmt.Errorf("%w: path has %d DCs, over the %d-DC limit", ErrLimit, len(e.Path), lim.MaxDCs)
	}
	if e.Path[0] != e.Origin {
		return fmt.Errorf("%w: path starts with %q, not the origin %q", ErrInvalid, e.Path[0], e.Origin)
	}
	for i, dc := range e.Path {
		if err := vclock.ValidID(dc); err != nil {
			return fmt.Errorf("%w: path[%d]: %w", ErrInvalid, i, err)
		}
		if slices.Contains(e.Path[:i], dc) {
			return fmt.Errorf("%w: path names %q twice (a forwarding loop)", ErrInvalid, dc)
		}
	}
	if len(e.unknown) > lim.MaxUnknownFields {
		return fmt.Errorf("%w: %d unknown fields, over the limit of %d", ErrLimit, len(e.unknown), lim.MaxUnknownFields)
	}
	return nil
}

func checkKey(k string, maxBytes int) error {
	if k == "" {
		return fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if len(k) > maxBytes {
		return fmt.Errorf("%w: key is %d bytes, over the %d-byte limit", ErrLimit, len(k), maxBytes)
	}
	for i, c := range k {
		if c == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(k[i:]); size == 1 {
				return fmt.Errorf("%w: key %q is not valid UTF-8 (at byte %d)", ErrInvalid, k, i)
			}
		}
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: key %q has control character %U at byte %d", ErrInvalid, k, c, i)
		}
	}
	return nil
}

// Msgpack writing. Each helper uses the shortest form, as msgpack's own
// encoder does, so vclock's EncodeMsgpack and appendVV agree byte for byte.

func appendUint(dst []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(dst, byte(v))
	case v <= math.MaxUint8:
		return append(dst, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return append(dst, 0xcd, byte(v>>8), byte(v))
	case v <= math.MaxUint32:
		return append(dst, 0xce, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return append(dst, 0xcf, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func appendLen(dst []byte, n int, fix, fixMax byte, c8, c16, c32 byte) []byte {
	switch {
	case n <= int(fixMax):
		return append(dst, fix|byte(n))
	case c8 != 0 && n <= math.MaxUint8:
		return append(dst, c8, byte(n))
	case n <= math.MaxUint16:
		return append(dst, c16, byte(n>>8), byte(n))
	}
	return append(dst, c32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func appendStr(dst []byte, s string) []byte {
	dst = appendLen(dst, len(s), 0xa0, 31, 0xd9, 0xda, 0xdb)
	return append(dst, s...)
}

func appendBin(dst []byte, b []byte) []byte {
	switch n := len(b); {
	case n <= math.MaxUint8:
		dst = append(dst, 0xc4, byte(n))
	case n <= math.MaxUint16:
		dst = append(dst, 0xc5, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0xc6, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, b...)
}

func appendMapLen(dst []byte, n int) []byte {
	return appendLen(dst, n, 0x80, 15, 0, 0xde, 0xdf)
}

func appendArrayLen(dst []byte, n int) []byte {
	return appendLen(dst, n, 0x90, 15, 0, 0xdc, 0xdd)
}

// appendVV writes v as vclock.VV.EncodeMsgpack does: a map sorted by DC id,
// zero counters left out.
// nonZero reports whether v has an entry appendVV writes.
func nonZero(v vclock.VV) bool {
	for _, n := range v {
		if n > 0 {
			return true
		}
	}
	return false
}

func appendVV(dst []byte, v vclock.VV) []byte {
	var buf [8]string
	ids := buf[:0]
	for k, n := range v {
		if n > 0 {
			ids = append(ids, k)
		}
	}
	slices.Sort(ids)
	dst = appendMapLen(dst, len(ids))
	for _, k := range ids {
		dst = appendStr(dst, k)
		dst = appendUint(dst, v[k])
	}
	return dst
}

// reader is a bounds-checked msgpack reader over one byte slice. Every
// length it reads is checked against the bytes left before it is used.
type reader struct {
	b   []byte
	off int
}

func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) truncated(what string, need int) error {
	return fmt.Errorf("%w: %s: truncated, needs %d bytes at offset %d, %d left", ErrMalformed, what, need, r.off, r.left())
}

func (r *reader) wrongType(what, want string, c byte) error {
	return fmt.Errorf("%w: %s: want %s, got msgpack type 0x%02x at offset %d", ErrMalformed, what, want, c, r.off-1)
}

// take returns the next n bytes, or an error when fewer are left.
func (r *reader) take(what string, n int) ([]byte, error) {
	if n < 0 || n > r.left() {
		return nil, r.truncated(what, n)
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p, nil
}

func (r *reader) byte(what string) (byte, error) {
	if r.left() < 1 {
		return 0, r.truncated(what, 1)
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

// bigEndian reads an n-byte (1, 2, 4 or 8) unsigned big-endian integer.
func (r *reader) bigEndian(what string, n int) (uint64, error) {
	p, err := r.take(what, n)
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range p {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// uint reads a non-negative integer in any msgpack integer form.
func (r *reader) uint(what string) (uint64, error) {
	c, err := r.byte(what)
	if err != nil {
		return 0, err
	}
	switch {
	case c <= 0x7f:
		return uint64(c), nil
	case c >= 0xcc && c <= 0xcf:
		return r.bigEndian(what, 1<<(c-0xcc))
	case c >= 0xd0 && c <= 0xd3:
		n := 1 << (c - 0xd0)
		v, err := r.bigEndian(what, n)
		if err != nil {
			return 0, err
		}
		if v>>(8*n-1) != 0 { // sign bit
			return 0, fmt.Errorf("%w: %s: negative integer at offset %d", ErrMalformed, what, r.off-n-1)
		}
		return v, nil
	case c >= 0xe0:
		return 0, fmt.Errorf("%w: %s: negative integer at offset %d", ErrMalformed, what, r.off-1)
	}
	return 0, r.wrongType(what, "an unsigned integer", c)
}

// checkLen rejects a length header over max (ErrLimit) or past the end of
// the input (ErrMalformed).
func (r *reader) checkLen(what string, n uint64, max int) (int, error) {
	if n > uint64(max) {
		return 0, fmt.Errorf("%w: %s is %d bytes, over the %d-byte limit", ErrLimit, what, n, max)
	}
	if n > uint64(r.left()) {
		return 0, fmt.Errorf("%w: %s: length header says %d bytes at offset %d, only %d left", ErrMalformed, what, n, r.off, r.left())
	}
	return int(n), nil
}

// str reads a msgpack string of at most max bytes. The result aliases the
// input.
func (r *reader) str(what string, max int) ([]byte, error) {
	c, err := r.byte(what)
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n = uint64(c & 0x1f)
	case c >= 0xd9 && c <= 0xdb:
		if n, err = r.bigEndian(what, 1<<(c-0xd9)); err != nil {
			return nil, err
		}
	default:
		return nil, r.wrongType(what, "a string", c)
	}
	l, err := r.checkLen(what, n, max)
	if err != nil {
		return nil, err
	}
	return r.take(what, l)
}

// bin reads msgpack bin (or nil, as empty) of at most max bytes. The result
// aliases the input.
func (r *reader) bin(what string, max int) ([]byte, error) {
	c, err := r.byte(what)
	if err != nil {
		return nil, err
	}
	if c == 0xc0 {
		return nil, nil
	}
	if c < 0xc4 || c > 0xc6 {
		return nil, r.wrongType(what, "binary", c)
	}
	n, err := r.bigEndian(what, 1<<(c-0xc4))
	if err != nil {
		return nil, err
	}
	l, err := r.checkLen(what, n, max)
	if err != nil {
		return nil, err
	}
	return r.take(what, l)
}

// containerLen reads a map or array header (nil allowed) and checks that
// its elements (at least one byte each, two per map entry) fit in the input.
func (r *reader) containerLen(what string, isMap bool) (n int, isNil bool, err error) {
	c, err := r.byte(what)
	if err != nil {
		return 0, false, err
	}
	var v uint64
	fix, c16 := byte(0x90), byte(0xdc)
	kind, per := "an array", uint64(1)
	if isMap {
		fix, c16 = 0x80, 0xde
		kind, per = "a map", 2
	}
	switch {
	case c == 0xc0:
		return 0, true, nil
	case c&0xf0 == fix:
		v = uint64(c & 0x0f)
	case c == c16:
		v, err = r.bigEndian(what, 2)
	case c == c16+1:
		v, err = r.bigEndian(what, 4)
	default:
		return 0, false, r.wrongType(what, kind, c)
	}
	if err != nil {
		return 0, false, err
	}
	if v*per > uint64(r.left()) {
		return 0, false, fmt.Errorf("%w: %s: header claims %d elements at offset %d, only %d bytes left", ErrMalformed, what, v, r.off, r.left())
	}
	return int(v), false, nil
}

func (r *reader) mapLen(what string) (int, bool, error) { return r.containerLen(what, true) }

// intern returns b as a string, sharing known's memory when they are equal:
// most ids in a context or path are the origin.
func intern(b []byte, known string) string {
	if string(b) == known {
		return known
	}
	return string(b)
}

// context reads the causal context: a map of DC id to counter. origin, when
// already read, is shared rather than copied.
func (r *reader) context(maxDCs int, origin string) (vclock.VV, error) {
	const what = `"c" (context)`
	n, isNil, err := r.mapLen(what)
	if err != nil || isNil {
		return nil, err
	}
	if n > maxDCs {
		return nil, fmt.Errorf("%w: context has %d entries, over the %d-DC limit", ErrLimit, n, maxDCs)
	}
	vv := make(vclock.VV, n)
	for range n {
		idb, err := r.str(what+" dc id", vclock.MaxIDLen)
		if err != nil {
			return nil, err
		}
		id := intern(idb, origin)
		if err := vclock.ValidID(id); err != nil {
			return nil, fmt.Errorf("%w: context: %w", ErrInvalid, err)
		}
		if _, dup := vv[id]; dup {
			return nil, fmt.Errorf("%w: context names dc %q twice", ErrMalformed, id)
		}
		c, err := r.uint(what + " counter")
		if err != nil {
			return nil, err
		}
		if c == 0 {
			return nil, fmt.Errorf("%w: context counter for dc %q is 0; zero entries are left out", ErrMalformed, id)
		}
		vv[id] = c
	}
	return vv, nil
}

// path reads the path: an array of DC ids. origin, when already read, is
// shared rather than copied.
func (r *reader) path(maxDCs int, origin string) ([]string, error) {
	const what = `"path"`
	n, isNil, err := r.containerLen(what, false)
	if err != nil {
		return nil, err
	}
	if isNil {
		return nil, fmt.Errorf("%w: path is nil; it must start with the origin", ErrInvalid)
	}
	if n > maxDCs {
		return nil, fmt.Errorf("%w: path has %d DCs, over the %d-DC limit", ErrLimit, n, maxDCs)
	}
	p := make([]string, n)
	for i := range p {
		s, err := r.str(what+" dc id", vclock.MaxIDLen)
		if err != nil {
			return nil, err
		}
		p[i] = intern(s, origin)
	}
	return p, nil
}

// skip steps over one msgpack value of any type, at nesting depth depth,
// rejecting containers nested deeper than maxDepth.
func (r *reader) skip(what string, depth, maxDepth int) error {
	what = fmt.Sprintf("unknown field %q", what)
	return r.skipValue(what, depth, maxDepth)
}

func (r *reader) skipValue(what string, depth, maxDepth int) error {
	c, err := r.byte(what)
	if err != nil {
		return err
	}
	var (
		n       uint64 // bytes to skip, or elements when container
		isCont  bool
		perElem uint64 = 1
	)
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return nil
	case c <= 0x8f: // fixmap
		n, isCont, perElem = uint64(c&0x0f), true, 2
	case c <= 0x9f: // fixarray
		n, isCont = uint64(c&0x0f), true
	case c <= 0xbf: // fixstr
		n = uint64(c & 0x1f)
	case c == 0xc1:
		return fmt.Errorf("%w: %s: byte 0xc1 (never used in msgpack) at offset %d", ErrMalformed, what, r.off-1)
	case c >= 0xc4 && c <= 0xc6: // bin 8/16/32
		n, err = r.bigEndian(what, 1<<(c-0xc4))
	case c >= 0xc7 && c <= 0xc9: // ext 8/16/32: length, then a type byte
		n, err = r.bigEndian(what, 1<<(c-0xc7))
		n++
	case c == 0xca: // float32
		n = 4
	case c == 0xcb: // float64
		n = 8
	case c >= 0xcc && c <= 0xcf: // uint 8..64
		n = 1 << (c - 0xcc)
	case c >= 0xd0 && c <= 0xd3: // int 8..64
		n = 1 << (c - 0xd0)
	case c >= 0xd4 && c <= 0xd8: // fixext 1..16, plus the type byte
		n = 1<<(c-0xd4) + 1
	case c >= 0xd9 && c <= 0xdb: // str 8/16/32
		n, err = r.bigEndian(what, 1<<(c-0xd9))
	case c == 0xdc || c == 0xdd: // array 16/32
		n, err = r.bigEndian(what, 2<<(c-0xdc))
		isCont = true
	case c == 0xde || c == 0xdf: // map 16/32
		n, err = r.bigEndian(what, 2<<(c-0xde))
		isCont, perElem = true, 2
	}
	if err != nil {
		return err
	}
	if !isCont {
		if n > uint64(r.left()) {
			return fmt.Errorf("%w: %s: length header says %d bytes at offset %d, only %d left", ErrMalformed, what, n, r.off, r.left())
		}
		r.off += int(n)
		return nil
	}
	if depth >= maxDepth {
		return fmt.Errorf("%w: %s nests deeper than %d levels", ErrLimit, what, maxDepth)
	}
	elems := n * perElem
	if elems > uint64(r.left()) {
		return fmt.Errorf("%w: %s: header claims %d elements at offset %d, only %d bytes left", ErrMalformed, what, n, r.off, r.left())
	}
	for range elems {
		if err := r.skipValue(what, depth+1, maxDepth); err != nil {
			return err
		}
	}
	return nil
}
