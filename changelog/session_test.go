package changelog

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/session"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// entryOf is the session entry of an event: its Nats-Msg-Id.
func entryOf(ev *event.Event) session.Entry {
	return session.Entry{Origin: ev.Origin, Partition: ev.Partition, Seq: ev.Seq}
}

// waitAsync runs wait on its own goroutine and returns a channel that gets
// its result.
func waitAsync[T any](wait func() T) <-chan T {
	done := make(chan T, 1)
	go func() { done <- wait() }()
	return done
}

// result waits up to 10s for what waitAsync's goroutine returns.
func result[T any](t *testing.T, done <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-done:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return within 10s of the change that should wake it", what)
		var zero T
		return zero
	}
}

// replicatedAsync waits on its own goroutine until n DCs have applied tok.
func replicatedAsync(s *Store, tok session.Token, n int) <-chan int {
	return waitAsync(func() int {
		k, _ := s.WaitReplicated(context.Background(), tok, n)
		return k
	})
}

// shortCtx is a context that ends soon, for waits that must time out.
func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

// TestWaitApplied: a session token is covered once this DC's contiguous
// applied sequence of each (origin, partition) reaches the entry, not
// before, not past a gap; this DC's own entries are always covered; the
// wait wakes on the commit that covers it.
func TestWaitApplied(t *testing.T) {
	fs := vfs.NewMem()
	dc1 := openMem(t, fs, "dc1", Options{Partitions: 1})
	dc2 := openMem(t, fs, "dc2", Options{Partitions: 1})
	ctx := context.Background()
	var evs []*event.Event
	for _, k := range []string{"a", "b", "c"} {
		evs = append(evs, mustWrite(t, dc1, WriteOp{Key: k, Value: []byte(k)}).Event)
	}
	tok := session.Of(entryOf(evs[1])) // dc1:0:2

	// Nothing applied: the wait times out and says what is missing.
	err := dc2.WaitApplied(shortCtx(t), tok)
	var sa *SessionAheadError
	if !errors.As(err, &sa) || !errors.Is(err, ErrContextAhead) || sa.Applied != 0 || sa.Entry != entryOf(evs[1]) {
		t.Fatalf("WaitApplied before any apply = %v; want a SessionAheadError for dc1:0:2 at 0", err)
	}
	if !strings.Contains(err.Error(), "dc1:0:2") || !strings.Contains(err.Error(), "only up to 0") {
		t.Errorf("message %q does not say what is missing", err)
	}

	// The third event alone is past a gap: still not covered.
	if res, err := dc2.Apply(ctx, evs[2:], nil); err != nil || res[0].Outcome != Gap {
		t.Fatalf("apply past a gap: %v %v", res, err)
	}
	if err := dc2.WaitApplied(shortCtx(t), tok); !errors.As(err, &sa) {
		t.Fatalf("WaitApplied past a gap = %v; want SessionAheadError", err)
	}

	// The first event covers dc1:0:1, not dc1:0:2.
	if _, err := dc2.Apply(ctx, evs[:1], nil); err != nil {
		t.Fatal(err)
	}
	if err := dc2.WaitApplied(shortCtx(t), tok); !errors.As(err, &sa) || sa.Applied != 1 {
		t.Fatalf("WaitApplied with dc1:0:1 applied = %v; want a SessionAheadError at 1", err)
	}
	// A waiter wakes when the second is applied.
	done := waitAsync(func() error { return dc2.WaitApplied(ctx, tok) })
	if _, err := dc2.Apply(ctx, evs[1:2], nil); err != nil {
		t.Fatal(err)
	}
	if err := result(t, done, "WaitApplied"); err != nil {
		t.Fatalf("WaitApplied after the apply = %v", err)
	}

	// dc2's own entries are covered whatever they name; an empty token too.
	own := session.Of(session.Entry{Origin: "dc2", Partition: 0, Seq: 1 << 40})
	for _, tok := range []session.Token{own, nil} {
		if err := dc2.WaitApplied(shortCtx(t), tok); err != nil {
			t.Errorf("WaitApplied(%q) = %v; want nil", tok, err)
		}
	}
}

