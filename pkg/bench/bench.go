// Package bench measures the replicator against the transport it runs on.
// In one process, each phase on its own embedded NATS server, it times:
//
//   - replicated durable writes through the node's write path (or its HTTP
//     API) until every DC has applied every write;
//   - the baseline: raw JetStream async publish of the same number of
//     messages of the same size, each consumed and acked by one durable pull
//     consumer per downstream DC (no Pebble, no msgpack): the transport's
//     ceiling on this machine;
//   - NATS KV Put throughput, what a user who "just uses NATS KV" gets;
//   - with writes over HTTP, the HTTP floor: a trivial handler driven by
//     the same client, what the HTTP row can reach at most.
//
// It is what `replicator bench` runs:
//
//	res, err := bench.Run(ctx, bench.Options{Topology: "mesh", DCs: 3})
//	bench.WriteJSON(os.Stdout, res)
//
// Internal to the sidecar: the engine of `replicator bench`, not a stable Go
// API.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/replicatorhq/replicator/pkg/config"
)

// How writes reach the replicator.
const (
	ViaAPI  = "api"  // node.Write, in process
	ViaHTTP = "http" // PUT /v1/kv/{key} through the sidecar's HTTP API
	ViaTxn  = "txn"  // POST /v1/txn, Options.TxnOps puts per transaction
)

