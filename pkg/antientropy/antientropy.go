// Package antientropy repairs what the event stream could not deliver. It
// compares DCs' key states over NATS request/reply and merges the keys that
// differ, with the same dotted-version-vector merge as for events
// (changelog.Store.MergeStates): a DC restored from an old copy of its data
// dir, or one whose events JetStream lost, converges again, and nothing
// another DC superseded or purged comes back.
//
// Each DC serves its digest trees, bucket listings and key states on
// repl.ae.<dc>, and pulls from each peer in turn:
//
//	w, err := antientropy.New(antientropy.Options{Store: st, NC: nc, DC: "dc1", DCs: dcs, Partitions: 8})
//	err = w.Start(ctx)                 // serve, and run every Interval
//	rep, err := w.RunOnce(ctx, "dc2")  // or on demand
//	w.Close()
//
// A run compares each partition's tree of 256 bucket hashes with the
// peer's, lists the keys of the buckets that differ, fetches the peer's
// states of the keys that differ together with the knowledge they were read
// under, and merges them locally. Pulling is one-way; both directions
// converge because every DC pulls from every peer. RunSubject runs it
// against every peer on demand (`replicator repair`).
//
// Internal to the sidecar: not a stable Go API. Its request/reply protocol
// between sidecars (repl.ae.<dc>, package rpc) is versioned wire, described
// in docs/DESIGN.md.
package antientropy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/rpc"
)

// Store is what anti-entropy needs of the DC's change log.
type Store interface {
	Trees() ([]changelog.PartitionTree, error)
	Buckets(p uint32, buckets []int) ([]changelog.KeyHash, error)
	Export(keys []string) (changelog.Knowledge, map[string][]byte, error)
	MergeStates(ctx context.Context, states map[string]dvv.State, from changelog.Knowledge) (changelog.MergeStats, error)
	// Digest is the whole state's digest, for peers that ask for it
	// (GET /v1/digests).
	Digest() (changelog.Digest, error)
}

var _ Store = (*changelog.Store)(nil)

// Options configure a Worker.
type Options struct {
	Store Store
	// NC is the connection the worker serves and asks on.
	NC *nats.Conn
	// DC is this DC; DCs lists every DC, this one included.
	DC  string
	DCs []string
	// Partitions is the partition count, the same at every DC.
	Partitions int
	// Interval is how often the worker runs against every peer. Default 5
	// minutes; negative runs only on demand.
	Interval time.Duration
	// RequestTimeout bounds one request to a peer. Default 10 seconds.
	RequestTimeout time.Duration
	// Logger receives the worker's log lines; nil discards them.
	Logger *slog.Logger
}

// Report is what one run against one peer did.
type Report struct {
	Peer string `json:"peer"`
	// PartitionsCompared and PartitionsDiffered count the partitions whose
	// trees were compared, and those whose trees differed.
	PartitionsCompared int `json:"partitions_compared"`
	PartitionsDiffered int `json:"partitions_differed"`
	// BucketsDiffered counts the buckets whose hashes differed.
	BucketsDiffered int `json:"buckets_differed"`
	// KeysExchanged counts the keys whose states were fetched: those that
	// differ, or that one side lacks.
	KeysExchanged int `json:"keys_exchanged"`
	// KeysChanged counts the keys whose local state the merge changed.
	KeysChanged int `json:"keys_changed"`
	// VersionsTaken counts versions taken from the peer; VersionsDropped
	// local versions the peer knew superseded; KeysRemoved keys the peer
	// had purged; LostFound own versions lost by a restore and taken back.
	VersionsTaken   int `json:"versions_taken"`
	VersionsDropped int `json:"versions_dropped"`
	KeysRemoved     int `json:"keys_removed"`
	LostFound       int `json:"lost_found"`
	// KeysSkipped counts keys whose state is larger than a NATS message.
	KeysSkipped int `json:"keys_skipped"`
	// Requests counts the requests sent to the peer.
	Requests int           `json:"requests"`
	Duration time.Duration `json:"duration_ns"`
	Error    string        `json:"error,omitempty"`
}

