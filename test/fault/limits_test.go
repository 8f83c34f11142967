package fault_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/test/internal/ledger"
)

// smallStream is the MaxBytes of dc1's stream in the stream-limit tests:
// room for about a hundred events. Production streams default to 1 GiB
// (bridge.DefaultMaxBytes); the mechanism is the same.
const smallStream = 48 << 10

// fullStreamCluster starts dc1 and dc2 in a mesh after creating dc1's
// stream with room for about a hundred events (operators may size
// MaxBytes; EnsureStream accepts it), then writes n puts at dc1. It
// returns once every put is acknowledged.
func fullStreamCluster(t *testing.T, n int) (*cluster, *ledger.Ledger, []string) {
	t.Helper()
	c := newCluster(t, clusterOptions{dcs: []string{"dc1", "dc2"}, mode: inProcess, reportInterval: 100 * time.Millisecond, noStart: true})
	nc, js := c.js()
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bridge.EnsureStream(ctx, js, "dc1", c.opts.partitions, bridge.StreamOptions{MaxBytes: smallStream}); err != nil {
		t.Fatal(err)
	}
	c.startAll()
	led := newLedger(c.opts.dcs)
	w := newWorkload(c, led, nil)
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("full/k%04d", i)
		if !w.Put("dc1", keys[i], nil, nil) {
			t.Fatalf("put %d at dc1 was not acknowledged: %s", i, led.FailureSummary())
		}
	}
	return c, led, keys
}

// TestFullStreamTrimsItself: once a DC's stream is over 80% of MaxBytes,
// the DC deletes the events every downstream consumer has acknowledged,
// whatever their age (bridge trimStream), so a full stream does not stop
// publishing for good: the outbox drains without an operator
// (docs/DESIGN.md, invariant 2).
// Here the stream holds about a hundred events and dc2 has applied them.
func TestFullStreamTrimsItself(t *testing.T) {
	c, _, _ := fullStreamCluster(t, 400)
	dc1 := c.member("dc1")
	var last string
	err := repl.WaitFor(30*time.Second, 100*time.Millisecond, func() bool {
		mt, err := c.metrics(dc1)
		if err != nil {
			return false
		}
		last = fmt.Sprintf("outbox depth %v, published %v, publish errors %v; dc2 applied %v",
			mt["replicator_outbox_depth"], mt["replicator_published_total"], mt["replicator_publish_errors_total"], metric(t, c, "dc2", "replicator_applies_total"))
		return mt["replicator_outbox_depth"] == 0
	})
	if err != nil {
		t.Errorf("dc1 never published all its acknowledged writes, although dc2 applied every event in dc1's stream (the rest by repair): %s", last)
		nc, js := c.js()
		defer nc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if s, err := js.Stream(ctx, names.Stream("dc1")); err == nil {
			info, _ := s.Info(ctx)
			t.Logf("REPL_dc1: %d messages, %d bytes of max %d; first seq %d", info.State.Msgs, info.State.Bytes, info.Config.MaxBytes, info.State.FirstSeq)
		}
		b, _ := readFile(dc1.logPath)
		for _, l := range strings.Split(b, "\n") {
			if strings.Contains(l, "publish failed") {
				t.Logf("dc1 log: %s", l)
				break
			}
		}
	}
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}
