package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/pprof"
	"runtime/trace"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/node"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// runReplicator starts o.DCs nodes on one embedded NATS server, writes
// o.Writes values through them and waits until every DC has applied every
// write, filling in the replicator's figures of res.
func runReplicator(ctx context.Context, o Options, dir string, vals values, res *Result) error {
	phaseStart := time.Now()
	peakReset := resetPeakRSS()
	c, err := startCluster(ctx, o, dir)
	if err != nil {
		return err
	}
	defer c.close()
	nodes := c.nodes
	fmt.Fprintf(o.Progress, "replicator: %d DCs (%s) on embedded NATS; %d writes of %d B by %d writers via %s\n",
		o.DCs, o.Topology, o.Writes, o.ValueSize, o.Concurrency, o.Via)

	stores := c.stores()
	settle()
	reportsBefore, reportBytesBefore := c.reports()
	trafficBefore, err := c.traffic()
	if err != nil {
		return err
	}
	bar := startProgress(o.Progress, "replicate", int64(o.Writes)).withSecond("applied", int64(o.Writes*(o.DCs-1)))
	defer bar.stop()
	before := readUsage()
	stopProfiles, err := startProfiles(o)
	if err != nil {
		return err
	}
	defer stopProfiles()
	t0 := time.Now()
	cm := newCommits(t0, len(nodes), o.Partitions)
	smp := newSampler(stores, c.names, o.Partitions, t0, &bar.second)
	sctx, cancelSampler := context.WithCancel(ctx)
	defer cancelSampler()
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		smp.run(sctx)
	}()

	w := &writers{o: o, nodes: nodes, vals: vals, commits: cm, t0: t0, done: &bar.done}
	latencies, werr := w.run(ctx)
	acked := time.Since(t0)
	if werr != nil {
		cancelSampler()
		<-sampled
		return werr
	}
	smp.setTarget(cm.targets())
	timeout := time.NewTimer(o.Timeout)
	select {
	case <-sampled:
	case <-timeout.C:
		cancelSampler()
		<-sampled
	}
	timeout.Stop()
	after := readUsage()
	stopProfiles()
	bar.stop()
	if o.MemProfile != nil {
		if err := pprof.Lookup("allocs").WriteTo(o.MemProfile, 0); err != nil {
			return fmt.Errorf("bench: allocation profile: %w", err)
		}
	}
	if !smp.covered {
		return fmt.Errorf("bench: not every DC applied every write within %s (%d of %d remote applies seen); raise --timeout or look at the nodes' logs",
			o.Timeout, bar.second.Load(), int64(o.Writes*(o.DCs-1)))
	}
	total := smp.coveredAt.Sub(t0)

	res.WritesPerS = float64(o.Writes) / total.Seconds()
	if o.Via == ViaTxn {
		res.TxnKeysPerS = res.WritesPerS
	}
	res.AckedWritesPerS = float64(o.Writes) / acked.Seconds()
	res.ConvergeTailMS = ms(total - acked)
	lags := sortDurations(smp.lags(cm))
	res.LagSamples = len(lags)
	res.LagP50MS, res.LagP99MS = percentile(lags, 0.50), percentile(lags, 0.99)
	if len(lags) > 0 {
		res.LagMaxMS = ms(lags[len(lags)-1])
	}
	res.LagResolutionMS = ms(smp.resolution())
	reports, reportBytes := c.reports()
	trafficAfter, err := c.traffic()
	if err != nil {
		return err
	}
	res.ServerInBytesPerWrite = float64(trafficAfter.InBytes-trafficBefore.InBytes) / float64(o.Writes)
	res.ServerOutBytesPerWrite = float64(trafficAfter.OutBytes-trafficBefore.OutBytes) / float64(o.Writes)
	res.ServerInMsgsPerWrite = float64(trafficAfter.InMsgs-trafficBefore.InMsgs) / float64(o.Writes)
	res.ServerOutMsgsPerWrite = float64(trafficAfter.OutMsgs-trafficBefore.OutMsgs) / float64(o.Writes)
	res.ReportsPerS = float64(reports-reportsBefore) / total.Seconds()
	res.ReportBytesPerS = float64(reportBytes-reportBytesBefore) / total.Seconds()
	res.ReportBytesPerWrite = float64(reportBytes-reportBytesBefore) / float64(o.Writes)
	res.MaxOutboxDepth = smp.maxOutbox
	sortDurations(latencies)
	res.WriteP50MS, res.WriteP99MS = percentile(latencies, 0.50), percentile(latencies, 0.99)
	fillUsage(res, before, after, o.Writes, peakReset)
	if err := c.measure(ctx, o, res); err != nil {
		return err
	}
	res.ReplicatorMS = ms(time.Since(phaseStart))
	fmt.Fprintf(o.Progress, "replicator: %.0f writes/s end to end, lag p99 %.1f ms\n", res.WritesPerS, res.LagP99MS)
	return nil
}