func (r *Report) add(s changelog.MergeStats) {
	r.KeysChanged += s.Changed
	r.VersionsTaken += s.Taken
	r.VersionsDropped += s.Dropped
	r.KeysRemoved += s.Removed
	r.LostFound += s.Found
}

// RunReply is the JSON answer on RunSubject.
type RunReply struct {
	DC      string   `json:"dc"`
	Reports []Report `json:"reports"`
	Error   string   `json:"error,omitempty"`
}

// Worker serves a DC's anti-entropy requests and runs its repairs.
type Worker struct {
	opts     Options
	log      *slog.Logger
	peers    []string
	maxReply int

	run sync.Mutex // one run at a time

	cancel context.CancelFunc
	wg     sync.WaitGroup
	subs   []*nats.Subscription
	once   sync.Once
}

// New checks the options. It starts nothing.
func New(o Options) (*Worker, error) {
	var errs []error
	if o.Store == nil {
		errs = append(errs, errors.New("Store is required"))
	}
	if o.NC == nil {
		errs = append(errs, errors.New("NC is required"))
	}
	if o.DC == "" || !slices.Contains(o.DCs, o.DC) {
		errs = append(errs, fmt.Errorf("DC %q must be one of DCs %v", o.DC, o.DCs))
	}
	if o.Partitions < 1 {
		errs = append(errs, fmt.Errorf("Partitions %d: want at least 1", o.Partitions))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("antientropy: %w", errors.Join(errs...))
	}
	if o.Interval == 0 {
		o.Interval = 5 * time.Minute
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Worker{opts: o, log: o.Logger.With("component", "antientropy"), maxReply: MaxReplyBytes}
	for _, dc := range o.DCs {
		if dc != o.DC {
			w.peers = append(w.peers, dc)
		}
	}
	return w, nil
}

// Start serves requests on names.AntiEntropySubject(DC) and names.AntiEntropyRunSubject(DC), and runs
// against every peer every Interval, until Close or ctx ends.
func (w *Worker) Start(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	reqs := make(chan *nats.Msg, 256)
	runs := make(chan *nats.Msg, 8)
	for subj, ch := range map[string]chan *nats.Msg{names.AntiEntropySubject(w.opts.DC): reqs, names.AntiEntropyRunSubject(w.opts.DC): runs} {
		sub, err := w.opts.NC.ChanSubscribe(subj, ch)
		if err != nil {
			cancel()
			w.unsubscribe()
			return fmt.Errorf("antientropy: subscribe %s: %w", subj, err)
		}
		w.subs = append(w.subs, sub)
	}
	// The server must know the subscriptions before Start returns, or a
	// peer's first request can find no responder.
	if err := w.opts.NC.FlushTimeout(10 * time.Second); err != nil {
		cancel()
		w.unsubscribe()
		return fmt.Errorf("antientropy: flush subscriptions: %w", err)
	}
	w.cancel = cancel
	w.wg.Add(2)
	go w.serve(ctx, reqs)
	go w.loop(ctx, runs)
	return nil
}

// Close stops serving and running and waits for both; a run under way is
// cancelled. It is safe to call twice.
func (w *Worker) Close() error {
	w.once.Do(func() {
		w.unsubscribe()
		if w.cancel != nil {
			w.cancel()
		}
		w.wg.Wait()
	})
	return nil
}

func (w *Worker) unsubscribe() {
	for _, s := range w.subs {
		if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			w.log.Debug("unsubscribe", "subject", s.Subject, "err", err)
		}
	}
}

func (w *Worker) serve(ctx context.Context, reqs <-chan *nats.Msg) {
	defer w.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-reqs:
			w.answer(m)
		}
	}
}

