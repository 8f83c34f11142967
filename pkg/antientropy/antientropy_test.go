package antientropy

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	parts      = 4
	maxPayload = 64 << 10 // small, so one state can exceed it
)

type counter struct{ n atomic.Uint64 }

func (c *counter) Now() uint64 { return c.n.Add(1) }

// runNATS starts a real NATS server in the test process.
func runNATS(t *testing.T) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, MaxPayload: maxPayload, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	return s.ClientURL()
}

type dc struct {
	name string
	s    *changelog.Store
	w    *Worker
	nc   *nats.Conn
}

// startDCs opens a store and starts a worker for each DC.
func startDCs(t *testing.T, url string, names ...string) map[string]*dc {
	return startDCsWith(t, url, parts, names...)
}

func startDCsWith(t *testing.T, url string, parts int, names ...string) map[string]*dc {
	t.Helper()
	out := map[string]*dc{}
	for _, n := range names {
		s, err := changelog.Open("/"+n, changelog.Options{DC: n, DCs: names, Partitions: parts, FS: vfs.NewMem(), Clock: &counter{}})
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		w, err := New(Options{Store: s, NC: nc, DC: n, DCs: names, Partitions: parts, Interval: -1})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			w.Close()
			nc.Close()
			s.Close()
		})
		out[n] = &dc{name: n, s: s, w: w, nc: nc}
	}
	return out
}

func write(t *testing.T, d *dc, key string, val []byte) *event.Event {
	t.Helper()
	r, err := d.s.Write(context.Background(), changelog.WriteOp{Key: key, Value: val})
	if err != nil {
		t.Fatal(err)
	}
	return r.Event
}

func digest(t *testing.T, d *dc) string {
	t.Helper()
	dg, err := d.s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return dg.Hex()
}

func TestRunOnceConverges(t *testing.T) {
	dcs := startDCs(t, runNATS(t), "dc1", "dc2")
	a, b := dcs["dc1"], dcs["dc2"]
	for i := range 50 {
		write(t, a, fmt.Sprintf("a/%d", i), []byte("from dc1"))
		write(t, b, fmt.Sprintf("b/%d", i), []byte("from dc2"))
	}
	write(t, a, "both", []byte("x"))
	write(t, b, "both", []byte("y"))
	ctx := context.Background()
	ra, err := a.w.RunOnce(ctx, "dc2")
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.w.RunOnce(ctx, "dc1")
	if err != nil {
		t.Fatal(err)
	}
	if da, db := digest(t, a), digest(t, b); da != db {
		t.Fatalf("digests differ after a run each way: %s vs %s", da, db)
	}
	if ra.PartitionsCompared != parts || ra.KeysExchanged != 101 || ra.VersionsTaken != 51 {
		t.Errorf("dc1's report: %+v; want 4 partitions compared, 101 keys exchanged (50 missing, 50 only local, 1 different), 51 versions taken", ra)
	}
	if rb.VersionsTaken != 51 {
		t.Errorf("dc2's report: %+v; want 51 versions taken", rb)
	}
	st, _, err := a.s.Get("both")
	if err != nil || st.LiveCount() != 2 {
		t.Fatalf("the concurrent writes must be siblings at dc1: %v %v", st, err)
	}
	again, err := a.w.RunOnce(ctx, "dc2")
	if err != nil {
		t.Fatal(err)
	}
	if again.PartitionsDiffered != 0 || again.Requests != 1 {
		t.Fatalf("a run between converged DCs should compare trees only: %+v", again)
	}
	if _, err := a.w.RunOnce(ctx, "dc1"); err == nil {
		t.Fatal("a run against itself must fail")
	}
}

// TestBoundedMessages: listings and states are split into replies of at
// most maxReply bytes, and a state larger than the connection's max
// payload is skipped and reported, never sent.
func TestBoundedMessages(t *testing.T) {
	dcs := startDCs(t, runNATS(t), "dc1", "dc2")
	a, b := dcs["dc1"], dcs["dc2"]
	b.w.maxReply = 4 << 10
	val := bytes.Repeat([]byte("v"), 1000)
	for i := range 200 {
		write(t, b, fmt.Sprintf("k/%03d", i), val)
	}
	// A key with two siblings of 40 KiB at dc2: 80 KiB, over the payload.
	big := bytes.Repeat([]byte("b"), 40<<10)
	ev := write(t, a, "big", big)
	write(t, b, "big", big)
	if _, err := b.s.Apply(context.Background(), []*event.Event{ev}, nil); err != nil {
		t.Fatal(err)
	}
	rep, err := a.w.RunOnce(context.Background(), "dc2")
	if err != nil {
		t.Fatal(err)
	}
	if rep.KeysSkipped != 1 || rep.KeysExchanged != 200 {
		t.Fatalf("report %+v: want 200 keys exchanged and the big one skipped", rep)
	}
	// 200 KiB of states in 4 KiB replies, and the listings in 4 KiB too.
	if rep.Requests < 50 {
		t.Fatalf("report %+v: replies were not bounded", rep)
	}
	for i := range 200 {
		if st, ok, err := a.s.Get(fmt.Sprintf("k/%03d", i)); err != nil || !ok || !bytes.Equal(st.Siblings[0].Value, val) {
			t.Fatalf("k/%03d not repaired: %v %v", i, ok, err)
		}
	}
}

