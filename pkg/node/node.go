// Package node wires one DC's sidecar: the Pebble change log, the
// resolvers, the JetStream bridge and the HTTP API.
//
//	n, err := node.New(cfg, node.Options{Logger: log})
//	err = n.Start(ctx) // NATS, streams, consumers, publisher, HTTP
//	...
//	n.Close()          // stop intake, flush the outbox, close Pebble
//
// Internal to the sidecar: not a stable Go API.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/antientropy"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/external"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/home"
	"github.com/replicatorhq/replicator/pkg/httpapi"
	"github.com/replicatorhq/replicator/pkg/join"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/natsapi"
	"github.com/replicatorhq/replicator/pkg/setup"
	"github.com/replicatorhq/replicator/resolve"
)

// Options carry what a config file cannot: the logger, the metrics
// registry, and for one-process setups a NATS URL to use instead of the
// config's.
type Options struct {
	Logger *slog.Logger
	// Registry receives the node's metrics; nil makes a private one.
	Registry *prometheus.Registry
	// NATSURL, if set, overrides the config's NATS settings (the demo runs
	// every DC against one embedded server).
	NATSURL string
	// NoHTTP skips the HTTP listener (the demo and tests drive the node
	// directly).
	NoHTTP bool
	// Now is the physical clock; default time.Now.
	Now func() time.Time
	// ReportInterval overrides the applied-vector exchange interval.
	ReportInterval time.Duration
	// HomeProbeInterval overrides how often home rules' views are probed
	// (home.DefaultProbeInterval).
	HomeProbeInterval time.Duration
}

// Node is one DC's running sidecar.
type Node struct {
	cfg   config.Config
	opts  Options
	log   *slog.Logger
	clock *hlc.Clock
	rules *resolve.Rules
	store *changelog.Store
	hub   *httpapi.Hub
	reg   *prometheus.Registry
	// pubLatency is the publish latency histogram.
	pubLatency prometheus.Histogram
	// arbiter resolves external-resolver conflicts; only at the arbiter DC
	// of a configuration with an external rule.
	arbiter *external.Worker
	// home routes writes to keys with a home DC; every write goes
	// through it (Write).
	home *home.Router

	ns   *server.Server
	nc   *nats.Conn
	svc  micro.Service
	ae   *antientropy.Worker
	snap *join.Server
	repl *bridge.Replicator
	http *http.Server
	ln   net.Listener

	// shards routes requests among the DC's sidecars; nil unless the DC
	// runs several (shard.go).
	shards *shards
	// api is the sidecar's own HTTP API.
	api http.Handler

	once sync.Once
	// fatal receives the error that stopped the store (see Fatal).
	fatal chan error
	// stopAPI is closed at shutdown; stopOnce closes it.
	stopAPI  chan struct{}
	stopOnce sync.Once
}

// Fatal delivers the error that stopped the DC's store for good (a failed
// WAL write or sync, invariant 17 in docs/DESIGN.md). The sidecar must then
// close and exit non-zero, for its supervisor to restart it.
func (n *Node) Fatal() <-chan error { return n.fatal }

