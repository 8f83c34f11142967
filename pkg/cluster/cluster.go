// Package cluster starts a set of DCs in one process on an embedded NATS
// server: every integration test, `replicator demo` and `replicator bench`
// describe and start their clusters with it.
//
// A cluster is N DCs (dc1..dcN unless named) in a mesh, ring or star, each
// with its own Pebble directory, on one embedded JetStream server (or on
// servers the caller runs: clusters, leafnodes, TLS, auth). A DC runs as a
// full sidecar (pkg/node) or, for the bridge's own tests, as a bare
// replication engine (a changelog.Store and a bridge.Replicator). Each DC
// can reach NATS through its own Proxy, so that a test can cut and heal
// its link; a DC can be stopped and started again on the same data dir,
// and the server restarted on the same port and store.
//
// The waits (Wait, Eventually, WaitConverged) check a condition until a
// deadline; none sleeps for a guessed time. Hold is the one timed pause:
// the length of a fault, named as such.
//
//	c := cluster.Start(t, cluster.Options{Topology: "ring", N: 3})
//	c.Node("dc1").Write(ctx, op)
//	c.Cut("dc2")
//	cluster.Hold(2*time.Second, nil)
//	c.Heal("dc2")
//	c.WaitConverged(t, 30*time.Second)
//
// Internal to the sidecar: the test cluster of its tests, demo and bench,
// not a stable Go API.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/node"
)

// Options describe a cluster. Zero fields take the defaults named.
type Options struct {
	// DCs names the DCs; default dc1..dcN.
	DCs []string
	// N is the number of DCs when DCs is empty; default 3.
	N int
	// Topology is mesh (default), ring or star.
	Topology string
	// Hub is a star's hub; default the first DC.
	Hub string
	// Partitions is each DC's partition count; default 8.
	Partitions int
	// Dir holds the DCs' data (Dir/<dc>) and the embedded server's store
	// (Dir/nats). Required by New; Start defaults it to a temporary
	// directory.
	Dir string

	// Server is the NATS server to use; default a fresh embedded JetStream
	// server under Dir/nats, which Close stops.
	Server *Server
	// ServerName names that default server.
	ServerName string
	// URL, when set, gives each DC's NATS URL (servers the caller runs)
	// instead of Server's.
	URL func(dc string) string
	// Proxies puts a Proxy between each DC and NATS, for Cut and Heal.
	Proxies bool

	// Engine runs each DC as a bare replication engine (a changelog.Store
	// and a bridge.Replicator on its own NATS connection) instead of a
	// node; Bridge then adjusts each Replicator's options.
	Engine bool
	Bridge func(dc string, o *bridge.Options)

	// HTTP serves each node's HTTP API on a loopback address chosen once,
	// kept across restarts (see HTTPAddr).
	HTTP bool
	// Config adjusts each node's config (resolvers, home rules, NATS auth,
	// durability) before it is completed and validated.
	Config func(cfg *config.Config)
	// Node adjusts each node's options (clock, registry).
	Node func(dc string, o *node.Options)
	// ReportInterval is how often DCs exchange applied vectors; default
	// the product's (nodes) or the bridge's (engines).
	ReportInterval time.Duration
	// Logger gives each DC its logger; default none.
	Logger func(dc string) *slog.Logger

	// NoStart leaves the DCs stopped; StartAll or StartDC starts them.
	NoStart bool
	// StartTimeout bounds one DC's start; default 40s.
	StartTimeout time.Duration
}

func (o *Options) defaults() {
	if len(o.DCs) == 0 {
		if o.N == 0 {
			o.N = 3
		}
		for i := 1; i <= o.N; i++ {
			o.DCs = append(o.DCs, fmt.Sprintf("dc%d", i))
		}
	}
	o.N = len(o.DCs)
	if o.Topology == "" {
		o.Topology = config.Mesh
	}
	if o.Topology == config.Star && o.Hub == "" {
		o.Hub = o.DCs[0]
	}
	if o.Partitions == 0 {
		o.Partitions = 8
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 40 * time.Second
	}
}

// Cluster is a set of DCs on NATS.
type Cluster struct {
	o       Options
	srv     *Server
	ownsSrv bool
	dcs     []*dc
	byName  map[string]*dc
}

