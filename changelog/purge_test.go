package changelog

import (
	"context"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/event"
)

// exchange delivers every event in evs to each store (except its origin) and
// then has every store report its applied vector to every other.
func exchange(t *testing.T, stores []*Store, evs ...*event.Event) {
	t.Helper()
	for _, s := range stores {
		var mine []*event.Event
		for _, ev := range evs {
			if ev.Origin != s.DC() {
				mine = append(mine, ev)
			}
		}
		if _, err := s.Apply(context.Background(), mine, nil); err != nil {
			t.Fatal(err)
		}
	}
	report(stores)
}

func report(stores []*Store) {
	for _, a := range stores {
		for _, b := range stores {
			b.SetPeerApplied(a.DC(), a.Applied())
		}
	}
}

// TestPurgeOnlyWhenStable checks invariant 8 of docs/DESIGN.md: a tombstone
// goes only once every DC has applied everything in its clock, and a deleted
// key never comes back, not even when an old event is delivered again.
func TestPurgeOnlyWhenStable(t *testing.T) {
	fs := vfs.NewMem()
	var stores []*Store
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		stores = append(stores, openMem(t, fs, dc, Options{Partitions: 2}))
	}
	a, b, c := stores[0], stores[1], stores[2]
	ctx := context.Background()
	put := mustWrite(t, a, WriteOp{Key: "k", Value: []byte("v")}).Event
	exchange(t, stores, put)
	del := mustWrite(t, b, WriteOp{Key: "k", Delete: true}).Event
	if !del.Context.Covers(put.Dot) {
		t.Fatalf("a delete without context must cover what the DC holds: context %s", del.Context)
	}
	// dc3 has not seen the delete: nobody may purge yet.
	if _, err := a.Apply(ctx, []*event.Event{del}, nil); err != nil {
		t.Fatal(err)
	}
	report(stores)
	for _, s := range stores {
		if n, err := s.Purge(ctx); err != nil || n != 0 {
			t.Fatalf("%s purged %d (%v) before every DC applied the delete", s.DC(), n, err)
		}
	}
	exchange(t, []*Store{c}, del)
	report(stores)
	for _, s := range stores {
		n, err := s.Purge(ctx)
		if err != nil || n != 1 {
			t.Fatalf("%s purged %d (%v), want 1", s.DC(), n, err)
		}
		if _, ok, _ := s.Get("k"); ok {
			t.Fatalf("%s still holds k after the purge", s.DC())
		}
	}
	// Redelivering the old put must not bring the value back.
	res, err := c.Apply(ctx, []*event.Event{put}, nil)
	if err != nil || res[0].Outcome != Duplicate {
		t.Fatalf("redelivered put: %+v %v", res, err)
	}
	if _, ok, _ := c.Get("k"); ok {
		t.Fatal("a purged key came back")
	}
	// A write after the purge carries the purge frontier, so it supersedes
	// the tombstone wherever the tombstone is still stored.
	w := mustWrite(t, a, WriteOp{Key: "k", Value: []byte("new")}).Event
	if !w.Context.Covers(del.Dot) {
		t.Fatalf("write after purge: context %s does not cover the purged delete %s", w.Context, del.Dot)
	}
}

// TestPurgeWaitsForCatchUp: a DC that has not yet applied what a peer had
// applied when it reported must not purge, since a write concurrent with the
// delete may still be on its way.
func TestPurgeWaitsForCatchUp(t *testing.T) {
	fs := vfs.NewMem()
	var stores []*Store
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		stores = append(stores, openMem(t, fs, dc, Options{Partitions: 1}))
	}
	a, b, c := stores[0], stores[1], stores[2]
	ctx := context.Background()
	put := mustWrite(t, a, WriteOp{Key: "k", Value: []byte("v")}).Event
	exchange(t, stores, put)
	del := mustWrite(t, a, WriteOp{Key: "k", Delete: true}).Event
	// dc2 writes other keys concurrently; dc3 does not get them yet.
	other := mustWrite(t, b, WriteOp{Key: "x", Value: []byte("1")}).Event
	exchange(t, []*Store{b, c}, del)
	if _, err := a.Apply(ctx, []*event.Event{other}, nil); err != nil {
		t.Fatal(err)
	}
	report(stores)
	if n, _ := c.Purge(ctx); n != 0 {
		t.Fatal("dc3 purged before catching up with what dc2 had applied")
	}
	exchange(t, []*Store{c}, other)
	if n, _ := c.Purge(ctx); n != 1 {
		t.Fatalf("dc3 purged %d after catching up, want 1", n)
	}
}

func TestOutboxTrimWaitsForEveryDC(t *testing.T) {
	fs := vfs.NewMem()
	var stores []*Store
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		stores = append(stores, openMem(t, fs, dc, Options{Partitions: 1}))
	}
	a := stores[0]
	ctx := context.Background()
	e1 := mustWrite(t, a, WriteOp{Key: "a", Value: []byte("1")}).Event
	e2 := mustWrite(t, a, WriteOp{Key: "b", Value: []byte("2")}).Event
	if err := a.SetCheckpoint(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := a.SetCheckpoint(ctx, 9); err == nil {
		t.Fatal("checkpoint past the outbox accepted")
	}
	exchange(t, stores[:2], e1, e2) // dc3 has nothing yet
	if n, _ := a.TrimOutbox(ctx); n != 0 {
		t.Fatalf("trimmed %d entries dc3 has not applied", n)
	}
	if got, _ := a.OwnEvents(0, 1, 2, 10); len(got) != 2 {
		t.Fatalf("repair source has %d events, want 2", len(got))
	}
	exchange(t, stores[2:], e1)
	report(stores)
	if n, _ := a.TrimOutbox(ctx); n != 1 {
		t.Fatalf("trimmed %d, want 1 (only e1 is everywhere)", n)
	}
	out, _ := a.ReadOutbox(0, 10)
	if len(out) != 1 || out[0].Event.Dot != e2.Dot {
		t.Fatalf("outbox after trim: %d entries", len(out))
	}
}

// TestRecoverOwnEvents: a store restored from an old copy takes back its
// own later events (from its stream) in order, without queueing them again.
func TestRecoverOwnEvents(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs, "dc1", Options{Partitions: 1})
	var evs []*event.Event
	for i := 0; i < 4; i++ {
		evs = append(evs, mustWrite(t, s, WriteOp{Key: "k", Value: []byte{byte('a' + i)}, Context: nil}).Event)
	}
	fresh := openMem(t, vfs.NewMem(), "dc1", Options{Partitions: 1}) // "restored" with nothing
	ctx := context.Background()
	res, err := fresh.Recover(ctx, []*event.Event{evs[0], evs[2]})
	if err != nil || res[0].Outcome != Changed || res[1].Outcome != Gap {
		t.Fatalf("recover with a gap: %+v %v", res, err)
	}
	if _, err := fresh.Recover(ctx, evs); err != nil {
		t.Fatal(err)
	}
	a, _ := s.Digest()
	b, _ := fresh.Digest()
	if a.Hex() != b.Hex() {
		t.Fatal("recovered store differs from the original")
	}
	if got := fresh.Applied()["dc1"][0]; got != 4 {
		t.Fatalf("sequence after recovery %d, want 4", got)
	}
	if out, _ := fresh.ReadOutbox(0, 10); len(out) != 0 {
		t.Fatalf("recovered events were queued again: %d outbox entries", len(out))
	}
	if _, err := fresh.Recover(ctx, []*event.Event{{Origin: "dc2", Seq: 1, Dot: evs[0].Dot}}); err == nil {
		t.Fatal("recovered another DC's event")
	}
}
