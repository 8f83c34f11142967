package bridge_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// mkEvent builds a well-formed put event.
func mkEvent(origin string, seq uint64, key string, value []byte, path ...string) *event.Event {
	if len(path) == 0 {
		path = []string{origin}
	}
	return &event.Event{
		Version:   event.SchemaVersion,
		Origin:    origin,
		Partition: event.PartitionOf(key, partitions),
		Seq:       seq,
		Key:       key,
		Op:        event.OpPut,
		Value:     value,
		Dot:       vclock.Dot{DC: origin, N: seq},
		Context:   vclock.VV{},
		HLC:       1,
		Path:      path,
	}
}

func encode(t *testing.T, ev *event.Event) []byte {
	t.Helper()
	b, err := ev.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPoison publishes bad messages straight onto dc1's stream, between
// good events: each lands in the dead-letter stream of every DC that
// consumes dc1, with a reason, is counted, and the good events behind it
// still apply.
func TestPoison(t *testing.T) {
	c := newCluster(t, "mesh", 3, func(o *bridge.Options) {
		o.Limits = event.Limits{MaxEventBytes: 64 << 10}
	}).start()
	js := c.js(t)
	// ctx is the test's: each JetStream call has the client's default
	// timeout. A deadline set here would run out during the test's waits
	// when the machine is loaded.
	ctx := t.Context()

	for i := range 10 {
		c.write("dc1", "before", string(rune('a'+i)), false)
	}

	// Schema 2 is a transaction; 3 is a version no build reads yet.
	version2 := encode(t, mkEvent("dc1", 1_000_002, "v2", []byte("x")))
	i := bytes.Index(version2, []byte{0xa1, 'v', 0x01}) // "v": 1, the first field
	if i < 0 {
		t.Fatal("cannot find the version field to patch")
	}
	version2[i+2] = 0x03
	mismatch := event.ToHeaders(mkEvent("dc1", 1_000_003, "hdr", []byte("x")))
	mismatch[event.HeaderKey] = []string{"not-the-key"}

	poison := []struct {
		name   string
		ev     *event.Event // headers and, unless data is set, payload
		data   []byte
		header map[string][]string
		reason string
	}{
		{name: "malformed", data: []byte("\xc1 this is not msgpack"), reason: "malformed"},
		{name: "oversize", ev: mkEvent("dc1", 1_000_000, "big", bytes.Repeat([]byte("x"), 100<<10)), reason: "too large"},
		{name: "forged", ev: mkEvent("dc3", 1, "forged", []byte("x")), reason: "forged"},
		{name: "unknown DC", ev: mkEvent("dc9", 1, "stranger", []byte("x"), "dc9", "dc1"), reason: `origin "dc9" is not a known DC`},
		{name: "counter 2^63", ev: mkEvent("dc1", 1<<63, "absurd", []byte("x")), reason: "absurd"},
		{name: "schema v3", ev: mkEvent("dc1", 1_000_002, "v2", []byte("x")), data: version2, reason: "unknown schema version"},
		{name: "header mismatch", ev: mkEvent("dc1", 1_000_003, "hdr", []byte("x")), header: mismatch, reason: "headers do not match"},
	}
	for _, p := range poison {
		m := &nats.Msg{Subject: names.Subject("dc1", 0), Data: p.data, Header: nats.Header{}}
		if p.ev != nil {
			m.Subject = names.Subject("dc1", p.ev.Partition)
			m.Header = nats.Header(event.ToHeaders(p.ev))
			if m.Data == nil {
				m.Data = encode(t, p.ev)
			}
		}
		if p.header != nil {
			m.Header = nats.Header(p.header)
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("publish %s: %v", p.name, err)
		}
	}

	perDC := c.writeConcurrently(c.dcs, 10, 3)
	c.waitConverged(30 * time.Second)
	c.checkAppliedOnce(map[string]uint64{"dc1": uint64(2 * perDC), "dc2": uint64(10 + 2*perDC), "dc3": uint64(10 + 2*perDC)})

	for _, dc := range []string{"dc2", "dc3"} {
		if got := c.stats(dc).DeadLetters; got != uint64(len(poison)) {
			t.Errorf("%s dead-lettered %d messages, want %d", dc, got, len(poison))
		}
		reasons := dlqReasons(t, ctx, js, dc)
		t.Logf("%s dead letters:\n%s", dc, strings.Join(reasons, "\n"))
		for _, p := range poison {
			found := false
			for _, r := range reasons {
				found = found || strings.Contains(r, p.reason)
			}
			if !found {
				t.Errorf("%s: no dead letter for %s with a reason containing %q; reasons:\n%s", dc, p.name, p.reason, strings.Join(reasons, "\n"))
			}
		}
	}
	if got := c.stats("dc1").DeadLetters; got != 0 {
		t.Errorf("dc1 dead-lettered %d messages; it consumes nothing poisoned", got)
	}
}

// dlqReasons returns the reason header of every message in dc's
// dead-letter stream, checking the other dead-letter headers on the way.
func dlqReasons(t *testing.T, ctx context.Context, js jetstream.JetStream, dc string) []string {
	t.Helper()
	s, err := js.Stream(ctx, names.DLQStream(dc))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("%s dead letter %d: %v", dc, seq, err)
		}
		if up := m.Header.Get(bridge.HeaderDLQUpstream); up != "dc1" {
			t.Errorf("%s dead letter %d: upstream %q, want dc1", dc, seq, up)
		}
		if m.Header.Get(bridge.HeaderDLQStreamSeq) == "" || !strings.HasPrefix(m.Header.Get(bridge.HeaderDLQSubject), "repl.dc1.") {
			t.Errorf("%s dead letter %d lacks its origin headers: %v", dc, seq, m.Header)
		}
		out = append(out, m.Header.Get(bridge.HeaderDLQReason))
	}
	return out
}
