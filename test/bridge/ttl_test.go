package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// expiryTakeover is the ExpiryTakeover of the TTL tests: five report
// intervals of the test cluster.
const expiryTakeover = 500 * time.Millisecond

// ttlTune sets the expiry takeover bound and, in a ring, turns healing on,
// so the DCs still reach each other around a dead one.
func ttlTune(topo string) func(*bridge.Options) {
	return func(o *bridge.Options) {
		o.ExpiryTakeover = expiryTakeover
		if topo == "ring" {
			o.HealAfter = healAfter
			o.RepairAfter = time.Hour
		}
	}
}

// putTTL writes key at dc with a TTL.
func (c *bridgeCluster) putTTL(dc, key, value string, ttl time.Duration) changelog.WriteResult {
	c.t.Helper()
	res, err := c.store(dc).Write(context.Background(), changelog.WriteOp{Key: key, Value: []byte(value), TTL: ttl})
	if err != nil {
		c.t.Fatalf("write %s at %s: %v", key, dc, err)
	}
	return res
}

// expiredBy returns how many expired values each DC deleted, over all its
// Replicators so far.
func (c *bridgeCluster) expiredBy() map[string]uint64 {
	out := map[string]uint64{}
	for _, dc := range c.dcs {
		out[dc] = c.stats(dc).Expired
	}
	return out
}

// deleteDots returns the dots of the delete events for key that the DCs'
// streams hold, each once however many streams carry it.
func (c *bridgeCluster) deleteDots(key string) map[string]bool {
	c.t.Helper()
	js := c.js(c.t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dots := map[string]bool{}
	for _, dc := range c.dcs {
		s, err := js.Stream(ctx, names.Stream(dc))
		if err != nil {
			c.t.Fatalf("stream of %s: %v", dc, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			c.t.Fatal(err)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				c.t.Fatalf("stream of %s, message %d: %v", dc, seq, err)
			}
			if m.Header.Get(event.HeaderKey) == key && m.Header.Get(event.HeaderOp) == event.OpDelete.String() {
				dots[m.Header.Get(event.HeaderDot)] = true
			}
		}
	}
	return dots
}

// waitGone waits until every DC in dcs stores key as tombstones only: the
// replicated delete of its expired value has reached it.
func (c *bridgeCluster) waitGone(key string, dcs ...string) {
	c.t.Helper()
	cluster.Eventually(c.t, 10*time.Second, key+" deleted everywhere", func() (bool, string) {
		for _, dc := range dcs {
			st, _, err := c.store(dc).Get(key)
			if err != nil {
				return false, err.Error()
			}
			if st.LiveCount() > 0 {
				return false, fmt.Sprintf("%s still stores %d live version(s); expired by %v", dc, st.LiveCount(), c.expiredBy())
			}
		}
		return true, ""
	})
}

// TestTTLExpiresOnceEverywhere: a value written with a short TTL at one DC
// disappears at every DC through exactly one replicated delete, which its
// origin writes, and the digests converge; a value without a TTL stays.
func TestTTLExpiresOnceEverywhere(t *testing.T) {
	for _, topo := range []string{"mesh", "ring", "star"} {
		t.Run(topo, func(t *testing.T) {
			c := newCluster(t, topo, 3, ttlTune(topo)).start()
			w := c.putTTL("dc2", "session/1", "token", 300*time.Millisecond)
			c.write("dc3", "keep", "forever", false)
			c.waitGone("session/1", c.dcs...)
			c.waitConverged(10 * time.Second)
			if got := c.expiredBy(); got["dc1"]+got["dc2"]+got["dc3"] != 1 || got["dc2"] != 1 {
				t.Fatalf("expired values deleted per DC: %v; want one, by the origin dc2", got)
			}
			if dots := c.deleteDots("session/1"); len(dots) != 1 {
				t.Fatalf("the streams hold %d delete events for the key (%v); want exactly one", len(dots), dots)
			}
			for _, dc := range c.dcs {
				// The tombstone may already be purged (causally stable).
				st, ok, _ := c.store(dc).Get("session/1")
				if ok && (len(st.Siblings) != 1 || !st.Clock.Covers(w.Event.Dot)) {
					t.Fatalf("%s stores %+v; want the one tombstone of the delete, covering the expired %s", dc, st, w.Event.Dot)
				}
				if st, _, _ := c.store(dc).Get("keep"); st.LiveCount() != 1 {
					t.Fatalf("%s lost the value without a TTL", dc)
				}
			}
		})
	}
}

// TestTTLTakeoverWhenOriginDown: with the origin of an expired value down
// past ExpiryTakeover, the first other DC of the configuration deletes it,
// once; the origin, back, applies that delete instead of writing its own.
func TestTTLTakeoverWhenOriginDown(t *testing.T) {
	for _, topo := range []string{"mesh", "ring", "star"} {
		t.Run(topo, func(t *testing.T) {
			c := newCluster(t, topo, 3, ttlTune(topo)).start()
			c.putTTL("dc3", "lease", "held", 400*time.Millisecond)
			c.waitCaughtUp("dc1", "dc3")
			c.waitCaughtUp("dc2", "dc3")
			c.stop("dc3")
			c.waitGone("lease", "dc1", "dc2")
			if got := c.expiredBy(); got["dc1"] != 1 || got["dc2"] != 0 || got["dc3"] != 0 {
				t.Fatalf("expired values deleted per DC: %v; want one, by dc1 (the first DC that still reports)", got)
			}
			c.openStore("dc3")
			c.startRep("dc3")
			c.waitGone("lease", c.dcs...)
			c.waitConverged(15 * time.Second)
			if got := c.expiredBy(); got["dc1"]+got["dc2"]+got["dc3"] != 1 {
				t.Fatalf("after dc3 came back, expired values deleted per DC: %v; want still one", got)
			}
			if dots := c.deleteDots("lease"); len(dots) != 1 {
				t.Fatalf("the streams hold %d delete events for the key (%v); want exactly one", len(dots), dots)
			}
		})
	}
}