// fillUsage sets res's CPU, allocation and peak RSS figures of a phase
// that made writes writes between the readings before and after.
func fillUsage(res *Result, before, after usage, writes int, peakReset bool) {
	res.PeakRSSMB = float64(after.maxRSSBytes) / (1 << 20)
	if hwm, ok := peakRSS(); ok && peakReset {
		res.PeakRSSMB = float64(hwm) / (1 << 20)
	}
	if writes == 0 {
		return
	}
	res.CPUSPer1k = (after.cpu - before.cpu).Seconds() * 1000 / float64(writes)
	res.AllocsPerWrite = float64(after.mallocs-before.mallocs) / float64(writes)
	res.AllocBytesPerWrite = float64(after.allocBytes-before.allocBytes) / float64(writes)
}

// measure sums the DCs' bridge counters into res, measures their streams
// (o.Writes is the number of writes made) and checks that they converged.
func (c *dcs) measure(ctx context.Context, o Options, res *Result) error {
	dctx, cancel := context.WithTimeout(ctx, o.Timeout)
	err := waitDelivered(dctx, c.c.URL(), c.names)
	cancel()
	if err != nil {
		return err
	}
	for _, n := range c.nodes {
		st := n.Replicator().Stats()
		res.Published += st.Published
		res.Applied += st.Applied
		res.Forwarded += st.Forwarded
		res.Gaps += st.Gaps
		res.Duplicates += st.Duplicates
		res.Received += st.Received
		res.Consumers += len(n.Replicator().Status().Links)
		cs := n.Store().Stats()
		res.CommitGroups += cs.Groups
		res.CommitRequests += cs.Requests
	}
	res.PublishesPerWrite = float64(res.Published) / float64(o.Writes)
	res.DeliveriesPerWrite = float64(res.Received) / float64(o.Writes)
	if res.CommitGroups > 0 {
		res.RequestsPerGroup = float64(res.CommitRequests) / float64(res.CommitGroups)
	}
	if err := measureWire(ctx, c.c.URL(), c.names, o, res); err != nil {
		return err
	}
	res.Converged, _ = cluster.SameDigests(c.stores())
	return nil
}

// traffic is the NATS server's client traffic so far.
func (c *dcs) traffic() (*server.Varz, error) {
	v, err := c.ns.NATS().Varz(nil)
	if err != nil {
		return nil, fmt.Errorf("bench: server traffic: %w", err)
	}
	return v, nil
}

// reports sums the applied-vector reports the DCs sent, and their bytes.
func (c *dcs) reports() (n, bytes uint64) {
	for _, nd := range c.nodes {
		st := nd.Replicator().Stats()
		n += st.ReportsSent
		bytes += st.ReportBytes
	}
	return n, bytes
}

// dcs is the replicator phase's DCs: o.DCs nodes on one embedded NATS
// server.
type dcs struct {
	ns    *cluster.Server
	c     *cluster.Cluster
	names []string
	nodes []*node.Node
}