func TestWaitAppliedBadInputAndClose(t *testing.T) {
	fs := vfs.NewMem()
	dc2 := openMem(t, fs, "dc2", Options{Partitions: 2})
	for _, e := range []session.Entry{{Origin: "dc9", Partition: 0, Seq: 1}, {Origin: "dc1", Partition: 2, Seq: 1}, {Origin: "dc1", Partition: 0, Seq: 0}} {
		if err := dc2.WaitApplied(context.Background(), session.Token{e}); !errors.Is(err, ErrBadInput) {
			t.Errorf("WaitApplied(%v) = %v; want ErrBadInput", e, err)
		}
		if _, err := dc2.WaitReplicated(context.Background(), session.Token{e}, 1); !errors.Is(err, ErrBadInput) {
			t.Errorf("WaitReplicated(%v) = %v; want ErrBadInput", e, err)
		}
	}
	tok := session.Of(session.Entry{Origin: "dc1", Partition: 1, Seq: 1})
	done := waitAsync(func() error { return dc2.WaitApplied(context.Background(), tok) })
	dc2.Close()
	if err := result(t, done, "WaitApplied at close"); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitApplied across Close = %v; want ErrClosed", err)
	}
}

// TestWaitRead: a read with a context or a token waits up to ContextWait,
// then says what is missing; a context naming an unknown DC is bad input.
func TestWaitRead(t *testing.T) {
	fs := vfs.NewMem()
	dc1 := openMem(t, fs, "dc1", Options{Partitions: 2})
	dc2 := openMem(t, fs, "dc2", Options{Partitions: 2, ContextWait: 20 * time.Millisecond})
	ctx := context.Background()
	ev := mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte("v")}).Event
	vctx := vclock.VV{"dc1": ev.Seq}

	err := dc2.WaitRead(ctx, "k", vctx, nil)
	var ca *ContextAheadError
	if !errors.As(err, &ca) || !ca.Read || !strings.Contains(err.Error(), "or read at dc1") {
		t.Fatalf("WaitRead with a context ahead = %v; want a read's ContextAheadError", err)
	}
	if err := dc2.WaitRead(ctx, "", nil, session.Of(entryOf(ev))); !errors.Is(err, ErrContextAhead) {
		t.Fatalf("WaitRead with a token ahead = %v; want ErrContextAhead", err)
	}
	if err := dc2.WaitRead(ctx, "k", vclock.VV{"dc9": 1}, nil); !errors.Is(err, ErrBadInput) {
		t.Errorf("WaitRead with an unknown DC = %v; want ErrBadInput", err)
	}

	// Once applied, both are covered at once; so is this DC's own counter.
	if _, err := dc2.Apply(ctx, []*event.Event{ev}, nil); err != nil {
		t.Fatal(err)
	}
	if err := dc2.WaitRead(ctx, "k", vclock.VV{"dc1": ev.Seq, "dc2": 7}, session.Of(entryOf(ev))); err != nil {
		t.Errorf("WaitRead after the apply = %v", err)
	}

	// With ContextWait zero nothing waits: it answers from what is there.
	dc3 := openMem(t, fs, "dc3", Options{Partitions: 2})
	if err := dc3.WaitRead(ctx, "k", vctx, nil); !errors.Is(err, ErrContextAhead) {
		t.Errorf("WaitRead without a wait bound = %v; want ErrContextAhead", err)
	}
}

// TestReplicated: a write counts its origin, this DC once durably
// applied here, and every peer whose newest report covers it; a stale
// report changes nothing; a transaction's token counts its weakest entry.
func TestReplicated(t *testing.T) {
	fs := vfs.NewMem()
	dc1 := openMem(t, fs, "dc1", Options{Partitions: 2})
	dc2 := openMem(t, fs, "dc2", Options{Partitions: 2})
	dc3 := openMem(t, fs, "dc3", Options{Partitions: 2})
	ctx := context.Background()
	a := mustWrite(t, dc1, WriteOp{Key: "a", Value: []byte("1")}).Event
	b := mustWrite(t, dc1, WriteOp{Key: "b", Value: []byte("2")}).Event
	ta, tb := session.Of(entryOf(a)), session.Of(entryOf(b))
	both := ta.Merge(tb)
	if a.Partition == b.Partition {
		t.Fatalf("keys a and b share partition %d; pick keys in two partitions", a.Partition)
	}
	if k := dc1.Replicated(both); k != 1 {
		t.Fatalf("Replicated before any report = %d; want 1 (the origin)", k)
	}
	before := dc2.AppliedDurable()
	if _, err := dc2.Apply(ctx, []*event.Event{a}, nil); err != nil {
		t.Fatal(err)
	}
	dc1.SetPeerApplied("dc2", dc2.AppliedDurable())
	if k := dc1.Replicated(ta); k != 2 {
		t.Errorf("Replicated(a) after dc2's report = %d; want 2", k)
	}
	if k := dc1.Replicated(both); k != 1 {
		t.Errorf("Replicated(a, b) with b at dc1 only = %d; want 1, the weakest entry", k)
	}
	dc1.SetPeerApplied("dc2", before) // stale: ignored
	if k := dc1.Replicated(ta); k != 2 {
		t.Errorf("Replicated(a) after a stale report = %d; want 2", k)
	}

	// A waiter for all three wakes on the reports, the one UpdatePeerApplied
	// records included.
	done := replicatedAsync(dc1, both, 3)
	if _, err := dc2.Apply(ctx, []*event.Event{b}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := dc3.Apply(ctx, []*event.Event{a, b}, nil); err != nil {
		t.Fatal(err)
	}
	dc1.UpdatePeerApplied("dc2", dc2.AppliedDurable())
	dc1.UpdatePeerApplied("dc3", dc3.AppliedDurable())
	if k := result(t, done, "WaitReplicated on the reports"); k != 3 {
		t.Errorf("WaitReplicated = %d; want 3", k)
	}

	// A wait that times out says how far it got.
	c := mustWrite(t, dc1, WriteOp{Key: "c", Value: []byte("3")}).Event
	k, err := dc1.WaitReplicated(shortCtx(t), session.Of(entryOf(c)), 2)
	if k != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitReplicated timing out = %d, %v; want 1, DeadlineExceeded", k, err)
	}
}

