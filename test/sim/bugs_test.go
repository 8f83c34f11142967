package sim

import (
	"errors"
	"testing"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// The tests in this file pin down contract violations the simulator found
// in changelog/, each reduced to its smallest schedule. Each names what
// docs/DESIGN.md expects and what the store did.

func newCluster(t *testing.T, opts Options) *Cluster {
	t.Helper()
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustWrite(t *testing.T, c *Cluster, dc string, op Op) changelog.WriteResult {
	t.Helper()
	res, err := c.Write(dc, op)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func deliverAll(t *testing.T, c *Cluster) {
	t.Helper()
	if err := c.DeliverAll(nil); err != nil {
		t.Fatal(err)
	}
}

// TestEmptyValueConverges: a put of an empty value must leave every DC with
// the same state (docs/DESIGN.md, invariant 10). The origin stores the value
// as an empty byte string, but the event decoder turns an empty "val" into
// nil, and the key-state encoding tells nil from empty, so the digests differ
// for ever. Found by TestRandomSchedules (about one seed in four;
// -sim.empty=false leaves empty values out).
func TestEmptyValueConverges(t *testing.T) {
	c := newCluster(t, Options{DCs: []string{"dc1", "dc2"}, Partitions: 1})
	mustWrite(t, c, "dc1", Op{Key: "k", Value: []byte{}})
	deliverAll(t, c)
	digests, equal, err := c.Digests()
	if err != nil {
		t.Fatal(err)
	}
	if !equal {
		a, _, _ := c.Read("dc1", "k")
		b, _, _ := c.Read("dc2", "k")
		t.Errorf("after one put of an empty value and full delivery the digests differ: dc1 %s, dc2 %s\n"+
			"dc1 (origin) holds %s, dc2 holds %s\n"+
			"want: equal states; the write path, the codec or the state encoding should treat an empty value and nil alike",
			digests["dc1"][:12], digests["dc2"][:12], fmtState(a), fmtState(b))
	}
}

// TestLWWLogsEveryDiscardedVersion: every version a resolver discards goes
// into the conflict log of at least one DC (docs/DESIGN.md, invariants 6
// and 10). With
// three concurrent puts under lww, A < B < C by HLC, the second discarded
// version (B) is never logged anywhere: noteConflicts returns as soon as it
// meets a discarded version it already logged (A) instead of moving on to
// the next one.
func TestLWWLogsEveryDiscardedVersion(t *testing.T) {
	rules, err := resolve.NewRules(resolve.LWW(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, Options{DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 1, Resolvers: rules})
	mustWrite(t, c, "dc1", Op{Key: "x", Value: []byte("A")})
	c.DC("dc2").Clock.Advance(5)
	b := mustWrite(t, c, "dc2", Op{Key: "x", Value: []byte("B")})
	c.DC("dc3").Clock.Advance(10)
	mustWrite(t, c, "dc3", Op{Key: "x", Value: []byte("C")})
	deliverAll(t, c)

	st, _, err := c.Read("dc1", "x")
	if err != nil {
		t.Fatal(err)
	}
	res := resolve.LWW().Resolve("x", st.Siblings)
	if len(res.Discarded) != 2 {
		t.Fatalf("lww over %s discards %d versions, want 2 (A and B)", fmtState(st), len(res.Discarded))
	}
	var logs []string
	for _, dc := range c.DCs() {
		cs, err := c.DC(dc).Store.Conflicts(changelog.ConflictFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, cf := range cs {
			for _, v := range cf.Discarded {
				logs = append(logs, dc+":"+v.Dot)
				if v.Dot == b.Event.Dot.String() {
					return
				}
			}
		}
	}
	t.Errorf("every DC shows C and discards A and B, but no conflict log lists B (%s); the logs hold %v\n"+
		"want: B logged as discarded by at least one DC (here every DC discards it)", b.Event.Dot, logs)
}

// TestContextFromAnotherDC: a client reads at dc2 and writes at dc3, which
// has not yet applied what the client read (a failover, or a client that
// moves between DCs). The write rule of docs/DESIGN.md "Data model" drops the
// siblings the client's context covers, and the reference model there checks
// contexts read at any DC. dc3 can neither cut the context (the write would
// then not supersede what the client read: under lww the old version, with
// the higher HLC, would win everywhere and the client's newer write would go
// to the conflict log) nor take it as it is (its clock would cover dc2's
// events before they arrive, which a forged context turns into lost writes:
// TestForgedContextIsRefused). So dc3 refuses the write until it has applied
// what the context names; then the retry supersedes "old".
func TestContextFromAnotherDC(t *testing.T) {
	rules, err := resolve.NewRules(resolve.LWW(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, Options{DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 1, Resolvers: rules})
	c.DC("dc2").Clock.Advance(10)
	old := mustWrite(t, c, "dc2", Op{Key: "x", Value: []byte("old")})
	ctx, err := c.ReadContext("dc2", "x") // the client reads "old" at dc2 ...
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Write("dc3", Op{Key: "x", Value: []byte("new"), Context: ctx}) // ... and writes at dc3 too early
	if !errors.Is(err, changelog.ErrContextAhead) {
		t.Fatalf("dc3 has not applied %s, which the context %s names; the write answered %v, want changelog.ErrContextAhead", old.Event.Dot, ctx, err)
	}
	deliverAll(t, c)
	w := mustWrite(t, c, "dc3", Op{Key: "x", Value: []byte("new"), Context: ctx}) // the retry, once dc3 caught up
	deliverAll(t, c)

	st, _, err := c.Read("dc1", "x")
	if err != nil {
		t.Fatal(err)
	}
	shows := resolve.LWW().Resolve("x", st.Siblings).Values
	if !ctx.LessEq(w.Event.Context) || len(st.Siblings) != 1 || string(shows[0]) != "new" {
		t.Errorf("the client read %s (context %s) at dc2 and wrote \"new\" with that context at dc3;\n"+
			"the event's context is %s, not covering %s, and every DC ends with %s, lww showing %q\n"+
			"want (DESIGN write rule, reference model with contexts from any DC): \"new\" supersedes \"old\": one sibling, \"new\"",
			old.Event.Dot, ctx, w.Event.Context, old.Event.Dot, fmtState(st), shows)
	}
}

// TestForgedContextIsRefused: a client context naming an event of dc2 that
// does not exist ({dc2:1000}) is refused at dc1. Were it taken, every DC's
// clock for the key would cover dc2:1..1000, and dc2's next writes of the
// key would arrive as obsolete and vanish at the other DCs.
func TestForgedContextIsRefused(t *testing.T) {
	c := newCluster(t, Options{DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 1})
	mustWrite(t, c, "dc1", Op{Key: "y", Value: []byte("a")})
	if _, err := c.Write("dc1", Op{Key: "x", Value: []byte("forged"), Context: vclock.VV{"dc2": 1000}}); !errors.Is(err, changelog.ErrContextAhead) {
		t.Fatalf("forged context {dc2:1000} at dc1: %v, want changelog.ErrContextAhead", err)
	}
	w := mustWrite(t, c, "dc2", Op{Key: "x", Value: []byte("from-dc2")})
	deliverAll(t, c)
	for _, dc := range c.DCs() {
		st, _, err := c.Read(dc, "x")
		if err != nil {
			t.Fatal(err)
		}
		if vals := liveValues(st); len(vals) != 1 || vals[0] != "from-dc2" {
			t.Errorf("%s shows %v for x, want dc2's write %s (from-dc2)", dc, vals, w.Event.Dot)
		}
	}
}

// liveValues lists the values of a state's live siblings.
func liveValues(st dvv.State) []string {
	var out []string
	for _, v := range st.Siblings {
		if !v.Deleted {
			out = append(out, string(v.Value))
		}
	}
	return out
}
