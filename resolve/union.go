package resolve

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
)

var _ Resolver = union{}

// Union returns a resolver that shows the set union of array values (Riak
// sets, shopping carts). Each live value is an array, either JSON (its first
// byte after whitespace is '[') or msgpack. The union holds each distinct
// element once, sorted bytewise by its canonical encoding, and is encoded in
// the inputs' format. (Sorting by encoding orders msgpack strings by length
// first, since the length is in their header.)
//
//   - JSON elements are canonical after a decode and re-encode: no
//     insignificant whitespace, object keys sorted, numbers kept as written,
//     no HTML escaping.
//   - msgpack elements are canonical after a decode and re-encode with the
//     most compact integer forms and sorted map keys; an element that does
//     not round-trip (an unknown extension, a map with non-string keys)
//     keeps its original bytes.
//
// A msgpack value nested more than 100 levels deep cannot be merged, which
// bounds the decoder's recursion (encoding/json bounds JSON at 10000). A single live value is shown as written. When the live values cannot be
// merged (one is not a well-formed array, or JSON and msgpack arrays are
// mixed), Union falls back to what Siblings shows: every live value, with a
// conflict flag, so nothing is lost and a person or the next write decides.
// Tombstones are ignored unless every sibling is one. Nothing is discarded.
func Union() Resolver { return union{} }

type union struct{}

func (union) Name() string  { return NameUnion }
func (union) OnWrite() bool { return true }

func (union) Resolve(_ string, sibs []dvv.Sibling) Result {
	live := sorted(sibs, isLive)
	if len(live) == 0 {
		return deleted(sibs)
	}
	if len(live) == 1 {
		return Result{Values: [][]byte{live[0].Value}, Kept: live}
	}
	merged, err := unionValues(values(live))
	if err != nil {
		return showAll(sibs)
	}
	return Result{Values: [][]byte{merged}, Kept: live}
}

type arrayFormat int

const (
	notArray arrayFormat = iota
	jsonArray
	msgpackArray
)

var errCannotMerge = errors.New("resolve: union: values are not arrays of one format")

func formatOf(v []byte) arrayFormat {
	if t := bytes.TrimLeft(v, " \t\r\n"); len(t) > 0 && t[0] == '[' {
		return jsonArray
	}
	if len(v) > 0 && (v[0] >= 0x90 && v[0] <= 0x9f || v[0] == 0xdc || v[0] == 0xdd) {
		return msgpackArray
	}
	return notArray
}

// unionValues merges array values of one format into one array of the
// distinct canonical elements, sorted bytewise.
func unionValues(vals [][]byte) ([]byte, error) {
	format := formatOf(vals[0])
	set := make(map[string]struct{})
	for _, v := range vals {
		if formatOf(v) != format {
			return nil, errCannotMerge
		}
		var err error
		switch format {
		case jsonArray:
			err = jsonElements(v, set)
		case msgpackArray:
			err = msgpackElements(v, set)
		default:
			err = errCannotMerge
		}
		if err != nil {
			return nil, err
		}
	}
	elems := make([]string, 0, len(set))
	for e := range set {
		elems = append(elems, e)
	}
	slices.Sort(elems)

	var buf bytes.Buffer
	if format == jsonArray {
		buf.WriteByte('[')
		for i, e := range elems {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.WriteString(e)
		}
		buf.WriteByte(']')
		return buf.Bytes(), nil
	}
	if err := msgpack.NewEncoder(&buf).EncodeArrayLen(len(elems)); err != nil {
		return nil, err
	}
	for _, e := range elems {
		buf.WriteString(e)
	}
	return buf.Bytes(), nil
}

// jsonElements adds the canonical encoding of each element of the JSON
// array v to set.
func jsonElements(v []byte, set map[string]struct{}) error {
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var arr []any
	if err := dec.Decode(&arr); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errCannotMerge // trailing data after the array
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for _, e := range arr {
		buf.Reset()
		if err := enc.Encode(e); err != nil {
			return err
		}
		set[string(bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}))] = struct{}{}
	}
	return nil
}

// msgpackElements adds the canonical encoding of each element of the
// msgpack array v to set.
func msgpackElements(v []byte, set map[string]struct{}) error {
	if err := msgpackcheck.Check(v); err != nil {
		return err
	}
	r := bytes.NewReader(v)
	dec := msgpack.NewDecoder(r)
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		raw, err := dec.DecodeRaw()
		if err != nil {
			return err
		}
		set[string(canonicalMsgpack(raw))] = struct{}{}
	}
	if r.Len() != 0 {
		return errCannotMerge // trailing data after the array
	}
	return nil
}

// canonicalMsgpack re-encodes one msgpack value with compact integers and
// sorted map keys, or returns raw when the value does not round-trip.
func canonicalMsgpack(raw []byte) []byte {
	x, err := msgpack.NewDecoder(bytes.NewReader(raw)).DecodeInterface()
	if err != nil {
		return raw
	}
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	enc.UseCompactInts(true)
	if err := enc.Encode(x); err != nil {
		return raw
	}
	return buf.Bytes()
}
