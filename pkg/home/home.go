// Package home routes writes to keys that have a home DC. Config rules give
// key prefixes a list of candidate homes; a write made at another DC is
// forwarded to the home's sidecar over NATS request/reply
// (repl.home.<dc>) and executed there through its normal local write path,
// so those keys never see concurrent writes from two DCs. Reads stay local.
//
//	r, err := home.New(home.Options{DC: "dc2", Rules: rules, Epochs: store, Local: store.Write})
//	err = r.Start(ctx, nc) // serve repl.home.dc2, probe the other homes
//	res, err := r.Write(ctx, op) // local, or forwarded to the key's home
//	r.Close()
//
// # Fencing epochs
//
// Each rule has an epoch and, per epoch, one home. A DC's view of a rule is
// the highest (epoch, home) it has learned; it starts at (0, first DC) and
// is kept in Pebble (changelog.Store.SetHomeEpoch) so a restart does not
// forget it. A writer tries the rule's DCs in preference order (policy
// reject: only the first) and proposes the first that answers as the home:
// under its current epoch if that DC is already its view's home, otherwise
// under the next epoch. So a failover to a later DC, and the failback to an
// earlier one once it answers again, each increment the epoch.
//
// A DC executes a forwarded write only when it agrees it is the home under
// the write's epoch: a higher epoch makes it the home (it records the epoch
// first); an equal epoch must name it as the home already; a lower epoch
// is a stale sender. It refuses the others with 409 and its own view, and
// the sender learns that view and decides again. A DC that learns a higher
// epoch naming another DC, from a refusal, a successful forward or a probe
// (every DC asks the other candidates of each failover rule for their view
// at start and then periodically), steps down: its own writes to the rule
// go through the new home until a writer chooses it again. Local writes at
// the home hold the rule's read lock, so stepping down waits for them.
//
// # What fencing does not do
//
// Epochs avoid conflicts; they are not needed for correctness. A home cut
// off from the others keeps accepting its own local writes while another DC
// takes over, and a home that times out may still execute the write the
// sender then fails over. Such writes are ordinary concurrent writes: they
// replicate, and the key's resolver keeps them as siblings or logs the
// loser, like any conflict. Nothing is lost (docs/DESIGN.md, invariants 5
// and 6).
//
// Internal to the sidecar: not a stable Go API. Its request/reply protocol
// between sidecars (repl.home.<dc>, package rpc) is versioned wire,
// described in docs/DESIGN.md.
package home

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/apierr"
	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/rpc"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// Rule gives the keys starting with Prefix a home.
type Rule struct {
	Prefix string
	// DCs are the candidate homes in preference order.
	DCs []string
	// Failover lets the next reachable DC of DCs write when the earlier
	// ones do not answer; without it only DCs[0] writes (policy reject).
	Failover bool
	// Timeout bounds one request to a candidate.
	Timeout time.Duration
}

// Epochs keeps each rule's view durably; *changelog.Store implements it.
type Epochs interface {
	HomeEpoch(prefix string) (changelog.HomeEpoch, bool, error)
	SetHomeEpoch(ctx context.Context, prefix string, e changelog.HomeEpoch) error
}

var _ Epochs = (*changelog.Store)(nil)

// WriteFunc is a DC's local write path.
type WriteFunc func(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error)

// Options configure a Router.
type Options struct {
	// DC is this DC's id.
	DC string
	// Rules are the home rules; the longest matching prefix wins.
	Rules []Rule
	// Epochs keeps the views.
	Epochs Epochs
	// Local executes a write here: the store's write path, with its
	// durability, outbox and context checks.
	Local  WriteFunc
	Logger *slog.Logger
	// Now is the clock that ages suspected DCs; default time.Now.
	Now func() time.Time
	// ProbeInterval is how often the candidates of failover rules are
	// asked for their views; default 10s.
	ProbeInterval time.Duration
	// MaxInFlight bounds the forwarded writes executed at once; default 256.
	MaxInFlight int
	// Siblings makes the router one of its DC's shards (invariant 16 in
	// docs/DESIGN.md); nil for a DC of one sidecar. See Siblings.
	Siblings Siblings
}

