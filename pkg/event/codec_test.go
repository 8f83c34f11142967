package event

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// sample returns a valid put from blue, forwarded through green.
func sample() *Event {
	return &Event{
		Version:   SchemaVersion,
		Origin:    "blue",
		Partition: 7,
		Seq:       42,
		Key:       "user/123",
		Op:        OpPut,
		Value:     []byte("hello"),
		Dot:       vclock.Dot{DC: "blue", N: 42},
		Context:   vclock.VV{"blue": 41, "green": 3},
		HLC:       0x018bd0a3f2000005,
		Path:      []string{"blue", "green"},
	}
}

// mod returns sample() changed by f.
func mod(f func(e *Event)) *Event {
	e := sample()
	f(e)
	return e
}

// diff describes how two events differ, or returns "". Nil and empty
// values, contexts and paths are the same.
func diff(a, b *Event) string {
	var d []string
	add := func(name string, x, y any) { d = append(d, fmt.Sprintf("%s: %v != %v", name, x, y)) }
	if a.Version != b.Version {
		add("version", a.Version, b.Version)
	}
	if a.Origin != b.Origin {
		add("origin", a.Origin, b.Origin)
	}
	if a.Partition != b.Partition {
		add("partition", a.Partition, b.Partition)
	}
	if a.Seq != b.Seq {
		add("seq", a.Seq, b.Seq)
	}
	if a.Key != b.Key {
		add("key", a.Key, b.Key)
	}
	if a.Op != b.Op {
		add("op", a.Op, b.Op)
	}
	if !bytes.Equal(a.Value, b.Value) {
		add("value", a.Value, b.Value)
	}
	if a.Dot != b.Dot {
		add("dot", a.Dot, b.Dot)
	}
	if !a.Context.Equal(b.Context) {
		add("context", a.Context, b.Context)
	}
	if a.HLC != b.HLC {
		add("hlc", a.HLC, b.HLC)
	}
	if len(a.Path)+len(b.Path) > 0 && !reflect.DeepEqual(a.Path, b.Path) {
		add("path", a.Path, b.Path)
	}
	if len(a.unknown)+len(b.unknown) > 0 && !reflect.DeepEqual(a.unknown, b.unknown) {
		add("unknown", a.unknown, b.unknown)
	}
	return strings.Join(d, "; ")
}

func mustEncode(t testing.TB, e *Event) []byte {
	t.Helper()
	b, err := e.Encode(nil)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	return b
}

func dcs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("dc%02d", i)
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	bigCtx := vclock.VV{}
	for i, dc := range dcs(64) {
		bigCtx[dc] = uint64(i+1) * 1_000_003
	}
	longPath := append([]string{"blue"}, dcs(63)...)
	tests := []struct {
		name string
		ev   *Event
	}{
		{"put", sample()},
		{"delete", mod(func(e *Event) { e.Op, e.Value = OpDelete, nil })},
		{"resolve", mod(func(e *Event) { e.Op = OpResolve })},
		{"empty value and context", mod(func(e *Event) { e.Value, e.Context = nil, nil })},
		{"fresh write at origin", mod(func(e *Event) { e.Path = []string{"blue"}; e.Context = vclock.VV{} })},
		{"binary value", mod(func(e *Event) { e.Value = []byte{0, 0xff, 0xc1, 0xdd} })},
		{"value of 64 KiB + 1 (bin32)", mod(func(e *Event) { e.Value = bytes.Repeat([]byte{'x'}, 1<<16+1) })},
		{"value of 300 bytes (bin16)", mod(func(e *Event) { e.Value = bytes.Repeat([]byte{'x'}, 300) })},
		{"key of 31 bytes (fixstr)", mod(func(e *Event) { e.Key = strings.Repeat("k", 31) })},
		{"key of 32 bytes (str8)", mod(func(e *Event) { e.Key = strings.Repeat("k", 32) })},
		{"key of 4096 bytes (str16)", mod(func(e *Event) { e.Key = strings.Repeat("k", 4096) })},
		{"unicode key", mod(func(e *Event) { e.Key = "café/日本/\uFFFD" })},
		{"64-DC context (map16)", mod(func(e *Event) { e.Context = bigCtx })},
		{"64-DC path (array16)", mod(func(e *Event) { e.Path = longPath })},
		{"largest counters", mod(func(e *Event) {
			e.Seq, e.Dot.N = MaxCounter-1, MaxCounter-1
			e.Context = vclock.VV{"green": MaxCounter - 1}
		})},
		{"largest partition and hlc", mod(func(e *Event) { e.Partition, e.HLC = math.MaxUint32, math.MaxUint64 })},
		{"zero hlc and partition", mod(func(e *Event) { e.Partition, e.HLC = 0, 0 })},
		{"expiry (a TTL)", mod(func(e *Event) { e.Expires = e.HLC + 30_000<<16 })},
		{"resolve with an expiry", mod(func(e *Event) { e.Op, e.Expires = OpResolve, e.HLC+1 })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.ev.Validate(DefaultLimits()); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			b := mustEncode(t, tt.ev)
			got, err := Decode(b, DefaultLimits())
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if d := diff(tt.ev, got); d != "" {
				t.Fatalf("round trip changed the event: %s", d)
			}
			if b2 := mustEncode(t, got); !bytes.Equal(b, b2) {
				t.Fatalf("re-encoding differs:\n first %x\nsecond %x", b, b2)
			}
			// The generic msgpack decoder reads it too: the wire form is
			// plain msgpack.
			var m map[string]any
			if err := msgpack.Unmarshal(b, &m); err != nil {
				t.Fatalf("msgpack.Unmarshal: %v", err)
			}
			want := numKnown // less the empty "val" and "c" the encoder leaves out
			if len(tt.ev.Value) == 0 {
				want--
			}
			if !nonZero(tt.ev.Context) {
				want--
			}
			if tt.ev.Expires == 0 {
				want--
			}
			if len(m) != want {
				t.Fatalf("msgpack sees %d fields, want %d", len(m), want)
			}
		})
	}
}