// loop runs against every peer every Interval and on each run request.
func (w *Worker) loop(ctx context.Context, runs <-chan *nats.Msg) {
	defer w.wg.Done()
	var tick <-chan time.Time
	if w.opts.Interval > 0 {
		t := time.NewTicker(w.opts.Interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			w.RunAll(ctx)
		case m := <-runs:
			reply := RunReply{DC: w.opts.DC, Reports: w.RunAll(ctx)}
			if ctx.Err() != nil {
				reply.Error = "the sidecar is shutting down"
			}
			b, err := json.Marshal(reply)
			if err != nil {
				b, _ = json.Marshal(RunReply{DC: w.opts.DC, Error: err.Error()})
			}
			if m.Reply != "" {
				if err := m.Respond(b); err != nil {
					w.log.Debug("run reply failed", "err", err)
				}
			}
		}
	}
}

// RunAll runs against every peer in turn and returns a report for each; a
// peer that fails has its error in its report.
func (w *Worker) RunAll(ctx context.Context) []Report {
	out := make([]Report, 0, len(w.peers))
	for _, p := range w.peers {
		r, err := w.RunOnce(ctx, p)
		if err != nil {
			r.Error = err.Error()
		}
		out = append(out, r)
	}
	return out
}

// RunOnce compares this DC's state with peer's and merges the keys that
// differ into this DC's store. Runs are serialised.
func (w *Worker) RunOnce(ctx context.Context, peer string) (Report, error) {
	w.run.Lock()
	defer w.run.Unlock()
	start := time.Now()
	rep := Report{Peer: peer}
	err := w.runOnce(ctx, peer, &rep)
	rep.Duration = time.Since(start)
	log := w.log.With("peer", peer, "partitions_differed", rep.PartitionsDiffered, "keys_exchanged", rep.KeysExchanged,
		"keys_changed", rep.KeysChanged, "taken", rep.VersionsTaken, "dropped", rep.VersionsDropped,
		"removed", rep.KeysRemoved, "lost_found", rep.LostFound, "duration", rep.Duration.Round(time.Millisecond))
	switch {
	case err != nil:
		log.Warn("anti-entropy run failed", "err", err)
	case rep.KeysChanged > 0 || rep.KeysSkipped > 0:
		log.Info("anti-entropy repaired keys", "skipped", rep.KeysSkipped)
	default:
		log.Debug("anti-entropy run")
	}
	return rep, err
}

func (w *Worker) runOnce(ctx context.Context, peer string, rep *Report) error {
	if peer == w.opts.DC || !slices.Contains(w.peers, peer) {
		return fmt.Errorf("antientropy: %q is not a peer of %s (%v)", peer, w.opts.DC, w.peers)
	}
	local, err := w.opts.Store.Trees()
	if err != nil {
		return fmt.Errorf("local trees: %w", err)
	}
	if len(local) != w.opts.Partitions {
		return fmt.Errorf("local trees: %d partitions, want %d", len(local), w.opts.Partitions)
	}
	per := w.treesPerRequest()
	for next := 0; next < w.opts.Partitions; {
		var ps []uint32
		for p := next; p < min(next+per, w.opts.Partitions); p++ {
			ps = append(ps, uint32(p))
		}
		remote, err := w.fetchTrees(ctx, peer, ps, rep)
		if err != nil {
			return err
		}
		next += len(remote)
		for _, p := range ps[:len(remote)] {
			rep.PartitionsCompared++
			var diff []int
			for b := range changelog.TreeBuckets {
				if local[p].Buckets[b] != remote[p][b] {
					diff = append(diff, b)
				}
			}
			if len(diff) == 0 {
				continue
			}
			rep.PartitionsDiffered++
			rep.BucketsDiffered += len(diff)
			if err := w.repairPartition(ctx, peer, p, diff, rep); err != nil {
				return fmt.Errorf("partition %d: %w", p, err)
			}
		}
	}
	return nil
}

