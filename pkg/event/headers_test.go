package event

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

func TestToHeaders(t *testing.T) {
	got := ToHeaders(sample())
	want := map[string][]string{
		"Nats-Msg-Id":  {"blue:7:42"},
		"Repl-Origin":  {"blue"},
		"Repl-Path":    {"blue,green"},
		"Repl-Key":     {"user/123"},
		"Repl-Op":      {"put"},
		"Repl-Dot":     {"blue:42"},
		"Repl-Context": {"{blue:41,green:3}"},
		"Content-Type": {"application/msgpack"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ToHeaders =\n%v\nwant\n%v", got, want)
	}
}

func TestHeadersRoundTrip(t *testing.T) {
	for _, e := range []*Event{
		sample(),
		mod(func(e *Event) { e.Op, e.Value, e.Context, e.Path = OpDelete, nil, nil, []string{"blue"} }),
		mod(func(e *Event) { e.Op = OpResolve; e.Key = "café/a b,c:d" }),
	} {
		info, err := FromHeaders(ToHeaders(e))
		if err != nil {
			t.Fatalf("FromHeaders(ToHeaders(%+v)): %v", e, err)
		}
		if info.MsgID != MsgID(e.Origin, e.Partition, e.Seq) || info.Origin != e.Origin ||
			info.Partition != e.Partition || info.Seq != e.Seq || info.Key != e.Key ||
			info.Op != e.Op || info.Dot != e.Dot || !info.Context.Equal(e.Context) ||
			!reflect.DeepEqual(info.Path, e.Path) {
			t.Fatalf("FromHeaders = %+v, from %+v", info, e)
		}
		if err := info.Check(e); err != nil {
			t.Fatalf("Check: %v", err)
		}
	}
}

func TestFromHeadersRejects(t *testing.T) {
	tests := []struct {
		name    string
		change  func(h map[string][]string)
		wantMsg string
	}{
		{"missing msg id", func(h map[string][]string) { delete(h, HeaderMsgID) }, "Nats-Msg-Id is missing"},
		{"missing origin", func(h map[string][]string) { delete(h, HeaderOrigin) }, "Repl-Origin is missing"},
		{"missing path", func(h map[string][]string) { delete(h, HeaderPath) }, "Repl-Path is missing"},
		{"missing key", func(h map[string][]string) { delete(h, HeaderKey) }, "Repl-Key is missing"},
		{"missing op", func(h map[string][]string) { delete(h, HeaderOp) }, "Repl-Op is missing"},
		{"missing dot", func(h map[string][]string) { delete(h, HeaderDot) }, "Repl-Dot is missing"},
		{"missing context", func(h map[string][]string) { delete(h, HeaderContext) }, "Repl-Context is missing"},
		{"missing content type", func(h map[string][]string) { delete(h, HeaderContentType) }, "Content-Type is missing"},
		{"empty value list", func(h map[string][]string) { h[HeaderKey] = nil }, "Repl-Key is missing"},
		{"key twice", func(h map[string][]string) { h[HeaderKey] = []string{"a", "b"} }, "Repl-Key appears 2 times"},
		{"json content", func(h map[string][]string) { h[HeaderContentType] = []string{"application/json"} }, `Content-Type is "application/json"`},
		{"msg id of two parts", func(h map[string][]string) { h[HeaderMsgID] = []string{"blue:42"} }, "want origin:partition:seq"},
		{"msg id of four parts", func(h map[string][]string) { h[HeaderMsgID] = []string{"blue:7:42:1"} }, "want origin:partition:seq"},
		{"msg id seq 0", func(h map[string][]string) { h[HeaderMsgID] = []string{"blue:7:0"} }, "seq must be a positive integer"},
		{"msg id bad origin", func(h map[string][]string) { h[HeaderMsgID] = []string{"bl.ue:7:42"} }, "invalid dc id"},
		{"msg id partition over 32 bits", func(h map[string][]string) { h[HeaderMsgID] = []string{"blue:4294967296:42"} }, "partition is not a 32-bit"},
		{"origin differs from msg id", func(h map[string][]string) { h[HeaderOrigin] = []string{"green"} }, `Repl-Origin "green" differs`},
		{"dot differs from msg id", func(h map[string][]string) { h[HeaderDot] = []string{"blue:43"} }, "Repl-Dot blue:43 is not"},
		{"dot unparsable", func(h map[string][]string) { h[HeaderDot] = []string{"blue"} }, "Repl-Dot"},
		{"path from elsewhere", func(h map[string][]string) { h[HeaderPath] = []string{"green,blue"} }, "does not start with the origin"},
		{"path with an empty entry", func(h map[string][]string) { h[HeaderPath] = []string{"blue,,green"} }, "Repl-Path entry 1"},
		{"path of 65 DCs", func(h map[string][]string) { h[HeaderPath] = []string{"blue" + strings.Repeat(",x", 64)} }, "names 65 DCs"},
		{"empty key", func(h map[string][]string) { h[HeaderKey] = []string{""} }, "Repl-Key is empty"},
		{"unknown op", func(h map[string][]string) { h[HeaderOp] = []string{"PUT"} }, `op "PUT"`},
		{"bad context", func(h map[string][]string) { h[HeaderContext] = []string{"{blue:x}"} }, "Repl-Context"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := ToHeaders(sample())
			tt.change(hdr)
			_, err := FromHeaders(hdr)
			if !errors.Is(err, ErrHeader) {
				t.Fatalf("FromHeaders = %v, want ErrHeader", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("FromHeaders error %q does not mention %q", err, tt.wantMsg)
			}
		})
	}
}

func TestFromHeadersAnyCase(t *testing.T) {
	hdr := map[string][]string{}
	for k, v := range ToHeaders(sample()) {
		hdr[strings.ToLower(k)] = v
	}
	if _, err := FromHeaders(hdr); err != nil {
		t.Fatalf("FromHeaders with lower-case names: %v", err)
	}
}

// TestCheckDetectsForgery changes the payload after the headers were made
// and expects Check to name the header that disagrees.
func TestCheckDetectsForgery(t *testing.T) {
	tests := []struct {
		name   string
		change func(e *Event)
		header string
	}{
		{"origin", func(e *Event) { e.Origin, e.Dot.DC, e.Path[0] = "red", "red", "red" }, HeaderOrigin},
		{"partition", func(e *Event) { e.Partition++ }, HeaderMsgID},
		{"seq", func(e *Event) { e.Seq++; e.Dot.N++ }, HeaderMsgID},
		{"key", func(e *Event) { e.Key = "admin/1" }, HeaderKey},
		{"op", func(e *Event) { e.Op = OpDelete }, HeaderOp},
		{"context", func(e *Event) { e.Context["red"] = 9 }, HeaderContext},
		{"path", func(e *Event) { e.Path = append(e.Path, "red") }, HeaderPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := FromHeaders(ToHeaders(sample()))
			if err != nil {
				t.Fatal(err)
			}
			e := sample()
			tt.change(e)
			err = info.Check(e)
			if !errors.Is(err, ErrHeaderMismatch) || !strings.Contains(err.Error(), tt.header) {
				t.Fatalf("Check = %v, want ErrHeaderMismatch naming %s", err, tt.header)
			}
		})
	}

	// NATS drops leading blanks from header values; that is not forgery.
	info, _ := FromHeaders(ToHeaders(sample()))
	e := mod(func(e *Event) { e.Key = "  " + e.Key })
	if err := info.Check(e); err != nil {
		t.Fatalf("Check with leading blanks trimmed by NATS: %v", err)
	}
}

