package event

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// txnOps returns n valid ops of one transaction from blue.
func txnOps(n int) []*Event {
	ops := make([]*Event, n)
	for i := range ops {
		ops[i] = mod(func(e *Event) {
			e.Key = "order/" + string(rune('a'+i))
			e.Partition = uint32(i % 3)
			e.Seq = uint64(10 + i)
			e.Dot = vclock.Dot{DC: "blue", N: e.Seq}
		})
	}
	return ops
}

func TestTxnRoundTrip(t *testing.T) {
	ops := txnOps(5)
	b, err := EncodeTxn(nil, ops)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeMessage(b, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ops) {
		t.Fatalf("decoded %d ops, want %d", len(got), len(ops))
	}
	for i := range ops {
		if got[i].TxnOps != len(ops) {
			t.Fatalf("op %d: TxnOps %d, want %d", i, got[i].TxnOps, len(ops))
		}
		if d := diff(ops[i], got[i]); d != "" {
			t.Fatalf("op %d changed: %s", i, d)
		}
	}
	again, err := EncodeTxn(nil, got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, again) {
		t.Fatal("re-encoding a decoded transaction changed its bytes")
	}
	// A v1 event still decodes as one event, and plain Decode refuses a
	// transaction as a version it does not read.
	single, _ := sample().Encode(nil)
	if evs, err := DecodeMessage(single, DefaultLimits()); err != nil || len(evs) != 1 || evs[0].TxnOps != 0 {
		t.Fatalf("DecodeMessage(v1) = %d events, %v", len(evs), err)
	}
	if _, err := Decode(b, DefaultLimits()); !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("Decode(transaction) = %v, want ErrUnknownVersion", err)
	}
}

func TestTxnRejects(t *testing.T) {
	enc := func(ops []*Event) []byte {
		// Encode past EncodeTxn's checks, as a hostile sender would.
		dst := appendMapLen(nil, 2)
		dst = appendStr(dst, keyVersion)
		dst = appendUint(dst, TxnVersion)
		dst = appendStr(dst, keyTxn)
		dst = appendArrayLen(dst, len(ops))
		for _, op := range ops {
			b, err := op.Encode(nil)
			if err != nil {
				t.Fatal(err)
			}
			dst = appendBin(dst, b)
		}
		return dst
	}
	valid := enc(txnOps(3))
	cases := []struct {
		name string
		in   []byte
		lim  Limits
		want error
		msg  string
	}{
		{"mixed origins", enc(func() []*Event {
			o := txnOps(2)
			o[1].Origin, o[1].Dot.DC, o[1].Path = "green", "green", []string{"green", "blue"}
			return o
		}()), Limits{}, ErrInvalid, "origin"},
		{"mixed hlc", enc(func() []*Event { o := txnOps(2); o[1].HLC++; return o }()), Limits{}, ErrInvalid, "HLC"},
		{"mixed path", enc(func() []*Event { o := txnOps(2); o[1].Path = []string{"blue"}; return o }()), Limits{}, ErrInvalid, "path"},
		{"key twice", enc(func() []*Event { o := txnOps(2); o[1].Key = o[0].Key; return o }()), Limits{}, ErrInvalid, "twice"},
		{"no ops", enc(nil), Limits{}, ErrInvalid, "no ops"},
		{"too many ops", valid, Limits{MaxTxnOps: 2}, ErrLimit, "op limit"},
		{"too large", valid, Limits{MaxTxnBytes: len(valid) - 1}, ErrTooLarge, "byte limit"},
		{"truncated", valid[:len(valid)-3], Limits{}, ErrMalformed, "only 83 left"},
		{"trailing", append(append([]byte(nil), valid...), 0x01), Limits{}, ErrMalformed, "after the end"},
		{"bad op inside", func() []byte { b := append([]byte(nil), valid...); b[len(b)-2] = 0xc1; return b }(), Limits{}, ErrInvalid, "op 2"},
		{"huge op count", []byte{0x82, 0xa1, 'v', 0x02, 0xa2, 't', 'x', 0xdd, 0x7f, 0xff, 0xff, 0xff}, Limits{}, ErrMalformed, "elements"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			evs, err := DecodeMessage(c.in, c.lim)
			if !errors.Is(err, c.want) || evs != nil {
				t.Fatalf("DecodeMessage = %d ops, %v; want %v", len(evs), err, c.want)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("error %q does not say %q", err, c.msg)
			}
		})
	}
}

func TestTxnHeaders(t *testing.T) {
	ops := txnOps(3)
	for _, op := range ops {
		op.TxnOps = len(ops)
	}
	info, err := FromHeaders(TxnHeaders(ops))
	if err != nil {
		t.Fatal(err)
	}
	if info.TxnOps != 3 {
		t.Fatalf("TxnOps %d, want 3", info.TxnOps)
	}
	if err := info.Check(ops[0]); err != nil {
		t.Fatalf("headers of a transaction disagree with its first op: %v", err)
	}
	// A single event whose headers claim a transaction, and the other way
	// round, are caught.
	single := sample()
	if err := info.Check(single); !errors.Is(err, ErrHeaderMismatch) {
		t.Fatalf("Check(single event against transaction headers) = %v", err)
	}
	plain, _ := FromHeaders(ToHeaders(ops[0]))
	if err := plain.Check(ops[0]); !errors.Is(err, ErrHeaderMismatch) {
		t.Fatalf("Check(transaction op against single headers) = %v", err)
	}
	h := TxnHeaders(ops)
	h[HeaderTxn] = []string{"0"}
	if _, err := FromHeaders(h); !errors.Is(err, ErrHeader) {
		t.Fatalf("FromHeaders(Repl-Txn 0) = %v", err)
	}
}

func TestGroup(t *testing.T) {
	ops := txnOps(3)
	for _, op := range ops {
		op.TxnOps = 3
	}
	evs := append([]*Event{sample()}, ops...)
	evs = append(evs, sample())
	g, err := Group(evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(g) != 3 || len(g[0]) != 1 || len(g[1]) != 3 || len(g[2]) != 1 {
		t.Fatalf("groups %d", len(g))
	}
	if _, err := Group(evs[:3]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Group(cut transaction) = %v", err)
	}
}

// FuzzDecodeMessage checks that DecodeMessage never panics, that every
// error wraps a codec sentinel, and that an accepted transaction survives a
// re-encode byte for byte.
func FuzzDecodeMessage(f *testing.F) {
	b, _ := EncodeTxn(nil, txnOps(3))
	f.Add(b)
	one, _ := sample().Encode(nil)
	f.Add(one)
	lim := DefaultLimits()
	lim.MaxTxnBytes = 64 << 10
	f.Fuzz(func(t *testing.T, in []byte) {
		evs, err := DecodeMessage(in, lim)
		if err != nil {
			if evs != nil || !isCodecError(err) {
				t.Fatalf("DecodeMessage error %v (events %d) wraps no codec sentinel", err, len(evs))
			}
			return
		}
		if evs[0].TxnOps == 0 {
			return
		}
		out, err := EncodeTxn(nil, evs)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if !bytes.Equal(out, in) && isTxn(in) {
			again, err := DecodeMessage(out, lim)
			if err != nil || len(again) != len(evs) {
				t.Fatalf("decode of the re-encoding: %v", err)
			}
		}
	})
}
