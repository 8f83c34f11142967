package core

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
)

func encode(t *testing.T, evs ...*event.Event) [][]byte {
	t.Helper()
	var out [][]byte
	for _, ev := range evs {
		b, err := ev.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func TestCheckRepairReply(t *testing.T) {
	k := "k1"
	p := event.PartitionOf(k, testParts)
	req := RepairRequest{Partition: p, From: 3, To: 5}
	other := "k2"
	for event.PartitionOf(other, testParts) == p {
		other += "x"
	}
	for _, tc := range []struct {
		name string
		raw  [][]byte
		want string // "" accepts
	}{
		{"in sequence", encode(t, testEvent("b", 3, k), testEvent("b", 4, k)), ""},
		{"empty", nil, ""},
		{"does not start at From", encode(t, testEvent("b", 4, k)), "seq 4, want 3"},
		{"skips", encode(t, testEvent("b", 3, k), testEvent("b", 5, k)), "seq 5, want 4"},
		{"past To", encode(t, testEvent("b", 3, k), testEvent("b", 4, k), testEvent("b", 5, k), testEvent("b", 6, k)), "seq 6, want 6"},
		{"another origin", encode(t, testEvent("c", 3, k)), "is not b's own event"},
		{"forwarded", encode(t, testEvent("b", 3, k, "b", "c")), "is not b's own event"},
		{"wrong partition for the key", func() [][]byte {
			ev := testEvent("b", 3, k)
			ev.Partition = (p + 1) % testParts
			return encode(t, ev)
		}(), "is not in partition"},
		{"nothing of the partition", encode(t, testEvent("b", 3, other)), "holds nothing of partition"},
		{"malformed", [][]byte{{0xc1}}, "event 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, err := CheckRepairReply("b", req, tc.raw, testParts, event.Limits{})
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "" && len(evs) != len(tc.raw):
				t.Fatalf("%d events of %d", len(evs), len(tc.raw))
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// ownEvents serves n events of size bytes each, from From on.
type ownEvents struct{ size int }

func (o ownEvents) OwnEvents(p uint32, from, to uint64, max int) ([][]byte, error) {
	var out [][]byte
	for s := from; s <= to && len(out) < max; s++ {
		out = append(out, make([]byte, o.size))
	}
	return out, nil
}

func TestServeRepair(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  RepairRequest
		size int
		n    int
		err  bool
	}{
		{"small", RepairRequest{Partition: 1, From: 1, To: 10}, 100, 10, false},
		{"capped in count", RepairRequest{Partition: 1, From: 1, To: 10000}, 10, MaxRepairEvents, false},
		{"capped in bytes", RepairRequest{Partition: 1, From: 1, To: 100}, MaxRepairBytes / 4, 4, false},
		{"one oversized event still goes", RepairRequest{Partition: 1, From: 1, To: 3}, 2 * MaxRepairBytes, 1, false},
		{"partition out of range", RepairRequest{Partition: testParts, From: 1, To: 2}, 1, 0, true},
		{"from 0", RepairRequest{Partition: 0, From: 0, To: 2}, 1, 0, true},
		{"to below from", RepairRequest{Partition: 0, From: 3, To: 2}, 1, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ServeRepair(ownEvents{tc.size}, testParts, tc.req)
			if tc.err {
				if !errors.Is(err, ErrBadRepair) {
					t.Fatalf("err %v, want ErrBadRepair", err)
				}
				return
			}
			if err != nil || len(got) != tc.n {
				t.Fatalf("%d events (err %v), want %d", len(got), err, tc.n)
			}
		})
	}
}

// TestRepair fills gaps from an origin's real store: across replies
// capped in size, not at all when the origin lacks the events, and not
// again once applied.
func TestRepair(t *testing.T) {
	dcs := []string{"a", "b", "c"}
	plan := mustPlan(t, "mesh", "a", dcs, "")
	ctx := context.Background()
	b := openStore(t, "b", dcs)
	msgs := writes(t, b, "k", 10)
	p := event.PartitionOf("k", testParts)
	a := openStore(t, "a", dcs)
	src := &origins{stores: map[string]*changelog.Store{"b": b}, most: 4}
	r := Repairer{Store: a, Source: src, Partitions: testParts,
		Forward: func(ev *event.Event) bool { return plan.ShouldForward(ev.Path, ev.Origin) }}

	to := uint64(len(msgs))
	tally, err := r.Repair(ctx, "b", p, 1, to)
	if err != nil {
		t.Fatal(err)
	}
	if tally.Repairs != 3 || tally.RepairedEvents != to || src.asked != 3 {
		t.Fatalf("tally %+v after %d requests; want 3 replies bringing %d events", tally, src.asked, to)
	}
	if !a.Applied().Covers("b", p, to) {
		t.Fatalf("applied %v, want b up to %d", a.Applied(), to)
	}
	// Already applied: nothing is asked.
	if tally, err := r.Repair(ctx, "b", p, 1, to); err != nil || tally != (Tally{}) || src.asked != 3 {
		t.Fatalf("repairing what is applied: tally %+v, err %v, %d requests", tally, err, src.asked)
	}
	// An origin that trimmed what is asked answers nothing.
	c := openStore(t, "c", dcs)
	if _, err := (Repairer{Store: c, Source: &origins{stores: map[string]*changelog.Store{"b": openStore(t, "b", dcs)}}, Partitions: testParts}).Repair(ctx, "b", p, 1, 3); !errors.Is(err, ErrOriginLacks) {
		t.Fatalf("err %v, want ErrOriginLacks", err)
	}
}

// claimsApplied is a store whose applied vector claims origin's partition
// p is applied up to n, whatever it holds: filling that gap does nothing.
type claimsApplied struct {
	*changelog.Store
	origin string
	p      uint32
	n      uint64
}

func (c claimsApplied) Applied() changelog.Applied {
	a := c.Store.Applied().Clone()
	row := a[c.origin]
	for len(row) <= int(c.p) {
		row = append(row, 0)
	}
	row[c.p] = max(row[c.p], c.n)
	a[c.origin] = row
	return a
}

// TestRepairDoesNotSpin: a repaired transaction that still waits for
// another partition's gap after that gap's repair ends the repair with an
// error; asking the origin again and again would hold the link for ever.
func TestRepairDoesNotSpin(t *testing.T) {
	dcs := []string{"a", "b"}
	ctx := context.Background()
	kp, kq := "", ""
	for i := 0; kp == "" || kq == ""; i++ {
		k := fmt.Sprint("k", i)
		switch event.PartitionOf(k, testParts) {
		case 0:
			kp = k
		case 1:
			kq = k
		}
	}
	b := openStore(t, "b", dcs)
	if _, err := b.Write(ctx, changelog.WriteOp{Key: kq, Value: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteTxn(ctx, []changelog.WriteOp{{Key: kp, Value: []byte("2")}, {Key: kq, Value: []byte("3")}}); err != nil {
		t.Fatal(err)
	}
	a := claimsApplied{Store: openStore(t, "a", dcs), origin: "b", p: 1, n: 1}
	src := &origins{stores: map[string]*changelog.Store{"b": b}}
	done := make(chan error, 1)
	go func() {
		_, err := Repairer{Store: a, Source: src, Partitions: testParts}.Repair(ctx, "b", 0, 1, 1)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "still waits for a gap in partition 1") {
			t.Fatalf("repair: %v, want an error naming partition 1's gap", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the repair still runs after 10s, having asked the origin %d times", src.asked)
	}
}
