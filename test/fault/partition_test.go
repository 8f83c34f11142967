package fault_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/test/internal/ledger"
)

// TestPartitionDeletes (docs/DESIGN.md, invariant 8; figures in
// docs/RELIABILITY.md, "One DC partitioned during deletes") cuts dc3's link
// while dc1 and dc2 delete every key (200; 1000 in the long form) and update
// some of them concurrently, each delete reading the key first and deleting
// with the context it read. dc3 meanwhile updates a fifth of the keys,
// concurrently with their deletes. It requires:
//
//   - while dc3 is cut off, dc1 and dc2 keep every tombstone of the
//     partition: none is purged before every DC covers it;
//   - after the heal, no value a delete covered is ever live again (0
//     resurrections), every key whose acknowledged versions were all
//     covered by deletes reads 404 at every DC, and dc3's concurrent
//     updates survive;
//   - the tombstones are then purged at every DC, and a DC purges a key
//     only once dc3 holds no live version of it;
//   - redelivering every stream from its first message afterwards brings
//     nothing back.
func TestPartitionDeletes(t *testing.T) {
	begin := time.Now()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 5))
	n := pick(200, 1000)
	c := newCluster(t, clusterOptions{mode: inProcess, reportInterval: 100 * time.Millisecond})
	dcs := c.opts.dcs
	const cut = "dc3"
	keys := make([]string, n)
	for i := range keys {
		if i%2 == 0 {
			keys[i] = fmt.Sprintf("del/k%04d", i)
		} else {
			keys[i] = fmt.Sprintf("%sdel%04d", lwwPrefix, i)
		}
	}
	led := newLedger(dcs)
	w := newWorkload(c, led, keys)

	// Every key holds versions from one or two DCs, everywhere.
	for i, key := range keys {
		w.BlindPut(c.members[i%3].name, key)
		if i%4 == 0 {
			w.BlindPut(c.members[(i+1)%3].name, key)
		}
	}
	c.waitConverged(time.Minute)

	c.member(cut).proxy.Cut()
	cutAt := time.Now()
	ackedBeforeCut := len(led.AckedOps())
	order := rng.Perm(n)
	var wg sync.WaitGroup
	for d, dc := range []string{"dc1", "dc2"} {
		m := c.member(dc)
		mine := slices.DeleteFunc(slices.Clone(order), func(i int) bool { return i%2 != d })
		theirs := slices.DeleteFunc(slices.Clone(order), func(i int) bool { return i%2 == d })
		wrng := rand.New(rand.NewPCG(rng.Uint64(), uint64(d)))
		wg.Go(func() {
			for j, i := range mine {
				if !w.DeleteWithContext(m.name, keys[i]) {
					t.Errorf("delete %s at %s failed: %s", keys[i], m.name, led.FailureSummary())
					return
				}
				// Update one of the other DC's keys now and then, before or
				// after that DC deletes it.
				if j%5 == 0 {
					w.ReadModifyWrite(m.name, keys[theirs[wrng.IntN(len(theirs))]])
				}
			}
		})
	}
	var concurrent []string // keys dc3 updates while cut off, half of each kind
	for i := 4; i < n; i += 5 {
		concurrent = append(concurrent, keys[i])
	}
	wg.Go(func() {
		for _, key := range concurrent {
			w.ReadModifyWrite(cut, key)
		}
	})
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// dc1 and dc2 agree; dc3 does not know. Give them many report
	// intervals to purge what they should not.
	if err := repl.WaitFor(30*time.Second, 20*time.Millisecond, func() bool {
		a, _ := c.digest(c.member("dc1"))
		b, _ := c.digest(c.member("dc2"))
		return a.Digest == b.Digest
	}); err != nil {
		t.Fatalf("dc1 and dc2 did not converge while dc3 was cut off: %v", err)
	}
	repl.Hold(pick(1500*time.Millisecond, 10*time.Second), nil)
	var held int
	for _, dc := range []string{"dc1", "dc2"} {
		st := c.member(dc).node().Store()
		for _, key := range keys {
			s, ok, err := st.Get(key)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case !ok:
				t.Errorf("%s purged %s while %s was cut off and had not seen its delete", dc, key, cut)
			case s.LiveCount() == 0:
				held++
			}
		}
	}
	t.Logf("while %s was cut off (%s): dc1 and dc2 hold %d tombstoned keys, none purged", cut, round(time.Since(cutAt)), held)

	// Heal. Until everything is purged, a key gone at dc1 or dc2 must
	// hold no live version at dc3.
	c.member(cut).proxy.Heal()
	healed := time.Now()
	var early []string
	var converged time.Duration
	purgedAll := func() bool {
		for _, m := range c.members {
			st := m.node().Store()
			for _, key := range keys {
				s, ok, err := st.Get(key)
				if err != nil {
					t.Fatal(err)
				}
				if ok && s.LiveCount() == 0 {
					return false
				}
			}
		}
		return true
	}
	err := repl.WaitFor(time.Minute, 10*time.Millisecond, func() bool {
		for _, dc := range []string{"dc1", "dc2"} {
			st := c.member(dc).node().Store()
			for _, key := range keys {
				if _, ok, _ := st.Get(key); ok {
					continue
				}
				s3, ok, err := c.member(cut).node().Store().Get(key)
				if err == nil && ok && s3.LiveCount() > 0 && !slices.Contains(concurrent, key) {
					early = append(early, fmt.Sprintf("%s purged %s while %s still held %d live versions (clock %v)", dc, key, cut, s3.LiveCount(), s3.Clock))
				}
			}
		}
		if converged == 0 {
			if eq, _, _ := c.digests(); eq {
				if ok, _ := c.appliedEqual(); ok {
					converged = time.Since(healed)
				}
			}
		}
		return converged > 0 && purgedAll()
	})
	if err != nil {
		t.Fatalf("tombstones not purged everywhere within a minute of the heal (converged: %s)", converged)
	}
	purgedAfter := time.Since(healed)
	for _, e := range early[:min(len(early), 20)] {
		t.Errorf("TOMBSTONE PURGED EARLY: %s", e)
	}
	c.waitConverged(time.Minute)
	a := account(t, c, led, keys)
	gone, survivors := checkDeleted(t, c, led, keys, ackedBeforeCut)
	keysLeft, _ := c.digest(c.members[0])

	// Redeliver every stream from its first message: nothing may change.
	_, before, _ := c.digests()
	replayed := replayAll(t, c)
	c.waitConverged(time.Minute)
	if _, after, _ := c.digests(); after.Digest != before.Digest {
		t.Errorf("redelivering every stream changed the state: keys %d -> %d", before.Keys, after.Keys)
	}
	a2 := account(t, c, led, keys)
	c.checkLogs()

	var purged []string
	for _, m := range c.members {
		s := m.node().Replicator().Stats()
		purged = append(purged, fmt.Sprintf("%s %d", m.name, s.Purged))
	}
	report(t, figures{
		Seed:       seed,
		Faults:     fmt.Sprintf("%s's link cut while dc1 and dc2 deleted all %d keys (with context) and updated some; %s updated %d of them meanwhile", cut, n, cut, len(concurrent)),
		Operations: led.Ops.Load(),
		Acked:      int64(a.Puts + a.Deletes),
		Lost:       a.Lost + a2.Lost,
		Converge:   round(converged),
		Extra: map[string]any{
			"deletes_acked":                 a.Deletes,
			"partition":                     round(healed.Sub(cutAt)),
			"tombstones_held_while_cut":     held,
			"tombstones_purged_after_heal":  round(purgedAfter),
			"purged_keys_per_dc":            strings.Join(purged, ", "),
			"keys_404_everywhere":           gone,
			"concurrent_updates_surviving":  survivors,
			"keys_left":                     keysLeft.Keys,
			"resurrections":                 0,
			"events_redelivered_after_heal": replayed,
			"accounting":                    a.String(),
		},
	}, begin)
}

