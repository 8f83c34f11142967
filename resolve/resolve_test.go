package resolve

import (
	"errors"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

func live(dc string, n, hlc uint64, v string) dvv.Sibling {
	return dvv.Sibling{Dot: vclock.Dot{DC: dc, N: n}, Version: dvv.Version{Value: []byte(v), HLC: hlc}}
}

func tomb(dc string, n, hlc uint64) dvv.Sibling {
	return dvv.Sibling{Dot: vclock.Dot{DC: dc, N: n}, Version: dvv.Version{Deleted: true, HLC: hlc}}
}

func vals(vs ...string) [][]byte {
	out := make([][]byte, len(vs))
	for i, v := range vs {
		out[i] = []byte(v)
	}
	return out
}

func sibs(s ...dvv.Sibling) []dvv.Sibling { return s }

func mp(t testing.TB, v any) string {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The seed scenario: dc1 writes "B" and dc2 writes "C" concurrently; dc2's
// HLC reading is the higher one.
var (
	seedB = live("dc1", 7, 100, "B")
	seedC = live("dc2", 3, 200, "C")
)

func TestSeedScenario(t *testing.T) {
	tests := []struct {
		name string
		r    Resolver
		want Result
	}{
		{"siblings shows both and flags the conflict", Siblings(),
			Result{Values: vals("B", "C"), Kept: sibs(seedB, seedC), Conflict: true}},
		{"record shows both and flags the conflict", Record(),
			Result{Values: vals("B", "C"), Kept: sibs(seedB, seedC), Conflict: true}},
		{"lww keeps the higher HLC and discards the other", LWW(),
			Result{Values: vals("C"), Kept: sibs(seedC), Discarded: sibs(seedB)}},
		{"priority [dc2 dc1] keeps dc2's value", Priority([]string{"dc2", "dc1"}),
			Result{Values: vals("C"), Kept: sibs(seedC), Discarded: sibs(seedB)}},
		{"priority [dc1 dc2] keeps dc1's value despite its lower HLC", Priority([]string{"dc1", "dc2"}),
			Result{Values: vals("B"), Kept: sibs(seedB), Discarded: sibs(seedC)}},
		{"concat joins sorted values", Concat(""),
			Result{Values: vals("B/C"), Kept: sibs(seedB, seedC)}},
		{"concat with another separator", Concat(" | "),
			Result{Values: vals("B | C"), Kept: sibs(seedB, seedC)}},
	}
	for _, tt := range tests {
		for _, in := range [][]dvv.Sibling{sibs(seedB, seedC), sibs(seedC, seedB)} {
			got := tt.r.Resolve("k", in)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s: %s.Resolve(%s) =\n  %s\nwant\n  %s", tt.name, tt.r.Name(), fmtSibs(in), fmtResult(got), fmtResult(tt.want))
			}
		}
	}
}

func TestSeedScenarioUnion(t *testing.T) {
	tests := []struct {
		name       string
		a, b, want string
	}{
		{"json", `["a","b"]`, `["b","c"]`, `["a","b","c"]`},
		{"msgpack", mp(t, []string{"a", "b"}), mp(t, []string{"b", "c"}), mp(t, []string{"a", "b", "c"})},
	}
	for _, tt := range tests {
		x, y := live("dc1", 7, 100, tt.a), live("dc2", 3, 200, tt.b)
		want := Result{Values: vals(tt.want), Kept: sibs(x, y)}
		for _, in := range [][]dvv.Sibling{sibs(x, y), sibs(y, x)} {
			if got := Union().Resolve("k", in); !reflect.DeepEqual(got, want) {
				t.Errorf("%s: union(%s) =\n  %s\nwant\n  %s", tt.name, fmtSibs(in), fmtResult(got), fmtResult(want))
			}
		}
	}
}

func TestResolvers(t *testing.T) {
	var (
		a1  = live("a", 1, 10, "x")
		b1  = live("b", 1, 10, "y") // same HLC as a1: the DC id breaks the tie
		b2  = live("b", 2, 5, "z")
		c1  = live("c", 1, 10, "x") // same value as a1
		ta  = tomb("a", 2, 30)
		tb  = tomb("b", 3, 1)
		lo  = tomb("c", 4, 1)
		del = Result{Deleted: true}
	)
	tests := []struct {
		name string
		r    Resolver
		in   []dvv.Sibling
		want Result
	}{
		{"siblings: empty is absent", Siblings(), nil, del},
		{"siblings: one value, no conflict", Siblings(), sibs(a1),
			Result{Values: vals("x"), Kept: sibs(a1)}},
		{"siblings: tombstones are not shown", Siblings(), sibs(tb, a1),
			Result{Values: vals("x"), Kept: sibs(a1)}},
		{"siblings: only tombstones is a delete", Siblings(), sibs(tb, ta),
			Result{Deleted: true, Kept: sibs(ta, tb)}},
		{"siblings: duplicate values are all shown", Siblings(), sibs(c1, a1),
			Result{Values: vals("x", "x"), Kept: sibs(a1, c1), Conflict: true}},

		{"lww: empty is absent", LWW(), nil, del},
		{"lww: equal HLC, higher DC id wins", LWW(), sibs(b1, a1),
			Result{Values: vals("y"), Kept: sibs(b1), Discarded: sibs(a1)}},
		{"lww: newer tombstone deletes, live losers discarded", LWW(), sibs(a1, ta, b2),
			Result{Deleted: true, Kept: sibs(ta), Discarded: sibs(a1, b2)}},
		{"lww: older tombstone loses and is not logged", LWW(), sibs(tb, a1),
			Result{Values: vals("x"), Kept: sibs(a1)}},
		{"lww: same DC, same HLC, higher counter wins", LWW(), sibs(live("a", 9, 1, "new"), live("a", 8, 1, "old")),
			Result{Values: vals("new"), Kept: sibs(live("a", 9, 1, "new")), Discarded: sibs(live("a", 8, 1, "old"))}},

		{"priority: unlisted DCs rank after listed ones", Priority([]string{"c"}), sibs(a1, c1, b1),
			Result{Values: vals("x"), Kept: sibs(c1), Discarded: sibs(a1, b1)}},
		{"priority: unlisted DCs rank by ascending id", Priority(nil), sibs(b1, a1),
			Result{Values: vals("x"), Kept: sibs(a1), Discarded: sibs(b1)}},
		{"priority: same DC, higher HLC wins", Priority([]string{"b"}), sibs(b1, b2),
			Result{Values: vals("y"), Kept: sibs(b1), Discarded: sibs(b2)}},
		{"priority: a tombstone from the top DC deletes", Priority([]string{"a", "b"}), sibs(b1, ta),
			Result{Deleted: true, Kept: sibs(ta), Discarded: sibs(b1)}},
		{"priority: first listing of a repeated DC counts", Priority([]string{"b", "a", "b"}), sibs(a1, b1),
			Result{Values: vals("y"), Kept: sibs(b1), Discarded: sibs(a1)}},

		{"concat: duplicates collapse", Concat("/"), sibs(c1, b1, a1),
			Result{Values: vals("x/y"), Kept: sibs(a1, b1, c1)}},
		{"concat: tombstones ignored", Concat("/"), sibs(ta, b1, lo),
			Result{Values: vals("y"), Kept: sibs(b1)}},
		{"concat: only tombstones is a delete", Concat("/"), sibs(lo, ta),
			Result{Deleted: true, Kept: sibs(ta, lo)}},
		{"concat: empty is absent", Concat("/"), nil, del},

		{"union: one value is shown as written", Union(), sibs(live("a", 1, 1, ` [ 2, 1 ,1]`)),
			Result{Values: vals(` [ 2, 1 ,1]`), Kept: sibs(live("a", 1, 1, ` [ 2, 1 ,1]`))}},
		{"union: only tombstones is a delete", Union(), sibs(ta),
			Result{Deleted: true, Kept: sibs(ta)}},
		{"union: non-arrays fall back to siblings", Union(), sibs(b1, a1),
			Result{Values: vals("x", "y"), Kept: sibs(a1, b1), Conflict: true}},
	}
	for _, tt := range tests {
		got := tt.r.Resolve("k", tt.in)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: %s.Resolve(%s) =\n  %s\nwant\n  %s", tt.name, tt.r.Name(), fmtSibs(tt.in), fmtResult(got), fmtResult(tt.want))
		}
	}
}