// startCluster starts o.DCs nodes with the product's defaults under dir and
// waits until their links run. The caller closes the cluster, also after
// an error.
func startCluster(ctx context.Context, o Options, dir string) (*dcs, error) {
	ns, err := startNATS(dir, "bench")
	if err != nil {
		return nil, err
	}
	c, err := cluster.New(ctx, cluster.Options{
		N: o.DCs, Topology: o.Topology, Partitions: o.Partitions, Dir: dir, Server: ns,
		HTTP: o.Via != ViaAPI,
		Config: func(cfg *config.Config) {
			// The bench's keys take the default resolver.
			cfg.Durability.Fsync = !o.NoFsync
			if o.ChangesMaxBytes > 0 {
				cfg.Changes.MaxBytes = o.ChangesMaxBytes
			}
			cfg.Changes.Off = o.ChangesOff
		},
		Logger: func(string) *slog.Logger { return o.Logger },
	})
	d := &dcs{ns: ns, c: c}
	if err != nil {
		return d, fmt.Errorf("bench: %w", err)
	}
	d.names, d.nodes = c.Names(), c.Nodes()
	if err := cluster.Wait(ctx, 30*time.Second, 10*time.Millisecond, "links", c.LinksConnected); err != nil {
		return d, fmt.Errorf("bench: %w", err)
	}
	return d, nil
}

// close stops the nodes, then the NATS server.
func (c *dcs) close() {
	c.c.Close()
	c.ns.Stop()
}

func (c *dcs) stores() []*changelog.Store { return c.c.Stores() }

// startProfiles starts the CPU profile and the execution trace o asks
// for; the function it returns stops them and may be called twice.
func startProfiles(o Options) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, f := range stops {
			f()
		}
		stops = nil
	}
	if o.CPUProfile != nil {
		if err := pprof.StartCPUProfile(o.CPUProfile); err != nil {
			return stop, fmt.Errorf("bench: cpu profile: %w", err)
		}
		stops = append(stops, pprof.StopCPUProfile)
	}
	if o.Trace != nil {
		if err := trace.Start(o.Trace); err != nil {
			stop()
			return func() {}, fmt.Errorf("bench: trace: %w", err)
		}
		stops = append(stops, trace.Stop)
	}
	return stop, nil
}

// writers issue the replicated writes: Concurrency goroutines, writer i at
// DC i mod DCs, taking write numbers from one counter.
type writers struct {
	o       Options
	nodes   []*node.Node
	vals    values
	commits *commits
	t0      time.Time
	done    *atomic.Int64
	next    atomic.Int64
	// until, when not zero, makes a timed run (Options.Duration): write
	// until then, over Options.Keys keys, each write a read-modify-write
	// with the context of the origin's current state so that the keys
	// keep one version and a flat memory means no leak; highs then
	// replaces commits and no latencies are kept.
	until time.Time
	highs highs
}

// run writes until every write is done and returns the local write
// latencies.
func (w *writers) run(ctx context.Context) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var client *http.Client
	if w.o.Via == ViaHTTP || w.o.Via == ViaTxn {
		var closeClient func()
		client, closeClient = newClient(w.o)
		defer closeClient()
	}
	lats := make([][]time.Duration, w.o.Concurrency)
	errs := make([]error, w.o.Concurrency)
	var wg sync.WaitGroup
	for g := range w.o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := g % len(w.nodes)
			if w.o.Via == ViaTxn {
				lats[g], errs[g] = w.txnLoop(ctx, d, client)
			} else {
				lats[g], errs[g] = w.loop(ctx, d, client)
			}
			if errs[g] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if errors.Is(err, ErrNoTxnEndpoint) {
			return nil, err // once, not once per writer
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return all, nil
}

