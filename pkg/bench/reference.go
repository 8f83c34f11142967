package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/cluster"
)

// The product's settings the references copy, so that they measure the
// same transport work (see bridge.Options and bridge.StreamOptions).
const (
	publishWindow = 256  // bridge.Options.PublishWindow
	maxAckPending = 4096 // bridge.Options.MaxAckPending
	pullMaxMsgs   = 512  // 2 × bridge.Options.Batch
	referenceWait = 2 * time.Minute
	// publishAckTimeout is bridge.Options.PublishAckTimeout: how long a
	// publish may wait for room in the window.
	publishAckTimeout = 5 * time.Second
	baselineStream    = "BENCH_BASELINE"
)

// startNATS starts a fresh embedded server for one phase.
func startNATS(dir, name string) (*cluster.Server, error) {
	return cluster.StartServer(cluster.ServerOptions{Dir: filepath.Join(dir, "nats"), Name: name})
}

func stopNATS(ns *cluster.Server) { ns.Stop() }

// baseline is one baseline measure.
type baseline struct {
	msgsPerS, cpuSPer1k, bytesPerMsg float64
	took                             time.Duration
}

// runBaseline publishes o.Writes messages of o.ValueSize bytes with async
// JetStream publishes (at most publishWindow unacknowledged, each with a
// Nats-Msg-Id) to one file-storage stream with the product's 2m duplicate
// window, and times until each of o.DCs-1 durable pull consumers, each on
// its own connection, has received and acked every message.
func runBaseline(ctx context.Context, o Options, dir, label string, vals values) (baseline, error) {
	var b baseline
	phaseStart := time.Now()
	ns, err := startNATS(dir, "baseline")
	if err != nil {
		return b, err
	}
	defer stopNATS(ns)
	nc, err := nats.Connect(ns.URL(), nats.Name("bench-baseline-pub"))
	if err != nil {
		return b, fmt.Errorf("bench: baseline: connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(publishWindow))
	if err != nil {
		return b, fmt.Errorf("bench: baseline: %w", err)
	}
	subjects := make([]string, o.Partitions)
	for p := range subjects {
		subjects[p] = "bench." + strconv.Itoa(p)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: baselineStream, Subjects: subjects, Retention: jetstream.LimitsPolicy,
		MaxMsgs: -1, MaxBytes: bridge.DefaultMaxBytes, Discard: jetstream.DiscardNew,
		Storage: jetstream.FileStorage, Replicas: 1, Duplicates: bridge.DefaultDuplicateWindow,
	})
	if err != nil {
		return b, fmt.Errorf("bench: baseline: create stream: %w", err)
	}

	n := int64(o.Writes)
	downstream := o.DCs - 1
	var acked atomic.Int64
	bar := startProgress(o.Progress, label, n*int64(downstream))
	defer bar.stop()
	allDone := make(chan struct{})
	var pending atomic.Int64
	pending.Store(int64(downstream))
	for c := range downstream {
		cnc, err := nats.Connect(ns.URL(), nats.Name(fmt.Sprintf("bench-baseline-dc%d", c+2)))
		if err != nil {
			return b, fmt.Errorf("bench: baseline: connect: %w", err)
		}
		defer cnc.Close()
		cjs, err := jetstream.New(cnc)
		if err != nil {
			return b, fmt.Errorf("bench: baseline: %w", err)
		}
		cons, err := cjs.CreateOrUpdateConsumer(ctx, baselineStream, jetstream.ConsumerConfig{
			Durable: fmt.Sprintf("dc%d", c+2), AckPolicy: jetstream.AckExplicitPolicy,
			DeliverPolicy: jetstream.DeliverAllPolicy, AckWait: 30 * time.Second, MaxAckPending: maxAckPending,
		})
		if err != nil {
			return b, fmt.Errorf("bench: baseline: create consumer: %w", err)
		}
		var got atomic.Int64
		cc, err := cons.Consume(func(m jetstream.Msg) {
			if err := m.Ack(); err != nil {
				return // redelivered after AckWait
			}
			bar.done.Add(1)
			acked.Add(1)
			if got.Add(1) == n && pending.Add(-1) == 0 {
				close(allDone)
			}
		}, jetstream.PullMaxMessages(pullMaxMsgs))
		if err != nil {
			return b, fmt.Errorf("bench: baseline: consume: %w", err)
		}
		defer cc.Stop()
	}

	settle()
	before := readUsage()
	start := time.Now()
	futs := make([]jetstream.PubAckFuture, 0, n)
	for i := range o.Writes {
		p := i % o.Partitions
		m := &nats.Msg{Subject: subjects[p], Header: nats.Header{}, Data: vals.at(i)}
		m.Header.Set(jetstream.MsgIDHeader, "bench:"+strconv.Itoa(p)+":"+strconv.Itoa(i+1))
		f, err := js.PublishMsgAsync(m, jetstream.WithStallWait(publishAckTimeout))
		if err != nil {
			return b, fmt.Errorf("bench: baseline: publish %d: %w", i, err)
		}
		futs = append(futs, f)
	}
	wait, cancel := context.WithTimeout(ctx, referenceWait)
	defer cancel()
	select {
	case <-js.PublishAsyncComplete():
	case <-wait.Done():
		return b, fmt.Errorf("bench: baseline: publishes not acknowledged within %s", referenceWait)
	}
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return b, fmt.Errorf("bench: baseline: publish: %w", err)
		}
	}
	select {
	case <-allDone:
	case <-wait.Done():
		return b, fmt.Errorf("bench: baseline: consumers acked %d of %d messages within %s", acked.Load(), n*int64(downstream), referenceWait)
	}
	elapsed := time.Since(start)
	after := readUsage()
	bar.stop()
	if info, err := stream.Info(ctx); err == nil && info.State.Msgs > 0 {
		b.bytesPerMsg = float64(info.State.Bytes) / float64(info.State.Msgs)
	}
	b.msgsPerS = float64(n) / elapsed.Seconds()
	b.cpuSPer1k = (after.cpu - before.cpu).Seconds() * 1000 / float64(n)
	b.took = time.Since(phaseStart)
	fmt.Fprintf(o.Progress, "%s: %.0f msgs/s published and acked by %d consumers\n", label, b.msgsPerS, downstream)
	return b, nil
}

