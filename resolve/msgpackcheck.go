package resolve

import (
	"encoding/binary"
	"errors"
)

// maxNesting bounds how deeply union accepts msgpack arrays and maps to
// nest. The msgpack decoder recurses once per level, so without a bound a
// value of a few megabytes could exhaust the goroutine stack.
const maxNesting = 100

var (
	errMsgpackShort   = errors.New("resolve: msgpack value is truncated")
	errMsgpackCode    = errors.New("resolve: msgpack value holds the unused code 0xc1")
	errMsgpackDeep    = errors.New("resolve: msgpack value nests too deeply")
	errMsgpackTrailer = errors.New("resolve: msgpack value has trailing bytes")
)

// checkMsgpack reports whether b is exactly one well-formed msgpack value
// nested at most maxNesting deep. It walks b without recursion, so the
// decoder can then be trusted with it.
func checkMsgpack(b []byte) error {
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
			return errMsgpackShort
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
				return errMsgpackCode
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
			return errMsgpackShort
		}
		i += int(skip)
		if container {
			if items > uint64(len(b)-i) { // every item takes at least a byte
				return errMsgpackShort
			}
			if len(pending) > maxNesting {
				return errMsgpackDeep
			}
			pending = append(pending, items)
		}
	}
	if i != len(b) {
		return errMsgpackTrailer
	}
	return nil
}
