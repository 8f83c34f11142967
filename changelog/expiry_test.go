package changelog

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/resolve"
)

// fakeTime is a physical clock a test moves by hand.
type fakeTime struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeTime() *fakeTime { return &fakeTime{t: time.UnixMilli(1_800_000_000_000)} }

func (f *fakeTime) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeTime) Add(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

// ttlStores opens dc1..dc3 sharing one fake physical clock, each with its
// own HLC.
func ttlStores(t *testing.T, opts Options) (*fakeTime, map[string]*Store) {
	t.Helper()
	ft := newFakeTime()
	out := map[string]*Store{}
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		o := opts
		o.Clock = hlc.New(ft.Now, 0)
		out[dc] = openMem(t, vfs.NewMem(), dc, o)
	}
	return ft, out
}

func mustApply(t *testing.T, s *Store, evs ...*event.Event) {
	t.Helper()
	if _, err := s.Apply(context.Background(), evs, nil); err != nil {
		t.Fatalf("apply at %s: %v", s.DC(), err)
	}
}

func mustState(t *testing.T, s *Store, key string) dvv.State {
	t.Helper()
	st, _, err := s.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func due(t *testing.T, s *Store) []string {
	t.Helper()
	keys, err := s.Due(s.Now())
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestExpiryHidesAndIndexes: a value with a TTL shows until its expiry and
// reads as deleted from then on; the index holds the key at its expiry,
// moves when a write changes it and forgets it when a write without a TTL
// clears it.
func TestExpiryHidesAndIndexes(t *testing.T) {
	ft, s := ttlStores(t, Options{})
	dc1 := s["dc1"]
	w := mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte("v"), TTL: 10 * time.Second})
	at := w.Event.Expires
	if want := w.Event.HLC + 10_000<<hlc.LogicalBits; at != want {
		t.Fatalf("event expiry %d, want HLC + 10s = %d", at, want)
	}
	if got := mustState(t, dc1, "k").Siblings[0].Expires; got != at {
		t.Fatalf("stored expiry %d, want %d", got, at)
	}
	if next, ok, _ := dc1.NextExpiry(0); !ok || next != at {
		t.Fatalf("NextExpiry = %d, %v; want %d", next, ok, at)
	}
	ft.Add(9999 * time.Millisecond)
	if v := mustState(t, dc1, "k").Visible(dc1.Now()); v.LiveCount() != 1 || len(due(t, dc1)) != 0 {
		t.Fatalf("1ms before expiry: live %d, due %q; want the value shown, nothing due", v.LiveCount(), due(t, dc1))
	}
	ft.Add(time.Millisecond)
	st := mustState(t, dc1, "k")
	if v := st.Visible(dc1.Now()); v.LiveCount() != 0 || !v.Clock.Equal(st.Clock) {
		t.Fatalf("at expiry: %d live siblings, clock %s; want none shown, the clock kept", v.LiveCount(), v.Clock)
	}
	if st.LiveCount() != 1 {
		t.Fatalf("the stored state changed: %+v", st)
	}
	if got := due(t, dc1); len(got) != 1 || got[0] != "k" {
		t.Fatalf("due at expiry: %q, want [k]", got)
	}
	if next, ok, _ := dc1.NextExpiry(at); ok {
		t.Fatalf("NextExpiry after the only expiry = %d; want none", next)
	}

	// A new TTL moves the entry; a write without one clears it.
	w2 := mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte("v2"), TTL: time.Minute, Context: st.Clock})
	if len(due(t, dc1)) != 0 {
		t.Fatalf("a new TTL left the old entry due: %q", due(t, dc1))
	}
	if next, _, _ := dc1.NextExpiry(0); next != w2.Event.Expires {
		t.Fatalf("NextExpiry %d, want the new expiry %d", next, w2.Event.Expires)
	}
	w3 := mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte("v3"), Context: w2.State.Clock})
	if w3.Event.Expires != 0 || w3.State.Expiry() != 0 {
		t.Fatalf("a plain write kept an expiry: event %d, state %d", w3.Event.Expires, w3.State.Expiry())
	}
	if _, ok, _ := dc1.NextExpiry(0); ok {
		t.Fatal("a plain write left the key in the expiry index")
	}
	ft.Add(time.Hour)
	if v := mustState(t, dc1, "k").Visible(dc1.Now()); v.LiveCount() != 1 {
		t.Fatal("a value without a TTL expired")
	}
}

