package changelog

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// TestEncodeStateMatchesReflection: the hand-written state encoder writes
// the very bytes msgpack's reflection writes for storedState, so stores
// written before it read the same, and digests over the bytes agree
// between DCs running either.
func TestEncodeStateMatchesReflection(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	nums := []uint64{0, 1, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, 1 << 62}
	num := func() uint64 {
		if r.IntN(2) == 0 {
			return nums[r.IntN(len(nums))]
		}
		return r.Uint64() >> r.IntN(64)
	}
	states := []dvv.State{{}, {Clock: vclock.VV{}}, {Clock: vclock.VV{"a": 0}}}
	for range 5000 {
		st := dvv.State{}
		if r.IntN(10) > 0 {
			st.Clock = vclock.VV{}
			for i := range r.IntN(6) {
				st.Clock[fmt.Sprintf("dc%d", i)] = num()
			}
		}
		for range r.IntN(5) {
			sb := dvv.Sibling{Dot: vclock.Dot{DC: fmt.Sprintf("d%d", r.IntN(70)), N: num()}}
			switch r.IntN(4) {
			case 0:
				sb.Deleted = true
			case 1:
				sb.Value = nil
			case 2:
				sb.Value = []byte{}
			default:
				sb.Value = bytes.Repeat([]byte{byte(r.IntN(256))}, []int{1, 31, 32, 255, 256, 70000}[r.IntN(6)])
			}
			sb.HLC = num()
			if !sb.Deleted && r.IntN(3) == 0 {
				sb.Expires = sb.HLC + num()
			}
			st.Siblings = append(st.Siblings, sb)
		}
		states = append(states, st)
	}
	for i, st := range states {
		got, err := encodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		want, err := encodeStateReflect(st)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("state %d %+v:\n fast    %x\n reflect %x", i, st, got, want)
		}
		if _, err := decodeState(got); err != nil {
			t.Fatalf("state %d: the fast encoding does not decode: %v", i, err)
		}
	}
}

// encodeStateReflect is encodeState by reflection over storedState: the
// reference the fast encoder is tested against.
func encodeStateReflect(st dvv.State) ([]byte, error) {
	s := storedState{Clock: st.Clock, Siblings: make([]storedSibling, len(st.Siblings))}
	for i, sb := range st.Siblings {
		s.Siblings[i] = storedSibling{DC: sb.Dot.DC, N: sb.Dot.N, Value: normValue(sb.Version), Deleted: sb.Deleted, HLC: sb.HLC, Exp: sb.Expires}
	}
	return msgpack.Marshal(&s)
}

func BenchmarkEncodeState(b *testing.B) {
	st := dvv.State{Clock: vclock.VV{"dc1": 12345, "dc2": 77, "dc3": 9}, Siblings: []dvv.Sibling{
		{Dot: vclock.Dot{DC: "dc1", N: 12345}, Version: dvv.Version{Value: make([]byte, 100), HLC: 1 << 50}},
	}}
	for _, c := range []struct {
		name string
		fn   func(dvv.State) ([]byte, error)
	}{{"fast", encodeState}, {"reflect", encodeStateReflect}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.fn(st); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
