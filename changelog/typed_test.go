package changelog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/resolve"
)

func typedRules(t testing.TB) Resolvers {
	return rules(t, resolve.Siblings(),
		resolve.Rule{Prefix: "c/", Resolver: resolve.Counter()},
		resolve.Rule{Prefix: "f/", Resolver: resolve.Fields()},
		resolve.Rule{Prefix: "s/", Resolver: resolve.Set()})
}

// shows is what a read of key shows at s: its one value, or <deleted>.
func shows(t testing.TB, s *Store, key string) string {
	t.Helper()
	st, _, err := s.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	res := typedRules(t).For(key).Resolve(key, st.Siblings)
	if res.Deleted {
		return "<deleted>"
	}
	if len(res.Values) != 1 {
		return fmt.Sprintf("%q", res.Values)
	}
	return string(res.Values[0])
}

func deliverAll(t testing.TB, evs map[*Store][]*event.Event, stores ...*Store) {
	t.Helper()
	for _, to := range stores {
		for from, es := range evs {
			if from == to {
				continue
			}
			if _, err := to.Apply(context.Background(), es, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestTypedLocalOpsAreAtomic: concurrent increments at one DC are each
// read-modify-written in the committer, so none is lost.
func TestTypedLocalOpsAreAtomic(t *testing.T) {
	s := openMem(t, vfs.NewMem(), "dc1", Options{Resolvers: typedRules(t)})
	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			if _, err := s.Write(context.Background(), WriteOp{Key: "c/1", Typed: &resolve.Op{Kind: resolve.OpIncr, By: 2}}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := shows(t, s, "c/1"); got != "80" {
		t.Fatalf("40 concurrent incr by 2 show %s, want 80", got)
	}
}

// TestTypedConcurrentAcrossDCs: the cases on two stores exchanging
// events by hand.
func TestTypedConcurrentAcrossDCs(t *testing.T) {
	fs := vfs.NewMem()
	a := openMem(t, fs, "dc1", Options{Resolvers: typedRules(t)})
	b := openMem(t, fs, "dc2", Options{Resolvers: typedRules(t)})
	op := func(s *Store, key string, o resolve.Op) *event.Event {
		t.Helper()
		return mustWrite(t, s, WriteOp{Key: key, Typed: &o}).Event
	}
	elems := func(e ...string) []json.RawMessage {
		out := make([]json.RawMessage, len(e))
		for i, x := range e {
			out[i] = json.RawMessage(x)
		}
		return out
	}

	// Counter: a delete at dc1 of what it saw; dc2's increment it had not
	// seen survives alone.
	e1 := op(b, "c/1", resolve.Op{Kind: resolve.OpIncr, By: 5})
	deliverAll(t, map[*Store][]*event.Event{b: {e1}}, a)
	del := mustWrite(t, a, WriteOp{Key: "c/1", Delete: true}).Event
	inc := op(b, "c/1", resolve.Op{Kind: resolve.OpIncr, By: 3})
	deliverAll(t, map[*Store][]*event.Event{a: {del}, b: {inc}}, a, b)
	for _, s := range []*Store{a, b} {
		if got := shows(t, s, "c/1"); got != "3" {
			t.Fatalf("%s: counter after delete vs unseen incr shows %s, want 3", s.DC(), got)
		}
	}

	// Fields: different fields both survive, no conflict entry; the same
	// field logs the loser with both versions.
	base := mustWrite(t, a, WriteOp{Key: "f/1", Value: []byte(`{"title":"t0","body":"b0"}`)}).Event
	deliverAll(t, map[*Store][]*event.Event{a: {base}}, b)
	pa := op(a, "f/1", resolve.Op{Kind: resolve.OpPatch, Body: []byte(`{"title":"A"}`)})
	pb := op(b, "f/1", resolve.Op{Kind: resolve.OpPatch, Body: []byte(`{"body":"B"}`)})
	deliverAll(t, map[*Store][]*event.Event{a: {pa}, b: {pb}}, a, b)
	for _, s := range []*Store{a, b} {
		if got := shows(t, s, "f/1"); got != `{"body":"B","title":"A"}` {
			t.Fatalf("%s: fields show %s", s.DC(), got)
		}
		if cs, _ := s.Conflicts(ConflictFilter{}); len(cs) != 0 {
			t.Fatalf("%s: different fields logged %d conflicts: %+v", s.DC(), len(cs), cs)
		}
	}
	qa := op(a, "f/1", resolve.Op{Kind: resolve.OpPatch, Body: []byte(`{"title":"A2"}`)})
	qb := op(b, "f/1", resolve.Op{Kind: resolve.OpPatch, Body: []byte(`{"title":"B2"}`)})
	deliverAll(t, map[*Store][]*event.Event{a: {qa}, b: {qb}}, a, b)
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da.Hex() != db.Hex() {
		t.Fatal("digests differ")
	}
	for _, s := range []*Store{a, b} {
		got := shows(t, s, "f/1")
		if got != `{"body":"B","title":"B2"}` {
			t.Fatalf("%s: fields show %s", s.DC(), got)
		}
		cs, _ := s.Conflicts(ConflictFilter{})
		if len(cs) != 1 || cs[0].Resolver != "fields" || len(cs[0].Kept) != 1 || len(cs[0].Discarded) != 1 ||
			string(cs[0].Discarded[0].Value) != `{"title":"A2"}` || string(cs[0].Kept[0].Value) != `{"title":"B2"}` {
			t.Fatalf("%s: conflict log %+v", s.DC(), cs)
		}
	}

	// Set: a concurrent add and remove of one element keep the add.
	s0 := op(a, "s/1", resolve.Op{Kind: resolve.OpAdd, Elements: elems(`"x"`, `"y"`)})
	deliverAll(t, map[*Store][]*event.Event{a: {s0}}, b)
	rm := op(a, "s/1", resolve.Op{Kind: resolve.OpRemove, Elements: elems(`"x"`, `"y"`)})
	ad := op(b, "s/1", resolve.Op{Kind: resolve.OpAdd, Elements: elems(`"x"`)})
	deliverAll(t, map[*Store][]*event.Event{a: {rm}, b: {ad}}, a, b)
	for _, s := range []*Store{a, b} {
		if got := shows(t, s, "s/1"); got != `["x"]` {
			t.Fatalf("%s: set shows %s, want [\"x\"]", s.DC(), got)
		}
	}
}

// TestTypedRefusals: the wrong operation for the key's resolver, a PUT
// to a counter, a malformed patch, an element too large: ErrBadInput,
// and nothing written.
func TestTypedRefusals(t *testing.T) {
	s := openMem(t, vfs.NewMem(), "dc1", Options{Resolvers: typedRules(t)})
	big := make([]byte, resolve.MaxElementBytes+10)
	for i := range big {
		big[i] = 'a'
	}
	big[0], big[len(big)-1] = '"', '"'
	cases := []struct {
		name string
		op   WriteOp
	}{
		{"put to a counter", WriteOp{Key: "c/1", Value: []byte("5")}},
		{"incr by 0", WriteOp{Key: "c/1", Typed: &resolve.Op{Kind: resolve.OpIncr}}},
		{"incr to a set", WriteOp{Key: "s/1", Typed: &resolve.Op{Kind: resolve.OpIncr, By: 1}}},
		{"incr to a siblings key", WriteOp{Key: "k", Typed: &resolve.Op{Kind: resolve.OpIncr, By: 1}}},
		{"patch not an object", WriteOp{Key: "f/1", Typed: &resolve.Op{Kind: resolve.OpPatch, Body: []byte(`[1]`)}}},
		{"patch not JSON", WriteOp{Key: "f/1", Typed: &resolve.Op{Kind: resolve.OpPatch, Body: []byte(`{"a":`)}}},
		{"put not an object", WriteOp{Key: "f/1", Value: []byte(`"x"`)}},
		{"element too large", WriteOp{Key: "s/1", Typed: &resolve.Op{Kind: resolve.OpAdd, Elements: []json.RawMessage{big}}}},
		{"add no elements", WriteOp{Key: "s/1", Typed: &resolve.Op{Kind: resolve.OpAdd}}},
	}
	for _, c := range cases {
		_, err := s.Write(context.Background(), c.op)
		if !errors.Is(err, ErrBadInput) {
			t.Errorf("%s: %v, want ErrBadInput", c.name, err)
			continue
		}
		t.Logf("%s: %v", c.name, err)
		if _, ok, _ := s.Get(c.op.Key); ok {
			t.Errorf("%s: something was written", c.name)
		}
	}
	mustWrite(t, s, WriteOp{Key: "c/1", Typed: &resolve.Op{Kind: resolve.OpIncr, By: math.MaxInt64}})
	if _, err := s.Write(context.Background(), WriteOp{Key: "c/1", Typed: &resolve.Op{Kind: resolve.OpIncr, By: 1}}); !errors.Is(err, ErrBadInput) {
		t.Fatalf("int64 overflow: %v", err)
	}
}
