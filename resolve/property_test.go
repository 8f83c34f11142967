package resolve

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

const propertyCases = 5000

var propDCs = []string{"a", "b", "c", "d", "e"}

// valuePool mixes plain values, duplicates, JSON and msgpack arrays and
// things that are neither, so every resolver's branches are exercised.
func valuePool(t testing.TB) [][]byte {
	pool := vals("", "B", "C", "x", "B/C", `["a","b"]`, `["b","c"]`, `[ "c" , 1 ]`, `[]`, `[{"k":1,"j":2}]`, `"s"`, `["a"`,
		mp(t, []string{"a", "b"}), mp(t, []any{"b", 3}), mp(t, []any{}), mp(t, []any{map[string]int{"k": 1, "j": 2}}), "\x92\xa1a")
	return append(pool, nil)
}

// randSiblings returns a random sibling set: DCs, counters and HLCs drawn
// from small ranges so ties are common, a quarter tombstones. With unique
// set, no two siblings share a dot (what a real key holds); otherwise exact
// and partial duplicates appear too.
func randSiblings(r *rand.Rand, pool [][]byte, unique bool) []dvv.Sibling {
	n := r.IntN(7)
	var out []dvv.Sibling
	seen := map[vclock.Dot]bool{}
	for len(out) < n {
		if !unique && len(out) > 0 && r.IntN(5) == 0 {
			dup := out[r.IntN(len(out))]
			if r.IntN(2) == 0 {
				dup.Value = pool[r.IntN(len(pool))]
			}
			out = append(out, dup)
			continue
		}
		d := vclock.Dot{DC: propDCs[r.IntN(len(propDCs))], N: 1 + r.Uint64N(4)}
		if unique && seen[d] {
			continue
		}
		seen[d] = true
		sb := dvv.Sibling{Dot: d, Version: dvv.Version{HLC: r.Uint64N(4)}}
		if r.IntN(4) == 0 {
			sb.Deleted = true
		} else {
			sb.Value = pool[r.IntN(len(pool))]
		}
		out = append(out, sb)
	}
	return out
}

func propResolvers() []Resolver {
	return []Resolver{
		Siblings(), Record(), LWW(), Concat("/"), Union(),
		Priority(nil), Priority([]string{"c", "a"}), Priority([]string{"e", "d", "c", "b", "a"}),
	}
}

// TestPropertyOrderIndependent checks that every resolver's Result depends
// only on the set of siblings: any permutation gives the same Result.
func TestPropertyOrderIndependent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pool := valuePool(t)
	for i := range propertyCases {
		in := randSiblings(r, pool, i%2 == 0)
		for _, res := range propResolvers() {
			want := res.Resolve("k", in)
			for range 3 {
				perm := slices.Clone(in)
				r.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
				if got := res.Resolve("k", perm); !reflect.DeepEqual(got, want) {
					t.Fatalf("case %d: %s depends on order:\n  %s -> %s\n  %s -> %s",
						i, res.Name(), fmtSibs(in), fmtResult(want), fmtSibs(perm), fmtResult(got))
				}
			}
		}
	}
}

// TestPropertyNothingSilentlyLost checks, for every resolver, that each
// live sibling is either kept (its version is shown or merged into what is
// shown) or discarded (and so logged), never both and never neither; that
// only live siblings are discarded; and that lww and priority show exactly
// their one kept sibling.
func TestPropertyNothingSilentlyLost(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	pool := valuePool(t)
	for i := range propertyCases {
		in := randSiblings(r, pool, true)
		for _, res := range propResolvers() {
			got := res.Resolve("k", in)
			fail := func(msg string) {
				t.Fatalf("case %d: %s: %s\n  in:  %s\n  got: %s", i, res.Name(), msg, fmtSibs(in), fmtResult(got))
			}
			count := map[vclock.Dot]int{}
			for _, sb := range got.Kept {
				if !sb.Deleted {
					count[sb.Dot]++
				}
			}
			for _, sb := range got.Discarded {
				if sb.Deleted {
					fail("discarded a tombstone")
				}
				count[sb.Dot]++
			}
			nlive := 0
			for _, sb := range in {
				if sb.Deleted {
					continue
				}
				nlive++
				if count[sb.Dot] != 1 {
					fail("live sibling " + sb.Dot.String() + " is not kept or discarded exactly once")
				}
			}
			if len(count) != nlive {
				fail("kept or discarded a sibling that is not in the input")
			}
			if got.Deleted != (len(got.Values) == 0) {
				fail("Deleted must be set exactly when no value is shown")
			}
			if nlive == 0 && !got.Deleted {
				fail("no live sibling but not deleted")
			}
			switch res.Name() {
			case NameLWW, NamePriority:
				if len(in) > 0 && len(got.Kept) != 1 {
					fail("must keep exactly one sibling")
				}
				if len(in) > 0 && !got.Kept[0].Deleted && !reflect.DeepEqual(got.Values, [][]byte{got.Kept[0].Value}) {
					fail("must show the kept sibling's value")
				}
				if got.Conflict {
					fail("a write-time resolver must not flag a conflict")
				}
			case NameSiblings, NameRecord:
				if got.Conflict != (nlive > 1) {
					fail("conflict must be flagged exactly when more than one value is live")
				}
			}
		}
	}
}

