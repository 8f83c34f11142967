package join

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/rpc"
	"github.com/replicatorhq/replicator/pkg/setup"
)

// Options tune Run.
type Options struct {
	// From is the DC whose snapshot to copy (required).
	From string
	// Force discards what the store holds first (its keys, outbox,
	// conflict log); its own sequences are kept as a floor, so they never
	// go down.
	Force bool
	// RequestTimeout bounds each request (default 30s).
	RequestTimeout time.Duration
	// Logger receives progress lines; nil discards them.
	Logger *slog.Logger
}

// Result is what Run did.
type Result struct {
	DC   string `json:"dc"`
	From string `json:"from"`
	changelog.ImportStats
	// Seconds is the time the copy took; ConsumersReset counts the old
	// durable consumers of this DC that were deleted.
	Seconds        float64 `json:"seconds"`
	ConsumersReset int     `json:"consumers_reset"`
	// Applied is the applied vector the DC starts from.
	Applied changelog.Applied `json:"applied"`
}

// Run bootstraps the DC of cfg from o.From's snapshot, with the sidecar
// stopped: it opens the DC's store (which must be empty unless o.Force),
// imports the snapshot and deletes the DC's old durable consumers, then
// closes the store. nc reaches the peer's NATS.
func Run(ctx context.Context, cfg config.Config, nc *nats.Conn, o Options) (Result, error) {
	if o.From == "" || o.From == cfg.DC {
		return Result{}, fmt.Errorf("join: --from %q: want another DC of %v", o.From, cfg.DCs)
	}
	if !slices.Contains(cfg.DCs, o.From) {
		return Result{}, fmt.Errorf("join: --from %q is not one of the config's dcs %v", o.From, cfg.DCs)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 30 * time.Second
	}
	st, err := openStore(cfg, o)
	if err != nil {
		return Result{}, err
	}
	defer st.Close()
	start := time.Now()
	res := Result{DC: cfg.DC, From: o.From}
	res.ImportStats, err = Fetch(ctx, nc, st, o.From, o.RequestTimeout)
	if err != nil {
		return res, err
	}
	res.Seconds = time.Since(start).Seconds()
	res.Applied = st.Applied()
	o.Logger.Info("imported the snapshot", "from", o.From, "keys", res.Keys, "bytes", res.Bytes, "seconds", res.Seconds)
	res.ConsumersReset, err = ResetConsumers(ctx, nc, cfg.NATS.Domain, cfg.DC, cfg.DCs)
	if err != nil {
		return res, fmt.Errorf("join: the snapshot is imported, but %w; delete them (nats consumer rm) before starting the sidecar", err)
	}
	return res, st.Close()
}

// openStore opens the DC's store as `replicator run` does (setup.OpenStore),
// empty: a store holding state is refused, or with o.Force wiped, keeping
// its own sequences as a floor.
func openStore(cfg config.Config, o Options) (*changelog.Store, error) {
	dir := setup.StoreDir(cfg)
	open := func() (*changelog.Store, error) { return setup.OpenStore(cfg, setup.Hooks{Logger: o.Logger}) }
	st, err := open()
	if errors.Is(err, changelog.ErrLocked) {
		return nil, fmt.Errorf("join: the store of %s is in use: stop the sidecar of %s first (join writes into its store while it is stopped), then run join again: %w", cfg.DC, cfg.DC, err)
	}
	if err != nil {
		return nil, err
	}
	err = st.CheckEmpty()
	if err == nil {
		return st, nil
	}
	if !errors.Is(err, changelog.ErrNotEmpty) || !o.Force {
		st.Close()
		if errors.Is(err, changelog.ErrNotEmpty) {
			return nil, fmt.Errorf("join: %w at %s. join copies a peer's whole state into an empty store, so it refuses one that holds a DC's state: "+
				"point data_dir at an empty directory, or pass --force to discard what this store holds (its writes not yet published are lost; its own sequence numbers are kept, so none is reissued)", err, dir)
		}
		return nil, err
	}
	floor := st.Applied()[cfg.DC]
	if err := st.Close(); err != nil {
		return nil, err
	}
	o.Logger.Warn("--force: discarding the store's state before the join", "dir", dir)
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("join: --force: remove %s: %w", dir, err)
	}
	if st, err = open(); err != nil {
		return nil, err
	}
	for p, n := range floor {
		if err := st.EnsureSeqAbove(context.Background(), uint32(p), n); err != nil {
			st.Close()
			return nil, err
		}
	}
	return st, nil
}

