package changelog

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/event"
)

// TestMaxSiblings: a local write that would leave its key with more than
// MaxSiblings siblings, and more than it holds, is refused and changes
// nothing; a write with the read's context, a delete, and remote events
// are not.
func TestMaxSiblings(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	dc1 := openMem(t, fs, "dc1", Options{Partitions: 1, MaxSiblings: 3})
	dc2 := openMem(t, fs, "dc2", Options{Partitions: 1, MaxSiblings: 2})

	var evs []*event.Event
	var first WriteResult
	for i, v := range []string{"a", "b", "c"} {
		r := mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte(v)}) // blind: a sibling each
		if i == 0 {
			first = r
		}
		evs = append(evs, r.Event)
	}
	last := evs[len(evs)-1].Dot.N

	_, err := dc1.Write(ctx, WriteOp{Key: "k", Value: []byte("d")})
	var tm *TooManySiblingsError
	if !errors.As(err, &tm) || !errors.Is(err, ErrTooManySiblings) || tm.Siblings != 3 || tm.Max != 3 || tm.Key != "k" {
		t.Fatalf("a fourth blind write: %v, want a TooManySiblingsError for k holding 3 of 3", err)
	}
	if n := dc1.Stats().SiblingsRefused; n != 1 {
		t.Fatalf("Stats().SiblingsRefused = %d after one refusal, want 1", n)
	}
	st, _, _ := dc1.Get("k")
	if got := fmt.Sprint(values(st)); got != "[a b c]" {
		t.Fatalf("after the refusal k holds %s, want [a b c]", got)
	}
	if r := mustWrite(t, dc1, WriteOp{Key: "other", Value: []byte("x")}); r.Event.Dot.N != last+1 {
		t.Fatalf("the next write took sequence %d, want %d: the refused write used one", r.Event.Dot.N, last+1)
	}

	// A context covering one sibling keeps the count: not refused.
	r := mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte("a2"), Context: first.State.Clock})
	if got := fmt.Sprint(values(r.State)); got != "[b c a2]" {
		t.Fatalf("a write superseding a: %s, want [b c a2]", got)
	}
	evs = append(evs, r.Event)

	// A transaction with a blind op on k is refused whole, naming the op.
	_, err = dc1.WriteTxn(ctx, []WriteOp{{Key: "t1", Value: []byte("x")}, {Key: "k", Value: []byte("e")}})
	var te *TxnError
	if !errors.As(err, &te) || te.Index != 1 || !errors.Is(err, ErrTooManySiblings) {
		t.Fatalf("a transaction with a blind op on k: %v, want a TxnError for op 1 wrapping ErrTooManySiblings", err)
	}
	if _, ok, _ := dc1.Get("t1"); ok {
		t.Fatal("the refused transaction wrote its first op")
	}

	// Remote events are applied whatever the count: dc2 holds 3 of a
	// limit of 2, refuses its own blind write, and takes one that
	// supersedes one sibling or all.
	res, err := dc2.Apply(ctx, evs[:3], nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range res {
		if a.Outcome != Changed {
			t.Fatalf("remote event %d: %s, want changed", i, a.Outcome)
		}
	}
	if _, err := dc2.Write(ctx, WriteOp{Key: "k", Value: []byte("z")}); !errors.Is(err, ErrTooManySiblings) {
		t.Fatalf("dc2's blind write to k holding 3: %v, want ErrTooManySiblings", err)
	}
	// Over the limit, a write that does not add to the count is taken.
	y := mustWrite(t, dc2, WriteOp{Key: "k", Value: []byte("y"), Context: first.State.Clock})
	if got := fmt.Sprint(values(y.State)); got != "[b c y]" {
		t.Fatalf("dc2's write superseding a: %s, want [b c y]", got)
	}
	read, _, _ := dc2.Get("k")
	w := mustWrite(t, dc2, WriteOp{Key: "k", Value: []byte("z"), Context: read.Clock})
	if got := fmt.Sprint(values(w.State)); got != "[z]" {
		t.Fatalf("dc2's write with the read's context: %s, want [z]", got)
	}

	// A delete supersedes what it read, so it is never refused.
	mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte("f"), Context: r.State.Clock})
	for _, v := range []string{"g", "h"} {
		mustWrite(t, dc1, WriteOp{Key: "k", Value: []byte(v)})
	}
	if d := mustWrite(t, dc1, WriteOp{Key: "k", Delete: true}); d.State.LiveCount() != 0 || len(d.State.Siblings) != 1 {
		t.Fatalf("a delete of k holding 3: %s, want one tombstone", values(d.State))
	}
}
