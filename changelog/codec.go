package changelog

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// storedState is the on-disk form of a dvv.State. Its encoding is
// deterministic (the clock sorted by DC id, siblings sorted by dot), so
// equal states have equal bytes and the digest can hash the bytes
// directly. The `_ struct{} msgpack:",as_array"` fields below were meant to
// make it an array, but msgpack/v5 honours that tag only on a field named
// _msgpack: the stored form has always been a map with the field names.
// It stays so: every store and every digest depends on these bytes.
type storedState struct {
	_        struct{} `msgpack:",as_array"`
	Clock    vclock.VV
	Siblings []storedSibling
}

type storedSibling struct {
	_       struct{} `msgpack:",as_array"`
	DC      string
	N       uint64
	Value   []byte
	Deleted bool
	HLC     uint64
	// Exp is the version's expiry (dvv.Version.Expires); written only
	// when set, so a state without TTLs keeps its bytes and its digest.
	Exp uint64 `msgpack:"Exp,omitempty"`
}

func encodeState(st dvv.State) ([]byte, error) {
	e := stateEncoders.Get().(*stateEncoder)
	defer stateEncoders.Put(e)
	e.buf.Reset()
	enc := e.enc
	if err := errors.Join(enc.EncodeMapLen(2), enc.EncodeString("Clock")); err != nil {
		return nil, err
	}
	var err error
	if st.Clock == nil {
		err = enc.EncodeNil()
	} else {
		err = st.Clock.EncodeMsgpack(enc)
	}
	if err != nil {
		return nil, err
	}
	if err := errors.Join(enc.EncodeString("Siblings"), enc.EncodeArrayLen(len(st.Siblings))); err != nil {
		return nil, err
	}
	for _, sb := range st.Siblings {
		fields := 5
		if sb.Expires != 0 {
			fields = 6
		}
		if err := errors.Join(
			enc.EncodeMapLen(fields),
			enc.EncodeString("DC"), enc.EncodeString(sb.Dot.DC),
			enc.EncodeString("N"), enc.EncodeUint64(sb.Dot.N),
			enc.EncodeString("Value"), enc.EncodeBytes(normValue(sb.Version)),
			enc.EncodeString("Deleted"), enc.EncodeBool(sb.Deleted),
			enc.EncodeString("HLC"), enc.EncodeUint64(sb.HLC),
		); err != nil {
			return nil, err
		}
		if sb.Expires != 0 {
			if err := errors.Join(enc.EncodeString("Exp"), enc.EncodeUint64(sb.Expires)); err != nil {
				return nil, err
			}
		}
	}
	return bytes.Clone(e.buf.Bytes()), nil
}

// stateEncoder is a reusable msgpack encoder with its buffer.
type stateEncoder struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

var stateEncoders = sync.Pool{New: func() any {
	e := &stateEncoder{}
	e.enc = msgpack.NewEncoder(&e.buf)
	return e
}}

func decodeState(b []byte) (dvv.State, error) {
	var s storedState
	if err := msgpack.Unmarshal(b, &s); err != nil {
		return dvv.State{}, fmt.Errorf("decode key state: %w", err)
	}
	st := dvv.State{Clock: s.Clock, Siblings: make([]dvv.Sibling, len(s.Siblings))}
	if st.Clock == nil {
		st.Clock = vclock.VV{}
	}
	for i, sb := range s.Siblings {
		st.Siblings[i] = dvv.Sibling{
			Dot:     vclock.Dot{DC: sb.DC, N: sb.N},
			Version: dvv.Version{Value: sb.Value, Deleted: sb.Deleted, HLC: sb.HLC, Expires: sb.Exp},
		}
		st.Siblings[i].Value = normValue(st.Siblings[i].Version)
	}
	return st, nil
}

// normValue gives every version one form: a tombstone has a nil value and a
// live value is never nil (an empty value is empty, not nil). The wire
// decodes an empty value as nil, so without this the DC that wrote an empty
// value and the DCs that applied it would store different bytes.
func normValue(v dvv.Version) []byte {
	switch {
	case v.Deleted:
		return nil
	case v.Value == nil:
		return []byte{}
	}
	return v.Value
}
