package sim

import (
	"testing"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/resolve"
)

// The tests in this file pin down contract violations the simulator found
// in changelog/, each reduced to its smallest schedule. Each names what the
// DESIGN expects and what the store did.

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
// the same state (invariant 10). The origin stores the value as an empty
// byte string, but the event decoder turns an empty "val" into nil, and the
// key-state encoding tells nil from empty, so the digests differ for ever.
// Found by TestRandomSchedules (about one seed in four; -sim.empty=false
// leaves empty values out).
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
// into the conflict log of at least one DC (invariants 6 and 10). With
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
// moves between DCs). The DESIGN's write rule drops the siblings the
// client's context covers, and the reference model checks contexts read at
// any DC. The store clamps the context to what dc3 has applied (the defence
// against forged contexts, TestForgedContextCannotSwallowFutureWrites), so
// the write does not supersede the version the client read and replaced.
// Under lww the old version, with the higher HLC, then wins everywhere and
// the client's newer write goes to the conflict log.
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
	// dc3 has not received "old", but dc2's periodic applied-vector report
	// told it that dc2 issued it; a context beyond every reported event
	// would be cut (changelog checkContext).
	if err := c.ReportAll(); err != nil {
		t.Fatal(err)
	}
	w := mustWrite(t, c, "dc3", Op{Key: "x", Value: []byte("new"), Context: ctx}) // ... and replaces it at dc3
	deliverAll(t, c)

	st, _, err := c.Read("dc1", "x")
	if err != nil {
		t.Fatal(err)
	}
	shows := resolve.LWW().Resolve("x", st.Siblings).Values
	if !ctx.LessEq(w.Event.Context) || len(st.Siblings) != 1 {
		t.Errorf("the client read %s (context %s) at dc2 and wrote \"new\" with that context at dc3;\n"+
			"the event's context is %s, not covering %s, and every DC ends with %s, lww showing %q\n"+
			"want (DESIGN write rule, reference model with contexts from any DC): \"new\" supersedes \"old\": one sibling, \"new\"",
			old.Event.Dot, ctx, w.Event.Context, old.Event.Dot, fmtState(st), shows)
	}
}
