package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/join"
	"github.com/replicatorhq/replicator/pkg/setup"
)

// cmdJoin bootstraps a new or restored DC, with its sidecar stopped, from
// a running peer's consistent snapshot (pkg/join, on repl.snap.<dc>); then
// `replicator run` catches up from the streams.
func cmdJoin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("join", "--config FILE --from DC [--force] [--timeout D] [--json]", stderr)
	path := fs.String("config", "", "the joining DC's YAML config file (required); its sidecar must be stopped")
	from := fs.String("from", "", "the running DC to copy the state from (required)")
	force := fs.Bool("force", false, "discard what the DC's store holds before the copy (own sequence numbers are kept)")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long the whole copy may take")
	asJSON := fs.Bool("json", false, "print the figures as one JSON object")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	switch {
	case *path == "":
		return usagef("--config FILE is required")
	case *from == "":
		return usagef("--from DC is required")
	case *timeout <= 0:
		return usagef("--timeout %s: want a positive duration", *timeout)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if cfg.NATS.UseEmbedded() {
		return fmt.Errorf("%s runs NATS embedded in its sidecar (no nats.url), and that NATS is down while the sidecar is stopped, as join needs it to be. "+
			"Set nats.url in %s to the NATS server %s's sidecar uses (or one joined to it by a cluster or leafnode), run join again, and keep that nats.url for run", *path, *path, *from)
	}
	nc, err := setup.Connect(cfg, setup.ConnOptions{Name: "replicator-join-" + cfg.DC})
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	res, err := join.Run(ctx, cfg, nc, join.Options{From: *from, Force: *force, Logger: log})
	if err != nil {
		// "replicator join:" already names the command.
		return errors.New(strings.TrimPrefix(err.Error(), "join: "))
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	fmt.Fprintf(stdout, "dc %s joined from %s: %d keys (%d tombstones), %d bytes in %d chunks, %.2fs; digest %s; %d old consumers deleted\n",
		res.DC, res.From, res.Keys, res.Tombstones, res.Bytes, res.Chunks, res.Seconds, res.Digest, res.ConsumersReset)
	fmt.Fprintf(stdout, "now start it: replicator run --config %s\n", *path)
	return nil
}
