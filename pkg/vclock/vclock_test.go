package vclock

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// The comparison table of docs/DESIGN.md "Data model", exactly.
func TestSeedTable(t *testing.T) {
	cases := []struct {
		a, b string
		want Order
	}{
		{"{blue:2, green:1}", "{blue:1, green:1}", After},
		{"{blue:2, green:1}", "{blue:1, green:2}", Concurrent},
		{"{blue:1, green:1, red:1}", "{blue:1, green:1}", After},
		{"{blue:1, green:1, red:1}", "{blue:1, green:1, pink:1}", Concurrent},
	}
	for _, c := range cases {
		a, b := mustParse(t, c.a), mustParse(t, c.b)
		if got := Compare(a, b); got != c.want {
			t.Errorf("%s vs %s: %s, want %s", c.a, c.b, got, c.want)
		}
		back := map[Order]Order{After: Before, Before: After, Concurrent: Concurrent, Equal: Equal}[c.want]
		if got := Compare(b, a); got != back {
			t.Errorf("%s vs %s: %s, want %s", c.b, c.a, got, back)
		}
	}
}

func mustParse(t *testing.T, s string) VV {
	t.Helper()
	v, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestTextForm(t *testing.T) {
	v := VV{"green": 1, "blue": 2, "zero": 0}
	if got := v.String(); got != "{blue:2,green:1}" {
		t.Fatalf("String = %s", got)
	}
	for _, bad := range []string{"{", "blue:1", "{blue}", "{blue:x}", "{bl ue:1}", "{a:1,a:2}", "{a:-1}", "{:1}"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	for _, empty := range []string{"", "{}", " { } "} {
		if v, err := Parse(empty); err != nil || len(v) != 0 {
			t.Errorf("Parse(%q) = %v, %v", empty, v, err)
		}
	}
	d, err := ParseDot("dc-1:42")
	if err != nil || d != (Dot{"dc-1", 42}) || d.String() != "dc-1:42" {
		t.Fatalf("ParseDot: %v %v", d, err)
	}
	for _, bad := range []string{"dc", "dc:0", ":3", "dc:x", "d.c:1"} {
		if _, err := ParseDot(bad); err == nil {
			t.Errorf("ParseDot(%q) accepted", bad)
		}
	}
}

func TestCoversAddIncrement(t *testing.T) {
	v := VV{}
	d := v.Increment("a")
	if d != (Dot{"a", 1}) || !v.Covers(d) || v.Covers(Dot{"a", 2}) || v.Covers(Dot{"b", 1}) {
		t.Fatalf("increment/covers wrong: %v %v", v, d)
	}
	v.Add(Dot{"a", 7})
	v.Add(Dot{"a", 3})
	if v["a"] != 7 {
		t.Fatalf("Add must keep the maximum: %v", v)
	}
}

// ref is a deliberately simple reference: vectors over a fixed list of ids
// as plain arrays.
var ids = []string{"a", "b", "c", "d"}

func toArr(v VV) [4]uint64 {
	var out [4]uint64
	for i, id := range ids {
		out[i] = v[id]
	}
	return out
}

func refCompare(a, b [4]uint64) Order {
	le, ge := true, true
	for i := range a {
		if a[i] > b[i] {
			le = false
		}
		if a[i] < b[i] {
			ge = false
		}
	}
	switch {
	case le && ge:
		return Equal
	case le:
		return Before
	case ge:
		return After
	}
	return Concurrent
}

func randVV(r *rand.Rand) VV {
	v := VV{}
	for _, id := range ids {
		if r.IntN(3) > 0 {
			v[id] = uint64(r.IntN(4))
		}
	}
	return v
}

func TestPropertiesAgainstReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		a, b, c := randVV(r), randVV(r), randVV(r)
		if got, want := Compare(a, b), refCompare(toArr(a), toArr(b)); got != want {
			t.Fatalf("Compare(%s, %s) = %s, reference %s", a, b, got, want)
		}
		ab := a.Merge(b)
		for j := range ids {
			if toArr(ab)[j] != max(toArr(a)[j], toArr(b)[j]) {
				t.Fatalf("Merge(%s, %s) = %s", a, b, ab)
			}
		}
		if !ab.Equal(b.Merge(a)) {
			t.Fatalf("merge not commutative: %s %s", a, b)
		}
		if !a.Merge(b).Merge(c).Equal(a.Merge(b.Merge(c))) {
			t.Fatalf("merge not associative: %s %s %s", a, b, c)
		}
		if !a.Merge(a).Equal(a) {
			t.Fatalf("merge not idempotent: %s", a)
		}
		if o := Compare(a, ab); o != Before && o != Equal {
			t.Fatalf("%s is not below its merge %s: %s", a, ab, o)
		}
		// Partial order: antisymmetric and transitive.
		if Compare(a, b) == Equal && !a.Equal(b) {
			t.Fatalf("equal but not Equal: %s %s", a, b)
		}
		if a.LessEq(b) && b.LessEq(c) && !a.LessEq(c) {
			t.Fatalf("LessEq not transitive: %s %s %s", a, b, c)
		}
		if back, err := Parse(a.String()); err != nil || !back.Equal(a) {
			t.Fatalf("text round trip of %s: %s %v", a, back, err)
		}
	}
}

func TestMsgpackDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 500; i++ {
		v := randVV(r)
		// Rebuild the map in a different insertion order.
		w := VV{}
		for j := len(ids) - 1; j >= 0; j-- {
			if n, ok := v[ids[j]]; ok {
				w[ids[j]] = n
			}
		}
		bv, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		bw, _ := msgpack.Marshal(w)
		if !bytes.Equal(bv, bw) {
			t.Fatalf("equal vectors encode differently: %x vs %x", bv, bw)
		}
		var back VV
		if err := msgpack.Unmarshal(bv, &back); err != nil || !back.Equal(v) {
			t.Fatalf("round trip of %s: %s %v", v, back, err)
		}
	}
}

func TestMsgpackRejectsHostile(t *testing.T) {
	huge := []byte{0xdf, 0xff, 0xff, 0xff, 0xff} // map32 claiming 4G entries
	var v VV
	if err := msgpack.Unmarshal(huge, &v); err == nil {
		t.Fatal("a 4G-entry map header was accepted")
	}
	bad, _ := msgpack.Marshal(map[string]uint64{"bad id": 1})
	if err := msgpack.Unmarshal(bad, &v); err == nil {
		t.Fatal("an invalid dc id was accepted")
	}
}
