package fault_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/test/internal/ledger"
)

// TestNATSFaults (invariants 2, 3, 4 and 10 of docs/DESIGN.md; figures in
// docs/RELIABILITY.md, "NATS restarted, a link cut, a sidecar paused") runs
// three faults one after the other, in mesh, ring and star, while every DC
// takes writes:
//
//   - the NATS server is shut down and started again on the same store dir
//     and port;
//   - one DC's link to NATS is cut and healed, and while it is cut a few of
//     the events it still needs are deleted from its upstream streams, as
//     a lazily-fsynced JetStream loses acknowledged messages on a power
//     failure: the DC must find the gaps and repair them from the origins;
//   - one sidecar is paused with SIGSTOP and resumed with SIGCONT (in the
//     star it is the hub, which stops all replication). The long form
//     pauses it for longer than the consumers' AckWait (30s), so the
//     events it had been delivered are delivered again.
//
// After each heal the writes stop and the DCs must converge; the time is a
// figure. At the end every acknowledged write is accounted for and every
// DC (none restarts) applied each remote event exactly once.
func TestNATSFaults(t *testing.T) {
	for _, topo := range []string{config.Mesh, config.Ring, config.Star} {
		t.Run(topo, func(t *testing.T) { natsFaults(t, topo) })
	}
}

func natsFaults(t *testing.T, topo string) {
	begin := time.Now()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	c := newCluster(t, clusterOptions{topology: topo})
	dcs := c.opts.dcs
	keys := ledger.KeySet(pick(300, 1000))
	led := newLedger(dcs)
	var (
		warm     = pick(700*time.Millisecond, 5*time.Second)
		natsDown = pick(time.Second, 10*time.Second)
		cutFor   = pick(2*time.Second, 20*time.Second)
		pauseFor = pick(2*time.Second, 45*time.Second)
	)
	cutDC := "dc2"
	pausedDC := "dc3"
	if topo == config.Star {
		pausedDC = dcs[0] // the hub
	}
	extra := map[string]any{"keys": len(keys)}
	var converges []string

	// run writes at every DC, runs fault with the writes going on, stops
	// the writes at the heal and measures the time to converge.
	run := func(name string, fault func() string) {
		t.Helper()
		w := newWorkload(c, led, keys)
		defer w.Halt()
		for i, dc := range dcs {
			w.Start(dc, pick(1, 2), 0, rng.Uint64()+uint64(i))
		}
		before := led.AckedTotal()
		repl.Hold(warm, nil)
		desc := fault()
		healed := time.Now()
		w.Halt()
		c.waitConverged(3 * time.Minute)
		took := time.Since(healed)
		t.Logf("%s: %s; %d writes acked during the phase; converged %s after the heal", name, desc, led.AckedTotal()-before, round(took))
		converges = append(converges, fmt.Sprintf("%s %s", name, round(took)))
		extra[name] = desc
		extra[name+"_acked"] = led.AckedTotal() - before
		extra[name+"_converge_after_heal"] = round(took)
	}

	run("nats_restart", func() string {
		c.stopNATS()
		repl.Hold(natsDown, nil)
		c.startNATS()
		return fmt.Sprintf("NATS server shut down for %s and restarted on the same store dir and port", natsDown)
	})

	repairedBefore := metric(t, c, cutDC, "replicator_repaired_events_total")
	var deleted []string
	run("link_cut", func() string {
		m := c.member(cutDC)
		m.proxy.Cut()
		cutAt := time.Now()
		// Once the link is down nothing more is delivered to the DC: what
		// its consumers have not been delivered by now, it needs later.
		repl.Hold(200*time.Millisecond, nil)
		delivered := deliveredTo(t, c, cutDC)
		repl.Hold(cutFor-time.Since(cutAt), nil)
		deleted = loseMessages(t, c, cutDC, delivered, 3)
		m.proxy.Heal()
		return fmt.Sprintf("%s's link to NATS cut for %s; %d events it needed deleted from its upstream streams meanwhile (%s)",
			cutDC, cutFor, len(deleted), strings.Join(deleted, " "))
	})
	repaired := metric(t, c, cutDC, "replicator_repaired_events_total") - repairedBefore
	if len(deleted) == 0 {
		t.Errorf("no event was deleted during the link cut, so gap repair was not exercised")
	} else if repaired < float64(len(deleted)) {
		t.Errorf("%s repaired %v events after its link healed, but %d events it needed were deleted from its upstream streams", cutDC, repaired, len(deleted))
	}
	extra["link_cut_repaired_events"] = repaired

	run("sigstop", func() string {
		m := c.member(pausedDC)
		m.pause()
		repl.Hold(pauseFor, nil)
		m.resume()
		return fmt.Sprintf("%s paused with SIGSTOP for %s, then SIGCONT", pausedDC, pauseFor)
	})

	a := account(t, c, led, keys)
	extra["lww"] = checkLWW(t, c, ledger.LWWKeys(keys))
	for k, v := range exactlyOnce(t, c, dcs...) {
		extra[k] = v
	}
	c.checkLogs()
	for _, m := range c.members {
		if err := m.stop(20 * time.Second); err != nil {
			t.Error(err)
		}
	}
	extra["accounting"] = a.String()
	report(t, figures{
		Seed: seed,
		Faults: fmt.Sprintf("%s of 3: NATS restart (%s down); %s link cut %s with %d needed events deleted; %s SIGSTOP %s",
			topo, natsDown, cutDC, cutFor, len(deleted), pausedDC, pauseFor),
		Operations: led.Ops.Load(),
		Acked:      int64(a.Puts + a.Deletes),
		Lost:       a.Lost,
		Converge:   strings.Join(converges, "; "),
		Extra:      extra,
	}, begin)
}

