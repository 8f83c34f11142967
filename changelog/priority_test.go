package changelog

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// commitLog records, through Options.OnCommit, which keys each committed
// batch changed, by local writes and by remote events. Batches are
// recorded in commit order.
type commitLog struct {
	dc     string
	mu     sync.Mutex
	groups []committed
	moved  chan struct{} // a value after each record
}

type committed struct {
	locals, remote []string
}

func newCommitLog(dc string) *commitLog {
	return &commitLog{dc: dc, moved: make(chan struct{}, 1)}
}

func (c *commitLog) record(chs []Change) {
	var g committed
	for _, ch := range chs {
		if ch.Origin == c.dc {
			g.locals = append(g.locals, ch.Key)
		} else {
			g.remote = append(g.remote, ch.Key)
		}
	}
	c.mu.Lock()
	c.groups = append(c.groups, g)
	c.mu.Unlock()
	select {
	case c.moved <- struct{}{}:
	default:
	}
}

func (c *commitLog) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.groups)
}

// waitFor waits until cond holds over the batches recorded, or fails t
// when cond says why it never will.
func (c *commitLog) waitFor(t *testing.T, timeout time.Duration, what string, cond func([]committed) (bool, string)) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		ok, fail := cond(c.groups)
		c.mu.Unlock()
		if fail != "" {
			t.Fatal(fail)
		}
		if ok {
			return
		}
		select {
		case <-c.moved:
		case <-deadline.C:
			t.Fatalf("%s: not after %s", what, timeout)
		}
	}
}

// ahead sums the remote events applied by the batches recorded from index
// from up to and including the one that changed key, and counts those
// batches; ok is false while key is not committed.
func (c *commitLog) ahead(from int, key string) (events, batches int, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, g := range c.groups[from:] {
		events += len(g.remote)
		batches++
		if slices.Contains(g.locals, key) || slices.Contains(g.remote, key) {
			return events, batches, true
		}
	}
	return 0, 0, false
}

// remoteBacklog returns, for each partition, n events of origin in
// sequence order, each writing a new key.
func remoteBacklog(origin string, partitions, n int) [][]*event.Event {
	out := make([][]*event.Event, partitions)
	full := 0
	for i := 0; full < partitions; i++ {
		key := fmt.Sprintf("%s-r%d", origin, i)
		p := event.PartitionOf(key, partitions)
		if len(out[p]) == n {
			continue
		}
		seq := uint64(len(out[p]) + 1)
		out[p] = append(out[p], &event.Event{Version: event.SchemaVersion, Origin: origin, Partition: p, Seq: seq,
			Key: key, Op: event.OpPut, Value: []byte("remote"), Dot: vclock.Dot{DC: origin, N: seq},
			Context: vclock.VV{}, HLC: uint64(i + 1), Path: []string{origin}})
		if len(out[p]) == n {
			full++
		}
	}
	return out
}

// applyAll applies evs in chunks of chunk events, one Apply at a time,
// until done or stop is closed, and returns the chunks it applied.
func applyAll(t testing.TB, s *Store, evs []*event.Event, chunk int, stop <-chan struct{}) int {
	n := 0
	for off := 0; off < len(evs); off += chunk {
		select {
		case <-stop:
			return n
		default:
		}
		if _, err := s.Apply(context.Background(), evs[off:min(off+chunk, len(evs))], nil); err != nil {
			if err != ErrClosed {
				t.Errorf("apply: %v", err)
			}
			return n
		}
		n++
	}
	return n
}

// startAppliers starts a goroutine per backlog that applies it
// (applyAll) until done or stop is closed, and returns their WaitGroup and
// the count of those that applied their whole backlog.
func startAppliers(t testing.TB, s *Store, backlogs [][]*event.Event, chunk int, stop <-chan struct{}) (*sync.WaitGroup, *atomic.Int32) {
	var wg sync.WaitGroup
	var finished atomic.Int32
	for _, evs := range backlogs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if applyAll(t, s, evs, chunk, stop) == (len(evs)+chunk-1)/chunk {
				finished.Add(1)
			}
		}()
	}
	return &wg, &finished
}

// startWriters starts n goroutines that write (writeAll) until stop is
// closed, and returns their WaitGroup and the count of their writes.
func startWriters(t testing.TB, s *Store, n int, stop <-chan struct{}) (*sync.WaitGroup, *atomic.Int64) {
	var wg sync.WaitGroup
	var writes atomic.Int64
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			writeAll(t, s, fmt.Sprint("w", w), stop, &writes)
		}()
	}
	return &wg, &writes
}

