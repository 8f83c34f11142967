// Package setup builds a sidecar's parts from its config, once for every
// caller: the store (`replicator run` through pkg/node, and `replicator
// join`), the resolver rules, and the NATS connection (the sidecar, and the
// CLI's repair and join). It is internal to the sidecar, not API.
//
//	st, err := setup.OpenStore(cfg, setup.Hooks{Logger: log})
//	nc, err := setup.Connect(cfg, setup.ConnOptions{Name: "replicator-join-" + cfg.DC})
package setup

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/resolve"
)

// StoreDir is where a sidecar with config cfg keeps its change log.
func StoreDir(cfg config.Config) string { return filepath.Join(cfg.DataDir, "store") }

// Hooks carry what a config file cannot give the store: the process's
// clock, logger and callbacks. Zero fields take the defaults named.
type Hooks struct {
	// Rules are the resolver rules; nil builds them from the config
	// (Rules). A sidecar that serves them too passes the ones it built.
	Rules *resolve.Rules
	// Clock is the DC's HLC; nil makes one over Now with the config's
	// durability.max_clock_drift.
	Clock changelog.Clock
	// Now is the physical clock; default time.Now.
	Now func() time.Time
	// OnCommit and OnFatal are changelog.Options'; nil leaves them unset.
	OnCommit func([]changelog.Change)
	OnFatal  func(error)
	// Logger receives the store's log lines; nil discards them.
	Logger *slog.Logger
}

// StoreOptions turns a config into the store's options: every setting of
// the config the store honours, with h's hooks.
func StoreOptions(cfg config.Config, h Hooks) (changelog.Options, error) {
	if h.Now == nil {
		h.Now = time.Now
	}
	if h.Rules == nil {
		r, err := Rules(cfg)
		if err != nil {
			return changelog.Options{}, err
		}
		h.Rules = r
	}
	if h.Clock == nil {
		h.Clock = NewClock(cfg, h.Now)
	}
	return changelog.Options{
		DC:         cfg.DC,
		DCs:        cfg.DCs,
		Partitions: cfg.Partitions,
		NoSync:     !cfg.Durability.Fsync,
		Clock:      h.Clock,
		Resolvers:  h.Rules,
		OnCommit:   h.OnCommit,
		OnFatal:    h.OnFatal,
		Logger:     h.Logger,
		Limits:     event.Limits{MaxKeyBytes: cfg.Limits.MaxKeyBytes, MaxValueBytes: cfg.Limits.MaxValueBytes},
		// A client that read at a DC that is ahead waits this long for
		// this DC to catch up before its write or read is refused with
		// 503.
		ContextWait:        time.Duration(cfg.ContextWait),
		Owns:               owns(cfg),
		TxnMaxOps:          cfg.Limits.MaxTxnOps,
		MaxSiblings:        cfg.Limits.MaxSiblings,
		TxnMaxBytes:        cfg.Limits.MaxTxnBytes,
		ConflictRetention:  time.Duration(cfg.ConflictLog.Retention),
		ConflictMaxEntries: cfg.ConflictLog.MaxEntries,
		FeedRetention:      time.Duration(cfg.Changes.Retention),
		FeedMaxBytes:       cfg.Changes.MaxBytes,
		FeedOff:            cfg.Changes.Off,
		Now:                h.Now,
	}, nil
}

// NewClock makes the DC's HLC over now (time.Now if nil), with the
// config's durability.max_clock_drift. Restore it from the store's high
// water (changelog.Store.HLCHighWater) before it stamps a write.
func NewClock(cfg config.Config, now func() time.Time) *hlc.Clock {
	if now == nil {
		now = time.Now
	}
	return hlc.New(now, time.Duration(cfg.Durability.MaxClockDrift))
}

// OpenStore opens the store of the sidecar with config cfg at StoreDir,
// creating data_dir if needed: the one way `run` and `join` open a store
// from a config. A clock it makes itself (h.Clock nil) is restored from
// the store's HLC high water.
func OpenStore(cfg config.Config, h Hooks) (*changelog.Store, error) {
	var clock *hlc.Clock
	if h.Clock == nil {
		clock = NewClock(cfg, h.Now)
		h.Clock = clock
	}
	o, err := StoreOptions(cfg, h)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
	}
	st, err := changelog.Open(StoreDir(cfg), o)
	if err != nil {
		return nil, err
	}
	if clock != nil {
		clock.Restore(st.HLCHighWater())
	}
	return st, nil
}