// runKV puts o.Writes values into a file-storage KV bucket (history 1)
// with o.Concurrency putters sharing one connection, as an application
// using NATS KV directly would.
func runKV(ctx context.Context, o Options, dir string, vals values, res *Result) error {
	phaseStart := time.Now()
	ns, err := startNATS(dir, "kv")
	if err != nil {
		return err
	}
	defer stopNATS(ns)
	nc, err := nats.Connect(ns.URL(), nats.Name("bench-kv"))
	if err != nil {
		return fmt.Errorf("bench: kv: connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("bench: kv: %w", err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench", Storage: jetstream.FileStorage, History: 1})
	if err != nil {
		return fmt.Errorf("bench: kv: create bucket: %w", err)
	}
	bar := startProgress(o.Progress, "kv", int64(o.Writes))
	defer bar.stop()
	settle()
	before := readUsage()
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, referenceWait)
	defer cancel()
	lats := make([][]time.Duration, o.Concurrency)
	err = drive(pctx, o, func(ctx context.Context, g, i int) error {
		t := time.Now()
		if _, err := kv.Put(ctx, key(i), vals.at(i)); err != nil {
			return fmt.Errorf("bench: kv: put %s: %w", key(i), err)
		}
		lats[g] = append(lats[g], time.Since(t))
		bar.done.Add(1)
		return nil
	})
	elapsed := time.Since(start)
	after := readUsage()
	bar.stop()
	if err != nil {
		return err
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	sortDurations(all)
	res.KVPutsPerS = float64(o.Writes) / elapsed.Seconds()
	res.KVPutP50MS, res.KVPutP99MS = percentile(all, 0.50), percentile(all, 0.99)
	res.KVCPUSPer1k = (after.cpu - before.cpu).Seconds() * 1000 / float64(o.Writes)
	res.KVMS = ms(time.Since(phaseStart))
	fmt.Fprintf(o.Progress, "kv: %.0f puts/s\n", res.KVPutsPerS)
	return nil
}
