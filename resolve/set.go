package resolve

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

var _ Typed = set{}

// Set returns the add-wins observed-remove set resolver (an ORSWOT: Bieniusa
// et al., Riak's riak_dt_orswot). The state is a version vector of the
// writes it has seen and, per element, the dots of the adds that put it
// there (at most one per DC: an add replaces the element's dots with its
// own). A remove drops the element and its dots and leaves nothing behind:
// the version vector remembers that the dots were seen. The join keeps a
// dot that both sides hold, or that one side holds and the other has not
// seen; so a concurrent add, whose dot the remover had not seen, wins.
// Elements are JSON values compared by their canonical encoding; a set
// with no element shows a delete.
func Set() Resolver { return set{} }

type set struct{}

func (set) Name() string  { return NameSet }
func (set) OnWrite() bool { return true }

// setState is a set's stored and replicated state.
type setState struct {
	_msgpack struct{} `msgpack:",as_array"`
	Type     string
	V        int
	VV       []dotEntry // sorted by DC
	E        []setElem  // sorted by Elem
}

type setElem struct {
	_msgpack struct{}   `msgpack:",as_array"`
	Elem     []byte     // canonical JSON
	Dots     []dotEntry // sorted by DC, at most one per DC
}

func emptySet() setState { return setState{Type: NameSet, V: typedVersion} }

// decodeSet decodes a set state, normalised whatever a peer sent.
func decodeSet(b []byte) (setState, error) {
	var st setState
	if err := decodeTyped(b, NameSet, &st); err != nil {
		return st, err
	}
	// Normalise: one entry per element, one dot per DC (the newest).
	norm := emptySet()
	norm.VV = vvJoin(nil, st.VV)
	for _, e := range st.E {
		if !json.Valid(e.Elem) {
			return st, fmt.Errorf("%w: an element of %d bytes is not JSON", errNotTyped, len(e.Elem))
		}
		norm.E = addDots(norm.E, e.Elem, e.Dots)
	}
	return norm, nil
}

// addDots joins dots into elem's entry of es (sorted by element).
func addDots(es []setElem, elem []byte, dots []dotEntry) []setElem {
	i, ok := slices.BinarySearchFunc(es, elem, func(x setElem, e []byte) int { return bytes.Compare(x.Elem, e) })
	if !ok {
		es = slices.Insert(es, i, setElem{Elem: elem})
	}
	es[i].Dots = vvJoin(es[i].Dots, dots)
	return es
}

// joinSet is the ORSWOT join: per element, the dots both sides hold plus
// the dots one side holds that the other has not seen; elements left with
// no dot are gone. The version vectors join by max.
func joinSet(a, b setState) setState {
	out := emptySet()
	out.VV = vvJoin(vvJoin(nil, a.VV), b.VV)
	keep := func(dots []dotEntry, other []dotEntry, otherVV []dotEntry) []dotEntry {
		var kept []dotEntry
		for _, d := range dots {
			if slices.ContainsFunc(other, func(o dotEntry) bool { return o.DC == d.DC && o.N == d.N }) || !vvCovers(otherVV, d) {
				kept = append(kept, dotEntry{DC: d.DC, N: d.N})
			}
		}
		return kept
	}
	find := func(es []setElem, elem []byte) []dotEntry {
		i, ok := slices.BinarySearchFunc(es, elem, func(x setElem, e []byte) int { return bytes.Compare(x.Elem, e) })
		if !ok {
			return nil
		}
		return es[i].Dots
	}
	for _, e := range a.E {
		if d := keep(e.Dots, find(b.E, e.Elem), b.VV); len(d) > 0 {
			out.E = addDots(out.E, e.Elem, d)
		}
	}
	for _, e := range b.E {
		if d := keep(e.Dots, find(a.E, e.Elem), a.VV); len(d) > 0 {
			out.E = addDots(out.E, e.Elem, d)
		}
	}
	return out
}

// view is the JSON array of the elements, sorted by canonical encoding.
func (st setState) view() []byte {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, e := range st.E {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(e.Elem)
	}
	buf.WriteByte(']')
	return buf.Bytes()
}

func (set) Resolve(_ string, sibs []dvv.Sibling) Result {
	res, _, _ := typedResolve(sibs, decodeSet, joinSet, func(st setState) ([]byte, bool) { return st.view(), len(st.E) > 0 })
	return res
}

// canonicalElements returns the canonical encodings of elems, each within
// MaxElementBytes.
func canonicalElements(elems [][]byte) ([][]byte, error) {
	out := make([][]byte, 0, len(elems))
	for i, raw := range elems {
		c, err := canonicalJSON(raw)
		if err != nil {
			return nil, badOp("element %d is not a JSON value: %v", i, err)
		}
		if len(c) > MaxElementBytes {
			return nil, badOp("element %d is %d bytes encoded, over the %d-byte element limit", i, len(c), MaxElementBytes)
		}
		out = append(out, c)
	}
	return out, nil
}

func (set) Apply(sibs []dvv.Sibling, op Op, dot vclock.Dot, _ uint64) ([]byte, error) {
	st, err := joinLive(NameSet, sibs, decodeSet, joinSet, emptySet())
	if err != nil {
		return nil, err
	}
	var raw [][]byte
	for _, e := range op.Elements {
		raw = append(raw, e)
	}
	self := []dotEntry{{DC: dot.DC, N: dot.N}}
	add := func(elems [][]byte) {
		for _, c := range elems {
			i, ok := slices.BinarySearchFunc(st.E, c, func(x setElem, e []byte) int { return bytes.Compare(x.Elem, e) })
			if ok {
				st.E[i].Dots = self // the add has seen every dot the element had
				continue
			}
			st.E = slices.Insert(st.E, i, setElem{Elem: c, Dots: self})
		}
	}
	switch op.Kind {
	case OpAdd, OpRemove:
		if len(op.Elements) == 0 {
			return nil, badOp(`%s needs {"elements": [...]} with at least one element`, op.Kind)
		}
		elems, err := canonicalElements(raw)
		if err != nil {
			return nil, err
		}
		if op.Kind == OpAdd {
			add(elems)
			break
		}
		st.E = slices.DeleteFunc(st.E, func(x setElem) bool {
			return slices.ContainsFunc(elems, func(e []byte) bool { return bytes.Equal(e, x.Elem) })
		})
	case OpPut:
		arr, err := parseArray(op.Body)
		if err != nil {
			return nil, err
		}
		elems, err := canonicalElements(arr)
		if err != nil {
			return nil, err
		}
		st.E = nil
		add(elems)
	case OpDelete:
		st.E = nil
	default:
		return nil, badOp("the key is a set: %s does not apply; use POST ?op=add or ?op=remove", op.Kind)
	}
	st.VV = vvAdd(st.VV, dot)
	return encodeTyped(st), nil
}

// parseArray splits a JSON array body into its elements.
func parseArray(body []byte) ([][]byte, error) {
	var arr []json.RawMessage
	if err := json.Unmarshal(body, &arr); err != nil {
		return nil, badOp("a PUT to a set key takes a JSON array of elements: %v", err)
	}
	out := make([][]byte, len(arr))
	for i, e := range arr {
		out[i] = e
	}
	return out, nil
}