// TestTTLBadInput: a bad TTL, or one on a delete, is refused and writes
// nothing.
func TestTTLBadInput(t *testing.T) {
	_, s := ttlStores(t, Options{})
	dc1 := s["dc1"]
	for _, tt := range []struct {
		name string
		op   WriteOp
		want string
	}{
		{"negative", WriteOp{Key: "k", Value: []byte("v"), TTL: -time.Second}, "is negative"},
		{"too long", WriteOp{Key: "k", Value: []byte("v"), TTL: MaxTTL + time.Hour}, "over the maximum"},
		{"under a millisecond", WriteOp{Key: "k", Value: []byte("v"), TTL: time.Microsecond}, "1ms resolution"},
		{"on a delete", WriteOp{Key: "k", Delete: true, TTL: time.Second}, "a delete cannot carry a ttl"},
	} {
		if _, err := dc1.Write(context.Background(), tt.op); err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
			t.Errorf("%s: Write = %v, want an error saying %q", tt.name, err, tt.want)
		}
		if _, err := dc1.WriteTxn(context.Background(), []WriteOp{tt.op}); err == nil {
			t.Errorf("%s: WriteTxn took it", tt.name)
		}
	}
	if _, ok, _ := dc1.Get("k"); ok {
		t.Fatal("a refused write stored the key")
	}
}

// TestConcurrentTTLLongestWins: concurrent values with TTLs expire
// together at the longest, whatever the resolver shows and whatever order
// the DCs applied them in, and the DC that wrote the longest owns the
// expiry; a concurrent value without a TTL never expires.
func TestConcurrentTTLLongestWins(t *testing.T) {
	for _, res := range []resolve.Resolver{resolve.Siblings(), resolve.LWW()} {
		t.Run(res.Name(), func(t *testing.T) {
			ft, s := ttlStores(t, Options{Resolvers: rules(t, res)})
			long := mustWrite(t, s["dc1"], WriteOp{Key: "k", Value: []byte("long"), TTL: time.Minute})
			ft.Add(time.Millisecond) // lww shows the later one: the short TTL
			short := mustWrite(t, s["dc2"], WriteOp{Key: "k", Value: []byte("short"), TTL: time.Second})
			mustApply(t, s["dc1"], short.Event)
			mustApply(t, s["dc2"], long.Event)
			mustApply(t, s["dc3"], short.Event)
			mustApply(t, s["dc3"], long.Event)
			var enc [][]byte
			for _, dc := range []string{"dc1", "dc2", "dc3"} {
				st := mustState(t, s[dc], "k")
				if st.Expiry() != long.Event.Expires || st.Expirer() != "dc1" {
					t.Fatalf("%s: expiry %d by %q, want the longest %d by dc1", dc, st.Expiry(), st.Expirer(), long.Event.Expires)
				}
				b, _ := encodeState(st)
				enc = append(enc, b)
			}
			if !bytes.Equal(enc[0], enc[1]) || !bytes.Equal(enc[0], enc[2]) {
				t.Fatal("the DCs hold different states")
			}
			ft.Add(2 * time.Second) // past the short TTL
			st := mustState(t, s["dc2"], "k")
			if v := st.Visible(s["dc2"].Now()); v.LiveCount() != 2 {
				t.Fatalf("past the shorter TTL: %d live, want both (the longest wins)", v.LiveCount())
			}
			if shown := res.Resolve("k", st.Visible(s["dc2"].Now()).Siblings); shown.Deleted {
				t.Fatal("the key reads as deleted before the longest TTL")
			}
			// A concurrent write without a TTL: the key never expires.
			plain := mustWrite(t, s["dc3"], WriteOp{Key: "k2", Value: []byte("forever")})
			mustWrite(t, s["dc1"], WriteOp{Key: "k2", Value: []byte("ttl"), TTL: time.Second})
			mustApply(t, s["dc1"], plain.Event)
			if st := mustState(t, s["dc1"], "k2"); st.LiveCount() != 2 || st.Expiry() != 0 {
				t.Fatalf("a concurrent value without a TTL: %d live, expiry %d; want 2, none", st.LiveCount(), st.Expiry())
			}
		})
	}
}

