package resolve

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
)

func TestUnion(t *testing.T) {
	// msgpack spellings of 1 that differ in bytes: fixint and uint64.
	var fixOne, wideOne []byte
	fixOne = []byte{0x91, 0x01}
	wideOne = []byte{0x91, 0xcf, 0, 0, 0, 0, 0, 0, 0, 1}
	mapAB := []byte{0x91, 0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x02} // [{"a":1,"b":2}]
	mapBA := []byte{0x91, 0x82, 0xa1, 'b', 0x02, 0xa1, 'a', 0x01} // [{"b":2,"a":1}]

	tests := []struct {
		name     string
		in       []string
		want     []string
		conflict bool
	}{
		{"json: set union, sorted, de-duplicated", []string{`["b","c","c"]`, `["a","b"]`}, []string{`["a","b","c"]`}, false},
		{"json: whitespace and key order do not matter", []string{` [ {"y":1, "x":2} ]`, "\n[{\"x\":2,\"y\":1}]"}, []string{`[{"x":2,"y":1}]`}, false},
		{"json: numbers keep their spelling", []string{`[1, 2.50]`, `[1e0, 1]`}, []string{`[1,1e0,2.50]`}, false},
		{"json: mixed element types sort by encoding", []string{`[null,"s"]`, `[true,[1],{"a":"<"}]`}, []string{`["s",[1],null,true,{"a":"<"}]`}, false},
		{"json: empty arrays", []string{`[]`, `[ ]`}, []string{`[]`}, false},
		{"msgpack: set union", []string{mp(t, []any{"b", 2}), mp(t, []any{2, "a"})}, []string{mp(t, []any{2, "a", "b"})}, false},
		{"msgpack: integer width does not matter", []string{string(fixOne), string(wideOne)}, []string{string(fixOne)}, false},
		{"msgpack: map key order does not matter", []string{string(mapAB), string(mapBA)}, []string{string(mapAB)}, false},
		{"msgpack: empty arrays", []string{mp(t, []any{}), mp(t, []any{})}, []string{mp(t, []any{})}, false},
		{"mixed formats fall back to siblings", []string{`["a"]`, mp(t, []string{"a"})}, []string{`["a"]`, mp(t, []string{"a"})}, true},
		{"a non-array falls back to siblings", []string{`["a"]`, `"a"`}, []string{`["a"]`, `"a"`}, true},
		{"malformed json falls back", []string{`["a"]`, `["a"`}, []string{`["a"]`, `["a"`}, true},
		{"trailing json falls back", []string{`["a"]`, `["a"] x`}, []string{`["a"]`, `["a"] x`}, true},
		{"short msgpack falls back", []string{mp(t, []string{"a"}), "\x92\xa1a"}, []string{mp(t, []string{"a"}), "\x92\xa1a"}, true},
		{"trailing msgpack falls back", []string{mp(t, []string{"a"}), "\x91\xa1a\x01"}, []string{mp(t, []string{"a"}), "\x91\xa1a\x01"}, true},
	}
	for _, tt := range tests {
		var in []dvv.Sibling
		for i, v := range tt.in {
			in = append(in, live(string(rune('a'+i)), 1, 1, v))
		}
		got := Union().Resolve("k", in)
		if !reflect.DeepEqual(got.Values, vals(tt.want...)) || got.Conflict != tt.conflict || got.Deleted || len(got.Discarded) != 0 {
			t.Errorf("%s: union(%q) = %s\nwant values %q conflict=%v", tt.name, tt.in, fmtResult(got), tt.want, tt.conflict)
		}
		if !reflect.DeepEqual(got.Kept, in) {
			t.Errorf("%s: union kept %s, want every live sibling %s", tt.name, fmtSibs(got.Kept), fmtSibs(in))
		}
	}
}

// TestUnionMsgpackDecodes checks the merged msgpack value decodes to the
// expected set. Elements sort by their encoding, and a msgpack string's
// header holds its length, so shorter strings come first.
func TestUnionMsgpackDecodes(t *testing.T) {
	in := sibs(live("a", 1, 1, mp(t, []string{"apple", "pear"})), live("b", 1, 1, mp(t, []string{"fig", "apple"})))
	got := Union().Resolve("cart", in)
	var items []string
	if err := msgpack.Unmarshal(got.Values[0], &items); err != nil {
		t.Fatalf("merged value does not decode: %v", err)
	}
	if want := []string{"fig", "pear", "apple"}; !reflect.DeepEqual(items, want) {
		t.Errorf("merged cart = %q, want %q", items, want)
	}
}

// canonicalElem names an element by its value, whatever number types the
// decoders chose.
func canonicalElem(t testing.TB, e any) string {
	t.Helper()
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	b, _ = json.Marshal(v)
	return string(b)
}
