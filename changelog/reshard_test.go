package changelog

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/resolve"
)

// TestReshardCopiesEveryRecord: dc1's one store, with keys (some with a
// TTL, so expiry records), tombstones, sequences, applied entries, a
// conflict log (LWW logs the losers) and a home epoch, is split into two
// stores and merged back into one. Every partition's keys and bookkeeping
// land in its new owner, the conflict entries and home epoch too, and a
// store reopened after the reshard reads the same as the original.
func TestReshardCopiesEveryRecord(t *testing.T) {
	ctx := context.Background()
	opts := Options{Partitions: 4, Resolvers: rules(t, resolve.LWW())}
	dc1, dc2, dc3 := openMem(t, vfs.NewMem(), "dc1", opts), openMem(t, vfs.NewMem(), "dc2", opts), openMem(t, vfs.NewMem(), "dc3", opts)
	stores := []*Store{dc1, dc2, dc3}
	var evs []*event.Event
	for i := range 24 {
		key := fmt.Sprintf("k/%d", i)
		op := WriteOp{Key: key, Value: []byte("a")}
		if i%3 == 0 {
			op.TTL = time.Hour
		}
		evs = append(evs, mustWrite(t, dc1, op).Event)
		evs = append(evs, mustWrite(t, dc2, WriteOp{Key: key, Value: []byte("b")}).Event) // concurrent: LWW logs a loser
		if i%5 == 0 {
			evs = append(evs, mustWrite(t, dc2, WriteOp{Key: "gone/" + key, Delete: true}).Event)
		}
	}
	exchange(t, stores, evs...)
	if err := dc1.SetCheckpoint(ctx, dc1.mu.outboxNext-1); err != nil {
		t.Fatal(err)
	}
	if _, err := dc1.TrimOutbox(ctx); err != nil || dc1.OutboxHeld() != 0 {
		t.Fatalf("dc1's outbox holds %d entries after the trim (%v); the test needs it drained", dc1.OutboxHeld(), err)
	}
	if err := dc1.SetHomeEpoch(ctx, "h/", HomeEpoch{Epoch: 3, Home: "dc2"}); err != nil {
		t.Fatal(err)
	}
	conflicts, err := dc1.Conflicts(ConflictFilter{})
	if err != nil || len(conflicts) == 0 {
		t.Fatalf("dc1 logged no conflict (%v); the test needs some", err)
	}
	want, _ := dc1.Digest()
	applied := dc1.Applied()

	fs := vfs.NewMem()
	open := func(name string) *Store {
		s, err := Open("/"+name, Options{DC: "dc1", DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 4, Resolvers: opts.Resolvers, Clock: &counterClock{}, FS: fs})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	even, odd := open("even"), open("odd")
	split := []ReshardStore{{Store: even, Owns: []uint32{0, 2}}, {Store: odd, Owns: []uint32{1, 3}}}
	if _, err := Reshard(ctx, []ReshardStore{{Store: dc1, Owns: []uint32{0, 1, 2, 3}}}, split); err != nil {
		t.Fatal(err)
	}
	// A new store's in-memory state is read at its next open.
	even.Close()
	odd.Close()
	even, odd = open("even"), open("odd")
	split = []ReshardStore{{Store: even, Owns: []uint32{0, 2}}, {Store: odd, Owns: []uint32{1, 3}}}
	for _, x := range split {
		d, _ := x.Store.Digest()
		a := x.Store.Applied()
		for _, p := range []uint32{0, 1, 2, 3} {
			mine := p%2 == 0 == (x.Store == even)
			if mine != (d.Partitions[p] != [32]byte{}) && want.Partitions[p] != [32]byte{} {
				t.Errorf("partition %d: held by the wrong new store", p)
			}
			for _, o := range []string{"dc1", "dc2"} {
				got := uint64(0)
				if int(p) < len(a[o]) {
					got = a[o][p]
				}
				if w := applied[o][p]; mine && got != w || !mine && got != 0 {
					t.Errorf("new store of partitions %v: applied %s:%d = %d, want %d", x.Owns, o, p, got, map[bool]uint64{true: w}[mine])
				}
			}
		}
		if e, ok, _ := x.Store.HomeEpoch("h/"); !ok || e.Epoch != 3 || e.Home != "dc2" {
			t.Errorf("new store of partitions %v: home epoch %+v %v, want 3 at dc2", x.Owns, e, ok)
		}
	}
	var moved int
	for _, x := range split {
		cs, _ := x.Store.Conflicts(ConflictFilter{})
		for _, c := range cs {
			if p := event.PartitionOf(c.Key, 4); p%2 == 0 != (x.Store == even) {
				t.Errorf("conflict %s of key %q (partition %d) is in the store of partitions %v", c.ID, c.Key, p, x.Owns)
			}
		}
		moved += len(cs)
	}
	if moved != len(conflicts) {
		t.Errorf("the new stores hold %d conflict entries, dc1 held %d", moved, len(conflicts))
	}

	// Merged back into one store: the same digest as the original.
	whole := open("whole")
	if _, err := Reshard(ctx, split, []ReshardStore{{Store: whole, Owns: []uint32{0, 1, 2, 3}}}); err != nil {
		t.Fatal(err)
	}
	whole.Close()
	whole = open("whole")
	if d, _ := whole.Digest(); d.Hex() != want.Hex() {
		t.Errorf("merged back: digest %s, the original %s", d.Hex(), want.Hex())
	}
	if got := whole.Applied(); fmt.Sprint(got) != fmt.Sprint(applied) {
		t.Errorf("merged back: applied %v, the original %v", got, applied)
	}

	// Refusals, each writing nothing.
	busy := open("busy")
	mustWrite(t, busy, WriteOp{Key: "k", Value: []byte("v")})
	for _, tc := range []struct {
		name     string
		from, to []ReshardStore
		want     string
	}{
		{"a partition left out", []ReshardStore{{Store: whole, Owns: []uint32{0, 1, 2, 3}}}, []ReshardStore{{Store: open("r1"), Owns: []uint32{0, 1, 2}}}, "no new store owns partitions [3]"},
		{"a partition owned twice", []ReshardStore{{Store: even, Owns: []uint32{0, 2}}, {Store: odd, Owns: []uint32{1, 2, 3}}}, []ReshardStore{{Store: open("r2"), Owns: []uint32{0, 1, 2, 3}}}, "partition 2 is owned by old stores 0 and 1"},
		{"a new store not empty", []ReshardStore{{Store: even, Owns: []uint32{0, 2}}, {Store: odd, Owns: []uint32{1, 3}}}, []ReshardStore{{Store: whole, Owns: []uint32{0, 1, 2, 3}}}, "a reshard writes into empty stores"},
		{"an old store not drained", []ReshardStore{{Store: busy, Owns: []uint32{0, 1, 2, 3}}}, []ReshardStore{{Store: open("r3"), Owns: []uint32{0, 1, 2, 3}}}, "Start the old sidecars until"},
	} {
		_, err := Reshard(ctx, tc.from, tc.to)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
		for _, x := range tc.to {
			if x.Store != whole && x.Store.CheckEmpty() != nil {
				t.Errorf("%s: the refused reshard wrote into a new store", tc.name)
			}
		}
	}
	_, err = Reshard(ctx, []ReshardStore{{Store: dc2, Owns: []uint32{0, 1, 2, 3}}}, []ReshardStore{{Store: open("r4"), Owns: []uint32{0, 1, 2, 3}}})
	if err == nil || !strings.Contains(err.Error(), "every store of a reshard must be of DC dc2") {
		t.Errorf("a reshard into a store of another DC: %v", err)
	}
}
