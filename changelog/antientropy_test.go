package changelog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path"
	"slices"
	"sort"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// aeDC is one DC of an anti-entropy scenario: a store on a shared in-memory
// filesystem that can be backed up and restored from an old copy.
type aeDC struct {
	t    testing.TB
	name string
	dcs  []string
	fs   vfs.FS
	dir  string
	s    *Store
	bak  int
}

func (d *aeDC) open() {
	d.t.Helper()
	s, err := Open(d.dir, Options{DC: d.name, DCs: d.dcs, Partitions: 2, FS: d.fs, Clock: &counterClock{}})
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { s.Close() })
	d.s = s
}

// backup copies the DC's data dir aside, with the store closed, and
// reopens it; it returns the copy's directory.
func (d *aeDC) backup() string {
	d.t.Helper()
	if err := d.s.Close(); err != nil {
		d.t.Fatal(err)
	}
	d.bak++
	to := fmt.Sprintf("%s.bak%d", d.dir, d.bak)
	copyDir(d.t, d.fs, d.dir, to)
	d.open()
	return to
}

// restore replaces the DC's data with the copy in dir, then does what the
// bridge does at start: it raises each partition's sequence to the last one
// the DC issued, marking the sequences the copy lacks as lost. With lost
// false it raises them without marking (EnsureSeqAbove alone).
func (d *aeDC) restore(dir string, lost bool) {
	d.t.Helper()
	issued := d.s.Applied()[d.name]
	if err := d.s.Close(); err != nil {
		d.t.Fatal(err)
	}
	d.bak++
	d.dir = fmt.Sprintf("%s.restored%d", dir, d.bak)
	copyDir(d.t, d.fs, dir, d.dir)
	d.open()
	for p, hi := range issued {
		var err error
		if lost {
			_, err = d.s.ResumeAbove(context.Background(), uint32(p), hi)
		} else {
			err = d.s.EnsureSeqAbove(context.Background(), uint32(p), hi)
		}
		if err != nil {
			d.t.Fatal(err)
		}
	}
}

func copyDir(t testing.TB, fs vfs.FS, from, to string) {
	t.Helper()
	if err := fs.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	names, err := fs.List(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := vfs.Copy(fs, path.Join(from, n), path.Join(to, n)); err != nil {
			t.Fatal(err)
		}
	}
}

// aeWorld is a set of DCs and every event they issued, in issue order.
type aeWorld struct {
	t   testing.TB
	dcs map[string]*aeDC
	evs []*event.Event
}

func newWorld(t testing.TB, names ...string) *aeWorld {
	w := &aeWorld{t: t, dcs: map[string]*aeDC{}}
	fs := vfs.NewMem()
	for _, n := range names {
		d := &aeDC{t: t, name: n, dcs: names, fs: fs, dir: "/" + n}
		d.open()
		w.dcs[n] = d
	}
	return w
}

func (w *aeWorld) store(dc string) *Store { return w.dcs[dc].s }

// put writes key=val at dc with the context of a local read (a
// read-modify-write), or blind when blind is set.
func (w *aeWorld) put(dc, key, val string, blind bool) *event.Event {
	w.t.Helper()
	op := WriteOp{Key: key, Value: []byte(val)}
	if !blind {
		op.Context = w.clock(dc, key)
	}
	ev := mustWrite(w.t, w.store(dc), op).Event
	w.evs = append(w.evs, ev)
	return ev
}

func (w *aeWorld) del(dc, key string) *event.Event {
	w.t.Helper()
	ev := mustWrite(w.t, w.store(dc), WriteOp{Key: key, Delete: true}).Event
	w.evs = append(w.evs, ev)
	return ev
}

func (w *aeWorld) clock(dc, key string) vclock.VV {
	st, _, err := w.store(dc).Get(key)
	if err != nil {
		w.t.Fatal(err)
	}
	return st.Clock.Clone()
}