// writeAll makes local writes of keys prefix-0, prefix-1, … one after
// another until stop is closed, counting them in n.
func writeAll(t testing.TB, s *Store, prefix string, stop <-chan struct{}, n *atomic.Int64) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		if _, err := s.Write(context.Background(), WriteOp{Key: fmt.Sprintf("%s-%d", prefix, i), Value: []byte("v")}); err != nil {
			if err != ErrClosed {
				t.Errorf("write: %v", err)
			}
			return
		}
		n.Add(1)
	}
}

// TestLocalWriteWaitsForBoundedApplies queues a backlog of thousands of
// remote events from 24 appliers at once into a real Pebble store, then
// makes local writes one after another: each must be committed behind at
// most a few batches' share of applies (Options.GroupApplyEvents), however
// large the backlog, instead of behind all of it.
func TestLocalWriteWaitsForBoundedApplies(t *testing.T) {
	const (
		share    = 128 // apply events per batch
		appliers = 24  // each Apply is one share: 3,072 events queued at once
		perApply = 16  // Applies each applier has to make
		writes   = 20
		// A write's batch is at most the sixth after the ones recorded
		// when it was made: up to four built or syncing ahead of it, and
		// one more if it joined the queue as a batch was drained. Two
		// more for the scheduler: the writer counts the batches recorded
		// just before its request joins the queue, not at that instant.
		bound = 8 * share
	)
	log := newCommitLog("dc1")
	s := openMem(t, nil, "dc1", Options{Partitions: appliers, GroupApplyEvents: share, OnCommit: log.record})
	backlog := remoteBacklog("dc2", appliers, perApply*share)
	stop := make(chan struct{})
	wg, finished := startAppliers(t, s, backlog, share, stop)
	defer wg.Wait()
	defer close(stop)
	log.waitFor(t, 30*time.Second, "two batches of applies", func(gs []committed) (bool, string) {
		return len(gs) >= 2 && len(gs[1].remote) > 0, ""
	})
	var worst, worstBatches int
	for i := range writes {
		key := fmt.Sprintf("local-%d", i)
		from := log.len()
		mustWrite(t, s, WriteOp{Key: key, Value: []byte("v")})
		events, batches, ok := log.ahead(from, key)
		if !ok {
			t.Fatalf("local write %d is acknowledged but no batch recorded committed it", i)
		}
		if events > bound {
			t.Fatalf("local write %d waited behind %d remote events in %d batches, over the bound of %d (8 batches of a %d-event share)", i, events, batches, bound, share)
		}
		if events > worst {
			worst, worstBatches = events, batches
		}
	}
	if n := finished.Load(); n > 0 {
		t.Fatalf("%d appliers ran out of events before the writes ended: the backlog did not last, give them more", n)
	}
	t.Logf("worst local write: behind %d remote events in %d batches (bound %d)", worst, worstBatches, bound)
}