// Siblings connects the router of one shard of a sharded DC to the DC's
// other shards. Each shard keeps its own view of every rule, in its own
// store, and the shards of a DC keep their views together: a shard that
// learns a higher epoch tells the others (Tell), and each probe round of a
// failover rule asks them too (Ask). A forwarded write reaches the DC on
// repl.home.<dc>, which the shards serve as one queue group; the shard
// that takes it relays it to the owner of the key's partition (Relay)
// unless it owns it, so the owner executes it in its own store under its
// own view.
type Siblings interface {
	// Owner returns the partition of key and whether this shard owns it.
	Owner(key string) (p uint32, mine bool)
	// Relay sends a request (as received) to the shard owning partition
	// p and returns its reply; nats.ErrNoResponders when no shard owns it.
	Relay(ctx context.Context, p uint32, req []byte) ([]byte, error)
	// Ask sends a request to every other shard of the DC and returns
	// the replies that came within ctx.
	Ask(ctx context.Context, req []byte) [][]byte
	// Tell sends a request to every other shard of the DC, for no reply.
	Tell(req []byte) error
}

// DefaultProbeInterval is the default Options.ProbeInterval.
const DefaultProbeInterval = 10 * time.Second

// Error is a write refused by the home routing, with the HTTP status the
// APIs answer it with.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// HTTPStatus is the status the HTTP and NATS APIs answer with.
func (e *Error) HTTPStatus() int { return e.Status }

// Router decides, per write, whether it runs here or at the key's home,
// and serves the writes other DCs forward here.
type Router struct {
	opts  Options
	log   *slog.Logger
	rules []*rule
	slots chan struct{}

	mu struct {
		sync.Mutex
		nc     *nats.Conn
		sub    *nats.Subscription
		closed bool
	}
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// rule is a Rule with this DC's view of it.
type rule struct {
	Rule
	// mu guards cur. Writes executed here as the home hold the read lock,
	// so a change of home waits for them.
	mu  sync.RWMutex
	cur changelog.HomeEpoch
	// suspect holds the candidates that timed out, until when they are
	// tried last rather than first.
	smu     sync.Mutex
	suspect map[string]time.Time
}

// New loads each rule's view. It starts nothing.
func New(opts Options) (*Router, error) {
	if opts.DC == "" || opts.Local == nil || opts.Epochs == nil {
		return nil, errors.New("home: DC, Local and Epochs are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = DefaultProbeInterval
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 256
	}
	r := &Router{opts: opts, log: opts.Logger, slots: make(chan struct{}, opts.MaxInFlight)}
	for _, rl := range opts.Rules {
		if len(rl.DCs) == 0 || rl.Timeout <= 0 {
			return nil, fmt.Errorf("home: rule %q needs DCs and a timeout", rl.Prefix)
		}
		cur, ok, err := opts.Epochs.HomeEpoch(rl.Prefix)
		if err != nil {
			return nil, err
		}
		if !ok {
			cur = changelog.HomeEpoch{Home: rl.DCs[0]}
		}
		r.rules = append(r.rules, &rule{Rule: rl, cur: cur, suspect: map[string]time.Time{}})
	}
	return r, nil
}

// Start serves forwarded writes and probes on nc and starts the periodic
// probe of failover rules, after one probe round so that a DC coming back
// learns at once whether another DC took over.
func (r *Router) Start(ctx context.Context, nc *nats.Conn) error {
	r.mu.Lock()
	r.mu.nc = nc
	r.mu.Unlock()
	if len(r.rules) == 0 {
		return nil
	}
	if err := r.Serve(); err != nil {
		return err
	}
	r.probeAll(ctx)
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(r.opts.ProbeInterval)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
				r.probeAll(pctx)
			}
		}
	}()
	return nil
}