// metric reads one summed metric of a DC.
func metric(t *testing.T, c *cluster, dc, name string) float64 {
	t.Helper()
	mt, err := c.metrics(c.member(dc))
	if err != nil {
		t.Fatal(err)
	}
	return mt[name]
}

// deliveredTo returns, per upstream of dc, the last stream sequence the
// upstream's stream has delivered to dc's consumer.
func deliveredTo(t *testing.T, c *cluster, dc string) map[string]uint64 {
	t.Helper()
	plan, err := bridge.NewPlan(c.opts.topology, dc, c.opts.dcs, hubOf(c))
	if err != nil {
		t.Fatal(err)
	}
	nc, js := c.js()
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[string]uint64{}
	for _, up := range plan.Upstreams {
		cons, err := js.Consumer(ctx, names.Stream(up), names.Consumer(dc, up))
		if err != nil {
			t.Fatalf("consumer of %s on %s: %v", dc, up, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out[up] = info.Delivered.Stream
	}
	return out
}

func hubOf(c *cluster) string {
	if c.opts.topology == config.Star {
		return c.opts.dcs[0]
	}
	return ""
}

// loseMessages deletes up to perStream messages from each upstream stream
// of dc that dc has not been delivered yet and must apply (their path does
// not hold dc), taken from the older half of what the stream holds beyond
// delivered, so that later events of the same origin and partition reveal
// the gaps. It returns the deleted events' dots.
func loseMessages(t *testing.T, c *cluster, dc string, delivered map[string]uint64, perStream int) []string {
	t.Helper()
	nc, js := c.js()
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []string
	ups := make([]string, 0, len(delivered))
	for up := range delivered {
		ups = append(ups, up)
	}
	slices.Sort(ups)
	for _, up := range ups {
		s, err := js.Stream(ctx, names.Stream(up))
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		first, last := delivered[up]+1, info.State.LastSeq
		if last < first+4 {
			continue
		}
		mid := first + (last-first)/2
		n := 0
		for seq := first; seq <= mid && n < perStream; seq += max(1, (mid-first)/uint64(perStream+1)) {
			msg, err := s.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			path := strings.Split(msg.Header.Get(event.HeaderPath), ",")
			if slices.Contains(path, dc) {
				continue // dc's own event, or one that passed it
			}
			if err := s.DeleteMsg(ctx, seq); err != nil {
				t.Fatalf("delete message %d of %s: %v", seq, names.Stream(up), err)
			}
			out = append(out, fmt.Sprintf("%s@%s#%d", msg.Header.Get(event.HeaderDot), names.Stream(up), seq))
			n++
		}
	}
	return out
}
