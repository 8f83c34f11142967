package resolve

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// The typed resolvers' joins are checked against a deliberately simple
// reference model: every operation ever made, each with the set of
// operations its DC had seen when it made it. A state's reference view is
// computed from the operations its DC has seen, by the type's rule stated
// plainly (an increment counts unless a delete saw it; an element is in
// the set while some add of it was seen by no remove; a field shows the
// value of the highest-stamped write that touched it). Random schedules of
// operations and state exchanges between DCs make the states; the checks
// are that the join is commutative, associative and idempotent on them,
// and that any join of them shows what the reference shows for the union
// of their histories.

// refOp is one operation of the reference model.
type refOp struct {
	id    int
	kind  OpKind
	by    int64
	elems []string          // add, remove, put (set): canonical elements
	patch map[string]string // field -> canonical value, "" removes
	put   bool              // fields put: patch is the whole object
	at    stamp
	seen  map[int]bool
}

type typedCase struct {
	name   string
	r      Typed
	randOp func(r *rand.Rand) (Op, refOp)
	ref    func(ops []refOp, hist map[int]bool) string
}

var propElems = []string{`"a"`, `"b"`, `1`, `{"k":1}`, `[true]`}

func typedCases() []typedCase {
	return []typedCase{
		{name: "counter", r: counter{}, randOp: func(r *rand.Rand) (Op, refOp) {
			if r.IntN(6) == 0 {
				return Op{Kind: OpDelete}, refOp{kind: OpDelete}
			}
			by := int64(r.IntN(9) - 4)
			if by == 0 {
				by = 5
			}
			return Op{Kind: OpIncr, By: by}, refOp{kind: OpIncr, by: by}
		}, ref: refCounter},
		{name: "set", r: set{}, randOp: func(r *rand.Rand) (Op, refOp) {
			var elems []string
			for range 1 + r.IntN(2) {
				elems = append(elems, propElems[r.IntN(len(propElems))])
			}
			raw := make([]json.RawMessage, len(elems))
			for i, e := range elems {
				raw[i] = json.RawMessage(e)
			}
			switch r.IntN(10) {
			case 0:
				return Op{Kind: OpDelete}, refOp{kind: OpDelete}
			case 1:
				return Op{Kind: OpPut, Body: []byte("[" + strings.Join(elems, ",") + "]")}, refOp{kind: OpPut, elems: elems}
			case 2, 3, 4:
				return Op{Kind: OpRemove, Elements: raw}, refOp{kind: OpRemove, elems: elems}
			}
			return Op{Kind: OpAdd, Elements: raw}, refOp{kind: OpAdd, elems: elems}
		}, ref: refSet},
		{name: "fields", r: fields{}, randOp: func(r *rand.Rand) (Op, refOp) {
			names := []string{"title", "body", "tags"}
			patch := map[string]string{}
			obj := map[string]any{}
			for range 1 + r.IntN(2) {
				n := names[r.IntN(len(names))]
				if r.IntN(4) == 0 {
					patch[n], obj[n] = "", nil
					continue
				}
				v := strconv.Itoa(r.IntN(3))
				patch[n], obj[n] = v, json.Number(v)
			}
			switch r.IntN(8) {
			case 0:
				return Op{Kind: OpDelete}, refOp{kind: OpDelete, put: true, patch: map[string]string{}}
			case 1:
				for n, v := range patch {
					if v == "" {
						delete(patch, n)
						delete(obj, n)
					}
				}
				b, _ := json.Marshal(obj)
				return Op{Kind: OpPut, Body: b}, refOp{kind: OpPut, put: true, patch: patch}
			}
			b, _ := json.Marshal(obj)
			return Op{Kind: OpPatch, Body: b}, refOp{kind: OpPatch, patch: patch}
		}, ref: refFields},
	}
}

// refCounter: the sum of the increments no delete saw; a delete when every
// increment was seen by one.
func refCounter(ops []refOp, hist map[int]bool) string {
	total, live := int64(0), false
	for _, op := range ops {
		if !hist[op.id] || op.kind != OpIncr {
			continue
		}
		if removedBy(ops, hist, op.id, func(refOp) bool { return true }) {
			continue
		}
		total += op.by
		live = true
	}
	if !live {
		return "<deleted>"
	}
	return strconv.FormatInt(total, 10)
}

