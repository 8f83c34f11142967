package join

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func connect(t *testing.T) *nats.Conn {
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{StoreDir: t.TempDir(), JetStream: true, ServerName: "join"})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() })
	return nc
}

func open(t *testing.T, dc string) *changelog.Store {
	st, err := changelog.Open(t.TempDir(), changelog.Options{DC: dc, DCs: []string{"dc1", "dc2"}, Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestFetchRoundTrip copies a store over a real server, in chunks.
func TestFetchRoundTrip(t *testing.T) {
	nc := connect(t)
	src := open(t, "dc1")
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		if _, err := src.Write(context.Background(), changelog.WriteOp{Key: k, Value: []byte(strings.Repeat(k, 100))}); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := NewServer(ServerOptions{Store: src, NC: nc, ChunkBytes: 150})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dst := open(t, "dc2")
	st, err := Fetch(context.Background(), nc, dst, "dc1", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := src.Digest()
	if st.Digest != want.Hex() || st.Keys != 5 || st.Chunks < 3 {
		t.Fatalf("fetched %+v, want digest %s of 5 keys in several chunks", st, want.Hex())
	}
}

// TestFetchBadReplies: a server answering garbage gives a clear error and
// leaves the store empty.
func TestFetchBadReplies(t *testing.T) {
	nc := connect(t)
	src := open(t, "dc1")
	if _, err := src.Write(context.Background(), changelog.WriteOp{Key: "k", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	sn, err := src.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	hdr := sn.Header()
	sn.Close()
	for _, tc := range []struct {
		name  string
		reply func(op string) []byte
		want  string
	}{
		{"corrupt open reply", func(string) []byte { return []byte{0xc1, 0x00} }, "open reply"},
		{"corrupt chunk", func(op string) []byte {
			if op == opOpen {
				b, _ := msgpack.Marshal(openReply{Session: "s", Header: hdr})
				return b
			}
			return []byte{0x93, 0xc1}
		}, "read reply"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub, err := nc.Subscribe(names.SnapshotSubject("dc1"), func(m *nats.Msg) {
				var req request
				msgpack.Unmarshal(m.Data, &req)
				m.Respond(tc.reply(req.Op))
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			dst := open(t, "dc2")
			_, err = Fetch(context.Background(), nc, dst, "dc1", 5*time.Second)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("fetch: %v, want an error about the %s", err, tc.want)
			}
			if err := dst.CheckEmpty(); err != nil {
				t.Fatalf("after a bad fetch: %v", err)
			}
		})
	}
}

func TestFetchWithoutServer(t *testing.T) {
	nc := connect(t)
	_, err := Fetch(context.Background(), nc, open(t, "dc2"), "dc1", 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "no snapshot server") {
		t.Fatalf("fetch with no server: %v", err)
	}
}

// TestFetchNewerReply: a snapshot server of a newer protocol version is
// refused with an error that says so, and the store stays empty.
func TestFetchNewerReply(t *testing.T) {
	nc := connect(t)
	sub, err := nc.Subscribe(names.SnapshotSubject("dc1"), func(m *nats.Msg) {
		out := nats.NewMsg(m.Reply)
		out.Header.Set(rpc.HeaderVersion, "2")
		out.Data, _ = msgpack.Marshal(openReply{Session: "s"})
		m.RespondMsg(out)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	dst := open(t, "dc2")
	_, err = Fetch(context.Background(), nc, dst, "dc1", 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "protocol version 2; this DC speaks 1") {
		t.Fatalf("fetch from a newer server: %v, want an error naming the versions", err)
	}
	if err := dst.CheckEmpty(); err != nil {
		t.Fatalf("after a refused fetch: %v", err)
	}
}
