package rpc

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// connect starts an embedded NATS server and connects to it.
func connect(t *testing.T) *nats.Conn {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() })
	return nc
}

var testProtocol = Protocol{Name: "test", ErrorHeader: "Repl-Test-Error"}

// req is a request of the current version; oldReq is the same request as
// a sidecar that predates the version field sends it.
type req struct {
	V int    `msgpack:"v,omitempty"`
	N uint64 `msgpack:"n"`
}

type oldReq struct {
	N uint64 `msgpack:"n"`
}

type rep struct {
	Sum uint64 `msgpack:"sum"`
}

// serve answers testProtocol on subject "test" as a server of this
// version does.
func serve(t *testing.T, nc *nats.Conn) {
	t.Helper()
	sub, err := nc.Subscribe("test", func(m *nats.Msg) {
		var r req
		if err := testProtocol.Decode(m.Data, &r, &r.V); err != nil {
			testProtocol.Respond(m, nil, err)
			return
		}
		b, err := msgpack.Marshal(rep{Sum: r.N + 1})
		testProtocol.Respond(m, b, err)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
}

// TestRequests: a server takes requests of its version and requests
// without a version (older sidecars), and refuses every other version and
// every malformed payload with a clear error in the error header, without
// panicking (invariant 9 in docs/DESIGN.md: bad input is contained).
func TestRequests(t *testing.T) {
	nc := connect(t)
	serve(t, nc)
	enc := func(v any) []byte {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string // "" is a good reply
	}{
		{"current version", enc(req{V: Version, N: 41}), ""},
		{"no version: an older sidecar", enc(oldReq{N: 41}), ""},
		{"a newer version", enc(req{V: Version + 1, N: 41}), "protocol version 2; this DC speaks 1: upgrade"},
		{"version 0", enc(map[string]any{"v": 0, "n": 41}), "protocol version 0"},
		{"not msgpack", []byte{0xc1}, "not a msgpack test request"},
		{"an array of 2^31 items in 5 bytes", []byte{0xdd, 0x7f, 0xff, 0xff, 0xff}, msgpackcheck.ErrShort.Error()},
		{"nested too deeply", []byte(strings.Repeat("\x91", msgpackcheck.MaxNesting+1) + "\x01"), msgpackcheck.ErrDeep.Error()},
		{"a string where the version goes", enc(map[string]any{"v": "one", "n": 41}), "not a msgpack test request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := nc.Request("test", tc.data, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if v := m.Header.Get(HeaderVersion); v != "1" {
				t.Errorf("reply header %s = %q, want 1", HeaderVersion, v)
			}
			var r rep
			err = testProtocol.ReadReply(m, &r)
			var refused *Refused
			switch {
			case tc.want == "" && (err != nil || r.Sum != 42):
				t.Errorf("reply %+v, %v; want sum 42", r, err)
			case tc.want != "" && (!errors.As(err, &refused) || !strings.Contains(refused.Msg, tc.want)):
				t.Errorf("reply error %v; want a refusal saying %q", err, tc.want)
			}
		})
	}
}

// TestReplies: a client takes a reply of its version or without one (an
// older sidecar's), and refuses a reply of another version, or whose
// payload is malformed, with an error wrapping ErrBadReply that says why.
func TestReplies(t *testing.T) {
	nc := connect(t)
	good, _ := msgpack.Marshal(rep{Sum: 7})
	for _, tc := range []struct {
		name    string
		version string // the reply's HeaderVersion; "" sends none
		data    []byte
		refusal string
		want    string // "" is a good reply
	}{
		{"current version", "1", good, "", ""},
		{"no version header: an older sidecar", "", good, "", ""},
		{"a newer version", "2", good, "", "test reply of protocol version 2; this DC speaks 1: upgrade"},
		{"a version that is not a number", "v1", good, "", `header Repl-Version "v1" is not a version`},
		{"malformed payload", "1", []byte{0xc1}, "", msgpackcheck.ErrCode.Error()},
		{"an array of 2^31 items in 5 bytes", "1", []byte{0xdd, 0x7f, 0xff, 0xff, 0xff}, "", msgpackcheck.ErrShort.Error()},
		{"trailing bytes", "1", append(append([]byte{}, good...), 0x01), "", msgpackcheck.ErrTrailer.Error()},
		{"a refusal", "1", nil, "no such thing", "no such thing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub, err := nc.Subscribe("reply", func(m *nats.Msg) {
				out := nats.NewMsg(m.Reply)
				if tc.version != "" {
					out.Header.Set(HeaderVersion, tc.version)
				}
				if tc.refusal != "" {
					out.Header.Set(testProtocol.ErrorHeader, tc.refusal)
				}
				out.Data = tc.data
				m.RespondMsg(out)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var r rep
			err = testProtocol.Call(ctx, nc, "reply", req{V: Version, N: 1}, &r)
			var refused *Refused
			switch {
			case tc.want == "":
				if err != nil || r.Sum != 7 {
					t.Errorf("reply %+v, %v; want sum 7", r, err)
				}
			case tc.refusal != "":
				if !errors.As(err, &refused) || refused.Msg != tc.want {
					t.Errorf("reply error %v; want the refusal %q", err, tc.want)
				}
			case !errors.Is(err, ErrBadReply) || !strings.Contains(err.Error(), tc.want):
				t.Errorf("reply error %v; want a bad reply saying %q", err, tc.want)
			}
		})
	}
}

// TestOldServerReadsNewRequests: a sidecar that predates the version
// field decodes a request of this version as before, the "v" key skipped.
func TestOldServerReadsNewRequests(t *testing.T) {
	b, err := msgpack.Marshal(req{V: Version, N: 41})
	if err != nil {
		t.Fatal(err)
	}
	var old oldReq
	if err := msgpack.Unmarshal(b, &old); err != nil || old.N != 41 {
		t.Fatalf("an old server decodes %+v, %v; want n 41", old, err)
	}
}

// TestNoReply: Call returns NATS's own error when nobody answers, for the
// caller to tell a dead peer from a refusal.
func TestNoReply(t *testing.T) {
	nc := connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := testProtocol.Call(ctx, nc, "nobody", req{}, nil); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("call with no server: %v, want nats.ErrNoResponders", err)
	}
}