// TestWireForm pins the bytes of one event, so a change to the wire form
// shows up as a diff here.
func TestWireForm(t *testing.T) {
	e := &Event{
		Version: 1, Origin: "b", Partition: 7, Seq: 300, Key: "k", Op: OpPut,
		Value: []byte("hi"), Dot: vclock.Dot{DC: "b", N: 300},
		Context: vclock.VV{"g": 2, "b": 299}, HLC: 1 << 16, Path: []string{"b", "g"},
	}
	want := "8a" + // map of 10
		"a176" + "01" + // "v": 1
		"a16f" + "a162" + // "o": "b"
		"a170" + "07" + // "p": 7
		"a173" + "cd012c" + // "s": 300
		"a16b" + "a16b" + // "k": "k"
		"a26f70" + "01" + // "op": 1
		"a376616c" + "c4026869" + // "val": bin "hi"
		"a163" + "82" + "a162" + "cd012b" + "a167" + "02" + // "c": {b:299, g:2}
		"a168" + "ce00010000" + // "h": 65536
		"a470617468" + "92" + "a162" + "a167" // "path": ["b","g"]
	if got := hex.EncodeToString(mustEncode(t, e)); got != want {
		t.Fatalf("wire form\n got %s\nwant %s", got, want)
	}
}

// TestWireFormOmitsEmpty pins a delete of a new key: no "val" and no "c".
// The form with both written out, as builds before the omission wrote it,
// still decodes to the same event and re-encodes to the short form.
func TestWireFormOmitsEmpty(t *testing.T) {
	e := &Event{
		Version: 1, Origin: "b", Partition: 7, Seq: 300, Key: "k", Op: OpDelete,
		Dot: vclock.Dot{DC: "b", N: 300}, Context: vclock.VV{"g": 0}, HLC: 1 << 16, Path: []string{"b"},
	}
	short := "88" + // map of 8
		"a176" + "01" + "a16f" + "a162" + "a170" + "07" + "a173" + "cd012c" + "a16b" + "a16b" + "a26f70" + "02" +
		"a168" + "ce00010000" + "a470617468" + "91" + "a162"
	if got := hex.EncodeToString(mustEncode(t, e)); got != short {
		t.Fatalf("wire form\n got %s\nwant %s", got, short)
	}
	long := "8a" + // map of 10, with "val": bin "" and "c": {}
		"a176" + "01" + "a16f" + "a162" + "a170" + "07" + "a173" + "cd012c" + "a16b" + "a16b" + "a26f70" + "02" +
		"a376616c" + "c400" + "a163" + "80" +
		"a168" + "ce00010000" + "a470617468" + "91" + "a162"
	b, _ := hex.DecodeString(long)
	got, err := Decode(b, DefaultLimits())
	if err != nil {
		t.Fatalf("Decode of the long form: %v", err)
	}
	if d := diff(e, got); d != "" {
		t.Fatalf("the long form decodes differently: %s", d)
	}
	if again := hex.EncodeToString(mustEncode(t, got)); again != short {
		t.Fatalf("the long form re-encodes to %s, want %s", again, short)
	}
}

