package vclock

import (
	"fmt"
	"sort"

	"github.com/vmihailenco/msgpack/v5"
)

// MaxEntries bounds the entries a decoded vector may hold; it matches the
// largest DC count the replicator accepts.
const MaxEntries = 64

var (
	_ msgpack.CustomEncoder = VV(nil)
	_ msgpack.CustomDecoder = (*VV)(nil)
)

// EncodeMsgpack writes v as a msgpack map sorted by DC id, so equal vectors
// always encode to equal bytes (msgpack's SetSortMapKeys does not cover
// map[string]uint64). Zero entries are left out.
func (v VV) EncodeMsgpack(enc *msgpack.Encoder) error {
	ids := make([]string, 0, len(v))
	for k, n := range v {
		if n > 0 {
			ids = append(ids, k)
		}
	}
	sort.Strings(ids)
	if err := enc.EncodeMapLen(len(ids)); err != nil {
		return err
	}
	for _, k := range ids {
		if err := enc.EncodeString(k); err != nil {
			return err
		}
		if err := enc.EncodeUint(v[k]); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack reads a vector, rejecting more than MaxEntries entries,
// invalid DC ids and repeated ids.
func (v *VV) DecodeMsgpack(dec *msgpack.Decoder) error {
	n, err := dec.DecodeMapLen()
	if err != nil {
		return fmt.Errorf("vclock: %w", err)
	}
	if n < 0 {
		*v = nil
		return nil
	}
	if n > MaxEntries {
		return fmt.Errorf("vclock: vector has %d entries, over the %d limit", n, MaxEntries)
	}
	out := make(VV, n)
	for i := 0; i < n; i++ {
		id, err := dec.DecodeString()
		if err != nil {
			return fmt.Errorf("vclock: entry %d id: %w", i, err)
		}
		if err := checkID(id); err != nil {
			return err
		}
		c, err := dec.DecodeUint64()
		if err != nil {
			return fmt.Errorf("vclock: entry %q counter: %w", id, err)
		}
		if _, dup := out[id]; dup {
			return fmt.Errorf("vclock: dc %q appears twice", id)
		}
		if c > 0 {
			out[id] = c
		}
	}
	*v = out
	return nil
}
