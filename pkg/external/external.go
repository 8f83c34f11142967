// Package external runs the `external` resolver's write side: one
// deterministic DC (the arbiter, the first DC of the configuration) asks
// the application's resolver service over NATS request/reply how to
// resolve a key's concurrent values, then writes the answer as a
// resolution event whose context covers those values. Every other DC only
// applies that event. Since one DC resolves and its write supersedes what it
// resolved, no two DCs can resolve the same conflict into new concurrent
// versions for ever.
//
// The request is JSON {"key", "context", "siblings": [{"value" (base64),
// "deleted", "origin", "dot", "hlc"}]}; the answer is JSON {"value"
// (base64)} or {"value_text"} or {"delete": true}, or {"error": "..."}.
// On a timeout, an error or a bad answer the key keeps showing what the
// fallback resolver shows, and the arbiter tries again on the key's next
// change or at the next sweep.
//
// Internal to the sidecar: not a stable Go API. The external resolver's JSON
// request/reply is API (README, "Resolvers").
package external

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/resolve"
)

// Request is what the application's resolver service receives.
type Request struct {
	Key      string    `json:"key"`
	Context  string    `json:"context"`
	Siblings []Sibling `json:"siblings"`
}

// Sibling is one concurrent version in a Request.
type Sibling struct {
	Value   []byte `json:"value"`
	Deleted bool   `json:"deleted"`
	Origin  string `json:"origin"`
	Dot     string `json:"dot"`
	HLC     uint64 `json:"hlc"`
}

// Reply is the service's answer.
type Reply struct {
	Value     []byte  `json:"value,omitempty"`
	ValueText *string `json:"value_text,omitempty"`
	Delete    bool    `json:"delete,omitempty"`
	Error     string  `json:"error,omitempty"`
}

// Rules is what the worker needs of the resolver rules.
type Rules interface {
	For(key string) resolve.Resolver
}

// Options configure a Worker.
type Options struct {
	Store  *changelog.Store
	NC     *nats.Conn
	Rules  Rules
	Logger *slog.Logger
	// Sweep is how often the arbiter scans for conflicts it has not
	// resolved (after failures, or changes it missed). Default 5s.
	Sweep time.Duration
}

// Stats counts the worker's work.
type Stats struct {
	Resolved, Failed uint64
}

// Worker resolves external-resolver conflicts at the arbiter DC.
type Worker struct {
	opts     Options
	log      *slog.Logger
	keys     chan string
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	once     sync.Once
	resolved atomic.Uint64
	failed   atomic.Uint64
}

// New returns a worker; Start runs it.
func New(o Options) *Worker {
	if o.Sweep <= 0 {
		o.Sweep = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Worker{opts: o, log: o.Logger.With("component", "external"), keys: make(chan string, 4096)}
}

// Arbiter returns the DC that resolves external conflicts: the first DC of
// the configuration, the same answer at every DC.
func Arbiter(dcs []string) string {
	if len(dcs) == 0 {
		return ""
	}
	return dcs[0]
}

// Notify is the store's commit hook: it queues changed keys whose resolver
// is external and that hold concurrent values. It never blocks; a key
// dropped when the queue is full is found by the next sweep.
func (w *Worker) Notify(changes []changelog.Change) {
	for _, c := range changes {
		if c.State.LiveCount() < 2 {
			continue
		}
		if _, ok := w.opts.Rules.For(c.Key).(*resolve.ExternalResolver); !ok {
			continue
		}
		select {
		case w.keys <- c.Key:
		default:
		}
	}
}

// Start runs the worker until Close.
func (w *Worker) Start(ctx context.Context) {
	ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.run(ctx)
	}()
}

// Close stops the worker and waits for it. It is safe to call twice.
func (w *Worker) Close() {
	w.once.Do(func() {
		if w.cancel != nil {
			w.cancel()
		}
		w.wg.Wait()
	})
}

// SetConn sets the NATS connection, for a worker made before the node
// connected. Call it before Start.
func (w *Worker) SetConn(nc *nats.Conn) { w.opts.NC = nc }

// Stats returns the worker's counters.
func (w *Worker) Stats() Stats { return Stats{Resolved: w.resolved.Load(), Failed: w.failed.Load()} }

func (w *Worker) run(ctx context.Context) {
	t := time.NewTicker(w.opts.Sweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case key := <-w.keys:
			w.resolve(ctx, key)
		case <-t.C:
			w.sweep(ctx)
		}
	}
}

func (w *Worker) sweep(ctx context.Context) {
	var keys []string
	err := w.opts.Store.Scan("", func(key string, st dvv.State) error {
		if st.LiveCount() > 1 {
			if _, ok := w.opts.Rules.For(key).(*resolve.ExternalResolver); ok {
				keys = append(keys, key)
			}
		}
		return ctx.Err()
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		w.log.Warn("sweep failed", "err", err)
	}
	for _, k := range keys {
		w.resolve(ctx, k)
	}
}

// resolve asks the service about one key and writes its answer.
func (w *Worker) resolve(ctx context.Context, key string) {
	r, ok := w.opts.Rules.For(key).(*resolve.ExternalResolver)
	if !ok {
		return
	}
	st, found, err := w.opts.Store.Get(key)
	if err != nil || !found || st.LiveCount() < 2 {
		return
	}
	req := Request{Key: key, Context: st.Clock.String()}
	for _, sb := range st.Siblings {
		req.Siblings = append(req.Siblings, Sibling{Value: sb.Value, Deleted: sb.Deleted, Origin: sb.Origin(), Dot: sb.Dot.String(), HLC: sb.HLC})
	}
	op, err := w.ask(ctx, r, req)
	if err != nil {
		w.failed.Add(1)
		w.log.Warn("external resolver failed; showing the fallback", "key", key, "subject", r.Subject, "err", err)
		return
	}
	op.Key, op.Resolve, op.Context = key, true, st.Clock
	if _, err := w.opts.Store.Write(ctx, op); err != nil {
		w.failed.Add(1)
		w.log.Warn("write resolution", "key", key, "err", err)
		return
	}
	w.resolved.Add(1)
}

func (w *Worker) ask(ctx context.Context, r *resolve.ExternalResolver, req Request) (changelog.WriteOp, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return changelog.WriteOp{}, err
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := w.opts.NC.RequestWithContext(cctx, r.Subject, body)
	if err != nil {
		return changelog.WriteOp{}, fmt.Errorf("request %s: %w", r.Subject, err)
	}
	var rep Reply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return changelog.WriteOp{}, fmt.Errorf("answer is not JSON {value|value_text|delete}: %w", err)
	}
	switch {
	case rep.Error != "":
		return changelog.WriteOp{}, fmt.Errorf("service answered an error: %s", rep.Error)
	case rep.Delete:
		return changelog.WriteOp{Delete: true}, nil
	case rep.ValueText != nil:
		return changelog.WriteOp{Value: []byte(*rep.ValueText)}, nil
	case rep.Value != nil:
		return changelog.WriteOp{Value: rep.Value}, nil
	}
	return changelog.WriteOp{}, errors.New("answer has no value, value_text or delete")
}
