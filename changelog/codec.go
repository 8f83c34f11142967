package changelog

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// storedState is the on-disk form of a dvv.State. Its encoding is
// deterministic (fields as an array, the clock sorted by DC id, siblings
// sorted by dot), so equal states have equal bytes and the digest can hash
// the bytes directly.
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
}

func encodeState(st dvv.State) ([]byte, error) {
	s := storedState{Clock: st.Clock, Siblings: make([]storedSibling, len(st.Siblings))}
	for i, sb := range st.Siblings {
		s.Siblings[i] = storedSibling{DC: sb.Dot.DC, N: sb.Dot.N, Value: normValue(sb.Version), Deleted: sb.Deleted, HLC: sb.HLC}
	}
	return msgpack.Marshal(&s)
}

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
			Version: dvv.Version{Value: sb.Value, Deleted: sb.Deleted, HLC: sb.HLC},
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
