package join

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
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
	var want []uint32 // every partition
	if cfg.Sharded() {
		// A shard takes only its own partitions (invariant 16).
		want = cfg.OwnedPartitions()
	}
	res.ImportStats, err = FetchPartitions(ctx, nc, st, o.From, want, o.RequestTimeout)
	if err != nil {
		return res, err
	}
	res.Seconds = time.Since(start).Seconds()
	res.Applied = st.Applied()
	o.Logger.Info("imported the snapshot", "from", o.From, "keys", res.Keys, "bytes", res.Bytes, "seconds", res.Seconds)
	res.ConsumersReset, err = ResetConsumers(ctx, nc, cfg.NATS.Domain, cfg.DC, cfg.DCs, names.ShardName(cfg.ShardOf().Index, cfg.ShardOf().Count))
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
	return FetchPartitions(ctx, nc, st, from, nil, timeout)
}

// source is one snapshot session open at a peer's sidecar.
type source struct {
	subject string
	session string
}

// FetchPartitions copies the partitions want (every partition when nil)
// of DC from into st (changelog Store.ImportSources). A peer of one
// sidecar serves them all on repl.snap.<from>; a peer running several
// shards serves each partition's from its owner, on
// repl.snap.<from>.<p>: FetchPartitions asks the owner of the first
// partition still missing for every partition still missing, and it
// answers with a snapshot of those it owns, until none is missing.
func FetchPartitions(ctx context.Context, nc *nats.Conn, st *changelog.Store, from string, want []uint32, timeout time.Duration) (changelog.ImportStats, error) {
	if err := st.CheckEmpty(); err != nil {
		return changelog.ImportStats{}, fmt.Errorf("join: %w", err)
	}
	all := want == nil
	if all {
		for p := range st.Partitions() {
			want = append(want, uint32(p))
		}
	}
	var opened []source
	defer func() {
		// Release the peers' snapshots now rather than at their idle timeout.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		for _, o := range opened {
			_ = ask(ctx, nc, from, o.subject, request{Op: opClose, Session: o.session}, nil, timeout)
		}
	}()
	left := slices.Clone(want)
	slices.Sort(left)
	var srcs []changelog.ImportSource
	for len(left) > 0 {
		asked := slices.Clone(left)
		if all && len(srcs) == 0 {
			asked = nil // every partition: what a peer of any version serves
		}
		subject := names.SnapshotShardSubject(from, left[0])
		var open openReply
		err := ask(ctx, nc, from, subject, request{Op: opOpen, Partitions: asked}, &open, timeout)
		if errors.Is(err, nats.ErrNoResponders) {
			// Not a sharded peer: one sidecar serves every partition.
			subject = names.SnapshotSubject(from)
			err = ask(ctx, nc, from, subject, request{Op: opOpen, Partitions: asked}, &open, timeout)
		}
		if errors.Is(err, nats.ErrNoResponders) {
			return changelog.ImportStats{}, fmt.Errorf("join: no snapshot server of %s answers for partition %d on %s or %s: is its sidecar (the shard owning that partition, if it runs several) running, on this NATS?",
				from, left[0], names.SnapshotShardSubject(from, left[0]), names.SnapshotSubject(from))
		}
		if err != nil {
			return changelog.ImportStats{}, err
		}
		opened = append(opened, source{subject: subject, session: open.Session})
		if open.Header.DC != from {
			return changelog.ImportStats{}, fmt.Errorf("join: asked %s for a snapshot and got one of %q", from, open.Header.DC)
		}
		covered := open.Partitions
		if covered == nil {
			if asked != nil {
				return changelog.ImportStats{}, fmt.Errorf("join: %s sent a snapshot of every partition when asked for %v: its sidecar is older than this one and cannot serve a shard's join; upgrade it", from, asked)
			}
			covered = slices.Clone(want)
		}
		for _, p := range covered {
			i, ok := slices.BinarySearch(left, p)
			if !ok {
				return changelog.ImportStats{}, fmt.Errorf("join: %s's snapshot on %s covers partition %d, which was not asked for (asked %v)", from, subject, p, left)
			}
			left = slices.Delete(left, i, i+1)
		}
		if !slices.Contains(covered, asked0(asked, want)) {
			return changelog.ImportStats{}, fmt.Errorf("join: %s's snapshot on %s does not cover partition %d, whose subject it is", from, subject, asked0(asked, want))
		}
		src := changelog.ImportSource{Header: open.Header, Partitions: open.Partitions}
		session, cursor := open.Session, ""
		src.Next = func(ctx context.Context) (changelog.SnapshotChunk, error) {
			var c changelog.SnapshotChunk
			if err := ask(ctx, nc, from, subject, request{Op: opRead, Session: session, After: cursor}, &c, timeout); err != nil {
				return c, err
			}
			cursor = c.Next
			return c, nil
		}
		srcs = append(srcs, src)
	}
	stats, err := st.ImportSources(ctx, srcs)
	if err != nil {
		return stats, fmt.Errorf("join: %w", err)
	}
	return stats, nil
}