// checkDeleted requires that each key whose acknowledged puts were all
// covered by acknowledged deletes or puts with context, and which no
// write of uncertain outcome touched, either reads 404 at every DC (when
// its last covering write was a delete) or shows one value; and that each
// of the updates dc3 made while cut off (acknowledged after the first
// from acknowledgements) is live, or, on an lww key whose delete won, in
// a conflict log (account checks that). It returns how many keys read 404
// everywhere and how many concurrent updates are live.
func checkDeleted(t *testing.T, c *cluster, led *ledger.Ledger, keys []string, from int) (gone, survivors int) {
	t.Helper()
	puts := map[string][]string{}
	var dc3Puts []ledger.Op
	for i, op := range led.AckedOps() {
		if !op.Delete {
			puts[op.Key] = append(puts[op.Key], op.Value)
			if op.DC == "dc3" && i >= from {
				dc3Puts = append(dc3Puts, op)
			}
		}
	}
	covered := func(key string) bool {
		if led.Doubts(key) > 0 {
			return false
		}
		for _, v := range puts[key] {
			if led.DeletedBy(v) == "" && led.SupersededBy(v) == "" {
				return false
			}
		}
		return true
	}
	var wantGone []string
	for _, key := range keys {
		if covered(key) {
			wantGone = append(wantGone, key)
		}
	}
	for _, key := range wantGone {
		for _, m := range c.members {
			v, status, err := c.get(m, key)
			if err != nil {
				t.Fatal(err)
			}
			if status != 404 && len(v.LiveValues()) > 0 {
				// A put with context may have covered the delete: then one
				// value lives, and the ledger has it as not covered.
				t.Errorf("RESURRECTION: every acknowledged version of %s was covered by a delete or a later write, yet %s shows %s", key, m.name, v.Canonical())
			}
		}
		gone++
	}
	for _, op := range dc3Puts {
		live := true
		for _, m := range c.members {
			v, _, err := c.get(m, op.Key)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(v.LiveValues(), op.Value) {
				live = false
			}
		}
		by := led.SupersededBy(op.Value) + led.DeletedBy(op.Value)
		switch {
		case live:
			survivors++
		case by == "" && !strings.HasPrefix(op.Key, lwwPrefix):
			t.Errorf("dc3's update %s of %s, concurrent with its delete, is not live at every DC", op.Value, op.Key)
		}
	}
	t.Logf("%d keys had every acknowledged version covered and read 404 everywhere; %d of dc3's %d concurrent updates survive", gone, survivors, len(dc3Puts))
	return gone, survivors
}