func TestMsgID(t *testing.T) {
	tests := []struct {
		origin    string
		partition uint32
		seq       uint64
		want      string
	}{
		{"blue", 0, 1, "blue:0:1"},
		{"dc-east_1", 4294967295, 18446744073709551615, "dc-east_1:4294967295:18446744073709551615"},
	}
	for _, tt := range tests {
		id := MsgID(tt.origin, tt.partition, tt.seq)
		if id != tt.want {
			t.Errorf("MsgID = %q, want %q", id, tt.want)
		}
		o, p, s, err := ParseMsgID(id)
		if err != nil || o != tt.origin || p != tt.partition || s != tt.seq {
			t.Errorf("ParseMsgID(%q) = %q, %d, %d, %v", id, o, p, s, err)
		}
	}
	for _, bad := range []string{"", "blue", "blue:1", "blue:1:2:3", ":1:2", "blue:-1:2", "blue:1:x", "blue:1:0", "blue: 1:2"} {
		if _, _, _, err := ParseMsgID(bad); !errors.Is(err, ErrHeader) {
			t.Errorf("ParseMsgID(%q) = %v, want ErrHeader", bad, err)
		}
	}
}

func TestParseOp(t *testing.T) {
	for _, op := range []Op{OpPut, OpDelete, OpResolve} {
		if got, err := ParseOp(op.String()); err != nil || got != op {
			t.Errorf("ParseOp(%q) = %v, %v", op.String(), got, err)
		}
	}
	if _, err := ParseOp("unknown"); !errors.Is(err, ErrHeader) {
		t.Errorf("ParseOp(unknown) = %v", err)
	}
}