// Serve subscribes the responder on repl.home.<dc>. Start calls it; tests
// call it again after StopServing to heal a cut.
func (r *Router) Serve() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.closed || r.mu.sub != nil {
		return nil
	}
	var sub *nats.Subscription
	var err error
	if r.opts.Siblings != nil {
		// The DC's shards share its subject: one takes each request.
		sub, err = r.mu.nc.QueueSubscribe(names.HomeSubject(r.opts.DC), "home", r.dispatch)
	} else {
		sub, err = r.mu.nc.Subscribe(names.HomeSubject(r.opts.DC), r.dispatch)
	}
	if err != nil {
		return fmt.Errorf("home: subscribe %s: %w", names.HomeSubject(r.opts.DC), err)
	}
	r.mu.sub = sub
	// Once Serve returns, the server knows the interest: a request sent
	// then finds a responder.
	if err := r.mu.nc.FlushTimeout(5 * time.Second); err != nil {
		return fmt.Errorf("home: flush subscription %s: %w", names.HomeSubject(r.opts.DC), err)
	}
	return nil
}

// StopServing unsubscribes the responder, so that other DCs find this one
// unreachable for home writes while everything else runs: the fault tests'
// way to cut only the forwarding path.
func (r *Router) StopServing() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.sub == nil {
		return nil
	}
	err := r.mu.sub.Unsubscribe()
	r.mu.sub = nil
	if err == nil {
		// Once StopServing returns, requests find no responder rather than
		// a subscription that drops them.
		err = r.mu.nc.FlushTimeout(5 * time.Second)
	}
	return err
}

// Close stops serving and probing and waits for the forwarded writes in
// progress. The requests the server already sent here are answered, not
// dropped (drain). It is safe to call twice.
func (r *Router) Close() error {
	var err error
	r.once.Do(func() {
		err = r.drain()
		r.mu.Lock()
		r.mu.closed = true
		r.mu.Unlock()
		if r.cancel != nil {
			r.cancel()
		}
		r.wg.Wait()
	})
	return err
}

// drainWait bounds how long Close waits for the requests already received
// to be dispatched.
const drainWait = 5 * time.Second

// drain removes the responder so that the server sends no more requests
// here, and dispatches those it already sent. An unsubscribe would drop
// them: their senders would wait out the rule's timeout, then take the DC
// for dead (tried last for a while, or failed over from) though another
// shard of it still serves the subject.
func (r *Router) drain() error {
	r.mu.Lock()
	sub := r.mu.sub
	r.mu.sub = nil
	r.mu.Unlock()
	if sub == nil {
		return nil
	}
	done := sub.StatusChanged(nats.SubscriptionClosed)
	if err := sub.Drain(); err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-time.After(drainWait):
		return fmt.Errorf("home: requests received on %s still undispatched after %s", sub.Subject, drainWait)
	}
}

func (r *Router) conn() *nats.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.nc
}

// ruleFor returns the rule with the longest prefix of key, or nil.
func (r *Router) ruleFor(key string) *rule {
	var best *rule
	for _, rl := range r.rules {
		if strings.HasPrefix(key, rl.Prefix) && (best == nil || len(rl.Prefix) > len(best.Prefix)) {
			best = rl
		}
	}
	return best
}

func (r *Router) ruleByPrefix(prefix string) *rule {
	for _, rl := range r.rules {
		if rl.Prefix == prefix {
			return rl
		}
	}
	return nil
}

func (rl *rule) view() changelog.HomeEpoch {
	rl.mu.RLock()
	defer rl.mu.RUnlock()
	return rl.cur
}

// learn adopts e when its epoch is higher than the view's, recording it
// durably first. A shard then tells its DC's other shards, unless it
// learned e from one of them.
func (r *Router) learn(ctx context.Context, rl *rule, e changelog.HomeEpoch, from string) error {
	moved, err := r.adopt(ctx, rl, e, from)
	if err != nil || !moved || r.opts.Siblings == nil || from == siblingSource {
		return err
	}
	b, err := encode(&request{V: Protocol, Op: opTell, From: r.opts.DC, Prefix: rl.Prefix, DCs: rl.DCs, Epoch: e.Epoch, Home: e.Home})
	if err == nil {
		err = r.opts.Siblings.Tell(b)
	}
	if err != nil {
		// The others learn it at their next probe round.
		r.log.Warn("home: tell the DC's other shards a new epoch", "prefix", rl.Prefix, "epoch", e.Epoch, "err", err)
	}
	return nil
}

// siblingSource is learn's from for a view learned from another shard of
// this DC.
const siblingSource = "another shard of this DC"

