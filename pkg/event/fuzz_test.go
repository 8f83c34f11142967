package event

import (
	"bytes"
	"testing"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// FuzzDecode checks that Decode never panics, that every error wraps one of
// the codec's sentinels, and that whatever it accepts survives a re-encode
// unchanged. Hostile seeds live in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	for _, e := range []*Event{
		sample(),
		mod(func(e *Event) { e.Op, e.Value, e.Context = OpDelete, nil, nil }),
		benchEvent(),
	} {
		f.Add(mustEncode(f, e))
	}
	f.Add(withExtra(f, mustEncode(f, sample()), "x", nested(3)))

	lim := DefaultLimits()
	lim.MaxEventBytes = 64 << 10 // keep the fuzzer's inputs small
	f.Fuzz(func(t *testing.T, in []byte) {
		e, err := Decode(in, lim)
		if err != nil {
			if e != nil {
				t.Fatalf("Decode returned an event and the error %v", err)
			}
			if !isCodecError(err) {
				t.Fatalf("Decode error %v wraps none of the codec sentinels", err)
			}
			return
		}
		if err := e.Validate(lim); err != nil {
			t.Fatalf("Decode accepted an event Validate rejects: %v", err)
		}
		if e.Dot != (vclock.Dot{DC: e.Origin, N: e.Seq}) {
			t.Fatalf("decoded dot %s is not (origin, seq)", e.Dot)
		}
		out, err := e.Encode(nil)
		if err != nil {
			t.Fatalf("re-encode of a decoded event: %v", err)
		}
		again, err := Decode(out, DefaultLimits())
		if err != nil {
			t.Fatalf("decode of the re-encoding: %v\nin  %x\nout %x", err, in, out)
		}
		if d := diff(e, again); d != "" {
			t.Fatalf("re-encoding changed the event: %s\nin  %x\nout %x", d, in, out)
		}
		// The encoder's output is canonical: a second round is byte-identical.
		if out2, _ := again.Encode(nil); !bytes.Equal(out, out2) {
			t.Fatalf("encoding is not a fixed point:\n%x\n%x", out, out2)
		}
		_, _ = e.MarshalJSON()
		_ = ToHeaders(e)
		if info, err := FromHeaders(ToHeaders(e)); err != nil {
			t.Fatalf("FromHeaders(ToHeaders(decoded)): %v", err)
		} else if err := info.Check(e); err != nil {
			t.Fatalf("Check against its own headers: %v", err)
		}
	})
}