func TestEncodeIsDeterministic(t *testing.T) {
	ids := dcs(20)
	var first []byte
	for round := range 50 {
		ctx := vclock.VV{}
		for i := range ids {
			j := (i*7 + round) % len(ids) // a different insertion order each round
			ctx[ids[j]] = uint64(j + 1)
		}
		ctx["zero"] = 0 // zero entries are left out
		e := mod(func(e *Event) { e.Context = ctx })
		b := mustEncode(t, e)
		if first == nil {
			first = b
		} else if !bytes.Equal(first, b) {
			t.Fatalf("round %d encoded differently:\n%x\n%x", round, first, b)
		}
	}
}

// TestContextMatchesVclock checks that the codec writes a context exactly as
// vclock.VV's own msgpack encoder does.
func TestContextMatchesVclock(t *testing.T) {
	// A nil context is the one difference: vclock writes msgpack nil, the
	// codec an empty map, so nil and empty contexts encode alike.
	if got := appendVV(nil, nil); !bytes.Equal(got, []byte{0x80}) {
		t.Errorf("appendVV(nil) = %x, want the empty map 80", got)
	}
	for _, vv := range []vclock.VV{
		{}, {"a": 1}, {"b": 2, "a": 1, "z": 0},
		{"blue": 127, "green": 128, "red": 256, "x": 1 << 16, "y": 1 << 32, "w": MaxCounter - 1},
		func() vclock.VV {
			v := vclock.VV{}
			for i, dc := range dcs(40) {
				v[dc+strings.Repeat("x", 30)] = uint64(i + 1)
			}
			return v
		}(),
	} {
		want, err := msgpack.Marshal(vv)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendVV(nil, vv); !bytes.Equal(got, want) {
			t.Errorf("appendVV(%v)\n got %x\nwant %x", vv, got, want)
		}
	}
}

// withExtra appends an unknown field to an encoded event whose map has
// fewer than 15 fields (a fixmap).
func withExtra(t testing.TB, b []byte, key string, raw []byte) []byte {
	t.Helper()
	if b[0]&0xf0 != 0x80 || b[0] == 0x8f {
		t.Fatalf("withExtra needs a fixmap of under 15 fields, got 0x%02x", b[0])
	}
	out := append([]byte{b[0] + 1}, b[1:]...)
	out = appendStr(out, key)
	return append(out, raw...)
}

func TestUnknownFieldsPassThrough(t *testing.T) {
	raw, err := msgpack.Marshal(map[string]any{"ttl": 30, "tags": []any{"a", 1.5, nil, true}})
	if err != nil {
		t.Fatal(err)
	}
	in := withExtra(t, mustEncode(t, sample()), "x-new", raw)

	e, err := Decode(in, DefaultLimits())
	if err != nil {
		t.Fatalf("Decode with an unknown field: %v", err)
	}
	if len(e.unknown) != 1 || e.unknown[0].Key != "x-new" || !bytes.Equal(e.unknown[0].Raw, raw) {
		t.Fatalf("unknown fields = %+v, want x-new with the raw value", e.unknown)
	}
	out := mustEncode(t, e)
	if !bytes.Equal(in, out) {
		t.Fatalf("re-encoding changed the bytes:\n in %x\nout %x", in, out)
	}

	// Forwarding appends to the path and keeps the field verbatim.
	e.Path = append(e.Path, "red")
	fwd, err := Decode(mustEncode(t, e), DefaultLimits())
	if err != nil {
		t.Fatalf("Decode forwarded: %v", err)
	}
	if len(fwd.unknown) != 1 || !bytes.Equal(fwd.unknown[0].Raw, raw) {
		t.Fatalf("forwarded unknown fields = %+v", fwd.unknown)
	}

	// An unknown field before the known ones moves after them, unchanged.
	plain := mustEncode(t, sample())
	front := appendMapLen(nil, int(plain[0]&0x0f)+1) // the sample's fields (a fixmap) and one more
	front = appendStr(front, "aaa")
	front = append(front, raw...)
	front = append(front, plain[1:]...)
	e2, err := Decode(front, DefaultLimits())
	if err != nil {
		t.Fatalf("Decode with a leading unknown field: %v", err)
	}
	if len(e2.unknown) != 1 || !bytes.Equal(e2.unknown[0].Raw, raw) {
		t.Fatalf("unknown fields = %+v", e2.unknown)
	}
	if !bytes.HasSuffix(mustEncode(t, e2), append(appendStr(nil, "aaa"), raw...)) {
		t.Fatalf("re-encoding does not end with the unknown field")
	}
}