// Options configure a run. A zero field takes the default in its comment.
type Options struct {
	// Topology is mesh, ring or star. Default mesh.
	Topology string
	// DCs is the number of DCs. Default 3.
	DCs int
	// Writes is the number of replicated writes, split across the DCs, and
	// the number of baseline messages and KV puts. Default 50000.
	Writes int
	// ValueSize is the size of each value in bytes. Default 100.
	ValueSize int
	// Concurrency is the number of concurrent writers in total (spread
	// round-robin over the DCs), and of KV putters. Default 64.
	Concurrency int
	// Via is ViaAPI, ViaHTTP or ViaTxn. Default ViaAPI.
	Via string
	// TxnOps is the number of puts per transaction with ViaTxn; Writes
	// counts keys, so a run makes Writes/TxnOps transactions (the last one
	// smaller when it does not divide). Default 100.
	TxnOps int
	// Rate is the target replicated write rate in writes/s; 0 writes as
	// fast as the writers can.
	Rate float64
	// Duration, when positive, makes a timed run: the writers write for
	// this long at Rate (0: as fast as they can) over Keys keys, each write
	// overwriting a key with the context of its current state, while a
	// sampler records the process's memory every SampleEvery. Writes is
	// then ignored, the baseline and KV phases are skipped and Via must be
	// api.
	Duration time.Duration
	// Keys is the key space of a timed run. Default 10000.
	Keys int
	// SampleEvery is the memory sampling interval of a timed run. Default
	// 10s.
	SampleEvery time.Duration
	// Partitions is each DC's partition count. Default 16 (the config
	// default).
	Partitions int
	// ChangesMaxBytes, if above 0, is each DC's changes.max_bytes, the
	// change feed's size bound, so that a --duration run shows the feed's
	// disk use level off within the run. Default 0: the config default
	// (1 GiB).
	ChangesMaxBytes int64
	// ChangesOff runs the DCs with changes.off: no change feed, to
	// measure what the feed costs.
	ChangesOff bool
	// NoFsync runs the DCs with durability.fsync false. Only to measure
	// what fsync costs: such a DC acknowledges writes a power failure loses.
	NoFsync bool
	// NoReferences skips the baseline, KV and HTTP floor phases (for rate
	// sweeps and profiling); the ratio is then 0.
	NoReferences bool
	// Timeout bounds the wait, once the last write is acknowledged, for
	// every DC to apply every write. Default 2m.
	Timeout time.Duration
	// Dir holds the NATS and Pebble data; default a temporary directory,
	// removed after.
	Dir string
	// Progress receives the progress bar; nil discards it.
	Progress io.Writer
	// CPUProfile, if set, receives a CPU profile of the replicator phase.
	CPUProfile io.Writer
	// MemProfile, if set, receives the heap allocation profile (allocs)
	// taken at the end of the replicator phase; it counts the process's
	// allocations since it started. A timed run writes the heap profile
	// (in-use and allocated) after a GC at the end of its writes instead.
	MemProfile io.Writer
	// Trace, if set, receives an execution trace of the replicator phase:
	// `go tool trace -pprof=sync|syscall|sched` shows where it waits.
	Trace io.Writer
	// Logger receives the nodes' log lines; nil discards them.
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.Topology == "" {
		o.Topology = config.Mesh
	}
	if o.DCs == 0 {
		o.DCs = 3
	}
	if o.Writes == 0 {
		o.Writes = 50000
	}
	if o.ValueSize == 0 {
		o.ValueSize = 100
	}
	if o.Concurrency == 0 {
		o.Concurrency = 64
	}
	if o.Via == "" {
		o.Via = ViaAPI
	}
	if o.TxnOps == 0 {
		o.TxnOps = 100
	}
	if o.Partitions == 0 {
		o.Partitions = config.Default().Partitions
	}
	if o.Keys == 0 {
		o.Keys = 10000
	}
	if o.SampleEvery == 0 {
		o.SampleEvery = 10 * time.Second
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with o at once. Run calls it after
// filling in defaults.
func (o Options) Validate() error {
	var errs []error
	switch o.Topology {
	case config.Mesh, config.Ring, config.Star:
	default:
		errs = append(errs, fmt.Errorf("topology %q: want mesh, ring or star", o.Topology))
	}
	if o.DCs < 2 || o.DCs > config.MaxDCs {
		errs = append(errs, fmt.Errorf("dcs %d: want 2..%d", o.DCs, config.MaxDCs))
	} else if o.Topology != config.Mesh && o.DCs < 3 {
		errs = append(errs, fmt.Errorf("dcs %d: a %s needs at least 3 DCs", o.DCs, o.Topology))
	}
	if o.Writes < 1 {
		errs = append(errs, fmt.Errorf("writes %d: want at least 1", o.Writes))
	}
	if o.ValueSize < 1 || o.ValueSize > 512*1024 {
		errs = append(errs, fmt.Errorf("value size %d: want 1..524288 bytes", o.ValueSize))
	}
	if o.Concurrency < 1 || o.Concurrency > 4096 {
		errs = append(errs, fmt.Errorf("concurrency %d: want 1..4096", o.Concurrency))
	}
	switch o.Via {
	case ViaAPI, ViaHTTP, ViaTxn:
	default:
		errs = append(errs, fmt.Errorf("via %q: want api, http or txn", o.Via))
	}
	if o.TxnOps < 1 || o.TxnOps > 100000 {
		errs = append(errs, fmt.Errorf("txn-ops %d: want 1..100000 puts per transaction", o.TxnOps))
	}
	if o.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate %g: want 0 (as fast as possible) or a positive writes/s", o.Rate))
	}
	if o.Duration < 0 {
		errs = append(errs, fmt.Errorf("duration %s: want 0 (a fixed number of writes) or positive", o.Duration))
	}
	if o.Duration > 0 {
		if o.Keys < 1 {
			errs = append(errs, fmt.Errorf("keys %d: want at least 1", o.Keys))
		}
		if o.SampleEvery < 10*time.Millisecond {
			errs = append(errs, fmt.Errorf("sample-every %s: want at least 10ms", o.SampleEvery))
		}
		if o.Via != ViaAPI {
			errs = append(errs, fmt.Errorf("via %q: a timed run (duration) writes via api", o.Via))
		}
	}
	if o.Partitions < 1 || o.Partitions > 1024 {
		errs = append(errs, fmt.Errorf("partitions %d: want 1..1024", o.Partitions))
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench: %w", errors.Join(errs...))
	}
	return nil
}

// Result is what a run measured; its JSON form is `replicator bench --json`.
// Durations are in milliseconds, rates per second.
type Result struct {
	// The parameters.
	Topology    string  `json:"topology"`
	DCs         int     `json:"dcs"`
	Writes      int     `json:"writes"`
	ValueSize   int     `json:"value_size"`
	Concurrency int     `json:"concurrency"`
	Via         string  `json:"via"`
	TxnOps      int     `json:"txn_ops,omitempty"` // with via txn
	Rate        float64 `json:"rate"`
	Partitions  int     `json:"partitions"`
	Fsync       bool    `json:"fsync"`
	GoMaxProcs  int     `json:"gomaxprocs"`

	// DurationS and Keys are set by a timed run (Options.Duration); Writes
	// is then the number of writes it made.
	DurationS float64 `json:"duration_s,omitempty"`
	Keys      int     `json:"keys,omitempty"`

	// Converged reports that every DC applied every write and all DCs show
	// the same digest.
	Converged bool `json:"converged"`

	// The baseline: raw JetStream async publish, consumed and acked by
	// DCs-1 durable pull consumers. It runs right before and right after
	// the replicator; BaselineMsgsPerS is the mean of the two.
	BaselineMsgsPerS       float64 `json:"baseline_msgs_per_s"`
	BaselineBeforeMsgsPerS float64 `json:"baseline_before_msgs_per_s"`
	BaselineAfterMsgsPerS  float64 `json:"baseline_after_msgs_per_s"`
	BaselineCPUSPer1k      float64 `json:"baseline_cpu_s_per_1k"`
	// The second reference: NATS KV Put with Concurrency putters.
	KVPutsPerS  float64 `json:"kv_puts_per_s"`
	KVPutP50MS  float64 `json:"kv_put_p50_ms"`
	KVPutP99MS  float64 `json:"kv_put_p99_ms"`
	KVCPUSPer1k float64 `json:"kv_cpu_s_per_1k"`
	// The third reference, with via http: a trivial handler (read the
	// body, answer a fixed write answer) served and driven in this process
	// with the writers' client, the same number of keep-alive connections
	// and PUTs of the same values, HTTPFloorReqPerS PUTs/s at
	// HTTPFloorCPUSPer1k CPU-s per 1,000: what the HTTP row can reach at
	// most. HTTPFloorRatio is WritesPerS / HTTPFloorReqPerS.
	HTTPFloorReqPerS   float64 `json:"http_floor_req_per_s,omitempty"`
	HTTPFloorCPUSPer1k float64 `json:"http_floor_cpu_s_per_1k,omitempty"`
	HTTPFloorRatio     float64 `json:"http_floor_ratio,omitempty"`

	// WritesPerS is end-to-end: writes over the time from the first write
	// to the moment the last DC applied the last write. With via txn a
	// write is a key (one op of a transaction), and TxnKeysPerS repeats it.
	WritesPerS  float64 `json:"writes_per_s"`
	TxnKeysPerS float64 `json:"txn_keys_per_s,omitempty"`
	// AckedWritesPerS is the local acknowledgement rate during the writes.
	AckedWritesPerS float64 `json:"acked_writes_per_s"`
	// Ratio is WritesPerS / BaselineMsgsPerS (with via txn, keys written
	// per second over the baseline's messages per second).
	Ratio float64 `json:"ratio"`
	// CPURatio is BaselineCPUSPer1k / CPUSPer1k: the ratio a machine
	// that both saturate would show, and far less sensitive than Ratio to
	// other load on a shared machine.
	CPURatio float64 `json:"cpu_ratio"`
	// Replication lag, from the origin's acknowledgement of a write to its
	// apply at each other DC, over every (write, DC) pair; sampled, see
	// LagResolutionMS.
	LagP50MS float64 `json:"lag_p50_ms"`
	LagP99MS float64 `json:"lag_p99_ms"`
	LagMaxMS float64 `json:"lag_max_ms"`
	// LagResolutionMS is the mean interval between two samples of the DCs'
	// applied vectors: each apply time is known to within it (an upper
	// bound: the apply happened at or before the sample).
	LagResolutionMS float64 `json:"lag_resolution_ms"`
	LagSamples      int     `json:"lag_samples"`
	// Local durable write latency, call to acknowledgement (with via txn,
	// of a whole transaction).
	WriteP50MS float64 `json:"write_p50_ms"`
	WriteP99MS float64 `json:"write_p99_ms"`
	// ConvergeTailMS is the time from the last acknowledgement to the last
	// apply.
	ConvergeTailMS float64 `json:"converge_tail_ms"`
	// MaxOutboxDepth is the most events any DC held unpublished at one
	// sample: a deep outbox means publishing, not applying, is behind.
	MaxOutboxDepth uint64 `json:"max_outbox_depth"`
	// CPUSPer1k is the process's user+system CPU seconds per 1,000 writes
	// over the replicator phase (NATS server included: it runs in process).
	CPUSPer1k float64 `json:"cpu_s_per_1k"`
	// PeakRSSMB is the process's peak resident set during the replicator
	// phase (on Linux; elsewhere the process's peak so far).
	PeakRSSMB float64 `json:"peak_rss_mb"`
	// AllocsPerWrite and AllocBytesPerWrite are the process's heap
	// allocations per write over the replicator phase.
	AllocsPerWrite     float64 `json:"allocs_per_write"`
	AllocBytesPerWrite float64 `json:"alloc_bytes_per_write"`
	// WireBytesPerWrite is the bytes every DC's event stream stores, over
	// the writes; WireBytesPerEvent the same over the stored messages.
	// StreamMsgsPerWrite counts stored messages per write (forwarding in a
	// ring or star stores one write more than once).
	WireBytesPerWrite  float64 `json:"wire_bytes_per_write"`
	WireBytesPerEvent  float64 `json:"wire_bytes_per_event"`
	StreamMsgsPerWrite float64 `json:"stream_msgs_per_write"`
	// OverheadBytesPerEvent is a stored event's NATS header block plus its
	// msgpack payload, minus its key and value, averaged over sampled
	// messages (a transaction's message over its ops: with via txn, per
	// key). OverheadMaxBytesPerEvent is the same for an event whose
	// context and path name every DC, the most this DC count can carry.
	OverheadBytesPerEvent    float64 `json:"overhead_bytes_per_event"`
	OverheadMaxBytesPerEvent int     `json:"overhead_max_bytes_per_event"`
	// HeaderBytesPerEvent is the NATS header block alone (it repeats the
	// key); PayloadOverheadBytesPerEvent the msgpack payload beyond key
	// and value. Their sum minus the key is OverheadBytesPerEvent.
	HeaderBytesPerEvent          float64 `json:"header_bytes_per_event"`
	PayloadOverheadBytesPerEvent float64 `json:"payload_overhead_bytes_per_event"`
	// OverheadBreakdown splits the sampled events' bytes beyond the value:
	// each header's "Name: value\r\n" line, the header block's framing,
	// and the msgpack payload without the value (with the key, which the
	// Repl-Key line repeats). Its sum less the key is
	// OverheadBytesPerEvent.
	OverheadBreakdown map[string]float64 `json:"overhead_breakdown,omitempty"`
	// BaselineBytesPerMsg is what the baseline stream stores per message:
	// the value, a Nats-Msg-Id header and JetStream's own framing.
	BaselineBytesPerMsg float64 `json:"baseline_bytes_per_msg"`

	// Bridge counters summed over the DCs.
	Published  uint64 `json:"published"`
	Applied    uint64 `json:"applied"`
	Forwarded  uint64 `json:"forwarded"`
	Gaps       uint64 `json:"gaps"`
	Duplicates uint64 `json:"duplicates"`
	// Received counts the messages the DCs' consumers took from upstream
	// streams, redeliveries included.
	Received uint64 `json:"received"`

	// The cost of a write as the DC count grows (docs/SCALING.md).
	// PublishesPerWrite is Published over the writes: events JetStream
	// stored, first publishes and forwards. DeliveriesPerWrite is
	// Received over the writes: messages consumers fetched. Consumers is
	// the number of durable consumers (links) of all DCs together.
	PublishesPerWrite  float64 `json:"publishes_per_write"`
	DeliveriesPerWrite float64 `json:"deliveries_per_write"`
	Consumers          int     `json:"consumers"`
	// ServerInBytesPerWrite and ServerOutBytesPerWrite are what the NATS
	// server received from and sent to its clients during the replicator
	// phase (varz in_bytes and out_bytes: publishes, deliveries, acks,
	// applied-vector reports, JetStream API calls), over the writes:
	// the traffic a write causes on the wire. ServerInMsgsPerWrite and
	// ServerOutMsgsPerWrite count the messages the same way.
	ServerInBytesPerWrite  float64 `json:"server_in_bytes_per_write"`
	ServerOutBytesPerWrite float64 `json:"server_out_bytes_per_write"`
	ServerInMsgsPerWrite   float64 `json:"server_in_msgs_per_write"`
	ServerOutMsgsPerWrite  float64 `json:"server_out_msgs_per_write"`
	// The committers' work summed over the DCs: batches committed (one
	// fsync each) and the requests (local writes, applied fetches,
	// bookkeeping) they carried. The fewer requests per group, the more
	// each write pays for its batch and its fsync.
	CommitGroups     uint64  `json:"commit_groups"`
	CommitRequests   uint64  `json:"commit_requests"`
	RequestsPerGroup float64 `json:"requests_per_group"`

	// The applied-vector reports every DC sent while the writes were
	// replicated (repl.applied.<dc>: periodic, and soon after each move of
	// its durable applied vector, at most every 20ms), all DCs together:
	// messages and payload bytes per second, and payload bytes per write.
	ReportsPerS         float64 `json:"reports_per_s"`
	ReportBytesPerS     float64 `json:"report_bytes_per_s"`
	ReportBytesPerWrite float64 `json:"report_bytes_per_write"`

	// MemorySamples is a timed run's memory series and Memory its summary.
	MemorySamples []MemorySample `json:"memory_samples,omitempty"`
	Memory        *MemorySummary `json:"memory,omitempty"`

	// Phase durations.
	ReplicatorMS float64 `json:"replicator_ms"`
	BaselineMS   float64 `json:"baseline_ms"`
	KVMS         float64 `json:"kv_ms"`
	HTTPFloorMS  float64 `json:"http_floor_ms,omitempty"`
	ElapsedMS    float64 `json:"elapsed_ms"`
}

// Run runs the phases: the baseline, the replicator, the baseline again
// (the two baselines bracket the replicator, so that a machine whose load
// drifts during the run skews the ratio less) and the KV reference. It
// returns an error when a phase could not run or the DCs did not all apply
// every write within Options.Timeout.
func Run(ctx context.Context, o Options) (Result, error) {
	o.defaults()
	if err := o.Validate(); err != nil {
		return Result{}, err
	}
	start := time.Now()
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "replicator-bench-")
		if err != nil {
			return Result{}, fmt.Errorf("bench: %w", err)
		}
		defer os.RemoveAll(dir)
		o.Dir = dir
	}
	res := Result{
		Topology: o.Topology, DCs: o.DCs, Writes: o.Writes, ValueSize: o.ValueSize,
		Concurrency: o.Concurrency, Via: o.Via, Rate: o.Rate, Partitions: o.Partitions,
		Fsync: !o.NoFsync, GoMaxProcs: runtime.GOMAXPROCS(0),
	}
	if o.Via == ViaTxn {
		res.TxnOps = o.TxnOps
	}
	if o.Duration > 0 {
		res.DurationS, res.Keys = o.Duration.Seconds(), o.Keys
		err := runTimed(ctx, o, filepath.Join(o.Dir, "replicator"), newValues(o.ValueSize, o.Keys), &res)
		res.ElapsedMS = ms(time.Since(start))
		return res, err
	}
	values := newValues(o.ValueSize, o.Writes)

	var before, after baseline
	if !o.NoReferences {
		var err error
		if before, err = runBaseline(ctx, o, filepath.Join(o.Dir, "baseline-1"), "baseline", values); err != nil {
			return res, err
		}
		settle()
	}
	if err := runReplicator(ctx, o, filepath.Join(o.Dir, "replicator"), values, &res); err != nil {
		return res, err
	}
	if !o.NoReferences {
		settle()
		var err error
		if after, err = runBaseline(ctx, o, filepath.Join(o.Dir, "baseline-2"), "baseline", values); err != nil {
			return res, err
		}
		res.BaselineBeforeMsgsPerS, res.BaselineAfterMsgsPerS = before.msgsPerS, after.msgsPerS
		res.BaselineMsgsPerS = (before.msgsPerS + after.msgsPerS) / 2
		res.BaselineCPUSPer1k = (before.cpuSPer1k + after.cpuSPer1k) / 2
		res.BaselineBytesPerMsg = after.bytesPerMsg
		res.BaselineMS = ms(before.took + after.took)
		settle()
		if err := runKV(ctx, o, filepath.Join(o.Dir, "kv"), values, &res); err != nil {
			return res, err
		}
		if o.Via == ViaHTTP {
			settle()
			if err := runHTTPFloor(ctx, o, values, &res); err != nil {
				return res, err
			}
			res.HTTPFloorRatio = res.WritesPerS / res.HTTPFloorReqPerS
		}
		res.Ratio = res.WritesPerS / res.BaselineMsgsPerS
		if res.CPUSPer1k > 0 {
			res.CPURatio = res.BaselineCPUSPer1k / res.CPUSPer1k
		}
	}
	res.ElapsedMS = ms(time.Since(start))
	return res, nil
}