func (w *writers) loop(ctx context.Context, d int, client *http.Client) ([]time.Duration, error) {
	n := w.nodes[d]
	var base string
	if client != nil {
		base = "http://" + n.HTTPAddr() + "/v1/kv/"
	}
	pace := w.pacer()
	defer pace.stop()
	var lats []time.Duration
	for {
		i := int(w.next.Add(1) - 1)
		if w.until.IsZero() && i >= w.o.Writes || !w.until.IsZero() && !time.Now().Before(w.until) {
			return lats, nil
		}
		if err := pace.wait(ctx, i); err != nil {
			return lats, err
		}
		k, v := key(i), w.vals.at(i)
		op := changelog.WriteOp{Key: k, Value: v}
		if !w.until.IsZero() {
			k = key(i % w.o.Keys)
			op.Key = k
			st, _, err := n.Store().Get(k)
			if err != nil {
				return lats, fmt.Errorf("bench: read %s at dc%d: %w", k, d+1, err)
			}
			op.Context = st.Clock
		}
		start := time.Now()
		var p uint32
		var seq uint64
		if client == nil {
			r, err := n.Write(ctx, op)
			if err != nil {
				return lats, fmt.Errorf("bench: write %s at dc%d: %w", k, d+1, err)
			}
			p, seq = r.Event.Partition, r.Event.Seq
		} else {
			dot, err := put(ctx, client, base+url.PathEscape(k), v)
			if err != nil {
				return lats, fmt.Errorf("bench: PUT %s at dc%d: %w", k, d+1, err)
			}
			p, seq = event.PartitionOf(k, w.o.Partitions), dot.N
		}
		now := time.Now()
		if w.highs != nil {
			w.highs.record(d, p, seq)
		} else {
			lats = append(lats, now.Sub(start))
			w.commits.record(d, p, seq, now)
		}
		w.done.Add(1)
	}
}

// txnLoop writes transactions of TxnOps keys through POST /v1/txn at DC d
// until every key is written, and returns their latencies.
func (w *writers) txnLoop(ctx context.Context, d int, client *http.Client) ([]time.Duration, error) {
	u := "http://" + w.nodes[d].HTTPAddr() + "/v1/txn"
	pace := w.pacer()
	defer pace.stop()
	keys := make([]string, 0, w.o.TxnOps)
	vals := make([][]byte, 0, w.o.TxnOps)
	var lats []time.Duration
	for {
		j := int(w.next.Add(1) - 1)
		if j >= txnCount(w.o.Writes, w.o.TxnOps) {
			return lats, nil
		}
		lo, hi := txnRange(j, w.o.TxnOps, w.o.Writes)
		if err := pace.wait(ctx, lo); err != nil {
			return lats, err
		}
		keys, vals = keys[:0], vals[:0]
		for i := lo; i < hi; i++ {
			keys, vals = append(keys, key(i)), append(vals, w.vals.at(i))
		}
		start := time.Now()
		dots, err := postTxn(ctx, client, u, keys, vals)
		if errors.Is(err, ErrNoTxnEndpoint) {
			return lats, fmt.Errorf("%w: dc%d answers 404 for POST /v1/txn, so this build does not serve transactions; run --via api or http, or a build that serves /v1/txn", err, d+1)
		}
		if err != nil {
			return lats, fmt.Errorf("bench: POST /v1/txn of %s..%s at dc%d: %w", keys[0], keys[len(keys)-1], d+1, err)
		}
		now := time.Now()
		lats = append(lats, now.Sub(start))
		for i, dot := range dots {
			w.commits.record(d, event.PartitionOf(keys[i], w.o.Partitions), dot.N, now)
		}
		w.done.Add(int64(len(keys)))
	}
}

// pacer holds writers to Options.Rate: write i is due i/Rate seconds after
// t0.
type pacer struct {
	w     *writers
	timer *time.Timer
}

func (w *writers) pacer() *pacer { return &pacer{w: w} }

// wait waits until write i is due, or ctx ends.
func (p *pacer) wait(ctx context.Context, i int) error {
	if p.w.o.Rate <= 0 {
		return nil
	}
	due := p.w.t0.Add(time.Duration(float64(i) / p.w.o.Rate * float64(time.Second)))
	wait := time.Until(due)
	if wait <= 0 {
		return nil
	}
	if p.timer == nil {
		p.timer = time.NewTimer(wait)
	} else {
		p.timer.Reset(wait)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-p.timer.C:
		return nil
	}
}

func (p *pacer) stop() {
	if p.timer != nil {
		p.timer.Stop()
	}
}

// put writes one value through the HTTP API and returns the write's dot.
func put(ctx context.Context, c *http.Client, u string, v []byte) (vclock.Dot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(v))
	if err != nil {
		return vclock.Dot{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return vclock.Dot{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return vclock.Dot{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return vclock.Dot{}, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var out struct {
		Dot string `json:"dot"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return vclock.Dot{}, fmt.Errorf("decode the answer: %w", err)
	}
	return vclock.ParseDot(out.Dot)
}