// Rules builds the resolver rules of a config.
func Rules(cfg config.Config) (*resolve.Rules, error) {
	build := func(r config.Rule) (resolve.Resolver, error) {
		if r.Resolver != config.External {
			return resolve.ByName(r.Resolver, resolve.Options{Order: r.Priority, Separator: r.Separator})
		}
		fb := config.Rule{Resolver: r.Fallback}
		switch r.Fallback {
		case config.Priority:
			fb.Priority = r.Priority
		case config.Concat:
			fb.Separator = r.Separator
		}
		fallback, err := resolve.ByName(fb.Resolver, resolve.Options{Order: fb.Priority, Separator: fb.Separator})
		if err != nil {
			return nil, fmt.Errorf("fallback: %w", err)
		}
		return resolve.External(r.Subject, time.Duration(r.Timeout), fallback), nil
	}
	defRule := config.Rule{Resolver: cfg.Resolvers.Default}
	if defRule.Resolver == config.Concat {
		defRule.Separator = config.DefaultSeparator
	}
	def, err := build(defRule)
	if err != nil {
		return nil, fmt.Errorf("resolvers.default: %w", err)
	}
	var rs []resolve.Rule
	for i, r := range cfg.Resolvers.Rules {
		res, err := build(r)
		if err != nil {
			return nil, fmt.Errorf("resolvers.rules[%d]: %w", i, err)
		}
		rs = append(rs, resolve.Rule{Prefix: r.Prefix, Resolver: res})
	}
	return resolve.NewRules(def, rs)
}

// ConnOptions tune Connect.
type ConnOptions struct {
	// Name is the connection's name in the server's monitoring; default
	// replicator-<dc>.
	Name string
	// URL overrides where to connect (the sidecar's own embedded server,
	// or one shared by the demo); default URL(cfg).
	URL string
	// Forever reconnects without limit, every 250ms, as the sidecar does;
	// without it the client library's defaults apply (the CLI's short
	// connections).
	Forever bool
	// Logger receives connection errors, disconnects and reconnects; nil
	// discards them.
	Logger *slog.Logger
}

// URL is where the CLI reaches the NATS the sidecar of cfg uses: nats.url,
// or the sidecar's embedded server at nats.listen, which must then be on a
// fixed port.
func URL(cfg config.Config) (string, error) {
	c := cfg.NATS
	if !c.UseEmbedded() {
		return c.URL, nil
	}
	_, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return "", fmt.Errorf("nats.listen %q: %w", c.Listen, err)
	}
	if port == "-1" || port == "0" {
		return "", fmt.Errorf("nats.listen %q: the sidecar's embedded NATS listens on a random port; set a fixed port in the config to reach it from the command line", c.Listen)
	}
	return "nats://" + c.Listen, nil
}

// Connect connects to NATS as DC cfg.DC, with the config's credentials
// and TLS, under the DC's own inbox prefix (names.Inbox), so that NATS
// permissions can keep each DC's replies away from the others'.
func Connect(cfg config.Config, o ConnOptions) (*nats.Conn, error) {
	url := o.URL
	if url == "" {
		var err error
		if url, err = URL(cfg); err != nil {
			return nil, err
		}
	}
	opts, err := NATSOptions(cfg, o)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	return nc, nil
}

// NATSOptions are the client options Connect uses.
func NATSOptions(cfg config.Config, o ConnOptions) ([]nats.Option, error) {
	c := cfg.NATS
	if o.Name == "" {
		o.Name = "replicator-" + cfg.DC
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.CustomInboxPrefix(names.Inbox(cfg.DC)),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Warn("nats error", "subject", subject, "err", err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("reconnected to NATS", "url", c.ConnectedUrlRedacted()) }),
	}
	if o.Forever {
		opts = append(opts, nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.User != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.TLS.Enabled() {
		tc, err := tlsConfig(c.TLS)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

func tlsConfig(t config.TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // opt-in, documented
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("nats.tls.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nats.tls.ca: %s holds no PEM certificate", t.CA)
		}
		tc.RootCAs = pool
	}
	if t.Cert != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("nats.tls.cert/key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// owns says which partitions a shard of a DC of several sidecars holds
// (docs/DESIGN.md, invariant 16); nil (every partition) otherwise.
func owns(cfg config.Config) func(uint32) bool {
	if !cfg.Sharded() {
		return nil
	}
	owned := map[uint32]bool{}
	for _, p := range cfg.OwnedPartitions() {
		owned[p] = true
	}
	return func(p uint32) bool { return owned[p] }
}
