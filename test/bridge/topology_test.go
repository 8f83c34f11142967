package bridge_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/names"
)

// TestTopologies has every DC of a mesh, ring and star of 3 and 5 DCs write
// conflicting values to a shared key set at once, and checks that they
// converge, that every DC applies each event of the others exactly once,
// that loops are dropped only where the topology sends events back, and
// how many publishes each write costs.
func TestTopologies(t *testing.T) {
	const keys, rounds = 20, 10
	for _, topo := range []string{"mesh", "ring", "star"} {
		for _, n := range []int{3, 5} {
			t.Run(fmt.Sprintf("%s-%d", topo, n), func(t *testing.T) {
				start := time.Now()
				c := newCluster(t, topo, n, nil).start()
				perDC := c.writeConcurrently(c.dcs, keys, rounds)
				total := perDC * n
				c.waitConverged(30 * time.Second)
				converged := time.Since(start)

				applied := map[string]uint64{}
				for _, dc := range c.dcs {
					applied[dc] = uint64(total - perDC)
				}
				c.checkAppliedOnce(applied)
				// Only a star sends events back to where they came from: the
				// hub forwards a leaf's event to every leaf, its origin too.
				wantLoops := func(dc string) uint64 {
					if topo == "star" && dc != c.hub {
						return uint64(perDC)
					}
					return 0
				}
				cluster.Eventually(t, 5*time.Second, "loop drops", func() (bool, string) {
					for _, dc := range c.dcs {
						if got := c.stats(dc).LoopsDropped; got != wantLoops(dc) {
							return false, fmt.Sprintf("%s dropped %d looping events, want %d", dc, got, wantLoops(dc))
						}
					}
					return true, ""
				})

				var published uint64
				for _, dc := range c.dcs {
					s := c.stats(dc)
					published += s.Published
					if s.DeadLetters != 0 {
						t.Errorf("%s dead-lettered %d messages", dc, s.DeadLetters)
					}
					t.Logf("%s: published %d (+%d dup), changed %d, obsolete %d, duplicates %d, loops %d, gaps %d, repairs %d",
						dc, s.Published, s.PublishDuplicates, s.Applied, s.Obsolete, s.Duplicates, s.LoopsDropped, s.Gaps, s.Repairs)
				}
				// Applied vectors travel between DCs, and each DC trims every
				// outbox entry once all the others have applied it.
				cluster.Eventually(t, 10*time.Second, "outbox trimming", func() (bool, string) {
					for _, dc := range c.dcs {
						s := c.rep(dc).Stats()
						if s.Trimmed != s.Published {
							return false, fmt.Sprintf("%s trimmed %d of %d outbox entries (%d peer reports)", dc, s.Trimmed, s.Published, s.PeerReports)
						}
						for up, l := range s.Links {
							if !l.Connected || l.LagEvents != 0 || l.LastApplied.IsZero() || l.Consumer != names.Consumer(dc, up) {
								return false, fmt.Sprintf("%s's link from %s: %+v", dc, up, l)
							}
						}
					}
					return true, ""
				})
				ratio := float64(published) / float64(total)
				var want float64
				switch topo {
				case "mesh":
					want = 1
				case "ring":
					want = float64(n - 1)
				case "star":
					// A leaf's write is published by the leaf and forwarded by
					// the hub; the hub's write is published once.
					want = float64(perDC+2*perDC*(n-1)) / float64(total)
				}
				if ratio != want {
					t.Errorf("%.3f publishes per write, want %.3f", ratio, want)
				}
				t.Logf("%s with %d DCs: %d writes, %.3f publishes per write, %.3f applies per write per DC, written and converged in %s, outboxes trimmed after %s",
					topo, n, total, ratio, float64(total-perDC)/float64(total), converged.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			})
		}
	}
}