// asked0 is the first partition of a request for asked (want's first
// when asked is nil, every partition).
func asked0(asked, want []uint32) uint32 {
	if asked != nil {
		return asked[0]
	}
	return slices.Min(want)
}

// ask sends one request to subject, a snapshot server of DC from, and
// decodes the reply into out (when not nil). It returns
// nats.ErrNoResponders as is.
func ask(ctx context.Context, nc *nats.Conn, from, subject string, req request, out any, timeout time.Duration) error {
	req.V = rpc.Version
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var refused *rpc.Refused
	switch err := snapProtocol.Call(ctx, nc, subject, req, out); {
	case errors.Is(err, nats.ErrNoResponders):
		return err
	case errors.As(err, &refused):
		return fmt.Errorf("join: %s refused %s: %s", from, req.Op, refused.Msg)
	case errors.Is(err, rpc.ErrBadReply):
		return fmt.Errorf("join: %s's %s reply: %w", from, req.Op, err)
	case err != nil:
		return fmt.Errorf("join: %s %s: %w", req.Op, subject, err)
	}
	return nil
}

// ResetConsumers deletes the durable consumers dc had on the other DCs'
// streams (repl_<dc>_from_<up>, for a shard named shard
// repl_<dc>_from_<up>_shard<shard>), so the sidecar recreates them with
// DeliverAll and catches up from the first event each stream holds, not
// from where its former self had acknowledged. It also deletes the
// consumers dc had with another shard layout (one sidecar, or another
// shard count), which a DC whose shard count changed leaves behind; the
// consumers of this layout's other shards stay. It returns how many it
// deleted; a stream or consumer that does not exist is not an error.
func ResetConsumers(ctx context.Context, nc *nats.Conn, domain, dc string, dcs []string, shard string) (int, error) {
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
		doomed := []string{names.ShardConsumer(dc, up, shard)}
		stale, err := staleLayouts(ctx, js, dc, up, shard)
		switch {
		case err != nil && shard == "":
			// A DC of one sidecar deletes only its own consumer, as
			// before, when it may not list the stream's consumers
			// ($JS.API.CONSUMER.NAMES.REPL_<up>, SECURITY.md).
			stale = nil
		case err != nil:
			return n, fmt.Errorf("%w (a shard's join lists them to delete its DC's consumers of another shard layout: grant $JS.API.CONSUMER.NAMES.%s)", err, names.Stream(up))
		}
		for _, name := range append(doomed, stale...) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := js.DeleteConsumer(cctx, names.Stream(up), name)
			cancel()
			switch {
			case err == nil:
				n++
			case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
			default:
				return n, fmt.Errorf("deleting the old consumer %s on %s failed: %w", name, names.Stream(up), err)
			}
		}
	}
	return n, nil
}

// staleLayouts lists dc's consumers on up's stream made for another shard
// layout than shard's: the one-sidecar consumer when shard names a shard,
// and the shard consumers of another shard count.
func staleLayouts(ctx context.Context, js jetstream.JetStream, dc, up, shard string) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := js.Stream(cctx, names.Stream(up))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the consumers of %s: %w", names.Stream(up), err)
	}
	base := names.Consumer(dc, up)
	_, count, _ := strings.Cut(shard, "of")
	var out []string
	lister := stream.ConsumerNames(cctx)
	for name := range lister.Name() {
		rest, ok := strings.CutPrefix(name, base)
		switch {
		case !ok:
		case rest == "":
			if shard != "" {
				out = append(out, name)
			}
		case strings.HasPrefix(rest, "_shard"):
			if _, c, _ := strings.Cut(strings.TrimPrefix(rest, "_shard"), "of"); c != count {
				out = append(out, name)
			}
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("list the consumers of %s: %w", names.Stream(up), err)
	}
	return out, nil
}