// TestAppliesProgressUnderLocalLoad keeps the committer's local queue full
// (64 writers, 8 requests a batch) while one applier applies a backlog:
// every batch still takes a share of applies, so each of the applier's
// Applies is committed within a few batches, and it finishes.
func TestAppliesProgressUnderLocalLoad(t *testing.T) {
	const (
		share   = 128
		writers = 64
		applies = 10
		// An Apply's batch is at most the sixth after the ones recorded
		// when it was made, as for a local write in
		// TestLocalWriteWaitsForBoundedApplies; twice that for the
		// scheduler, since batches of 8 writes commit quickly.
		maxBatches = 12
	)
	log := newCommitLog("dc1")
	s := openMem(t, nil, "dc1", Options{Partitions: 4, MaxGroup: 8, GroupApplyEvents: share, OnCommit: log.record})
	stop := make(chan struct{})
	wg, _ := startWriters(t, s, writers, stop)
	defer wg.Wait()
	defer close(stop)
	log.waitFor(t, 30*time.Second, "a batch full of local writes", func(gs []committed) (bool, string) {
		return len(gs) > 0 && len(gs[len(gs)-1].locals) == 8, ""
	})
	evs := remoteBacklog("dc2", 4, applies*share)[0]
	// The applier notes the batches recorded before each Apply, and then
	// how many batches it took for the Apply's first event to commit.
	took := make(chan int, applies)
	go func() {
		defer close(took)
		for off := 0; off < len(evs); off += share {
			from := log.len()
			if _, err := s.Apply(context.Background(), evs[off:off+share], nil); err != nil {
				if err != ErrClosed { // closed: the test failed and ended
					t.Errorf("apply: %v", err)
				}
				return
			}
			_, batches, ok := log.ahead(from, evs[off].Key)
			if !ok {
				t.Errorf("an Apply is acknowledged but no batch recorded committed it")
				return
			}
			took <- batches
		}
	}()
	start := log.len()
	// Each Apply gets in within maxBatches; allow twice that in all.
	limit := start + 2*applies*maxBatches
	var worst, got int
	log.waitFor(t, 60*time.Second, "the applier's backlog applied", func(gs []committed) (bool, string) {
		for {
			select {
			case n, ok := <-took:
				if !ok {
					return true, ""
				}
				got++
				worst = max(worst, n)
				continue
			default:
			}
			break
		}
		if len(gs) > limit {
			return false, fmt.Sprintf("applies starved: %d batches of local writes since the applier started, and %d of its %d Applies are done", len(gs)-start, got, applies)
		}
		return false, ""
	})
	if got != applies {
		t.Fatalf("the applier made %d of %d Applies", got, applies)
	}
	if worst > maxBatches {
		t.Fatalf("an Apply was committed in the %dth batch after it was queued, under a steady local load (at most %d expected)", worst, maxBatches)
	}
	t.Logf("each Apply committed within %d batches of being queued", worst)
}

// TestPicker checks the committer's choice of each group's requests, step
// by step: locals first, a bounded share of applies, at least one apply per
// group, and a group cut short by a local request arriving while it
// applies. A script's words: "lN" queues local request lN; "=x" says the
// next request picked is x, "=|" that the group ends there (the next pick
// starts a group, as commitLoop does); "=." that nothing is left.
func TestPicker(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxLocal int
		share    int
		applies  map[string]int // name: events, queued in name order
		script   string
	}{{
		name: "locals first, then a share of applies", maxLocal: 8, share: 512,
		applies: map[string]int{"a1": 256, "a2": 256, "a3": 256},
		script:  "l1 l2 =l1 =l2 =a1 =a2 =| =a3 =| =.",
	}, {
		name: "an Apply over the share goes alone", maxLocal: 8, share: 512,
		applies: map[string]int{"a1": 100, "a2": 2000, "a3": 100},
		script:  "=a1 =| =a2 =| =a3 =| =.",
	}, {
		name: "a full local queue still lets one apply through", maxLocal: 2, share: 512,
		applies: map[string]int{"a1": 10, "a2": 10},
		script:  "l1 l2 l3 l4 l5 =l1 =l2 =a1 =| =l3 =l4 =a2 =| =l5 =| =.",
	}, {
		name: "a local arriving while applies run ends the group", maxLocal: 8, share: 1 << 20,
		applies: map[string]int{"a1": 100, "a2": 100, "a3": 100, "a4": 100},
		script:  "=a1 =a2 l1 l2 =l1 =l2 =| =a3 =a4 =| =.",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			reqs, applies := make(chan *request, 16), make(chan *request, 16)
			names := map[*request]string{}
			add := func(q chan *request, name string, events int) {
				r := &request{events: events}
				names[r] = name
				q <- r
			}
			for _, n := range slices.Sorted(maps.Keys(tc.applies)) {
				add(applies, n, tc.applies[n])
			}
			p := &picker{reqs: reqs, applies: applies, maxLocal: tc.maxLocal, share: tc.share}
			open := false // a group is being picked
			// pick returns the next request's name, "|" at a group's end,
			// "." when nothing is left to start one with.
			pick := func() string {
				if !open {
					if p.held == nil {
						select {
						case p.held = <-reqs:
						case p.held = <-applies:
						default:
							return "."
						}
					}
					p.reset()
					open = true
				}
				r := p.next()
				if r == nil {
					open = false
					return "|"
				}
				return names[r]
			}
			for i, w := range strings.Fields(tc.script) {
				want, ok := strings.CutPrefix(w, "=")
				if !ok {
					add(reqs, w, 0)
					continue
				}
				if got := pick(); got != want {
					t.Fatalf("word %d (%s): picked %q", i, w, got)
				}
			}
		})
	}
}
