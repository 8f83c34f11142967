package resolve

import (
	"bytes"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
)

func TestCheckMsgpack(t *testing.T) {
	valid := []any{
		nil, true, false, 0, 1, -1, -33, 127, 128, 255, 256, 65535, 65536, math.MaxUint32 + 1, int64(math.MinInt64), uint64(math.MaxUint64),
		float32(1.5), 2.5, "", "short", strings.Repeat("s", 31), strings.Repeat("s", 32), strings.Repeat("s", 256), strings.Repeat("s", 70000),
		[]byte{}, []byte("bin"), bytes.Repeat([]byte{1}, 300), bytes.Repeat([]byte{1}, 70000),
		time.Unix(1, 0), time.Unix(1, 5), time.Unix(1<<40, 5), // fixext4, fixext8, ext8 timestamps
		[]any{}, []any{1, "a", []any{nil}}, make([]int, 16), make([]int, 70000),
		map[string]any{}, map[string]any{"a": 1, "b": []any{map[string]any{"c": nil}}}, bigMap(16), bigMap(70000),
	}
	for _, v := range valid {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkMsgpack(b); err != nil {
			t.Errorf("checkMsgpack(%T % x...) = %v, want nil", v, head(b), err)
		}
		for n := 0; n < len(b); n += 1 + n/8 {
			if err := checkMsgpack(b[:n]); !errors.Is(err, errMsgpackShort) {
				t.Errorf("checkMsgpack of %d of %d bytes of %T = %v, want %v", n, len(b), v, err, errMsgpackShort)
			}
		}
		if err := checkMsgpack(append(b, 0)); !errors.Is(err, errMsgpackTrailer) {
			t.Errorf("checkMsgpack(%T plus a byte) = %v, want %v", v, err, errMsgpackTrailer)
		}
	}
	invalid := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, errMsgpackShort},
		{"unused code", []byte{0x91, 0xc1}, errMsgpackCode},
		{"array32 claims more items than bytes", []byte{0xdd, 0xff, 0xff, 0xff, 0xff, 0x01}, errMsgpackShort},
		{"str32 claims more bytes than exist", []byte{0xdb, 0xff, 0xff, 0xff, 0xff, 'a'}, errMsgpackShort},
		{"nested past the limit", nested(maxNesting + 1), errMsgpackDeep},
	}
	for _, tt := range invalid {
		if err := checkMsgpack(tt.b); !errors.Is(err, tt.want) {
			t.Errorf("%s: checkMsgpack = %v, want %v", tt.name, err, tt.want)
		}
	}
	if err := checkMsgpack(nested(maxNesting)); err != nil {
		t.Errorf("checkMsgpack of %d nested arrays = %v, want nil", maxNesting, err)
	}
}

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
		if checkMsgpack(a) == nil {
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

func bigMap(n int) map[string]any {
	m := make(map[string]any, n)
	for i := range n {
		m["k"+strconv.Itoa(i)] = i
	}
	return m
}

func head(b []byte) []byte { return b[:min(len(b), 8)] }
