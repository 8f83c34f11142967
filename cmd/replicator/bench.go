package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/replicatorhq/replicator/pkg/bench"
)

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench", "[--topology mesh|ring|star] [--dcs N] [--writes N] [--value-size B] [--concurrency C] [--via api|http|txn [--txn-ops N]] [--rate R] [--duration D [--keys K] [--sample-every I] [--changes-max-bytes B]] [--changes-off] [--json] [--cpuprofile FILE] | --shards 1,2,4 [--runs N]", stderr)
	var o bench.Options
	fs.StringVar(&o.Topology, "topology", "mesh", "mesh, ring or star")
	fs.IntVar(&o.DCs, "dcs", 3, "number of DCs")
	fs.IntVar(&o.Writes, "writes", 50000, "replicated writes in total (also the baseline's messages and the KV puts)")
	fs.IntVar(&o.ValueSize, "value-size", 100, "value size in bytes")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "concurrent writers in total, spread over the DCs (also the KV putters)")
	fs.StringVar(&o.Via, "via", bench.ViaAPI, "api (node.Write in process), http (PUT through each DC's HTTP API; also measures the HTTP floor, a trivial handler with the same client) or txn (POST /v1/txn, --txn-ops puts per transaction; --writes counts keys)")
	fs.IntVar(&o.TxnOps, "txn-ops", 100, "puts per transaction with --via txn")
	fs.Float64Var(&o.Rate, "rate", 0, "target write rate in writes/s; 0 writes as fast as possible")
	fs.IntVar(&o.Partitions, "partitions", 16, "partitions per DC")
	fs.DurationVar(&o.Duration, "duration", 0, "write for this long instead of --writes, over --keys keys, sampling memory (skips the baseline and KV phases)")
	fs.IntVar(&o.Keys, "keys", 10000, "key space of a --duration run: each write overwrites one of them")
	fs.DurationVar(&o.SampleEvery, "sample-every", 10*time.Second, "memory sampling interval of a --duration run")
	fs.Int64Var(&o.ChangesMaxBytes, "changes-max-bytes", 0, "each DC's changes.max_bytes (the change feed's size bound; 0: the config default, 1 GiB)")
	fs.BoolVar(&o.ChangesOff, "changes-off", false, "run the DCs with changes.off: true (no change feed), to measure what the feed costs")
	fs.BoolVar(&o.NoFsync, "no-fsync", false, "run the DCs without fsync, to measure what fsync costs (unsafe)")
	fs.BoolVar(&o.NoReferences, "no-references", false, "skip the JetStream baseline, the KV reference and the HTTP floor")
	fs.DurationVar(&o.Timeout, "timeout", 0, "bound on the wait, after the last write, for every DC to apply every write (default 2m)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the replicator phase to `FILE`")
	memprofile := fs.String("memprofile", "", "write the allocation profile at the end of the replicator phase to `FILE`")
	tracefile := fs.String("trace", "", "write an execution trace of the replicator phase to `FILE`")
	logfile := fs.String("log", "", "write the DCs' log lines (info and above) to `FILE`, to see why a run does not converge")
	asJSON := fs.Bool("json", false, "print one JSON object on stdout")
	shards := fs.String("shards", "", "instead of the DC bench: dc1 as N sidecars (shards; a comma-separated list such as 1,2,4) and dc2 as one, in a mesh, writes over HTTP to dc1 (to the key's shard, then through any shard); reports writes/s and CPU per write, medians of --runs")
	runs := fs.Int("runs", 3, "runs per shard count and routing with --shards")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	if *shards != "" && *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		o.CPUProfile = f
	}
	if *shards != "" {
		var counts []int
		for part := range strings.SplitSeq(*shards, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(part))
			if err != nil || n < 1 || n > o.Partitions {
				return usagef("--shards %q: want shard counts from 1 to --partitions (%d), comma-separated", *shards, o.Partitions)
			}
			counts = append(counts, n)
		}
		rs, err := bench.RunShards(ctx, bench.ShardOptions{Shards: counts, Writes: o.Writes, Concurrency: o.Concurrency, ValueSize: o.ValueSize,
			Partitions: o.Partitions, Runs: *runs, NoFsync: o.NoFsync, Progress: stderr, CPUProfile: o.CPUProfile})
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(rs)
		}
		bench.WriteShardTable(stdout, rs)
		return nil
	}
	if err := o.Validate(); err != nil {
		// One line, without the package's prefix: "replicator bench: dcs
		// 0: want 2..16; writes 0: want at least 1 (see --help)".
		return usagef("%s", strings.ReplaceAll(strings.TrimPrefix(err.Error(), "bench: "), "\n", "; "))
	}
	var logOut io.Writer
	for _, out := range []struct {
		path string
		dst  *io.Writer
	}{{*cpuprofile, &o.CPUProfile}, {*memprofile, &o.MemProfile}, {*tracefile, &o.Trace}, {*logfile, &logOut}} {
		if out.path == "" {
			continue
		}
		f, err := os.Create(out.path)
		if err != nil {
			return err
		}
		defer f.Close()
		*out.dst = f
	}
	if logOut != nil {
		o.Logger = logger(logOut, slog.LevelInfo)
	}
	o.Progress = stderr
	res, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	if *asJSON {
		return bench.WriteJSON(stdout, res)
	}
	bench.WriteTable(stdout, res)
	return nil
}
