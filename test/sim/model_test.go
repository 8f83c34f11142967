package sim

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// TestOutOfOrderLosesWrites is the negative control of TestRandomSchedules:
// it shows that the lost-write check (lostPuts) has teeth, and why the
// store must never apply past a gap (docs/DESIGN.md, invariant 4).
//
// The store cannot be made to skip a gap, so this runs a mesh of the pure
// core (dvv.State with no gap detection), as the reference model of
// docs/DESIGN.md "Data model" does: with FIFO links no acknowledged put is
// lost, and with events delivered in any order some are, because a later dot
// raises the clock past an earlier event that has not arrived, which then
// looks obsolete and is dropped.
//
// It also shows why lostPuts excuses only puts a later writer saw: if any
// context covering a put's dot excused it, the losses would go unnoticed,
// because the lost event's dot is exactly what the too-high clock covers.
func TestOutOfOrderLosesWrites(t *testing.T) {
	const seeds = 2000
	for _, fifo := range []bool{true, false} {
		lost, naive := 0, 0
		for seed := int64(1); seed <= seeds; seed++ {
			res := runModel(seed, fifo)
			if res.diverged {
				if fifo {
					t.Fatalf("seed %d: the pure core did not converge over FIFO links", seed)
				}
				continue
			}
			if len(res.lost) > 0 {
				if fifo {
					t.Fatalf("seed %d: the pure core lost %s over FIFO links", seed, fmtPuts(res.lost))
				}
				lost++
			}
			if len(res.lostNaive) > 0 {
				naive++
			}
		}
		t.Logf("fifo=%v: %d of %d schedules lose an acknowledged put (%d if any covering context excused a put, seen or not)", fifo, lost, seeds, naive)
		if !fifo && lost == 0 {
			t.Errorf("applying past gaps lost no write in %d schedules: lostPuts cannot tell a lost write", seeds)
		}
	}
}

type modelEvent struct {
	key string
	dot vclock.Dot
	ctx vclock.VV
	ver dvv.Version
}

type modelResult struct {
	diverged bool
	lost     []putRef
	// lostNaive is what lostPuts finds when any later context that covers
	// a put's dot excuses it, seen or not.
	lostNaive []putRef
}

// runModel is the reference model's random run (docs/DESIGN.md "Data
// model") over dvv.State: 2 to 5 DCs, 1 to 4
// keys, writes with a context read at any DC or none, deletes, duplicates.
func runModel(seed int64, fifo bool) modelResult {
	r := rand.New(rand.NewSource(seed))
	n := 2 + r.Intn(4)
	names := make([]string, n)
	state := map[string]map[string]dvv.State{}
	seq := map[string]uint64{}
	for i := range names {
		names[i] = fmt.Sprintf("dc%d", i+1)
		state[names[i]] = map[string]dvv.State{}
	}
	keys := make([]string, 1+r.Intn(4))
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	links := map[Link][]modelEvent{}
	var order []Link
	for _, a := range names {
		for _, b := range names {
			if a != b {
				order = append(order, Link{a, b})
			}
		}
	}
	get := func(dc, key string) dvv.State {
		st, ok := state[dc][key]
		if !ok {
			return dvv.State{Clock: vclock.VV{}}
		}
		return st
	}
	apply := func(dc string, ev modelEvent) {
		if st, ok := get(dc, ev.key).Apply(ev.dot, ev.ctx, ev.ver); ok {
			state[dc][ev.key] = st
		}
	}
	var acked []putRef
	superseded := map[string]map[vclock.Dot]bool{}
	naive := map[string]map[vclock.Dot]bool{}
	steps := 5 + r.Intn(56)
	for step := 0; step < steps; step++ {
		if r.Float64() < 0.5 {
			dc, key := names[r.Intn(n)], keys[r.Intn(len(keys))]
			ctx := vclock.VV{}
			var read dvv.State
			if r.Float64() < 0.6 {
				read = get(names[r.Intn(n)], key)
				ctx = read.Clock.Clone()
			}
			ver := dvv.Version{Value: []byte(fmt.Sprintf("v%d", step))}
			if r.Float64() < 0.15 {
				ver = dvv.Version{Deleted: true}
			}
			st := get(dc, key)
			ctx = st.WriteContext(ctx, false, nil)
			seq[dc]++
			dot := vclock.Dot{DC: dc, N: seq[dc]}
			state[dc][key] = st.Write(dot, ctx, ver)
			if !ver.Deleted {
				acked = append(acked, putRef{Key: key, Dot: dot, Value: ver.Value})
			}
			markSuperseded(superseded, key, read.Siblings, ctx)
			var all []dvv.Sibling
			for _, a := range acked {
				if a.Key == key && a.Dot != dot {
					all = append(all, dvv.Sibling{Dot: a.Dot})
				}
			}
			markSuperseded(naive, key, all, ctx)
			for _, l := range order {
				if l.From == dc {
					links[l] = append(links[l], modelEvent{key, dot, ctx, ver})
				}
			}
			continue
		}
		var busy []Link
		for _, l := range order {
			if len(links[l]) > 0 {
				busy = append(busy, l)
			}
		}
		if len(busy) == 0 {
			continue
		}
		l := busy[r.Intn(len(busy))]
		i := 0
		if !fifo {
			i = r.Intn(len(links[l]))
		}
		ev := links[l][i]
		links[l] = append(links[l][:i:i], links[l][i+1:]...)
		apply(l.To, ev)
		if r.Float64() < 0.2 {
			apply(l.To, ev) // a duplicate changes nothing
		}
	}
	for _, l := range order {
		for len(links[l]) > 0 {
			i := 0
			if !fifo {
				i = r.Intn(len(links[l]))
			}
			ev := links[l][i]
			links[l] = append(links[l][:i:i], links[l][i+1:]...)
			apply(l.To, ev)
		}
	}
	final := state[names[0]]
	for _, dc := range names[1:] {
		for _, key := range keys {
			a, aok := final[key]
			b, bok := state[dc][key]
			if aok != bok || !sameState(a, b) {
				return modelResult{diverged: true}
			}
		}
	}
	return modelResult{lost: lostPuts(acked, superseded, final, nil), lostNaive: lostPuts(acked, naive, final, nil)}
}
