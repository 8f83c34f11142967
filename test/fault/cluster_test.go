package fault_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	repl "github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/node"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// lwwPrefix is the key prefix every test config gives the lww resolver;
// other keys use the default siblings resolver.
const lwwPrefix = "lww/"

// mode says how a cluster runs its DCs.
type mode int

const (
	// processes runs each DC as a `replicator run` process, which a test
	// can SIGKILL, SIGSTOP and SIGCONT.
	processes mode = iota
	// inProcess runs each DC as a pkg/node in the test process, with an
	// injected physical clock and direct access to its store.
	inProcess
)

// clusterOptions describe a cluster. Zero fields take the defaults named.
type clusterOptions struct {
	// dcs lists the DCs; default dc1, dc2, dc3.
	dcs []string
	// topology is mesh (default), ring or star; a star's hub is dcs[0].
	topology string
	mode     mode
	// partitions is the partition count; default 8.
	partitions int
	// maxClockDrift is durability.max_clock_drift; zero keeps the
	// config's default (1m).
	maxClockDrift time.Duration
	// clocks inject a DC's physical clock (inProcess only).
	clocks map[string]func() time.Time
	// reportInterval is how often DCs exchange applied vectors and purge
	// (inProcess only; processes use the default, 1s).
	reportInterval time.Duration
	// noStart leaves the DCs stopped; the test starts them.
	noStart bool
}

// cluster is one embedded JetStream server in the test process and the
// DCs replicating through it, each reaching NATS through its own proxy.
// Everything is torn down by t.Cleanup; on failure every DC's log is
// printed.
type cluster struct {
	t       *testing.T
	opts    clusterOptions
	cl      *repl.Cluster // the DCs' configs, data dirs, proxies and NATS server
	dir     string
	members []*member
	client  *http.Client
}

// member is one DC's sidecar: a process or an in-process node, started and
// stopped on the same config and data dir.
type member struct {
	c       *cluster
	name    string
	addr    string // host:port of the HTTP API
	dataDir string
	cfgPath string
	logPath string
	proxy   *repl.Proxy
	// logw is the log file of the in-process node being started.
	logw atomic.Pointer[os.File]

	mu struct {
		sync.Mutex
		cmd    *exec.Cmd
		done   chan struct{} // closed once the process has been waited for
		node   *node.Node
		logf   *os.File
		starts int
		paused bool
	}
}

func newCluster(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	if o.mode == processes {
		requireBinary(t)
	}
	if len(o.dcs) == 0 {
		o.dcs = []string{"dc1", "dc2", "dc3"}
	}
	if o.topology == "" {
		o.topology = config.Mesh
	}
	if o.partitions == 0 {
		o.partitions = 8
	}
	dir := t.TempDir()
	c := &cluster{
		t:    t,
		opts: o,
		dir:  dir,
		client: &http.Client{
			Timeout:   15 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true},
		},
	}
	// Cleanups run last-registered first: stop the DCs, print their logs
	// if the test failed, close idle connections, stop the proxies and
	// NATS.
	c.cl = repl.Start(t, repl.Options{
		DCs: o.dcs, Topology: o.topology, Partitions: o.partitions, Dir: filepath.Join(dir, "data"),
		Server:  repl.RunServer(t, repl.ServerOptions{Dir: filepath.Join(dir, "nats"), Name: "fault"}),
		Proxies: true, HTTP: true, NoStart: true, ReportInterval: o.reportInterval,
		// In-process DCs (inProcess) log to their member's log file, on
		// the injected clock.
		Logger: func(dc string) *slog.Logger {
			return slog.New(slog.NewTextHandler(c.member(dc).logw.Load(), &slog.HandlerOptions{Level: slog.LevelInfo}))
		},
		Node: func(dc string, no *node.Options) { no.Now = o.clocks[dc] },
		Config: func(cfg *config.Config) {
			cfg.Resolvers.Rules = []config.Rule{{Prefix: lwwPrefix, Resolver: config.LWW}}
			cfg.Durability.Fsync = true
			if o.maxClockDrift > 0 {
				cfg.Durability.MaxClockDrift = config.Duration(o.maxClockDrift)
			}
		},
	})
	t.Cleanup(c.client.CloseIdleConnections)
	t.Cleanup(c.dumpLogsOnFailure)
	t.Cleanup(func() {
		for _, m := range c.members {
			m.resume()
			m.halt()
		}
	})
	for _, dc := range o.dcs {
		m := &member{
			c:       c,
			name:    dc,
			addr:    c.cl.HTTPAddr(dc),
			dataDir: c.cl.DataDir(dc),
			cfgPath: filepath.Join(dir, dc+".yaml"),
			logPath: filepath.Join(dir, dc+".log"),
			proxy:   c.cl.Proxy(dc),
		}
		y, err := repl.YAML(c.cl.Config(dc))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(m.cfgPath, append([]byte("# written by test/fault\n"), y...), 0o600); err != nil {
			t.Fatal(err)
		}
		c.members = append(c.members, m)
	}
	if !o.noStart {
		c.startAll()
	}
	return c
}