// TestExpiryLeavesOldEventsAlone: an event without a TTL encodes to the
// bytes it had before the expiry field existed (the golden form below, a
// v1 event of a build without TTLs), and one with a TTL adds only "exp"
// after "path", which a build without TTLs keeps as an unknown field.
func TestExpiryLeavesOldEventsAlone(t *testing.T) {
	e := sample()
	plain := mustEncode(t, e)
	old := appendMapLen(nil, 10)
	for _, kv := range []struct {
		k string
		v func([]byte) []byte
	}{
		{"v", func(b []byte) []byte { return appendUint(b, 1) }},
		{"o", func(b []byte) []byte { return appendStr(b, e.Origin) }},
		{"p", func(b []byte) []byte { return appendUint(b, uint64(e.Partition)) }},
		{"s", func(b []byte) []byte { return appendUint(b, e.Seq) }},
		{"k", func(b []byte) []byte { return appendStr(b, e.Key) }},
		{"op", func(b []byte) []byte { return appendUint(b, uint64(e.Op)) }},
		{"val", func(b []byte) []byte { return appendBin(b, e.Value) }},
		{"c", func(b []byte) []byte { return appendVV(b, e.Context) }},
		{"h", func(b []byte) []byte { return appendUint(b, e.HLC) }},
		{"path", func(b []byte) []byte {
			b = appendArrayLen(b, len(e.Path))
			for _, dc := range e.Path {
				b = appendStr(b, dc)
			}
			return b
		}},
	} {
		old = kv.v(appendStr(old, kv.k))
	}
	if !bytes.Equal(plain, old) {
		t.Fatalf("an event without a TTL encodes differently from v1 before TTLs:\n got %x\nwant %x", plain, old)
	}
	e.Expires = e.HLC + 1000<<16
	withTTL := mustEncode(t, e)
	want := append(appendMapLen(nil, 11), old[1:]...)
	want = appendUint(appendStr(want, "exp"), e.Expires)
	if !bytes.Equal(withTTL, want) {
		t.Fatalf("an event with a TTL:\n got %x\nwant %x", withTTL, want)
	}
	for _, bad := range []struct {
		name string
		mod  func(*Event)
		msg  string
	}{
		{"delete with expiry", func(e *Event) { e.Op, e.Value = OpDelete, nil }, "a delete carries an expiry"},
		{"expiry at the HLC", func(e *Event) { e.Expires = e.HLC }, "is not after the event's HLC"},
	} {
		ev := sample()
		ev.Expires = ev.HLC + 5
		bad.mod(ev)
		if err := ev.Validate(DefaultLimits()); err == nil || !strings.Contains(err.Error(), bad.msg) {
			t.Errorf("%s: Validate = %v, want %q", bad.name, err, bad.msg)
		}
	}
}

func TestDecodeDoesNotAliasInput(t *testing.T) {
	in := withExtra(t, mustEncode(t, sample()), "x", []byte{0xa1, 'z'})
	e, err := Decode(in, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		in[i] = 0
	}
	want := sample()
	want.unknown = []rawField{{Key: "x", Raw: []byte{0xa1, 'z'}}}
	if d := diff(want, e); d != "" {
		t.Fatalf("event changed with its input buffer: %s", d)
	}
}

// field is one map entry of a hand-built wire event.
type field struct {
	key string
	raw []byte
}

// fields returns sample()'s wire fields in order.
func fields() []field {
	e := sample()
	return []field{
		{"v", u(1)}, {"o", s(e.Origin)}, {"p", u(uint64(e.Partition))}, {"s", u(e.Seq)},
		{"k", s(e.Key)}, {"op", u(uint64(e.Op))}, {"val", appendBin(nil, e.Value)},
		{"c", appendVV(nil, e.Context)}, {"h", u(e.HLC)}, {"path", arr(s("blue"), s("green"))},
	}
}

func wire(fs []field) []byte {
	b := appendMapLen(nil, len(fs))
	for _, f := range fs {
		b = appendStr(b, f.key)
		b = append(b, f.raw...)
	}
	return b
}

// set replaces (or appends) key's raw value.
func set(key string, raw []byte) []byte {
	fs := fields()
	for i := range fs {
		if fs[i].key == key {
			fs[i].raw = raw
			return wire(fs)
		}
	}
	return wire(append(fs, field{key, raw}))
}

func without(key string) []byte {
	var out []field
	for _, f := range fields() {
		if f.key != key {
			out = append(out, f)
		}
	}
	return wire(out)
}

func u(v uint64) []byte { return appendUint(nil, v) }
func s(v string) []byte { return appendStr(nil, v) }
func h(x string) []byte { b, _ := hex.DecodeString(x); return b }
func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func arr(elems ...[]byte) []byte {
	return cat(append([][]byte{appendArrayLen(nil, len(elems))}, elems...)...)
}

func strs(ids []string) []byte {
	var es [][]byte
	for _, id := range ids {
		es = append(es, s(id))
	}
	return arr(es...)
}

func ctxOf(pairs ...any) []byte {
	b := appendMapLen(nil, len(pairs)/2)
	for i := 0; i < len(pairs); i += 2 {
		b = appendStr(b, pairs[i].(string))
		b = appendUint(b, pairs[i+1].(uint64))
	}
	return b
}