// repairPartition lists the differing buckets on both sides, and fetches
// and merges the keys that differ.
func (w *Worker) repairPartition(ctx context.Context, peer string, p uint32, buckets []int, rep *Report) error {
	remote, err := w.fetchBuckets(ctx, peer, p, buckets, rep)
	if err != nil {
		return err
	}
	local, err := w.opts.Store.Buckets(p, buckets)
	if err != nil {
		return fmt.Errorf("local buckets: %w", err)
	}
	mine := make(map[string][32]byte, len(local))
	for _, kh := range local {
		mine[kh.Key] = kh.Hash
	}
	var keys []string
	for key, h := range remote {
		if m, ok := mine[key]; !ok || m != h {
			keys = append(keys, key)
		}
	}
	for key := range mine {
		if _, ok := remote[key]; !ok {
			keys = append(keys, key) // the peer may have purged it
		}
	}
	sort.Strings(keys)
	limit := min(MaxRequestKeyBytes, w.replyLimit()/2)
	for len(keys) > 0 {
		n, size := 0, 0
		for n < len(keys) && n < MaxRequestKeys && (n == 0 || size+len(keys[n])+8 <= limit) {
			size += len(keys[n]) + 8
			n++
		}
		more, err := w.exchange(ctx, peer, p, keys[:n], rep)
		if err != nil {
			return err
		}
		keys = append(more, keys[n:]...)
	}
	return nil
}

// exchange fetches the peer's states of keys and merges them; it returns
// the keys the peer left for another request.
func (w *Worker) exchange(ctx context.Context, peer string, p uint32, keys []string, rep *Report) ([]string, error) {
	var r statesReply
	if err := w.ask(ctx, peer, request{Op: opStates, Keys: keys}, &r, rep); err != nil {
		return nil, err
	}
	asked := make(map[string]bool, len(keys))
	for _, k := range keys {
		asked[k] = true
	}
	if r.Knowledge.DC != peer {
		return nil, fmt.Errorf("states reply from %s carries the knowledge of %q", peer, r.Knowledge.DC)
	}
	states := make(map[string]dvv.State, len(r.States)+len(r.Absent))
	for key, b := range r.States {
		if !asked[key] {
			return nil, fmt.Errorf("states reply from %s holds key %q, which was not asked for", peer, key)
		}
		st, err := changelog.DecodeState(b)
		if err != nil {
			return nil, fmt.Errorf("states reply from %s, key %q: %w", peer, key, err)
		}
		states[key] = st
	}
	for _, key := range r.Absent {
		if !asked[key] {
			return nil, fmt.Errorf("states reply from %s names key %q, which was not asked for", peer, key)
		}
		if _, dup := states[key]; !dup {
			states[key] = dvv.State{}
		}
	}
	for _, key := range r.TooBig {
		w.log.Warn("a key's state is larger than a NATS message; anti-entropy cannot carry it", "peer", peer, "key", key)
	}
	rep.KeysSkipped += len(r.TooBig)
	var more []string
	for _, key := range r.More {
		if asked[key] {
			more = append(more, key)
			delete(asked, key) // asked again at most once per reply
		}
	}
	for key := range states {
		if event.PartitionOf(key, w.opts.Partitions) != p {
			return nil, fmt.Errorf("states reply from %s: key %q is not in partition %d", peer, key, p)
		}
	}
	if len(states) == 0 {
		if len(more) == len(keys) {
			return nil, fmt.Errorf("states reply from %s carried none of %d keys", peer, len(keys))
		}
		return more, nil
	}
	stats, err := w.opts.Store.MergeStates(ctx, states, r.Knowledge)
	if err != nil {
		return nil, fmt.Errorf("merge %d keys from %s: %w", len(states), peer, err)
	}
	rep.KeysExchanged += len(states)
	rep.add(stats)
	return more, nil
}

// fetchTrees asks peer for the trees of ps; the reply holds those of a
// prefix of ps, at least one.
func (w *Worker) fetchTrees(ctx context.Context, peer string, ps []uint32, rep *Report) (map[uint32][changelog.TreeBuckets][32]byte, error) {
	var r treesReply
	if err := w.ask(ctx, peer, request{Op: opTrees, Partitions: ps}, &r, rep); err != nil {
		return nil, err
	}
	if len(r.Trees) == 0 || len(r.Trees) > len(ps) {
		return nil, fmt.Errorf("trees reply from %s: %d trees for %d partitions asked", peer, len(r.Trees), len(ps))
	}
	out := make(map[uint32][changelog.TreeBuckets][32]byte, len(r.Trees))
	for i, t := range r.Trees {
		if t.Partition != ps[i] || len(t.Hashes) != changelog.TreeBuckets*32 {
			return nil, fmt.Errorf("trees reply from %s: tree %d is of partition %d with %d hash bytes, want partition %d", peer, i, t.Partition, len(t.Hashes), ps[i])
		}
		var hs [changelog.TreeBuckets][32]byte
		for b := range hs {
			copy(hs[b][:], t.Hashes[b*32:])
		}
		out[t.Partition] = hs
	}
	return out, nil
}

