package bridge

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/session"
)

// TestEagerReports: with periodic reports an hour apart, a DC still
// reports its applied vector soon after it moves, at most once per
// ReportDebounce, and reports what is durable.
func TestEagerReports(t *testing.T) {
	const debounce = 20 * time.Millisecond
	r, st, nc := single(t, func(o *Options) {
		o.ReportInterval = time.Hour
		o.ReportDebounce = debounce
	})
	got := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe(names.AppliedSubject("dc1"), got)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	next := func(what string) changelog.Applied {
		t.Helper()
		select {
		case m := <-got:
			var a changelog.Applied
			if err := msgpack.Unmarshal(m.Data, &a); err != nil {
				t.Fatal(err)
			}
			return a
		case <-ctx.Done():
			t.Fatalf("no report %s within 10s (the periodic one is an hour away)", what)
			return nil
		}
	}
	next("at start")
	start := time.Now()
	var last changelog.WriteResult
	const writes = 50
	for i := range writes {
		if last, err = st.Write(ctx, changelog.WriteOp{Key: "k", Value: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for a := next("after the writes"); !a.Covers("dc1", last.Event.Partition, last.Event.Seq); a = next("covering the last write") {
	}
	elapsed := time.Since(start)
	sent := r.Stats().ReportsSent - 1
	if limit := uint64(elapsed/debounce) + 2; sent > limit {
		t.Errorf("%d reports for %d writes in %s; the debounce allows at most %d", sent, writes, elapsed, limit)
	}
	t.Logf("%d writes in %s: %d eager reports, %d bytes in all", writes, elapsed.Round(time.Millisecond), sent, r.Stats().ReportBytes)
}

// TestReportWakesReplicatedWait: a peer's report reaches the store as it
// arrives and wakes a write waiting for that peer.
func TestReportWakesReplicatedWait(t *testing.T) {
	r, st, nc := single(t, func(o *Options) { o.ReportInterval = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := st.Write(ctx, changelog.WriteOp{Key: "k", Value: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	ev := res.Event
	tok := session.Of(session.Entry{Origin: "dc1", Partition: ev.Partition, Seq: ev.Seq})
	done := make(chan int, 1)
	go func() {
		k, _ := st.WaitReplicated(ctx, tok, 2)
		done <- k
	}()
	// dc2's periodic report, which has not seen the write, then one soon
	// after, which has: the second is within ReportInterval of the first,
	// so it updates dc2's newest report only, and still wakes the write.
	row := make([]uint64, testParts)
	for _, seq := range []uint64{0, ev.Seq} {
		row[ev.Partition] = seq
		b, _ := msgpack.Marshal(map[string][]uint64{"dc1": row, "dc2": make([]uint64, testParts)})
		if err := nc.Publish(names.AppliedSubject("dc2"), b); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case k := <-done:
		if k != 2 {
			t.Errorf("WaitReplicated = %d; want 2", k)
		}
	case <-ctx.Done():
		t.Fatal("dc2's report did not wake the write waiting for it")
	}
}