// dc is one DC: what stays across restarts, and what runs.
type dc struct {
	name    string
	dataDir string
	proxy   *Proxy

	// addrOnce picks httpAddr (Options.HTTP) when it is first asked for,
	// usually at the DC's first start, and keeps it across restarts:
	// picked any earlier, a port free at New can be taken by another
	// socket before a DC that starts late (a joining one) listens on it.
	addrOnce sync.Once
	httpAddr string

	mu struct {
		sync.Mutex
		node  *node.Node
		store *changelog.Store // an engine's
		nc    *nats.Conn       // an engine's connection
		repl  *bridge.Replicator
		// past holds the stats of the DC's earlier Replicators, so that a
		// test can count across restarts.
		past []bridge.Stats
	}
}

// New starts the server (unless o.Server is given), the proxies and,
// unless o.NoStart, every DC. The caller closes the cluster, also after
// an error.
func New(ctx context.Context, o Options) (*Cluster, error) {
	o.defaults()
	if o.Dir == "" {
		return nil, errors.New("cluster: Options.Dir is required")
	}
	c := &Cluster{o: o, srv: o.Server, byName: map[string]*dc{}}
	if c.srv == nil && o.URL == nil {
		srv, err := StartServer(ServerOptions{Dir: filepath.Join(o.Dir, "nats"), Name: o.ServerName})
		if err != nil {
			return c, err
		}
		c.srv, c.ownsSrv = srv, true
	}
	for _, name := range o.DCs {
		d := &dc{name: name, dataDir: filepath.Join(o.Dir, name)}
		if o.Proxies {
			p, err := StartProxy(c.target(name))
			if err != nil {
				return c, err
			}
			d.proxy = p
		}
		c.dcs = append(c.dcs, d)
		c.byName[name] = d
	}
	if !o.NoStart {
		if err := c.StartAll(ctx); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Start is New for tests: the cluster lives in a temporary directory
// unless o.Dir says otherwise, fails t if it does not start, and closes at
// the end of the test.
func Start(t TB, o Options) *Cluster {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	c, err := New(context.Background(), o)
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	return c
}

// target is the address a DC's proxy forwards to.
func (c *Cluster) target(name string) string {
	u := c.serverURL(name)
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
	}
	return u
}

func (c *Cluster) serverURL(name string) string {
	if c.o.URL != nil {
		return c.o.URL(name)
	}
	return c.srv.URL()
}

// NATSURL is the URL DC name dials: its proxy's, or the server's.
func (c *Cluster) NATSURL(name string) string {
	if d := c.dc(name); d.proxy != nil {
		return d.proxy.URL()
	}
	return c.serverURL(name)
}

func (c *Cluster) dc(name string) *dc {
	d, ok := c.byName[name]
	if !ok {
		panic(fmt.Sprintf("cluster: no DC %q (have %v)", name, c.o.DCs)) // a test's typo, not input
	}
	return d
}

// Names returns the DCs' names in order.
func (c *Cluster) Names() []string { return slices.Clone(c.o.DCs) }

// Topology is the cluster's topology; Hub its hub when a star.
func (c *Cluster) Topology() string { return c.o.Topology }

// Hub is a star's hub, or "".
func (c *Cluster) Hub() string { return c.o.Hub }

// Partitions is every DC's partition count.
func (c *Cluster) Partitions() int { return c.o.Partitions }

// Server is the cluster's NATS server (nil when o.URL names others).
func (c *Cluster) Server() *Server { return c.srv }

// URL is the server's client URL, for a test's own connections (not
// through any proxy).
func (c *Cluster) URL() string { return c.serverURL(c.o.DCs[0]) }

// Proxy is DC name's proxy, or nil without Options.Proxies.
func (c *Cluster) Proxy(name string) *Proxy { return c.dc(name).proxy }

// Cut cuts DC name's link to NATS (Options.Proxies).
func (c *Cluster) Cut(name string) { c.dc(name).proxy.Cut() }

// Heal restores DC name's link to NATS.
func (c *Cluster) Heal(name string) { c.dc(name).proxy.Heal() }

// DataDir is DC name's data directory.
func (c *Cluster) DataDir(name string) string { return c.dc(name).dataDir }

// SetDataDir points DC name, stopped, at another data directory (a
// restored backup) for its next start.
func (c *Cluster) SetDataDir(name, dir string) { c.dc(name).dataDir = dir }

// HTTPAddr is DC name's HTTP API address (Options.HTTP), host:port.
func (c *Cluster) HTTPAddr(name string) string { return c.httpAddr(c.dc(name)) }

// httpAddr is d's HTTP API address, picked on first use; "" without
// Options.HTTP.
func (c *Cluster) httpAddr(d *dc) string {
	if !c.o.HTTP {
		return ""
	}
	d.addrOnce.Do(func() {
		addr, err := freeAddr()
		if err != nil {
			// No free port now: let the node pick one when it listens
			// (its own HTTPAddr reports it).
			addr = "127.0.0.1:0"
		}
		d.httpAddr = addr
	})
	return d.httpAddr
}

// BaseURL is DC name's HTTP API root, http://host:port.
func (c *Cluster) BaseURL(name string) string { return "http://" + c.HTTPAddr(name) }

// Config is DC name's node config.
func (c *Cluster) Config(name string) config.Config {
	d := c.dc(name)
	cfg := config.Default()
	cfg.DC, cfg.DCs, cfg.Topology, cfg.Hub = name, slices.Clone(c.o.DCs), c.o.Topology, c.o.Hub
	cfg.Partitions = c.o.Partitions
	cfg.DataDir = d.dataDir
	cfg.NATS.URL = c.NATSURL(name)
	if addr := c.httpAddr(d); addr != "" {
		cfg.HTTP.Listen = addr
	}
	if c.o.Config != nil {
		c.o.Config(&cfg)
	}
	cfg.Complete()
	return cfg
}

// YAML renders a config as a config file, for `replicator run --config`.
func YAML(cfg config.Config) ([]byte, error) {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster: config of %s: %w", cfg.DC, err)
	}
	return b, nil
}

