package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/node"
)

// ShardOptions configure a sharded-DC run (replicator bench --shards N):
// a mesh of dc1, which runs Shards sidecars, and dc2, one sidecar, on one
// embedded NATS server, in one process. Writes go over HTTP to dc1.
type ShardOptions struct {
	Shards      []int
	Writes      int
	Concurrency int
	ValueSize   int
	Partitions  int
	Runs        int
	NoFsync     bool
	Progress    io.Writer
	// CPUProfile, if set, receives a CPU profile of the first run's
	// writes.
	CPUProfile io.Writer
}

// ShardResult is one run at one shard count and one routing.
type ShardResult struct {
	Shards int `json:"shards"`
	// Routing is "owner" (each write sent to the shard owning its key) or
	// "any" (to a shard picked in turn, so 1-1/S of writes take the
	// forwarding hop).
	Routing string  `json:"routing"`
	Run     int     `json:"run"`
	Writes  int     `json:"writes"`
	Seconds float64 `json:"seconds"`
	// WritesPerSec is dc1's acknowledged writes per second.
	WritesPerSec float64 `json:"writes_per_sec"`
	// CPUPerWrite is the process's CPU time (every sidecar of both DCs,
	// NATS and the clients, until dc2 applied every write) per write.
	CPUPerWriteUS float64 `json:"cpu_us_per_write"`
	// IdleCPUPerSec is the process's CPU time per second of wall time
	// over the 2 s after dc2 applied every write, in ms: what the
	// sidecars cost with nothing to do (reports, maintenance, consumers'
	// pulls).
	IdleCPUMSPerSec float64 `json:"idle_cpu_ms_per_s"`
}

// RunShards runs the sharded-DC benchmark and returns every run.
func RunShards(ctx context.Context, o ShardOptions) ([]ShardResult, error) {
	if o.Runs < 1 {
		o.Runs = 3
	}
	if o.Partitions < 1 {
		o.Partitions = 16
	}
	var out []ShardResult
	for _, s := range o.Shards {
		for _, routing := range []string{"owner", "any"} {
			for run := range o.Runs {
				r, err := runShards(ctx, o, s, routing)
				o.CPUProfile = nil // the first run's profile only
				if err != nil {
					return out, fmt.Errorf("bench: %d shards, %s: %w", s, routing, err)
				}
				r.Run = run + 1
				if o.Progress != nil {
					fmt.Fprintf(o.Progress, "shards %d routing %s run %d: %.0f writes/s, %.0f µs CPU/write\n", s, routing, r.Run, r.WritesPerSec, r.CPUPerWriteUS)
				}
				out = append(out, r)
			}
		}
	}
	return out, nil
}

func runShards(ctx context.Context, o ShardOptions, shards int, routing string) (ShardResult, error) {
	dir, err := os.MkdirTemp("", "replicator-bench-shards-")
	if err != nil {
		return ShardResult{}, err
	}
	defer os.RemoveAll(dir)
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{StoreDir: filepath.Join(dir, "nats"), JetStream: true})
	if err != nil {
		return ShardResult{}, err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	dcs := []string{"dc1", "dc2"}
	var dc1 []*node.Node
	var dc2 *node.Node
	for _, dc := range dcs {
		n := 1
		if dc == "dc1" {
			n = shards
		}
		for i := range n {
			cfg := config.Default()
			cfg.DC, cfg.DCs, cfg.Topology, cfg.Partitions = dc, dcs, config.Mesh, o.Partitions
			cfg.DataDir = filepath.Join(dir, fmt.Sprintf("%s-%d", dc, i))
			cfg.HTTP.Listen = "127.0.0.1:0"
			cfg.Durability.Fsync = !o.NoFsync
			if n > 1 {
				cfg.Shard = fmt.Sprintf("%d of %d", i, n)
			}
			cfg.Complete()
			nd, err := node.New(cfg, node.Options{NATSURL: ns.ClientURL()})
			if err != nil {
				return ShardResult{}, err
			}
			defer nd.Close()
			if err := nd.Start(ctx); err != nil {
				return ShardResult{}, err
			}
			if dc == "dc1" {
				dc1 = append(dc1, nd)
			} else {
				dc2 = nd
			}
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.Concurrency}}
	value := bytes.Repeat([]byte("x"), o.ValueSize)
	var next, failed atomic.Int64
	var firstErr atomic.Value
	if o.CPUProfile != nil {
		if err := pprof.StartCPUProfile(o.CPUProfile); err == nil {
			defer pprof.StopCPUProfile()
		}
	}
	cpu0, _ := rusage()
	start := time.Now()
	var wg sync.WaitGroup
	for range o.Concurrency {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(o.Writes) {
					return
				}
				key := fmt.Sprintf("b/%d", i)
				target := dc1[int(i)%len(dc1)]
				if routing == "owner" {
					target = dc1[int(event.PartitionOf(key, o.Partitions))%len(dc1)]
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+target.HTTPAddr()+"/v1/kv/"+key, bytes.NewReader(value))
				resp, err := client.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("PUT %s: %s", key, resp.Status)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		return ShardResult{}, fmt.Errorf("%d writes failed, the first: %w", failed.Load(), err)
	}
	// Replicated: dc2 holds every key.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		d, err := dc2.Store().Digest()
		if err == nil && d.Keys >= o.Writes {
			break
		}
		if time.Now().After(deadline) {
			return ShardResult{}, fmt.Errorf("dc2 holds %d of %d keys after 2m", d.Keys, o.Writes)
		}
		select {
		case <-ctx.Done():
			return ShardResult{}, ctx.Err()
		case <-dc2.Store().DurableMoved():
		case <-time.After(50 * time.Millisecond):
		}
	}
	cpu1, _ := rusage()
	idleStart := time.Now()
	select {
	case <-ctx.Done():
		return ShardResult{}, ctx.Err()
	case <-time.After(2 * time.Second): // the idle interval measured
	}
	cpu2, _ := rusage()
	return ShardResult{
		Shards: shards, Routing: routing, Writes: o.Writes, Seconds: took.Seconds(),
		WritesPerSec:    float64(o.Writes) / took.Seconds(),
		CPUPerWriteUS:   float64((cpu1 - cpu0).Microseconds()) / float64(o.Writes),
		IdleCPUMSPerSec: float64((cpu2 - cpu1).Milliseconds()) / time.Since(idleStart).Seconds(),
	}, nil
}

// WriteShardTable prints the medians of each shard count and routing.
func WriteShardTable(w io.Writer, rs []ShardResult) {
	type k struct {
		s int
		r string
	}
	by := map[k][]ShardResult{}
	var order []k
	for _, r := range rs {
		key := k{r.Shards, r.Routing}
		if _, ok := by[key]; !ok {
			order = append(order, key)
		}
		by[key] = append(by[key], r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "shards\trouting\truns\twrites/s (median)\tCPU µs/write (median)\tidle CPU ms/s (median)")
	med := func(v []float64) float64 {
		sort.Float64s(v)
		return v[len(v)/2]
	}
	for _, key := range order {
		var tput, cpu, idle []float64
		for _, r := range by[key] {
			tput, cpu, idle = append(tput, r.WritesPerSec), append(cpu, r.CPUPerWriteUS), append(idle, r.IdleCPUMSPerSec)
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%.0f\t%.0f\t%.1f\n", key.s, key.r, len(by[key]), med(tput), med(cpu), med(idle))
	}
	tw.Flush()
}