// New opens the DC's store. It starts nothing; Start connects and serves.
func New(cfg config.Config, opts Options) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	rules, err := setup.Rules(cfg)
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:   cfg,
		opts:  opts,
		log:   opts.Logger.With("dc", cfg.DC),
		clock: setup.NewClock(cfg, opts.Now),
		rules: rules,
		hub:   httpapi.NewHub(256),
		reg:   opts.Registry,
		fatal: make(chan error, 1),
		// Closed at shutdown: continuous change feeds end, as watchers do.
		stopAPI: make(chan struct{}),
	}
	st, err := setup.OpenStore(cfg, setup.Hooks{
		Rules:    rules,
		Clock:    n.clock,
		Now:      opts.Now,
		OnCommit: n.onCommit,
		OnFatal: func(err error) {
			select {
			case n.fatal <- err:
			default:
			}
		},
		Logger: n.log,
	})
	if err != nil {
		return nil, err
	}
	if peer, ok, err := st.JoinIncomplete(); err != nil || ok {
		st.Close()
		if err == nil {
			err = fmt.Errorf("node: the store at %s holds part of a snapshot of %s: a join was interrupted; run `replicator join --force --from DC` again", setup.StoreDir(cfg), peer)
		}
		return nil, err
	}
	n.clock.Restore(st.HLCHighWater())
	n.store = st
	if cfg.Sharded() {
		n.shards = newShards(n)
	}
	if hasExternal(cfg) && external.Arbiter(cfg.DCs) == cfg.DC {
		n.arbiter = external.New(external.Options{Store: st, Rules: rules, Logger: n.log})
	}
	hopts := home.Options{DC: cfg.DC, Rules: HomeRules(cfg), Epochs: st, Local: st.Write, Logger: n.log, Now: opts.Now, ProbeInterval: opts.HomeProbeInterval}
	if n.shards != nil {
		hopts.Siblings = n.shards
	}
	if n.home, err = home.New(hopts); err != nil {
		st.Close()
		return nil, err
	}
	n.pubLatency = newPublishLatency(cfg.DC)
	for _, c := range []prometheus.Collector{newCollector(n), n.pubLatency} {
		if err := n.reg.Register(c); err != nil {
			st.Close()
			return nil, fmt.Errorf("node: register metrics: %w", err)
		}
	}
	if err := registerRuntime(n.reg, cfg.DC); err != nil {
		st.Close()
		return nil, err
	}
	return n, nil
}

// HomeRules builds the home-DC rules of a config.
func HomeRules(cfg config.Config) []home.Rule {
	var out []home.Rule
	for _, r := range cfg.Home {
		out = append(out, home.Rule{Prefix: r.Prefix, DCs: r.DCs, Failover: r.Policy == config.PolicyFailover, Timeout: time.Duration(r.Timeout)})
	}
	return out
}

