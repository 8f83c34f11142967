// Package natsinfra_test runs sidecars against the NATS deployments of
// docs/DESIGN.md "Where NATS runs", all in-process and real: a three-server
// JetStream cluster that loses a server, DCs linked by leafnodes to a hub's
// JetStream domain, servers that demand user/password, JWT credentials or
// mutual TLS, and the NATS CLI reading the replication streams.
//
// Set REPL_TEST_LOG=1 to see the sidecars' logs, REPL_TEST_NATS_LOG=1 to see
// the NATS servers' on stderr.
package natsinfra_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/node"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// partitions is every test deployment's partition count.
const partitions = 4

// startTimeout bounds one sidecar's Start.
const startTimeout = 40 * time.Second

// runServer starts an in-process NATS server with o (logging and signal
// handling off, loopback and a free client port unless o says otherwise)
// and shuts it down at the end of the test.
func runServer(t testing.TB, o *server.Options) *server.Server {
	t.Helper()
	return cluster.RunServer(t, cluster.ServerOptions{Raw: o}).NATS()
}

// stopServer shuts s down and waits; calling it again is harmless.
func stopServer(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

// meshOptions describe a mesh of dcs on external NATS: siblings by
// default, lww under "lww/"; urlOf gives DC i its NATS URL, and adjust, if
// not nil, changes each config.
func meshOptions(t testing.TB, dcs []string, urlOf func(i int) string, adjust func(*config.Config)) cluster.Options {
	return cluster.Options{
		DCs: dcs, Partitions: partitions, ReportInterval: 100 * time.Millisecond, StartTimeout: startTimeout,
		URL: func(dc string) string { return urlOf(slices.Index(dcs, dc)) },
		Config: func(cfg *config.Config) {
			cfg.Resolvers.Rules = []config.Rule{{Prefix: "lww/", Resolver: config.LWW}}
			if adjust != nil {
				adjust(cfg)
			}
		},
		Logger: func(dc string) *slog.Logger { return testutil.Logger(t, dc) },
	}
}

// sidecarConfig is the config of DC dc of dcs, a mesh on the external NATS
// at url, as meshOptions describes it. Callers adjust cfg.NATS before
// starting.
func sidecarConfig(t testing.TB, dc string, dcs []string, url string) config.Config {
	t.Helper()
	o := meshOptions(t, dcs, func(int) string { return url }, nil)
	o.NoStart = true
	return cluster.Start(t, o).Config(dc)
}

// newSidecar opens a sidecar for cfg (no HTTP listener) and closes it at
// the end of the test; it does not start it.
func newSidecar(t testing.TB, cfg config.Config) *node.Node {
	t.Helper()
	n, err := node.New(cfg, node.Options{Logger: testutil.Logger(t, cfg.DC), NoHTTP: true, ReportInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("%s: node.New: %v", cfg.DC, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Logf("%s: close: %v", cfg.DC, err)
		}
	})
	return n
}

// startMesh starts one sidecar per DC, concurrently (each DC's Start waits
// for its own stream only, but a cluster's JetStream is faster when asked
// in parallel), as meshOptions describes them.
func startMesh(t testing.TB, dcs []string, urlOf func(i int) string, adjust func(*config.Config)) *cluster.Cluster {
	t.Helper()
	return cluster.Start(t, meshOptions(t, dcs, urlOf, adjust))
}

// writer drives writes at one DC until stopped: read-modify-writes with the
// context of a local read on keys every DC writes (so they conflict), blind
// writes on lww keys, and an occasional delete.
type writer struct {
	n    *node.Node
	dc   string
	keys int
	done atomic.Int64
}

func (w *writer) run(ctx context.Context, stop <-chan struct{}, max int64) error {
	for i := int64(0); i < max; i++ {
		select {
		case <-stop:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		op := changelog.WriteOp{Value: fmt.Appendf(nil, "%s-%d", w.dc, i)}
		switch i % 4 {
		case 0:
			op.Key = fmt.Sprintf("lww/%d", i%int64(w.keys))
		default:
			op.Key = fmt.Sprintf("k/%d", i%int64(w.keys))
			_, st, _, err := w.n.Read(op.Key)
			if err != nil {
				return fmt.Errorf("%s: read %s: %w", w.dc, op.Key, err)
			}
			op.Context = st.Clock
			if i%29 == 0 {
				op.Delete, op.Value = true, nil
			}
		}
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		_, err := w.n.Write(wctx, op)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: write %s: %w", w.dc, op.Key, err)
		}
		w.done.Add(1)
	}
	return nil
}

// writeTimeout bounds one write of a writer: a local commit, which only
// a hung store would take that long to make.
const writeTimeout = 20 * time.Second

// workload runs one writer per DC in the background.
type workload struct {
	writers []*writer
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
}

// startWorkload starts a writer at every node; each stops after max writes
// or at halt. The writers have no deadline of their own (each write has
// writeTimeout): how long they run is the test's phases, which a loaded
// machine under -race stretches.
func startWorkload(t testing.TB, nodes []*node.Node, dcs []string, max int64) *workload {
	t.Helper()
	w := &workload{stop: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	for i, n := range nodes {
		wr := &writer{n: n, dc: dcs[i], keys: 40}
		w.writers = append(w.writers, wr)
		w.wg.Go(func() {
			if err := wr.run(ctx, w.stop, max); err != nil {
				w.mu.Lock()
				w.errs = append(w.errs, err)
				w.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { w.halt(); w.wg.Wait(); cancel() })
	return w
}

// halt tells every writer to stop after its current write.
func (w *workload) halt() { w.once.Do(func() { close(w.stop) }) }

// total is the number of writes acknowledged so far.
func (w *workload) total() int64 {
	var n int64
	for _, wr := range w.writers {
		n += wr.done.Load()
	}
	return n
}

// counts is each writer's acknowledged writes so far, by DC.
func (w *workload) counts() string {
	var b strings.Builder
	for _, wr := range w.writers {
		fmt.Fprintf(&b, "%s:%d ", wr.dc, wr.done.Load())
	}
	return strings.TrimSpace(b.String())
}

// writesBudget bounds a wait for the writers to make some number of
// writes: a budget for slow work, three writers on a 2-core machine under
// -race with the rest of the suite (down to 5 writes a second); the wait
// ends as soon as they have.
const writesBudget = time.Minute

// waitTotal waits until at least n writes have been acknowledged.
func (w *workload) waitTotal(t testing.TB, n int64) {
	t.Helper()
	cluster.Eventually(t, writesBudget, fmt.Sprintf("%d writes", n), func() (bool, string) {
		return w.total() >= n, fmt.Sprintf("%d writes (per DC %s)", w.total(), w.counts())
	})
}

// of is the number of writes the writer at dc has made.
func (w *workload) of(dc string) int64 {
	for _, wr := range w.writers {
		if wr.dc == dc {
			return wr.done.Load()
		}
	}
	return 0
}

// wait waits for every writer to finish and fails the test on any error.
func (w *workload) wait(t testing.TB) {
	t.Helper()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) > 0 {
		t.Fatalf("writes failed: %v", w.errs)
	}
}

// connectedTo returns, per server index, the DCs whose sidecar connection
// ("replicator-<dc>") the server holds.
func connectedTo(t testing.TB, servers []*server.Server) map[int][]string {
	t.Helper()
	out := map[int][]string{}
	for i, s := range servers {
		if !s.Running() {
			continue
		}
		cz, err := s.Connz(&server.ConnzOptions{})
		if err != nil {
			t.Fatalf("connz: %v", err)
		}
		for _, c := range cz.Conns {
			if dc, ok := strings.CutPrefix(c.Name, "replicator-"); ok {
				out[i] = append(out[i], dc)
			}
		}
		slices.Sort(out[i])
	}
	return out
}
