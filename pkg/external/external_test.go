package external

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/resolve"
)

func setup(t *testing.T, timeout time.Duration) (*nats.Conn, *changelog.Store, *changelog.Store, *resolve.Rules) {
	t.Helper()
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	rules, err := resolve.NewRules(resolve.Siblings(), []resolve.Rule{{Prefix: "doc/", Resolver: resolve.External("app.resolve", timeout, resolve.LWW())}})
	if err != nil {
		t.Fatal(err)
	}
	fs := vfs.NewMem()
	open := func(dc string) *changelog.Store {
		s, err := changelog.Open("/"+dc, changelog.Options{DC: dc, DCs: []string{"dc1", "dc2"}, Partitions: 2, FS: fs, Resolvers: rules})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	return nc, open("dc1"), open("dc2"), rules
}

// conflict makes dc1 hold two concurrent values of key and returns dc1's
// commit changes for it.
func conflict(t *testing.T, a, b *changelog.Store, key string) []changelog.Change {
	t.Helper()
	ctx := context.Background()
	if _, err := a.Write(ctx, changelog.WriteOp{Key: key, Value: []byte("B")}); err != nil {
		t.Fatal(err)
	}
	r, err := b.Write(ctx, changelog.WriteOp{Key: key, Value: []byte("C")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(ctx, []*event.Event{r.Event}, nil); err != nil {
		t.Fatal(err)
	}
	st, _, _ := a.Get(key)
	if st.LiveCount() != 2 {
		t.Fatalf("setup: %d live values, want 2", st.LiveCount())
	}
	return []changelog.Change{{Key: key, State: st}}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func TestArbiterWritesResolution(t *testing.T) {
	nc, a, b, rules := setup(t, time.Second)
	var calls atomic.Int32
	sub, err := nc.Subscribe("app.resolve", func(m *nats.Msg) {
		calls.Add(1)
		var req Request
		json.Unmarshal(m.Data, &req)
		var vals []string
		for _, s := range req.Siblings {
			vals = append(vals, string(s.Value))
		}
		sort.Strings(vals)
		joined := strings.Join(vals, "+")
		out, _ := json.Marshal(Reply{ValueText: &joined})
		m.Respond(out)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	w := New(Options{Store: a, NC: nc, Rules: rules, Sweep: time.Hour})
	w.Start(context.Background())
	defer w.Close()
	w.Notify(conflict(t, a, b, "doc/1"))
	waitFor(t, "the resolution", func() bool { return w.Stats().Resolved == 1 })
	st, _, _ := a.Get("doc/1")
	if st.LiveCount() != 1 || string(st.Live()[0].Value) != "B+C" {
		t.Fatalf("after resolution: %+v", st.Siblings)
	}
	// The resolution is an ordinary event: the other DC applies it and the
	// conflict is gone there too.
	out, _ := a.ReadOutbox(0, 10)
	last := out[len(out)-1].Event
	if last.Op != event.OpResolve {
		t.Fatalf("resolution event op %s", last.Op)
	}
	if _, err := b.Apply(context.Background(), []*event.Event{out[0].Event, last}, nil); err != nil {
		t.Fatal(err)
	}
	sb, _, _ := b.Get("doc/1")
	if sb.LiveCount() != 1 || string(sb.Live()[0].Value) != "B+C" {
		t.Fatalf("dc2 after the resolution: %+v", sb.Siblings)
	}
	// Keys under other resolvers are none of its business.
	w.Notify(conflict(t, a, b, "user/1"))
	w.Notify(conflict(t, a, b, "doc/1")) // a new conflict on the same key
	waitFor(t, "the second resolution", func() bool { return w.Stats().Resolved == 2 })
	if calls.Load() != 2 {
		t.Fatalf("service called %d times, want 2", calls.Load())
	}
}

func TestFallbackOnTimeout(t *testing.T) {
	nc, a, b, rules := setup(t, 50*time.Millisecond)
	w := New(Options{Store: a, NC: nc, Rules: rules, Sweep: time.Hour})
	w.Start(context.Background())
	defer w.Close()
	w.Notify(conflict(t, a, b, "doc/1"))
	waitFor(t, "the failure", func() bool { return w.Stats().Failed == 1 })
	st, _, _ := a.Get("doc/1")
	if st.LiveCount() != 2 {
		t.Fatal("a failed resolution changed the key")
	}
	res := rules.For("doc/1").Resolve("doc/1", st.Siblings)
	if len(res.Values) != 1 || string(res.Values[0]) != "C" || !res.Conflict {
		t.Fatalf("fallback view %q conflict=%v, want lww's C flagged as a conflict", res.Values, res.Conflict)
	}
}

func TestArbiter(t *testing.T) {
	if Arbiter([]string{"b", "a"}) != "b" || Arbiter(nil) != "" {
		t.Fatal("the arbiter is the first configured DC")
	}
}