// startAll starts every DC and waits until each answers /healthz.
func (c *cluster) startAll() {
	c.t.Helper()
	for _, m := range c.members {
		m.start()
	}
	for _, m := range c.members {
		m.waitHealthy(30 * time.Second)
	}
}

func (c *cluster) member(dc string) *member {
	for _, m := range c.members {
		if m.name == dc {
			return m
		}
	}
	c.t.Fatalf("no DC %q", dc)
	return nil
}

// --- NATS ---

// startNATS starts the JetStream server again on the cluster's address
// and store dir, so that it holds the same streams.
func (c *cluster) startNATS() {
	c.t.Helper()
	if err := c.cl.Server().Start(); err != nil {
		c.t.Fatalf("start NATS: %v", err)
	}
}

// stopNATS shuts the server down.
func (c *cluster) stopNATS() { c.cl.Server().Stop() }

// js connects to NATS directly (not through a DC's proxy). The connection
// is closed at the end of the test.
func (c *cluster) js() (*nats.Conn, jetstream.JetStream) {
	c.t.Helper()
	nc, err := nats.Connect(c.cl.URL(), nats.Name("fault-test"))
	if err != nil {
		c.t.Fatalf("connect to NATS: %v", err)
	}
	c.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		c.t.Fatal(err)
	}
	return nc, js
}

// streamMsg is one message of a DC's stream, and its decoded event.
type streamMsg struct {
	seq     uint64
	subject string
	header  nats.Header
	data    []byte
	ev      *event.Event
}

// readStream returns every message of dc's stream on subject (every
// subject when it is ""), in stream order, decoded.
func (c *cluster) readStream(dc, subject string) []streamMsg {
	c.t.Helper()
	nc, js := c.js()
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := jetstream.OrderedConsumerConfig{}
	if subject != "" {
		cfg.FilterSubjects = []string{subject}
	}
	cons, err := js.OrderedConsumer(ctx, names.Stream(dc), cfg)
	if err != nil {
		c.t.Fatalf("read stream %s: %v", names.Stream(dc), err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		c.t.Fatalf("read stream %s: %v", names.Stream(dc), err)
	}
	var out []streamMsg
	for left := info.NumPending; left > 0; {
		batch, err := cons.Fetch(int(min(left, 512)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			c.t.Fatalf("read stream %s: %v", names.Stream(dc), err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				c.t.Fatal(err)
			}
			ev, err := event.Decode(m.Data(), event.Limits{})
			if err != nil {
				c.t.Fatalf("%s message %d on %s: %v", names.Stream(dc), md.Sequence.Stream, m.Subject(), err)
			}
			out = append(out, streamMsg{seq: md.Sequence.Stream, subject: m.Subject(), header: m.Headers(), data: m.Data(), ev: ev})
		}
		if err := batch.Error(); err != nil {
			c.t.Fatalf("read stream %s: %v", names.Stream(dc), err)
		}
		if got == 0 {
			break
		}
		left -= uint64(got)
	}
	return out
}

// streamEvents returns the events of dc's stream in stream order.
func (c *cluster) streamEvents(dc string) []*event.Event {
	msgs := c.readStream(dc, "")
	out := make([]*event.Event, len(msgs))
	for i, m := range msgs {
		out[i] = m.ev
	}
	return out
}

// findEvent returns origin's own event putting value at key, from
// origin's stream, or nil if there is none.
func (c *cluster) findEvent(origin, key, value string) *event.Event {
	for _, m := range c.readStream(origin, names.Subject(origin, event.PartitionOf(key, c.opts.partitions))) {
		ev := m.ev
		if ev.Origin == origin && ev.Key == key && string(ev.Value) == value && ev.Op == event.OpPut {
			return ev
		}
	}
	return nil
}

// --- members ---

// start runs the DC: `replicator run --config FILE`, its output appended
// to the DC's log file, or an in-process node logging to the same file.
func (m *member) start() {
	t := m.c.t
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.cmd != nil || m.mu.node != nil {
		t.Fatalf("%s: start: already running", m.name)
	}
	m.mu.starts++
	f, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "===== fault: start #%d of %s at %s\n", m.mu.starts, m.name, time.Now().Format(time.RFC3339Nano))
	if m.c.opts.mode == inProcess {
		m.mu.logf = f
		m.mu.node = m.startNode(f)
		return
	}
	defer f.Close() // the child has its own copy of the descriptor
	cmd := exec.Command(binPath, "run", "--config", m.cfgPath)
	cmd.Stdout = f
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start %s: %v", m.name, binPath, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait() // the exit status is read from cmd.ProcessState after done
		close(done)
	}()
	m.mu.cmd, m.mu.done = cmd, done
}