// nested returns depth arrays nested in each other around a nil.
func nested(depth int) []byte {
	return append(bytes.Repeat([]byte{0x91}, depth), 0xc0)
}

func TestDecodeRejects(t *testing.T) {
	valid := mustEncode(t, sample())
	small := Limits{MaxEventBytes: 100}
	tests := []struct {
		name    string
		in      []byte
		lim     Limits
		want    error
		wantMsg string
	}{
		// Size and framing.
		{"empty input", nil, Limits{}, ErrMalformed, "empty input"},
		{"over MaxEventBytes", mustEncode(t, mod(func(e *Event) { e.Value = make([]byte, 200) })), small, ErrTooLarge, "over the 100-byte limit"},
		{"over the default 1 MiB", make([]byte, 1<<20+1), Limits{}, ErrTooLarge, "1048577 bytes"},
		{"nil instead of a map", h("c0"), Limits{}, ErrMalformed, "want a map, got nil"},
		{"an array instead of a map", h("91c0"), Limits{}, ErrMalformed, "want a map"},
		{"array32 of 4G elements", h("ddffffffff"), Limits{}, ErrMalformed, "want a map"},
		{"map32 of 4G entries", h("dfffffffff"), Limits{}, ErrMalformed, "claims 4294967295 elements"},
		{"map16 longer than the input", h("deffff"), Limits{}, ErrMalformed, "claims 65535 elements"},
		{"trailing bytes", append(bytes.Clone(valid), 0xc0), Limits{}, ErrMalformed, "1 bytes after the end"},
		{"two events back to back", append(bytes.Clone(valid), valid...), Limits{}, ErrMalformed, "after the end of the event"},
		{"truncated", valid[:len(valid)-1], Limits{}, ErrMalformed, "only 4 left"},
		{"byte 0xc1", cat(h("81"), s("x"), h("c1")), Limits{}, ErrMalformed, "0xc1"},

		// Fields: presence and types.
		{"duplicate key field", wire(append(fields(), field{"k", s("other")})), Limits{}, ErrMalformed, `field "k" appears twice`},
		{"duplicate unknown field", wire(append(fields(), field{"x", u(1)}, field{"x", u(1)})), Limits{}, ErrMalformed, `field "x" appears twice`},
		{"missing origin", without("o"), Limits{}, ErrMalformed, `required field "o" is missing`},
		{"missing version", without("v"), Limits{}, ErrMalformed, `required field "v" is missing`},
		{"missing path", without("path"), Limits{}, ErrMalformed, `required field "path" is missing`},
		{"field name not a string", cat(h("81"), u(1), u(1)), Limits{}, ErrMalformed, "field name: want a string"},
		{"field name too long", set(strings.Repeat("f", 65), u(1)), Limits{}, ErrLimit, "field name is 65 bytes"},
		{"key as binary", set("k", appendBin(nil, []byte("k"))), Limits{}, ErrMalformed, `"k" (key): want a string`},
		{"value as a string", set("val", s("hello")), Limits{}, ErrMalformed, `"val" (value): want binary`},
		{"version as a string", set("v", s("1")), Limits{}, ErrMalformed, `"v" (version): want an unsigned integer`},
		{"seq as a float", set("s", h("cb3ff0000000000000")), Limits{}, ErrMalformed, "want an unsigned integer"},
		{"negative fixint seq", set("s", h("ff")), Limits{}, ErrMalformed, "negative integer"},
		{"negative int64 seq", set("s", h("d3ffffffffffffffff")), Limits{}, ErrMalformed, "negative integer"},
		{"path as a string", set("path", s("blue")), Limits{}, ErrMalformed, "want an array"},
		{"context as an array", set("c", arr()), Limits{}, ErrMalformed, "want a map"},

		// Version.
		{"version 2", set("v", u(2)), Limits{}, ErrUnknownVersion, "version 2, this build reads 1"},
		{"version 0", set("v", u(0)), Limits{}, ErrUnknownVersion, "version 0"},

		// Limits and hostile lengths.
		{"key of 4097 bytes", set("k", s(strings.Repeat("k", 4097))), Limits{}, ErrLimit, `"k" (key) is 4097 bytes, over the 4096-byte limit`},
		{"key str32 of 4G bytes", set("k", h("dbffffffff")), Limits{}, ErrLimit, "4294967295 bytes"},
		{"key str16 past the end", set("k", h("da0fff61")), Limits{MaxKeyBytes: 1 << 15}, ErrMalformed, "length header says 4095 bytes"},
		{"value over MaxValueBytes", set("val", appendBin(nil, make([]byte, 11))), Limits{MaxValueBytes: 10}, ErrLimit, `"val" (value) is 11 bytes`},
		{"value bin32 of 4G bytes", set("val", h("c6ffffffff")), Limits{}, ErrLimit, "4294967295 bytes"},
		{"value bin32 past the end", set("val", h("c600001000")), Limits{}, ErrMalformed, "length header says 4096 bytes"},
		{"context of 65 DCs", set("c", func() []byte {
			var p []any
			for _, dc := range dcs(65) {
				p = append(p, dc, uint64(1))
			}
			return ctxOf(p...)
		}()), Limits{}, ErrLimit, "context has 65 entries, over the 64-DC limit"},
		{"context of 3 DCs with MaxDCs 2", set("c", ctxOf("a", uint64(1), "b", uint64(1), "c", uint64(1))), Limits{MaxDCs: 2}, ErrLimit, "over the 2-DC limit"},
		{"context map32 of 4G entries", set("c", h("dfffffffff")), Limits{}, ErrMalformed, "claims 4294967295 elements"},
		{"path of 65 DCs", set("path", strs(append([]string{"blue"}, dcs(64)...))), Limits{}, ErrLimit, "path has 65 DCs"},
		{"path array32 of 4G elements", set("path", h("ddffffffff")), Limits{}, ErrMalformed, "claims 4294967295 elements"},
		{"unknown array32 of 4G elements", set("x", h("ddffffffff")), Limits{}, ErrMalformed, "claims 4294967295 elements"},
		{"unknown map32 of 4G entries", set("x", h("dfffffffff")), Limits{}, ErrMalformed, "claims 4294967295 elements"},
		{"unknown str32 of 4G bytes", set("x", h("dbffffffff")), Limits{}, ErrMalformed, "length header says 4294967295 bytes"},
		{"unknown ext32 of 4G bytes", set("x", h("c9ffffffff01")), Limits{}, ErrMalformed, "length header says"},
		{"unknown nested 9 deep", set("x", nested(9)), Limits{}, ErrLimit, "nests deeper than 8 levels"},
		{"unknown nested 3 deep, MaxDepth 2", set("x", nested(3)), Limits{MaxDepth: 2}, ErrLimit, "deeper than 2"},
		{"unknown nested 100000 deep", set("x", nested(100000)), Limits{}, ErrLimit, "nests deeper"},
		{"17 unknown fields", wire(append(fields(), func() []field {
			var fs []field
			for i := range 17 {
				fs = append(fs, field{fmt.Sprintf("x%d", i), u(1)})
			}
			return fs
		}()...)), Limits{}, ErrLimit, "more than 16 unknown fields"},

		// Content.
		{"empty key", set("k", s("")), Limits{}, ErrInvalid, "empty key"},
		{"key with a newline", set("k", s("a\r\nNats-Msg-Id: x")), Limits{}, ErrInvalid, "control character"},
		{"key not UTF-8", set("k", s("a\xffb")), Limits{}, ErrInvalid, "not valid UTF-8"},
		{"origin with a dot", set("o", s("blue.x")), Limits{}, vclock.ErrBadID, "origin"},
		{"origin empty", set("o", s("")), Limits{}, ErrInvalid, "origin"},
		{"origin of 65 bytes", set("o", s(strings.Repeat("b", 65))), Limits{}, ErrLimit, "65 bytes, over the 64-byte limit"},
		{"path entry with a space", set("path", strs([]string{"blue", "gr een"})), Limits{}, vclock.ErrBadID, "path[1]"},
		{"context dc with a star", set("c", ctxOf("*", uint64(1))), Limits{}, vclock.ErrBadID, "context"},
		{"op 0", set("op", u(0)), Limits{}, ErrInvalid, "op 0"},
		{"op 4", set("op", u(4)), Limits{}, ErrInvalid, "op 4"},
		{"op 257 (1 mod 256)", set("op", u(257)), Limits{}, ErrInvalid, "op 257"},
		{"seq 0", set("s", u(0)), Limits{}, ErrInvalid, "seq is 0"},
		{"seq 2^62", set("s", u(MaxCounter)), Limits{}, ErrInvalid, "absurd"},
		{"context counter 2^63", set("c", ctxOf("green", uint64(1)<<63)), Limits{}, ErrInvalid, "context counter green:9223372036854775808 is absurd"},
		{"context counter 2^62", set("c", ctxOf("green", uint64(MaxCounter))), Limits{}, ErrInvalid, "absurd"},
		{"context counter max uint64", set("c", ctxOf("green", uint64(math.MaxUint64))), Limits{}, ErrInvalid, "absurd"},
		{"context counter 0", set("c", ctxOf("green", uint64(0))), Limits{}, ErrMalformed, "is 0"},
		{"context dc twice", set("c", ctxOf("green", uint64(1), "green", uint64(2))), Limits{}, ErrMalformed, "twice"},
		{"partition over 32 bits", set("p", u(1<<32)), Limits{}, ErrInvalid, "does not fit 32 bits"},
		{"path not starting with origin", set("path", strs([]string{"green", "blue"})), Limits{}, ErrInvalid, `path starts with "green", not the origin "blue"`},
		{"empty path", set("path", arr()), Limits{}, ErrInvalid, "path is empty"},
		{"nil path", set("path", h("c0")), Limits{}, ErrInvalid, "path is nil"},
		{"path with a loop", set("path", strs([]string{"blue", "green", "blue"})), Limits{}, ErrInvalid, `names "blue" twice`},
		{"delete with a value", set("op", u(uint64(OpDelete))), Limits{}, ErrInvalid, "delete carries a 5-byte value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Decode(tt.in, tt.lim)
			if err == nil {
				t.Fatalf("Decode accepted it: %+v", e)
			}
			if e != nil {
				t.Errorf("Decode returned an event with its error")
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode error = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Decode error = %q, want it to mention %q", err, tt.wantMsg)
			}
			if !isCodecError(err) {
				t.Fatalf("Decode error %v wraps none of the codec sentinels", err)
			}
		})
	}
}