// adopt is learn without telling the other shards; moved reports whether
// the view changed.
func (r *Router) adopt(ctx context.Context, rl *rule, e changelog.HomeEpoch, from string) (bool, error) {
	if e.Epoch >= MaxEpoch {
		return false, &Error{Status: http.StatusBadGateway, Msg: fmt.Sprintf("home: DC %s claims epoch %d for prefix %q, which is absurd; not taken", from, e.Epoch, rl.Prefix)}
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if e.Epoch <= rl.cur.Epoch {
		return false, nil
	}
	if err := r.opts.Epochs.SetHomeEpoch(context.WithoutCancel(ctx), rl.Prefix, e); err != nil {
		return false, fmt.Errorf("home: record epoch %d of prefix %q: %w", e.Epoch, rl.Prefix, err)
	}
	r.log.Info("home moved", "prefix", rl.Prefix, "epoch", e.Epoch, "home", e.Home,
		"previous_epoch", rl.cur.Epoch, "previous_home", rl.cur.Home, "learned_from", from)
	rl.cur = e
	return true, nil
}

// fenced is the refusal of a write proposed under epoch to this DC.
func (r *Router) fenced(rl *rule, epoch uint64, cur changelog.HomeEpoch) *Error {
	why := fmt.Sprintf("epoch %d is stale", epoch)
	if epoch == cur.Epoch {
		why = fmt.Sprintf("epoch %d names another home", epoch)
	}
	return &Error{Status: http.StatusConflict, Msg: fmt.Sprintf(
		"DC %s is not the home of prefix %q under %s: %s is the home in epoch %d; retry",
		r.opts.DC, rl.Prefix, why, cur.Home, cur.Epoch)}
}

// execute runs op here as the rule's home under epoch: it becomes the home
// if epoch is higher than its view, refuses if the view names another home
// or a higher epoch, and otherwise writes through the local path while
// holding the rule's read lock.
func (r *Router) execute(ctx context.Context, rl *rule, epoch uint64, op changelog.WriteOp) (changelog.WriteResult, changelog.HomeEpoch, error) {
	for {
		rl.mu.RLock()
		cur := rl.cur
		if epoch == cur.Epoch && cur.Home == r.opts.DC {
			res, err := r.opts.Local(ctx, op)
			rl.mu.RUnlock()
			return res, cur, err
		}
		rl.mu.RUnlock()
		if epoch <= cur.Epoch {
			return changelog.WriteResult{}, cur, r.fenced(rl, epoch, cur)
		}
		if err := r.learn(ctx, rl, changelog.HomeEpoch{Epoch: epoch, Home: r.opts.DC}, r.opts.DC); err != nil {
			return changelog.WriteResult{}, cur, err
		}
	}
}

// Write commits op here, or at the home of its key. Keys without a home
// rule are written here.
func (r *Router) Write(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error) {
	rl := r.ruleFor(op.Key)
	if rl == nil {
		return r.opts.Local(ctx, op)
	}
	// Each round tries the candidates in order; a refusal makes this DC
	// learn the refuser's view and decide again. Each refusal raises the
	// view's epoch, so the rounds are few; the bound only stops a storm.
	var reasons []string
	// floor is the lowest epoch the next proposal may use: a proposal
	// that timed out may still have been granted (the target may be slow,
	// not dead), so the next one must be higher, or two DCs could be home
	// under one epoch.
	var floor uint64
rounds:
	for round := 0; round <= len(rl.DCs)+1; round++ {
		reasons = reasons[:0]
		for _, target := range r.candidates(rl) {
			cur := rl.view()
			epoch := cur.Epoch
			if target != cur.Home {
				epoch++
			}
			epoch = max(epoch, floor)
			if target == r.opts.DC {
				res, _, err := r.execute(ctx, rl, epoch, op)
				var fe *Error
				if errors.As(err, &fe) && fe.Status == http.StatusConflict {
					continue rounds // another writer moved the home meanwhile
				}
				return res, err
			}
			rep, miss, err := r.forward(ctx, rl, target, epoch, op)
			if err != nil {
				return changelog.WriteResult{}, err
			}
			if miss == nil && rep.Unserved {
				// A sharded home DC whose shard owning the key did not
				// answer: that DC cannot write this key now, as if down.
				miss = &noAnswer{why: rep.Error, timedOut: rep.MaybeApplied}
			}
			if miss != nil {
				r.log.Warn("home DC did not answer", "prefix", rl.Prefix, "target", target, "key", op.Key, "reason", miss.why)
				reasons = append(reasons, target+": "+miss.why)
				if miss.timedOut {
					floor = max(floor, epoch+1)
				}
				continue
			}
			lerr := r.learn(ctx, rl, changelog.HomeEpoch{Epoch: rep.Epoch, Home: rep.Home}, target)
			if rep.Status == http.StatusOK {
				if lerr != nil {
					// The write is applied at the home; only this DC's
					// view of the epoch failed to move.
					r.log.Warn("home: the write was applied, but its epoch was not recorded here", "prefix", rl.Prefix, "err", lerr)
				}
				return rep.result(target, op), nil
			}
			if lerr != nil {
				return changelog.WriteResult{}, lerr
			}
			switch {
			case rep.Status == http.StatusConflict && rep.Home != "" && (rep.Epoch > epoch || rep.Epoch == epoch && rep.Home != target):
				continue rounds // fenced: decide again with the view learned
			}
			return changelog.WriteResult{}, &Error{Status: rep.Status, Msg: fmt.Sprintf("home DC %s of key %q: %s", target, op.Key, rep.Error)}
		}
		return changelog.WriteResult{}, r.unreachable(rl, op.Key, reasons)
	}
	return changelog.WriteResult{}, &Error{Status: http.StatusServiceUnavailable, Msg: fmt.Sprintf(
		"key %q: the home of prefix %q kept moving while this write was routed (now %s in epoch %d); retry",
		op.Key, rl.Prefix, rl.view().Home, rl.view().Epoch)}
}

// candidates lists the DCs to try, in order: policy reject only the first;
// failover every DC of the rule, those that recently timed out last.
func (r *Router) candidates(rl *rule) []string {
	if !rl.Failover {
		return rl.DCs[:1]
	}
	now := r.opts.Now()
	rl.smu.Lock()
	defer rl.smu.Unlock()
	out := make([]string, 0, len(rl.DCs))
	var later []string
	for _, dc := range rl.DCs {
		if until, ok := rl.suspect[dc]; ok && now.Before(until) {
			later = append(later, dc)
			continue
		}
		delete(rl.suspect, dc)
		out = append(out, dc)
	}
	return append(out, later...)
}

// unreachable is the 503 of a write no candidate took.
func (r *Router) unreachable(rl *rule, key string, reasons []string) error {
	msg := fmt.Sprintf("key %q: home DC %s of prefix %q is unreachable (%s); policy reject: nothing was written at %s; retry later or write at %s",
		key, rl.DCs[0], rl.Prefix, strings.Join(reasons, "; "), r.opts.DC, rl.DCs[0])
	if rl.Failover {
		msg = fmt.Sprintf("key %q: no home DC of prefix %q is reachable (%s); policy failover: nothing was written at %s; retry later",
			key, rl.Prefix, strings.Join(reasons, "; "), r.opts.DC)
	}
	return &Error{Status: http.StatusServiceUnavailable, Msg: msg}
}

// noAnswer says why a target did not answer. timedOut marks a request that
// may still have been received and acted on.
type noAnswer struct {
	why      string
	timedOut bool
}

// forward sends op to target under epoch. A non-nil noAnswer means target
// did not answer: no responders, or no answer within the rule's timeout
// (then target is tried last for a while). err is the caller's context
// ending, or a reply that cannot be read.
func (r *Router) forward(ctx context.Context, rl *rule, target string, epoch uint64, op changelog.WriteOp) (reply, *noAnswer, error) {
	req := request{V: Protocol, Op: opWrite, From: r.opts.DC, Prefix: rl.Prefix, DCs: rl.DCs, Epoch: epoch,
		Key: op.Key, Value: op.Value, Delete: op.Delete, Resolve: op.Resolve, TTL: op.TTL, Blind: op.Context == nil, Context: op.Context, Typed: op.Typed}
	return r.request(ctx, rl, target, req)
}

func (r *Router) request(ctx context.Context, rl *rule, target string, req request) (reply, *noAnswer, error) {
	nc := r.conn()
	if nc == nil {
		return reply{}, &noAnswer{why: "this DC is not connected to NATS yet"}, nil
	}
	rctx, cancel := context.WithTimeout(ctx, rl.Timeout)
	defer cancel()
	var rep reply
	err := homeProtocol.Call(rctx, nc, names.HomeSubject(target), &req, &rep)
	switch {
	case err == nil:
		return rep, nil, nil
	case errors.Is(err, rpc.ErrBadReply):
		return reply{}, nil, &Error{Status: http.StatusBadGateway, Msg: fmt.Sprintf("home DC %s answered with an unreadable reply: %v", target, err)}
	case ctx.Err() != nil:
		return reply{}, nil, ctx.Err()
	case errors.Is(err, nats.ErrNoResponders):
		return reply{}, &noAnswer{why: "no responders: its sidecar is down or not serving home writes"}, nil
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		rl.smu.Lock()
		rl.suspect[target] = r.opts.Now().Add(rl.Timeout)
		rl.smu.Unlock()
		return reply{}, &noAnswer{timedOut: true, why: fmt.Sprintf(
			"timeout: no answer within %s; a write sent there may still be applied, read the key before retrying", rl.Timeout)}, nil
	case errors.Is(err, nats.ErrMaxPayload):
		// The request never left: not the home's fault, and no other DC
		// would take it either.
		return reply{}, nil, &Error{Status: http.StatusRequestEntityTooLarge, Msg: fmt.Sprintf(
			"the write to %s is larger than the NATS server's max_payload (%d bytes); write a smaller value or raise max_payload", target, nc.MaxPayload())}
	default:
		return reply{}, &noAnswer{why: "request failed: " + err.Error()}, nil
	}
}

// probeAll asks the other candidates of every failover rule for their view
// and learns the highest epoch.
func (r *Router) probeAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, rl := range r.rules {
		if !rl.Failover {
			continue
		}
		if r.opts.Siblings != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.askSiblings(ctx, rl)
			}()
		}
		for _, dc := range rl.DCs {
			if dc == r.opts.DC {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				rep, miss, err := r.request(ctx, rl, dc, request{V: Protocol, Op: opProbe, From: r.opts.DC, Prefix: rl.Prefix})
				if err != nil || miss != nil || rep.Status != http.StatusOK {
					return
				}
				if err := r.learn(ctx, rl, changelog.HomeEpoch{Epoch: rep.Epoch, Home: rep.Home}, dc); err != nil {
					r.log.Warn("home probe", "prefix", rl.Prefix, "dc", dc, "err", err)
				}
			}()
		}
	}
	wg.Wait()
}

