package sim

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
)

// keysIn returns a key of each of partitions 0 to n-1.
func keysIn(t *testing.T, n int) []string {
	t.Helper()
	out := make([]string, n)
	found := 0
	for i := 0; found < n && i < 10000; i++ {
		k := fmt.Sprintf("k%d", i)
		if p := event.PartitionOf(k, n); out[p] == "" {
			out[p] = k
			found++
		}
	}
	if found < n {
		t.Fatalf("no key for every one of %d partitions", n)
	}
	return out
}

// TestWorldShardTxnWaitsForOwners: in a ring dc1 -> dc2 -> dc3 -> dc1,
// dc3 (one sidecar) writes a transaction whose keys span dc1's two
// shards; dc1/1 is down, so dc1/0 prepares its part and waits (reads of
// its key are held, nothing is applied, nothing reaches dc2); once dc1/1
// is back, both apply, dc1 forwards the transaction whole, once, to dc2,
// and the world settles with no violation. A local transaction spanning
// dc1's shards is refused.
func TestWorldShardTxnWaitsForOwners(t *testing.T) {
	w, err := NewWorld(WorldOptions{DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 2, Topology: config.Ring,
		Shards: map[string]int{"dc1": 2}, HealAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	keys := keysIn(t, 2)
	if _, err := w.WriteTxn("dc1", []Op{{Key: keys[0], Value: []byte("a")}, {Key: keys[1], Value: []byte("b")}}); !errors.Is(err, errTxnSpansShards) {
		t.Fatalf("a local transaction spanning dc1's shards: %v; want it refused", err)
	}
	if err := w.Crash("dc1/1"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteTxn("dc3", []Op{{Key: keys[0], Value: []byte("x")}, {Key: keys[1], Value: []byte("y")}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Run(3 * time.Second); err != nil { // with dc1/1 down
		t.Fatal(err)
	}
	for _, dc := range []string{"dc1", "dc2"} {
		if a := w.Applied(dc)["dc3"]; len(a) > 0 && (a[0] > 0 || a[1] > 0) {
			t.Fatalf("%s applied part of dc3's transaction with dc1/1 down: %v", dc, a)
		}
	}
	if w.Stats["shard txn prepared"] == 0 {
		t.Fatal("dc1/0 did not prepare its part")
	}
	if _, _, err := w.Read("dc1", keys[0]); !errors.Is(err, errHeld) {
		t.Fatalf("read %s at dc1/0 with the transaction prepared: %v; want it held", keys[0], err)
	}
	if err := w.Settle(time.Minute); err != nil {
		t.Fatal(err)
	}
	if vs := w.Violations(); len(vs) > 0 {
		t.Fatalf("violations:\n%s", strings.Join(vs, "\n"))
	}
	for i, want := range []string{"x", "y"} {
		st, _, err := w.Read("dc1", keys[i])
		if err != nil || len(st.Siblings) != 1 || string(st.Siblings[0].Value) != want {
			t.Fatalf("dc1 %s: %+v, %v; want %q", keys[i], st, err, want)
		}
	}
	if _, equal, err := w.Digests(); err != nil || !equal {
		t.Fatalf("digests equal %v, %v", equal, err)
	}
	if by := w.txnFwd["dc1"]; len(by) != 1 {
		t.Fatalf("dc1 forwarded %v; want the transaction once", by)
	}
}