func TestResolveDoesNotModifyInput(t *testing.T) {
	in := sibs(live("c", 1, 3, "3"), live("a", 1, 1, "1"), tomb("b", 1, 2))
	orig := slices.Clone(in)
	for _, r := range allResolvers() {
		r.Resolve("k", in)
		if !reflect.DeepEqual(in, orig) {
			t.Fatalf("%s.Resolve reordered or changed its input: %s", r.Name(), fmtSibs(in))
		}
	}
}

func TestOnWrite(t *testing.T) {
	want := map[string]bool{
		NameSiblings: false, NameRecord: false,
		NameLWW: true, NamePriority: true, NameConcat: true, NameUnion: true,
	}
	for _, r := range allResolvers() {
		if got := r.OnWrite(); got != want[r.Name()] {
			t.Errorf("%s.OnWrite() = %v, want %v", r.Name(), got, want[r.Name()])
		}
	}
}

func TestByName(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		want    string // resolver name, or "" for an error
		errHas  []string
		unknown bool
	}{
		{name: "siblings", want: "siblings"},
		{name: "lww", want: "lww"},
		{name: "priority", opts: Options{Order: []string{"dc1", "dc2"}}, want: "priority"},
		{name: "concat", want: "concat"},
		{name: "concat", opts: Options{Separator: ","}, want: "concat"},
		{name: "union", want: "union"},
		{name: "record", want: "record"},
		{name: "LWW", unknown: true, errHas: []string{`"LWW"`, "siblings, lww, priority, concat, union, record"}},
		{name: "", unknown: true, errHas: []string{"valid names are"}},
		{name: "external", errHas: []string{"built by the node"}},
		{name: "priority", errHas: []string{"at least one DC"}},
		{name: "priority", opts: Options{Order: []string{"dc1", "bad id", "dc1"}},
			errHas: []string{"order[1]", "order[2]", `"dc1" already listed at order[0]`}},
		{name: "lww", opts: Options{Order: []string{"dc1"}, Separator: "+"},
			errHas: []string{"order applies only to priority", "separator applies only to concat"}},
	}
	for _, tt := range tests {
		r, err := ByName(tt.name, tt.opts)
		if tt.want != "" {
			if err != nil {
				t.Errorf("ByName(%q, %+v): %v", tt.name, tt.opts, err)
			} else if r.Name() != tt.want {
				t.Errorf("ByName(%q).Name() = %q, want %q", tt.name, r.Name(), tt.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("ByName(%q, %+v) = %s, want an error", tt.name, tt.opts, r.Name())
			continue
		}
		for _, s := range tt.errHas {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("ByName(%q, %+v) error %q does not mention %q", tt.name, tt.opts, err, s)
			}
		}
		if got := errors.Is(err, ErrUnknown); got != tt.unknown {
			t.Errorf("ByName(%q): errors.Is(err, ErrUnknown) = %v, want %v", tt.name, got, tt.unknown)
		}
	}
}

