package names

import (
	"slices"
	"strings"
	"testing"
)

// TestNames pins every name: they are the wire contract other DCs, older
// sidecars and operators' NATS permissions rely on (docs/DESIGN.md, "Wire
// protocols").
func TestNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Stream("dc1"), "REPL_dc1"},
		{DLQStream("dc1"), "REPL_dc1_DLQ"},
		{StreamPrefix("dc1"), "repl.dc1."},
		{Subject("dc1", 7), "repl.dc1.7"},
		{TxnSubject("dc1"), "repl.dc1.txn"},
		{DLQSubject("dc1"), "repl.dc1.dlq"},
		{Consumer("dc2", "dc1"), "repl_dc2_from_dc1"},
		{HealConsumer("dc3", "dc1"), "repl_dc3_from_dc1_heal"},
		{RepairSubject("dc1"), "repl.repair.dc1"},
		{AppliedSubject("dc1"), "repl.applied.dc1"},
		{AppliedWildcard, "repl.applied.*"},
		{AntiEntropySubject("dc1"), "repl.ae.dc1"},
		{AntiEntropyRunSubject("dc1"), "repl.ae.dc1.run"},
		{HomeSubject("dc1"), "repl.home.dc1"},
		{SnapshotSubject("dc1"), "repl.snap.dc1"},
		{APIGroup("dc1"), "repl.api.dc1"},
		{APISubject("dc1", "put"), "repl.api.dc1.put"},
		{Inbox("dc1"), "_INBOX_dc1"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	if dc, ok := AppliedDC("repl.applied.dc2"); !ok || dc != "dc2" {
		t.Errorf("AppliedDC(repl.applied.dc2) = %q, %v", dc, ok)
	}
	if _, ok := AppliedDC("repl.dc2.0"); ok {
		t.Error("AppliedDC took an event subject for a report")
	}
}

// TestReservedCoversServices: the second token of every service subject
// is reserved, so no DC id's event stream can overlap a service.
func TestReservedCoversServices(t *testing.T) {
	services := []string{
		RepairSubject("x"), AppliedSubject("x"), AntiEntropySubject("x"), AntiEntropyRunSubject("x"),
		HomeSubject("x"), SnapshotSubject("x"), APISubject("x", "get"),
	}
	reserved := Reserved()
	if !slices.IsSorted(reserved) {
		t.Errorf("Reserved() = %v, want it sorted", reserved)
	}
	for _, s := range services {
		tok := strings.Split(s, ".")[1]
		if !slices.Contains(reserved, tok) {
			t.Errorf("%s: token %q is not in Reserved() %v", s, tok, reserved)
		}
	}
	if len(reserved) != 6 {
		t.Errorf("Reserved() = %v, want the 6 service tokens", reserved)
	}
}