func TestMarshalJSON(t *testing.T) {
	e := mod(func(e *Event) { e.HLC = 1_700_000_000_123<<16 | 4 })
	e.unknown = []rawField{{Key: "x-new", Raw: []byte{0x92, 0x01, 0xc0}}}
	got, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"version":1,"origin":"blue","partition":7,"seq":42,"key":"user/123","op":"put",` +
		`"value":"aGVsbG8=","value_text":"hello","dot":"blue:42","context":{"blue":41,"green":3},` +
		`"hlc":` + jsonNumber(e.HLC) + `,"hlc_time":"2023-11-14T22:13:20.123Z/4","path":["blue","green"],` +
		`"unknown_fields":[{"key":"x-new","msgpack_hex":"9201c0"}]}`
	if string(got) != want {
		t.Fatalf("MarshalJSON =\n%s\nwant\n%s", got, want)
	}

	// A binary value has no value_text; an empty delete shows empty fields.
	bin := mod(func(e *Event) { e.Value = []byte{0xff, 0} })
	del := &Event{Version: 1, Origin: "blue", Seq: 1, Key: "k", Op: OpDelete, Dot: vclock.Dot{DC: "blue", N: 1}}
	for _, tc := range []struct {
		ev   *Event
		want map[string]any
	}{
		{bin, map[string]any{"value": "/wA="}},
		{del, map[string]any{"value": "", "value_text": "", "context": map[string]any{}, "path": []any{}, "op": "delete"}},
	} {
		b, err := json.Marshal(tc.ev)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		for k, v := range tc.want {
			if !reflect.DeepEqual(m[k], v) {
				t.Errorf("%s: %q = %#v, want %#v", b, k, m[k], v)
			}
		}
		if _, ok := tc.want["value_text"]; !ok {
			if _, has := m["value_text"]; has {
				t.Errorf("%s: value_text present for a binary value", b)
			}
		}
		if _, has := m["unknown_fields"]; has {
			t.Errorf("%s: unknown_fields present without unknown fields", b)
		}
	}
}

func jsonNumber(v uint64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestToHeadersValuesIndependent checks that appending to one header's
// values leaves the others alone, although they share a backing array.
func TestToHeadersValuesIndependent(t *testing.T) {
	h := ToHeaders(sample())
	want := map[string]string{}
	for k, v := range h {
		want[k] = v[0]
	}
	h[HeaderOrigin] = append(h[HeaderOrigin], "extra")
	for k, v := range h {
		if v[0] != want[k] {
			t.Errorf("%s is %q after an append to %s, want %q", k, v[0], HeaderOrigin, want[k])
		}
	}
	if len(h[HeaderPath]) != 1 {
		t.Errorf("%s has %d values after an append to %s", HeaderPath, len(h[HeaderPath]), HeaderOrigin)
	}
}

func BenchmarkToHeaders(b *testing.B) {
	e := benchEvent()
	b.ReportAllocs()
	for b.Loop() {
		_ = ToHeaders(e)
	}
}

func BenchmarkFromHeaders(b *testing.B) {
	h := ToHeaders(benchEvent())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := FromHeaders(h); err != nil {
			b.Fatal(err)
		}
	}
}
