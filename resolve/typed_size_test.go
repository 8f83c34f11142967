package resolve

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// TestTypedStateBytes measures the encoded state of each type after every
// one of n DCs has written it (docs/DESIGN.md "Typed values" quotes these
// figures), and holds the metadata to O(DCs): the bytes per DC added
// between 3 and 16 DCs stay below a small constant. Counters hold
// realistic magnitudes (a million increments per DC, then a delete that
// observed them all); sequence numbers are around a million and HLCs are
// wall-clock readings.
func TestTypedStateBytes(t *testing.T) {
	const hlc0 = uint64(1_780_000_000_000) << 16
	build := func(r Typed, n int, ops func(dc int) []Op) []byte {
		var state []byte
		seq := uint64(1_000_000)
		for dc := range n {
			for _, op := range ops(dc) {
				seq++
				var sibs []dvv.Sibling
				if state != nil {
					sibs = []dvv.Sibling{{Dot: vclock.Dot{DC: "x", N: 1}, Version: dvv.Version{Value: state}}}
				}
				var err error
				if state, err = r.Apply(sibs, op, vclock.Dot{DC: fmt.Sprintf("dc%d", dc+1), N: seq}, hlc0+seq); err != nil {
					t.Fatal(err)
				}
			}
		}
		return state
	}
	elems := func(es ...string) []json.RawMessage {
		out := make([]json.RawMessage, len(es))
		for i, e := range es {
			out[i] = json.RawMessage(e)
		}
		return out
	}
	cases := []struct {
		name    string
		r       Typed
		ops     func(n int) func(dc int) []Op
		perDC   int // bound of the bytes each added DC may cost
		explain string
	}{
		{"counter", counter{}, func(n int) func(int) []Op {
			return func(dc int) []Op {
				ops := []Op{{Kind: OpIncr, By: 1_000_000}, {Kind: OpIncr, By: -1000}}
				if dc == n-1 {
					ops = append(ops, Op{Kind: OpDelete}, Op{Kind: OpIncr, By: 1})
				}
				return ops
			}
		}, 24, "every DC incremented and decremented, then a delete and one increment"},
		{"fields", fields{}, func(int) func(int) []Op {
			return func(dc int) []Op {
				return []Op{{Kind: OpPatch, Body: fmt.Appendf(nil, `{"f%d":"value-%d"}`, dc%5, dc)}}
			}
		}, 40, "5 fields of 9-byte values, each DC changed one (the version vector grows per DC, the fields do not)"},
		{"set of 10", set{}, func(int) func(int) []Op {
			return func(dc int) []Op {
				ops := []Op{{Kind: OpAdd, Elements: elems(fmt.Sprintf(`"item-%d"`, dc%10))}}
				if dc == 0 {
					ops = append(ops, Op{Kind: OpAdd, Elements: elems(`"item-0"`, `"item-1"`, `"item-2"`, `"item-3"`, `"item-4"`, `"item-5"`, `"item-6"`, `"item-7"`, `"item-8"`, `"item-9"`)})
				}
				return ops
			}
		}, 20, "10 elements of 8 bytes; then each DC added one again (one dot per element)"},
	}
	for _, c := range cases {
		s3 := build(c.r, 3, c.ops(3))
		s16 := build(c.r, 16, c.ops(16))
		per := (len(s16) - len(s3)) / 13
		t.Logf("%-9s 3 DCs: %4d bytes, 16 DCs: %4d bytes (%d per added DC): %s; shows %s", c.name, len(s3), len(s16), per, c.explain, shown(c.r, s16))
		if per > c.perDC {
			t.Errorf("%s: %d bytes per added DC, over %d", c.name, per, c.perDC)
		}
	}
	// The worst case of a set: every element added concurrently at every
	// DC keeps one dot per DC per element until an add or remove that saw
	// them replaces them.
	var sibs []dvv.Sibling
	for dc := range 16 {
		v, err := set{}.Apply(nil, Op{Kind: OpAdd, Elements: elems(`"a"`, `"b"`, `"c"`, `"d"`, `"e"`, `"f"`, `"g"`, `"h"`, `"i"`, `"j"`)},
			vclock.Dot{DC: fmt.Sprintf("dc%d", dc+1), N: 1_000_000}, 0)
		if err != nil {
			t.Fatal(err)
		}
		sibs = append(sibs, dvv.Sibling{Dot: vclock.Dot{DC: fmt.Sprintf("dc%d", dc+1), N: 1}, Version: dvv.Version{Value: v}})
	}
	joined, err := set{}.Apply(sibs, Op{Kind: OpDelete}, vclock.Dot{DC: "dc1", N: 2_000_000}, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := joinLive(NameSet, sibs, decodeSet, joinSet, emptySet())
	t.Logf("set worst case, 10 elements each added concurrently at 16 DCs: %d bytes joined (%d dots); after a remove that saw them: %d bytes",
		len(encodeTyped(st)), 16*10, len(joined))
}
