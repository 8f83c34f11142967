package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/replicatorhq/replicator/pkg/antientropy"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/setup"
)

// cmdRepair asks a running sidecar to run anti-entropy against every peer
// now (pkg/antientropy, on repl.ae.<dc>.run) and prints its reports.
func cmdRepair(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("repair", "--config FILE [--timeout D] [--json]", stderr)
	path := fs.String("config", "", "the sidecar's YAML config file (required): its dc and nats settings are used")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the run to finish")
	asJSON := fs.Bool("json", false, "print the reports as one JSON object")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return usagef("--config FILE is required")
	}
	if *timeout <= 0 {
		return usagef("--timeout %s: want a positive duration", *timeout)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	nc, err := setup.Connect(cfg, setup.ConnOptions{Name: "replicator-repair-" + cfg.DC})
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	reply, err := antientropy.RequestRun(ctx, nc, cfg.DC)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(reply)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tPARTITIONS\tDIFFERED\tBUCKETS\tKEYS EXCHANGED\tKEYS CHANGED\tTAKEN\tDROPPED\tREMOVED\tLOST FOUND\tSKIPPED\tTIME\tERROR")
	failed := 0
	for _, r := range reply.Reports {
		if r.Error != "" {
			failed++
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", r.Peer, r.PartitionsCompared, r.PartitionsDiffered,
			r.BucketsDiffered, r.KeysExchanged, r.KeysChanged, r.VersionsTaken, r.VersionsDropped, r.KeysRemoved, r.LostFound,
			r.KeysSkipped, r.Duration.Round(time.Millisecond), r.Error)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dc %s: anti-entropy against %d peers in %s\n", reply.DC, len(reply.Reports), time.Since(start).Round(time.Millisecond))
	if failed > 0 {
		return fmt.Errorf("%d of %d peers failed; see the ERROR column", failed, len(reply.Reports))
	}
	return nil
}