// Start connects to NATS (starting the embedded server when configured),
// starts replication and serves HTTP.
func (n *Node) Start(ctx context.Context) error {
	url := n.opts.NATSURL
	if url == "" && n.cfg.NATS.UseEmbedded() {
		host, port, err := splitListen(n.cfg.NATS.Listen)
		if err != nil {
			return err
		}
		ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{
			StoreDir: filepath.Join(n.cfg.DataDir, "nats"), Host: host, Port: port,
			JetStream: true, ServerName: n.cfg.DC, Domain: n.cfg.NATS.Domain,
			User: n.cfg.NATS.User, Password: n.cfg.NATS.Password, Token: n.cfg.NATS.Token,
		})
		if err != nil {
			return err
		}
		n.ns = ns
		url = ns.ClientURL()
	} else if url == "" {
		url = n.cfg.NATS.URL
	}
	nc, err := setup.Connect(n.cfg, setup.ConnOptions{URL: url, Forever: true, Logger: n.log})
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	n.nc = nc
	if mp := nc.MaxPayload(); mp > 0 {
		// A transaction is one message: it must fit the server's
		// max_payload with room for its headers.
		n.store.CapTxnBytes(int(mp) - txnHeaderRoom)
	}
	plan, err := bridge.NewPlan(n.cfg.Topology, n.cfg.DC, n.cfg.DCs, n.cfg.Hub)
	if err != nil {
		return err
	}
	lim := event.Limits{MaxEventBytes: n.cfg.Limits.MaxEventBytes, MaxKeyBytes: n.cfg.Limits.MaxKeyBytes, MaxValueBytes: n.cfg.Limits.MaxValueBytes}
	var owned []uint32
	var coord core.Coordinator
	shard := ""
	if n.shards != nil {
		owned, shard, coord = n.shards.list, names.ShardName(n.shards.shard.Index, n.shards.shard.Count), n.shards
		if err := n.shards.checkAlone(ctx, nc); err != nil {
			return err
		}
		if err := n.shards.loadPrepared(ctx); err != nil {
			return err
		}
	}
	repl, err := bridge.New(bridge.Options{
		Owned: owned, Shard: shard, Coordinator: coord,
		Store: n.store, NC: nc, Domain: n.cfg.NATS.Domain, Plan: plan, DCs: n.cfg.DCs,
		Partitions: n.cfg.Partitions, Limits: lim, Logger: n.opts.Logger, Now: n.opts.Now,
		ObservePublish: func(d time.Duration) { n.pubLatency.Observe(d.Seconds()) },
		Stream: bridge.StreamOptions{
			Replicas:        n.cfg.Durability.StreamReplicas,
			DuplicateWindow: time.Duration(n.cfg.Durability.DuplicateWindow),
			Placement:       streamPlacement(n.cfg.NATS.Placement),
		},
		ReportInterval:  n.opts.ReportInterval,
		StreamRetention: time.Duration(n.cfg.Durability.StreamRetention),
		HealAfter:       time.Duration(n.cfg.HealAfter),
		StandbyHub:      n.cfg.StandbyHub,
		ExpiryTakeover:  time.Duration(n.cfg.ExpiryTakeover),
	})
	if err != nil {
		return err
	}
	n.repl = repl
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := repl.Start(startCtx); err != nil {
		return err
	}
	// Everything that can write starts after the bridge, which first
	// makes sure this DC never reissues a sequence its stream holds.
	ae, err := antientropy.New(antientropy.Options{
		Store: n.store, NC: nc, DC: n.cfg.DC, DCs: n.cfg.DCs, Partitions: n.cfg.Partitions, Logger: n.log, Owned: owned,
	})
	if err != nil {
		return err
	}
	if err := ae.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	n.ae = ae
	// A shard serves join's snapshots of its own partitions, each on
	// repl.snap.<dc>.<p> (docs/DESIGN.md, invariant 16).
	snap, err := join.NewServer(join.ServerOptions{Store: n.store, NC: nc, Logger: n.log, Owned: owned})
	if err != nil {
		return err
	}
	if err := snap.Start(ctx); err != nil {
		return err
	}
	n.snap = snap
	if err := n.home.Start(ctx, nc); err != nil {
		return err
	}
	var route natsapi.Route
	if n.shards != nil {
		route = n.shards.route
	}
	svc, direct, err := natsapi.ServeRouted(nc, n.cfg.DC, n.store, n.rules, n.Write, n.WriteTxn, route)
	if err != nil {
		return err
	}
	n.svc = svc
	if n.shards != nil {
		// A shard serves the other shards' forwarded requests and gathers
		// (shard.go).
		n.shards.api, n.shards.local = direct, n.apiHandler()
		if err := n.shards.start(ctx, nc); err != nil {
			return err
		}
	}
	if n.arbiter != nil {
		n.arbiter.SetConn(nc)
		n.arbiter.Start(ctx)
	}
	if n.opts.NoHTTP {
		return nil
	}
	return n.serveHTTP()
}

// Handler is the sidecar's HTTP API: for a shard of a sharded DC, the
// router among the shards (shard.go). Set by Start.
func (n *Node) Handler() http.Handler {
	if n.shards != nil {
		return n.shards
	}
	return n.api
}

// apiHandler builds the sidecar's own HTTP API once.
func (n *Node) apiHandler() http.Handler {
	if n.api != nil {
		return n.api
	}
	n.api = httpapi.New(httpapi.StoreBackend{Store: n.store, Rules: n.rules, WriteFn: n.Write, WriteTxnFn: n.WriteTxn, StatusFn: func() any { return n.Status() }, ReadyFn: n.ready, ReadinessFn: n.readiness, DigestsFn: n.digests, DeadLettersFn: n.deadLetters}, httpapi.Options{
		Token: n.cfg.HTTP.Token, MaxBodyBytes: int64(n.cfg.HTTP.MaxBodyBytes), MaxValueBytes: n.cfg.Limits.MaxValueBytes, MaxKeyBytes: n.cfg.Limits.MaxKeyBytes,
		Registry: n.reg, MetricLabels: prometheus.Labels{"dc": n.cfg.DC}, Logger: n.log, Watch: n.hub, Stop: n.stopAPI,
	})
	return n.api
}