func TestByNameConcatSeparator(t *testing.T) {
	r, err := ByName("concat", Options{Separator: ","})
	if err != nil {
		t.Fatal(err)
	}
	got := r.Resolve("k", sibs(seedC, seedB))
	if want := vals("B,C"); !reflect.DeepEqual(got.Values, want) {
		t.Errorf("concat with separator \",\" shows %q, want %q", got.Values, want)
	}
}

func allResolvers() []Resolver {
	return []Resolver{
		Siblings(), Record(), LWW(), Priority([]string{"c", "a"}), Concat(""), Union(),
	}
}

func fmtSibs(ss []dvv.Sibling) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s.Dot.String())
		if s.Deleted {
			b.WriteString("=⊥")
		} else {
			b.WriteString("=" + strconv.Quote(string(s.Value)))
		}
		b.WriteString("@" + strconv.FormatUint(s.HLC, 10))
	}
	b.WriteByte(']')
	return b.String()
}

func fmtResult(r Result) string {
	var b strings.Builder
	b.WriteString("values=[")
	for i, v := range r.Values {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Quote(string(v)))
	}
	b.WriteString("] deleted=" + strconv.FormatBool(r.Deleted) + " conflict=" + strconv.FormatBool(r.Conflict))
	b.WriteString(" kept=" + fmtSibs(r.Kept) + " discarded=" + fmtSibs(r.Discarded))
	return b.String()
}
