// Package msgpackcheck checks that bytes from the network are one
// well-formed msgpack value before the msgpack decoder sees them.
//
// The decoder (vmihailenco/msgpack v5.4.1) trusts the lengths it reads: it
// allocates a slice of every element type but []byte and []string at its
// declared length before reading an element (its allocation limit check in
// decode_slice.go is inverted, so it never applies), and it recurses once
// per nesting level. A 10-byte message declaring an array of 2^31 structs
// therefore ends the process with "fatal error: out of memory", which no
// recover catches. Check walks the bytes without recursion and refuses any
// array or map that declares more items than bytes remain (every item takes
// at least one), any string or binary longer than what remains, and nesting
// deeper than MaxNesting; a value it accepts makes the decoder allocate at
// most a few words per input byte.
//
// Internal to the sidecar: not a stable Go API.
package msgpackcheck

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// MaxNesting bounds how deeply arrays and maps may nest.
const MaxNesting = 100

// The ways Check refuses a value.
var (
	ErrShort   = errors.New("msgpack value is truncated or declares more than it holds")
	ErrCode    = errors.New("msgpack value holds the unused code 0xc1")
	ErrDeep    = errors.New("msgpack value nests too deeply")
	ErrTrailer = errors.New("msgpack value has trailing bytes")
)

// Unmarshal checks b (Check), then decodes it into v.
func Unmarshal(b []byte, v any) error {
	if err := Check(b); err != nil {
		return fmt.Errorf("msgpack: %w", err)
	}
	return msgpack.Unmarshal(b, v)
}

// Check reports whether b is exactly one well-formed msgpack value
// nested at most MaxNesting deep. It walks b without recursion, so the
// decoder can then be trusted with it.
func Check(b []byte) error {
	pending := make([]uint64, 1, 8) // items still to read at each open level
	pending[0] = 1
	i := 0
	// size reads a big-endian length of n bytes at i.
	size := func(n int) (uint64, bool) {
		if len(b)-i < n {
			return 0, false
		}
		var v uint64
		switch n {
		case 1:
			v = uint64(b[i])
		case 2:
			v = uint64(binary.BigEndian.Uint16(b[i:]))
		case 4:
			v = uint64(binary.BigEndian.Uint32(b[i:]))
		}
		i += n
		return v, true
	}
	for len(pending) > 0 {
		top := len(pending) - 1
		if pending[top] == 0 {
			pending = pending[:top]
			continue
		}
		pending[top]--
		if i >= len(b) {
			return ErrShort
		}
		c := b[i]
		i++
		var (
			skip      uint64 // payload bytes that follow
			items     uint64 // nested values that follow
			container bool
			ok        = true
		)
		switch {
		case c <= 0x7f || c >= 0xe0: // fixint
		case c <= 0x8f:
			items, container = 2*uint64(c&0x0f), true
		case c <= 0x9f:
			items, container = uint64(c&0x0f), true
		case c <= 0xbf:
			skip = uint64(c & 0x1f)
		default:
			switch c {
			case 0xc0, 0xc2, 0xc3: // nil, false, true
			case 0xc1:
				return ErrCode
			case 0xc4, 0xd9: // bin8, str8
				skip, ok = size(1)
			case 0xc5, 0xda: // bin16, str16
				skip, ok = size(2)
			case 0xc6, 0xdb: // bin32, str32
				skip, ok = size(4)
			case 0xc7, 0xc8, 0xc9: // ext8, ext16, ext32: length, then type byte
				skip, ok = size(1 << (c - 0xc7))
				skip++
			case 0xca: // float32
				skip = 4
			case 0xcb: // float64
				skip = 8
			case 0xcc, 0xd0: // uint8, int8
				skip = 1
			case 0xcd, 0xd1:
				skip = 2
			case 0xce, 0xd2:
				skip = 4
			case 0xcf, 0xd3:
				skip = 8
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1 to 16, plus the type byte
				skip = 1 + 1<<(c-0xd4)
			case 0xdc: // array16
				items, ok = size(2)
				container = true
			case 0xdd: // array32
				items, ok = size(4)
				container = true
			case 0xde: // map16
				items, ok = size(2)
				items, container = 2*items, true
			case 0xdf: // map32
				items, ok = size(4)
				items, container = 2*items, true
			}
		}
		if !ok || skip > uint64(len(b)-i) {
			return ErrShort
		}
		i += int(skip)
		if container {
			if items > uint64(len(b)-i) { // every item takes at least a byte
				return ErrShort
			}
			if len(pending) > MaxNesting {
				return ErrDeep
			}
			pending = append(pending, items)
		}
	}
	if i != len(b) {
		return ErrTrailer
	}
	return nil
}
