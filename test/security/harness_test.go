// Package security_test proves the least-privilege NATS permissions of
// configs/nats-permissions.conf: it loads that very file into an in-process
// nats-server, runs a three-DC mesh whose sidecars each connect as their
// own restricted user (enough: they replicate, restore and replay without a
// single permissions violation), and shows that dc1's credentials are
// refused every action on another DC's subjects, streams and consumers. It
// also checks that the HTTP API refuses a non-loopback address without a
// token. regressions_test.go holds the tests of the product bugs found on
// the way, each fixed (knownBug skips one found before its fix unless
// REPL_TEST_KNOWN_BUGS=1).
//
// Set REPL_TEST_LOG=1 to see the sidecars' warnings and errors on stderr,
// REPL_TEST_NATS_LOG=1 to see the NATS server's.
package security_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/demo"
	"github.com/replicatorhq/replicator/pkg/names"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// permissionsConf is the example file under test, relative to this
// package's directory (where go test runs).
const permissionsConf = "../../configs/nats-permissions.conf"

// users of the example file, and the environment variable that holds each
// one's password there.
var users = map[string]string{
	"admin":    "REPL_ADMIN_PASSWORD",
	"dc1":      "REPL_DC1_PASSWORD",
	"dc2":      "REPL_DC2_PASSWORD",
	"dc3":      "REPL_DC3_PASSWORD",
	"app_dc1":  "REPL_APP_DC1_PASSWORD",
	"resolver": "REPL_RESOLVER_PASSWORD",
}

// password is the test password of user.
func password(user string) string { return "test-secret-of-" + user }

// startServer loads configs/nats-permissions.conf, with the test passwords
// in the environment, a free loopback port and a temporary store, and
// starts it; it stops at the end of the test.
func startServer(t *testing.T) *cluster.Server {
	t.Helper()
	for user, env := range users {
		t.Setenv(env, password(user))
	}
	o, err := server.ProcessConfigFile(permissionsConf)
	if err != nil {
		t.Fatalf("load %s: %v", permissionsConf, err)
	}
	if !o.JetStream {
		t.Fatalf("%s does not enable JetStream", permissionsConf)
	}
	o.Host, o.Port, o.StoreDir = "", 0, "" // loopback, a free port, a temporary store
	return cluster.RunServer(t, cluster.ServerOptions{Raw: o})
}

// recorder keeps the warnings and errors the sidecars log; the nodes log
// every asynchronous NATS error, permissions violations included, as
// "nats error".
type recorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *recorder) add(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, line)
	if os.Getenv("REPL_TEST_LOG") != "" {
		fmt.Fprintln(os.Stderr, line)
	}
}

// contains reports whether a recorded line contains s.
func (r *recorder) contains(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// all returns every recorded line.
func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lines)
}

// violations returns the logged lines that report a permissions violation.
func (r *recorder) violations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, l := range r.lines {
		if strings.Contains(strings.ToLower(l), "permission") {
			out = append(out, l)
		}
	}
	return out
}

// logHandler is a slog.Handler that records lines at Warn and above.
type logHandler struct {
	rec   *recorder
	attrs []slog.Attr
}

func (h logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s", a)
		return true
	})
	h.rec.add(b.String())
	return nil
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return logHandler{rec: h.rec, attrs: append(slices.Clone(h.attrs), as...)}
}

func (h logHandler) WithGroup(string) slog.Handler { return h }

// mesh is three sidecars, each connected as its own restricted user.
type mesh struct {
	*cluster.Cluster
	t   *testing.T
	url string
	dcs []string
	log *recorder
}

func newMesh(t *testing.T, url string) *mesh {
	m := &mesh{t: t, url: url, log: &recorder{}}
	m.Cluster = cluster.Start(t, cluster.Options{
		URL: func(string) string { return url }, ReportInterval: 100 * time.Millisecond, NoStart: true,
		Config: func(cfg *config.Config) {
			cfg.Resolvers.Rules = demo.Rules(cfg.DCs)
			cfg.NATS.User, cfg.NATS.Password = cfg.DC, password(cfg.DC) // each DC as its own NATS user
			cfg.Durability.Fsync = false                                // not what this test is about
		},
		Logger: func(string) *slog.Logger { return slog.New(logHandler{rec: m.log}) },
	})
	m.dcs = m.Names()
	return m
}

// startAll starts the given DCs (every DC if none) concurrently.
func (m *mesh) startAll(dcs ...string) {
	m.t.Helper()
	if len(dcs) == 0 {
		dcs = m.dcs
	}
	if err := m.StartDCs(context.Background(), dcs...); err != nil {
		m.t.Fatalf("start as the DCs' own NATS users: %v", err)
	}
}