func (n *Node) serveHTTP() error {
	if err := httpapi.CheckListen(n.cfg.HTTP.Listen, n.cfg.HTTP.Token); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", n.cfg.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("node: http.listen %s: %w", n.cfg.HTTP.Listen, err)
	}
	n.apiHandler()
	n.ln = ln
	n.http = &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 10 * time.Second}
	// Watch streams end when the hub closes; without this, Shutdown would
	// wait for every watcher to leave.
	n.http.RegisterOnShutdown(n.hub.Close)
	n.http.RegisterOnShutdown(n.closeStopAPI)
	go func() {
		if err := n.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("http server stopped", "err", err)
		}
	}()
	n.log.Info("serving HTTP", "addr", ln.Addr().String())
	return nil
}

// HTTPAddr is the address the API listens on, once started.
func (n *Node) HTTPAddr() string {
	if n.ln == nil {
		return ""
	}
	return n.ln.Addr().String()
}

func splitListen(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("nats.listen %q: %w", addr, err)
	}
	var p int
	if _, err := fmt.Sscan(port, &p); err != nil {
		return "", 0, fmt.Errorf("nats.listen %q: port is not a number", addr)
	}
	return host, p, nil
}

// Write commits a write durably and returns the new state. It is the one
// entry of application writes (HTTP, NATS API, demo): a key with a home DC
// elsewhere is written there (pkg/home), any other key here.
func (n *Node) Write(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error) {
	return n.home.Write(ctx, op)
}

// txnHeaderRoom is what a transaction's message keeps free of its
// max_payload for its NATS headers (Repl-Seq-His lists every partition).
const txnHeaderRoom = 64 << 10

// WriteTxn commits the ops of one transaction at this DC in one durable
// batch (changelog.Store.WriteTxn). It is the one entry of application
// transactions (HTTP, NATS API). A transaction is never forwarded to a
// home DC: every key of it with a home rule must be homed here (see
// home.Router.WriteHere).
func (n *Node) WriteTxn(ctx context.Context, ops []changelog.WriteOp) ([]changelog.WriteResult, error) {
	keys := make([]string, len(ops))
	for i, op := range ops {
		keys[i] = op.Key
	}
	var res []changelog.WriteResult
	err := n.home.WriteHere(keys, func() error {
		var err error
		res, err = n.store.WriteTxn(ctx, ops)
		return err
	})
	return res, err
}

// Read returns what the key's resolver shows and the state behind it.
func (n *Node) Read(key string) (resolve.Result, dvv.State, bool, error) {
	st, ok, err := n.store.Get(key)
	if err != nil || !ok {
		return resolve.Result{Deleted: true}, st, ok, err
	}
	return n.rules.For(key).Resolve(key, st.Siblings), st, true, nil
}

// Store returns the DC's change log.
func (n *Node) Store() *changelog.Store { return n.store }

// Replicator returns the DC's bridge, once started.
func (n *Node) Replicator() *bridge.Replicator { return n.repl }

// Rules returns the resolver rules.
func (n *Node) Rules() *resolve.Rules { return n.rules }

// Home returns the DC's home-DC router.
func (n *Node) Home() *home.Router { return n.home }

// Status is what /v1/status shows.
type Status struct {
	DC         string         `json:"dc"`
	Topology   string         `json:"topology"`
	DCs        []string       `json:"dcs"`
	Partitions int            `json:"partitions"`
	Bridge     *bridge.Status `json:"bridge,omitempty"`
	// Home is this DC's view of each home rule: its current home and
	// fencing epoch.
	Home []home.RuleStatus `json:"home,omitempty"`
	// Edges are every replication link of the topology, not only this
	// DC's: the status page draws them.
	Edges []bridge.Edge `json:"edges"`
	// Conflicts counts the conflict log: entries held (logged and
	// resolved; open records are listed by GET /v1/conflicts?status=open)
	// and conflicts detected since this sidecar started, by resolver.
	Conflicts ConflictCounts `json:"conflicts"`
}

