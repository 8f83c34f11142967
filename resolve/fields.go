package resolve

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

var _ Typed = fields{}

// Fields returns the per-field document resolver: a JSON object whose
// top-level fields each carry the stamp (HLC, DC, dot counter) of the write
// that set or removed them, the last writer winning per field. A whole-object
// write (PUT) or a delete sets the state's floor to its stamp: every field
// stamped below the floor is gone, so the fields a PUT leaves out are
// removed as of that PUT, and a concurrent change to one of them with a
// later stamp survives. The join takes the highest stamp per field and the
// highest floor. A field value that loses to a concurrent change of the same
// field, one the winner's writer had not seen, is discarded and so logged.
func Fields() Resolver { return fields{} }

type fields struct{}

func (fields) Name() string  { return NameFields }
func (fields) OnWrite() bool { return true }

// stamp orders the writes of one field: HLC, then DC id, then counter.
type stamp struct {
	_msgpack struct{} `msgpack:",as_array"`
	HLC      uint64
	DC       string
	N        uint64
}

func compareStamps(a, b stamp) int {
	if c := cmp.Compare(a.HLC, b.HLC); c != 0 {
		return c
	}
	if c := cmp.Compare(a.DC, b.DC); c != 0 {
		return c
	}
	return cmp.Compare(a.N, b.N)
}

// fieldsState is a document's stored and replicated state.
type fieldsState struct {
	_msgpack struct{} `msgpack:",as_array"`
	Type     string
	V        int
	VV       []dotEntry // what the state has seen, sorted by DC
	Floor    stamp      // fields stamped below it are gone
	F        []fieldEntry
}

type fieldEntry struct {
	_msgpack struct{} `msgpack:",as_array"`
	Name     string
	At       stamp
	Del      bool   // removed by a merge patch's null
	Val      []byte // canonical JSON; empty when Del
}

// compareEntries orders two entries of one field: the later stamp wins;
// equal stamps (only from a forged state) by the rest, so the join is
// still deterministic.
func compareEntries(a, b fieldEntry) int {
	if c := compareStamps(a.At, b.At); c != 0 {
		return c
	}
	if a.Del != b.Del {
		if a.Del {
			return 1
		}
		return -1
	}
	return bytes.Compare(a.Val, b.Val)
}

func emptyFields() fieldsState { return fieldsState{Type: NameFields, V: typedVersion} }

// decodeFields decodes a document state, normalised whatever a peer sent.
func decodeFields(b []byte) (fieldsState, error) {
	var st fieldsState
	if err := decodeTyped(b, NameFields, &st); err != nil {
		return st, err
	}
	for _, e := range st.F {
		if !e.Del && !json.Valid(e.Val) {
			return st, fmt.Errorf("%w: field %q holds %d bytes that are not JSON", errNotTyped, e.Name, len(e.Val))
		}
	}
	return joinFields(emptyFields(), st), nil
}

