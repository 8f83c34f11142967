package resolve

import (
	"bytes"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
)

// TestUnionDeepMsgpack checks a hostile, deeply nested value is refused
// quickly instead of recursing through the decoder.
func TestUnionDeepMsgpack(t *testing.T) {
	deep := nested(4 << 20)
	in := sibs(live("a", 1, 1, string(deep)), live("b", 1, 1, "\x91\x01"))
	got := Union().Resolve("k", in)
	if !got.Conflict || len(got.Values) != 2 {
		t.Errorf("union with a deeply nested value = conflict %v, %d values; want the siblings fallback", got.Conflict, len(got.Values))
	}
}

// FuzzUnion checks union never panics, is order independent, and agrees
// with the msgpack decoder about which values are well formed.
func FuzzUnion(f *testing.F) {
	f.Add([]byte(`["a","b"]`), []byte(`["b","c"]`))
	f.Add([]byte{0x92, 0xa1, 'a', 0xa1, 'b'}, []byte{0x91, 0x81, 0xa1, 'k', 0x01})
	f.Add([]byte{0x91, 0xd6, 0xff, 0, 0, 0, 1}, []byte{0x91, 0xc7, 0x01, 0x05, 0x00})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		x, y := live("a", 1, 1, string(a)), live("b", 1, 1, string(b))
		r1 := Union().Resolve("k", []dvv.Sibling{x, y})
		r2 := Union().Resolve("k", []dvv.Sibling{y, x})
		if len(r1.Values) == 0 || len(r1.Values) != len(r2.Values) || !bytes.Equal(r1.Values[0], r2.Values[0]) {
			t.Fatalf("union depends on order: %q vs %q", r1.Values, r2.Values)
		}
		if msgpackcheck.Check(a) == nil {
			r := bytes.NewReader(a)
			if err := msgpack.NewDecoder(r).Skip(); err != nil || r.Len() != 0 {
				t.Fatalf("checkMsgpack accepts % x, the decoder does not: %v, %d bytes left", a, err, r.Len())
			}
		}
	})
}

func nested(depth int) []byte {
	b := bytes.Repeat([]byte{0x91}, depth)
	return append(b, 0xc0)
}