// TestDeleter: the owner deletes while it reports; once it is silent past
// the bound, the first other DC in config order that still reports.
// TestExpireByPartition: the expirer decides per key's partition (with
// shards, invariant 16, the owner may be unreachable for some partitions
// only): ExpireDue asks with each key's partition, deletes the keys of the
// partitions that are this DC's and leaves the others' to their owner.
func TestExpireByPartition(t *testing.T) {
	ft, s := ttlStores(t, Options{Partitions: 4})
	ctx := context.Background()
	keys := map[uint32]string{}
	for i := 0; len(keys) < 2; i++ {
		k := fmt.Sprintf("k%d", i)
		if p := event.PartitionOf(k, 4); p < 2 && keys[p] == "" {
			keys[p] = k
		}
	}
	for _, k := range keys {
		mustApply(t, s["dc2"], mustWrite(t, s["dc1"], WriteOp{Key: k, Value: []byte("v"), TTL: time.Second}).Event)
	}
	ft.Add(2 * time.Second)
	// At dc2, dc1 is silent on partition 1 only (its shard owning it is
	// down): dc2 deletes dc1's value there and leaves partition 0's to dc1.
	mine := func(expirer string, p uint32) bool {
		return Deleter(expirer, []string{"dc1", "dc2"}, func(dc string) bool { return dc == "dc1" && p == 1 }) == "dc2"
	}
	n, others, err := s["dc2"].ExpireDue(ctx, s["dc2"].Now(), mine)
	if err != nil || n != 1 || others != 1 {
		t.Fatalf("dc2 expired %d, left %d (%v); want 1 deleted (partition 1's), 1 left to dc1 (partition 0's)", n, others, err)
	}
	if st := mustState(t, s["dc2"], keys[1]); st.LiveCount() != 0 {
		t.Fatalf("%s (partition 1) still live at dc2, which took it over", keys[1])
	}
	if st := mustState(t, s["dc2"], keys[0]); st.LiveCount() != 1 {
		t.Fatalf("%s (partition 0) deleted at dc2, but dc1 reports on partition 0", keys[0])
	}
}

func TestDeleter(t *testing.T) {
	dcs := []string{"dc1", "dc2", "dc3", "dc4"}
	down := func(ds ...string) func(string) bool {
		return func(dc string) bool {
			for _, d := range ds {
				if d == dc {
					return true
				}
			}
			return false
		}
	}
	for _, tt := range []struct {
		expirer string
		down    []string
		want    string
	}{
		{"dc3", nil, "dc3"},
		{"dc3", []string{"dc1"}, "dc3"},
		{"dc3", []string{"dc3"}, "dc1"},
		{"dc1", []string{"dc1"}, "dc2"},
		{"dc1", []string{"dc1", "dc2"}, "dc3"},
		{"dc2", []string{"dc1", "dc2", "dc3"}, "dc4"},
	} {
		if got := Deleter(tt.expirer, dcs, down(tt.down...)); got != tt.want {
			t.Errorf("Deleter(%s, down %v) = %s, want %s", tt.expirer, tt.down, got, tt.want)
		}
	}
}

// TestExpireOnceAndOnlyWhatItSaw: of three DCs holding an expired value,
// only its origin deletes it, with one replicated delete whose context is
// the expired state's clock; a write the origin had not seen survives the
// delete at every DC, and the DCs converge.
func TestExpireOnceAndOnlyWhatItSaw(t *testing.T) {
	ft, s := ttlStores(t, Options{})
	ctx := context.Background()
	w := mustWrite(t, s["dc1"], WriteOp{Key: "k", Value: []byte("v"), TTL: time.Second})
	mustApply(t, s["dc2"], w.Event)
	mustApply(t, s["dc3"], w.Event)
	ft.Add(time.Second)
	var dels []*event.Event
	for _, dc := range []string{"dc2", "dc3", "dc1"} {
		mine := func(expirer string, _ uint32) bool {
			return Deleter(expirer, []string{"dc1", "dc2", "dc3"}, func(string) bool { return false }) == dc
		}
		n, others, err := s[dc].ExpireDue(ctx, s[dc].Now(), mine)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case dc == "dc1" && (n != 1 || others != 0):
			t.Fatalf("the origin deleted %d, left %d; want 1, 0", n, others)
		case dc != "dc1" && (n != 0 || others != 1):
			t.Fatalf("%s deleted %d, left %d; want 0, 1 (the origin's to delete)", dc, n, others)
		}
	}
	for _, ev := range outboxEvents(t, s["dc1"]) {
		if ev.Op == event.OpDelete {
			dels = append(dels, ev)
		}
	}
	if len(dels) != 1 || !dels[0].Context.Equal(w.State.Clock) {
		t.Fatalf("delete events %v; want one, with the expired state's context %s", dels, w.State.Clock)
	}
	// Meanwhile dc2 wrote k again, a write dc1 had not seen when it
	// deleted (the read it came from showed the key absent).
	again := mustWrite(t, s["dc2"], WriteOp{Key: "k", Value: []byte("again"), Context: mustState(t, s["dc2"], "k").Clock})
	mustApply(t, s["dc2"], dels[0])
	mustApply(t, s["dc1"], again.Event)
	mustApply(t, s["dc3"], again.Event, dels[0])
	var enc [][]byte
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		st := mustState(t, s[dc], "k")
		if live := st.Visible(s[dc].Now()).Live(); len(live) != 1 || string(live[0].Value) != "again" {
			t.Fatalf("%s shows %q; want the newer write, which the delete had not seen", dc, values(st))
		}
		b, _ := encodeState(st)
		enc = append(enc, b)
		if n, _, _ := s[dc].ExpireDue(ctx, s[dc].Now(), func(string, uint32) bool { return true }); n != 0 {
			t.Fatalf("%s deleted the newer write", dc)
		}
	}
	if !bytes.Equal(enc[0], enc[1]) || !bytes.Equal(enc[0], enc[2]) {
		t.Fatal("the DCs did not converge")
	}
}