// joinFields is the document's join: the version vectors by max, the
// highest floor, per field the highest stamp; then every field stamped
// below the floor is dropped.
func joinFields(a, b fieldsState) fieldsState {
	out := emptyFields()
	out.VV = vvJoin(vvJoin(nil, a.VV), b.VV)
	out.Floor = a.Floor
	if compareStamps(b.Floor, out.Floor) > 0 {
		out.Floor = b.Floor
	}
	byName := make(map[string]fieldEntry, len(a.F)+len(b.F))
	for _, e := range slices.Concat(a.F, b.F) {
		if cur, ok := byName[e.Name]; !ok || compareEntries(e, cur) > 0 {
			byName[e.Name] = e
		}
	}
	for _, e := range byName {
		if compareStamps(e.At, out.Floor) >= 0 {
			out.F = append(out.F, e)
		}
	}
	slices.SortFunc(out.F, func(x, y fieldEntry) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// view is the merged object, keys sorted; it exists when a field is live.
func (st fieldsState) view() []byte {
	var buf bytes.Buffer
	buf.WriteByte('{')
	n := 0
	for _, e := range st.F {
		if e.Del {
			continue
		}
		if n > 0 {
			buf.WriteByte(',')
		}
		n++
		name, _ := encodeJSON(e.Name)
		buf.Write(name)
		buf.WriteByte(':')
		buf.Write(e.Val)
	}
	buf.WriteByte('}')
	return buf.Bytes()
}

func (st fieldsState) live() bool {
	return slices.ContainsFunc(st.F, func(e fieldEntry) bool { return !e.Del })
}

func (st fieldsState) entry(name string) (fieldEntry, bool) {
	i, ok := slices.BinarySearchFunc(st.F, name, func(e fieldEntry, n string) int { return strings.Compare(e.Name, n) })
	if !ok {
		return fieldEntry{}, false
	}
	return st.F[i], true
}

func (fields) Resolve(_ string, sibs []dvv.Sibling) Result {
	res, merged, ok := typedResolve(sibs, decodeFields, joinFields, func(st fieldsState) ([]byte, bool) { return st.view(), st.live() })
	if !ok || len(res.Kept) < 2 {
		return res
	}
	return discardFields(res, merged)
}

// discardFields finds, among the live siblings of res, the field values
// merged lost to a concurrent change of the same field: a live value
// whose dot no sibling holding the winning stamp had seen. Each sibling
// that lost values is discarded as a copy holding just those fields (a
// JSON object); the siblings that won them are kept as copies holding the
// winning values, null for a removal.
func discardFields(res Result, merged fieldsState) Result {
	states := make([]fieldsState, len(res.Kept))
	for i, sb := range res.Kept {
		states[i], _ = decodeFields(sb.Value) // typedResolve decoded each
	}
	won := map[int]map[string][]byte{}
	var discarded []dvv.Sibling
	for i, st := range states {
		lost := map[string][]byte{}
		for _, e := range st.F {
			if e.Del {
				continue
			}
			w, ok := merged.entry(e.Name)
			if ok && compareEntries(w, e) == 0 {
				continue
			}
			// The winner: the field's entry, or the floor that removed it.
			winAt, winVal := merged.Floor, []byte("null")
			if ok {
				winAt = w.At
				if !w.Del {
					winVal = w.Val
				}
			}
			seen, holder := false, -1
			for j, o := range states {
				if j == i {
					continue
				}
				oe, has := o.entry(e.Name)
				holds := has && compareStamps(oe.At, winAt) == 0 || compareStamps(o.Floor, winAt) == 0
				if !holds {
					continue
				}
				if holder < 0 {
					holder = j
				}
				if vvCovers(o.VV, dotEntry{DC: e.At.DC, N: e.At.N}) {
					seen = true
				}
			}
			if seen || holder < 0 {
				continue
			}
			lost[e.Name] = e.Val
			if won[holder] == nil {
				won[holder] = map[string][]byte{}
			}
			won[holder][e.Name] = winVal
		}
		if len(lost) > 0 {
			sb := res.Kept[i]
			sb.Value = objectOf(lost)
			discarded = append(discarded, sb)
		}
	}
	if len(discarded) == 0 {
		return res
	}
	var kept []dvv.Sibling
	for i, sb := range res.Kept {
		if w := won[i]; w != nil {
			sb.Value = objectOf(w)
			kept = append(kept, sb)
		}
	}
	res.Kept, res.Discarded = kept, discarded
	return res
}

// objectOf encodes fields as a JSON object, keys sorted.
func objectOf(m map[string][]byte) []byte {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := encodeJSON(n)
		buf.Write(k)
		buf.WriteByte(':')
		buf.Write(m[n])
	}
	buf.WriteByte('}')
	return buf.Bytes()
}

// parseObject decodes a JSON object body, keeping member order irrelevant.
func parseObject(what string, body []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var x any
	if err := dec.Decode(&x); err != nil {
		return nil, badOp("%s is not JSON: %v", what, err)
	}
	if dec.More() {
		return nil, badOp("%s has data after the JSON object", what)
	}
	obj, ok := x.(map[string]any)
	if !ok {
		return nil, badOp("%s must be a JSON object, got %s", what, jsonKind(x))
	}
	return obj, nil
}

func jsonKind(x any) string {
	switch x.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	}
	return "an object"
}

// mergePatch applies an RFC 7386 merge patch to target.
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	} else {
		t = maps.Clone(t)
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergePatch(t[k], v)
	}
	return t
}

func (fields) Apply(sibs []dvv.Sibling, op Op, dot vclock.Dot, hlc uint64) ([]byte, error) {
	st, err := joinLive(NameFields, sibs, decodeFields, joinFields, emptyFields())
	if err != nil {
		return nil, err
	}
	// The write wins over everything it saw, even when this DC's HLC lags
	// a stamp it holds (the store's HLC normally makes that impossible).
	for _, e := range st.F {
		hlc = max(hlc, e.At.HLC+1)
	}
	if st.Floor != (stamp{}) {
		hlc = max(hlc, st.Floor.HLC+1)
	}
	at := stamp{HLC: hlc, DC: dot.DC, N: dot.N}
	set := func(name string, v any) error {
		b, err := encodeJSON(v)
		if err != nil {
			return badOp("field %q: %v", name, err)
		}
		st.F = upsertField(st.F, fieldEntry{Name: name, At: at, Val: b})
		return nil
	}
	switch op.Kind {
	case OpPatch:
		patch, err := parseObject("a merge patch", op.Body)
		if err != nil {
			return nil, err
		}
		for name, v := range patch {
			if v == nil {
				st.F = upsertField(st.F, fieldEntry{Name: name, At: at, Del: true})
				continue
			}
			var old any
			if e, ok := st.entry(name); ok && !e.Del {
				dec := json.NewDecoder(bytes.NewReader(e.Val))
				dec.UseNumber()
				_ = dec.Decode(&old) // stored canonical JSON
			}
			if err := set(name, mergePatch(old, v)); err != nil {
				return nil, err
			}
		}
	case OpPut:
		obj, err := parseObject("the body of a PUT to a fields key", op.Body)
		if err != nil {
			return nil, err
		}
		st.Floor, st.F = at, nil
		for name, v := range obj {
			if err := set(name, v); err != nil {
				return nil, err
			}
		}
	case OpDelete:
		st.Floor, st.F = at, nil
	default:
		return nil, badOp("the key holds fields: %s does not apply; use PATCH (or PUT of a whole object)", op.Kind)
	}
	st.VV = vvAdd(st.VV, dot)
	return encodeTyped(st), nil
}

// upsertField sets e in fs, sorted by name.
func upsertField(fs []fieldEntry, e fieldEntry) []fieldEntry {
	i, ok := slices.BinarySearchFunc(fs, e.Name, func(x fieldEntry, n string) int { return strings.Compare(x.Name, n) })
	if ok {
		fs[i] = e
		return fs
	}
	return slices.Insert(fs, i, e)
}
