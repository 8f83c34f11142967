package bridge_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// TestRedelivery delivers every event to a DC a second time, as when its
// acks are lost (here: its consumer is deleted, so the whole stream comes
// again), and re-publishes an event with its own id: nothing is applied
// twice and the state does not move.
func TestRedelivery(t *testing.T) {
	c := newCluster(t, "mesh", 2, nil).start()
	// ctx is the test's: each JetStream call has the client's default
	// timeout. A deadline set here would run out during the test's waits
	// when the machine is loaded.
	ctx := t.Context()
	js := c.js(t)

	perDC := c.writeConcurrently(c.dcs, 10, 3)
	c.waitConverged(20 * time.Second)
	_, before := c.digestsEqual()

	// The same message again: JetStream's dedup window drops it.
	s, err := js.Stream(ctx, names.Stream("dc1"))
	if err != nil {
		t.Fatal(err)
	}
	last, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: last.Subject, Header: last.Header, Data: last.Data})
	if err != nil {
		t.Fatal(err)
	}
	if !ack.Duplicate {
		t.Errorf("re-publishing %s was not deduplicated", last.Header.Get(event.HeaderMsgID))
	}

	// Every message again: as if no ack had arrived.
	c.stopRep("dc2")
	if err := js.DeleteConsumer(ctx, names.Stream("dc1"), names.Consumer("dc2", "dc1")); err != nil {
		t.Fatal(err)
	}
	c.startRep("dc2")
	cluster.Eventually(t, 20*time.Second, "redelivery", func() (bool, string) {
		s := c.rep("dc2").Stats()
		return s.Duplicates == uint64(perDC), fmt.Sprintf("%d duplicates of %d", s.Duplicates, perDC)
	})
	c.waitConverged(10 * time.Second)
	if _, after := c.digestsEqual(); after != before {
		t.Errorf("redelivery changed the state:\nbefore %s\nafter  %s", before, after)
	}
	c.checkAppliedOnce(map[string]uint64{"dc1": uint64(perDC), "dc2": uint64(perDC)})
}

// TestLostMessages deletes events from streams before their consumer
// reads them, once from the origin's stream and once from a forwarding
// DC's: the gap is found, repaired from the origin's outbox, never
// skipped, and the ring converges.
func TestLostMessages(t *testing.T) {
	c := newCluster(t, "ring", 3, nil).start()
	// ctx is the test's: each JetStream call has the client's default
	// timeout. A deadline set here would run out during the test's waits
	// when the machine is loaded.
	ctx := t.Context()
	js := c.js(t)
	// dc2 creates its consumer on dc1's stream once started; the check
	// below reads its ack floor.
	cluster.Eventually(t, 10*time.Second, "dc2's consumer on dc1's stream", func() (bool, string) {
		_, err := js.Consumer(ctx, names.Stream("dc1"), names.Consumer("dc2", "dc1"))
		return err == nil, fmt.Sprint(err)
	})
	c.stopRep("dc2")
	c.stopRep("dc3")

	const writes = 30
	for i := range writes {
		c.write("dc1", fmt.Sprintf("k%02d", i%10), fmt.Sprint(i), i%2 == 0)
	}
	cluster.Eventually(t, 10*time.Second, "dc1 publishing", func() (bool, string) {
		d := c.store("dc1").OutboxDepth()
		return d == 0, fmt.Sprintf("%d to publish", d)
	})
	deleteMsgs(t, ctx, js, "dc1", 3, 4, 17)

	c.startRep("dc2")
	c.waitCaughtUp("dc2", "dc1")
	deleteMsgs(t, ctx, js, "dc2", 1, 20)

	c.startRep("dc3")
	c.waitConverged(20 * time.Second)
	c.checkAppliedOnce(map[string]uint64{"dc2": writes, "dc3": writes})
	// The lost events are in no stream: applied once everywhere, they came
	// by repair. Repair may bring more than those: a DC that makes no
	// progress for RepairAfter (300ms, a loaded machine's pause) asks the
	// origin for everything it lacks, events still on their way included.
	for dc, lost := range map[string]uint64{"dc2": 3, "dc3": 2} {
		if s := c.stats(dc); s.RepairedEvents < lost || s.Repairs == 0 {
			t.Errorf("%s repaired %d events in %d repairs, want at least the %d lost", dc, s.RepairedEvents, s.Repairs, lost)
		}
	}
}