// stop closes dc's sidecar.
func (m *mesh) stop(dc string) {
	m.t.Helper()
	if err := m.StopDC(dc); err != nil {
		m.t.Fatal(err)
	}
}

// writeConcurrently has every DC write rounds times, all at once, on keys
// every DC writes: read-modify-writes with the local context on sibling
// keys, blind writes on lww keys, and some deletes. It returns the number
// of acknowledged writes.
func (m *mesh) writeConcurrently(rounds, keys int) int {
	m.t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(m.dcs))
	for _, dc := range m.dcs {
		n := m.Node(dc)
		wg.Go(func() {
			for i := range rounds {
				op := changelog.WriteOp{Value: fmt.Appendf(nil, "%s-%d", dc, i)}
				if i%3 == 0 {
					op.Key = fmt.Sprintf("title/%d", i%keys)
				} else {
					op.Key = fmt.Sprintf("user/%d", i%keys)
					_, st, _, err := n.Read(op.Key)
					if err != nil {
						errs <- fmt.Errorf("%s: read %s: %w", dc, op.Key, err)
						return
					}
					op.Context = st.Clock
					if i%17 == 0 {
						op.Delete, op.Value = true, nil
					}
				}
				// Each write has its own deadline: the rounds together
				// take as long as a loaded machine makes them.
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := n.Write(ctx, op)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("%s: write %s: %w", dc, op.Key, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		m.t.Fatal(err)
	}
	return rounds * len(m.dcs)
}

// waitConverged waits until every DC shows the same digest and applied
// vector with an empty outbox, twice in a row.
func (m *mesh) waitConverged(timeout time.Duration) {
	m.t.Helper()
	start := time.Now()
	if err := cluster.Wait(context.Background(), timeout, 100*time.Millisecond, "convergence", cluster.Stable(2, m.Converged)); err != nil {
		m.t.Fatalf("%v; logged warnings: %v", err, m.log.all())
	}
	m.t.Logf("converged after %s", time.Since(start).Round(time.Millisecond))
}

// client is a raw NATS connection as one of the example's users that
// records the asynchronous errors the server sends it (permissions
// violations among them).
type client struct {
	user string
	nc   *nats.Conn
	js   jetstream.JetStream
	errs chan error
}

func dial(t *testing.T, url, user string) *client {
	t.Helper()
	c := &client{user: user, errs: make(chan error, 64)}
	opts := []nats.Option{nats.UserInfo(user, password(user)), nats.Name("security-test-" + user)}
	if strings.HasPrefix(user, "dc") {
		// DC users get replies only under their own inbox prefix, as the
		// sidecar uses it.
		opts = append(opts, nats.CustomInboxPrefix(names.Inbox(user)))
	}
	nc, err := nats.Connect(url, append(opts,
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case c.errs <- err:
			default:
			}
		}))...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	if c.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return c
}

// violation waits for the server to report that c's user may not publish
// to (op "Publish") or subscribe to (op "Subscription") subject.
func (c *client) violation(t *testing.T, op, subject string) {
	t.Helper()
	want := fmt.Sprintf("%s to %q", op, subject)
	timeout := time.After(3 * time.Second)
	var seen []string
	for {
		select {
		case err := <-c.errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), want) {
				return
			}
			seen = append(seen, err.Error())
		case <-timeout:
			t.Fatalf("%s: no permissions violation for %s within 3s (errors seen: %v)", c.user, want, seen)
		}
	}
}

// markerSubject is a subject no test user but admin may publish to.
const markerSubject = "security-test.marker"

// noViolation fails the test if the server reported any error to c. It
// publishes to markerSubject: the server answers c's messages in order and
// the client reports their errors in order, so once the marker's
// violation has arrived, any earlier error has arrived before it.
func (c *client) noViolation(t *testing.T) {
	t.Helper()
	if err := c.nc.Publish(markerSubject, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("Publish to %q", markerSubject)
	select {
	case err := <-c.errs:
		if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: unexpected error from the server: %v", c.user, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the server did not refuse the marker publish to %s within 10s", c.user, markerSubject)
	}
}

// refused runs call, which sends a request on subject as c, and checks
// that the server reports a permissions violation for subject and that
// call fails. A refused request gets no answer, so call is cancelled once
// the violation has arrived rather than left to time out.
func (c *client) refused(t *testing.T, subject string, call func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- call(ctx) }()
	c.violation(t, "Publish", subject)
	cancel()
	if err := <-errc; err == nil {
		t.Fatalf("%s: the call on %s succeeded", c.user, subject)
	}
}

// longCtx is a context for calls that must succeed.
func longCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// copyDir copies directory src to dst, for a backup of a data dir.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}
