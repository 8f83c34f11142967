package changelog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// snapshotWorld builds three DCs that wrote, deleted, conflicted, applied
// each other's events and purged some tombstones.
func snapshotWorld(t *testing.T) *aeWorld {
	w := newWorld(t, "dc1", "dc2", "dc3")
	for i := range 40 {
		dc := fmt.Sprintf("dc%d", i%3+1)
		w.put(dc, fmt.Sprintf("k%02d", i%17), fmt.Sprintf("v%d", i), i%4 == 0)
	}
	for _, n := range w.names() {
		w.deliver(n)
	}
	w.del("dc1", "k01")
	w.del("dc2", "k02")
	for _, n := range w.names() {
		w.deliver(n)
	}
	w.purge()
	w.del("dc3", "k03") // a tombstone that is not purged yet
	w.put("dc2", "k04", "concurrent-a", true)
	w.put("dc3", "k04", "concurrent-b", true)
	for _, n := range w.names() {
		w.deliver(n)
	}
	return w
}

// chunks returns a next function over sn's chunks of maxBytes.
func chunks(sn *Snapshot, maxBytes int) func(context.Context) (SnapshotChunk, error) {
	cursor := ""
	return func(context.Context) (SnapshotChunk, error) {
		c, err := sn.Read(cursor, maxBytes)
		cursor = c.Next
		return c, err
	}
}

func purgeFrontiers(s *Store) []vclock.VV {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]vclock.VV, len(s.mu.purged))
	for i, vv := range s.mu.purged {
		out[i] = vv.Clone()
	}
	return out
}

func TestSnapshotRoundTrip(t *testing.T) {
	w := snapshotWorld(t)
	src := w.store("dc1")
	if fs := purgeFrontiers(src); slices.IndexFunc(fs, func(vv vclock.VV) bool { return len(vv) > 0 }) < 0 {
		t.Fatal("the scenario purged nothing; the test would not check purge frontiers")
	}
	sn, err := src.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	want, err := src.Digest()
	if err != nil {
		t.Fatal(err)
	}
	wantApplied := src.Applied()
	// A write after the snapshot is not in it.
	late := w.put("dc1", "late", "after the snapshot", true)

	for _, tc := range []struct {
		name     string
		dc       string
		dcs      []string
		maxBytes int
	}{
		{"new dc4, tiny chunks", "dc4", []string{"dc1", "dc2", "dc3", "dc4"}, 64},
		{"restored dc2, one chunk", "dc2", []string{"dc1", "dc2", "dc3"}, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := openMem(t, vfs.NewMem(), tc.dc, Options{DCs: tc.dcs, Partitions: 2})
			st, err := dst.Import(context.Background(), sn.Header(), chunks(sn, tc.maxBytes))
			if err != nil {
				t.Fatal(err)
			}
			got, err := dst.Digest()
			if err != nil {
				t.Fatal(err)
			}
			if got.Hex() != want.Hex() || st.Digest != want.Hex() || st.Keys != want.Keys || got.Keys != want.Keys {
				t.Fatalf("digest after import %s (%d keys, stats %+v), want %s (%d keys)", got.Hex(), got.Keys, st, want.Hex(), want.Keys)
			}
			if tc.maxBytes < 100 && st.Chunks < want.Keys/2 {
				t.Errorf("%d chunks for %d keys of at most %d bytes", st.Chunks, want.Keys, tc.maxBytes)
			}
			// The applied vector is the peer's: its row of the joiner
			// becomes the joiner's own sequences.
			gotApplied := dst.Applied()
			for o, row := range wantApplied {
				if !slices.Equal(gotApplied[o], row) {
					t.Errorf("applied[%s] = %v, want %v", o, gotApplied[o], row)
				}
			}
			if !slices.EqualFunc(purgeFrontiers(dst), purgeFrontiers(src), vclock.VV.Equal) {
				t.Errorf("purge frontiers %v, want %v", purgeFrontiers(dst), purgeFrontiers(src))
			}
			if _, ok, _ := dst.JoinIncomplete(); ok {
				t.Error("the join marker is still there")
			}
			// Catch-up: every event the snapshot covered is a duplicate;
			// the later one applies, once.
			var evs []*event.Event
			for _, ev := range w.evs {
				if ev.Origin != tc.dc && ev != late {
					evs = append(evs, ev)
				}
			}
			res, err := dst.Apply(context.Background(), append(evs, late), nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range res[:len(evs)] {
				if r.Outcome != Duplicate {
					t.Fatalf("event %s covered by the snapshot: outcome %s, want duplicate", evs[i].Dot, r.Outcome)
				}
			}
			if r := res[len(evs)]; r.Outcome != Changed {
				t.Fatalf("the event after the snapshot: outcome %s, want changed", r.Outcome)
			}
			// The joiner's next write never reuses one of its old dots.
			ev := mustWrite(t, dst, WriteOp{Key: "k04", Value: []byte("after join")}).Event
			for _, old := range w.evs {
				if old.Dot == ev.Dot {
					t.Fatalf("the joiner reissued dot %s", ev.Dot)
				}
			}
		})
	}
}