// settle returns the previous phase's garbage before the next one starts,
// so that it does not pay for it.
func settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// WriteJSON writes r as one indented JSON object.
func WriteJSON(w io.Writer, r Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes r for people.
func WriteTable(w io.Writer, r Result) {
	fmt.Fprintf(w, "replicator bench: %s, %d DCs, %d writes of %d B, %d writers via %s", r.Topology, r.DCs, r.Writes, r.ValueSize, r.Concurrency, r.Via)
	if r.TxnOps > 0 {
		fmt.Fprintf(w, " (%d puts per transaction)", r.TxnOps)
	}
	if r.Rate > 0 {
		fmt.Fprintf(w, ", rate %.0f/s", r.Rate)
	}
	if r.DurationS > 0 {
		fmt.Fprintf(w, ", timed %.0f s over %d keys", r.DurationS, r.Keys)
	}
	if !r.Fsync {
		fmt.Fprint(w, ", fsync OFF")
	}
	fmt.Fprintf(w, ", GOMAXPROCS %d\n\n", r.GoMaxProcs)
	row := func(name, format string, args ...any) {
		fmt.Fprintf(w, "  %-34s "+format+"\n", append([]any{name}, args...)...)
	}
	if r.BaselineMsgsPerS > 0 {
		row("baseline (JetStream pub+consume)", "%10.0f msgs/s   %.3f CPU-s/1k (%.0f before, %.0f after)",
			r.BaselineMsgsPerS, r.BaselineCPUSPer1k, r.BaselineBeforeMsgsPerS, r.BaselineAfterMsgsPerS)
		row("NATS KV put", "%10.0f puts/s   p50 %.2f ms  p99 %.2f ms", r.KVPutsPerS, r.KVPutP50MS, r.KVPutP99MS)
	}
	if r.HTTPFloorReqPerS > 0 {
		row("HTTP floor (trivial handler)", "%10.0f PUTs/s     %.3f CPU-s/1k", r.HTTPFloorReqPerS, r.HTTPFloorCPUSPer1k)
	}
	row("replicator end-to-end", "%10.0f writes/s (acked at %.0f/s)", r.WritesPerS, r.AckedWritesPerS)
	if r.Ratio > 0 {
		row("ratio to baseline", "%10.1f %% (CPU per write: %.1f %%)", 100*r.Ratio, 100*r.CPURatio)
	}
	if r.HTTPFloorRatio > 0 {
		row("ratio to the HTTP floor", "%10.1f %%", 100*r.HTTPFloorRatio)
	}
	if r.DurationS == 0 { // a timed run keeps no per-write times
		row("replication lag", "p50 %.1f ms  p99 %.1f ms  max %.1f ms (±%.1f ms, %d samples)", r.LagP50MS, r.LagP99MS, r.LagMaxMS, r.LagResolutionMS, r.LagSamples)
		row("local durable write", "p50 %.2f ms  p99 %.2f ms", r.WriteP50MS, r.WriteP99MS)
	}
	row("deepest outbox", "%d events", r.MaxOutboxDepth)
	row("commit groups (all DCs)", "%d, %.1f requests each", r.CommitGroups, r.RequestsPerGroup)
	row("CPU per 1,000 writes", "%.3f s", r.CPUSPer1k)
	row("heap allocations per write", "%.0f (%.0f B)", r.AllocsPerWrite, r.AllocBytesPerWrite)
	row("peak RSS", "%.0f MB", r.PeakRSSMB)
	if r.PublishesPerWrite > 0 {
		row("per write", "%.2f publishes, %.2f deliveries (%d consumers)", r.PublishesPerWrite, r.DeliveriesPerWrite, r.Consumers)
		row("NATS server traffic per write", "in %.0f B (%.1f msgs), out %.0f B (%.1f msgs)",
			r.ServerInBytesPerWrite, r.ServerInMsgsPerWrite, r.ServerOutBytesPerWrite, r.ServerOutMsgsPerWrite)
	}
	row("stream bytes per write", "%.0f B (%.2f stored msgs/write, %.0f B each)", r.WireBytesPerWrite, r.StreamMsgsPerWrite, r.WireBytesPerEvent)
	row("event overhead beyond key+value", "%.0f B: headers %.0f B, payload %.0f B (at most %d B with %d DCs)",
		r.OverheadBytesPerEvent, r.HeaderBytesPerEvent, r.PayloadOverheadBytesPerEvent, r.OverheadMaxBytesPerEvent, r.DCs)
	if r.BaselineBytesPerMsg > 0 {
		row("baseline stream bytes per msg", "%.0f B", r.BaselineBytesPerMsg)
	}
	if r.ReportsPerS > 0 {
		row("applied-vector reports (all DCs)", "%.0f msgs/s, %.0f B/s (%.1f B per write)", r.ReportsPerS, r.ReportBytesPerS, r.ReportBytesPerWrite)
	}
	if m := r.Memory; m != nil {
		row("RSS at 1 min / end / max", "%.0f / %.0f / %.0f MB, %+.2f MB/min over the second half", m.RSSAt1MinMB, m.RSSEndMB, m.RSSMaxMB, m.RSSSlopeMBPerMin)
		row("heap in use at 1 min / end / max", "%.0f / %.0f / %.0f MB, %+.2f MB/min over the second half", m.HeapAt1MinMB, m.HeapEndMB, m.HeapMaxMB, m.HeapSlopeMBPerMin)
		row("goroutines at 1 min / end / max", "%d / %d / %d", m.GoroutinesAt1Min, m.GoroutinesEnd, m.GoroutinesMax)
	}
	row("converged", "%v", r.Converged)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
