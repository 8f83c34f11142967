package changelog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// readAll reads the whole durable feed after since, in small pages.
func readAll(t testing.TB, s *Store, since uint64, prefix string) []FeedEntry {
	return readPages(t, s, since, prefix, 7)
}

// readPages reads the whole durable feed after since, limit entries a page.
func readPages(t testing.TB, s *Store, since uint64, prefix string, limit int) []FeedEntry {
	t.Helper()
	var out []FeedEntry
	for {
		page, err := s.ReadFeed(FeedQuery{Since: since, Prefix: prefix, Limit: limit})
		if err != nil {
			t.Fatalf("read the feed after %d: %v", since, err)
		}
		out = append(out, page.Entries...)
		if page.Next < since {
			t.Fatalf("the page after %d says continue after %d", since, page.Next)
		}
		since = page.Next
		if !page.More {
			return out
		}
	}
}

// encoded is st in its stored form, for comparisons.
func encoded(t testing.TB, st dvv.State) string {
	t.Helper()
	b, err := encodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestFeedRecordsEveryChange (invariant 15 in docs/DESIGN.md): each change
// the store makes, whatever made it, gets the next cursor and an entry with
// the key, op, origin, dot, HLC and the key's state after it; a remote
// event that changes nothing (obsolete, duplicate, past a gap) gets none.
func TestFeedRecordsEveryChange(t *testing.T) {
	ctx := context.Background()
	now := time.UnixMilli(1_700_000_000_123)
	s := openMem(t, vfs.NewMem(), "dc1", Options{Now: func() time.Time { return now }})
	dc2 := openMem(t, vfs.NewMem(), "dc2", Options{})

	type want struct {
		key, op, origin, dot string
		hlc                  uint64
	}
	var wants []want
	last := uint64(0)
	// check reads the feed after the last check and compares it with the
	// changes expected since, and every entry's state with the store's.
	check := func(step string) {
		t.Helper()
		got := readAll(t, s, last, "")
		if len(got) != len(wants) {
			t.Fatalf("%s: %d new feed entries, want %d: %+v", step, len(got), len(wants), got)
		}
		for i, e := range got {
			w := wants[i]
			if e.Cursor != last+1 {
				t.Fatalf("%s: entry %d has cursor %d, want %d (consecutive)", step, i, e.Cursor, last+1)
			}
			last = e.Cursor
			dot := e.Dot.String()
			if e.Dot == (vclock.Dot{}) {
				dot = ""
			}
			if e.Key != w.key || e.Op.String() != w.op || e.Origin != w.origin || dot != w.dot || (w.hlc != 0 && e.HLC != w.hlc) {
				t.Fatalf("%s: entry %d is %s %s from %s dot %s hlc %d; want %+v", step, i, e.Key, e.Op, e.Origin, e.Dot, e.HLC, w)
			}
			if !e.Time.Equal(now) {
				t.Fatalf("%s: entry %d committed at %s, want %s", step, i, e.Time, now)
			}
		}
		// The last entry of each key shows the key's state now.
		lastOf := map[string]FeedEntry{}
		for _, e := range got {
			lastOf[e.Key] = e
		}
		for k, e := range lastOf {
			st, _, err := s.Get(k)
			if err != nil {
				t.Fatal(err)
			}
			if st.Clock == nil {
				st.Clock = vclock.VV{}
			}
			if encoded(t, e.State) != encoded(t, st) {
				t.Fatalf("%s: the feed shows %s as %v after cursor %d, the store %v", step, k, e.State, e.Cursor, st)
			}
		}
		wants = nil
	}

	w1 := mustWrite(t, s, WriteOp{Key: "a", Value: []byte("1")})
	w2 := mustWrite(t, s, WriteOp{Key: "a", Delete: true, Context: w1.State.Clock})
	w3 := mustWrite(t, s, WriteOp{Key: "b", Value: []byte("x"), Resolve: true})
	wants = append(wants, want{"a", "put", "dc1", w1.Event.Dot.String(), w1.Event.HLC},
		want{"a", "delete", "dc1", w2.Event.Dot.String(), w2.Event.HLC},
		want{"b", "resolve", "dc1", w3.Event.Dot.String(), w3.Event.HLC})
	check("local writes")

	tx, err := s.WriteTxn(ctx, putOps("t1", "t2", "t3"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range tx {
		wants = append(wants, want{r.Event.Key, "put", "dc1", r.Event.Dot.String(), r.Event.HLC})
	}
	check("a transaction: one entry per op, in op order")

	r1 := mustWrite(t, dc2, WriteOp{Key: "r", Value: []byte("from dc2")})
	r2 := mustWrite(t, dc2, WriteOp{Key: "r", Value: []byte("again"), Context: r1.State.Clock})
	// r2 first: past a gap, nothing changes; then both, r2 now in order.
	if _, err := s.Apply(ctx, []*event.Event{r2.Event}, nil); err != nil {
		t.Fatal(err)
	}
	check("an event past a gap")
	if _, err := s.Apply(ctx, []*event.Event{r1.Event, r2.Event, r1.Event}, nil); err != nil {
		t.Fatal(err)
	}
	wants = append(wants, want{"r", "put", "dc2", r1.Event.Dot.String(), r1.Event.HLC}, want{"r", "put", "dc2", r2.Event.Dot.String(), r2.Event.HLC})
	check("remote events, then a duplicate")

	// An obsolete event: dc3's write that a later dc3 write superseded
	// arrives after a merge took the later one.
	dc3 := openMem(t, vfs.NewMem(), "dc3", Options{})
	o1 := mustWrite(t, dc3, WriteOp{Key: "o", Value: []byte("old")})
	mustWrite(t, dc3, WriteOp{Key: "o", Value: []byte("new"), Context: o1.State.Clock})
	know, raw, err := dc3.Export([]string{"o"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := DecodeState(raw["o"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.MergeStates(ctx, map[string]dvv.State{"o": st}, know); err != nil {
		t.Fatal(err)
	}
	wants = append(wants, want{key: "o", op: "put", origin: "dc3", dot: ""})
	check("an anti-entropy merge: no dot, the peer as origin")
	if res, err := s.Apply(ctx, []*event.Event{o1.Event}, nil); err != nil || res[0].Outcome != Obsolete {
		t.Fatalf("apply the superseded event: %v, %v; want obsolete", res, err)
	}
	check("an obsolete event")

	if oldest, lastC, held := s.FeedBounds(); oldest != 1 || lastC != last || held <= 0 {
		t.Fatalf("FeedBounds = %d, %d, %d; want 1, %d and the bytes held", oldest, lastC, held, last)
	}
}

// TestFeedTxnConsecutive: under concurrent writers, each transaction's ops
// take consecutive cursors, in op order, never interleaved with another
// change; and every cursor from 1 to the last is used once.
func TestFeedTxnConsecutive(t *testing.T) {
	s := openMem(t, vfs.NewMem(), "dc1", Options{Partitions: 8})
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				if w%2 == 0 {
					keys := []string{fmt.Sprintf("tx/%d/%d/a", w, i), fmt.Sprintf("tx/%d/%d/b", w, i), fmt.Sprintf("tx/%d/%d/c", w, i)}
					if _, err := s.WriteTxn(context.Background(), putOps(keys...)); err != nil {
						t.Error(err)
						return
					}
					continue
				}
				if _, err := s.Write(context.Background(), WriteOp{Key: fmt.Sprintf("one/%d/%d", w, i), Value: []byte("v")}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	all := readAll(t, s, 0, "")
	if len(all) != 3*40*3+3*40 {
		t.Fatalf("%d entries, want %d", len(all), 3*40*3+3*40)
	}
	for i, e := range all {
		if e.Cursor != uint64(i+1) {
			t.Fatalf("entry %d has cursor %d, want %d", i, e.Cursor, i+1)
		}
		if bytes.HasSuffix([]byte(e.Key), []byte("/a")) {
			base := e.Key[:len(e.Key)-1]
			if i+2 >= len(all) || all[i+1].Key != base+"b" || all[i+2].Key != base+"c" || all[i+1].HLC != e.HLC || all[i+2].HLC != e.HLC {
				t.Fatalf("transaction %s: its ops are not at consecutive cursors %d..%d", base, e.Cursor, e.Cursor+2)
			}
		}
	}
}

// TestFeedCrashImage (invariant 15 in docs/DESIGN.md): a crash image, with
// any share of what was not synced, never holds a change without its feed
// entry or an entry without its change: folding the feed's entries key by
// key gives exactly the stored states, and the cursors run from 1 to the
// persisted counter without a hole. Every cursor a reader could read before
// the crash is in the image: a reader never sees a cursor a crash can give
// to another change.
func TestFeedCrashImage(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { feedCrashOnce(t, seed) })
	}
}

func feedCrashOnce(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 2))
	fs := vfs.NewCrashableMem()
	opts := Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 4, FS: fs, Clock: &counterClock{}}
	s, err := Open("/db", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var writes atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := 0; ctx.Err() == nil && writes.Load() < 700; i++ {
				k := fmt.Sprintf("k%02d", r.IntN(40))
				var err error
				switch r.IntN(5) {
				case 0:
					_, err = s.WriteTxn(ctx, putOps(k, fmt.Sprintf("t%d-%d", w, i)))
				case 1:
					_, err = s.Write(ctx, WriteOp{Key: k, Delete: true})
				default:
					_, err = s.Write(ctx, WriteOp{Key: k, Value: []byte(fmt.Sprint(w, "-", i))})
				}
				if err != nil {
					return
				}
				writes.Add(1)
			}
		}()
	}
	for round := range 4 {
		// Let some writes through (writing too, so the wait ends), then
		// take an image.
		for writes.Load() < int64(150*(round+1)) {
			if _, err := s.Write(ctx, WriteOp{Key: "tick", Value: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
		_, readable, _ := s.FeedBounds()
		img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(100), RNG: rng})
		checkFeedImage(t, img, readable)
	}
	cancel()
	wg.Wait()
}

func checkFeedImage(t *testing.T, img *vfs.MemFS, readable uint64) {
	t.Helper()
	r, err := Open("/db", Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 4, FS: img, Clock: &counterClock{}})
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer r.Close()
	_, last, held := r.FeedBounds()
	if last < readable {
		t.Fatalf("readers could read cursors up to %d before the crash, but the image's feed ends at %d", readable, last)
	}
	entries := readPages(t, r, 0, "", 1000)
	fold := map[string]string{}
	var size int64
	for i, e := range entries {
		if e.Cursor != uint64(i+1) {
			t.Fatalf("entry %d of the image has cursor %d: a hole in the feed", i, e.Cursor)
		}
		if len(e.State.Siblings) == 0 {
			delete(fold, e.Key)
		} else {
			fold[e.Key] = encoded(t, e.State)
		}
		v, ok, err := r.get(feedKey(e.Cursor))
		if err != nil || !ok {
			t.Fatal(err)
		}
		size += int64(len(feedKey(e.Cursor)) + len(v))
	}
	if uint64(len(entries)) != last {
		t.Fatalf("the image holds %d entries but its counter says %d", len(entries), last)
	}
	if size != held {
		t.Fatalf("the image's entries take %d bytes, its counter says %d", size, held)
	}
	stored := map[string]string{}
	if err := r.Scan("", func(key string, st dvv.State) error {
		stored[key] = encoded(t, st)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for k, v := range stored {
		if fold[k] != v {
			t.Fatalf("key %s: stored state and the feed's last entry for it differ: a change without its entry", k)
		}
	}
	for k := range fold {
		if _, ok := stored[k]; !ok {
			t.Fatalf("key %s: the feed shows a state the store does not hold: an entry without its change", k)
		}
	}
}

// TestFeedRetention: the pruner deletes entries older than the retention,
// and the oldest past the size bound, records the lowest cursor kept, and
// keeps the byte count exact; a read after a pruned cursor is refused with
// FeedGoneError (HTTP 410), one right at the edge is not, and both survive
// a reopen.
func TestFeedRetention(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	var nowMs atomic.Int64
	nowMs.Store(1_000_000)
	clock := func() time.Time { return time.UnixMilli(nowMs.Load()) }
	opts := Options{Now: clock, FeedRetention: time.Hour, FeedPruneEvery: time.Hour}
	s := openMem(t, fs, "dc1", opts)
	for i := range 10 {
		mustWrite(t, s, WriteOp{Key: fmt.Sprint("old/", i), Value: []byte("v")})
	}
	nowMs.Add(int64(30 * time.Minute / time.Millisecond))
	for i := range 5 {
		mustWrite(t, s, WriteOp{Key: fmt.Sprint("new/", i), Value: []byte("v")})
	}
	if n, err := s.PruneFeed(ctx, clock()); err != nil || n != 0 {
		t.Fatalf("prune within the retention: %d, %v; want nothing", n, err)
	}
	nowMs.Add(int64(31 * time.Minute / time.Millisecond))
	if n, err := s.PruneFeed(ctx, clock()); err != nil || n != 10 {
		t.Fatalf("prune after an hour: %d, %v; want the 10 old entries", n, err)
	}
	checkRetained := func(s *Store, low uint64) {
		t.Helper()
		oldest, last, held := s.FeedBounds()
		if oldest != low || last != 15 {
			t.Fatalf("bounds %d..%d, want %d..15", oldest, last, low)
		}
		var size int64
		for _, e := range readAll(t, s, 0, "") {
			v, _, _ := s.get(feedKey(e.Cursor))
			size += int64(9 + len(v))
		}
		if size != held {
			t.Fatalf("the feed holds %d bytes, its counter says %d", size, held)
		}
		for since := uint64(1); since < low-1; since++ {
			_, err := s.ReadFeed(FeedQuery{Since: since})
			var gone *FeedGoneError
			if !errors.As(err, &gone) || gone.Oldest != low || !errors.Is(err, ErrFeedGone) {
				t.Fatalf("read after pruned cursor %d: %v; want FeedGoneError naming %d", since, err, low)
			}
		}
		if got := readAll(t, s, low-1, ""); len(got) != int(16-low) || got[0].Cursor != low {
			t.Fatalf("read right at the edge (after %d): %d entries, want %d from %d", low-1, len(got), 16-low, low)
		}
		if got := readAll(t, s, 0, ""); len(got) == 0 || got[0].Cursor != low {
			t.Fatalf("read from 0: %v, want the oldest retained, %d", got, low)
		}
		if _, err := s.ReadFeed(FeedQuery{Since: 16}); !errors.Is(err, ErrFeedGone) {
			t.Fatalf("read after a cursor ahead of the feed: %v, want ErrFeedGone", err)
		}
	}
	checkRetained(s, 11)
	s.Close()
	s = openMem(t, fs, "dc1", opts)
	checkRetained(s, 11)

	// The size bound: the oldest go first until the rest fits.
	_, _, held := s.FeedBounds()
	per := held / 5
	s.Close()
	opts.FeedMaxBytes = 2*per + per/2
	s = openMem(t, fs, "dc1", opts)
	if n, err := s.PruneFeed(ctx, clock()); err != nil || n != 3 {
		t.Fatalf("prune to %d bytes: %d, %v; want 3 entries", opts.FeedMaxBytes, n, err)
	}
	checkRetained(s, 14)

	// Everything pruned: the feed is empty, its last cursor stays, and a
	// reader at that cursor carries on with the next change.
	nowMs.Add(int64(2 * time.Hour / time.Millisecond))
	if _, err := s.PruneFeed(ctx, clock()); err != nil {
		t.Fatal(err)
	}
	if oldest, last, held := s.FeedBounds(); oldest != 16 || last != 15 || held != 0 {
		t.Fatalf("empty feed: bounds %d..%d, %d bytes; want 16..15 and 0", oldest, last, held)
	}
	if _, err := s.ReadFeed(FeedQuery{Since: 14}); !errors.Is(err, ErrFeedGone) {
		t.Fatalf("read after 14 with 15 pruned: %v, want ErrFeedGone", err)
	}
	mustWrite(t, s, WriteOp{Key: "later", Value: []byte("v")})
	if got := readAll(t, s, 15, ""); len(got) != 1 || got[0].Cursor != 16 || got[0].Key != "later" {
		t.Fatalf("after 15: %+v, want cursor 16 for later", got)
	}
}

// TestFeedPrunerRuns: the store's own pruner keeps the feed under its size
// bound as writes go on, woken by the commits that take it over.
func TestFeedPrunerRuns(t *testing.T) {
	s := openMem(t, vfs.NewMem(), "dc1", Options{FeedMaxBytes: 4 << 10, FeedPruneEvery: time.Hour})
	for i := range 400 {
		mustWrite(t, s, WriteOp{Key: fmt.Sprint("k", i), Value: bytes.Repeat([]byte("x"), 100)})
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		oldest, last, held := s.FeedBounds()
		if held <= 4<<10 && oldest > 1 {
			if last != 400 {
				t.Fatalf("last cursor %d, want 400", last)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the feed holds %d bytes (cursors %d..%d) 10s after the writes, over its 4 KiB bound", held, oldest, last)
		}
		select {
		case <-s.FeedSignal():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestFeedSnapshotThenFollow (invariant 15 in docs/DESIGN.md): a read view's
// states are exactly the changes up to its cursor, so a mirror that copies
// the view and then applies the feed after the cursor ends equal to the
// store, with writes going on all along, even when retention has pruned
// everything up to the view's cursor (the retention edge).
func TestFeedSnapshotThenFollow(t *testing.T) {
	ctx := context.Background()
	var nowMs atomic.Int64
	nowMs.Store(1_000_000)
	clock := func() time.Time { return time.UnixMilli(nowMs.Load()) }
	s := openMem(t, vfs.NewMem(), "dc1", Options{Now: clock, FeedRetention: time.Minute, FeedPruneEvery: time.Hour})
	for i := range 50 {
		mustWrite(t, s, WriteOp{Key: fmt.Sprint("m/", i%20), Value: []byte(fmt.Sprint(i))})
	}
	writeMore := func(n int, seed uint64) {
		r := rand.New(rand.NewPCG(seed, 3))
		for i := range n {
			k := fmt.Sprint("m/", r.IntN(25))
			if r.IntN(4) == 0 {
				mustWrite(t, s, WriteOp{Key: k, Delete: true})
			} else {
				mustWrite(t, s, WriteOp{Key: k, Value: []byte(fmt.Sprint(seed, "-", i))})
			}
		}
	}
	for round := range 3 {
		// Prune everything up to now: the view's cursor is the edge.
		nowMs.Add(int64(2 * time.Minute / time.Millisecond))
		if _, err := s.PruneFeed(ctx, clock()); err != nil {
			t.Fatal(err)
		}
		var done sync.WaitGroup
		done.Add(1)
		go func() {
			defer done.Done()
			writeMore(100, uint64(round))
		}()
		v, err := s.NewReadView()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.WaitFeed(ctx, v.Cursor()); err != nil {
			t.Fatal(err)
		}
		mirror := map[string]string{}
		if err := v.Scan("m/", "", func(key string, st dvv.State) error {
			mirror[key] = encoded(t, st)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		cursor := v.Cursor()
		v.Close()
		done.Wait()
		for _, e := range readAll(t, s, cursor, "m/") {
			if e.Cursor <= cursor {
				t.Fatalf("round %d: the feed after %d gave cursor %d", round, cursor, e.Cursor)
			}
			if len(e.State.Siblings) == 0 {
				delete(mirror, e.Key)
			} else {
				mirror[e.Key] = encoded(t, e.State)
			}
		}
		want := map[string]string{}
		if err := s.Scan("m/", func(key string, st dvv.State) error {
			want[key] = encoded(t, st)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(want) != len(mirror) {
			t.Fatalf("round %d: the mirror holds %d keys, the store %d", round, len(mirror), len(want))
		}
		for k, st := range want {
			if mirror[k] != st {
				t.Fatalf("round %d: key %s differs between the mirror built from the view at %d and the store", round, k, cursor)
			}
		}
	}
}

// TestFeedQuery: prefix, limit, byte and Until bounds, and Next moving
// past filtered changes.
func TestFeedQuery(t *testing.T) {
	s := openMem(t, vfs.NewMem(), "dc1", Options{})
	for i := range 30 {
		p := "a/"
		if i%3 == 0 {
			p = "b/"
		}
		mustWrite(t, s, WriteOp{Key: fmt.Sprint(p, i), Value: bytes.Repeat([]byte("v"), 200)})
	}
	cursors := func(es []FeedEntry) []uint64 {
		var out []uint64
		for _, e := range es {
			out = append(out, e.Cursor)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		q    FeedQuery
		want []uint64
		next uint64
		more bool
	}{
		{"limit", FeedQuery{Limit: 3}, []uint64{1, 2, 3}, 3, true},
		{"since and limit", FeedQuery{Since: 28, Limit: 5}, []uint64{29, 30}, 30, false},
		{"prefix", FeedQuery{Prefix: "b/", Limit: 3}, []uint64{1, 4, 7}, 7, true},
		{"prefix to the end", FeedQuery{Since: 25, Prefix: "b/"}, []uint64{28}, 30, false},
		{"prefix matching nothing moves Next", FeedQuery{Since: 3, Prefix: "zzz"}, nil, 30, false},
		{"until", FeedQuery{Since: 10, Until: 12}, []uint64{11, 12}, 12, false},
		{"bytes: at least one", FeedQuery{Since: 5, MaxBytes: 1}, []uint64{6}, 6, true},
		{"at the end", FeedQuery{Since: 30}, nil, 30, false},
	} {
		page, err := s.ReadFeed(tc.q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := cursors(page.Entries); !slices.Equal(got, tc.want) || page.Next != tc.next || page.More != tc.more {
			t.Errorf("%s: cursors %v next %d more %v; want %v, %d, %v", tc.name, got, page.Next, page.More, tc.want, tc.next, tc.more)
		}
	}
}

// TestFeedEntryDecode: every truncation of an entry is an error, never a
// panic, and the entry round-trips.
func TestFeedEntryDecode(t *testing.T) {
	c := Change{Key: "k/é", Op: event.OpResolve, Origin: "dc2", Dot: vclock.Dot{DC: "dc2", N: 300}, HLC: 1 << 40,
		State: dvv.State{Clock: vclock.VV{"dc2": 300}, Siblings: []dvv.Sibling{{Dot: vclock.Dot{DC: "dc2", N: 300}, Version: dvv.Version{Value: []byte("v"), HLC: 1 << 40}}}}}
	b := appendFeedEntry(nil, 12345, &c, []byte(encoded(t, c.State)))
	e, err := decodeFeedEntry(9, b)
	if err != nil {
		t.Fatal(err)
	}
	if e.Cursor != 9 || e.Key != c.Key || e.Op != c.Op || e.Origin != c.Origin || e.Dot != c.Dot || e.HLC != c.HLC || e.Time.UnixMilli() != 12345 || encoded(t, e.State) != encoded(t, c.State) {
		t.Fatalf("round trip: %+v, want %+v", e, c)
	}
	for i := range len(b) - 1 {
		if _, err := decodeFeedEntry(9, b[:i]); err == nil {
			t.Fatalf("an entry cut at byte %d of %d decoded", i, len(b))
		}
	}
}

// TestFeedAfterFailure: once a WAL sync fails, the failed batch's entries
// are never readable, waiting readers wake, and reads answer ErrFailed.
func TestFeedAfterFailure(t *testing.T) {
	mem := vfs.NewCrashableMem()
	tog, inj := walFaults()
	s := openMem(t, errorfs.Wrap(mem, inj), "dc1", Options{OnFatal: func(error) {}})
	mustWrite(t, s, WriteOp{Key: "durable", Value: []byte("1")})
	wake := s.FeedSignal()
	tog.On()
	if _, err := s.Write(context.Background(), WriteOp{Key: "lost", Value: []byte("2")}); !errors.Is(err, ErrFailed) {
		t.Fatalf("write: %v, want ErrFailed", err)
	}
	tog.Off()
	select {
	case <-wake:
	case <-time.After(10 * time.Second):
		t.Fatal("a reader waiting for the feed was not woken by the failure")
	}
	if _, last, _ := s.FeedBounds(); last != 1 {
		t.Fatalf("the feed's readable end moved to %d with the failed batch, want 1", last)
	}
	if _, err := s.ReadFeed(FeedQuery{}); !errors.Is(err, ErrFailed) {
		t.Fatalf("read after the failure: %v, want ErrFailed", err)
	}
}

// TestFeedImportStartsOver: an import (join) leaves the feed empty with
// its counter kept, so a reader holding an earlier cursor is told to start
// from a snapshot rather than reading on as if nothing had happened.
func TestFeedImportStartsOver(t *testing.T) {
	ctx := context.Background()
	src := openMem(t, vfs.NewMem(), "dc1", Options{DCs: []string{"dc1", "dc2"}})
	for i := range 5 {
		mustWrite(t, src, WriteOp{Key: fmt.Sprint("k", i), Value: []byte("v")})
	}
	dst := openMem(t, vfs.NewMem(), "dc2", Options{DCs: []string{"dc1", "dc2"}})
	// Its own history: a write and a merge that removed the key again.
	mustWrite(t, dst, WriteOp{Key: "gone", Value: []byte("x")})
	if err := dst.do(ctx, func(tx *txn) error {
		tx.changes = append(tx.changes, Change{Key: "gone", State: dvv.State{Clock: vclock.VV{}}, Origin: "dc1", Op: event.OpDelete})
		return tx.deleteState("gone", dvv.State{})
	}); err != nil {
		t.Fatal(err)
	}
	if err := dst.do(ctx, func(tx *txn) error { return tx.delRange([]byte{pfxOutbox}, []byte{pfxOutbox + 1}) }); err != nil {
		t.Fatal(err)
	}
	snap, err := src.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	after := ""
	if _, err := dst.Import(ctx, snap.Header(), func(context.Context) (SnapshotChunk, error) {
		c, err := snap.Read(after, 1<<20)
		after = c.Next
		return c, err
	}); err != nil {
		t.Fatal(err)
	}
	if oldest, last, held := dst.FeedBounds(); oldest != 3 || last != 2 || held != 0 {
		t.Fatalf("after the import: bounds %d..%d, %d bytes; want an empty feed after cursor 2", oldest, last, held)
	}
	if _, err := dst.ReadFeed(FeedQuery{Since: 1}); !errors.Is(err, ErrFeedGone) {
		t.Fatalf("a reader at cursor 1 after the import: %v, want ErrFeedGone", err)
	}
	v, err := dst.NewReadView()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Cursor() != 2 {
		t.Fatalf("a view after the import has cursor %d, want 2", v.Cursor())
	}
}

// TestFeedPrefixIsItsOwn: the feed's key prefix holds no other record, so
// retention's range deletions touch nothing else.
func TestFeedPrefixIsItsOwn(t *testing.T) {
	for _, p := range []byte{pfxKey, pfxTomb, pfxSeq, pfxApplied, pfxOutbox, pfxOwn, pfxConflict, pfxPurged, pfxMeta, pfxLost, pfxFound, pfxConflictAge, pfxHome} {
		if p == pfxFeed {
			t.Fatalf("prefix %q is used twice", p)
		}
	}
	if k := feedKey(1 << 56); k[0] != pfxFeed || binary.BigEndian.Uint64(k[1:]) != 1<<56 {
		t.Fatalf("feedKey: %x", k)
	}
}

// TestFeedOff: a store opened with FeedOff writes no entries and refuses
// reads; its entries from before are dropped; turned on again, every
// cursor from before answers gone (the changes made while off have none),
// and new changes get cursors after them.
func TestFeedOff(t *testing.T) {
	fs := vfs.NewMem()
	open := func(off bool) *Store {
		return openMem(t, fs, "dc1", Options{DCs: []string{"dc1", "dc2"}, FeedOff: off})
	}
	feedKeys := func(s *Store) int {
		t.Helper()
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxFeed}, UpperBound: []byte{pfxFeed + 1}})
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		n := 0
		for it.First(); it.Valid(); it.Next() {
			n++
		}
		return n
	}
	s := open(false)
	for i := range 3 {
		mustWrite(t, s, WriteOp{Key: fmt.Sprint("on", i), Value: []byte("v")})
	}
	if got := len(readAll(t, s, 0, "")); got != 3 {
		t.Fatalf("the feed holds %d changes, want 3", got)
	}
	s.Close()

	s = open(true)
	if n := feedKeys(s); n != 0 {
		t.Fatalf("opened with the feed off, the store still holds %d feed entries", n)
	}
	for i := range 2 {
		mustWrite(t, s, WriteOp{Key: fmt.Sprint("off", i), Value: []byte("v")})
	}
	if n := feedKeys(s); n != 0 {
		t.Fatalf("with the feed off, writes made %d feed entries", n)
	}
	if _, err := s.ReadFeed(FeedQuery{}); !errors.Is(err, ErrFeedOff) {
		t.Fatalf("ReadFeed with the feed off: %v, want ErrFeedOff", err)
	}
	if err := s.WaitFeed(context.Background(), 1); !errors.Is(err, ErrFeedOff) {
		t.Fatalf("WaitFeed with the feed off: %v, want ErrFeedOff", err)
	}
	if st, ok, err := s.Get("off1"); err != nil || !ok || len(st.Siblings) != 1 {
		t.Fatalf("a write with the feed off reads back %v, %v", st, err)
	}
	oldest, last, _ := s.FeedBounds()
	s.Close()
	// A second start with the feed off moves nothing more.
	s = open(true)
	if o, l, _ := s.FeedBounds(); o != oldest || l != last {
		t.Fatalf("a second start off moved the bounds from %d..%d to %d..%d", oldest, last, o, l)
	}
	s.Close()

	s = open(false)
	for since := uint64(1); since <= 3; since++ {
		if _, err := s.ReadFeed(FeedQuery{Since: since}); !errors.Is(err, ErrFeedGone) {
			t.Fatalf("a reader at cursor %d from before the feed was off: %v, want ErrFeedGone (it missed the changes made while off)", since, err)
		}
	}
	_, last, _ = s.FeedBounds()
	mustWrite(t, s, WriteOp{Key: "back", Value: []byte("v")})
	got := readAll(t, s, last, "")
	if len(got) != 1 || got[0].Key != "back" || got[0].Cursor <= 3 {
		t.Fatalf("after the feed is on again: %+v, want the change of back, past cursor 3", got)
	}
	// Off a second time, then on: a reader at back's cursor missed what
	// was written while off, so it is gone too.
	s.Close()
	s = open(true)
	mustWrite(t, s, WriteOp{Key: "off-again", Value: []byte("v")})
	s.Close()
	s = open(false)
	defer s.Close()
	if _, err := s.ReadFeed(FeedQuery{Since: got[0].Cursor}); !errors.Is(err, ErrFeedGone) {
		t.Fatalf("a reader at cursor %d from before the feed was off again: %v, want ErrFeedGone", got[0].Cursor, err)
	}
}
