package antientropy

import (
	"context"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
)

// TestShardsCompareTheirPartitions: dc1 runs two shards (even and odd
// partitions), dc2 one sidecar. Each shard pulls only its partitions'
// keys from dc2, answers dc2's requests for its partitions and stays
// silent on the others', so dc2 pulls dc1's keys from both shards; the
// shards' digests together equal dc2's.
func TestShardsCompareTheirPartitions(t *testing.T) {
	url := runNATS(t)
	names := []string{"dc1", "dc2"}
	var shards []*dc
	for i := range 3 {
		name := "dc1"
		if i == 2 {
			name = "dc2"
		}
		s, err := changelog.Open(fmt.Sprintf("/%s-%d", name, i), changelog.Options{DC: name, DCs: names, Partitions: parts, FS: vfs.NewMem(), Clock: &counter{}})
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		var owned []uint32
		for p := i; p < parts && name == "dc1"; p += 2 {
			owned = append(owned, uint32(p))
		}
		w, err := New(Options{Store: s, NC: nc, DC: name, DCs: names, Partitions: parts, Interval: -1, Owned: owned})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close(); nc.Close(); s.Close() })
		shards = append(shards, &dc{name: fmt.Sprintf("%s shard %d", name, i), s: s, w: w, nc: nc})
	}
	dc2 := shards[2]
	shards = shards[:2]
	owner := func(key string) *dc { return shards[event.PartitionOf(key, parts)%2] }
	for i := range 60 {
		write(t, dc2, fmt.Sprintf("b/%d", i), []byte("from dc2"))
		k := fmt.Sprintf("a/%d", i)
		write(t, owner(k), k, []byte("from dc1"))
	}
	ctx := context.Background()
	for _, sh := range shards {
		if _, err := sh.w.RunOnce(ctx, "dc2"); err != nil {
			t.Fatalf("%s against dc2: %v", sh.name, err)
		}
	}
	if _, err := dc2.w.RunOnce(ctx, "dc1"); err != nil {
		t.Fatalf("dc2 against sharded dc1: %v", err)
	}
	want, err := dc2.s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	got := changelog.Digest{Partitions: make([][32]byte, parts)}
	for i, sh := range shards {
		d, err := sh.s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		got.Keys += d.Keys
		for p := i; p < parts; p += 2 {
			got.Partitions[p] = d.Partitions[p]
		}
		err = sh.s.Scan("", func(key string, _ dvv.State) error {
			if owner(key) != sh {
				return fmt.Errorf("%s holds %q, a key of the other shard's partition %d", sh.name, key, event.PartitionOf(key, parts))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if got.Keys != 120 || got.Hex() != want.Hex() || want.Keys != 120 {
		t.Fatalf("dc1's shards hold %d keys (digest %s), dc2 %d (%s); want 120 each and equal", got.Keys, got.Hex(), want.Keys, want.Hex())
	}
}