// ConflictCounts is the conflict log's figures in /v1/status.
type ConflictCounts struct {
	Held       int64             `json:"held"`
	SinceStart map[string]uint64 `json:"since_start"`
}

// Status returns the node's status.
func (n *Node) Status() Status {
	s := Status{DC: n.cfg.DC, Topology: n.cfg.Topology, DCs: n.cfg.DCs, Partitions: n.cfg.Partitions}
	// The config was validated, so the plans build.
	s.Edges, _ = bridge.Edges(n.cfg.Topology, n.cfg.DCs, n.cfg.Hub)
	if n.repl != nil {
		bs := n.repl.Status()
		s.Bridge = &bs
	}
	s.Home = n.home.Status()
	ss := n.store.Stats()
	s.Conflicts = ConflictCounts{Held: ss.ConflictsHeld, SinceStart: ss.Conflicts}
	if s.Conflicts.SinceStart == nil {
		s.Conflicts.SinceStart = map[string]uint64{}
	}
	return s
}

// Close shuts down in order: stop HTTP intake, stop replication (which
// flushes the outbox), close NATS, close Pebble. It is safe to call twice.
func (n *Node) Close() error {
	var errs []error
	n.once.Do(func() {
		// Errors of the intake side lose nothing and are logged; the
		// bridge's flush and Pebble's close are what the caller must hear
		// about.
		warn := func(what string, err error) {
			if err != nil {
				n.log.Warn("close "+what, "err", err)
			}
		}
		if n.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			warn("http", n.http.Shutdown(ctx))
			cancel()
		}
		if n.svc != nil {
			warn("nats api", n.svc.Stop())
		}
		n.closeStopAPI()
		if n.shards != nil {
			n.shards.close()
		}
		warn("home router", n.home.Close())
		if n.arbiter != nil {
			n.arbiter.Close()
		}
		if n.ae != nil {
			warn("anti-entropy", n.ae.Close())
		}
		if n.snap != nil {
			// Before the store: its open snapshots must be released.
			warn("snapshot server", n.snap.Close())
		}
		if n.repl != nil {
			errs = append(errs, n.repl.Close())
		}
		if n.nc != nil {
			n.nc.Close()
		}
		if n.ns != nil {
			n.ns.Shutdown()
			n.ns.WaitForShutdown()
		}
		n.hub.Close()
		errs = append(errs, n.store.Close())
	})
	return errors.Join(errs...)
}

// ready reports why the node cannot serve, for /healthz.
func (n *Node) ready() error {
	if n.nc == nil || !n.nc.IsConnected() {
		return errors.New("not connected to NATS")
	}
	return nil
}

// digests is GET /v1/digests: this DC's digest and every peer's.
func (n *Node) digests(ctx context.Context) any { return n.ae.Digests(ctx) }

// readiness is /readyz's verdict: whether the DC has caught up since it
// started (bridge.Readiness).
func (n *Node) readiness() (bool, any) {
	if n.repl == nil {
		return false, bridge.Readiness{WaitingFor: []bridge.ReadyWait{{Reason: "replication has not started"}}}
	}
	r := n.repl.Readiness()
	return r.Ready, r
}

// onCommit fans the store's commits out to watchers and the arbiter.
func (n *Node) onCommit(changes []changelog.Change) {
	n.hub.Publish(changes)
	if n.arbiter != nil {
		n.arbiter.Notify(changes)
	}
}

func hasExternal(cfg config.Config) bool {
	for _, r := range cfg.Resolvers.Rules {
		if r.Resolver == config.External {
			return true
		}
	}
	return false
}

func (n *Node) closeStopAPI() { n.stopOnce.Do(func() { close(n.stopAPI) }) }

// streamPlacement is nats.placement as JetStream takes it, or nil.
func streamPlacement(p config.Placement) *jetstream.Placement {
	if p.IsZero() {
		return nil
	}
	return &jetstream.Placement{Cluster: p.Cluster, Tags: slices.Clone(p.Tags)}
}