// TestDefaultBoundsFitPayload: with the default bounds, against a server
// whose max payload is below them, trees and listings are split to fit
// the payload instead of failing.
func TestDefaultBoundsFitPayload(t *testing.T) {
	dcs := startDCsWith(t, runNATS(t), 20, "dc1", "dc2")
	a, b := dcs["dc1"], dcs["dc2"]
	long := strings.Repeat("k", 1000)
	const keys = 1600
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := g; i < keys; i += 16 {
				if _, err := b.s.Write(context.Background(), changelog.WriteOp{Key: fmt.Sprintf("%s/%05d", long, i), Value: []byte("v")}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	rep, err := a.w.RunOnce(context.Background(), "dc2")
	if err != nil {
		t.Fatal(err)
	}
	// 20 trees of 8 KiB in 60 KiB replies take 3 requests; each
	// partition's listing (about 80 keys of 1 KiB) takes 2.
	if rep.PartitionsCompared != 20 || rep.KeysExchanged != keys || rep.Requests < 3+2*20 {
		t.Fatalf("report %+v", rep)
	}
	if digest(t, a) != digest(t, b) {
		t.Fatal("not converged")
	}
}

func TestBadRequests(t *testing.T) {
	dcs := startDCs(t, runNATS(t), "dc1", "dc2")
	nc := dcs["dc2"].nc
	enc := func(r request) []byte {
		b, err := msgpack.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"not msgpack", []byte("{"), "bad request"},
		{"old protocol", enc(request{V: 0, Op: opTrees, Partitions: []uint32{0}}), "protocol version 0"},
		{"newer protocol", enc(request{V: Protocol + 1, Op: opTrees, Partitions: []uint32{0}}), "protocol version 2; this DC speaks 1: upgrade"},
		{"an array of 2^31 items", []byte{0xdd, 0x7f, 0xff, 0xff, 0xff}, "bad request"},
		{"unknown op", enc(request{V: Protocol, Op: "drop"}), `op "drop"`},
		{"partition out of range", enc(request{V: Protocol, Op: opTrees, Partitions: []uint32{parts}}), "partition 4 of 4"},
		{"no buckets", enc(request{V: Protocol, Op: opBuckets}), "0 buckets"},
		{"bucket out of range", enc(request{V: Protocol, Op: opBuckets, Buckets: []int{300}}), "bucket 300"},
		{"no keys", enc(request{V: Protocol, Op: opStates}), "0 keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := nc.Request(names.AntiEntropySubject("dc1"), tc.data, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if e := m.Header.Get(HeaderError); !strings.Contains(e, tc.want) {
				t.Fatalf("error header %q, want it to mention %q", e, tc.want)
			}
		})
	}
}

// TestRequestRun is what `replicator repair` does: ask a running worker to
// run against every peer and print the reports.
func TestRequestRun(t *testing.T) {
	dcs := startDCs(t, runNATS(t), "dc1", "dc2", "dc3")
	write(t, dcs["dc2"], "a", []byte("1"))
	write(t, dcs["dc3"], "b", []byte("2"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := RequestRun(ctx, dcs["dc1"].nc, "dc1")
	if err != nil {
		t.Fatal(err)
	}
	if r.DC != "dc1" || len(r.Reports) != 2 || r.Reports[0].Peer != "dc2" || r.Reports[1].Peer != "dc3" {
		t.Fatalf("run reply %+v: want reports for dc2 and dc3", r)
	}
	for _, rep := range r.Reports {
		if rep.Error != "" || rep.KeysChanged != 1 {
			t.Errorf("report %+v: want one key repaired", rep)
		}
	}
	if _, err := RequestRun(ctx, dcs["dc1"].nc, "dc9"); err == nil || !strings.Contains(err.Error(), "no sidecar") {
		t.Fatalf("a run at a DC nobody serves: %v", err)
	}
}

func TestNewChecksOptions(t *testing.T) {
	_, err := New(Options{DC: "x", DCs: []string{"a"}})
	for _, want := range []string{"Store is required", "NC is required", `DC "x"`, "Partitions 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New: %v, want it to say %q", err, want)
		}
	}
}

func TestCloseTwice(t *testing.T) {
	dcs := startDCs(t, runNATS(t), "dc1", "dc2")
	w := dcs["dc1"].w
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}