// replayAll deletes every DC's consumers, so that each link consumes its
// upstream's stream again from the first message, and waits until every
// link has consumed it all. It returns how many messages came again.
func replayAll(t *testing.T, c *cluster) uint64 {
	t.Helper()
	nc, js := c.js()
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var total uint64
	type link struct{ dc, up string }
	var links []link
	for _, dc := range c.opts.dcs {
		plan, err := bridge.NewPlan(c.opts.topology, dc, c.opts.dcs, hubOf(c))
		if err != nil {
			t.Fatal(err)
		}
		for _, up := range plan.Upstreams {
			links = append(links, link{dc, up})
			s, err := js.Stream(ctx, names.Stream(up))
			if err != nil {
				t.Fatal(err)
			}
			info, err := s.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			total += info.State.Msgs
			if err := js.DeleteConsumer(ctx, names.Stream(up), names.Consumer(dc, up)); err != nil {
				t.Fatalf("delete consumer %s: %v", names.Consumer(dc, up), err)
			}
		}
	}
	err := repl.WaitFor(time.Minute, 50*time.Millisecond, func() bool {
		for _, l := range links {
			cons, err := js.Consumer(ctx, names.Stream(l.up), names.Consumer(l.dc, l.up))
			if err != nil {
				return false
			}
			info, err := cons.Info(ctx)
			if err != nil || info.NumPending > 0 || info.NumAckPending > 0 {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("the links did not consume their streams again: %v", err)
	}
	return total
}
