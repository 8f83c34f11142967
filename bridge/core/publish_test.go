package core

import (
	"testing"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// TestMessageSeqHi checks which published events carry Repl-Seq-Hi: every
// message's headers must name the partition's highest own sequence sent so
// far (LastOwnSeq), and an own event that is that sequence leaves the
// header out because its Nats-Msg-Id says it.
func TestMessageSeqHi(t *testing.T) {
	r := NewPublisher("a", 4)
	ev := func(origin string, p uint32, seq uint64, path ...string) changelog.OutboxEntry {
		return changelog.OutboxEntry{Event: &event.Event{
			Version: event.SchemaVersion, Origin: origin, Partition: p, Seq: seq, Key: "k", Op: event.OpPut,
			Dot: vclock.Dot{DC: origin, N: seq}, Path: append([]string{origin}, path...),
		}}
	}
	for _, tc := range []struct {
		name     string
		e        changelog.OutboxEntry
		header   string // Repl-Seq-Hi, "" for none
		wantHigh uint64
	}{
		{"forwarded, nothing own sent yet", ev("b", 2, 7, "a"), "", 0},
		{"own event", ev("a", 2, 1), "", 1},
		{"next own event", ev("a", 2, 2), "", 2},
		{"forwarded after own ones", ev("b", 2, 8, "a"), "2", 2},
		{"own event below the high-water mark", ev("a", 2, 1), "2", 2},
		{"own event in another partition", ev("a", 3, 5), "", 5},
		{"own event after a gap", ev("a", 2, 9), "", 9},
	} {
		m := r.Message(tc.e)
		if got := header(m.Header, HeaderSeqHi); got != tc.header {
			t.Errorf("%s: Repl-Seq-Hi %q, want %q", tc.name, got, tc.header)
		}
		hi, err := LastOwnSeq("a", tc.e.Event.Partition, m.Header)
		if err != nil || hi != tc.wantHigh {
			t.Errorf("%s: the headers name %d (err %v) as the highest own sequence, want %d", tc.name, hi, err, tc.wantHigh)
		}
		if m.Subject != names.Subject("a", tc.e.Event.Partition) {
			t.Errorf("%s: subject %s", tc.name, m.Subject)
		}
	}
}

func TestLastOwnSeq(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header map[string][]string
		want   uint64
		err    bool
	}{
		{"nothing", map[string][]string{}, 0, false},
		{"own event", map[string][]string{"Nats-Msg-Id": {"a:2:17"}}, 17, false},
		{"own event with a higher Seq-Hi", map[string][]string{"Nats-Msg-Id": {"a:2:17"}, HeaderSeqHi: {"20"}}, 20, false},
		{"forwarded event", map[string][]string{"Nats-Msg-Id": {"b:2:99"}, HeaderSeqHi: {"5"}}, 5, false},
		{"other partition's id", map[string][]string{"Nats-Msg-Id": {"a:1:99"}}, 0, false},
		{"bad Seq-Hi", map[string][]string{HeaderSeqHi: {"x"}}, 0, true},
		{"absurd Seq-Hi", map[string][]string{HeaderSeqHi: {"9223372036854775808"}}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LastOwnSeq("a", 2, tc.header)
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("lastOwnSeq = %d, %v; want %d, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}
