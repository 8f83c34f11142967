package core

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

const testParts = 4

func testEvent(origin string, seq uint64, key string, path ...string) *event.Event {
	if len(path) == 0 {
		path = []string{origin}
	}
	return &event.Event{
		Version: event.SchemaVersion, Origin: origin, Partition: event.PartitionOf(key, testParts),
		Seq: seq, Key: key, Op: event.OpPut, Value: []byte("v"),
		Dot: vclock.Dot{DC: origin, N: seq}, Context: vclock.VV{}, HLC: 1, Path: path,
	}
}

func TestCheck(t *testing.T) {
	c := NewChecker([]string{"a", "b", "c"}, testParts, event.Limits{})
	type msg struct {
		subject string
		header  map[string][]string
		data    []byte
	}
	of := func(ev *event.Event) msg {
		b, err := ev.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		return msg{Subject("b", ev.Partition), event.ToHeaders(ev), b}
	}
	with := func(m msg, f func(*msg)) msg { f(&m); return m }
	txnOf := func(ops ...*event.Event) msg {
		b, err := event.EncodeTxn(nil, ops)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range ops {
			op.TxnOps = len(ops)
		}
		return msg{TxnSubject("b"), event.TxnHeaders(ops), b}
	}
	good := testEvent("b", 7, "k1")
	forwarded := testEvent("a", 3, "k2", "a", "b")

	for _, tc := range []struct {
		name string
		msg  msg
		want string // "" accepts
	}{
		{"own event of the upstream", of(good), ""},
		{"event forwarded by the upstream", of(forwarded), ""},
		{"event back at its origin (the plan drops it)", of(testEvent("c", 1, "k3", "c", "a", "b")), ""},
		{"malformed", with(of(good), func(m *msg) { m.data = []byte{0xc1} }), "malformed"},
		{"empty", with(of(good), func(m *msg) { m.data = nil }), "malformed"},
		{"forged origin", with(of(testEvent("c", 1, "k1")), func(m *msg) { m.subject = Subject("b", event.PartitionOf("k1", testParts)) }), "forged"},
		{"unknown origin", of(testEvent("zz", 1, "k1", "zz", "b")), `origin "zz" is not a known DC`},
		{"unknown DC on the path", of(testEvent("a", 1, "k1", "a", "zz", "b")), `path[1] "zz" is not a known DC`},
		{"another DC's subject", with(of(good), func(m *msg) { m.subject = "repl.a.0" }), "not in b's stream"},
		{"dead-letter subject", with(of(good), func(m *msg) { m.subject = "repl.b.dlq" }), "does not name a partition"},
		{"partition out of range", with(of(good), func(m *msg) { m.subject = "repl.b.4" }), "does not name a partition"},
		{"subject of another partition", with(of(good), func(m *msg) {
			m.subject = Subject("b", (good.Partition+1)%testParts)
		}), "was published on"},
		{"partition not the key's", func() msg {
			ev := testEvent("b", 1, "k1")
			ev.Partition = (ev.Partition + 1) % testParts
			return of(ev)
		}(), "is in partition"},
		{"absurd counter", of(testEvent("b", 1<<63, "k1")), "absurd"},
		{"no headers", with(of(good), func(m *msg) { m.header = nil }), "headers"},
		{"header disagrees", with(of(good), func(m *msg) {
			m.header = event.ToHeaders(testEvent("b", 8, "k1"))
		}), "headers do not match"},
		{"transaction", txnOf(testEvent("b", 8, "k1"), testEvent("b", 9, "k2")), ""},
		{"forwarded transaction", txnOf(testEvent("a", 4, "k1", "a", "b"), testEvent("a", 5, "k2", "a", "b")), ""},
		{"transaction on a partition subject", with(txnOf(testEvent("b", 8, "k1"), testEvent("b", 9, "k2")), func(m *msg) {
			m.subject = Subject("b", 0)
		}), "not on repl.b.txn"},
		{"single event on the transaction subject", with(of(good), func(m *msg) { m.subject = TxnSubject("b") }), "is not a transaction"},
		{"transaction op in the wrong partition", func() msg {
			ev := testEvent("b", 9, "k2")
			ev.Partition = (ev.Partition + 1) % testParts
			return txnOf(testEvent("b", 8, "k1"), ev)
		}(), "is in partition"},
		{"transaction headers without Repl-Txn", with(txnOf(testEvent("b", 8, "k1"), testEvent("b", 9, "k2")), func(m *msg) {
			delete(m.header, event.HeaderTxn)
		}), "headers do not match"},
		{"transaction of another DC's stream", txnOf(testEvent("c", 8, "k1"), testEvent("c", 9, "k2")), "forged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, err := c.Check("b", tc.msg.subject, tc.msg.header, tc.msg.data)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.want == "" && len(evs) == 0:
				t.Fatal("accepted without an event")
			case tc.want != "" && err == nil:
				t.Fatalf("accepted %v, want an error saying %q", evs[0].Dot, tc.want)
			case tc.want != "" && (!errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %q, want ErrRejected saying %q", err, tc.want)
			}
		})
	}
}

func TestCheckReport(t *testing.T) {
	c := NewChecker([]string{"a", "b", "c"}, 2, event.Limits{})
	enc := func(v any) []byte {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		dc   string
		data []byte
		want string // "" accepts
	}{
		{"good", "b", enc(map[string][]uint64{"a": {1, 2}, "b": {3, 4}}), ""},
		{"empty", "b", enc(map[string][]uint64{}), ""},
		{"unknown reporter", "z", enc(map[string][]uint64{"a": {1, 2}}), `"z" is not a known DC`},
		{"unknown origin", "b", enc(map[string][]uint64{"z": {1, 2}}), `unknown DC "z"`},
		{"partition count", "b", enc(map[string][]uint64{"a": {1, 2, 3}}), "has 3 partitions, want 2"},
		{"malformed", "b", []byte{0xc1}, "msgpack"},
		{"huge declared length", "b", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}, "msgpack"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := c.Report(tc.dc, tc.data)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "" && a == nil:
				t.Fatal("accepted without a vector")
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
		})
	}
}
