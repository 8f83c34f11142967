package changelog

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/resolve"
)

// wallClock is an HLC that reads a settable wall time (ms), so that
// conflict-log entries get the ages a test wants.
type wallClock struct {
	ms atomic.Uint64
	n  atomic.Uint64
}

func (c *wallClock) Now() uint64 { return uint64(hlc.Make(c.ms.Load(), uint16(c.n.Add(1)))) }

// logLosses makes n lww losses at a, one per key prefix+i, each logged at
// a with its own HLC from clk at the time given by at(i).
func logLosses(t *testing.T, a, b *Store, clk *wallClock, prefix string, n int, at func(i int) time.Time) {
	t.Helper()
	for i := range n {
		clk.ms.Store(uint64(at(i).UnixMilli()))
		key := fmt.Sprintf("%s%d", prefix, i)
		ev := mustWrite(t, b, WriteOp{Key: key, Value: []byte("b")}).Event
		mustWrite(t, a, WriteOp{Key: key, Value: []byte("a")})
		if _, err := a.Apply(context.Background(), []*event.Event{ev}, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConflictRetention: logged entries older than the retention are
// pruned and newer ones stay; an open record (the record resolver) stays
// however old; the count bound prunes the oldest first; the stats count
// what the log holds and what went.
func TestConflictRetention(t *testing.T) {
	fs := vfs.NewMem()
	res := rules(t, resolve.LWW(), resolve.Rule{Prefix: "doc/", Resolver: resolve.Record()})
	clk := &wallClock{}
	a := openMem(t, fs, "dc1", Options{Resolvers: res, Clock: clk, ConflictRetention: time.Hour, ConflictMaxEntries: 8})
	b := openMem(t, fs, "dc2", Options{Resolvers: res, Clock: clk})
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

	logLosses(t, a, b, clk, "old/", 5, func(i int) time.Time { return now.Add(-3 * time.Hour).Add(time.Duration(i) * time.Minute) })
	logLosses(t, a, b, clk, "doc/", 1, func(int) time.Time { return now.Add(-5 * time.Hour) })
	logLosses(t, a, b, clk, "new/", 10, func(i int) time.Time { return now.Add(-30 * time.Minute).Add(time.Duration(i) * time.Second) })

	count := func(prefix, status string) int {
		cs, err := a.Conflicts(ConflictFilter{KeyPrefix: prefix, Status: status})
		if err != nil {
			t.Fatal(err)
		}
		return len(cs)
	}
	if got := count("old/", StatusLogged) + count("new/", StatusLogged); got != 15 {
		t.Fatalf("before pruning: %d logged entries, want 15", got)
	}
	if st := a.Stats(); st.ConflictsHeld != 15 {
		t.Fatalf("ConflictsHeld %d before pruning, want 15 (the open record is not prunable)", st.ConflictsHeld)
	}
	n, err := a.PruneConflicts(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	// 5 are older than an hour; of the 10 new ones the 2 oldest exceed the
	// bound of 8.
	if n != 7 || count("old/", "") != 0 || count("new/", "") != 8 || count("doc/", StatusOpen) != 1 {
		t.Fatalf("pruned %d; left old/ %d, new/ %d, open doc/ %d; want 7 pruned, 0, 8, 1",
			n, count("old/", ""), count("new/", ""), count("doc/", StatusOpen))
	}
	cs, _ := a.Conflicts(ConflictFilter{KeyPrefix: "new/"})
	for _, c := range cs {
		if c.Key == "new/0" || c.Key == "new/1" {
			t.Errorf("the count bound kept %s, one of the two oldest", c.Key)
		}
	}
	if st := a.Stats(); st.ConflictsHeld != 8 || st.ConflictsPruned != 7 {
		t.Fatalf("stats after pruning: held %d pruned %d, want 8 and 7", st.ConflictsHeld, st.ConflictsPruned)
	}
	if n, err := a.PruneConflicts(context.Background(), now); err != nil || n != 0 {
		t.Fatalf("a second prune deleted %d (%v), want 0", n, err)
	}
}

// TestConflictIndexBuiltAtOpen: a store written before the age index
// existed (no index, no marker) is indexed at open, and then pruned like
// any other.
func TestConflictIndexBuiltAtOpen(t *testing.T) {
	fs := vfs.NewMem()
	res := rules(t, resolve.LWW())
	clk := &wallClock{}
	a, err := Open("/old", Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 2, FS: fs, Clock: clk, Resolvers: res})
	if err != nil {
		t.Fatal(err)
	}
	b := openMem(t, fs, "dc2", Options{DCs: []string{"dc1", "dc2"}, Partitions: 2, Resolvers: res, Clock: clk})
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	logLosses(t, a, b, clk, "k", 6, func(i int) time.Time { return now.Add(-time.Duration(i) * time.Hour) })
	// Take the store back to the format without the index.
	wipe := a.db.NewBatch()
	if err := wipe.DeleteRange([]byte{pfxConflictAge}, []byte{pfxConflictAge + 1}, nil); err != nil {
		t.Fatal(err)
	}
	if err := wipe.Delete(metaKey(metaConflictIx), nil); err != nil {
		t.Fatal(err)
	}
	if err := wipe.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a, err = Open("/old", Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 2, FS: fs, Clock: clk, Resolvers: res,
		ConflictRetention: 150 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if st := a.Stats(); st.ConflictsHeld != 6 {
		t.Fatalf("after reopening: %d entries indexed, want 6", st.ConflictsHeld)
	}
	n, err := a.PruneConflicts(context.Background(), now)
	if err != nil || n != 3 {
		t.Fatalf("pruned %d (%v), want the 3 entries 3, 4 and 5 hours old", n, err)
	}
}

// TestConflictPruneLoop: with a retention set the store prunes on its own.
func TestConflictPruneLoop(t *testing.T) {
	fs := vfs.NewMem()
	res := rules(t, resolve.LWW())
	clk := &wallClock{}
	a := openMem(t, fs, "dc1", Options{Resolvers: res, Clock: clk, ConflictRetention: time.Hour, ConflictPruneEvery: 10 * time.Millisecond})
	b := openMem(t, fs, "dc2", Options{Resolvers: res, Clock: clk})
	logLosses(t, a, b, clk, "k", 3, func(int) time.Time { return time.Now().Add(-2 * time.Hour) })
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(10 * time.Second); a.Stats().ConflictsPruned < 3; <-tick.C {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s the prune loop deleted %d of 3 expired entries", a.Stats().ConflictsPruned)
		}
	}
	if cs, _ := a.Conflicts(ConflictFilter{}); len(cs) != 0 {
		t.Fatalf("%d entries left", len(cs))
	}
}
