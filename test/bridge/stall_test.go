package bridge_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/names"
)

// stallPullExpiry is the links' pull expiry in the stall tests: the server
// sends idle heartbeats every second, and a link that hears nothing for 2 s
// has missed them.
const stallPullExpiry = 2 * time.Second

// newStallCluster is a 2-DC mesh whose DCs reach NATS through proxies
// (Freeze stalls a DC's connection) and whose links miss their heartbeats
// after stallPullExpiry of silence.
func newStallCluster(t *testing.T) *bridgeCluster {
	t.Helper()
	return newClusterWith(t, cluster.Options{N: 2, Topology: "mesh", Proxies: true}, func(o *bridge.Options) {
		o.PullExpiry = stallPullExpiry
		// A message lost on its way to a link comes back only after this.
		o.AckWait = stallAckWait
	}).start()
}

// stallAckWait is the consumers' AckWait in the stall tests.
const stallAckWait = 30 * time.Second

// ackFloorAt waits until consumer's ack floor on stream reaches the
// stream's last message, for less than stallAckWait: no message waits for
// redelivery.
func ackFloorAt(t *testing.T, c *bridgeCluster, js jetstream.JetStream, stream, consumer, dc, up string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stallAckWait)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	last := s.CachedInfo().State.LastSeq
	cluster.Eventually(t, stallAckWait/3, consumer+" acknowledging all of "+stream+" without waiting for redeliveries", func() (bool, string) {
		cons, err := js.Consumer(ctx, stream, consumer)
		if err != nil {
			return false, fmt.Sprintf("consumer %s: %v; link's last error: %s", consumer, err, linkErr(c, dc, up))
		}
		i := cons.CachedInfo()
		return i.AckFloor.Stream == last, fmt.Sprintf("ack floor %d of %d, %d waiting for an ack or redelivery; link's last error: %s",
			i.AckFloor.Stream, last, i.NumAckPending, linkErr(c, dc, up))
	})
}

// linkErr returns the last error of dc's link from up.
func linkErr(c *bridgeCluster, dc, up string) string {
	for _, l := range c.rep(dc).Status().Links {
		if l.Upstream == up {
			return l.LastError
		}
	}
	return "no link from " + up
}

