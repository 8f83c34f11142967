package security_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/antientropy"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// TestLeastPrivilege runs a three-DC mesh on configs/nats-permissions.conf,
// each sidecar as its own user, and proves that the permissions are
// enough (concurrent writes converge; a replay, a repair request, the NATS
// API, the external resolver's subject, an anti-entropy run and a restore
// from a backup all work; not one permissions violation is logged) and no
// more than enough (dc1's credentials are refused every action on dc2's
// and dc3's subjects, streams and consumers, checked both by the server's
// permissions violation and by the state that did not change).
func TestLeastPrivilege(t *testing.T) {
	s := startServer(t)
	url := s.URL()
	m := newMesh(t, url)
	m.startAll()
	writes := m.writeConcurrently(150, 30)
	m.waitConverged(30 * time.Second)
	t.Logf("%d concurrent writes from 3 DCs, each DC as its own least-privilege user", writes)

	admin := dial(t, url, "admin")

	t.Run("dc1 may", func(t *testing.T) { allowed(t, m, admin) })
	// dc1's sidecar creates the consumer it lost again and reads dc2's
	// stream from the start (the replay).
	replayed := func() (bool, string) {
		cons, err := admin.js.Consumer(longCtx(t), names.Stream("dc2"), names.Consumer("dc1", "dc2"))
		if err != nil {
			return false, fmt.Sprintf("%v; logged: %v", err, m.log.all())
		}
		floor, last := cons.CachedInfo().AckFloor.Stream, admin.lastSeq(t, names.Stream("dc2"))
		return floor == last, fmt.Sprintf("ack floor %d of %d; logged: %v", floor, last, m.log.all())
	}
	cluster.EventuallyEvery(t, 20*time.Second, 50*time.Millisecond, "dc1's consumer on REPL_dc2 created again and reading the stream to its end", replayed)
	m.waitConverged(30 * time.Second) // after the replay and the API write

	t.Run("dc1 may not", func(t *testing.T) { denied(t, url, admin) })
	t.Run("app and resolver may not", func(t *testing.T) { appDenied(t, url, admin) })

	// A restore from an old copy of dc1's data dir: at start dc1 reads the
	// last message of each partition and takes its later own writes back
	// from its stream through an ordered consumer.
	m.stop("dc1")
	backup := filepath.Join(t.TempDir(), "backup")
	copyDir(t, m.DataDir("dc1"), backup)
	m.startAll("dc1")
	for i := range 20 {
		if _, err := m.Node("dc1").Write(longCtx(t), changelog.WriteOp{Key: fmt.Sprintf("user/after-backup-%d", i), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	m.waitConverged(30 * time.Second)
	m.stop("dc1")
	m.SetDataDir("dc1", backup)
	m.startAll("dc1")
	m.waitConverged(30 * time.Second)
	if !m.log.contains("the stream holds own events the store lacks") {
		t.Errorf("dc1 restored from a backup did not take its own events back from its stream; logged: %v", m.log.all())
	}

	if v := m.log.violations(); len(v) > 0 {
		t.Fatalf("the sidecars hit %d permissions violations, so configs/nats-permissions.conf is missing a grant:\n%s",
			len(v), strings.Join(v, "\n"))
	}
}

// allowed makes, as dc1, each JetStream and core NATS call the sidecar
// needs that a short test run may not reach (trimming, replay, repair),
// calls dc1's NATS API as app_dc1 and the resolver's subject as dc1, and
// starts an anti-entropy run at dc1 as `replicator repair` does.
func allowed(t *testing.T, m *mesh, admin *client) {
	c := dial(t, m.url, "dc1")
	ctx := longCtx(t)

	own, err := c.js.Stream(ctx, names.Stream("dc1"))
	if err != nil {
		t.Fatalf("look up its own stream: %v", err)
	}
	if _, err := c.js.Stream(ctx, names.DLQStream("dc1")); err != nil {
		t.Fatalf("look up its own dead-letter stream: %v", err)
	}
	// Trimming: the last message of a partition, the downstreams' ack
	// floors, a purge of a subject below a sequence (1: nothing).
	before := admin.msgs(t, names.Stream("dc1"))
	found := false
	for p := range uint32(8) {
		subj := names.Subject("dc1", p)
		_, err := own.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("last message on %s: %v", subj, err)
		}
		found = true
		if err := own.Purge(ctx, jetstream.WithPurgeSubject(subj), jetstream.WithPurgeSequence(1)); err != nil {
			t.Fatalf("purge %s below sequence 1: %v", subj, err)
		}
	}
	if !found {
		t.Fatal("no partition of REPL_dc1 holds a message after the writes")
	}
	if after := admin.msgs(t, names.Stream("dc1")); after != before {
		t.Fatalf("a purge below sequence 1 removed messages: %d -> %d", before, after)
	}
	for _, down := range []string{"dc2", "dc3"} {
		if _, err := own.Consumer(ctx, names.Consumer(down, "dc1")); err != nil {
			t.Fatalf("read %s's consumer on its own stream: %v", down, err)
		}
	}
	// Restore: an ordered consumer on its own stream.
	oc, err := own.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{names.Subject("dc1", 0), names.Subject("dc1", 1)}})
	if err != nil {
		t.Fatalf("ordered consumer on its own stream: %v", err)
	}
	if b, err := oc.Fetch(1, jetstream.FetchMaxWait(2*time.Second)); err != nil {
		t.Fatalf("fetch from the ordered consumer: %v", err)
	} else {
		for range b.Messages() {
		}
		if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("fetch from the ordered consumer: %v", err)
		}
	}
	// Lag, and replay: deleting its own consumer on an upstream (the
	// running sidecar creates it again and reads dc2's stream from the
	// start; convergence afterwards shows it).
	if _, err := c.js.Consumer(ctx, names.Stream("dc2"), names.Consumer("dc1", "dc2")); err != nil {
		t.Fatalf("read its consumer on dc2's stream: %v", err)
	}
	if err := c.js.DeleteConsumer(ctx, names.Stream("dc2"), names.Consumer("dc1", "dc2")); err != nil {
		t.Fatalf("delete its consumer on dc2's stream (replay): %v", err)
	}
	// Repair: ask dc2 for its first event of a partition it wrote in. Once
	// every DC has applied them dc2 has trimmed them from its outbox and
	// answers with none; either way an answer shows that dc1 may ask and
	// dc2 may answer (allow_responses).
	applied := m.Node("dc2").Store().Applied()["dc2"]
	p := -1
	for i, seq := range applied {
		if seq > 0 {
			p = i
			break
		}
	}
	if p < 0 {
		t.Fatal("dc2 wrote nothing")
	}
	req, _ := msgpack.Marshal(bridge.RepairRequest{Partition: uint32(p), From: 1, To: 1})
	reply, err := c.nc.RequestWithContext(ctx, names.RepairSubject("dc2"), req)
	if err != nil {
		t.Fatalf("repair request to dc2: %v", err)
	}
	if e := reply.Header.Get(bridge.HeaderRepairError); e != "" {
		t.Fatalf("dc2 refused the repair request: %s", e)
	}
	var raw [][]byte
	if err := msgpack.Unmarshal(reply.Data, &raw); err != nil || len(raw) > 1 {
		t.Fatalf("repair reply from dc2: %d events, err %v; want at most 1", len(raw), err)
	}
	for _, b := range raw {
		if ev, err := event.Decode(b, event.Limits{}); err != nil || ev.Origin != "dc2" || ev.Seq != 1 {
			t.Fatalf("repair reply from dc2: %v, err %v; want dc2's event 1", ev, err)
		}
	}
	c.noViolation(t)

	// The application's user calls dc1's NATS API; the sidecar answers
	// through allow_responses.
	app := dial(t, m.url, "app_dc1")
	body, _ := json.Marshal(map[string]string{"key": "user/from-app", "value_text": "hello"})
	reply, err = app.nc.RequestWithContext(ctx, names.APISubject("dc1", "put"), body)
	if err != nil {
		t.Fatalf("app_dc1: put through dc1's NATS API: %v", err)
	}
	if code := reply.Header.Get("Nats-Service-Error-Code"); code != "" {
		t.Fatalf("app_dc1: put refused: %s %s", code, reply.Header.Get("Nats-Service-Error"))
	}
	app.noViolation(t)

	// The external resolver's service answers the arbiter (dc1).
	res := dial(t, m.url, "resolver")
	sub, err := res.nc.Subscribe("app.resolve.profile", func(msg *nats.Msg) { msg.Respond([]byte(`{"value_text":"merged"}`)) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := res.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	reply, err = c.nc.RequestWithContext(ctx, "app.resolve.profile", []byte(`{"key":"profile/1"}`))
	if err != nil || !bytes.Contains(reply.Data, []byte("merged")) {
		t.Fatalf("dc1 asking the resolver service: reply %v, err %v", reply, err)
	}
	res.noViolation(t)

	// Anti-entropy: `replicator repair` with dc1's config (dc1's user)
	// asks dc1 to run against every peer; dc1 asks dc2 and dc3, and they
	// answer.
	run, err := antientropy.RequestRun(ctx, c.nc, "dc1")
	if err != nil {
		t.Fatalf("anti-entropy run at dc1: %v", err)
	}
	if len(run.Reports) != 2 {
		t.Fatalf("anti-entropy run at dc1: %d reports, want one per peer: %+v", len(run.Reports), run)
	}
	for _, r := range run.Reports {
		if r.Error != "" || r.Requests == 0 {
			t.Fatalf("anti-entropy run at dc1: %+v", r)
		}
	}
	c.noViolation(t)
}

// denied tries, as dc1, everything a DC's credentials must not allow, each
// on its own connection so that the violation it expects is its own.
func denied(t *testing.T, url string, admin *client) {
	dc2Stream, dc2DLQ := names.Stream("dc2"), names.DLQStream("dc2")

	t.Run("publish into dc2's stream", func(t *testing.T) {
		c := dial(t, url, "dc1")
		before := admin.msgs(t, dc2Stream)
		subj := names.Subject("dc2", 0)
		msg := &nats.Msg{Subject: subj, Header: nats.Header{jetstream.MsgIDHeader: {"dc2:0:999999"}}, Data: []byte("forged")}
		c.refused(t, subj, func(ctx context.Context) error { _, err := c.js.PublishMsg(ctx, msg); return err })
		if after := admin.msgs(t, dc2Stream); after != before {
			t.Fatalf("%s went from %d to %d messages", dc2Stream, before, after)
		}
	})
	t.Run("publish dc2's dead letters", func(t *testing.T) {
		c := dial(t, url, "dc1")
		before := admin.msgs(t, dc2DLQ)
		subj := names.DLQSubject("dc2")
		if err := c.nc.Publish(subj, []byte("forged")); err != nil {
			t.Fatal(err)
		}
		c.violation(t, "Publish", subj)
		if after := admin.msgs(t, dc2DLQ); after != before {
			t.Fatalf("%s went from %d to %d messages", dc2DLQ, before, after)
		}
	})
	t.Run("publish dc2's applied vector", func(t *testing.T) {
		c := dial(t, url, "dc1")
		subj := names.AppliedSubject("dc2")
		got := make(chan struct{}, 1)
		sub, err := admin.nc.Subscribe(subj, func(m *nats.Msg) {
			if string(m.Data) == "forged-applied-vector" {
				got <- struct{}{}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := admin.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := c.nc.Publish(subj, []byte("forged-applied-vector")); err != nil {
			t.Fatal(err)
		}
		c.violation(t, "Publish", subj)
		select {
		case <-got:
			t.Fatalf("dc1's publish on %s reached a subscriber", subj)
		case <-time.After(200 * time.Millisecond):
		}
	})
	t.Run("call dc2's NATS API", func(t *testing.T) {
		c := dial(t, url, "dc1")
		subj := names.APISubject("dc2", "put")
		c.refused(t, subj, request(c, subj, `{"key":"user/x","value_text":"forged"}`))
	})
	for _, stream := range []string{dc2Stream, names.Stream("dc1")} {
		t.Run("delete stream "+stream, func(t *testing.T) {
			c := dial(t, url, "dc1")
			c.refused(t, "$JS.API.STREAM.DELETE."+stream, func(ctx context.Context) error { return c.js.DeleteStream(ctx, stream) })
			if _, err := admin.js.Stream(longCtx(t), stream); err != nil {
				t.Fatalf("%s after dc1's delete: %v", stream, err)
			}
		})
	}
	t.Run("purge dc2's stream", func(t *testing.T) {
		c := dial(t, url, "dc1")
		before := admin.msgs(t, dc2Stream)
		subj := "$JS.API.STREAM.PURGE." + dc2Stream
		c.refused(t, subj, request(c, subj, `{}`))
		// The jetstream client cannot even look the stream up.
		c.refused(t, "$JS.API.STREAM.INFO."+dc2Stream, func(ctx context.Context) error { _, err := c.js.Stream(ctx, dc2Stream); return err })
		if after := admin.msgs(t, dc2Stream); after != before || after == 0 {
			t.Fatalf("%s went from %d to %d messages", dc2Stream, before, after)
		}
	})
	t.Run("delete a message of dc2's stream", func(t *testing.T) {
		c := dial(t, url, "dc1")
		before := admin.msgs(t, dc2Stream)
		subj := "$JS.API.STREAM.MSG.DELETE." + dc2Stream
		c.refused(t, subj, request(c, subj, `{"seq":1}`))
		if after := admin.msgs(t, dc2Stream); after != before {
			t.Fatalf("%s went from %d to %d messages", dc2Stream, before, after)
		}
	})
	t.Run("update its own stream", func(t *testing.T) {
		c := dial(t, url, "dc1")
		stream := names.Stream("dc1")
		cfg := bridge.StreamConfig("dc1", 8, bridge.StreamOptions{})
		cfg.MaxAge = time.Second // would expire events before downstreams read them
		c.refused(t, "$JS.API.STREAM.UPDATE."+stream, func(ctx context.Context) error { _, err := c.js.UpdateStream(ctx, cfg); return err })
		s, err := admin.js.Stream(longCtx(t), stream)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.MaxAge; got != 0 {
			t.Fatalf("%s's max age is %s after dc1's refused update", stream, got)
		}
	})
	t.Run("create a stream", func(t *testing.T) {
		c := dial(t, url, "dc1")
		cfg := jetstream.StreamConfig{Name: "SPY", Subjects: []string{"repl.applied.>"}, Storage: jetstream.MemoryStorage}
		c.refused(t, "$JS.API.STREAM.CREATE.SPY", func(ctx context.Context) error { _, err := c.js.CreateStream(ctx, cfg); return err })
		if _, err := admin.js.Stream(longCtx(t), "SPY"); !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Fatalf("stream SPY after dc1's refused create: %v", err)
		}
	})
	for _, name := range []string{names.Consumer("dc3", "dc2"), "spy"} {
		t.Run("create consumer "+name+" on dc2's stream", func(t *testing.T) {
			c := dial(t, url, "dc1")
			cfg := jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverNewPolicy}
			c.refused(t, "$JS.API.CONSUMER.CREATE."+dc2Stream+"."+name, func(ctx context.Context) error {
				_, err := c.js.CreateOrUpdateConsumer(ctx, dc2Stream, cfg)
				return err
			})
			cons, err := admin.js.Consumer(longCtx(t), dc2Stream, name)
			switch {
			case name == "spy" && !errors.Is(err, jetstream.ErrConsumerNotFound):
				t.Fatalf("consumer spy after dc1's refused create: %v", err)
			case name != "spy" && err != nil:
				t.Fatalf("consumer %s after dc1's refused update: %v", name, err)
			case name != "spy" && cons.CachedInfo().Config.DeliverPolicy != jetstream.DeliverAllPolicy:
				t.Fatalf("consumer %s's deliver policy became %v", name, cons.CachedInfo().Config.DeliverPolicy)
			}
		})
	}
	// Another DC's consumer on an upstream, and a downstream's consumer on
	// dc1's own stream (the deny list).
	for _, sc := range [][2]string{{dc2Stream, names.Consumer("dc3", "dc2")}, {names.Stream("dc1"), names.Consumer("dc2", "dc1")}} {
		stream, name := sc[0], sc[1]
		t.Run("delete consumer "+name, func(t *testing.T) {
			c := dial(t, url, "dc1")
			c.refused(t, "$JS.API.CONSUMER.DELETE."+stream+"."+name, func(ctx context.Context) error { return c.js.DeleteConsumer(ctx, stream, name) })
			if _, err := admin.js.Consumer(longCtx(t), stream, name); err != nil {
				t.Fatalf("consumer %s on %s after dc1's refused delete: %v", name, stream, err)
			}
		})
		t.Run("recreate consumer "+name, func(t *testing.T) {
			c := dial(t, url, "dc1")
			cfg := jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckExplicitPolicy}
			c.refused(t, "$JS.API.CONSUMER.CREATE."+stream+"."+name, func(ctx context.Context) error {
				_, err := c.js.CreateOrUpdateConsumer(ctx, stream, cfg)
				return err
			})
			// With one filter subject the subject names it as well.
			filter := "repl." + strings.TrimPrefix(stream, "REPL_") + ".0"
			cfg.FilterSubject = filter
			c.refused(t, "$JS.API.CONSUMER.CREATE."+stream+"."+name+"."+filter, func(ctx context.Context) error {
				_, err := c.js.CreateOrUpdateConsumer(ctx, stream, cfg)
				return err
			})
			cons, err := admin.js.Consumer(longCtx(t), stream, name)
			if err != nil {
				t.Fatalf("consumer %s on %s after dc1's refused update: %v", name, stream, err)
			}
			if f := cons.CachedInfo().Config.FilterSubject; f != "" {
				t.Fatalf("consumer %s on %s has filter %q after dc1's refused update", name, stream, f)
			}
		})
		t.Run("pull from consumer "+name, func(t *testing.T) {
			c := dial(t, url, "dc1")
			before := admin.consumerDelivered(t, stream, name)
			subj := "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + name
			c.refused(t, subj, request(c, subj, `{"batch":1,"no_wait":true}`))
			if after := admin.consumerDelivered(t, stream, name); after != before {
				t.Fatalf("consumer %s on %s delivered %d messages, then %d after dc1's refused pull", name, stream, before, after)
			}
		})
	}
	t.Run("ack for dc3's consumer", func(t *testing.T) {
		c := dial(t, url, "dc1")
		subj := "$JS.ACK." + dc2Stream + "." + names.Consumer("dc3", "dc2") + ".1.1.1.0.0"
		if err := c.nc.Publish(subj, []byte("+ACK")); err != nil {
			t.Fatal(err)
		}
		c.violation(t, "Publish", subj)
	})
	t.Run("run dc2's anti-entropy", func(t *testing.T) {
		c := dial(t, url, "dc1")
		subj := names.AntiEntropyRunSubject("dc2")
		c.refused(t, subj, request(c, subj, ""))
	})
	for _, sc := range [][2]string{
		{names.RepairSubject("dc2"), ""}, {names.APISubject("dc2", "put"), "q"}, {names.AntiEntropySubject("dc2"), ""},
		{names.AntiEntropyRunSubject("dc2"), ""}, {names.SnapshotSubject("dc2"), ""}, {names.HomeSubject("dc2"), ""},
		{"repl.dc2.>", ""}, {"repl.>", ""},
	} {
		subj, queue := sc[0], sc[1]
		t.Run("subscribe "+subj, func(t *testing.T) {
			c := dial(t, url, "dc1")
			if _, err := c.nc.QueueSubscribe(subj, queue, func(*nats.Msg) {}); err != nil {
				t.Fatal(err)
			}
			c.violation(t, "Subscription", subj)
		})
	}
}

// appDenied checks the application's and the resolver service's users.
func appDenied(t *testing.T, url string, admin *client) {
	t.Run("app_dc1 publishes an event", func(t *testing.T) {
		c := dial(t, url, "app_dc1")
		before := admin.msgs(t, names.Stream("dc1"))
		subj := names.Subject("dc1", 0)
		if err := c.nc.Publish(subj, []byte("forged")); err != nil {
			t.Fatal(err)
		}
		c.violation(t, "Publish", subj)
		if after := admin.msgs(t, names.Stream("dc1")); after != before {
			t.Fatalf("REPL_dc1 went from %d to %d messages", before, after)
		}
	})
	t.Run("app_dc1 calls dc2's API", func(t *testing.T) {
		c := dial(t, url, "app_dc1")
		subj := names.APISubject("dc2", "get")
		c.refused(t, subj, request(c, subj, `{"key":"user/1"}`))
	})
	t.Run("resolver publishes", func(t *testing.T) {
		c := dial(t, url, "resolver")
		for _, subj := range []string{names.Subject("dc1", 0), names.APISubject("dc1", "put")} {
			if err := c.nc.Publish(subj, []byte("forged")); err != nil {
				t.Fatal(err)
			}
			c.violation(t, "Publish", subj)
		}
	})
}

// request returns a call that sends body to subj as c and waits for an
// answer.
func request(c *client, subj, body string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := c.nc.RequestWithContext(ctx, subj, []byte(body))
		return err
	}
}

// msgs returns the message count of stream, read as the admin user.
func (c *client) msgs(t *testing.T, stream string) uint64 {
	t.Helper()
	s, err := c.js.Stream(longCtx(t), stream)
	if err != nil {
		t.Fatalf("admin: look up %s: %v", stream, err)
	}
	return s.CachedInfo().State.Msgs
}

// lastSeq returns the last sequence of stream, read as the admin user.
func (c *client) lastSeq(t *testing.T, stream string) uint64 {
	t.Helper()
	s, err := c.js.Stream(longCtx(t), stream)
	if err != nil {
		t.Fatalf("admin: look up %s: %v", stream, err)
	}
	return s.CachedInfo().State.LastSeq
}

// consumerDelivered returns how far consumer name on stream has delivered,
// read as the admin user.
func (c *client) consumerDelivered(t *testing.T, stream, name string) uint64 {
	t.Helper()
	cons, err := c.js.Consumer(longCtx(t), stream, name)
	if err != nil {
		t.Fatalf("admin: consumer %s on %s: %v", name, stream, err)
	}
	return cons.CachedInfo().Delivered.Stream
}