// askSiblings learns the highest view of rl among this DC's shards.
func (r *Router) askSiblings(ctx context.Context, rl *rule) {
	b, err := encode(&request{V: Protocol, Op: opProbe, From: r.opts.DC, Prefix: rl.Prefix})
	if err != nil {
		return
	}
	actx, cancel := context.WithTimeout(ctx, rl.Timeout)
	defer cancel()
	for _, data := range r.opts.Siblings.Ask(actx, b) {
		var rep reply
		if msgpackcheck.Unmarshal(data, &rep) != nil || rep.Status != http.StatusOK {
			continue
		}
		if _, err := r.adopt(ctx, rl, changelog.HomeEpoch{Epoch: rep.Epoch, Home: rep.Home}, siblingSource); err != nil {
			r.log.Warn("home: probe the DC's other shards", "prefix", rl.Prefix, "err", err)
		}
	}
}

// HandleShard answers a request another shard of this DC sent it: a
// relayed write, a probe or a told view. The node calls it for the
// requests it receives on the shards' subjects.
func (r *Router) HandleShard(data []byte) []byte {
	rep := r.handle(data, true)
	b, err := encode(&rep)
	if err != nil {
		b, _ = encode(&reply{Status: http.StatusInternalServerError, Error: err.Error()})
	}
	return b
}

