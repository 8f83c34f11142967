package changelog

import (
	"context"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestImportOwnSiblingAboveApplied: a peer that took one of the joiner's
// versions by anti-entropy (its stream had not delivered it yet, so its
// applied vector does not cover it) holds a sibling of the joiner above
// the joiner's applied row. The import must take it (it refused the peer's
// valid snapshot as bad input before: the sequence was raised only to the
// applied row), and the joiner's sequence goes above it.
func TestImportOwnSiblingAboveApplied(t *testing.T) {
	w := newWorld(t, "dc1", "dc2", "dc3")
	w.put("dc2", "x", "v", true) // dc2:1 in x's partition
	w.deliver("dc3")             // dc3 applies it; dc1 does not (yet)
	if st := pull(t, w.store("dc1"), w.store("dc3")); st.Taken == 0 {
		t.Fatalf("anti-entropy took nothing: %+v", st)
	}
	// dc1 holds dc2:1 by merge, without having applied it.
	sn, err := w.store("dc1").NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	t.Logf("dc1 applied[dc2] in the snapshot: %v", sn.Header().Applied["dc2"])
	// dc2 lost its data dir and joins from dc1.
	dst := openMem(t, vfs.NewMem(), "dc2", Options{DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 2})
	if _, err := dst.Import(context.Background(), sn.Header(), chunks(sn, 1<<20)); err != nil {
		t.Fatalf("join from a healthy peer refused: %v", err)
	}
}

// TestImportOwnDotInClockAboveApplied: the peer's key clock covers a
// joiner dot above its applied row (merged by anti-entropy, the version
// itself superseded). Before the fix the joiner's sequence stayed below
// it: a read-modify-write with the context read there was refused, and a
// blind write reissued the dot (only the bridge's resumeSequences, reading
// the joiner's own stream, stood between this and a lost write). The
// skipped own number is marked lost, so anti-entropy does not take this
// DC for knowing it.
func TestImportOwnDotInClockAboveApplied(t *testing.T) {
	w := newWorld(t, "dc1", "dc2", "dc3")
	old := w.put("dc2", "x", "v", true) // dc2:1
	w.deliver("dc3")
	w.put("dc3", "x", "over", false) // dc3's write covers dc2:1
	pull(t, w.store("dc1"), w.store("dc3"))
	sn, err := w.store("dc1").NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	dst := openMem(t, vfs.NewMem(), "dc2", Options{DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 2})
	if _, err := dst.Import(context.Background(), sn.Header(), chunks(sn, 1<<20)); err != nil {
		t.Fatal(err)
	}
	st, _, _ := dst.Get("x")
	// A read-modify-write with the context just read at this DC is refused
	// as bad input (a 400), though the client did nothing wrong.
	if _, err := dst.Write(context.Background(), WriteOp{Key: "x", Value: []byte("rmw"), Context: st.Clock}); err != nil {
		t.Errorf("read-modify-write with the context read here: %v", err)
	}
	// A blind write reissues the joiner's old dot.
	ev := mustWrite(t, dst, WriteOp{Key: "x", Value: []byte("new")}).Event
	if ev.Dot == old.Dot {
		t.Errorf("the joiner reissued %s although the imported clock of x is %v", ev.Dot, st.Clock)
	}
	lost, err := dst.lostTable()
	if err != nil {
		t.Fatal(err)
	}
	marked := false
	for _, r := range lost {
		if r.Origin == "dc2" && r.From <= old.Dot.N && old.Dot.N <= r.To {
			marked = true
		}
	}
	if !marked {
		t.Errorf("the joiner's own %s, which it skipped without holding it, is not marked lost: %+v", old.Dot, lost)
	}
}
