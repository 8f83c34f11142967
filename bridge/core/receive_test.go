package core

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
)

// tick is a deterministic clock for the stores of these tests.
type tick struct{ n atomic.Uint64 }

func (c *tick) Now() uint64 { return c.n.Add(1) }

// openStore opens dc's store on an in-memory filesystem.
func openStore(t *testing.T, dc string, dcs []string) *changelog.Store {
	t.Helper()
	st, err := changelog.Open("/"+dc, changelog.Options{DC: dc, DCs: dcs, Partitions: testParts, FS: vfs.NewMem(), Clock: &tick{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// writes makes n writes at st, all to key (so one partition), and
// returns the messages its stream would carry for them.
func writes(t *testing.T, st *changelog.Store, key string, n int) []Msg {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if _, err := st.Write(ctx, changelog.WriteOp{Key: key, Value: fmt.Appendf(nil, "v%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	es, err := st.ReadOutbox(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []Msg
	for i, e := range es {
		if e.Event.Key != key {
			continue
		}
		out = append(out, Msg{Subject: Subject(st.DC(), e.Event.Partition), Header: event.ToHeaders(e.Event), Data: e.Data, Seq: uint64(i + 1)})
	}
	return out
}

// origins serves repair requests from the stores of origins, or fails
// with err.
type origins struct {
	stores map[string]*changelog.Store
	err    error
	asked  int
	// most, if not 0, caps a reply's events, as MaxRepairEvents does.
	most int
}

func (o *origins) Fetch(_ context.Context, origin string, req RepairRequest) ([][]byte, error) {
	o.asked++
	if o.err != nil {
		return nil, o.err
	}
	st, ok := o.stores[origin]
	if !ok {
		return nil, fmt.Errorf("no route to %s", origin)
	}
	evs, err := ServeRepair(st, testParts, req)
	if o.most > 0 && len(evs) > o.most {
		evs = evs[:o.most]
	}
	return evs, err
}

// failing is a store whose Apply fails with err while err is set.
type failing struct {
	Store
	err func([]*event.Event) error
}

func (f failing) Apply(ctx context.Context, evs []*event.Event, fwd func(*event.Event) bool) ([]changelog.ApplyResult, error) {
	if f.err != nil {
		if err := f.err(evs); err != nil {
			return nil, err
		}
	}
	return f.Store.Apply(ctx, evs, fwd)
}

var _ Store = (*changelog.Store)(nil)
var _ OwnEvents = (*changelog.Store)(nil)

func newTestLink(t *testing.T, self, up string, st Store, src Source, plan Plan) *Link {
	return NewLink(LinkConfig{
		Up: up, Plan: plan, Check: NewChecker(plan.dcs, testParts, event.Limits{}),
		Repair: Repairer{Store: st, Source: src, Partitions: testParts,
			Forward: func(ev *event.Event) bool { return plan.ShouldForward(ev.Path, ev.Origin) }},
		MaxDeliver: 3, GapDelay: 200 * time.Millisecond, RetryDelay: time.Second,
	})
}

func actions(vs []Verdict) string {
	var b strings.Builder
	for i, v := range vs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(v.Action.String())
		if v.Action == Nak && v.Delay > 0 {
			b.WriteString("(" + v.Delay.String() + ")")
		}
	}
	return b.String()
}

// TestLinkReceive runs one batch through a link from b to a (a mesh of
// a, b and c, or a ring a, b, c where b forwards) against real stores,
// and checks each message's verdict and what was counted.
func TestLinkReceive(t *testing.T) {
	type step struct {
		pick    func(m []Msg) []Msg // the batch, from b's first 5 writes
		want    string              // verdicts
		tally   Tally               // LastHLC is not compared
		outbox  int                 // forwarded entries at the receiver
		reasons []string            // dead-letter reasons, in order
	}
	loop := func([]Msg) []Msg {
		// An event of c's that passed the receiver already, on its way
		// round: a loop.
		ev := testEvent("c", 1, "k", "c", "a", "b")
		d, err := ev.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		return []Msg{{Subject: Subject("b", ev.Partition), Header: event.ToHeaders(ev), Data: d, Seq: 99}}
	}
	for _, tc := range []struct {
		name     string
		topology string
		self     string
		src      error // the repair source fails with it
		store    func([]*event.Event) error
		steps    []step
	}{
		{name: "in order", steps: []step{{pick: func(m []Msg) []Msg { return m[:3] }, want: "ack ack ack",
			tally: Tally{Received: 3, Outcomes: Counts{Changed: 3}}}}},
		{name: "redelivered", steps: []step{
			{pick: func(m []Msg) []Msg { return m[:2] }, want: "ack ack", tally: Tally{Received: 2, Outcomes: Counts{Changed: 2}}},
			{pick: func(m []Msg) []Msg { return m[:2] }, want: "ack ack", tally: Tally{Received: 2, Outcomes: Counts{Duplicate: 2}}},
		}},
		{name: "loop", steps: []step{{pick: loop, want: "ack", tally: Tally{Received: 1, Loops: 1}}}},
		{name: "malformed", steps: []step{{pick: func(m []Msg) []Msg {
			bad := m[1]
			bad.Data = []byte{0xc1}
			return []Msg{m[0], bad, m[2]}
		}, want: "ack dead-letter ack", reasons: []string{"malformed"},
			// Seq 3 follows the dead letter's gap, which repair fills.
			tally: Tally{Received: 3, Outcomes: Counts{Changed: 2, Gap: 1}, Repairs: 1, RepairedEvents: 1, Repaired: Counts{Changed: 1}}}}},
		{name: "gap repaired", steps: []step{{pick: func(m []Msg) []Msg { return m[3:5] }, want: "ack ack",
			tally: Tally{Received: 2, Outcomes: Counts{Gap: 2, Changed: 2}, Repairs: 1, RepairedEvents: 3, Repaired: Counts{Changed: 3}}}}},
		{name: "gap held", src: errors.New("origin unreachable"), steps: []step{
			{pick: func(m []Msg) []Msg { return m[3:5] }, want: "nak(200ms) nak(200ms)",
				tally: Tally{Received: 2, Outcomes: Counts{Gap: 2}, RepairErrors: 1}},
			// Once the gap's events arrive, the held ones apply.
			{pick: func(m []Msg) []Msg { return m[:5] }, want: "ack ack ack ack ack",
				tally: Tally{Received: 5, Outcomes: Counts{Changed: 5}}},
		}},
		{name: "ring forwards", topology: "ring", self: "c", steps: []step{{pick: func(m []Msg) []Msg { return m[:2] }, want: "ack ack",
			tally: Tally{Received: 2, Outcomes: Counts{Changed: 2, Forwarded: 2}}, outbox: 2}}},
		{name: "ring does not forward to the origin", topology: "ring", self: "a", steps: []step{{pick: func(m []Msg) []Msg { return m[:2] }, want: "ack ack",
			tally: Tally{Received: 2, Outcomes: Counts{Changed: 2}}}}},
		{name: "store fails", store: func([]*event.Event) error { return errors.New("disk on fire") }, steps: []step{
			{pick: func(m []Msg) []Msg { return m[:2] }, want: "nak(1s) nak(1s)", tally: Tally{Received: 2, ApplyErrors: 1}},
			{pick: func(m []Msg) []Msg { return m[:2] }, want: "nak(1s) nak(1s)", tally: Tally{Received: 2, ApplyErrors: 1}},
			{pick: func(m []Msg) []Msg { return m[:2] }, want: "dead-letter dead-letter", tally: Tally{Received: 2, ApplyErrors: 1},
				reasons: []string{"failed to apply 3 times: disk on fire", "failed to apply 3 times"}},
		}},
		{name: "store refuses one event", store: func(evs []*event.Event) error {
			for _, ev := range evs {
				if ev.Seq == 2 {
					return fmt.Errorf("%w: seq 2 is cursed", changelog.ErrBadInput)
				}
			}
			return nil
		}, steps: []step{{pick: func(m []Msg) []Msg { return m[:3] }, want: "ack dead-letter nak(200ms)",
			// The batch is split so only seq 2 is dead-lettered; seq 3
			// then waits for it as a gap, and its repair is refused too.
			tally:   Tally{Received: 3, ApplyErrors: 2, Outcomes: Counts{Changed: 1, Gap: 1}, RepairErrors: 1},
			reasons: []string{"the store refused it"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topology, self := tc.topology, tc.self
			if topology == "" {
				topology, self = "mesh", "a"
			}
			dcs := []string{"a", "b", "c"}
			plan := mustPlan(t, topology, self, dcs, "")
			b := openStore(t, "b", dcs)
			var st Store = openStore(t, self, dcs)
			recv := st.(*changelog.Store)
			if tc.store != nil {
				st = failing{Store: st, err: tc.store}
			}
			msgs := writes(t, b, "k", 5)
			l := newTestLink(t, self, "b", st, &origins{stores: map[string]*changelog.Store{"b": b}, err: tc.src}, plan)
			for i, s := range tc.steps {
				got, tally := l.Receive(context.Background(), s.pick(msgs))
				tally.LastHLC = 0
				if a := actions(got); a != s.want {
					t.Fatalf("step %d: verdicts %q, want %q", i, a, s.want)
				}
				if tally != s.tally {
					t.Errorf("step %d: tally %+v, want %+v", i, tally, s.tally)
				}
				var reasons []error
				for _, v := range got {
					if v.Action == DeadLetter {
						reasons = append(reasons, v.Reason)
					}
				}
				if len(reasons) != len(s.reasons) {
					t.Fatalf("step %d: dead-letter reasons %v, want %d", i, reasons, len(s.reasons))
				}
				for j, r := range reasons {
					if !errors.Is(r, ErrRejected) || !strings.Contains(r.Error(), s.reasons[j]) {
						t.Errorf("step %d: dead-letter reason %q, want ErrRejected saying %q", i, r, s.reasons[j])
					}
				}
				es, err := recv.ReadOutbox(0, 100)
				if err != nil {
					t.Fatal(err)
				}
				if len(es) != s.outbox {
					t.Errorf("step %d: the receiver's outbox holds %d entries, want %d forwarded", i, len(es), s.outbox)
				}
				for _, e := range es {
					if got := strings.Join(e.Event.Path, ","); got != "b,"+self {
						t.Errorf("step %d: forwarded with path %s, want b,%s", i, got, self)
					}
				}
			}
		})
	}
}

// TestLinkFailuresReset: a message that failed for a store fault and then
// applied starts counting afresh; one the driver dead-lettered is
// forgotten.
func TestLinkFailuresReset(t *testing.T) {
	dcs := []string{"a", "b", "c"}
	plan := mustPlan(t, "mesh", "a", dcs, "")
	b := openStore(t, "b", dcs)
	down := true
	st := failing{Store: openStore(t, "a", dcs), err: func([]*event.Event) error {
		if down {
			return errors.New("disk on fire")
		}
		return nil
	}}
	msgs := writes(t, b, "k", 2)
	l := newTestLink(t, "a", "b", st, &origins{}, plan)
	ctx := context.Background()
	l.Receive(ctx, msgs[:1])
	l.Receive(ctx, msgs[:1])
	if n := l.Failures(msgs[0].Seq); n != 2 {
		t.Fatalf("failures %d, want 2", n)
	}
	down = false
	if v, _ := l.Receive(ctx, msgs[:1]); v[0].Action != Ack {
		t.Fatalf("verdict %v, want ack", v[0].Action)
	}
	if n := l.Failures(msgs[0].Seq); n != 0 {
		t.Fatalf("failures %d after the ack, want 0", n)
	}
	down = true
	l.Receive(ctx, msgs[1:2])
	l.Forget(msgs[1].Seq)
	if n := l.Failures(msgs[1].Seq); n != 0 {
		t.Fatalf("failures %d after Forget, want 0", n)
	}
}

// TestLinkShutdown: a batch the store fails while shutting down is
// nak'ed for redelivery at once and counts no failure.
func TestLinkShutdown(t *testing.T) {
	dcs := []string{"a", "b", "c"}
	plan := mustPlan(t, "mesh", "a", dcs, "")
	for _, tc := range []struct {
		name string
		err  error
		stop bool
	}{
		{"store closed", changelog.ErrClosed, false},
		{"context done", errors.New("interrupted"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := openStore(t, "b", dcs)
			st := failing{Store: openStore(t, "a", dcs), err: func([]*event.Event) error { return tc.err }}
			l := newTestLink(t, "a", "b", st, &origins{}, plan)
			ctx, cancel := context.WithCancel(context.Background())
			if tc.stop {
				cancel()
			}
			defer cancel()
			msgs := writes(t, b, "k", 1)
			v, tally := l.Receive(ctx, msgs)
			if actions(v) != "nak" || tally.ApplyErrors != 1 || l.Failures(msgs[0].Seq) != 0 {
				t.Fatalf("verdicts %q, tally %+v, failures %d; want an immediate nak and no failure counted", actions(v), tally, l.Failures(msgs[0].Seq))
			}
		})
	}
}
