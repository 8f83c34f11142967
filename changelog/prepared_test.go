package changelog

import (
	"context"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestPreparedSurvivesCrash: a transaction a shard prepared (invariants
// 11 and 16 in docs/DESIGN.md) is still recorded after a crash that keeps
// only synced data, until it is forgotten; the record stays out of the
// digest, and Covered says when the applied vector holds its ops.
func TestPreparedSurvivesCrash(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewCrashableMem()
	s := openMem(t, fs, "dc1", Options{})
	before, err := s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	p := Prepared{Origin: "dc2", Keys: []string{"a", "b"}, Ops: [][2]uint64{{1, 1}, {2, 1}}}
	if err := s.Prepare(ctx, "dc2:1:1", p); err != nil {
		t.Fatal(err)
	}
	if after, _ := s.Digest(); after.Hex() != before.Hex() {
		t.Fatalf("a prepared record changed the digest")
	}
	img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0}) // only what was synced
	s2 := openMem(t, img, "dc1", Options{})
	got, err := s2.PreparedTxns()
	if err != nil {
		t.Fatal(err)
	}
	if g, ok := got["dc2:1:1"]; !ok || !slices.Equal(g.Keys, p.Keys) || g.Covered(s2.Applied()) {
		t.Fatalf("after the crash: %+v, want %+v, not covered", got, p)
	}
	if !p.Covered(Applied{"dc2": {0, 1, 1, 0}}) || p.Covered(Applied{"dc2": {0, 1, 0, 0}}) {
		t.Fatalf("Covered is wrong")
	}
	if err := s2.Unprepare(ctx, "dc2:1:1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s2.PreparedTxns(); len(got) != 0 {
		t.Fatalf("forgotten, still there: %+v", got)
	}
}