// removedBy reports whether an operation in hist that saw op id, and for
// which match holds, removes it.
func removedBy(ops []refOp, hist map[int]bool, id int, match func(refOp) bool) bool {
	for _, o := range ops {
		if hist[o.id] && o.seen[id] && o.kind != OpIncr && o.kind != OpAdd && o.kind != OpPatch && match(o) {
			return true
		}
	}
	return false
}

// refSet: an element is in while some add of it (add or put) was seen by
// no later remove of it, put or delete.
func refSet(ops []refOp, hist map[int]bool) string {
	in := map[string]bool{}
	for _, op := range ops {
		if !hist[op.id] || (op.kind != OpAdd && op.kind != OpPut) {
			continue
		}
		for _, e := range op.elems {
			removed := false
			for _, o := range ops {
				if !hist[o.id] || !o.seen[op.id] {
					continue
				}
				switch o.kind {
				case OpDelete, OpPut:
					removed = true
				case OpRemove, OpAdd:
					// A later add of e replaces this add's dot; it is
					// counted on its own.
					removed = removed || slices.Contains(o.elems, e)
				}
			}
			if !removed {
				in[e] = true
			}
		}
	}
	if len(in) == 0 {
		return "<deleted>"
	}
	out := make([]string, 0, len(in))
	for e := range in {
		out = append(out, e)
	}
	sort.Strings(out)
	return "[" + strings.Join(out, ",") + "]"
}

// refFields: each field shows the highest-stamped write that touched it:
// a patch naming it, or a put or delete (which touch every field).
func refFields(ops []refOp, hist map[int]bool) string {
	type win struct {
		at  stamp
		val string
	}
	best := map[string]win{}
	var floor *refOp
	for i, op := range ops {
		if !hist[op.id] {
			continue
		}
		if op.put && (floor == nil || compareStamps(op.at, floor.at) > 0) {
			floor = &ops[i]
		}
		for n, v := range op.patch {
			if w, ok := best[n]; !ok || compareStamps(op.at, w.at) > 0 {
				best[n] = win{op.at, v}
			}
		}
	}
	var names []string
	for n, w := range best {
		if w.val != "" && (floor == nil || compareStamps(w.at, floor.at) >= 0) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "<deleted>"
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", n, best[n].val)
	}
	b.WriteByte('}')
	return b.String()
}

// typedState is one state a schedule made and the operations behind it.
type typedState struct {
	enc  []byte
	hist map[int]bool
}

// runTyped plays a random schedule: DCs make operations on their states
// and take each other's states (the join), and it returns every state a
// DC held after an operation or an exchange.
func runTyped(r *rand.Rand, tc typedCase) ([]refOp, []typedState) {
	n := 2 + r.IntN(3)
	type dcState struct {
		name string
		enc  []byte
		hist map[int]bool
		seq  uint64
		hlc  uint64
	}
	dcs := make([]*dcState, n)
	for i := range dcs {
		dcs[i] = &dcState{name: propDCs[i], hist: map[int]bool{}}
	}
	var ops []refOp
	var states []typedState
	for range 3 + r.IntN(10) {
		d := dcs[r.IntN(n)]
		if r.IntN(3) == 0 {
			o := dcs[r.IntN(n)]
			if o == d || o.enc == nil {
				continue
			}
			d.enc = typedJoin(tc.r, d.enc, o.enc)
			for id := range o.hist {
				d.hist[id] = true
			}
			d.hlc = max(d.hlc, o.hlc)
		} else {
			op, ref := tc.randOp(r)
			d.seq += 1 + r.Uint64N(3)
			d.hlc += 1 + r.Uint64N(2)
			dot := vclock.Dot{DC: d.name, N: d.seq}
			var sibs []dvv.Sibling
			if d.enc != nil {
				sibs = []dvv.Sibling{{Dot: vclock.Dot{DC: "z", N: 1}, Version: dvv.Version{Value: d.enc}}}
			}
			enc, err := tc.r.Apply(sibs, op, dot, d.hlc)
			if err != nil {
				panic(fmt.Sprintf("%s %+v: %v", tc.name, op, err))
			}
			ref.id, ref.at = len(ops), stamp{HLC: d.hlc, DC: d.name, N: d.seq}
			ref.seen = make(map[int]bool, len(d.hist))
			for id := range d.hist {
				ref.seen[id] = true
			}
			ops = append(ops, ref)
			d.enc = enc
			d.hist[ref.id] = true
		}
		h := make(map[int]bool, len(d.hist))
		for id := range d.hist {
			h[id] = true
		}
		states = append(states, typedState{enc: d.enc, hist: h})
	}
	return ops, states
}

