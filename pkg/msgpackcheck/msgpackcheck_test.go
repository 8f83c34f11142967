package msgpackcheck

import (
	"bytes"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestCheck(t *testing.T) {
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
		if err := Check(b); err != nil {
			t.Errorf("Check(%T % x...) = %v, want nil", v, head(b), err)
		}
		for n := 0; n < len(b); n += 1 + n/8 {
			if err := Check(b[:n]); !errors.Is(err, ErrShort) {
				t.Errorf("Check of %d of %d bytes of %T = %v, want %v", n, len(b), v, err, ErrShort)
			}
		}
		if err := Check(append(b, 0)); !errors.Is(err, ErrTrailer) {
			t.Errorf("Check(%T plus a byte) = %v, want %v", v, err, ErrTrailer)
		}
	}
	invalid := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"unused code", []byte{0x91, 0xc1}, ErrCode},
		{"array32 claims more items than bytes", []byte{0xdd, 0xff, 0xff, 0xff, 0xff, 0x01}, ErrShort},
		{"str32 claims more bytes than exist", []byte{0xdb, 0xff, 0xff, 0xff, 0xff, 'a'}, ErrShort},
		{"nested past the limit", nested(MaxNesting + 1), ErrDeep},
	}
	for _, tt := range invalid {
		if err := Check(tt.b); !errors.Is(err, tt.want) {
			t.Errorf("%s: Check = %v, want %v", tt.name, err, tt.want)
		}
	}
	if err := Check(nested(MaxNesting)); err != nil {
		t.Errorf("Check of %d nested arrays = %v, want nil", MaxNesting, err)
	}
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

// TestUnmarshalRefusesHugeDeclaredLengths: arrays, maps and strings that
// declare more than the bytes hold are refused before the decoder, which
// would allocate a slice of structs at its declared length first.
func TestUnmarshalRefusesHugeDeclaredLengths(t *testing.T) {
	type item struct{ A, B string }
	type target struct {
		Items []item
		Nums  []uint32
		M     map[string]int
	}
	field := func(name string, tail ...byte) []byte {
		k, _ := msgpack.Marshal(name)
		return append(append([]byte{0x81}, k...), tail...)
	}
	for name, b := range map[string][]byte{
		"array32 of structs": field("Items", 0xdd, 0x7f, 0xff, 0xff, 0xff),
		"array16 of uint32":  field("Nums", 0xdc, 0xff, 0xff),
		"map32":              field("M", 0xdf, 0xff, 0xff, 0xff, 0xff),
		"str32":              field("Items", 0xdb, 0xff, 0xff, 0xff, 0xff),
	} {
		var v target
		if err := Unmarshal(b, &v); !errors.Is(err, ErrShort) {
			t.Errorf("%s (%d bytes): %v, want ErrShort", name, len(b), err)
		}
	}
	ok, _ := msgpack.Marshal(target{Items: []item{{"a", "b"}}, Nums: []uint32{1, 2}, M: map[string]int{"x": 1}})
	var v target
	if err := Unmarshal(ok, &v); err != nil || len(v.Items) != 1 || v.M["x"] != 1 {
		t.Fatalf("a well-formed value: %+v, %v", v, err)
	}
}