// relay sends a write this shard took on the DC's subject to the shard
// owning its key's partition p, and returns that shard's reply. When that
// shard does not answer, the reply says so (Unserved), for the sender to
// treat this DC as not answering for the key.
func (r *Router) relay(data []byte, key string, p uint32) reply {
	wait := 2 * time.Second
	if rl := r.ruleFor(key); rl != nil {
		wait = rl.Timeout * 3 / 4
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	b, err := r.opts.Siblings.Relay(ctx, p, data)
	if err != nil {
		rep := reply{Status: http.StatusServiceUnavailable, Unserved: true,
			Error: fmt.Sprintf("DC %s's shard owning partition %d did not answer: %v", r.opts.DC, p, err)}
		if errors.Is(err, nats.ErrNoResponders) {
			rep.Error = fmt.Sprintf("no responders: DC %s's shard owning partition %d is down", r.opts.DC, p)
		} else {
			rep.MaybeApplied = true
		}
		return rep
	}
	var rep reply
	if err := msgpackcheck.Unmarshal(b, &rep); err != nil {
		return reply{Status: http.StatusBadGateway, Error: fmt.Sprintf("DC %s's shard owning partition %d answered an unreadable reply: %v", r.opts.DC, p, err)}
	}
	return rep
}

// dispatch runs each request in its own goroutine, at most MaxInFlight at
// once, so forwarded writes share group commits like local ones.
func (r *Router) dispatch(m *nats.Msg) {
	r.mu.Lock()
	closed := r.mu.closed
	if !closed {
		r.wg.Add(1)
	}
	r.mu.Unlock()
	if closed {
		return
	}
	r.slots <- struct{}{}
	go func() {
		defer r.wg.Done()
		defer func() { <-r.slots }()
		rep := r.handle(m.Data, false)
		b, err := encode(&rep)
		if err == nil {
			err = homeProtocol.Respond(m, b, nil)
		}
		if err != nil {
			r.log.Warn("home: answer a forwarded request", "err", err)
		}
	}()
}

// handle executes one request. It never forwards to another DC: a
// forwarded write runs here, at the shard owning its key (relayed there
// by the shard that took it), or is refused. fromShard marks a request
// from another shard of this DC, the only kind that may tell a view.
func (r *Router) handle(data []byte, fromShard bool) reply {
	var req request
	if err := homeProtocol.Decode(data, &req, &req.V); err != nil {
		return reply{Status: http.StatusBadRequest, Error: err.Error()}
	}
	switch req.Op {
	case opProbe:
		rl := r.ruleByPrefix(req.Prefix)
		if rl == nil {
			return reply{Status: http.StatusConflict, Error: fmt.Sprintf("DC %s has no home rule for prefix %q; the configs disagree", r.opts.DC, req.Prefix)}
		}
		cur := rl.view()
		return reply{Status: http.StatusOK, Epoch: cur.Epoch, Home: cur.Home}
	case opTell:
		rl := r.ruleByPrefix(req.Prefix)
		if !fromShard || r.opts.Siblings == nil || req.From != r.opts.DC || rl == nil {
			return reply{Status: http.StatusBadRequest, Error: "a view is told only among the shards of one DC with the same rules"}
		}
		if err := r.learn(context.Background(), rl, changelog.HomeEpoch{Epoch: req.Epoch, Home: req.Home}, siblingSource); err != nil {
			r.log.Warn("home: learn a view another shard told", "prefix", rl.Prefix, "err", err)
		}
		return reply{}
	case opWrite:
		if r.opts.Siblings != nil {
			if p, mine := r.opts.Siblings.Owner(req.Key); !mine {
				if fromShard {
					// Relayed once already: the shards disagree on who
					// owns p; relaying again could loop.
					return reply{Status: http.StatusServiceUnavailable, Unserved: true, Error: fmt.Sprintf(
						"DC %s: a write relayed to the owner of partition %d reached a shard that does not own it; check the shards' shard and shard_partitions", r.opts.DC, p)}
				}
				return r.relay(data, req.Key, p)
			}
		}
	default:
		return reply{Status: http.StatusBadRequest, Error: fmt.Sprintf("unknown op %q; want write or probe", req.Op)}
	}
	rl := r.ruleFor(req.Key)
	if rl == nil || rl.Prefix != req.Prefix || !slices.Equal(rl.DCs, req.DCs) {
		mine := "no home rule"
		if rl != nil {
			mine = fmt.Sprintf("prefix %q with dcs %v", rl.Prefix, rl.DCs)
		}
		return reply{Status: http.StatusConflict, Error: fmt.Sprintf(
			"configs disagree: %s routes key %q by prefix %q with dcs %v, DC %s has %s; give every DC the same home rules",
			req.From, req.Key, req.Prefix, req.DCs, r.opts.DC, mine)}
	}
	if req.Epoch >= MaxEpoch {
		return reply{Status: http.StatusBadRequest, Error: fmt.Sprintf("epoch %d is absurd (at most %d)", req.Epoch, MaxEpoch-1)}
	}
	op := changelog.WriteOp{Key: req.Key, Value: req.Value, Delete: req.Delete, Resolve: req.Resolve, TTL: req.TTL, Context: req.Context, Typed: req.Typed}
	if req.Blind {
		op.Context = nil
	} else if op.Context == nil {
		op.Context = vclock.VV{}
	}
	// Answer before the sender gives up (the rule's timeout): a write that
	// waits for this DC to catch up with its context (changelog
	// ContextWait) must come back as that 503, not as a timeout that makes
	// the sender take this live DC for dead.
	ctx, cancel := context.WithTimeout(context.Background(), rl.Timeout*3/4)
	defer cancel()
	res, cur, err := r.execute(ctx, rl, req.Epoch, op)
	if err != nil {
		rep := reply{Status: apierr.Status(err), Error: err.Error(), Epoch: cur.Epoch, Home: cur.Home}
		if v := rl.view(); v.Epoch > rep.Epoch {
			rep.Epoch, rep.Home = v.Epoch, v.Home
		}
		return rep
	}
	return resultReply(res, cur)
}

// MaxEpoch bounds fencing epochs: a request or a view claiming more is
// refused as absurd (docs/DESIGN.md, invariant 9), so no forged epoch can
// wrap the counter.
const MaxEpoch = 1 << 62

// RuleStatus is one rule in GET /v1/status.
type RuleStatus struct {
	Prefix string   `json:"prefix"`
	DCs    []string `json:"dcs"`
	Policy string   `json:"policy"`
	// Home and Epoch are this DC's view: the DC it sends writes to when
	// that DC answers, and the fencing epoch.
	Home  string `json:"home"`
	Epoch uint64 `json:"epoch"`
}

// Status returns each rule's view.
func (r *Router) Status() []RuleStatus {
	out := make([]RuleStatus, 0, len(r.rules))
	for _, rl := range r.rules {
		cur := rl.view()
		policy := "reject"
		if rl.Failover {
			policy = "failover"
		}
		out = append(out, RuleStatus{Prefix: rl.Prefix, DCs: rl.DCs, Policy: policy, Home: cur.Home, Epoch: cur.Epoch})
	}
	return out
}

// WriteHere runs write, a transaction touching keys, at this DC: it is
// allowed only when every key with a home rule has this DC as its current
// home, and it runs holding those rules' read locks, so no failover moves a
// home while it writes. A transaction is never forwarded: its keys may have
// different homes, and it must commit at one DC in one batch. Otherwise it
// answers a 409 *Error naming the first key homed elsewhere (its index in
// keys) and where to send the transaction.
func (r *Router) WriteHere(keys []string, write func() error) error {
	var held []*rule
	defer func() {
		for _, rl := range held {
			rl.mu.RUnlock()
		}
	}()
	for i, k := range keys {
		rl := r.ruleFor(k)
		if rl == nil || slices.Contains(held, rl) {
			continue
		}
		rl.mu.RLock()
		held = append(held, rl)
		home := rl.cur.Home
		if home == "" {
			home = rl.DCs[0]
		}
		if home != r.opts.DC {
			return &Error{Status: http.StatusConflict, Msg: fmt.Sprintf(
				"op %d: key %q has home DC %s (prefix %q); a transaction commits at one DC and is not forwarded: send it to %s, or leave the key out",
				i, k, home, rl.Prefix, home)}
		}
	}
	return write()
}
