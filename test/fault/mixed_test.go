package fault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// TestMixedVersions (docs/DESIGN.md "The change event (schema v1)": unknown
// fields pass through; figures in docs/RELIABILITY.md, "Mixed versions")
// runs a ring of 4, dc1 → dc2 → dc3 → dc4 → dc1, in which dc1 is a newer
// version: the test plays it, and publishes onto repl.dc1.<p> events that
// carry fields this build does not know (a string, a nested map with an
// array and bytes, an integer), spliced into the msgpack map after the known
// fields. dc2, dc3 and dc4 run this build. Each must apply the events, and
// dc2 and dc3 must forward them with the unknown fields intact, byte for
// byte, in order: the events in REPL_dc2 and REPL_dc3 decode to the same
// unknown fields (as MarshalJSON shows them) and hold the same raw bytes.
// dc4 must not forward them back to their origin, and nothing may be
// dead-lettered. The long form sends more events, through every partition.
func TestMixedVersions(t *testing.T) {
	begin := time.Now()
	seed := testSeed(t)
	dcs := []string{"dc1", "dc2", "dc3", "dc4"}
	c := newCluster(t, clusterOptions{dcs: dcs, topology: config.Ring, mode: inProcess, noStart: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nc, js := c.js()
	// dc1's stream, as dc1 would make it.
	if err := bridge.EnsureStream(ctx, js, "dc1", c.opts.partitions, bridge.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	real := c.members[1:]
	for _, m := range real {
		m.start()
	}
	for _, m := range real {
		m.waitHealthy(30 * time.Second)
	}

	// The newer DC's events: puts to siblings and lww keys, a second put
	// whose context covers the first, and a delete.
	future := unknownFields(t)
	n := pick(12, 400)
	seqs := make([]uint64, c.opts.partitions)
	clock := hlc.New(time.Now, time.Minute)
	var sent []*sentEvent
	publish := func(key string, op event.Op, value string, vctx vclock.VV) *sentEvent {
		p := event.PartitionOf(key, c.opts.partitions)
		seqs[p]++
		ev := &event.Event{
			Version: event.SchemaVersion, Origin: "dc1", Partition: p, Seq: seqs[p], Key: key, Op: op,
			Value: []byte(value), Dot: vclock.Dot{DC: "dc1", N: seqs[p]}, Context: vctx, HLC: clock.Now(), Path: []string{"dc1"},
		}
		if op == event.OpDelete {
			ev.Value = nil
		}
		data, tailLen := spliceFields(t, ev, future)
		dec, err := event.Decode(data, event.Limits{})
		if err != nil {
			t.Fatalf("this build does not decode the newer event: %v", err)
		}
		h := nats.Header(event.ToHeaders(ev))
		h.Set(bridge.HeaderSeqHi, fmt.Sprint(seqs[p]))
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: names.Subject("dc1", p), Header: h, Data: data}, jetstream.WithExpectStream(names.Stream("dc1"))); err != nil {
			t.Fatal(err)
		}
		s := &sentEvent{ev: ev, data: data, unknown: unknownJSON(t, dec), tailLen: tailLen}
		sent = append(sent, s)
		return s
	}
	for i := range n {
		key := fmt.Sprintf("mixed/k%03d", i)
		if i%2 == 1 {
			key = fmt.Sprintf("%smixed%03d", lwwPrefix, i)
		}
		first := publish(key, event.OpPut, fmt.Sprintf("v1-%d", i), nil)
		switch i % 3 {
		case 1:
			publish(key, event.OpPut, fmt.Sprintf("v2-%d", i), vclock.VV{"dc1": first.ev.Seq})
		case 2:
			publish(key, event.OpDelete, "", vclock.VV{"dc1": first.ev.Seq})
		}
	}
	var fields []any
	if err := json.Unmarshal([]byte(sent[0].unknown), &fields); err != nil || len(fields) != len(future) {
		t.Fatalf("the newer event decodes with unknown fields %s, want %d of them", sent[0].unknown, len(future))
	}
	t.Logf("published %d events of the newer dc1 with unknown fields %s", len(sent), sent[0].unknown)

	// Every DC of this build applies them.
	final := map[string]*sentEvent{} // key -> the event that decides it
	for _, s := range sent {
		final[s.ev.Key] = s
	}
	converge := time.Now()
	err := repl.WaitFor(time.Minute, 20*time.Millisecond, func() bool {
		for _, m := range real {
			for key, s := range final {
				v, status, err := c.get(m, key)
				if err != nil {
					return false
				}
				if s.ev.Op == event.OpDelete {
					if status != 404 {
						return false
					}
				} else if !slices.Contains(v.LiveValues(), string(s.ev.Value)) {
					return false
				}
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("dc2, dc3 and dc4 did not all apply the newer DC's events: %v", err)
	}
	took := time.Since(converge)

	// dc2 and dc3 forwarded them intact; dc4 did not forward them.
	byID := map[string]*sentEvent{} // by message id: dots are per partition
	for _, s := range sent {
		byID[event.MsgID(s.ev.Origin, s.ev.Partition, s.ev.Seq)] = s
	}
	checked := 0
	for i, dc := range []string{"dc2", "dc3", "dc4"} {
		got := map[string]bool{}
		for _, m := range c.readStream(dc, "") {
			if m.ev.Origin != "dc1" {
				continue
			}
			if dc == "dc4" {
				t.Errorf("dc4 forwarded %s of dc1 into REPL_dc4 although dc1, the next DC of the ring, is its origin", m.ev.Dot)
				continue
			}
			id := event.MsgID(m.ev.Origin, m.ev.Partition, m.ev.Seq)
			s := byID[id]
			if s == nil {
				t.Errorf("REPL_%s holds %s of dc1, which dc1 never sent", dc, id)
				continue
			}
			got[id] = true
			checked++
			wantPath := dcs[:i+2]
			if !slices.Equal(m.ev.Path, wantPath) {
				t.Errorf("REPL_%s: %s has path %v, want %v", dc, id, m.ev.Path, wantPath)
			}
			if u := unknownJSON(t, m.ev); u != s.unknown {
				t.Errorf("REPL_%s: %s arrived with unknown fields %s, want %s", dc, id, u, s.unknown)
			}
			if !bytes.HasSuffix(m.data, s.tail()) {
				t.Errorf("REPL_%s: %s does not end with the newer fields' raw bytes %x: %x", dc, id, s.tail(), m.data)
			}
			if m.ev.Key != s.ev.Key || !bytes.Equal(m.ev.Value, s.ev.Value) || m.ev.HLC != s.ev.HLC || !m.ev.Context.Equal(s.ev.Context) || m.ev.Op != s.ev.Op {
				t.Errorf("REPL_%s: %s changed on the way: %+v, sent %+v", dc, id, m.ev, s.ev)
			}
		}
		if dc != "dc4" && len(got) != len(sent) {
			t.Errorf("REPL_%s holds %d of the %d events dc1 sent", dc, len(got), len(sent))
		}
	}
	// Nothing was dead-lettered, and dc4 took everything dc3 forwarded.
	for _, m := range real {
		st := m.node().Replicator().Stats()
		if st.DeadLetters != 0 {
			t.Errorf("%s dead-lettered %d messages", m.name, st.DeadLetters)
		}
	}
	cons, err := js.Consumer(ctx, names.Stream("dc3"), names.Consumer("dc4", "dc3"))
	if err != nil {
		t.Fatal(err)
	}
	// dc4 acks what it applied asynchronously: wait for the acks, then
	// require none pending.
	var info *jetstream.ConsumerInfo
	_ = repl.WaitFor(10*time.Second, 20*time.Millisecond, func() bool {
		info, err = cons.Info(ctx)
		return err == nil && info.NumPending+uint64(info.NumAckPending) == 0
	})
	if err != nil || info.NumPending+uint64(info.NumAckPending) != 0 {
		t.Errorf("dc4 has not taken everything dc3 forwarded: %+v %v", info, err)
	}
	nc.Close()
	c.checkLogs()
	report(t, figures{
		Seed:       seed,
		Faults:     fmt.Sprintf("ring of 4 where dc1 is a newer version: %d events with %d unknown fields (%s)", len(sent), len(future), strings.Join(fieldNames(future), ", ")),
		Operations: int64(len(sent)),
		Acked:      int64(len(sent)),
		Converge:   round(took),
		Extra:      map[string]any{"forwarded_copies_checked": checked},
	}, begin)
}

// sentEvent is an event the newer dc1 published.
type sentEvent struct {
	ev      *event.Event
	data    []byte
	unknown string // its unknown fields as MarshalJSON shows them
	tailLen int
}

// tail is the raw bytes of the unknown fields at the end of the event.
func (s *sentEvent) tail() []byte { return s.data[len(s.data)-s.tailLen:] }

// field is a field a newer schema added.
type field struct {
	name  string
	value any
}

func unknownFields(t *testing.T) []field {
	return []field{
		{"trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"meta", map[string]any{"region": "eu-west", "hops": []any{1, 2, 3}, "sig": []byte{0xde, 0xad, 0xbe, 0xef}}},
		{"ttl_ms", uint64(86_400_000)},
	}
}

func fieldNames(fs []field) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.name)
	}
	return out
}

// spliceFields encodes ev and adds fields to its msgpack map: the map
// header's count goes up and the fields follow the known ones, as a newer
// build would write them. It returns the event and the length of the
// added bytes.
func spliceFields(t *testing.T, ev *event.Event, fields []field) ([]byte, int) {
	t.Helper()
	b, err := ev.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if b[0]&0xf0 != 0x80 || int(b[0]&0x0f)+len(fields) > 15 {
		t.Fatalf("the event's map header is %#x; the splice handles a fixmap with room for %d fields", b[0], len(fields))
	}
	b[0] += byte(len(fields))
	var tail bytes.Buffer
	enc := msgpack.NewEncoder(&tail)
	enc.SetSortMapKeys(true)
	for _, f := range fields {
		if err := enc.EncodeString(f.name); err != nil {
			t.Fatal(err)
		}
		if err := enc.Encode(f.value); err != nil {
			t.Fatal(err)
		}
	}
	return append(b, tail.Bytes()...), tail.Len()
}

// unknownJSON returns the "unknown_fields" of the event's JSON form.
func unknownJSON(t *testing.T, ev *event.Event) string {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var j struct {
		Unknown json.RawMessage `json:"unknown_fields"`
	}
	if err := json.Unmarshal(b, &j); err != nil {
		t.Fatal(err)
	}
	return string(j.Unknown)
}