// TestLostTail deletes the last events of dc1's stream before dc2 reads
// them. No later event reveals the gap, so dc2 finds it by comparing its
// applied vector with the sequences dc1 reports, and repairs it.
func TestLostTail(t *testing.T) {
	c := newCluster(t, "mesh", 2, nil).start()
	// ctx is the test's: each JetStream call has the client's default
	// timeout. A deadline set here would run out during the test's waits
	// when the machine is loaded.
	ctx := t.Context()
	js := c.js(t)
	// dc2 creates its consumer on dc1's stream once started; the check
	// below reads its ack floor.
	cluster.Eventually(t, 10*time.Second, "dc2's consumer on dc1's stream", func() (bool, string) {
		_, err := js.Consumer(ctx, names.Stream("dc1"), names.Consumer("dc2", "dc1"))
		return err == nil, fmt.Sprint(err)
	})
	c.stopRep("dc2")

	const writes = 10
	for i := range writes {
		c.write("dc1", fmt.Sprintf("k%02d", i), fmt.Sprint(i), false)
	}
	cluster.Eventually(t, 10*time.Second, "dc1 publishing", func() (bool, string) {
		d := c.store("dc1").OutboxDepth()
		return d == 0, fmt.Sprintf("%d to publish", d)
	})
	deleteMsgs(t, ctx, js, "dc1", 8, 9, 10)

	c.startRep("dc2")
	c.waitConverged(20 * time.Second)
	c.checkAppliedOnce(map[string]uint64{"dc2": writes})
	// At least the 3 lost, as in TestLostMessages.
	if s := c.stats("dc2"); s.RepairedEvents < 3 {
		t.Errorf("dc2 repaired %d events, want at least the 3 lost", s.RepairedEvents)
	}
}

// deleteMsgs deletes messages from dc's stream, as a server that lost
// unsynced writes would.
func deleteMsgs(t *testing.T, ctx context.Context, js jetstream.JetStream, dc string, seqs ...uint64) {
	t.Helper()
	s, err := js.Stream(ctx, names.Stream(dc))
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range seqs {
		if err := s.DeleteMsg(ctx, seq); err != nil {
			t.Fatalf("delete message %d of %s: %v", seq, names.Stream(dc), err)
		}
	}
}