// fetchBuckets lists the given buckets of partition p at peer, over as
// many requests as the listing needs.
func (w *Worker) fetchBuckets(ctx context.Context, peer string, p uint32, buckets []int, rep *Report) (map[string][32]byte, error) {
	want := map[int]bool{}
	for _, b := range buckets {
		want[b] = true
	}
	out := map[string][32]byte{}
	req := request{Op: opBuckets, Partition: p, Buckets: buckets}
	for {
		var r bucketsReply
		if err := w.ask(ctx, peer, req, &r, rep); err != nil {
			return nil, err
		}
		for _, kh := range r.Keys {
			switch {
			case !want[kh.Bucket] || changelog.BucketOf(kh.Key) != kh.Bucket || event.PartitionOf(kh.Key, w.opts.Partitions) != p || len(kh.Hash) != 32:
				return nil, fmt.Errorf("buckets reply from %s: key %q of bucket %d is not in partition %d's buckets asked for", peer, kh.Key, kh.Bucket, p)
			case req.After && (kh.Bucket < req.AfterBucket || kh.Bucket == req.AfterBucket && kh.Key <= req.AfterKey):
				return nil, fmt.Errorf("buckets reply from %s: key %q of bucket %d is out of order", peer, kh.Key, kh.Bucket)
			}
			out[kh.Key] = [32]byte(kh.Hash)
			req.After, req.AfterBucket, req.AfterKey = true, kh.Bucket, kh.Key
		}
		if !r.More {
			return out, nil
		}
		if len(r.Keys) == 0 {
			return nil, fmt.Errorf("buckets reply from %s says more but carries nothing", peer)
		}
	}
}

// ask sends one request to peer and decodes the reply into out.
func (w *Worker) ask(ctx context.Context, peer string, req request, out any, rep *Report) error {
	req.V = Protocol
	rctx, cancel := context.WithTimeout(ctx, w.opts.RequestTimeout)
	defer cancel()
	rep.Requests++
	var refused *rpc.Refused
	switch err := aeProtocol.Call(rctx, w.opts.NC, names.AntiEntropySubject(peer), req, out); {
	case errors.As(err, &refused):
		return fmt.Errorf("%s refused %s: %s", peer, req.Op, refused.Msg)
	case errors.Is(err, rpc.ErrBadReply):
		return fmt.Errorf("%s reply from %s: %w", req.Op, peer, err)
	case err != nil:
		return fmt.Errorf("ask %s for %s: %w", peer, req.Op, err)
	}
	return nil
}

// RequestRun asks the sidecar of dc to run anti-entropy against every peer
// now, and returns its reports. The run can take a while: ctx bounds the
// wait.
func RequestRun(ctx context.Context, nc *nats.Conn, dc string) (RunReply, error) {
	m, err := nc.RequestWithContext(ctx, names.AntiEntropyRunSubject(dc), nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return RunReply{}, fmt.Errorf("no sidecar of dc %s answers on %s: is it running, with anti-entropy enabled?", dc, names.AntiEntropyRunSubject(dc))
	}
	if err != nil {
		return RunReply{}, fmt.Errorf("ask dc %s to run anti-entropy: %w", dc, err)
	}
	var r RunReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return RunReply{}, fmt.Errorf("reply of dc %s: %w", dc, err)
	}
	if r.Error != "" {
		return r, fmt.Errorf("dc %s: %s", dc, r.Error)
	}
	return r, nil
}
