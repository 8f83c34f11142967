package resolve

import (
	"encoding/json"
	"testing"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// FuzzTypedStates feeds arbitrary bytes, as a sibling from the network, to
// every typed resolver's read and to an operation on top of it: nothing
// panics, a read is deterministic, and an operation either is refused or
// writes a state the resolver reads back.
func FuzzTypedStates(f *testing.F) {
	for _, r := range []Typed{counter{}, fields{}, set{}} {
		ops := []Op{{Kind: OpIncr, By: 3}, {Kind: OpPatch, Body: []byte(`{"a":{"b":1}}`)}, {Kind: OpAdd, Elements: []json.RawMessage{json.RawMessage(`"x"`)}}}
		for _, op := range ops {
			if v, err := r.Apply(nil, op, vclock.Dot{DC: "dc1", N: 1}, 1); err == nil {
				f.Add(v)
			}
		}
	}
	f.Add([]byte{0x93, 0xa7, 'c', 'o', 'u', 'n', 't', 'e', 'r', 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("not msgpack"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sibs := []dvv.Sibling{{Dot: vclock.Dot{DC: "dc2", N: 1}, Version: dvv.Version{Value: b}}}
		for _, r := range []Typed{counter{}, fields{}, set{}} {
			a, c := r.Resolve("k", sibs), r.Resolve("k", sibs)
			if len(a.Values) != len(c.Values) || a.Deleted != c.Deleted {
				t.Fatalf("%s: two reads differ", r.Name())
			}
			for _, op := range []Op{{Kind: OpIncr, By: 1}, {Kind: OpPatch, Body: []byte(`{"z":1}`)}, {Kind: OpAdd, Elements: []json.RawMessage{json.RawMessage(`1`)}}, {Kind: OpDelete}} {
				v, err := r.Apply(sibs, op, vclock.Dot{DC: "dc1", N: 2}, 2)
				if err != nil {
					continue
				}
				if res := r.Resolve("k", []dvv.Sibling{{Dot: vclock.Dot{DC: "dc1", N: 2}, Version: dvv.Version{Value: v}}}); res.Conflict {
					t.Fatalf("%s: the state an operation wrote does not read back", r.Name())
				}
			}
		}
	})
}
