package rpc

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"
)

// FuzzDecode checks that a server's Decode never panics on any request,
// that every error it returns is ErrBadRequest, and that a request it
// accepts is of this version.
func FuzzDecode(f *testing.F) {
	for _, v := range []any{req{V: Version, N: 41}, oldReq{N: 41}, req{V: 2}, map[string]any{"v": "x"}} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xdd, 0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte{0xc1})
	f.Fuzz(func(t *testing.T, in []byte) {
		var r req
		err := testProtocol.Decode(in, &r, &r.V)
		switch {
		case err != nil && !errors.Is(err, ErrBadRequest):
			t.Fatalf("Decode error %v is not ErrBadRequest", err)
		case err == nil && r.V != Version:
			t.Fatalf("Decode accepted version %d", r.V)
		}
	})
}

// FuzzReadReply checks that a client's ReadReply never panics on any reply
// body or version header, and that its errors are ErrBadReply.
func FuzzReadReply(f *testing.F) {
	good, err := msgpack.Marshal(rep{Sum: 7})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, "1")
	f.Add(good, "")
	f.Add(good, "2")
	f.Add([]byte{0xdd, 0x7f, 0xff, 0xff, 0xff}, "1")
	f.Fuzz(func(t *testing.T, body []byte, version string) {
		m := nats.NewMsg("reply")
		m.Data = body
		if version != "" {
			m.Header.Set(HeaderVersion, version)
		}
		var r rep
		if err := testProtocol.ReadReply(m, &r); err != nil && !errors.Is(err, ErrBadReply) {
			t.Fatalf("ReadReply error %v is not ErrBadReply", err)
		}
	})
}