// deliver offers dc every event of the other DCs issued so far, in order,
// as their streams would.
func (w *aeWorld) deliver(dc string) {
	w.t.Helper()
	var evs []*event.Event
	for _, ev := range w.evs {
		if ev.Origin != dc {
			evs = append(evs, ev)
		}
	}
	if _, err := w.store(dc).Apply(context.Background(), evs, nil); err != nil {
		w.t.Fatal(err)
	}
}

// purge has every DC report its applied vector to every other, then purges
// everywhere.
func (w *aeWorld) purge() {
	w.t.Helper()
	var stores []*Store
	for _, n := range w.names() {
		stores = append(stores, w.store(n))
	}
	report(stores)
	for _, s := range stores {
		if _, err := s.Purge(context.Background()); err != nil {
			w.t.Fatal(err)
		}
	}
}

func (w *aeWorld) names() []string {
	var out []string
	for n := range w.dcs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// repairAll runs anti-entropy from every DC to every other, rounds times.
func (w *aeWorld) repairAll(rounds int) MergeStats {
	w.t.Helper()
	var total MergeStats
	for range rounds {
		for _, a := range w.names() {
			for _, b := range w.names() {
				if a != b {
					total.Add(pull(w.t, w.store(a), w.store(b)))
				}
			}
		}
	}
	return total
}

// pull runs one anti-entropy pass of dst against src through the store's
// API, as pkg/antientropy does over NATS: compare trees, list the differing
// buckets, export the differing keys with src's knowledge, merge into dst.
func pull(t testing.TB, dst, src *Store) MergeStats {
	t.Helper()
	var total MergeStats
	lt, err := dst.Trees()
	if err != nil {
		t.Fatal(err)
	}
	rt, err := src.Trees()
	if err != nil {
		t.Fatal(err)
	}
	for p := range lt {
		var diff []int
		for b := range TreeBuckets {
			if lt[p].Buckets[b] != rt[p].Buckets[b] {
				diff = append(diff, b)
			}
		}
		if len(diff) == 0 {
			continue
		}
		lk, err := dst.Buckets(uint32(p), diff)
		if err != nil {
			t.Fatal(err)
		}
		rk, err := src.Buckets(uint32(p), diff)
		if err != nil {
			t.Fatal(err)
		}
		keys := differingKeys(lk, rk)
		k, raw, err := src.Export(keys)
		if err != nil {
			t.Fatal(err)
		}
		states := map[string]dvv.State{}
		for _, key := range keys {
			states[key] = dvv.State{}
			if b, ok := raw[key]; ok {
				if states[key], err = DecodeState(b); err != nil {
					t.Fatal(err)
				}
			}
		}
		st, err := dst.MergeStates(context.Background(), states, k)
		if err != nil {
			t.Fatal(err)
		}
		total.Add(st)
	}
	return total
}

func differingKeys(a, b []KeyHash) []string {
	m := map[string][32]byte{}
	for _, kh := range a {
		m[kh.Key] = kh.Hash
	}
	var out []string
	for _, kh := range b {
		if h, ok := m[kh.Key]; !ok || h != kh.Hash {
			out = append(out, kh.Key)
		}
		delete(m, kh.Key)
	}
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// show renders a key's siblings at dc, "-" when the store holds nothing.
func (w *aeWorld) show(dc, key string) string {
	w.t.Helper()
	st, ok, err := w.store(dc).Get(key)
	if err != nil {
		w.t.Fatal(err)
	}
	if !ok {
		return "-"
	}
	return fmt.Sprint(values(st))
}

func (w *aeWorld) digests() map[string]string {
	w.t.Helper()
	out := map[string]string{}
	for _, n := range w.names() {
		d, err := w.store(n).Digest()
		if err != nil {
			w.t.Fatal(err)
		}
		out[n] = d.Hex()
	}
	return out
}

func (w *aeWorld) requireConverged() {
	w.t.Helper()
	ds := w.digests()
	first := ds[w.names()[0]]
	for n, d := range ds {
		if d != first {
			w.t.Fatalf("digests differ after anti-entropy: %v (%s differs)", ds, n)
		}
	}
}

func TestTreeMatchesDigest(t *testing.T) {
	w := newWorld(t, "dc1", "dc2")
	for i := range 40 {
		w.put("dc1", fmt.Sprintf("k%d", i), fmt.Sprint("v", i), false)
	}
	w.del("dc1", "k3")
	s := w.store("dc1")
	d, err := s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	trees, err := s.Trees()
	if err != nil {
		t.Fatal(err)
	}
	keys := 0
	for p := range trees {
		if trees[p].Sum() != d.Partitions[p] {
			t.Fatalf("partition %d: the tree's sum differs from the digest", p)
		}
		one, err := s.Tree(uint32(p))
		if err != nil {
			t.Fatal(err)
		}
		if one != trees[p] {
			t.Fatalf("partition %d: Tree and Trees differ", p)
		}
		keys += trees[p].Keys
		for b := range TreeBuckets {
			khs, err := s.Bucket(uint32(p), b)
			if err != nil {
				t.Fatal(err)
			}
			var sum [32]byte
			for _, kh := range khs {
				if kh.Bucket != b || BucketOf(kh.Key) != b || event.PartitionOf(kh.Key, 2) != uint32(p) {
					t.Fatalf("bucket %d of partition %d lists %q", b, p, kh.Key)
				}
				addLanes(&sum, &kh.Hash)
			}
			if sum != trees[p].Buckets[b] {
				t.Fatalf("partition %d bucket %d: the listed hashes do not add up to the bucket's", p, b)
			}
		}
	}
	if keys != d.Keys {
		t.Fatalf("trees count %d keys, digest %d", keys, d.Keys)
	}
	if _, err := s.Tree(2); !errors.Is(err, ErrBadInput) {
		t.Fatalf("Tree of partition 2 of 2: %v, want ErrBadInput", err)
	}
	if _, err := s.Buckets(0, []int{256}); !errors.Is(err, ErrBadInput) {
		t.Fatalf("bucket 256: %v, want ErrBadInput", err)
	}
}

// TestMerge gives each scenario as steps and the values every DC must
// show for each key once anti-entropy has run both ways.
func TestMerge(t *testing.T) {
	type want map[string]string // key -> siblings at every DC
	for _, tc := range []struct {
		name string
		dcs  []string
		run  func(w *aeWorld)
		want want
	}{{
		name: "each side missed the other's events",
		dcs:  []string{"dc1", "dc2"},
		run: func(w *aeWorld) {
			w.put("dc1", "a", "1", false)
			w.put("dc1", "b", "2", false)
			w.put("dc2", "c", "3", false)
		},
		want: want{"a": "[1]", "b": "[2]", "c": "[3]"},
	}, {
		name: "concurrent writes become siblings",
		dcs:  []string{"dc1", "dc2"},
		run: func(w *aeWorld) {
			w.put("dc1", "k", "x", false)
			w.put("dc2", "k", "y", false)
		},
		want: want{"k": "[x y]"},
	}, {
		name: "a superseded value held by a restored copy does not come back",
		dcs:  []string{"dc1", "dc2"},
		run: func(w *aeWorld) {
			w.put("dc1", "k", "old", false)
			w.deliver("dc2")
			bak := w.dcs["dc2"].backup()
			w.put("dc1", "k", "new", false)
			w.deliver("dc2")
			w.dcs["dc2"].restore(bak, true)
			if got := w.show("dc2", "k"); got != "[old]" {
				w.t.Fatalf("restored copy shows %s, want [old]", got)
			}
		},
		want: want{"k": "[new]"},
	}, {
		name: "a key deleted and purged elsewhere does not come back",
		dcs:  []string{"dc1", "dc2", "dc3"},
		run: func(w *aeWorld) {
			w.put("dc1", "k", "v", false)
			w.put("dc1", "keep", "v", false)
			for _, dc := range w.names() {
				w.deliver(dc)
			}
			bak := w.dcs["dc3"].backup()
			w.del("dc2", "k")
			for _, dc := range w.names() {
				w.deliver(dc)
			}
			w.purge()
			for _, dc := range w.names() {
				if got := w.show(dc, "k"); got != "-" {
					w.t.Fatalf("%s: k is %s after the purge, want it gone", dc, got)
				}
			}
			w.dcs["dc3"].restore(bak, true)
			if got := w.show("dc3", "k"); got != "[v]" {
				w.t.Fatalf("restored dc3 shows k=%s, want [v]", got)
			}
		},
		want: want{"k": "-", "keep": "[v]"},
	}, {
		name: "own writes lost by a restore come back from the peers",
		dcs:  []string{"dc1", "dc2"},
		run: func(w *aeWorld) {
			w.put("dc1", "a", "1", false)
			w.deliver("dc2")
			bak := w.dcs["dc1"].backup()
			w.put("dc1", "b", "2", false)
			w.put("dc1", "a", "3", false)
			w.deliver("dc2")
			w.dcs["dc1"].restore(bak, true)
			// The peer pulls first: it must keep what dc1 lost.
			pull(w.t, w.store("dc2"), w.store("dc1"))
			if got := w.show("dc2", "b"); got != "[2]" {
				w.t.Fatalf("dc2 dropped dc1's lost write: b=%s", got)
			}
		},
		want: want{"a": "[3]", "b": "[2]"},
	}, {
		name: "a lost own write survives a blind write made after the restore",
		dcs:  []string{"dc1", "dc2"},
		run: func(w *aeWorld) {
			w.put("dc1", "k", "old", false)
			w.deliver("dc2")
			bak := w.dcs["dc1"].backup()
			w.put("dc1", "k", "lost", false)
			w.deliver("dc2")
			w.dcs["dc1"].restore(bak, true)
			// dc1's clock now covers the lost dot without having seen it.
			w.put("dc1", "k", "new", true)
			w.deliver("dc2")
		},
		want: want{"k": "[lost new]"},
	}, {
		name: "a tombstone wins over a restored live value",
		dcs:  []string{"dc1", "dc2"},
		run: func(w *aeWorld) {
			w.put("dc2", "k", "v", false)
			w.deliver("dc1")
			bak := w.dcs["dc2"].backup()
			w.del("dc1", "k")
			w.deliver("dc2")
			w.dcs["dc2"].restore(bak, true)
		},
		want: want{"k": "[<deleted dc1:1>]"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.dcs...)
			tc.run(w)
			w.repairAll(2)
			w.requireConverged()
			for key, v := range tc.want {
				for _, dc := range w.names() {
					if got := w.show(dc, key); got != v {
						t.Errorf("%s: %s = %s, want %s", dc, key, got, v)
					}
				}
			}
		})
	}
}

// TestMergeNeedsLostRanges is the control of the lost-writes case: a
// restored DC that only raises its sequences (EnsureSeqAbove, without
// MarkLost) claims to have seen its lost writes, and a peer that pulls from
// it drops them. The bridge must call ResumeAbove before anti-entropy runs.
func TestMergeNeedsLostRanges(t *testing.T) {
	w := newWorld(t, "dc1", "dc2")
	w.put("dc1", "a", "1", false)
	w.deliver("dc2")
	bak := w.dcs["dc1"].backup()
	w.put("dc1", "b", "2", false)
	w.deliver("dc2")
	w.dcs["dc1"].restore(bak, false)
	pull(t, w.store("dc2"), w.store("dc1"))
	if got := w.show("dc2", "b"); got != "-" {
		t.Fatalf("without lost ranges dc2 shows b=%s; the control expects the loss this test documents", got)
	}
}

func TestMarkLostAndFound(t *testing.T) {
	w := newWorld(t, "dc1", "dc2")
	ctx := context.Background()
	s := w.store("dc1")
	if err := s.MarkLost(ctx, 0, 3, 7); err != nil {
		t.Fatal(err)
	}
	if got := s.Applied()["dc1"][0]; got != 7 {
		t.Fatalf("MarkLost must raise the sequence past the lost range: %d", got)
	}
	if r, err := s.ResumeAbove(ctx, 0, 7); err != nil || r != (SeqRange{}) {
		t.Fatalf("ResumeAbove at the current sequence: %v %v, want nothing marked", r, err)
	}
	if r, err := s.ResumeAbove(ctx, 1, 4); err != nil || r != (SeqRange{1, 4}) {
		t.Fatalf("ResumeAbove(1, 4): %v %v, want [1, 4]", r, err)
	}
	k, err := s.Knowledge()
	if err != nil {
		t.Fatal(err)
	}
	want := []LostRange{{"dc1", 0, 3, 7}, {"dc1", 1, 1, 4}}
	if !slices.Equal(k.Lost, want) {
		t.Fatalf("lost ranges %v, want %v", k.Lost, want)
	}
	for _, bad := range [][2]uint64{{0, 1}, {5, 4}, {1, event.MaxCounter}} {
		if err := s.MarkLost(ctx, 0, bad[0], bad[1]); !errors.Is(err, ErrBadInput) {
			t.Errorf("MarkLost%v: %v, want ErrBadInput", bad, err)
		}
	}
	if got := splitRange(LostRange{"x", 0, 3, 7}, []uint64{3, 5, 9}); !slices.Equal(got, []LostRange{{"x", 0, 4, 4}, {"x", 0, 6, 7}}) {
		t.Fatalf("splitRange: %v", got)
	}
}

// TestMergeThenStream checks that anti-entropy moves no applied vector and
// that the events of merged dots, arriving later in order, change nothing
// and keep the applied vector contiguous.
func TestMergeThenStream(t *testing.T) {
	w := newWorld(t, "dc1", "dc2")
	var evs []*event.Event
	for i := range 6 {
		evs = append(evs, w.put("dc1", fmt.Sprintf("k%d", i), "v", false))
	}
	pull(t, w.store("dc2"), w.store("dc1"))
	w.requireConverged()
	if a := w.store("dc2").Applied()["dc1"]; slices.ContainsFunc(a, func(n uint64) bool { return n > 0 }) {
		t.Fatalf("the merge moved the applied vector: %v", a)
	}
	before := w.digests()["dc2"]
	res, err := w.store("dc2").Apply(context.Background(), evs, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Outcome != Obsolete {
			t.Fatalf("event %s after the merge: %s, want obsolete", evs[i].Dot, r.Outcome)
		}
	}
	if after := w.digests()["dc2"]; after != before {
		t.Fatal("events of merged dots changed the state")
	}
	if !w.store("dc2").Applied().LessEq(w.store("dc1").Applied()) || !w.store("dc1").Applied().LessEq(w.store("dc2").Applied()) {
		t.Fatalf("applied vectors differ: %v vs %v", w.store("dc2").Applied(), w.store("dc1").Applied())
	}
}

func TestMergeRejectsBadInput(t *testing.T) {
	w := newWorld(t, "dc1", "dc2")
	w.put("dc2", "k", "v", false)
	s := w.store("dc1")
	k, raw, err := w.store("dc2").Export([]string{"k"})
	if err != nil {
		t.Fatal(err)
	}
	good, err := DecodeState(raw["k"])
	if err != nil {
		t.Fatal(err)
	}
	sib := func(dc string, n uint64) dvv.Sibling {
		return dvv.Sibling{Dot: vclock.Dot{DC: dc, N: n}, Version: dvv.Version{Value: []byte("x")}}
	}
	for _, tc := range []struct {
		name string
		key  string
		st   dvv.State
		k    Knowledge
	}{
		{"knowledge from itself", "k", good, Knowledge{DC: "dc1", Applied: k.Applied}},
		{"knowledge from an unknown DC", "k", good, Knowledge{DC: "dc9"}},
		{"wrong partition count", "k", good, Knowledge{DC: "dc2", Applied: Applied{"dc2": {1}}}},
		{"absurd lost range", "k", good, Knowledge{DC: "dc2", Lost: []LostRange{{"dc2", 0, 5, 4}}}},
		{"empty key", "", good, k},
		{"unknown DC in the clock", "k", dvv.State{Clock: vclock.VV{"dc9": 1}}, k},
		{"clock misses a sibling", "k", dvv.State{Clock: vclock.VV{"dc2": 1}, Siblings: []dvv.Sibling{sib("dc2", 2)}}, k},
		{"unsorted siblings", "k", dvv.State{Clock: vclock.VV{"dc2": 3}, Siblings: []dvv.Sibling{sib("dc2", 3), sib("dc2", 1)}}, k},
		{"an own dot never issued", "k", dvv.State{Clock: vclock.VV{"dc1": 5}, Siblings: []dvv.Sibling{sib("dc1", 5)}}, k},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.MergeStates(context.Background(), map[string]dvv.State{tc.key: tc.st}, tc.k)
			if !errors.Is(err, ErrBadInput) {
				t.Fatalf("got %v, want ErrBadInput", err)
			}
		})
	}
	if got := w.show("dc1", "k"); got != "-" {
		t.Fatalf("a rejected merge changed the store: k=%s", got)
	}
	changed, err := s.Merge(context.Background(), "k", good, k)
	if err != nil || !changed {
		t.Fatalf("the good merge: changed %v, %v", changed, err)
	}
}