// startNode starts the DC as a node of the cluster, logging to logf.
func (m *member) startNode(logf *os.File) *node.Node {
	t := m.c.t
	m.logw.Store(logf)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.c.cl.StartDC(ctx, m.name); err != nil {
		t.Fatalf("%s: %v", m.name, err)
	}
	return m.c.cl.Node(m.name)
}

// node returns the DC's in-process node, or nil.
func (m *member) node() *node.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.node
}

// running reports whether the DC is started and, for a process, has not
// exited.
func (m *member) running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.node != nil {
		return true
	}
	if m.mu.cmd == nil {
		return false
	}
	select {
	case <-m.mu.done:
		return false
	default:
		return true
	}
}

// exited reports whether the process has exited, and how.
func (m *member) exited() (bool, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.node != nil {
		return false, ""
	}
	if m.mu.cmd == nil {
		return true, "not started"
	}
	select {
	case <-m.mu.done:
		return true, m.mu.cmd.ProcessState.String()
	default:
		return false, ""
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (m *member) kill() {
	m.c.t.Helper()
	m.mu.Lock()
	cmd, done := m.mu.cmd, m.mu.done
	m.mu.cmd, m.mu.done, m.mu.paused = nil, nil, false
	m.mu.Unlock()
	if m.c.opts.mode == inProcess {
		m.c.t.Fatalf("%s: kill: in-process nodes cannot be killed", m.name)
	}
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}

// halt stops the DC however it runs: SIGKILL for a process (the test is
// over), Close for a node.
func (m *member) halt() {
	m.mu.Lock()
	n, f := m.mu.node, m.mu.logf
	m.mu.node, m.mu.logf = nil, nil
	m.mu.Unlock()
	if n != nil {
		if err := m.c.cl.StopDC(m.name); err != nil {
			m.c.t.Errorf("%s: %v", m.name, err)
		}
		f.Close()
		return
	}
	if m.c.opts.mode == processes {
		m.kill()
	}
}

// stop shuts the DC down gracefully (SIGTERM, or Close) and requires a
// clean exit within timeout.
func (m *member) stop(timeout time.Duration) error {
	if m.c.opts.mode == inProcess {
		m.mu.Lock()
		n, f := m.mu.node, m.mu.logf
		m.mu.node, m.mu.logf = nil, nil
		m.mu.Unlock()
		if n == nil {
			return fmt.Errorf("%s: not running", m.name)
		}
		defer f.Close()
		return m.c.cl.StopDC(m.name)
	}
	m.mu.Lock()
	cmd, done := m.mu.cmd, m.mu.done
	m.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("%s: not running", m.name)
	}
	err := sidecar.Terminate(m.name, cmd, done, timeout)
	m.mu.Lock()
	m.mu.cmd, m.mu.done = nil, nil
	m.mu.Unlock()
	return err
}

// pause stops the process with SIGSTOP: it keeps its sockets but runs no
// code, as a DC whose machine hangs.
func (m *member) pause() {
	m.c.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.cmd == nil {
		m.c.t.Fatalf("%s: pause: not a running process", m.name)
	}
	if err := m.mu.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		m.c.t.Fatalf("%s: SIGSTOP: %v", m.name, err)
	}
	m.mu.paused = true
}

// resume sends SIGCONT to a paused process.
func (m *member) resume() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.cmd == nil || !m.mu.paused {
		return
	}
	if err := m.mu.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		m.c.t.Errorf("%s: SIGCONT: %v", m.name, err)
	}
	m.mu.paused = false
}

func (m *member) url(path string) string { return "http://" + m.addr + path }

// waitHealthy polls /healthz until it answers 200. It fails the test if
// the process exits first or the deadline passes.
func (m *member) waitHealthy(timeout time.Duration) time.Duration {
	t := m.c.t
	t.Helper()
	begin := time.Now()
	sidecar.WaitHealthy(t, m.c.client, m.name, m.url(""), m.exited, timeout, 10*time.Millisecond)
	return time.Since(begin)
}

// dumpLogsOnFailure prints the tail of every DC's log when the test
// failed.
func (c *cluster) dumpLogsOnFailure() {
	if !c.t.Failed() {
		return
	}
	for _, m := range c.members {
		sidecar.DumpLog(c.t, m.name, m.logPath, 32<<10)
	}
}

// checkLogs summarises each DC's ERROR and WARN lines, and fails the test
// if a DC panicked, crashed or reported a data race.
func (c *cluster) checkLogs() {
	c.t.Helper()
	for _, m := range c.members {
		m.mu.Lock()
		started := m.mu.starts > 0
		m.mu.Unlock()
		if !started {
			continue
		}
		sidecar.CheckLog(c.t, m.name, m.logPath)
	}
}