// Fetch copies DC from's snapshot into st (changelog Store.Import), one
// request per chunk, each bounded by timeout.
func Fetch(ctx context.Context, nc *nats.Conn, st *changelog.Store, from string, timeout time.Duration) (changelog.ImportStats, error) {
	if err := st.CheckEmpty(); err != nil {
		return changelog.ImportStats{}, fmt.Errorf("join: %w", err)
	}
	var open openReply
	if err := ask(ctx, nc, from, request{Op: opOpen}, &open, timeout); err != nil {
		return changelog.ImportStats{}, err
	}
	defer func() {
		// Release the peer's snapshot now rather than at its idle timeout.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = ask(ctx, nc, from, request{Op: opClose, Session: open.Session}, nil, timeout)
	}()
	if open.Header.DC != from {
		return changelog.ImportStats{}, fmt.Errorf("join: asked %s for a snapshot and got one of %q", from, open.Header.DC)
	}
	cursor := ""
	stats, err := st.Import(ctx, open.Header, func(ctx context.Context) (changelog.SnapshotChunk, error) {
		var c changelog.SnapshotChunk
		if err := ask(ctx, nc, from, request{Op: opRead, Session: open.Session, After: cursor}, &c, timeout); err != nil {
			return c, err
		}
		cursor = c.Next
		return c, nil
	})
	if err != nil {
		return stats, fmt.Errorf("join: %w", err)
	}
	return stats, nil
}

// ask sends one request to from's snapshot server and decodes the reply
// into out (when not nil).
func ask(ctx context.Context, nc *nats.Conn, from string, req request, out any, timeout time.Duration) error {
	req.V = rpc.Version
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var refused *rpc.Refused
	switch err := snapProtocol.Call(ctx, nc, names.SnapshotSubject(from), req, out); {
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("join: no snapshot server on %s: is %s's sidecar running, on this NATS?", names.SnapshotSubject(from), from)
	case errors.As(err, &refused):
		return fmt.Errorf("join: %s refused %s: %s", from, req.Op, refused.Msg)
	case errors.Is(err, rpc.ErrBadReply):
		return fmt.Errorf("join: %s's %s reply: %w", from, req.Op, err)
	case err != nil:
		return fmt.Errorf("join: %s %s: %w", req.Op, names.SnapshotSubject(from), err)
	}
	return nil
}

// ResetConsumers deletes the durable consumers dc had on the other DCs'
// streams (repl_<dc>_from_<up>), so the sidecar recreates them with
// DeliverAll and catches up from the first event each stream holds, not
// from where its former self had acknowledged. It returns how many it
// deleted; a stream or consumer that does not exist is not an error.
func ResetConsumers(ctx context.Context, nc *nats.Conn, domain, dc string, dcs []string) (int, error) {
	var js jetstream.JetStream
	var err error
	if domain != "" {
		js, err = jetstream.NewWithDomain(nc, domain)
	} else {
		js, err = jetstream.New(nc)
	}
	if err != nil {
		return 0, fmt.Errorf("jetstream: %w", err)
	}
	n := 0
	for _, up := range dcs {
		if up == dc {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := js.DeleteConsumer(cctx, names.Stream(up), names.Consumer(dc, up))
		cancel()
		switch {
		case err == nil:
			n++
		case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
		default:
			return n, fmt.Errorf("deleting the old consumer %s on %s failed: %w", names.Consumer(dc, up), names.Stream(up), err)
		}
	}
	return n, nil
}
