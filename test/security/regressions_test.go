package security_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/antientropy"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/demo"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/node"
)

// The tests in this file each showed a product bug found while writing
// this package. Each is fixed, and its test keeps it fixed; knownBug is
// there for the next one found before its fix (docs/SECURITY.md, "Known
// limits").

// knownBug skips the test unless REPL_TEST_KNOWN_BUGS is set.
func knownBug(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("REPL_TEST_KNOWN_BUGS") == "" {
		t.Skipf("known limit (%s); set REPL_TEST_KNOWN_BUGS=1 to run", what)
	}
}

// TestFutureContextDiverges: an application at dc1 writes a key with a
// context naming an event of dc2 that does not exist yet ({dc2:1000}). Taken
// as it was, every DC's clock for the key covered dc2:1..1000, so dc2's next
// write of the key arrived at dc1 and dc3 as obsolete and was dropped;
// anti-entropy then dropped it at dc2 too: an acknowledged write nothing
// superseded, gone everywhere and in no conflict log (docs/DESIGN.md,
// invariants 6 and 10). dc1 now refuses a context naming events it has not
// applied (503 once its wait runs out), and dc2's write reaches every DC.
func TestFutureContextDiverges(t *testing.T) {
	s := startServer(t)
	m := newMesh(t, s.URL())
	m.startAll()
	const key = "user/victim"

	// The application's own user, through dc1's NATS API.
	app := dial(t, m.url, "app_dc1")
	body, _ := json.Marshal(map[string]string{"key": key, "value_text": "from-dc1", "context": "{dc2:1000}"})
	reply, err := app.nc.RequestWithContext(longCtx(t), names.APISubject("dc1", "put"), body)
	if err != nil {
		t.Fatal(err)
	}
	if code, msg := reply.Header.Get("Nats-Service-Error-Code"), reply.Header.Get("Nats-Service-Error"); code != "503" || !strings.Contains(msg, "dc2:1000") {
		t.Fatalf("dc1 answered a write with the forged context {dc2:1000} with code %q %q (%s), want 503 naming dc2:1000", code, msg, reply.Data)
	}
	m.waitConverged(10 * time.Second)

	w, err := m.Node("dc2").Write(longCtx(t), changelog.WriteOp{Key: key, Value: []byte("from-dc2")})
	if err != nil {
		t.Fatal(err)
	}
	// Let the event reach every DC, then run anti-entropy everywhere.
	ev := w.Event
	cluster.Eventually(t, 10*time.Second, "dc2's event applied at every DC", func() (bool, string) {
		for _, dc := range m.dcs {
			if a := m.Store(dc).Applied(); !a.Covers(ev.Origin, ev.Partition, ev.Seq) {
				return false, fmt.Sprintf("%s applied %v of %s", dc, a[ev.Origin], ev.Origin)
			}
		}
		return true, ""
	})
	admin := dial(t, m.url, "admin")
	for _, dc := range m.dcs {
		if _, err := antientropy.RequestRun(longCtx(t), admin.nc, dc); err != nil {
			t.Fatalf("anti-entropy at %s: %v", dc, err)
		}
	}
	// Give the DCs up to 10s to agree; whether they do is checked below.
	_ = cluster.Wait(context.Background(), 10*time.Second, cluster.Poll, "convergence", m.Converged)
	same, report := m.Converged()
	var b strings.Builder
	shown := 0
	for _, dc := range m.dcs {
		_, st, _, _ := m.Node(dc).Read(key)
		fmt.Fprintf(&b, "\n  %s: clock %s, siblings:", dc, st.Clock)
		for _, sb := range st.Siblings {
			fmt.Fprintf(&b, " %s=%q", sb.Dot, sb.Value)
			if sb.Dot == w.Event.Dot {
				shown++
			}
		}
	}
	// dc2's write is acknowledged and nothing superseded it causally (no
	// one read it): every DC must show it (the key's resolver is siblings).
	if !same || shown != len(m.dcs) {
		t.Fatalf("after dc1 accepted the context {dc2:1000}, dc2's acknowledged write %q (dot %s) of %s is shown by %d of %d DCs (converged: %t; %s)%s",
			"from-dc2", w.Event.Dot, key, shown, len(m.dcs), same, report, b.String())
	}
}

