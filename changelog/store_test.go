package changelog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// counterClock is a deterministic HLC for tests.
type counterClock struct{ n atomic.Uint64 }

func (c *counterClock) Now() uint64 { return c.n.Add(1) }

func rules(t testing.TB, def resolve.Resolver, rs ...resolve.Rule) Resolvers {
	t.Helper()
	r, err := resolve.NewRules(def, rs)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func openMem(t testing.TB, fs vfs.FS, dc string, opts Options) *Store {
	t.Helper()
	opts.DC = dc
	if opts.DCs == nil {
		opts.DCs = []string{"dc1", "dc2", "dc3"}
	}
	if opts.Partitions == 0 {
		opts.Partitions = 4
	}
	if opts.Clock == nil {
		opts.Clock = &counterClock{}
	}
	opts.FS = fs
	dir := "/" + dc
	if fs == nil {
		dir = t.TempDir() // the OS's filesystem, with real fsyncs
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustWrite(t testing.TB, s *Store, op WriteOp) WriteResult {
	t.Helper()
	r, err := s.Write(context.Background(), op)
	if err != nil {
		t.Fatalf("write %q: %v", op.Key, err)
	}
	return r
}

func values(st dvv.State) []string {
	var out []string
	for _, sb := range st.Siblings {
		if sb.Deleted {
			out = append(out, "<deleted "+sb.Dot.String()+">")
		} else {
			out = append(out, string(sb.Value))
		}
	}
	return out
}

func TestWriteContextSupersedes(t *testing.T) {
	s := openMem(t, vfs.NewMem(), "dc1", Options{})
	a := mustWrite(t, s, WriteOp{Key: "k", Value: []byte("a")})
	b := mustWrite(t, s, WriteOp{Key: "k", Value: []byte("b")}) // blind: a sibling
	if got := values(b.State); fmt.Sprint(got) != "[a b]" {
		t.Fatalf("blind write: siblings %v, want [a b]", got)
	}
	if a.Event.Dot.N >= b.Event.Dot.N {
		t.Fatalf("dots must rise: %s then %s", a.Event.Dot, b.Event.Dot)
	}
	c := mustWrite(t, s, WriteOp{Key: "k", Value: []byte("c"), Context: b.State.Clock})
	if got := values(c.State); fmt.Sprint(got) != "[c]" {
		t.Fatalf("write with context: siblings %v, want [c]", got)
	}
	if !c.Event.Context.Covers(a.Event.Dot) || !c.Event.Context.Covers(b.Event.Dot) {
		t.Fatalf("event context %s must cover %s and %s", c.Event.Context, a.Event.Dot, b.Event.Dot)
	}
	st, ok, err := s.Get("k")
	if err != nil || !ok || fmt.Sprint(values(st)) != "[c]" {
		t.Fatalf("get: %v %v %v", values(st), ok, err)
	}
}

func TestApplyDuplicateAndGap(t *testing.T) {
	fs := vfs.NewMem()
	src := openMem(t, fs, "dc1", Options{Partitions: 1})
	dst := openMem(t, fs, "dc2", Options{Partitions: 1})
	var evs []*event.Event
	for i := 0; i < 3; i++ {
		evs = append(evs, mustWrite(t, src, WriteOp{Key: fmt.Sprint("k", i), Value: []byte{byte(i)}}).Event)
	}
	ctx := context.Background()
	res, err := dst.Apply(ctx, []*event.Event{evs[0], evs[2]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Outcome != Changed || res[1].Outcome != Gap || res[1].Expected != 2 {
		t.Fatalf("outcomes %+v, want changed then gap expecting 2", res)
	}
	if _, ok, _ := dst.Get("k2"); ok {
		t.Fatal("an event past a gap must not be applied")
	}
	before, _ := dst.Digest()
	res, err = dst.Apply(ctx, []*event.Event{evs[0], evs[1], evs[1], evs[2]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Outcome{Duplicate, Changed, Duplicate, Changed}
	for i, r := range res {
		if r.Outcome != want[i] {
			t.Fatalf("event %d: %s, want %s", i, r.Outcome, want[i])
		}
	}
	after, _ := dst.Digest()
	if before.Hex() == after.Hex() {
		t.Fatal("digest did not change after applying new events")
	}
	res, _ = dst.Apply(ctx, evs, nil)
	for i, r := range res {
		if r.Outcome != Duplicate {
			t.Fatalf("redelivery %d: %s, want duplicate", i, r.Outcome)
		}
	}
	again, _ := dst.Digest()
	if again.Hex() != after.Hex() {
		t.Fatal("a redelivered event changed the state")
	}
	if got := dst.Applied()["dc1"][0]; got != 3 {
		t.Fatalf("applied vector for dc1 = %d, want 3", got)
	}
}

func TestApplyRejectsBadEvents(t *testing.T) {
	s := openMem(t, vfs.NewMem(), "dc2", Options{Partitions: 4})
	good := &event.Event{Version: 1, Origin: "dc1", Seq: 1, Key: "k", Op: event.OpPut, Dot: vclock.Dot{DC: "dc1", N: 1}, Path: []string{"dc1"}}
	good.Partition = event.PartitionOf("k", 4)
	cases := map[string]func(e *event.Event){
		"wrong partition": func(e *event.Event) { e.Partition = (e.Partition + 1) % 4 },
		"own origin":      func(e *event.Event) { e.Origin, e.Dot.DC = "dc2", "dc2" },
		"dot mismatch":    func(e *event.Event) { e.Dot.N = 7 },
	}
	for name, mutate := range cases {
		ev := *good
		mutate(&ev)
		if _, err := s.Apply(context.Background(), []*event.Event{&ev}, nil); err == nil {
			t.Errorf("%s: Apply accepted it", name)
		}
	}
}

func TestForwardAppendsPath(t *testing.T) {
	fs := vfs.NewMem()
	src := openMem(t, fs, "dc1", Options{})
	mid := openMem(t, fs, "dc2", Options{})
	ev := mustWrite(t, src, WriteOp{Key: "k", Value: []byte("v")}).Event
	res, err := mid.Apply(context.Background(), []*event.Event{ev}, func(*event.Event) bool { return true })
	if err != nil || !res[0].Forwarded {
		t.Fatalf("apply: %+v %v", res, err)
	}
	out, err := mid.ReadOutbox(0, 10)
	if err != nil || len(out) != 1 {
		t.Fatalf("outbox: %d entries, %v", len(out), err)
	}
	if got := fmt.Sprint(out[0].Event.Path); got != "[dc1 dc2]" {
		t.Fatalf("forwarded path %s, want [dc1 dc2]", got)
	}
	if out[0].Event.Dot != ev.Dot {
		t.Fatalf("forwarding changed the dot: %s", out[0].Event.Dot)
	}
}

// TestGroupCommit checks that concurrent writers share batches, so they
// share fsyncs: Pebble syncs the WAL once per committed batch. It runs on
// the real filesystem, where an fsync takes long enough for writers to queue.
func TestGroupCommit(t *testing.T) {
	s := openMem(t, nil, "dc1", Options{})
	const writers, each = 64, 20
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				mustWrite(t, s, WriteOp{Key: fmt.Sprintf("w%d-%d", w, i), Value: []byte("v")})
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	if st.Requests != writers*each {
		t.Fatalf("requests = %d, want %d", st.Requests, writers*each)
	}
	if st.Groups*2 > st.Requests {
		t.Fatalf("%d writes took %d commits: concurrent writers did not share fsyncs", st.Requests, st.Groups)
	}
	t.Logf("%d writes in %d commits (%.1f per fsync)", st.Requests, st.Groups, float64(st.Requests)/float64(st.Groups))
}

func TestReopenKeepsBookkeeping(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs, "dc1", Options{Partitions: 2})
	var last WriteResult
	for i := 0; i < 5; i++ {
		last = mustWrite(t, s, WriteOp{Key: "k", Value: []byte{byte(i)}})
	}
	if err := s.SetCheckpoint(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	seq := s.Applied()["dc1"]
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Write(context.Background(), WriteOp{Key: "k"}); err != ErrClosed {
		t.Fatalf("write after close: %v, want ErrClosed", err)
	}
	r := openMem(t, fs, "dc1", Options{Partitions: 2})
	if got := r.Applied()["dc1"]; fmt.Sprint(got) != fmt.Sprint(seq) {
		t.Fatalf("sequences after reopen %v, want %v", got, seq)
	}
	if r.Checkpoint() != 3 {
		t.Fatalf("checkpoint after reopen %d, want 3", r.Checkpoint())
	}
	if r.HLCHighWater() < last.Event.HLC {
		t.Fatalf("HLC high water %d below the last write's %d", r.HLCHighWater(), last.Event.HLC)
	}
	next := mustWrite(t, r, WriteOp{Key: "k", Value: []byte("x")})
	if next.Event.Seq <= last.Event.Seq {
		t.Fatalf("sequence reissued after reopen: %d after %d", next.Event.Seq, last.Event.Seq)
	}
	if err := r.EnsureSeqAbove(context.Background(), next.Event.Partition, 100); err != nil {
		t.Fatal(err)
	}
	if n := mustWrite(t, r, WriteOp{Key: "k", Value: []byte("y")}).Event.Seq; n != 101 {
		t.Fatalf("after EnsureSeqAbove(100) the next sequence is %d, want 101", n)
	}
}

func TestLWWLogsLosers(t *testing.T) {
	fs := vfs.NewMem()
	res := rules(t, resolve.Siblings(), resolve.Rule{Prefix: "title/", Resolver: resolve.LWW()})
	a := openMem(t, fs, "dc1", Options{Resolvers: res})
	b := openMem(t, fs, "dc2", Options{Resolvers: res})
	ea := mustWrite(t, a, WriteOp{Key: "title/1", Value: []byte("B")}).Event
	eb := mustWrite(t, b, WriteOp{Key: "title/1", Value: []byte("C")}).Event
	ctx := context.Background()
	if _, err := a.Apply(ctx, []*event.Event{eb}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Apply(ctx, []*event.Event{ea}, nil); err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da.Hex() != db.Hex() {
		t.Fatal("digests differ after exchanging both events")
	}
	for _, s := range []*Store{a, b} {
		cs, err := s.Conflicts(ConflictFilter{})
		if err != nil || len(cs) != 1 {
			t.Fatalf("%s: %d conflict entries, %v; want 1", s.DC(), len(cs), err)
		}
		c := cs[0]
		if c.Status != StatusLogged || c.Resolver != "lww" || len(c.Discarded) != 1 || len(c.Kept) != 1 {
			t.Fatalf("%s: entry %+v", s.DC(), c)
		}
		lost, kept := c.Discarded[0], c.Kept[0]
		if lost.HLC > kept.HLC || bytes.Equal(lost.Value, kept.Value) {
			t.Fatalf("%s: kept %+v, discarded %+v", s.DC(), kept, lost)
		}
	}
	// A blind write to an lww key supersedes what the DC holds.
	w := mustWrite(t, a, WriteOp{Key: "title/1", Value: []byte("D")})
	if got := values(w.State); fmt.Sprint(got) != "[D]" {
		t.Fatalf("blind lww write left siblings %v", got)
	}
}

func TestRecordOpensAndResolves(t *testing.T) {
	fs := vfs.NewMem()
	res := rules(t, resolve.Record())
	a := openMem(t, fs, "dc1", Options{Resolvers: res})
	b := openMem(t, fs, "dc2", Options{Resolvers: res})
	eb := mustWrite(t, b, WriteOp{Key: "doc", Value: []byte("C")}).Event
	ea := mustWrite(t, a, WriteOp{Key: "doc", Value: []byte("B")}).Event
	if _, err := a.Apply(context.Background(), []*event.Event{eb}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Apply(context.Background(), []*event.Event{ea}, nil); err != nil {
		t.Fatal(err)
	}
	open, _ := a.Conflicts(ConflictFilter{Status: StatusOpen})
	if len(open) != 1 || len(open[0].Kept) != 2 {
		t.Fatalf("open records: %+v", open)
	}
	w := mustWrite(t, a, WriteOp{Key: "doc", Value: []byte("B+C"), Resolve: true, Context: open[0].Clock})
	if got := values(w.State); fmt.Sprint(got) != "[B+C]" || w.Event.Op != event.OpResolve {
		t.Fatalf("resolution left %v (op %s)", got, w.Event.Op)
	}
	c, err := a.Conflict(open[0].ID)
	if err != nil || c.Status != StatusResolved {
		t.Fatalf("record after resolution: %+v %v", c, err)
	}
	// The record keeps what it was resolved to and who resolved it, at the
	// resolving DC and at the others once they apply the resolution.
	if _, err := b.Apply(context.Background(), []*event.Event{w.Event}, nil); err != nil {
		t.Fatal(err)
	}
	cb, err := b.Conflict(open[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []Conflict{c, cb} {
		if len(c.ResolvedTo) != 1 || string(c.ResolvedTo[0].Value) != "B+C" || c.ResolvedTo[0].Dot != w.Event.Dot.String() ||
			c.ResolvedBy != "dc1" || c.ResolvedVia != "resolve" || c.ResolvedHLC != w.Event.HLC {
			t.Errorf("resolved record %+v: want resolved to B+C (%s) by dc1 via resolve at HLC %d", c, w.Event.Dot, w.Event.HLC)
		}
	}
	// Its JSON shows the HLCs as wall-clock times and text values as text.
	j, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"detected_time":"` + hlc.Timestamp(c.DetectedHLC).String() + `"`,
		`"resolved_time":"` + hlc.Timestamp(c.ResolvedHLC).String() + `"`, `"resolved_by":"dc1"`, `"resolved_via":"resolve"`,
		`"resolved_to":[{"origin":"dc1","dot":"dc1:2","value":"QitD","deleted":false,"hlc":`, `"value_text":"B+C","hlc_time":"`} {
		if !strings.Contains(string(j), want) {
			t.Errorf("JSON %s lacks %s", j, want)
		}
	}
	// A plain delete carrying the context resolves a record too.
	eb2 := mustWrite(t, b, WriteOp{Key: "doc2", Value: []byte("x")}).Event
	mustWrite(t, a, WriteOp{Key: "doc2", Value: []byte("y")})
	if _, err := a.Apply(context.Background(), []*event.Event{eb2}, nil); err != nil {
		t.Fatal(err)
	}
	open, _ = a.Conflicts(ConflictFilter{Status: StatusOpen, KeyPrefix: "doc2"})
	if len(open) != 1 {
		t.Fatalf("open records of doc2: %+v", open)
	}
	mustWrite(t, a, WriteOp{Key: "doc2", Delete: true, Context: open[0].Clock})
	if c, err := a.Conflict(open[0].ID); err != nil || c.Status != StatusResolved || c.ResolvedVia != "write" ||
		c.ResolvedBy != "dc1" || len(c.ResolvedTo) != 1 || !c.ResolvedTo[0].Deleted {
		t.Errorf("record resolved by a delete: %+v %v; want resolved to a deleted version by dc1 via write", c, err)
	}
	if _, err := a.Conflict("nope"); err == nil {
		t.Fatal("unknown conflict id: no error")
	}
}

// TestContextChecks: a context naming a DC outside the configuration, or
// an event of this DC that does not exist yet, is rejected before anything
// is written. A counter of another DC that this DC has not applied is
// refused with ErrContextAhead (not cut, not taken): taking it would make
// the key's clock cover that DC's later events before they arrive.
func TestContextChecks(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs, "dc2", Options{Partitions: 1})
	up := openMem(t, fs, "dc1", Options{Partitions: 1})
	mustWrite(t, s, WriteOp{Key: "k", Value: []byte("x")})
	for _, ctx := range []vclock.VV{{"dc9": 1}, {"dc2": 2}} {
		if _, err := s.Write(context.Background(), WriteOp{Key: "k", Value: []byte("y"), Context: ctx}); !errors.Is(err, ErrBadInput) {
			t.Errorf("context %s: %v, want ErrBadInput", ctx, err)
		}
	}
	var evs []*event.Event
	for i := range 5 {
		evs = append(evs, mustWrite(t, up, WriteOp{Key: fmt.Sprintf("u%d", i), Value: []byte("u")}).Event)
	}
	_, err := s.Write(context.Background(), WriteOp{Key: "k", Value: []byte("z"), Context: vclock.VV{"dc1": 5, "dc2": 1}})
	var ahead *ContextAheadError
	if !errors.As(err, &ahead) || !errors.Is(err, ErrContextAhead) || ahead.DC != "dc1" || ahead.Named != 5 || ahead.Applied != 0 {
		t.Fatalf("context {dc1:5} before dc1's events arrived: %v, want ContextAheadError dc1 5 applied 0", err)
	}
	if got := s.Applied()["dc2"][0]; got != 1 {
		t.Fatalf("a rejected write issued a sequence: %d", got)
	}
	if _, err := s.Apply(context.Background(), evs[:4], nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(context.Background(), WriteOp{Key: "k", Value: []byte("z"), Context: vclock.VV{"dc1": 5}}); !errors.Is(err, ErrContextAhead) {
		t.Fatalf("context {dc1:5} with dc1 applied to 4: %v, want ErrContextAhead", err)
	}
	if _, err := s.Apply(context.Background(), evs[4:], nil); err != nil {
		t.Fatal(err)
	}
	r := mustWrite(t, s, WriteOp{Key: "k", Value: []byte("z"), Context: vclock.VV{"dc1": 5, "dc2": 1}})
	if r.Event.Context["dc1"] != 5 {
		t.Fatalf("a context this DC has caught up with was cut: %s", r.Event.Context)
	}
}

// TestWriteWaitsForContext: with ContextWait, a write whose context is
// ahead waits until this DC applies what it names, then supersedes it; a
// forged counter no event will reach fails after the wait.
func TestWriteWaitsForContext(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs, "dc2", Options{Partitions: 1, ContextWait: 10 * time.Second})
	up := openMem(t, fs, "dc1", Options{Partitions: 1})
	ev := mustWrite(t, up, WriteOp{Key: "k", Value: []byte("old")}).Event
	done := make(chan WriteResult, 1)
	fail := make(chan error, 1)
	go func() {
		r, err := s.Write(context.Background(), WriteOp{Key: "k", Value: []byte("new"), Context: vclock.VV{"dc1": ev.Seq}})
		if err != nil {
			fail <- err
			return
		}
		done <- r
	}()
	select {
	case r := <-done:
		t.Fatalf("the write did not wait for dc1:%d: %s", ev.Seq, r.Event.Dot)
	case err := <-fail:
		t.Fatal(err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := s.Apply(context.Background(), []*event.Event{ev}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if got := values(r.State); fmt.Sprint(got) != "[new]" {
			t.Fatalf("the write after the wait left %v, want [new] superseding old", got)
		}
	case err := <-fail:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("the write still waits after dc1's event was applied")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := s.Write(ctx, WriteOp{Key: "k", Value: []byte("forged"), Context: vclock.VV{"dc1": 1000}}); !errors.Is(err, ErrContextAhead) {
		t.Fatalf("forged context {dc1:1000}: %v, want ErrContextAhead", err)
	}
}

func TestEmptyValueIsStoredAlike(t *testing.T) {
	fs := vfs.NewMem()
	a := openMem(t, fs, "dc1", Options{Partitions: 1})
	b := openMem(t, fs, "dc2", Options{Partitions: 1})
	ev := mustWrite(t, a, WriteOp{Key: "k", Value: []byte{}}).Event
	enc, _ := ev.Encode(nil)
	dec, err := event.Decode(enc, event.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Apply(context.Background(), []*event.Event{dec}, nil); err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da.Hex() != db.Hex() {
		t.Fatal("an empty value is stored differently at its origin and after the wire")
	}
	st, _, _ := b.Get("k")
	if st.Siblings[0].Value == nil {
		t.Fatal("a live empty value reads back as nil")
	}
}

// updClock is an HLC that also takes remote readings, refusing those more
// than bound ahead of it.
type updClock struct {
	mu    sync.Mutex
	last  uint64
	bound uint64
}

func (c *updClock) Now() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last++
	return c.last
}

func (c *updClock) Update(remote uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bound > 0 && remote > c.last+c.bound {
		return fmt.Errorf("reading %d beyond the bound", remote)
	}
	c.last = max(c.last, remote)
	return nil
}

// TestApplyFeedsTheClock: Apply gives the event's HLC to a clock that
// takes remote readings, in the batch, so the write that waited for the
// event (its context names it) gets a later HLC than the version it
// supersedes; a reading the clock refuses comes back in ClockErr and is
// not taken.
func TestApplyFeedsTheClock(t *testing.T) {
	fs := vfs.NewMem()
	clk := &updClock{bound: 1 << 40}
	s := openMem(t, fs, "dc2", Options{Partitions: 1, Clock: clk, ContextWait: 10 * time.Second})
	upClock := &counterClock{}
	upClock.n.Store(1 << 30) // dc1's clock runs far ahead, within the bound
	up := openMem(t, fs, "dc1", Options{Partitions: 1, Clock: upClock})
	ev := mustWrite(t, up, WriteOp{Key: "k", Value: []byte("old")}).Event
	done := make(chan WriteResult, 1)
	go func() {
		r, err := s.Write(context.Background(), WriteOp{Key: "k", Value: []byte("new"), Context: vclock.VV{"dc1": ev.Seq}})
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	res, err := s.Apply(context.Background(), []*event.Event{ev}, nil)
	if err != nil {
		t.Fatal(err)
	}
	clk.mu.Lock()
	fed := clk.last >= ev.HLC
	clk.mu.Unlock()
	if !fed || res[0].ClockErr != nil {
		t.Fatalf("apply result %+v, clock fed %t: want the clock fed, without error", res[0], fed)
	}
	w := <-done
	if w.Event == nil || w.Event.HLC <= ev.HLC {
		t.Fatalf("the write that waited for %s (HLC %d) got HLC %v; want a later one", ev.Dot, ev.HLC, w.Event)
	}
	// A reading beyond the bound is refused and reported.
	far := mustWrite(t, up, WriteOp{Key: "j", Value: []byte("far")}).Event
	far.HLC = clk.Now() + 1<<41
	res, err = s.Apply(context.Background(), []*event.Event{far}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].ClockErr == nil || clk.Now() >= far.HLC {
		t.Fatalf("a reading beyond the bound: result %+v, clock now %d; want ClockErr and the clock not taking it", res[0], clk.Now())
	}
}

// TestContextNamingUnknownDCRefusedAtOnce: a write, transaction or read
// whose context names a DC outside dcs (a DC added elsewhere before this
// sidecar restarted with it) is bad input at once, not a 503 after
// ContextWait: this DC would never catch up with it.
func TestContextNamingUnknownDCRefusedAtOnce(t *testing.T) {
	s := openMem(t, vfs.NewMem(), "dc1", Options{ContextWait: time.Minute})
	ctx := vclock.VV{"dc4": 1}
	start := time.Now()
	_, werr := s.Write(context.Background(), WriteOp{Key: "k", Value: []byte("v"), Context: ctx})
	_, terr := s.WriteTxn(context.Background(), []WriteOp{{Key: "k", Value: []byte("v"), Context: ctx}})
	rerr := s.WaitRead(context.Background(), "k", ctx, nil)
	for what, err := range map[string]error{"write": werr, "txn": terr, "read": rerr} {
		if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), `context names dc "dc4", which is not one of [dc1 dc2 dc3]`) {
			t.Errorf("%s with a context naming dc4: %v, want ErrBadInput naming dc4", what, err)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("refusing took %s: it waited for ContextWait", d)
	}
}