// WriteConfig writes DC name's config file at path.
func (c *Cluster) WriteConfig(name, path string) error {
	b, err := YAML(c.Config(name))
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// StartAll starts every stopped DC, concurrently (a cluster's JetStream
// is faster asked in parallel).
func (c *Cluster) StartAll(ctx context.Context) error {
	return c.StartDCs(ctx, c.o.DCs...)
}

// StartDCs starts the named DCs concurrently.
func (c *Cluster) StartDCs(ctx context.Context, names ...string) error {
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { errs[i] = c.StartDC(ctx, name) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StartDC starts DC name on its data dir; a running DC is left alone.
func (c *Cluster) StartDC(ctx context.Context, name string) error {
	if c.o.Engine {
		if err := c.OpenStore(name); err != nil {
			return err
		}
		return c.StartReplicator(ctx, name)
	}
	d := c.dc(name)
	d.mu.Lock()
	running := d.mu.node != nil
	d.mu.Unlock()
	if running {
		return nil
	}
	opts := node.Options{Logger: c.logger(name), ReportInterval: c.o.ReportInterval, NoHTTP: !c.o.HTTP}
	if c.o.Node != nil {
		c.o.Node(name, &opts)
	}
	n, err := node.New(c.Config(name), opts)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	sctx, cancel := context.WithTimeout(ctx, c.o.StartTimeout)
	defer cancel()
	if err := n.Start(sctx); err != nil {
		n.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	d.mu.Lock()
	d.mu.node = n
	d.mu.Unlock()
	return nil
}

func (c *Cluster) logger(name string) *slog.Logger {
	if c.o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.o.Logger(name)
}

// StopDC closes DC name (its node, or its engine's Replicator and store),
// keeping its data dir; a stopped DC is left alone.
func (c *Cluster) StopDC(name string) error {
	if c.o.Engine {
		err := c.StopReplicator(name)
		return errors.Join(err, c.CloseStore(name))
	}
	d := c.dc(name)
	d.mu.Lock()
	n := d.mu.node
	d.mu.node = nil
	d.mu.Unlock()
	if n == nil {
		return nil
	}
	err := n.Close()
	if r := n.Replicator(); r != nil {
		d.mu.Lock()
		d.mu.past = append(d.mu.past, r.Stats())
		d.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	return nil
}

// RestartDC stops DC name and starts it again on the same data dir.
func (c *Cluster) RestartDC(ctx context.Context, name string) error {
	if err := c.StopDC(name); err != nil {
		return err
	}
	return c.StartDC(ctx, name)
}

// Running reports whether DC name is started.
func (c *Cluster) Running(name string) bool {
	d := c.dc(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.node != nil || d.mu.store != nil
}

// Node is DC name's node, or nil when it is stopped (or an engine).
func (c *Cluster) Node(name string) *node.Node {
	d := c.dc(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.node
}

// Nodes are the running nodes, in the DCs' order.
func (c *Cluster) Nodes() []*node.Node {
	var out []*node.Node
	for _, d := range c.dcs {
		if n := c.Node(d.name); n != nil {
			out = append(out, n)
		}
	}
	return out
}

// Store is DC name's store, or nil when it is stopped.
func (c *Cluster) Store(name string) *changelog.Store {
	d := c.dc(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.node != nil {
		return d.mu.node.Store()
	}
	return d.mu.store
}

// Stores are the running DCs' stores, in the DCs' order.
func (c *Cluster) Stores() []*changelog.Store {
	var out []*changelog.Store
	for _, d := range c.dcs {
		if st := c.Store(d.name); st != nil {
			out = append(out, st)
		}
	}
	return out
}

// Replicator is DC name's running Replicator, or nil.
func (c *Cluster) Replicator(name string) *bridge.Replicator {
	d := c.dc(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.node != nil {
		return d.mu.node.Replicator()
	}
	return d.mu.repl
}

// Stats are DC name's bridge counters summed over every Replicator it ran
// so far (a restart starts a new one at zero).
func (c *Cluster) Stats(name string) bridge.Stats {
	d := c.dc(name)
	d.mu.Lock()
	all := slices.Clone(d.mu.past)
	d.mu.Unlock()
	if r := c.Replicator(name); r != nil {
		all = append(all, r.Stats())
	}
	var s bridge.Stats
	for _, x := range all {
		s.Published += x.Published
		s.PublishErrors += x.PublishErrors
		s.PublishDuplicates += x.PublishDuplicates
		s.Applied += x.Applied
		s.Obsolete += x.Obsolete
		s.Duplicates += x.Duplicates
		s.LoopsDropped += x.LoopsDropped
		s.DeadLetters += x.DeadLetters
		s.Repairs += x.Repairs
		s.RepairedEvents += x.RepairedEvents
		s.Gaps += x.Gaps
		s.Forwarded += x.Forwarded
		s.Replays += x.Replays
		s.ReportsSent += x.ReportsSent
		s.ReportBytes += x.ReportBytes
		s.Expired += x.Expired
	}
	return s
}

// Close stops every DC, the proxies and the server the cluster started;
// calling it again, or on the nil a failed New may return, is harmless.
func (c *Cluster) Close() error {
	if c == nil {
		return nil
	}
	var errs []error
	for _, d := range c.dcs {
		errs = append(errs, c.StopDC(d.name))
		if c.o.Engine {
			c.closeConn(d)
		}
		if d.proxy != nil {
			d.proxy.Close()
		}
	}
	if c.ownsSrv && c.srv != nil {
		c.srv.Stop()
	}
	return errors.Join(errs...)
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr() (string, error) {
	handed.Lock()
	defer handed.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := ln.Addr().String()
		ln.Close()
		// The kernel may hand a closed port out again at once: a test
		// that asks for two addresses before it listens on either (dc1's
		// and dc3's sidecars) must not get the same one twice.
		if !handed.addrs[addr] {
			handed.addrs[addr] = true
			return addr, nil
		}
	}
}

// handed is every address freeAddr returned in this process.
var handed = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// FreeAddr is a loopback host:port that was free a moment ago, for a
// listener a test starts later.
func FreeAddr(t TB) string {
	t.Helper()
	addr, err := freeAddr()
	if err != nil {
		t.Fatalf("free address: %v", err)
	}
	return addr
}

// clock is an engine store's clock.
func clock() *hlc.Clock { return hlc.New(time.Now, time.Minute) }