// isCodecError reports whether err wraps one of Decode's sentinels.
func isCodecError(err error) bool {
	for _, s := range []error{ErrTooLarge, ErrMalformed, ErrUnknownVersion, ErrLimit, ErrInvalid} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func TestDecodeAcceptsLenientForms(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
	}{
		{"fields in another order", func() []byte {
			fs := fields()
			for i, j := 0, len(fs)-1; i < j; i, j = i+1, j-1 {
				fs[i], fs[j] = fs[j], fs[i]
			}
			return wire(fs)
		}()},
		{"seq as int64", set("s", h("d3000000000000002a"))},
		{"seq as uint64", set("s", h("cf000000000000002a"))},
		{"seq as int8", set("s", h("d02a"))},
		{"unknown nested 8 deep", set("x", nested(8))},
		{"unknown scalars of every kind", wire(append(fields(),
			field{"f32", h("ca3fc00000")}, field{"f64", h("cb3ff8000000000000")},
			field{"neg", h("e0")}, field{"i16", h("d1ff00")}, field{"t", h("c3")},
			field{"fixext4", h("d6ff00000001")}, field{"ext8", h("c70201abcd")},
			field{"bin", h("c403010203")}, field{"str8", h("d90161")},
			field{"map", h("81a161c0")}, field{"arr16", h("dc0002c0c0")},
		))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Decode(tt.in, DefaultLimits())
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			want := sample()
			want.unknown = e.unknown
			if d := diff(want, e); d != "" {
				t.Fatalf("decoded event differs: %s", d)
			}
		})
	}
	// nil value and context, and their absence, mean empty.
	for _, in := range [][]byte{set("val", h("c0")), without("val")} {
		e, err := Decode(in, DefaultLimits())
		if err != nil || e.Value != nil {
			t.Fatalf("Decode of a nil/absent value = %v, %v", e, err)
		}
	}
	for _, in := range [][]byte{set("c", h("c0")), without("c")} {
		e, err := Decode(in, DefaultLimits())
		if err != nil || len(e.Context) != 0 {
			t.Fatalf("Decode of a nil/absent context = %v, %v", e, err)
		}
	}
}

