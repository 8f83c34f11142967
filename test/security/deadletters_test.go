package security_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/names"
)

// TestDeadLettersUnderLeastPrivilege checks that a sidecar connected as
// its own least-privilege user can read its dead-letter stream, as
// GET /v1/deadletters and the status page do: configs/nats-permissions.conf
// grants STREAM.MSG.GET on REPL_<dc>_DLQ, and reading it hits no
// permissions violation.
func TestDeadLettersUnderLeastPrivilege(t *testing.T) {
	s := startServer(t)
	m := newMesh(t, s.URL())
	m.startAll()
	admin := dial(t, s.URL(), "admin")
	ctx := longCtx(t)
	poison := &nats.Msg{Subject: names.Subject("dc1", 0), Data: []byte("\xc1 not an event"), Header: nats.Header{}}
	if _, err := admin.js.PublishMsg(ctx, poison); err != nil {
		t.Fatal(err)
	}
	cluster.EventuallyEvery(t, 30*time.Second, 100*time.Millisecond, "dc2 reading its dead letter as NATS user dc2", func() (bool, string) {
		rctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		ds, total, err := m.Node("dc2").Replicator().DeadLetters(rctx, 20)
		if err != nil {
			return false, err.Error()
		}
		ok := total == 1 && len(ds) == 1 && ds[0].Upstream == "dc1" && strings.Contains(ds[0].Reason, "malformed")
		return ok, fmt.Sprintf("total %d, read %+v", total, ds)
	})
	// TestLeastPrivilege checks the other grants; here only the
	// dead-letter stream's.
	var dlq []string
	for _, v := range m.log.violations() {
		if strings.Contains(v, "_DLQ") {
			dlq = append(dlq, v)
		}
	}
	if len(dlq) > 0 {
		t.Fatalf("reading dead letters hit %d permissions violations:\n%s", len(dlq), strings.Join(dlq, "\n"))
	}
}
