package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// single starts one DC, dc1 of a mesh with dc2, against an embedded server;
// tune, if given, changes its options.
func single(t *testing.T, tune ...func(*Options)) (*Replicator, *changelog.Store, *nats.Conn) {
	t.Helper()
	srv, err := StartEmbedded(EmbeddedOptions{StoreDir: t.TempDir(), JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	st, err := changelog.Open(t.TempDir(), changelog.Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: testParts})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewPlan("mesh", "dc1", []string{"dc1", "dc2"}, "")
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Store: st, NC: nc, Plan: plan, DCs: []string{"dc1", "dc2"}, Partitions: testParts, ReportInterval: 50 * time.Millisecond}
	for _, f := range tune {
		f(&opts)
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		st.Close()
		nc.Close()
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return r, st, nc
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10s", what)
		}
		<-tick.C
	}
}

func TestNewValidates(t *testing.T) {
	_, err := New(Options{Partitions: 0, PullExpiry: 500 * time.Millisecond})
	if err == nil {
		t.Fatal("New accepted empty options")
	}
	for _, want := range []string{"Store is required", "NC is required", "DCs is required", "Partitions is 0", "PullExpiry is 500ms, want at least 1s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
}

// testParts is the partition count of these tests.
const testParts = 4

func TestLifecycle(t *testing.T) {
	r, st, _ := single(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); !errors.Is(err, ErrStarted) {
		t.Errorf("second Start: %v, want ErrStarted", err)
	}
	if _, err := st.Write(ctx, changelog.WriteOp{Key: "k", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "publish", func() bool { return r.Stats().Published == 1 })
	s := r.Status()
	if !s.Running || s.Stream != "REPL_dc1" || len(s.Links) != 1 || s.Links[0].Consumer != "repl_dc1_from_dc2" || s.OutboxDepth != 0 {
		t.Errorf("status %+v", s)
	}
	for range 2 {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if err := r.Start(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v, want ErrClosed", err)
	}
	if r.Status().Running {
		t.Error("closed Replicator says it is running")
	}
}

func TestCloseUnstarted(t *testing.T) {
	r, _, _ := single(t)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRepairServer(t *testing.T) {
	r, st, nc := single(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var p uint32
	var seqs []uint64
	for i := range 20 {
		res, err := st.Write(ctx, changelog.WriteOp{Key: fmt.Sprint("k", i), Value: []byte("v")})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			p = res.Event.Partition
		}
		if res.Event.Partition == p {
			seqs = append(seqs, res.Event.Seq)
		}
	}
	ask := func(req any) *nats.Msg {
		t.Helper()
		b, err := msgpack.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		m, err := nc.RequestWithContext(ctx, names.RepairSubject("dc1"), b)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := ask(RepairRequest{Partition: p, From: 1, To: 1 << 40})
	var raw [][]byte
	if err := msgpack.Unmarshal(m.Data, &raw); err != nil || m.Header.Get(HeaderRepairError) != "" {
		t.Fatalf("reply %q: %v %s", m.Data, err, m.Header.Get(HeaderRepairError))
	}
	if len(raw) != len(seqs) {
		t.Fatalf("got %d events of partition %d, want %d", len(raw), p, len(seqs))
	}
	for i, b := range raw {
		ev, err := event.Decode(b, event.Limits{})
		if err != nil || ev.Seq != seqs[i] || ev.Origin != "dc1" {
			t.Errorf("event %d: %v %v", i, ev, err)
		}
	}
	for _, bad := range []any{"garbage", RepairRequest{Partition: testParts, From: 1, To: 2}, RepairRequest{From: 0, To: 2}, RepairRequest{From: 5, To: 2}} {
		if m := ask(bad); m.Header.Get(HeaderRepairError) == "" {
			t.Errorf("request %+v answered without an error", bad)
		}
	}
}

func TestPeerReports(t *testing.T) {
	r, st, nc := single(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	good, _ := msgpack.Marshal(map[string][]uint64{"dc2": {1, 0, 0, 0}, "dc1": {0, 0, 0, 0}})
	short, _ := msgpack.Marshal(map[string][]uint64{"dc2": {1}})
	stranger, _ := msgpack.Marshal(map[string][]uint64{"zz": {1, 0, 0, 0}})
	for subj, data := range map[string][]byte{
		"repl.applied.dc9": good,      // unknown DC
		"repl.applied.dc2": []byte{1}, // malformed
	} {
		nc.Publish(subj, data)
	}
	nc.Publish("repl.applied.dc2", short)
	nc.Publish("repl.applied.dc2", stranger)
	nc.Publish("repl.applied.dc2", good)
	waitFor(t, "peer reports", func() bool {
		s := r.Stats()
		return s.PeerReports == 1 && s.PeerReportsIgnored == 4
	})
	if got := st.PeerApplied()["dc2"]; !got.Covers("dc2", 0, 1) {
		t.Errorf("peer applied %v", got)
	}
}

// TestTrimStream: messages every downstream consumer acknowledged are
// deleted once older than the retention, except the last of each partition
// subject, whose Repl-Seq-Hi a restored DC needs.
func TestTrimStream(t *testing.T) {
	srv, err := StartEmbedded(EmbeddedOptions{StoreDir: t.TempDir(), JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	dcs := []string{"dc1", "dc2"}
	ctx := context.Background()
	var reps []*Replicator
	var stores []*changelog.Store
	for _, dc := range dcs {
		nc, err := nats.Connect(srv.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		st, err := changelog.Open(t.TempDir(), changelog.Options{DC: dc, DCs: dcs, Partitions: testParts})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		plan, _ := NewPlan("mesh", dc, dcs, "")
		r, err := New(Options{Store: st, NC: nc, Plan: plan, DCs: dcs, Partitions: testParts,
			ReportInterval: 20 * time.Millisecond, StreamRetention: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
		reps, stores = append(reps, r), append(stores, st)
	}
	for i := range 200 {
		if _, err := stores[0].Write(ctx, changelog.WriteOp{Key: fmt.Sprint("k", i), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	js := reps[0].env.js
	waitFor(t, "the stream trimmed to one message per partition", func() bool {
		s, err := js.Stream(ctx, names.Stream("dc1"))
		if err != nil {
			return false
		}
		st := s.CachedInfo().State
		return st.LastSeq == 200 && st.Msgs <= testParts && reps[0].Stats().StreamTrims > 0
	})
	// dc2 applied everything, and each partition's last message is still
	// there and names the partition's highest own sequence (in its
	// Repl-Seq-Hi or, on an own event, its Nats-Msg-Id).
	if got := reps[1].Stats().Applied; got != 200 {
		t.Fatalf("dc2 applied %d of 200", got)
	}
	s, _ := js.Stream(ctx, names.Stream("dc1"))
	own := stores[0].Applied()["dc1"]
	for p := range testParts {
		m, err := s.GetLastMsgForSubject(ctx, names.Subject("dc1", uint32(p)))
		if err != nil {
			continue // no key hashed to this partition
		}
		if hi, err := core.LastOwnSeq("dc1", uint32(p), m.Header); err != nil || hi != own[p] {
			t.Fatalf("partition %d's last message names %d (err %v) as the highest own sequence, want %d", p, hi, err, own[p])
		}
	}
}

// TestStartLogNamesHealAfterOnlyWhereItHeals: a mesh, which has nothing
// to heal, does not log heal_after at start; the missing stream of a DC
// that never started is noted once, not at every retry.
func TestStartLogNamesHealAfterOnlyWhereItHeals(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &buf}, nil))
	r, _, _ := single(t, func(o *Options) {
		o.Logger, o.HealAfter, o.RetryMin, o.RetryMax = log, 30*time.Second, time.Millisecond, 5*time.Millisecond
	})
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// dc2's stream never appears: the link retries every few milliseconds.
	waitFor(t, "the link to retry", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(buf.String(), "waiting for the upstream's stream")
	})
	r.Close()
	mu.Lock()
	defer mu.Unlock()
	out := buf.String()
	if !strings.Contains(out, "replicator started") || strings.Contains(out, "heal_after") {
		t.Errorf("a mesh's start log names heal_after:\n%s", out)
	}
	if n := strings.Count(out, "waiting for the upstream's stream"); n != 1 {
		t.Errorf("the missing stream was noted %d times, want once:\n%s", n, out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