// outboxEvents returns every event s's outbox holds.
func outboxEvents(t *testing.T, s *Store) []*event.Event {
	t.Helper()
	es, err := s.ReadOutbox(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var out []*event.Event
	for _, e := range es {
		out = append(out, e.Events()...)
	}
	return out
}

// TestTypedTTL: a PUT to a set key with a TTL expires like any value: it
// is hidden at its expiry, the origin's expirer writes the type's own
// delete, and both DCs end with the same empty set and nothing due.
func TestTypedTTL(t *testing.T) {
	ft := newFakeTime()
	s := map[string]*Store{}
	for _, dc := range []string{"dc1", "dc2"} {
		s[dc] = openMem(t, vfs.NewMem(), dc, Options{Clock: hlc.New(ft.Now, 0), Resolvers: typedRules(t)})
	}
	ctx := context.Background()
	w := mustWrite(t, s["dc1"], WriteOp{Key: "s/x", Value: []byte(`["a"]`), TTL: time.Second})
	if w.Event.Expires == 0 {
		t.Fatal("a typed put with a TTL carries no expiry")
	}
	mustApply(t, s["dc2"], w.Event)
	if got := shows(t, s["dc2"], "s/x"); got != `["a"]` {
		t.Fatalf("dc2 shows %s before the expiry, want [\"a\"]", got)
	}
	ft.Add(time.Second)
	for _, dc := range []string{"dc1", "dc2"} {
		if v := mustState(t, s[dc], "s/x").Visible(s[dc].Now()); v.LiveCount() != 0 {
			t.Fatalf("%s still shows the expired set", dc)
		}
	}
	mine := func(expirer string, _ uint32) bool { return expirer == "dc1" }
	if n, _, err := s["dc1"].ExpireDue(ctx, s["dc1"].Now(), mine); err != nil || n != 1 {
		t.Fatalf("dc1 expired %d (%v), want 1", n, err)
	}
	var dels []*event.Event
	for _, ev := range outboxEvents(t, s["dc1"]) {
		if ev.Dot != w.Event.Dot {
			dels = append(dels, ev)
		}
	}
	if len(dels) != 1 {
		t.Fatalf("dc1 wrote %d events for the expiry, want 1", len(dels))
	}
	mustApply(t, s["dc2"], dels...)
	var enc [][]byte
	for _, dc := range []string{"dc1", "dc2"} {
		if got := shows(t, s[dc], "s/x"); got != "<deleted>" {
			t.Fatalf("%s shows %s after the expiry's delete, want <deleted>", dc, got)
		}
		if keys := due(t, s[dc]); len(keys) != 0 {
			t.Fatalf("%s still has %q due", dc, keys)
		}
		b, _ := encodeState(mustState(t, s[dc], "s/x"))
		enc = append(enc, b)
	}
	if !bytes.Equal(enc[0], enc[1]) {
		t.Fatal("dc1 and dc2 did not converge")
	}
}