// TestReplicatedCountsThisDCWhenDurable: a write made at another DC (a
// home DC's) counts this DC once its durable applied vector covers it.
func TestReplicatedCountsThisDCWhenDurable(t *testing.T) {
	fs := vfs.NewMem()
	dc1 := openMem(t, fs, "dc1", Options{Partitions: 1})
	dc2 := openMem(t, fs, "dc2", Options{Partitions: 1})
	ev := mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte("v")}).Event
	tok := session.Of(entryOf(ev))
	if k := dc2.Replicated(tok); k != 1 {
		t.Fatalf("Replicated at dc2 before the apply = %d; want 1", k)
	}
	moved := dc2.DurableMoved()
	done := replicatedAsync(dc2, tok, 2)
	if _, err := dc2.Apply(context.Background(), []*event.Event{ev}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-moved:
	default:
		t.Error("DurableMoved's channel is still open after a durable apply")
	}
	if got := dc2.AppliedDurable(); !got.Covers("dc1", 0, ev.Seq) {
		t.Errorf("AppliedDurable after the apply = %v", got)
	}
	if k := result(t, done, "WaitReplicated on this DC's own apply"); k != 2 {
		t.Errorf("WaitReplicated = %d; want 2", k)
	}
}

// TestAppliedDurableOwnRow: the durable vector holds this DC's own issued
// sequences once written, and survives a reopen.
func TestAppliedDurableOwnRow(t *testing.T) {
	fs := vfs.NewMem()
	dc1 := openMem(t, fs, "dc1", Options{Partitions: 1})
	ev := mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte("v")}).Event
	if got := dc1.AppliedDurable(); !got.Covers("dc1", 0, ev.Seq) {
		t.Fatalf("AppliedDurable after a write = %v", got)
	}
	dc1.Close()
	again, err := Open("/dc1", Options{DC: "dc1", DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 1, FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got := again.AppliedDurable(); !got.Covers("dc1", 0, ev.Seq) {
		t.Errorf("AppliedDurable after reopening = %v", got)
	}
}

// TestUpdatePeerAppliedKeepsHistory: reports recorded as newest only do
// not crowd out the history purging picks from, and a newest report this
// DC covers is used at once.
func TestUpdatePeerAppliedKeepsHistory(t *testing.T) {
	fs := vfs.NewMem()
	var stores []*Store
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		stores = append(stores, openMem(t, fs, dc, Options{Partitions: 1}))
	}
	a, b := stores[0], stores[1]
	put := mustWrite(t, a, WriteOp{Key: "k", Value: []byte("v")}).Event
	exchange(t, stores, put)
	del := mustWrite(t, a, WriteOp{Key: "k", Delete: true}).Event
	exchange(t, stores, del)
	// dc2 goes on writing and reports, between its periodic reports,
	// vectors naming its own writes dc1 has not applied.
	for i := range 8 {
		mustWrite(t, b, WriteOp{Key: "other", Value: []byte{byte(i)}})
		a.UpdatePeerApplied("dc2", b.Applied())
	}
	if n, err := a.Purge(context.Background()); err != nil || n != 1 {
		t.Fatalf("Purge with dc2's history covered = %d, %v; want 1 (the history still holds the covered report)", n, err)
	}
}
