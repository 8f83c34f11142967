package shard_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/home"
	"github.com/replicatorhq/replicator/pkg/node"
)

// homeRules gives "a/" the homes dc1 then dc2 (failover) and "b/" the
// home dc2 (reject).
func homeRules(timeout time.Duration) func(*config.Config) {
	return func(c *config.Config) {
		c.Home = []config.HomeRule{
			{Prefix: "a/", DCs: []string{"dc1", "dc2"}, Policy: config.PolicyFailover, Timeout: config.Duration(timeout)},
			{Prefix: "b/", DCs: []string{"dc2"}, Policy: config.PolicyReject, Timeout: config.Duration(timeout)},
		}
	}
}

// putDot writes key through s and returns the dot of the event it made
// ("dc1:7"), failing the test on anything but 200.
func putDot(t *testing.T, s *sidecar, key string) string {
	t.Helper()
	code, _, b := do(t, http.MethodPut, s.base+"/v1/kv/"+key, []byte("v-"+key))
	if code != http.StatusOK {
		t.Fatalf("PUT %s through %s: %d %s", key, s.name, code, b)
	}
	var w struct {
		Dot string `json:"dot"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		t.Fatalf("PUT %s through %s: %s: %v", key, s.name, b, err)
	}
	return w.Dot
}

// TestShardedHomeWrites (invariants 9 and 16): dc1 runs 2 shards, dc2 one
// sidecar, dc3 3 shards. Writes to keys homed at dc1 (sharded) and at dc2
// (not sharded), through every sidecar, in every partition, are executed
// at the home, by the shard owning the key, whichever shard of the home
// took the forwarded request; every DC converges.
func TestShardedHomeWrites(t *testing.T) {
	_, all := meshWith(t, map[string]int{"dc1": 2, "dc3": 3}, homeRules(2*time.Second), node.Options{})
	const perSidecar = 24
	written := 0
	for _, rule := range []struct{ prefix, home string }{{"a/", "dc1"}, {"b/", "dc2"}} {
		covered := map[uint32]bool{}
		for i, s := range all {
			for j := range perSidecar {
				key := fmt.Sprintf("%s%d/%d", rule.prefix, i, j)
				covered[event.PartitionOf(key, partitions)] = true
				if dot := putDot(t, s, key); !strings.HasPrefix(dot, rule.home+":") {
					t.Fatalf("PUT %s through %s: the event is %s, want one made at the home %s", key, s.name, dot, rule.home)
				}
				written++
			}
		}
		if len(covered) != partitions {
			t.Fatalf("the %s keys cover %d partitions of %d; the test needs them all", rule.prefix, len(covered), partitions)
		}
	}
	converged(t, all, written)
}

// views returns each live sidecar's view of prefix, by sidecar name, and
// fails the test if two sidecars name different homes in one epoch.
func views(t *testing.T, live []*sidecar, prefix string) map[string]home.RuleStatus {
	t.Helper()
	out := map[string]home.RuleStatus{}
	byEpoch := map[uint64]string{}
	for _, s := range live {
		for _, v := range s.n.Home().Status() {
			if v.Prefix != prefix {
				continue
			}
			out[s.name] = v
			if h, ok := byEpoch[v.Epoch]; ok && h != v.Home {
				t.Fatalf("two homes of %q in epoch %d: %s and %s (views %v)", prefix, v.Epoch, h, v.Home, out)
			}
			byEpoch[v.Epoch] = v.Home
		}
	}
	return out
}

// settled waits until every live sidecar's view of prefix is home in
// epoch, checking on the way that no epoch ever names two homes.
func settled(t *testing.T, live []*sidecar, prefix, want string, epoch uint64) {
	t.Helper()
	cluster.EventuallyEvery(t, 20*time.Second, 20*time.Millisecond, fmt.Sprintf("every view of %q to be %s in epoch %d", prefix, want, epoch), func() (bool, string) {
		for name, v := range views(t, live, prefix) {
			if v.Home != want || v.Epoch != epoch {
				return false, fmt.Sprintf("%s sees %s in epoch %d", name, v.Home, v.Epoch)
			}
		}
		return true, ""
	})
}

// keyOwnedBy returns a key with prefix whose partition shard i of count
// owns.
func keyOwnedBy(prefix string, i, count int) string {
	for n := 0; ; n++ {
		if k := fmt.Sprintf("%s%d", prefix, n); owner(k, count) == i {
			return k
		}
	}
}

// TestShardedHomeTakeover (invariants 9 and 16): the home dc1 runs 2
// shards, dc2 2 shards, dc3 one sidecar; "a/" fails over from dc1 to
// dc2. With dc1's shard 1 down:
//   - a write at dc3 to one of that shard's keys fails over to dc2 under
//     epoch 1, and every shard of every DC comes to see dc2 as the home,
//     dc1's live shard included;
//   - a write at dc2 to a key of dc1's live shard takes the home back for
//     dc1 under epoch 2 (dc1 is the first choice, and answers for that
//     key);
//   - the next write at dc3 to a key of the stopped shard finds dc1 unable
//     to write it (its shard that took the request finds no owner) and
//     fails over to dc2 again, under epoch 3.
//
// Once the shard is back, a write at dc3 makes dc1 the home under epoch 4,
// executed by the shard owning the key. No epoch ever names two homes, and
// every DC converges.
func TestShardedHomeTakeover(t *testing.T) {
	_, all := meshWith(t, map[string]int{"dc1": 2, "dc2": 2}, homeRules(500*time.Millisecond), node.Options{HomeProbeInterval: 100 * time.Millisecond})
	dc1s0, dc1s1, dc3 := all[0], all[1], all[4]
	settled(t, all, "a/", "dc1", 0)
	written := 0
	put := func(s *sidecar, key, home string) {
		t.Helper()
		if dot := putDot(t, s, key); !strings.HasPrefix(dot, home+":") {
			t.Fatalf("PUT %s through %s made the event %s, want one of the home %s", key, s.name, dot, home)
		}
		written++
	}
	for i := range 8 {
		put(all[i%len(all)], fmt.Sprintf("a/before/%d", i), "dc1")
	}

	if err := dc1s1.n.Close(); err != nil {
		t.Fatal(err)
	}
	live := []*sidecar{dc1s0, all[2], all[3], dc3}
	put(dc3, keyOwnedBy("a/down/", 1, 2), "dc2")
	settled(t, live, "a/", "dc2", 1)
	put(all[2], keyOwnedBy("a/back/", 0, 2), "dc1")
	settled(t, live, "a/", "dc1", 2)
	put(dc3, keyOwnedBy("a/down-again/", 1, 2), "dc2")
	settled(t, live, "a/", "dc2", 3)

	dc1s1.restart(t, nil)
	settled(t, all, "a/", "dc2", 3)
	// dc3 prefers dc1 again: the write makes it the home under epoch 4,
	// executed by the shard owning the key, whichever took the request.
	put(dc3, keyOwnedBy("a/failback/", 1, 2), "dc1")
	settled(t, all, "a/", "dc1", 4)
	for i := range 2 {
		put(all[2+i], keyOwnedBy(fmt.Sprintf("a/after%d/", i), i, 2), "dc1")
	}
	converged(t, all, written)
}

// TestShardedHomeViewsTold: a shard that learns a new epoch tells its
// DC's other shards at once, without waiting for a probe round (set to
// an hour here). dc1, the first home, is down; a write at dc3 fails over
// to dc2, whose 3 shards all come to see dc2 as the home in epoch 1,
// though one of them executed the write.
func TestShardedHomeViewsTold(t *testing.T) {
	_, all := meshWith(t, map[string]int{"dc2": 3}, homeRules(500*time.Millisecond), node.Options{HomeProbeInterval: time.Hour})
	if err := all[0].n.Close(); err != nil {
		t.Fatal(err)
	}
	dc2, dc3 := all[1:4], all[4]
	if dot := putDot(t, dc3, "a/told"); !strings.HasPrefix(dot, "dc2:") {
		t.Fatalf("PUT a/told at dc3 with dc1 down made %s, want dc2's", dot)
	}
	settled(t, append(dc2, dc3), "a/", "dc2", 1)
}