func TestEveryTruncationIsRejected(t *testing.T) {
	in := withExtra(t, mustEncode(t, sample()), "x", nested(3))
	for n := range len(in) {
		_, err := Decode(in[:n], DefaultLimits())
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("Decode of the first %d of %d bytes = %v, want ErrMalformed", n, len(in), err)
		}
	}
}

func TestValidateForSenders(t *testing.T) {
	tests := []struct {
		name string
		ev   *Event
		want error // nil: valid
	}{
		{"valid", sample(), nil},
		{"zero counters are ignored", mod(func(e *Event) { e.Context["red"] = 0 }), nil},
		{"dot not (origin, seq)", mod(func(e *Event) { e.Dot.N = 41 }), ErrInvalid},
		{"dot from another dc", mod(func(e *Event) { e.Dot.DC = "green" }), ErrInvalid},
		{"zero dot", mod(func(e *Event) { e.Dot = vclock.Dot{} }), ErrInvalid},
		{"version 0", mod(func(e *Event) { e.Version = 0 }), ErrUnknownVersion},
		{"op 9", mod(func(e *Event) { e.Op = 9 }), ErrInvalid},
		{"value over limit", mod(func(e *Event) { e.Value = make([]byte, 1<<20) }), ErrLimit},
		{"65 path entries", mod(func(e *Event) { e.Path = append([]string{"blue"}, dcs(64)...) }), ErrLimit},
		{"context bad dc", mod(func(e *Event) { e.Context["a b"] = 1 }), vclock.ErrBadID},
		{"key with a tab", mod(func(e *Event) { e.Key = "a\tb" }), ErrInvalid},
		{"key with DEL", mod(func(e *Event) { e.Key = "a\x7f" }), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ev.Validate(DefaultLimits())
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Validate = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestEncodeChecksWireInvariants(t *testing.T) {
	for _, e := range []*Event{
		mod(func(e *Event) { e.Dot.N++ }),
		mod(func(e *Event) { e.Version = 2 }),
	} {
		if b, err := e.Encode([]byte("prefix")); err == nil || string(b) != "prefix" {
			t.Errorf("Encode(%+v) = %q, %v; want an error and dst unchanged", e, b, err)
		}
	}
}

func TestEncodeAppends(t *testing.T) {
	buf := make([]byte, 3, 512)
	copy(buf, "abc")
	out, err := sample().Encode(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(out[:3]) != "abc" || !bytes.Equal(out[3:], mustEncode(t, sample())) {
		t.Fatalf("Encode did not append to dst")
	}
	var e Event
	if err := e.UnmarshalBinary(out[3:]); err != nil {
		t.Fatalf("UnmarshalBinary: %v", err)
	}
	if d := diff(sample(), &e); d != "" {
		t.Fatalf("UnmarshalBinary: %s", d)
	}
}

// TestLargestValidEventFits checks that an event at every default limit
// encodes under MaxEventBytes, and with its headers under NATS's default
// 1 MiB max_payload.
func TestLargestValidEventFits(t *testing.T) {
	lim := DefaultLimits()
	long := func(i int) string { return fmt.Sprintf("%02d", i) + strings.Repeat("d", 62) }
	e := &Event{
		Version: 1, Origin: long(0), Partition: math.MaxUint32, Seq: MaxCounter - 1,
		Key: strings.Repeat("k", lim.MaxKeyBytes), Op: OpPut, Value: make([]byte, lim.MaxValueBytes),
		Context: vclock.VV{}, HLC: math.MaxUint64,
	}
	e.Dot = vclock.Dot{DC: e.Origin, N: e.Seq}
	for i := range lim.MaxDCs {
		e.Context[long(i)] = MaxCounter - 1
		e.Path = append(e.Path, long(i))
	}
	if err := e.Validate(lim); err != nil {
		t.Fatal(err)
	}
	b := mustEncode(t, e)
	if len(b) > lim.MaxEventBytes {
		t.Fatalf("largest valid event is %d bytes, over MaxEventBytes %d", len(b), lim.MaxEventBytes)
	}
	hdr := 0
	for k, vs := range ToHeaders(e) {
		for _, v := range vs {
			hdr += len(k) + len(v) + 4
		}
	}
	if total := len(b) + hdr + 16; total > 1<<20 {
		t.Fatalf("payload %d + headers %d bytes is over NATS's 1 MiB max_payload", len(b), hdr)
	}
	if _, err := Decode(b, lim); err != nil {
		t.Fatalf("Decode: %v", err)
	}
}

// TestHostileInputAllocatesLittle checks that length headers do not drive
// allocation.
func TestHostileInputAllocatesLittle(t *testing.T) {
	for _, in := range [][]byte{
		h("dfffffffff"), h("ddffffffff"),
		set("x", h("ddffffffff")), set("val", h("c6ffffffff")), set("k", h("dbffffffff")),
		set("c", h("dfffffffff")), set("path", h("ddffffffff")), set("x", nested(10000)),
	} {
		allocs := testing.AllocsPerRun(20, func() { _, _ = Decode(in, DefaultLimits()) })
		if allocs > 40 {
			t.Errorf("Decode(%.20x...) made %.0f allocations", in, allocs)
		}
	}
}

func benchEvent() *Event {
	return &Event{
		Version: 1, Origin: "blue", Partition: 12, Seq: 1_234_567, Key: "orders/2024/000123",
		Op: OpPut, Value: bytes.Repeat([]byte("v"), 100), Dot: vclock.Dot{DC: "blue", N: 1_234_567},
		Context: vclock.VV{"blue": 1_234_500, "green": 998_877, "red": 55_001},
		HLC:     0x018bd0a3f2000005, Path: []string{"blue"},
	}
}

func BenchmarkEncode(b *testing.B) {
	e := benchEvent()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = e.Encode(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkDecode(b *testing.B) {
	in := mustEncode(b, benchEvent())
	lim := DefaultLimits()
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(in, lim); err != nil {
			b.Fatal(err)
		}
	}
}