// TestStallKeepsConsumer stalls dc2's connection to NATS (nothing passes,
// nothing closes, as with a server too loaded to answer) for longer than
// its link's heartbeat bound while dc1 writes. The link misses its
// heartbeats, and must come back without asking JetStream to create its
// consumer again: the consumer never went away, each such create rewrites
// the consumer's file on the server, and at 32 and 48 DCs a create per
// missed heartbeat of every link was the storm of API requests that timed
// out by thousands and stalled replication (docs/SCALING.md).
func TestStallKeepsConsumer(t *testing.T) {
	c := newStallCluster(t)
	consumer := names.Consumer("dc2", "dc1")
	cluster.Eventually(t, 10*time.Second, "links connected", c.LinksConnected)

	// Every consumer create request from now on, seen on the server.
	var creates atomic.Int64
	mon := c.Connect(t, "monitor")
	if _, err := mon.Subscribe("$JS.API.CONSUMER.>", func(m *nats.Msg) {
		if strings.Contains(m.Subject, ".CREATE.") && strings.Contains(m.Subject, consumer) {
			creates.Add(1)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := mon.Flush(); err != nil {
		t.Fatal(err)
	}

	for i := range 10 {
		c.write("dc1", fmt.Sprintf("before-%d", i), "v", false)
	}
	c.waitConverged(10 * time.Second)

	c.Proxy("dc2").Freeze()
	for i := range 10 {
		c.write("dc1", fmt.Sprintf("during-%d", i), "v", false)
	}
	cluster.Eventually(t, 5*stallPullExpiry, "dc2's link from dc1 misses its heartbeats", func() (bool, string) {
		err := linkErr(c, "dc2", "dc1")
		return strings.Contains(err, "heartbeat"), "last error: " + err
	})
	c.Proxy("dc2").Thaw()
	for i := range 10 {
		c.write("dc1", fmt.Sprintf("after-%d", i), "v", false)
	}
	c.waitConverged(20 * time.Second)
	// What the server had sent towards the link when it fell silent
	// reaches it: nothing was lost in an inbox the link had dropped.
	c.waitPublished("dc1")
	ackFloorAt(t, c, c.js(t), names.Stream("dc1"), consumer, "dc2", "dc1")

	if err := mon.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := creates.Load(); n > 0 {
		t.Errorf("dc2 asked JetStream %d times to create its consumer %s after missing heartbeats, though the consumer was there all along; "+
			"a link that misses heartbeats must check that its consumer exists and keep pulling from it", n, consumer)
	}
}

// TestStallConsumerGone stalls dc2's connection for longer than a pull
// request lives, deletes dc2's consumer meanwhile (so no "consumer
// deleted" notice reaches the link: it had no pull request waiting), and
// lets the connection through again. The link must find its consumer gone
// and create it anew rather than pull for ever from one that no longer
// exists; the new consumer delivers dc1's whole stream.
func TestStallConsumerGone(t *testing.T) {
	c := newStallCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := c.js(t)
	stream, consumer := names.Stream("dc1"), names.Consumer("dc2", "dc1")
	cluster.Eventually(t, 10*time.Second, "links connected", c.LinksConnected)

	for i := range 10 {
		c.write("dc1", fmt.Sprintf("before-%d", i), "v", false)
	}
	c.waitConverged(10 * time.Second)

	c.Proxy("dc2").Freeze()
	// The stall: every pull request dc2 sent before it expires on the server.
	cluster.Hold(stallPullExpiry+time.Second, nil)
	if err := js.DeleteConsumer(ctx, stream, consumer); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		c.write("dc1", fmt.Sprintf("during-%d", i), "v", false)
	}
	c.Proxy("dc2").Thaw()
	c.waitPublished("dc1")
	// The consumer is created anew and delivers the whole stream.
	ackFloorAt(t, c, js, stream, consumer, "dc2", "dc1")
	c.waitConverged(10 * time.Second)
}

// lostCreateReplies is a JetStream whose consumer creates reach the
// server, which creates the consumer, but whose first replies are lost,
// as when the server answers after the caller's APITimeout.
type lostCreateReplies struct {
	jetstream.JetStream
	lose atomic.Int32 // replies still to lose
	lost atomic.Int32
}

func (j *lostCreateReplies) CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	cons, err := j.JetStream.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err == nil && j.lose.Add(-1) >= 0 {
		j.lost.Add(1)
		return nil, fmt.Errorf("create consumer %s: %w", cfg.Durable, context.DeadlineExceeded)
	}
	return cons, err
}

// TestCreateReplyLost has the server create dc2's consumer while the
// replies to the link's first creates are lost. The link must not be
// left without a consumer, or with a view of it that is not the server's:
// it creates again, which finds the consumer and updates it to the same
// configuration, and then consumes it.
func TestCreateReplyLost(t *testing.T) {
	var lying *lostCreateReplies
	c := newClusterWith(t, cluster.Options{N: 2, Topology: "mesh"}, func(o *bridge.Options) {
		if o.Store.DC() != "dc2" {
			return
		}
		js, err := jetstream.New(o.NC)
		if err != nil {
			t.Fatal(err)
		}
		lying = &lostCreateReplies{JetStream: js}
		lying.lose.Store(3)
		o.JS = lying
	}).start()
	for i := range 10 {
		c.write("dc1", fmt.Sprintf("k%d", i), "v", false)
	}
	c.waitConverged(20 * time.Second)
	c.waitPublished("dc1")
	ackFloorAt(t, c, c.js(t), names.Stream("dc1"), names.Consumer("dc2", "dc1"), "dc2", "dc1")
	if n := lying.lost.Load(); n != 3 {
		t.Errorf("%d create replies lost, want 3: the fault did not happen as meant", n)
	}
}

// TestReportFlood floods dc2's report subscription far faster than it
// takes reports in, so that its client drops them as a slow consumer (as
// repl.applied.* did at 32 and 48 DCs), and then checks that the report
// intake still takes in dc1's reports: a slow-consumer drop loses the
// reports dropped, never the subscription.
func TestReportFlood(t *testing.T) {
	c := newCluster(t, "mesh", 2, nil).start()
	c.write("dc1", "k0", "v", false)
	c.waitConverged(10 * time.Second)

	const flood = 100_000
	before := c.rep("dc2").Stats()
	nc := c.Connect(t, "flood")
	junk := make([]byte, 64) // not an applied vector: ignored when taken in
	for range flood {
		if err := nc.Publish(names.AppliedSubject("dc1"), junk); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// dc1's own reports keep coming meanwhile; once every report of the
	// flood has been taken in or dropped, the count stops moving.
	var taken uint64
	cluster.Eventually(t, 20*time.Second, "dc2 done with the flood", func() (bool, string) {
		s := c.rep("dc2").Stats()
		n := s.PeerReportsIgnored - before.PeerReportsIgnored
		done := n == taken
		taken = n
		return done && n > 0, fmt.Sprintf("%d of %d junk reports taken in so far", n, flood)
	})
	if taken >= flood {
		t.Fatalf("dc2 took in all %d reports of the flood: nothing was dropped, the test did not make a slow consumer", flood)
	}
	t.Logf("dc2 took in %d of %d flooded reports; the client dropped the rest", taken, flood)

	// dc1's reports still arrive: dc2 sees dc1 apply a write of its own.
	res := c.write("dc1", "k1", "v", false)
	cluster.Eventually(t, 10*time.Second, "dc2 taking in dc1's reports after the drops", func() (bool, string) {
		row := c.store("dc2").PeerApplied()["dc1"]["dc1"]
		p := res.Event.Partition
		return len(row) > int(p) && row[p] >= res.Event.Seq, fmt.Sprintf("dc1 reported %v of its own, want partition %d at %d", row, p, res.Event.Seq)
	})
}
