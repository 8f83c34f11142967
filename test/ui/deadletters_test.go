package ui_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/replicatorhq/replicator/pkg/names"
)

// TestDeadLetters publishes a poison message onto dc1's stream: dc2 and
// dc3 consume dc1 and dead-letter it, and GET /v1/deadletters at each
// shows it, newest first, with its reason and the Repl-Dlq-* headers;
// dc1 consumes nothing poisoned and shows none.
func TestDeadLetters(t *testing.T) {
	c := startCluster(t)
	c.write("dc1", "user/before", "x")
	c.poison("dc1")
	c.poison("dc1")
	for _, dc := range []string{"dc2", "dc3"} {
		d := c.waitDeadLetter(dc, "dc1", "malformed")
		// Both poison messages: wait for the second too.
		if d.Total < 2 {
			d = c.waitDeadLetterCount(dc, 2)
		}
		if d.Total != 2 || len(d.DeadLetters) != 2 {
			t.Fatalf("%s: total %d with %d listed, want 2 and 2: %+v", dc, d.Total, len(d.DeadLetters), d)
		}
		newest, older := d.DeadLetters[0], d.DeadLetters[1]
		if newest.Seq <= older.Seq {
			t.Errorf("%s: sequences %d then %d, want newest first", dc, newest.Seq, older.Seq)
		}
		for _, m := range d.DeadLetters {
			if !strings.Contains(m.Reason, "malformed") || m.Upstream != "dc1" || m.Subject != names.Subject("dc1", 0) ||
				m.StreamSeq == 0 || m.Size != len("\xc1 this is not msgpack") || m.Time.IsZero() {
				t.Errorf("%s: dead letter %+v, want reason malformed from dc1 on %s with its stream sequence, size and time", dc, m, names.Subject("dc1", 0))
			}
		}
		if newest.StreamSeq <= older.StreamSeq {
			t.Errorf("%s: upstream sequences %d then %d, want the later poison message first", dc, newest.StreamSeq, older.StreamSeq)
		}

		var one deadLetters
		if code, err := c.get(dc, "/v1/deadletters?limit=1", &one); err != nil || code != http.StatusOK {
			t.Fatalf("%s limit=1: %d %v", dc, code, err)
		}
		if one.Total != 2 || len(one.DeadLetters) != 1 || one.DeadLetters[0].Seq != newest.Seq {
			t.Errorf("%s limit=1: %+v, want the newest only and total 2", dc, one)
		}
	}
	var none deadLetters
	if code, err := c.get("dc1", "/v1/deadletters", &none); err != nil || code != http.StatusOK {
		t.Fatalf("dc1: %d %v", code, err)
	}
	if none.Total != 0 || len(none.DeadLetters) != 0 {
		t.Errorf("dc1 consumes nothing poisoned but lists %+v", none)
	}
	var bad struct{ Error string }
	if code, _ := c.get("dc2", "/v1/deadletters?limit=5000", &bad); code != http.StatusBadRequest || !strings.Contains(bad.Error, "1 to 1000") {
		t.Errorf("limit=5000: status %d, error %q; want 400 naming the range", code, bad.Error)
	}
}