// TestMergeMismatchConverges: two versions of one dot (a broken invariant,
// not an input a healthy peer sends) still converge, to the same one.
func TestMergeMismatchConverges(t *testing.T) {
	w := newWorld(t, "dc1", "dc2")
	w.put("dc2", "k", "v", false)
	w.deliver("dc1")
	k, raw, err := w.store("dc2").Export([]string{"k"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := DecodeState(raw["k"])
	if err != nil {
		t.Fatal(err)
	}
	st.Siblings[0].HLC += 100
	st.Siblings[0].Value = []byte("forged")
	stats, err := w.store("dc1").MergeStates(context.Background(), map[string]dvv.State{"k": st}, k)
	if err != nil || stats.Mismatched != 1 {
		t.Fatalf("stats %+v, %v: want one mismatch", stats, err)
	}
	if got := w.show("dc1", "k"); got != "[forged]" {
		t.Fatalf("k=%s, want the version with the higher HLC", got)
	}
}

// TestMergeRandom is the property test: random writes (read-modify-write,
// blind, delete), lossy in-order delivery, purges and at most one restore
// from an old copy, then anti-entropy between every pair, twice. It checks
// against deliberately simple references:
//   - every DC ends with the same digest;
//   - the spec of the merge, from what the DCs held and knew before it: a
//     version ends everywhere if some DC held it and no DC knew it dead
//     (applied or covered its dot, lost dots aside, and did not hold it),
//     and nowhere otherwise: nothing superseded or purged comes back, and
//     nothing else is lost;
//   - without a restore, the live versions are exactly those of every
//     event issued, applied to one state per key (the DVV model).
func TestMergeRandom(t *testing.T) {
	seeds := 300
	if testing.Short() {
		seeds = 40
	}
	var stats MergeStats
	restores := 0
	for seed := range uint64(seeds) {
		st, restored := runRandomMerge(t, seed)
		stats.Add(st)
		if restored {
			restores++
		}
		if t.Failed() {
			t.Fatalf("seed %d failed", seed)
		}
	}
	t.Logf("%d schedules, %d with a restore: %+v", seeds, restores, stats)
	if stats.Taken == 0 || stats.Dropped == 0 || stats.Removed == 0 || stats.Found == 0 || restores == 0 {
		t.Errorf("the schedules did not exercise every rule: %+v, %d restores", stats, restores)
	}
}

// snapshot is what one DC held and knew before anti-entropy.
type snapshot struct {
	k      Knowledge
	states map[string]dvv.State
}

func runRandomMerge(t *testing.T, seed uint64) (MergeStats, bool) {
	r := rand.New(rand.NewPCG(seed, 42))
	names := []string{"dc1", "dc2", "dc3", "dc4"}[:2+r.IntN(3)]
	w := newWorld(t, names...)
	nkeys := 1 + r.IntN(6)
	key := func() string { return fmt.Sprint("k", r.IntN(nkeys)) }
	// next[dc][origin] is how many of origin's events dc was offered;
	// a dropped event is never offered again, as if JetStream lost it.
	next := map[string]map[string]int{}
	for _, n := range names {
		next[n] = map[string]int{}
	}
	gone := map[*event.Event]bool{} // lost by a restore and by the stream
	byOrigin := func(o string) []*event.Event {
		var out []*event.Event
		for _, ev := range w.evs {
			if ev.Origin == o {
				out = append(out, ev)
			}
		}
		return out
	}
	var bak, bakDC string
	restored := false
	var trace []string
	defer func() {
		if t.Failed() {
			for _, l := range trace {
				t.Log(l)
			}
		}
	}()
	for range 30 + r.IntN(60) {
		dc := names[r.IntN(len(names))]
		switch x := r.Float64(); {
		case x < 0.45:
			y := r.Float64()
			var ev *event.Event
			switch {
			case y < 0.5:
				ev = w.put(dc, key(), fmt.Sprint("v", len(w.evs)), false)
			case y < 0.8:
				ev = w.put(dc, key(), fmt.Sprint("v", len(w.evs)), true)
			default:
				ev = w.del(dc, key())
			}
			trace = append(trace, fmt.Sprintf("write %s %s=%q dot %s/%d ctx %s -> %s", dc, ev.Key, ev.Value, ev.Dot, ev.Partition, ev.Context, w.show(dc, ev.Key)))
		case x < 0.85:
			o := names[r.IntN(len(names))]
			if o == dc {
				continue
			}
			evs := byOrigin(o)
			var offer []*event.Event
			for i := next[dc][o]; i < len(evs) && i < next[dc][o]+1+r.IntN(4); i++ {
				if r.Float64() >= 0.1 && !gone[evs[i]] {
					offer = append(offer, evs[i])
				}
			}
			next[dc][o] = min(len(evs), next[dc][o]+len(offer)+1)
			res, err := w.store(dc).Apply(context.Background(), offer, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, ev := range offer {
				trace = append(trace, fmt.Sprintf("deliver %s/%d %s to %s: %s -> %s", ev.Dot, ev.Partition, ev.Key, dc, res[i].Outcome, w.show(dc, ev.Key)))
			}
		case x < 0.92:
			if r.IntN(2) == 0 {
				// Catch every DC up with what its streams still hold.
				for _, d := range names {
					for _, o := range names {
						if o == d {
							continue
						}
						evs := byOrigin(o)
						var offer []*event.Event
						for _, ev := range evs[next[d][o]:] {
							if !gone[ev] {
								offer = append(offer, ev)
							}
						}
						next[d][o] = len(evs)
						if _, err := w.store(d).Apply(context.Background(), offer, nil); err != nil {
							t.Fatal(err)
						}
					}
				}
				trace = append(trace, "catch up")
			}
			w.purge()
			trace = append(trace, "purge")
		case bak == "":
			bak, bakDC = w.dcs[dc].backup(), dc
			trace = append(trace, "backup "+dc)
		case !restored && x > 0.97:
			w.dcs[bakDC].restore(bak, true)
			restored = true
			k, err := w.store(bakDC).Knowledge()
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range byOrigin(bakDC) {
				if slices.ContainsFunc(k.Lost, func(r LostRange) bool { return r.Partition == ev.Partition && r.From <= ev.Seq && ev.Seq <= r.To }) {
					gone[ev] = true
				}
			}
			trace = append(trace, fmt.Sprintf("restore %s: lost %v", bakDC, k.Lost))
			// The stream offers the restored DC everything again from the
			// start; what it applied before the copy comes back duplicate.
			for o := range next[bakDC] {
				next[bakDC][o] = 0
			}
		}
	}
	snaps := map[string]snapshot{}
	var lost []LostRange
	for _, n := range names {
		k, err := w.store(n).Knowledge()
		if err != nil {
			t.Fatal(err)
		}
		sn := snapshot{k: k, states: map[string]dvv.State{}}
		err = w.store(n).Scan("", func(key string, st dvv.State) error {
			sn.states[key] = st
			trace = append(trace, fmt.Sprintf("before %s: %s=%v clock %s", n, key, values(st), st.Clock))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		snaps[n] = sn
		lost = append(lost, k.Lost...)
	}
	isLost := func(rs []LostRange, p uint32, d vclock.Dot) bool {
		return slices.ContainsFunc(rs, func(r LostRange) bool {
			return r.Origin == d.DC && r.Partition == p && r.From <= d.N && d.N <= r.To
		})
	}
	// The spec: which dots each key must end with.
	want := map[string]map[vclock.Dot]bool{}
	for _, sn := range snaps {
		for key, st := range sn.states {
			p := event.PartitionOf(key, 2)
			for _, sb := range st.Siblings {
				dead := false
				for _, o := range snaps {
					ost := o.states[key]
					if slices.ContainsFunc(ost.Siblings, func(x dvv.Sibling) bool { return x.Dot == sb.Dot }) {
						continue
					}
					applied := o.k.Applied.Covers(sb.Dot.DC, p, sb.Dot.N) && !(sb.Dot.DC == o.k.DC && isLost(o.k.Lost, p, sb.Dot))
					covered := ost.Clock.Covers(sb.Dot) && !isLost(lost, p, sb.Dot)
					dead = dead || applied || covered
				}
				if want[key] == nil {
					want[key] = map[vclock.Dot]bool{}
				}
				if !dead {
					want[key][sb.Dot] = true
				}
			}
		}
	}
	stats := w.repairAll(2)
	ds := w.digests()
	for _, n := range names {
		if ds[n] != ds[names[0]] {
			t.Errorf("seed %d: %s's digest differs from %s's after anti-entropy", seed, n, names[0])
			for k := range want {
				t.Logf("  %s: %s=%s  %s=%s", k, names[0], w.show(names[0], k), n, w.show(n, k))
			}
			return stats, restored
		}
	}
	for _, n := range names {
		for key, dots := range want {
			st, _, err := w.store(n).Get(key)
			if err != nil {
				t.Fatal(err)
			}
			for _, sb := range st.Siblings {
				if !dots[sb.Dot] {
					t.Errorf("seed %d: %s shows %s=%q (%s), which a DC knew superseded: a resurrection", seed, n, key, sb.Value, sb.Dot)
				}
			}
			for d := range dots {
				if !slices.ContainsFunc(st.Siblings, func(sb dvv.Sibling) bool { return sb.Dot == d }) {
					t.Errorf("seed %d: %s lost %s's version %s, which a DC held and none knew superseded", seed, n, key, d)
				}
			}
		}
	}
	if restored {
		return stats, restored
	}
	ref := map[string]dvv.State{}
	for _, ev := range w.evs {
		ver := dvv.Version{Value: ev.Value, Deleted: ev.Op == event.OpDelete, HLC: ev.HLC}
		ref[ev.Key], _ = ref[ev.Key].Apply(ev.Dot, ev.Context, ver)
	}
	for key, st := range ref {
		got, _, err := w.store(names[0]).Get(key)
		if err != nil {
			t.Fatal(err)
		}
		if g, r := fmt.Sprint(values(dvv.State{Siblings: got.Live()})), fmt.Sprint(values(dvv.State{Siblings: st.Live()})); g != r {
			t.Errorf("seed %d: %s's live versions are %s, the DVV model's %s", seed, key, g, r)
		}
	}
	return stats, restored
}