// typedJoin joins two encoded states through Resolve's path: the live
// siblings decoded and joined; it returns the join re-encoded.
func typedJoin(r Typed, a, b []byte) []byte {
	switch r.(type) {
	case counter:
		x, _ := decodeCounter(a)
		y, _ := decodeCounter(b)
		return encodeTyped(joinCounter(x, y))
	case set:
		x, _ := decodeSet(a)
		y, _ := decodeSet(b)
		return encodeTyped(joinSet(x, y))
	case fields:
		x, _ := decodeFields(a)
		y, _ := decodeFields(b)
		return encodeTyped(joinFields(x, y))
	}
	panic("not a typed resolver")
}

func shown(r Typed, enc ...[]byte) string {
	sibs := make([]dvv.Sibling, len(enc))
	for i, e := range enc {
		sibs[i] = dvv.Sibling{Dot: vclock.Dot{DC: "z", N: uint64(i + 1)}, Version: dvv.Version{Value: e}}
	}
	res := r.Resolve("k", sibs)
	if res.Deleted {
		return "<deleted>"
	}
	return string(bytes.Join(res.Values, []byte("|")))
}

// TestPropertyTypedSemilattice checks commutativity, associativity and
// idempotence of each typed join, and every join against the reference.
func TestPropertyTypedSemilattice(t *testing.T) {
	for _, tc := range typedCases() {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(3, 4))
			for i := range propertyCases {
				ops, states := runTyped(r, tc)
				if len(states) == 0 {
					continue
				}
				pick := func() typedState { return states[r.IntN(len(states))] }
				a, b, c := pick(), pick(), pick()
				if a.enc == nil || b.enc == nil || c.enc == nil {
					continue
				}
				ab, ba := typedJoin(tc.r, a.enc, b.enc), typedJoin(tc.r, b.enc, a.enc)
				if !bytes.Equal(ab, ba) {
					t.Fatalf("case %d: join not commutative:\n a⊔b %s\n b⊔a %s", i, readable(ab), readable(ba))
				}
				l, rr := typedJoin(tc.r, ab, c.enc), typedJoin(tc.r, a.enc, typedJoin(tc.r, b.enc, c.enc))
				if !bytes.Equal(l, rr) {
					t.Fatalf("case %d: join not associative:\n (a⊔b)⊔c %s\n a⊔(b⊔c) %s", i, readable(l), readable(rr))
				}
				if aa := typedJoin(tc.r, a.enc, a.enc); !bytes.Equal(aa, typedJoin(tc.r, a.enc, nil2empty(tc.r))) {
					t.Fatalf("case %d: join not idempotent: a⊔a %s, a %s", i, readable(aa), readable(a.enc))
				}
				hist := map[int]bool{}
				for _, s := range []typedState{a, b, c} {
					for id := range s.hist {
						hist[id] = true
					}
				}
				want := tc.ref(ops, hist)
				if got := shown(tc.r, a.enc, b.enc, c.enc); got != want {
					t.Fatalf("case %d: a⊔b⊔c shows %s, the reference %s\n a %s\n b %s\n c %s", i, got, want, readable(a.enc), readable(b.enc), readable(c.enc))
				}
				if got := shown(tc.r, c.enc, a.enc, b.enc); got != want {
					t.Fatalf("case %d: the siblings' order changed the view: %s, want %s", i, got, want)
				}
			}
		})
	}
}

// nil2empty is the type's empty state, the join's identity.
func nil2empty(r Typed) []byte {
	switch r.(type) {
	case counter:
		return encodeTyped(counterState{Type: NameCounter, V: typedVersion})
	case set:
		return encodeTyped(emptySet())
	}
	return encodeTyped(emptyFields())
}

func readable(b []byte) string {
	if out, ok := Readable(b); ok {
		return string(out)
	}
	return fmt.Sprintf("%x", b)
}