// TestRestartNATS shuts the NATS server down while every DC writes, has
// every DC write more while it is down, and starts a new server on the same
// store directory and port: nothing is lost and nothing is applied twice.
func TestRestartNATS(t *testing.T) {
	c := newCluster(t, "mesh", 3, nil).start()
	done := make(chan error, 1)
	const keys, rounds, whileDown = 20, 10, 10
	go func() { done <- c.writeAll(c.dcs, keys, rounds) }()
	cluster.Eventually(t, 10*time.Second, "replication under way", func() (bool, string) {
		s := c.stats("dc2")
		return s.Applied+s.Obsolete >= 20, fmt.Sprintf("dc2 applied %d", s.Applied+s.Obsolete)
	})
	c.Server().Stop()
	for _, dc := range c.dcs {
		for i := range whileDown {
			c.write(dc, fmt.Sprintf("down%02d", i), dc, i%2 == 0)
		}
	}
	if err := c.Server().Start(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.waitConverged(30 * time.Second)
	n := uint64(2 * (keys*rounds + whileDown))
	c.checkAppliedOnce(map[string]uint64{"dc1": n, "dc2": n, "dc3": n})
	for _, dc := range c.dcs {
		s := c.stats(dc)
		t.Logf("%s: %d publish errors, %d re-sent duplicates, %d duplicates applied, %d gaps, %d repairs",
			dc, s.PublishErrors, s.PublishDuplicates, s.Duplicates, s.Gaps, s.Repairs)
	}
}

// TestRestartSidecar closes one DC's Replicator and store while the others
// write, and reopens them on the same directory: its outbox resumes, it
// catches up, and no event is applied twice.
func TestRestartSidecar(t *testing.T) {
	c := newCluster(t, "mesh", 3, nil).start()
	done := make(chan error, 1)
	const keys, rounds = 20, 10
	go func() { done <- c.writeAll([]string{"dc1", "dc3"}, keys, rounds) }()

	for i := range 40 {
		c.write("dc2", fmt.Sprintf("k%02d", i%keys), fmt.Sprint("dc2-", i), i%3 == 0)
	}
	cluster.Eventually(t, 10*time.Second, "replication under way", func() (bool, string) {
		s := c.stats("dc2")
		return s.Applied+s.Obsolete >= 20, fmt.Sprintf("dc2 applied %d", s.Applied+s.Obsolete)
	})
	c.stop("dc2")
	c.openStore("dc2")
	c.startRep("dc2")
	for i := 40; i < 80; i++ {
		c.write("dc2", fmt.Sprintf("k%02d", i%keys), fmt.Sprint("dc2-", i), i%3 == 0)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.waitConverged(30 * time.Second)
	c.checkAppliedOnce(map[string]uint64{"dc1": keys*rounds + 80, "dc2": 2 * keys * rounds, "dc3": keys*rounds + 80})
}

// TestRestoreFromBackup restores dc1's data dir from a copy older than its
// stream: it must continue its sequences above what the stream holds, so
// its new writes are neither dropped as duplicates by JetStream nor taken
// for events dc2 already applied; and it must get back dc2's events it had
// applied after the backup, which dc2's outbox no longer holds, from dc2's
// stream.
func TestRestoreFromBackup(t *testing.T) {
	c := newCluster(t, "mesh", 2, nil).start()
	for i := range 10 {
		c.write("dc1", fmt.Sprintf("a%02d", i), "before-backup", false)
	}
	c.waitConverged(10 * time.Second)

	backup := c.backup("dc1")
	for i := range 10 {
		c.write("dc1", fmt.Sprintf("b%02d", i), "lost-by-restore", false)
		c.write("dc2", fmt.Sprintf("d%02d", i), "applied-after-backup", false)
	}
	c.waitConverged(10 * time.Second)
	high := c.store("dc1").Applied()["dc1"]
	// dc2 drops the d-keys from its outbox once dc1 has applied them, so
	// after the restore dc1 can only get them again from dc2's stream.
	cluster.Eventually(t, 10*time.Second, "dc2 trimming its outbox", func() (bool, string) {
		s := c.rep("dc2").Stats()
		return s.Trimmed == s.Published, fmt.Sprintf("trimmed %d of %d", s.Trimmed, s.Published)
	})

	c.stop("dc1")
	c.SetDataDir("dc1", backup)
	c.openStore("dc1")
	restored := c.store("dc1").Applied()["dc1"]
	if fmt.Sprint(restored) == fmt.Sprint(high) {
		t.Fatalf("the backup holds the same sequences %v as the live store", high)
	}
	c.startRep("dc1")
	if got := c.store("dc1").Applied()["dc1"]; fmt.Sprint(got) != fmt.Sprint(high) {
		t.Errorf("after start, dc1's sequences are %v, want %v, the highest its stream holds (the backup had %v)", got, high, restored)
	}
	for i := range 10 {
		key := fmt.Sprintf("c%02d", i)
		res := c.write("dc1", key, "after-restore", false)
		if p := res.Event.Partition; res.Event.Seq <= high[p] {
			t.Errorf("write %s got seq %d in partition %d, reissuing a sequence at or below %d", key, res.Event.Seq, p, high[p])
		}
	}
	// dc1 lost its own writes b00..b09 with the restore; dc2 holds them.
	// A read-modify-write at dc2 covers them, and then both agree.
	for i := range 10 {
		c.write("dc2", fmt.Sprintf("b%02d", i), "overwritten-at-dc2", true)
	}
	c.waitConverged(20 * time.Second)
	if s := c.stats("dc1"); s.Replays == 0 {
		t.Errorf("dc1 recovered dc2's events without replaying dc2's stream: %+v", s)
	}
	for i := range 10 {
		st, ok, err := c.store("dc2").Get(fmt.Sprintf("c%02d", i))
		if err != nil || !ok || len(st.Siblings) != 1 || string(st.Siblings[0].Value) != "after-restore" {
			t.Errorf("dc2 lacks dc1's write c%02d made after the restore: %+v %v %v", i, st, ok, err)
		}
	}
}

// TestStreamFull fills dc1's stream while its only downstream, dc2, is
// down: JetStream rejects further publishes (DiscardNew), the outbox keeps
// the events and the checkpoint stays behind what JetStream stored; once an
// operator raises the limit and dc2 is back, publishing resumes and nothing
// was lost. dc2 is down so that nothing is acknowledged: with dc2 consuming,
// retention trims what it acknowledged as soon as the stream is over 80%
// full, publishing goes on, and whether the stream is ever full is a race
// (TestFullStreamTrimsItself covers that case).
func TestStreamFull(t *testing.T) {
	const limit = 8 << 10
	c := newCluster(t, "mesh", 2, func(o *bridge.Options) {
		o.Stream.MaxBytes = limit
	}).start()
	// ctx is the test's: each JetStream call has the client's default
	// timeout. A deadline set here would run out during the test's waits
	// when the machine is loaded.
	ctx := t.Context()
	js := c.js(t)
	// dc2 creates its consumer on dc1's stream once started; the check
	// below reads its ack floor.
	cluster.Eventually(t, 10*time.Second, "dc2's consumer on dc1's stream", func() (bool, string) {
		_, err := js.Consumer(ctx, names.Stream("dc1"), names.Consumer("dc2", "dc1"))
		return err == nil, fmt.Sprint(err)
	})
	c.stopRep("dc2")

	const writes = 100
	for i := range writes {
		c.write("dc1", fmt.Sprintf("k%02d", i%10), fmt.Sprint(i), false)
	}
	st := c.store("dc1")
	cluster.Eventually(t, 10*time.Second, "a rejected publish", func() (bool, string) {
		s := c.rep("dc1").Stats()
		return s.PublishErrors > 0, fmt.Sprintf("%d published, outbox %d", s.Published, st.OutboxDepth())
	})
	s, err := js.Stream(ctx, names.Stream("dc1"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The stream may have trimmed messages (it does once over 80% full),
	// but only ones dc2's consumer had acknowledged: nothing it still
	// needed was discarded.
	cons, err := s.Consumer(ctx, names.Consumer("dc2", "dc1"))
	if err != nil {
		t.Fatal(err)
	}
	acked := cons.CachedInfo().AckFloor.Stream
	if ckpt := st.Checkpoint(); ckpt > info.State.LastSeq || st.OutboxDepth() == 0 || info.State.FirstSeq > acked+1 {
		t.Fatalf("full stream: checkpoint %d, outbox %d, stream %+v, dc2 acked up to %d; want the checkpoint at most the %d messages ever stored, events waiting, and nothing gone that dc2 had not acknowledged",
			ckpt, st.OutboxDepth(), info.State, acked, info.State.LastSeq)
	}

	cfg := info.Config
	cfg.MaxBytes = 1 << 20
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	c.startRep("dc2")
	c.waitConverged(20 * time.Second)
	c.checkAppliedOnce(map[string]uint64{"dc2": writes})
}
