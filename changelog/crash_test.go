package changelog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
)

// TestCrashKeepsAcknowledgedWrites simulates power loss during group commit
// (docs/DESIGN.md, invariants 1 and 3; its figures are in
// docs/RELIABILITY.md). Concurrent writers write unique keys; at random
// moments the test takes a crash image of the filesystem holding only what
// was synced, plus a random share of what was not. Every write acknowledged
// before the image was taken must be in it, and every key in it must have
// its outbox entry and sequence: a batch is there whole or not at all.
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	for seed := int64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { crashOnce(t, seed) })
	}
}

func crashOnce(t *testing.T, seed int64) {
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	fs := vfs.NewCrashableMem()
	s, err := Open("/db", Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 4, FS: fs, Clock: &counterClock{}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	var mu sync.Mutex
	acked := map[string]string{}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k, v := fmt.Sprintf("w%02d-%04d", w, i), fmt.Sprint("v", i)
				if _, err := s.Write(ctx, WriteOp{Key: k, Value: []byte(v)}); err != nil {
					return
				}
				mu.Lock()
				acked[k] = v
				mu.Unlock()
			}
		}()
	}
	for round := 0; round < 3; round++ {
		// Let some writes through, then take an image.
		for {
			mu.Lock()
			n := len(acked)
			mu.Unlock()
			if n >= (round+1)*200 {
				break
			}
			if _, err := s.Write(context.Background(), WriteOp{Key: "tick", Value: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
		mu.Lock()
		want := make(map[string]string, len(acked))
		for k, v := range acked {
			want[k] = v
		}
		mu.Unlock()
		// What the publisher could read now must survive too: nothing
		// leaves the DC that a crash could take back.
		visible, err := s.ReadOutbox(0, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(100), RNG: rng})
		checkImage(t, img, want, len(visible))
	}
	cancel()
	wg.Wait()
}

func checkImage(t *testing.T, img *vfs.MemFS, want map[string]string, published int) {
	t.Helper()
	r, err := Open("/db", Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 4, FS: img, Clock: &counterClock{}})
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer r.Close()
	for k, v := range want {
		st, ok, err := r.Get(k)
		if err != nil || !ok || len(st.Siblings) != 1 || string(st.Siblings[0].Value) != v {
			t.Fatalf("acknowledged write %s=%s lost in the crash image (ok=%v err=%v)", k, v, ok, err)
		}
	}
	// Every key's own dots have an outbox entry and are within the sequence.
	seqs := r.Applied()["dc1"]
	indexed := map[string]bool{}
	out, err := r.ReadOutbox(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range out {
		indexed[e.Event.Dot.String()] = true
	}
	err = r.Scan("", func(key string, st dvv.State) error {
		p := event.PartitionOf(key, 4)
		for _, sb := range st.Siblings {
			if !indexed[sb.Dot.String()] {
				return fmt.Errorf("key %s has dot %s with no outbox entry: half a batch survived", key, sb.Dot)
			}
			if sb.Dot.N > seqs[p] {
				return fmt.Errorf("key %s has dot %s above partition %d's sequence %d", key, sb.Dot, p, seqs[p])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < published {
		t.Fatalf("the publisher could read %d outbox entries before the crash, but only %d survived it", published, len(out))
	}
}
