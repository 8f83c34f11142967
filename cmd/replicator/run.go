package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/demo"
	"github.com/replicatorhq/replicator/pkg/node"
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", "--config FILE", stderr)
	path := fs.String("config", "", "the sidecar's YAML config file (required)")
	verbose := fs.Bool("v", false, "log at debug level")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return usagef("--config FILE is required")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	n, err := node.New(cfg, node.Options{Logger: logger(stderr, level)})
	if err != nil {
		return err
	}
	if err := n.Start(ctx); err != nil {
		n.Close()
		return err
	}
	fmt.Fprintf(stderr, "replicator: dc %s (%s) serving on http://%s\n", cfg.DC, cfg.Topology, n.HTTPAddr())
	select {
	case <-ctx.Done():
	case err := <-n.Fatal():
		// Nothing the store holds after the failure can be trusted: stop,
		// and let the supervisor restart the sidecar, which reopens the
		// store from what is durable.
		fmt.Fprintf(stderr, "replicator: %v; exiting for a restart\n", err)
		n.Close()
		return err
	}
	fmt.Fprintln(stderr, "replicator: shutting down: flushing the outbox")
	return n.Close()
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "[--topology mesh|ring|star] [--dcs N] [--keys K] [--writes W] [--json]", stderr)
	var o demo.Options
	fs.StringVar(&o.Topology, "topology", "mesh", "mesh, ring or star")
	fs.IntVar(&o.DCs, "dcs", 3, "number of DCs")
	fs.IntVar(&o.Keys, "keys", 20, "keys per resolver prefix")
	fs.IntVar(&o.Writes, "writes", 300, "writes per DC: each DC makes W writes, so N DCs make N×W in all (bench's --writes counts all DCs together)")
	fs.Uint64Var(&o.Seed, "seed", 1, "workload seed: the same seed gives the same writes (keys, values, contexts, order per DC); timing, and so which writes conflict and how the HLC resolves them, still varies")
	asJSON := fs.Bool("json", false, "print one JSON object on stdout")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	switch o.Topology {
	case config.Mesh, config.Ring, config.Star:
	default:
		return usagef("--topology %q: want mesh, ring or star", o.Topology)
	}
	if o.DCs < 2 || o.DCs > 16 || o.Keys < 1 || o.Writes < 1 {
		return usagef("--dcs must be 2..16, --keys and --writes at least 1")
	}
	if o.Topology != config.Mesh && o.DCs < 3 {
		return usagef("a %s needs at least 3 DCs", o.Topology)
	}
	o.Progress = stderr
	s, err := demo.Run(ctx, o)
	if err != nil {
		return err
	}
	if *asJSON {
		if err := demo.WriteJSON(stdout, s); err != nil {
			return err
		}
	} else {
		demo.WriteTable(stdout, s)
	}
	return s.Err()
}