func TestImportRefusesNonEmptyStore(t *testing.T) {
	w := snapshotWorld(t)
	sn, err := w.store("dc1").NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	before, _ := w.store("dc2").Digest()
	_, err = w.store("dc2").Import(context.Background(), sn.Header(), chunks(sn, 1<<20))
	if !errors.Is(err, ErrNotEmpty) || !strings.Contains(err.Error(), "keys") {
		t.Fatalf("import into a store with keys: %v, want ErrNotEmpty naming what it holds", err)
	}
	if after, _ := w.store("dc2").Digest(); after.Hex() != before.Hex() {
		t.Fatal("a refused import changed the store")
	}
}

func TestImportBadInputLeavesStoreEmpty(t *testing.T) {
	w := snapshotWorld(t)
	sn, err := w.store("dc1").NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	good := sn.Header()
	for _, tc := range []struct {
		name string
		hdr  func(h SnapshotHeader) SnapshotHeader
		next func(context.Context) (SnapshotChunk, error)
		want string
	}{
		{
			name: "corrupt msgpack in the second chunk",
			next: func() func(context.Context) (SnapshotChunk, error) {
				n := 0
				inner := chunks(sn, 64)
				return func(ctx context.Context) (SnapshotChunk, error) {
					c, err := inner(ctx)
					if n++; n == 2 {
						c.Entries[0].State = []byte{0xc1, 0xff, 0x00}
					}
					return c, err
				}
			}(),
			want: "decode key state",
		},
		{
			name: "keys out of order",
			next: func(context.Context) (SnapshotChunk, error) {
				return SnapshotChunk{Entries: []SnapshotEntry{{Key: "b", State: mustEncode(t, "dc1", 1)}, {Key: "a", State: mustEncode(t, "dc1", 2)}}, Done: true}, nil
			},
			want: "out of order",
		},
		{
			name: "a state naming an unknown DC",
			next: func(context.Context) (SnapshotChunk, error) {
				return SnapshotChunk{Entries: []SnapshotEntry{{Key: "a", State: mustEncode(t, "mars", 1)}}, Done: true}, nil
			},
			want: `"mars"`,
		},
		{
			name: "the stream breaks",
			next: func(context.Context) (SnapshotChunk, error) { return SnapshotChunk{}, errors.New("session expired") },
			want: "session expired",
		},
		{
			name: "a digest that does not match",
			hdr:  func(h SnapshotHeader) SnapshotHeader { h.Digest = strings.Repeat("0", 64); return h },
			next: chunks(sn, 1<<20),
			want: "digest",
		},
		{
			name: "another partition count",
			hdr:  func(h SnapshotHeader) SnapshotHeader { h.Partitions = 3; return h },
			next: chunks(sn, 1<<20),
			want: "partition count",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := openMem(t, vfs.NewMem(), "dc4", Options{DCs: []string{"dc1", "dc2", "dc3", "dc4"}, Partitions: 2})
			h := good
			if tc.hdr != nil {
				h = tc.hdr(h)
			}
			_, err := dst.Import(context.Background(), h, tc.next)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("import: %v, want an error saying %q", err, tc.want)
			}
			if err := dst.CheckEmpty(); err != nil {
				t.Fatalf("after a failed import: %v", err)
			}
			if d, _ := dst.Digest(); d.Keys != 0 {
				t.Fatalf("%d keys left after a failed import", d.Keys)
			}
			if a := dst.Applied(); len(a) != 1 {
				t.Fatalf("applied vector after a failed import: %v", a)
			}
		})
	}
}

func TestInterruptedImportIsReported(t *testing.T) {
	w := snapshotWorld(t)
	sn, err := w.store("dc1").NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	dst := openMem(t, vfs.NewMem(), "dc4", Options{DCs: []string{"dc1", "dc2", "dc3", "dc4"}, Partitions: 2})
	im := &importer{s: dst, hdr: sn.Header()}
	if err := im.begin(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, err := sn.Read("", 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := im.add(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	// The process dies here.
	if peer, ok, err := dst.JoinIncomplete(); err != nil || !ok || peer != "dc1" {
		t.Fatalf("JoinIncomplete = %q, %t, %v; want dc1, true", peer, ok, err)
	}
	if err := dst.CheckEmpty(); !errors.Is(err, ErrNotEmpty) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("CheckEmpty after an interrupted import: %v", err)
	}
}

func mustEncode(t *testing.T, dc string, n uint64) []byte {
	t.Helper()
	d := vclock.Dot{DC: dc, N: n}
	st := dvv.State{Clock: vclock.VV{dc: n}, Siblings: []dvv.Sibling{{Dot: d, Version: dvv.Version{Value: []byte("x")}}}}
	b, err := EncodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
