package sim

import (
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/resolve"
)

// ttlSeeds is how many seeds TestTTLConverges runs per topology.
const ttlSeeds = 30

// TestTTLConverges: under seeded random schedules (writes with and without
// TTLs, with and without contexts, at every DC; deliveries reordered,
// duplicated and lost then repaired; restarts; clocks moving apart; the
// expirer running at random DCs), every DC ends with the same state and
// digest once all is delivered and every TTL has passed, no key whose live
// values all have TTLs is left anywhere, and the expirers wrote no more deletes than
// there were values with a TTL.
func TestTTLConverges(t *testing.T) {
	seeds := ttlSeeds
	if testing.Short() {
		seeds = 10
	}
	for _, topo := range []string{config.Mesh, config.Ring, config.Star} {
		t.Run(topo, func(t *testing.T) {
			total := 0
			for seed := int64(1); seed <= int64(seeds); seed++ {
				n, err := ttlSchedule(topo, seed)
				if err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				total += n
			}
			if total == 0 {
				t.Fatal("no seed expired anything: the schedules do not exercise expiry")
			}
			t.Logf("%d seeds, %d expired values deleted", seeds, total)
		})
	}
}

// ms is one millisecond of a DC's clock.
const ms = 1 << hlc.LogicalBits

// ttlSchedule runs one seed and returns how many deletes the expirers
// wrote.
func ttlSchedule(topo string, seed int64) (int, error) {
	r := rand.New(rand.NewSource(seed))
	rules, err := resolve.NewRules(resolve.Siblings(), []resolve.Rule{{Prefix: "l/", Resolver: resolve.LWW()}})
	if err != nil {
		return 0, err
	}
	c, err := New(Options{DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 2, Topology: topo, Resolvers: rules})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	dcs, links := c.DCs(), c.Links()
	keys := []string{"a", "b", "l/c"}
	ttlWrites, expired := 0, 0
	for step := 0; step < 120; step++ {
		dc := dcs[r.Intn(len(dcs))]
		l := links[r.Intn(len(links))]
		switch k := r.Intn(100); {
		case k < 30:
			op := Op{Key: keys[r.Intn(len(keys))], Value: fmt.Appendf(nil, "%s-%d", dc, step)}
			if r.Intn(2) == 0 {
				op.TTL = time.Duration(1+r.Intn(20)) * time.Millisecond
				ttlWrites++
			}
			if r.Intn(3) == 0 {
				if op.Context, err = c.ReadContext(dc, op.Key); err != nil {
					return 0, err
				}
			}
			if _, err := c.Write(dc, op); err != nil {
				return 0, err
			}
		case k < 60:
			if _, err := c.Deliver(l, 1); err != nil {
				return 0, err
			}
		case k < 65:
			if _, err := c.Swap(l); err != nil {
				return 0, err
			}
		case k < 70:
			if _, _, err := c.Redeliver(l); err != nil {
				return 0, err
			}
		case k < 73:
			if _, _, err := c.Drop(l); err != nil {
				return 0, err
			}
		case k < 75:
			if err := c.Restart(dc); err != nil {
				return 0, err
			}
		case k < 88:
			c.DC(dc).Clock.Advance(uint64(1+r.Intn(10)) * ms)
		default:
			n, err := c.Expire(dc)
			if err != nil {
				return 0, err
			}
			expired += n
		}
	}
	// Let every TTL pass everywhere, and run the expirers until nothing
	// is left to deliver or delete.
	for _, dc := range dcs {
		c.DC(dc).Clock.Advance(1000 * ms)
	}
	for round := 0; ; round++ {
		if err := c.DeliverAll(nil); err != nil {
			return 0, err
		}
		n := 0
		for _, dc := range dcs {
			m, err := c.Expire(dc)
			if err != nil {
				return 0, err
			}
			n += m
		}
		expired += n
		if n == 0 && c.Pending() == 0 {
			break
		}
		if round > 10 {
			return 0, fmt.Errorf("the expirers still delete after %d rounds", round)
		}
	}
	if ds, equal, err := c.Digests(); err != nil || !equal {
		return 0, fmt.Errorf("digests differ (%v): %v", err, ds)
	}
	for _, dc := range dcs {
		snap, err := c.Snapshot(dc)
		if err != nil {
			return 0, err
		}
		for key, st := range snap {
			// A key expires when all its live values have TTLs (the
			// longest wins); all have passed, so none may be left.
			if at := st.Expiry(); at != 0 {
				return 0, fmt.Errorf("%s: %q still holds values with TTLs, %v, expired at %d (clock %d)", dc, key, st.Live(), at, c.DC(dc).Clock.Peek())
			}
		}
	}
	if expired > ttlWrites {
		return expired, fmt.Errorf("the expirers wrote %d deletes for %d values with a TTL", expired, ttlWrites)
	}
	return expired, nil
}
