package join

import (
	"context"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// TestJoinOpensTheStoreRunOpens: the store join writes the snapshot into
// is opened from the config as `replicator run` opens it (setup.OpenStore),
// with the configured clock, resolvers and conflict-log bounds, not a
// store with defaults that would decide differently (invariant 10 in
// docs/DESIGN.md: every DC resolves a key's siblings with the same
// resolver).
func TestJoinOpensTheStoreRunOpens(t *testing.T) {
	cfg := config.Default()
	cfg.DC, cfg.DCs, cfg.DataDir = "dc1", []string{"dc1", "dc2"}, t.TempDir()
	cfg.Partitions = 4
	cfg.Resolvers.Default = config.LWW
	cfg.ConflictLog.Retention = config.Duration(time.Hour)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := openStore(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()

	// The clock: a local write carries an HLC of today.
	res, err := st.Write(ctx, changelog.WriteOp{Key: "k", Value: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	if ms := hlc.Timestamp(res.Event.HLC).Physical(); time.Since(time.UnixMilli(int64(ms))) > time.Hour {
		t.Errorf("a local write's HLC is %d (%s): the store has no clock", res.Event.HLC, time.UnixMilli(int64(ms)))
	}

	// The resolvers: under lww a blind write supersedes what the DC holds;
	// under the default siblings it would be concurrent with it.
	if _, err := st.Write(ctx, changelog.WriteOp{Key: "k", Value: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if s, _, _ := st.Get("k"); len(s.Siblings) != 1 {
		t.Errorf("after two blind writes under lww, %d siblings: %+v; the store does not use the configured resolvers", len(s.Siblings), s.Siblings)
	}

	// The conflict log's retention: an lww loss is logged, and pruned
	// once older than conflict_log.retention.
	p := event.PartitionOf("k", cfg.Partitions)
	now := time.Now()
	ev := &event.Event{
		Version: event.SchemaVersion, Origin: "dc2", Partition: p, Seq: 1, Key: "k", Op: event.OpPut,
		Value: []byte("c"), Dot: vclock.Dot{DC: "dc2", N: 1}, Context: vclock.VV{},
		HLC: uint64(hlc.Make(uint64(now.UnixMilli()), 0)), Path: []string{"dc2"},
	}
	if _, err := st.Apply(ctx, []*event.Event{ev}, nil); err != nil {
		t.Fatal(err)
	}
	if cs, err := st.Conflicts(changelog.ConflictFilter{}); err != nil || len(cs) != 1 {
		t.Fatalf("conflict log after a concurrent remote write under lww: %+v, %v; want the one loss", cs, err)
	}
	n, err := st.PruneConflicts(ctx, now.Add(2*time.Hour))
	if err != nil || n != 1 {
		t.Errorf("pruning 2h later with a retention of 1h deleted %d entries (%v), want 1: the store ignores conflict_log.retention", n, err)
	}
}
