package changelog

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/session"
)

// walFaults fails every write or sync of a WAL file while on.
func walFaults() (*errorfs.Toggle, errorfs.Injector) {
	tog := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !strings.HasSuffix(op.Path, ".log") {
			return nil
		}
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo, errorfs.OpFileWrite, errorfs.OpFileFlush:
			return errorfs.ErrInjected
		}
		return nil
	})}
	return tog, tog
}

// TestFailedSyncStopsTheStore: a write whose WAL sync failed is never
// acknowledged nor queued for publishing, and from then on the store
// serves no reads or writes and reports the failure (invariant 17 in
// docs/DESIGN.md). Pebble has applied the batch to its memtable before the
// sync, so carrying on would show and publish a write that may not be
// durable (PostgreSQL's "fsyncgate").
func TestFailedSyncStopsTheStore(t *testing.T) {
	ctx := context.Background()
	mem := vfs.NewCrashableMem()
	tog, inj := walFaults()
	var fatal error
	fatalCh := make(chan error, 1)
	s := openMem(t, errorfs.Wrap(mem, inj), "dc1", Options{OnFatal: func(err error) { fatalCh <- err }})
	ok := mustWrite(t, s, WriteOp{Key: "durable", Value: []byte("1")})
	s.mu.RLock()
	syncedBefore := s.mu.outboxSync
	s.mu.RUnlock()

	tog.On()
	_, err := s.Write(ctx, WriteOp{Key: "lost", Value: []byte("2")})
	if err == nil {
		t.Fatal("a write whose WAL sync failed was acknowledged")
	}
	if !errors.Is(err, ErrFailed) {
		t.Fatalf("failed write: %v, want ErrFailed", err)
	}
	select {
	case fatal = <-fatalCh:
	default:
		t.Fatal("OnFatal was not called")
	}
	if !strings.Contains(fatal.Error(), "sync") && !strings.Contains(fatal.Error(), "injected") {
		t.Fatalf("OnFatal(%v) does not say what failed", fatal)
	}
	tog.Off()
	// Nothing more: the store refuses reads and writes even once the disk
	// works again, and never offers the failed write for publishing.
	if _, err := s.Write(ctx, WriteOp{Key: "after", Value: []byte("3")}); !errors.Is(err, ErrFailed) {
		t.Fatalf("write after the failure: %v, want ErrFailed", err)
	}
	if _, _, err := s.Get("durable"); !errors.Is(err, ErrFailed) {
		t.Fatalf("read after the failure: %v, want ErrFailed", err)
	}
	if err := s.Scan("", func(string, dvv.State) error { return nil }); !errors.Is(err, ErrFailed) {
		t.Fatalf("scan after the failure: %v, want ErrFailed", err)
	}
	if out, err := s.ReadOutbox(0, 100); !errors.Is(err, ErrFailed) || len(out) != 0 {
		t.Fatalf("outbox after the failure: %d entries, %v; want none and ErrFailed", len(out), err)
	}
	// Session waits stop too, and the durable applied vector this DC
	// reports to its peers holds the acknowledged write only.
	if err := s.WaitApplied(ctx, session.Of(session.Entry{Origin: "dc2", Partition: 0, Seq: 1})); !errors.Is(err, ErrFailed) {
		t.Fatalf("WaitApplied after the failure: %v, want ErrFailed", err)
	}
	if _, err := s.WaitReplicated(ctx, session.Of(entryOf(ok.Event)), 2); !errors.Is(err, ErrFailed) {
		t.Fatalf("WaitReplicated after the failure: %v, want ErrFailed", err)
	}
	var issued uint64
	for _, n := range s.AppliedDurable()["dc1"] {
		issued += n
	}
	if issued != 1 {
		t.Fatalf("the durable applied vector names %d writes of dc1 after the failure, want 1 (the acknowledged one): %v", issued, s.AppliedDurable())
	}
	s.mu.RLock()
	synced := s.mu.outboxSync
	s.mu.RUnlock()
	if synced != syncedBefore {
		t.Fatalf("the publishable end of the outbox moved from %d to %d with the failed write", syncedBefore, synced)
	}
	// The supervisor restarts the sidecar: the machine may also have lost
	// whatever was not synced. Every acknowledged write is there.
	s.Close()
	img := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	again := openMem(t, img, "dc1", Options{})
	st, found, err := again.Get("durable")
	if err != nil || !found || !st.Clock.Covers(ok.Event.Dot) {
		t.Fatalf("the acknowledged write is gone after the restart: %v %v", found, err)
	}
	if _, found, _ := again.Get("after"); found {
		t.Fatal("a write refused after the failure is in the store")
	}
}