// refLWW is the reference winner: a linear scan for the highest
// (HLC, DC id, counter).
func refLWW(in []dvv.Sibling) dvv.Sibling {
	best := in[0]
	for _, s := range in[1:] {
		if s.HLC > best.HLC ||
			s.HLC == best.HLC && s.Dot.DC > best.Dot.DC ||
			s.HLC == best.HLC && s.Dot.DC == best.Dot.DC && s.Dot.N > best.Dot.N {
			best = s
		}
	}
	return best
}

// refPriority is the reference priority winner: rank every DC (listed ones
// in order, then the others by id), then scan for the best rank, breaking
// ties by HLC and counter.
func refPriority(order []string, in []dvv.Sibling) dvv.Sibling {
	var rest []string
	for _, s := range in {
		if !slices.Contains(order, s.Dot.DC) && !slices.Contains(rest, s.Dot.DC) {
			rest = append(rest, s.Dot.DC)
		}
	}
	sort.Strings(rest)
	ranked := append(slices.Clone(order), rest...)
	rank := func(dc string) int { return slices.Index(ranked, dc) }
	best := in[0]
	for _, s := range in[1:] {
		rs, rb := rank(s.Dot.DC), rank(best.Dot.DC)
		if rs < rb ||
			rs == rb && s.HLC > best.HLC ||
			rs == rb && s.HLC == best.HLC && s.Dot.N > best.Dot.N {
			best = s
		}
	}
	return best
}

func TestPropertyWinnerMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	pool := valuePool(t)
	orders := [][]string{nil, {"c", "a"}, {"e", "d", "c", "b", "a"}, {"b"}}
	for i := range propertyCases {
		in := randSiblings(r, pool, true)
		if len(in) == 0 {
			continue
		}
		if got, want := LWW().Resolve("k", in).Kept[0], refLWW(in); !reflect.DeepEqual(got, want) {
			t.Fatalf("case %d: lww kept %s, reference picks %s\n  in: %s", i, fmtSibs(sibs(got)), fmtSibs(sibs(want)), fmtSibs(in))
		}
		for _, order := range orders {
			if got, want := Priority(order).Resolve("k", in).Kept[0], refPriority(order, in); !reflect.DeepEqual(got, want) {
				t.Fatalf("case %d: priority %q kept %s, reference picks %s\n  in: %s", i, order, fmtSibs(sibs(got)), fmtSibs(sibs(want)), fmtSibs(in))
			}
		}
	}
}

// TestPropertyConcatMatchesReference checks concat against sort, de-dup
// and join of the live values.
func TestPropertyConcatMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	pool := valuePool(t)
	for i := range propertyCases {
		in := randSiblings(r, pool, true)
		set := map[string]bool{}
		for _, s := range in {
			if !s.Deleted {
				set[string(s.Value)] = true
			}
		}
		var want [][]byte
		if len(set) > 0 {
			keys := make([]string, 0, len(set))
			for k := range set {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			want = [][]byte{[]byte(strings.Join(keys, "+"))}
		}
		got := Concat("+").Resolve("k", in)
		if !slices.EqualFunc(got.Values, want, bytes.Equal) {
			t.Fatalf("case %d: concat shows %q, want %q\n  in: %s", i, got.Values, want, fmtSibs(in))
		}
	}
}

// TestPropertyUnionMerges checks union against a set built from decoded
// elements, and that merging in steps gives what merging at once gives
// (union is a semilattice, so DCs may apply it independently).
func TestPropertyUnionMerges(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	elems := []any{"a", "b", "c", "", 1, 2, 300, true, nil, []any{"a"}, map[string]any{"k": "v"}}
	randArray := func() []any {
		out := make([]any, r.IntN(4))
		for i := range out {
			out[i] = elems[r.IntN(len(elems))]
		}
		return out
	}
	for i := range propertyCases / 2 {
		useJSON := i%2 == 0
		encode := func(a []any) string {
			if useJSON {
				b, err := json.Marshal(a)
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
			return mp(t, a)
		}
		x, y, z := randArray(), randArray(), randArray()
		sx, sy, sz := live("a", 1, 1, encode(x)), live("b", 1, 1, encode(y)), live("c", 1, 1, encode(z))

		all := Union().Resolve("k", sibs(sx, sy, sz))
		if len(all.Values) != 1 || all.Conflict {
			t.Fatalf("case %d: union of three arrays = %s", i, fmtResult(all))
		}
		xy := Union().Resolve("k", sibs(sx, sy))
		step := Union().Resolve("k", sibs(live("d", 1, 1, string(xy.Values[0])), sz))
		if !bytes.Equal(step.Values[0], all.Values[0]) {
			t.Fatalf("case %d: union(union(x,y),z) = %q, union(x,y,z) = %q", i, step.Values[0], all.Values[0])
		}

		// Every input element appears in the result, and nothing else.
		want := map[string]bool{}
		for _, a := range [][]any{x, y, z} {
			for _, e := range a {
				want[canonicalElem(t, e)] = true
			}
		}
		var got []any
		if useJSON {
			err := json.Unmarshal(all.Values[0], &got)
			if err != nil {
				t.Fatal(err)
			}
		} else if err := msgpack.Unmarshal(all.Values[0], &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("case %d: union %q has %d elements, want %d distinct", i, all.Values[0], len(got), len(want))
		}
		for _, e := range got {
			if !want[canonicalElem(t, e)] {
				t.Fatalf("case %d: union %q holds %v, which no input holds", i, all.Values[0], e)
			}
		}
	}
}
