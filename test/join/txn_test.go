package join_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/dvv"
)

// orderLines commits order n of dc and its lines as one transaction: the
// order's value says how many lines it has.
func orderLines(ctx context.Context, c *joinCluster, dc string, n, lines int) error {
	id := fmt.Sprintf("order/%s/%04d", dc, n)
	ops := []changelog.WriteOp{{Key: id, Value: fmt.Appendf(nil, "lines=%d", lines)}}
	for j := range lines {
		ops = append(ops, changelog.WriteOp{Key: fmt.Sprintf("%s/line/%d", id, j), Value: []byte("item")})
	}
	nd := c.node(dc)
	if nd == nil {
		return fmt.Errorf("%s is down", dc)
	}
	_, err := nd.WriteTxn(ctx, ops)
	return err
}

// partialOrders reads st's orders from one consistent snapshot and names
// those showing only some of their lines.
func partialOrders(st *changelog.Store) ([]string, int, error) {
	want, have := map[string]int{}, map[string]int{}
	err := st.Scan("order/", func(key string, s dvv.State) error {
		if s.LiveCount() == 0 {
			return nil
		}
		if i := strings.Index(key, "/line/"); i >= 0 {
			have[key[:i]]++
			return nil
		}
		var n int
		if _, err := fmt.Sscanf(string(s.Live()[0].Value), "lines=%d", &n); err != nil {
			return fmt.Errorf("order %s: value %q", key, s.Live()[0].Value)
		}
		want[key] = n
		return nil
	})
	var bad []string
	for id, n := range want {
		if have[id] != n {
			bad = append(bad, fmt.Sprintf("%s has %d of its %d lines", id, have[id], n))
		}
		delete(have, id)
	}
	for id, n := range have {
		bad = append(bad, fmt.Sprintf("%d lines of %s without the order", n, id))
	}
	return bad, len(want), err
}

// TestJoinDuringTransactions (invariant 11 in docs/DESIGN.md, through join):
// dc4 joins from dc1 while dc1, dc2 and dc3 commit orders with their lines
// as transactions. The snapshot dc4 imports is one Pebble snapshot, so it
// holds each transaction whole or not at all, and dc4's catch-up from the
// streams applies the rest whole: a reader at dc4, from the moment it
// starts, never sees an order with only some of its lines; at the end every
// order is whole at every DC.
func TestJoinDuringTransactions(t *testing.T) {
	all := []string{"dc1", "dc2", "dc3", "dc4"}
	writers := all[:3]
	c := newCluster(t, all...)
	for _, n := range writers {
		c.start(n, all)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var committed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(writers))
	defer func() { cancel(); wg.Wait() }() // before the cluster's cleanup closes the nodes
	for _, dc := range writers {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				if err := orderLines(ctx, c, dc, n, 1+n%5); err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("order %d at %s: %w", n, dc, err)
					}
					return
				}
				committed.Add(1)
			}
		})
	}
	waitCommitted := func(n int64, what string) {
		t.Helper()
		cluster.EventuallyEvery(t, 60*time.Second, 5*time.Millisecond, what, func() (bool, string) {
			select {
			case err := <-errs:
				t.Fatal(err)
			default:
			}
			return committed.Load() >= n, fmt.Sprintf("%d orders committed, want %d", committed.Load(), n)
		})
	}
	waitCommitted(60, "before the join")
	res := c.join("dc4", "dc1", all)
	waitCommitted(committed.Load()+40, "between the join and dc4's start")
	c.start("dc4", all)

	var reads, seen atomic.Int64
	var readErr error
	stopRead := make(chan struct{})
	var rd sync.WaitGroup
	stopReader := sync.OnceFunc(func() { close(stopRead); rd.Wait() })
	defer stopReader() // before the cluster's cleanup closes the stores
	rd.Go(func() {
		for {
			bad, n, err := partialOrders(c.node("dc4").Store())
			reads.Add(1)
			seen.Store(int64(n))
			if err != nil || len(bad) > 0 {
				readErr = fmt.Errorf("dc4, read %d: %v %v", reads.Load(), err, bad)
				return
			}
			select {
			case <-stopRead:
				return
			default:
			}
		}
	})
	waitCommitted(committed.Load()+60, "after dc4's start")
	cancel()
	wg.Wait()
	c.waitConverged(60 * time.Second)
	stopReader()
	if readErr != nil {
		t.Fatal(readErr)
	}
	for _, dc := range all {
		bad, n, err := partialOrders(c.node(dc).Store())
		if err != nil || len(bad) > 0 {
			t.Fatalf("%s at the end: %v %v", dc, err, bad)
		}
		if int64(n) != committed.Load() {
			t.Fatalf("%s holds %d orders, %d were committed", dc, n, committed.Load())
		}
	}
	t.Logf("join: %d keys in the snapshot; %d orders committed; dc4's reader took %d consistent reads, none partial", res.Keys, committed.Load(), reads.Load())
}