// TestInboxIsolation: every DC user must subscribe to _INBOX.> because the
// sidecar uses nats.go's default inbox prefix (there is no setting for a
// per-DC prefix such as _INBOX_dc1). So dc3's credentials receive every
// reply addressed to dc1: its JetStream API answers, its repair answers,
// and the events JetStream delivers to dc1's pull consumers. Worse, since
// each DC user needs allow_responses (to answer repair and API requests),
// dc3 may then publish to the reply subject of such a delivery, which is
// dc1's ack subject $JS.ACK.REPL_dc2.repl_dc1_from_dc2...: dc3 can ack,
// nak or terminate dc1's messages. The fix needs a per-DC inbox prefix in
// the sidecar (nats.CustomInboxPrefix) and, in nats-permissions.conf,
// subscribe "_INBOX_dc1.>" instead of "_INBOX.>".
func TestInboxIsolation(t *testing.T) {
	s := startServer(t)
	m := newMesh(t, s.URL())
	m.startAll()
	spy := dial(t, m.url, "dc3")
	ackSubject := "$JS.ACK." + names.Stream("dc2") + "." + names.Consumer("dc1", "dc2") + "."
	seen := make(chan *nats.Msg, 64)
	if _, err := spy.nc.Subscribe("_INBOX.>", func(msg *nats.Msg) {
		if strings.HasPrefix(msg.Reply, ackSubject) {
			seen <- msg
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := spy.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Node("dc2").Write(longCtx(t), changelog.WriteOp{Key: "user/secret", Value: []byte("for dc1's eyes")}); err != nil {
		t.Fatal(err)
	}
	select {
	case msg := <-seen:
		err := spy.nc.Publish(msg.Reply, []byte("+NAK"))
		if ferr := spy.nc.Flush(); err == nil {
			err = ferr
		}
		// A refused publish is reported within a moment; wait for the
		// first error, up to a second.
		violation := false
		select {
		case e := <-spy.errs:
			violation = errors.Is(e, nats.ErrPermissionViolation)
		case <-time.After(time.Second):
		}
		for len(spy.errs) > 0 {
			if e := <-spy.errs; errors.Is(e, nats.ErrPermissionViolation) {
				violation = true
			}
		}
		t.Fatalf("dc3's credentials received dc2's event %s (%d bytes) as delivered to dc1's consumer, reply %s; "+
			"dc3's +NAK on that reply: publish err %v, permissions violation %t", msg.Subject, len(msg.Data), msg.Reply, err, violation)
	case <-time.After(3 * time.Second):
	}
}

// TestEmbeddedNATSRequiresCredentials: nats.user/nats.password (or
// nats.token) are documented to protect the embedded NATS server, and
// config validation accepts an embedded server on a non-loopback address
// only when they are set. But bridge.StartEmbedded takes no credentials and
// node.Start passes none, so the embedded server accepts every client
// without authentication: with nats.listen 0.0.0.0:4222 and a user set,
// anyone on the network can read, write, purge and delete every DC's
// streams. The sidecar itself presents the credentials, which the server
// ignores.
func TestEmbeddedNATSRequiresCredentials(t *testing.T) {
	cfg := demo.Config("dc1", []string{"dc1", "dc2"}, "mesh", t.TempDir())
	cfg.NATS.User, cfg.NATS.Password = "dc1", "s3cret"
	cfg.NATS.Listen = "0.0.0.0:4222"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("an embedded server on 0.0.0.0 with nats.user set: %v", err)
	}
	port := freePort(t)
	cfg.NATS.Listen = fmt.Sprintf("127.0.0.1:%d", port)
	n, err := node.New(cfg, node.Options{NoHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.Start(longCtx(t)); err != nil {
		t.Fatalf("start with an embedded server that requires user dc1: %v", err)
	}
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port), nats.MaxReconnects(0))
	if err == nil {
		defer nc.Close()
		names := nc.ConnectedServerName()
		t.Fatalf("a client without credentials connected to the embedded server %s of a sidecar configured with nats.user %q",
			names, cfg.NATS.User)
	}
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect without credentials: %v; want an authorization error", err)
	}
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
