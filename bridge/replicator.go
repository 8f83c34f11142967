package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// Errors the Replicator returns.
var (
	ErrClosed  = errors.New("bridge: replicator closed")
	ErrStarted = errors.New("bridge: replicator already started")
)

// Options configure a Replicator. A zero duration or count takes the
// default named in its comment.
type Options struct {
	// Store is this DC's change log; its DC is the Replicator's DC.
	// Required. The Replicator does not close it.
	Store *changelog.Store
	// NC is the NATS connection. Required.
	NC *nats.Conn
	// JS manages streams and consumers and dead-letters bad input; nil
	// makes one from NC (in Domain). Events are always published through a
	// JetStream context of the Replicator's own, which bounds the window of
	// unacknowledged publishes.
	JS jetstream.JetStream
	// Domain is the JetStream domain, for DCs linked by leafnodes; empty for
	// none.
	Domain string
	// Plan says which upstreams to consume and what to forward. Required.
	Plan Plan
	// DCs lists every DC. Events from, or through, any other DC are
	// dead-lettered. Required.
	DCs []string
	// Partitions is the partition count, the same at every DC. Required;
	// it must match the store's.
	Partitions int
	// Limits bound the events accepted from upstreams; zero fields take
	// event.DefaultLimits.
	Limits event.Limits
	// Stream configures this DC's streams (see EnsureStream).
	Stream StreamOptions
	// Logger receives the Replicator's log lines; nil discards them.
	Logger *slog.Logger
	// Now reads the wall clock, for lag figures only. Default time.Now.
	Now func() time.Time
	// StreamRetention is how long this DC's stream keeps messages every
	// downstream DC has acknowledged (see core.Retention). Default 24h.
	StreamRetention time.Duration
	// ObservePublish, if set, receives the time from sending each event to
	// JetStream to reading its acknowledgement (acks are read in order, so
	// an ack that overtook an earlier one counts from the earlier's).
	ObservePublish func(time.Duration)

	// PublishWindow bounds the events published but not yet acknowledged
	// by JetStream. Default 256.
	PublishWindow int
	// PublishAckTimeout bounds the wait for a publish's acknowledgement;
	// past it the publish counts as failed and is sent again. Default 5s.
	PublishAckTimeout time.Duration
	// PublishPoll is the fallback interval at which the publisher reads the
	// outbox even without a notification from the store. Default 1s.
	PublishPoll time.Duration
	// APITimeout bounds each JetStream API call the Replicator makes (stream
	// and consumer set-up, consumer info). Default 5s.
	APITimeout time.Duration
	// RetryMin and RetryMax bound the capped exponential backoff after a
	// failed publish or a failed consumer setup; each wait is drawn at
	// random from the upper half of its step (jitter). Defaults 50ms and
	// 5s.
	RetryMin, RetryMax time.Duration
	// FlushTimeout bounds how long Close keeps publishing the outbox after
	// intake has stopped. Default 5s.
	FlushTimeout time.Duration

	// Batch bounds the messages applied in one store batch. Default 256.
	Batch int
	// MaxAckPending bounds each consumer's unacknowledged messages.
	// Default 4096.
	MaxAckPending int
	// AckWait is how long JetStream waits for an ack before redelivering.
	// Default 30s.
	AckWait time.Duration
	// BackOff is the consumer's redelivery schedule after missed acks; its
	// first step replaces AckWait. Default AckWait, 2×AckWait, 4×AckWait.
	BackOff []time.Duration
	// MaxDeliver is how many times a message may fail for reasons other
	// than a gap before it is dead-lettered. The server-side MaxDeliver is
	// unlimited: a message waiting for a gap to be filled is redelivered as
	// often as it takes. Default 10.
	MaxDeliver int
	// GapDelay is how long a message that arrived past a gap waits before
	// it is redelivered. Default 200ms.
	GapDelay time.Duration
	// RetryDelay is how long a message waits before redelivery after the
	// store failed to apply its batch. Default 1s.
	RetryDelay time.Duration
	// PullExpiry is how long each pull request of a link waits on the
	// server. The server sends idle heartbeats every half of it; a link
	// that hears nothing for a whole PullExpiry checks that its consumer
	// still exists. Default 30s; at least 1s.
	PullExpiry time.Duration
	// RepairTimeout bounds one gap-repair request. Default 2s.
	RepairTimeout time.Duration

	// RepairAfter is how long this DC may stay behind an origin's own
	// reported sequence, without progress, before it asks the origin for
	// the missing events. This catches losses no later event reveals, such
	// as the last events of a partition. Default 5s.
	RepairAfter time.Duration

	// ReportInterval is how often the DC reports its applied vector and
	// refreshes lag figures. Default 1s.
	ReportInterval time.Duration
	// ReportDebounce is the least time between two reports when the DC
	// also reports soon after its durable applied vector moves, which
	// lets writes waiting for other DCs (X-Repl-Wait) answer within
	// milliseconds. Default 20ms; negative reports every ReportInterval
	// only.
	ReportDebounce time.Duration
	// MaintenanceInterval is how often the DC trims its outbox and purges
	// causally stable tombstones. Default ReportInterval.
	MaintenanceInterval time.Duration

	// HealAfter turns on topology healing (ring and star; see Plan.Heal):
	// a DC that has sent no applied-vector report for longer than this is
	// taken as unreachable, and this DC consumes around it through heal
	// consumers until it reports again. Zero, the default here, turns
	// healing off (the config's heal_after defaults to 30s). At least
	// twice ReportInterval.
	HealAfter time.Duration
	// StandbyHub is the star's standby hub, which relays between the
	// leaves while the hub is unreachable (with HealAfter); "" for none.
	StandbyHub string

	// ExpiryTakeover is how long the DC that owns an expired value (its
	// origin; see changelog.Deleter) may send no applied-vector report
	// speaking for the value's partition before the first other DC of
	// DCs that still reports on it deletes the value in its place.
	// Default 30s (or twice ReportInterval when that is longer); at least
	// twice ReportInterval.
	ExpiryTakeover time.Duration

	// Owned lists the partitions this sidecar owns when its DC runs
	// several (shards, invariant 16; see shard.go); nil owns every
	// partition. The store must hold no other partition's data.
	Owned []uint32
	// Shard names this shard in its consumers' names (names.ShardName);
	// set with Owned.
	Shard string
	// Coordinator makes a transaction whose ops span this DC's shards
	// visible at once (see core.Coordinator); nil applies each shard's
	// part on its own.
	Coordinator core.Coordinator
}

func (o Options) withDefaults() Options {
	setDur := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	setInt := func(n *int, def int) {
		if *n <= 0 {
			*n = def
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	setInt(&o.PublishWindow, 256)
	setDur(&o.PublishAckTimeout, 5*time.Second)
	setDur(&o.PublishPoll, time.Second)
	setDur(&o.APITimeout, 5*time.Second)
	setDur(&o.RetryMin, 50*time.Millisecond)
	setDur(&o.RetryMax, 5*time.Second)
	setDur(&o.FlushTimeout, 5*time.Second)
	setInt(&o.Batch, 256)
	setInt(&o.MaxAckPending, 4096)
	setDur(&o.AckWait, 30*time.Second)
	if len(o.BackOff) == 0 {
		o.BackOff = []time.Duration{o.AckWait, 2 * o.AckWait, 4 * o.AckWait}
	}
	setInt(&o.MaxDeliver, 10)
	setDur(&o.GapDelay, 200*time.Millisecond)
	setDur(&o.RetryDelay, time.Second)
	setDur(&o.PullExpiry, 30*time.Second)
	setDur(&o.RepairTimeout, 2*time.Second)
	setDur(&o.RepairAfter, 5*time.Second)
	setDur(&o.ReportInterval, time.Second)
	if o.ReportDebounce == 0 {
		o.ReportDebounce = 20 * time.Millisecond
	}
	setDur(&o.MaintenanceInterval, o.ReportInterval)
	setDur(&o.StreamRetention, 24*time.Hour)
	setDur(&o.ExpiryTakeover, max(30*time.Second, 2*o.ReportInterval))
	return o
}

// validate reports every problem with o at once.
func (o Options) validate() error {
	var errs []error
	if o.Store == nil {
		errs = append(errs, errors.New("Store is required"))
	}
	if o.NC == nil {
		errs = append(errs, errors.New("NC is required"))
	}
	if len(o.DCs) == 0 {
		errs = append(errs, errors.New("DCs is required"))
	}
	if o.Partitions < 1 {
		errs = append(errs, fmt.Errorf("Partitions is %d, want at least 1", o.Partitions))
	}
	if o.Store != nil {
		if o.Partitions != o.Store.Partitions() {
			errs = append(errs, fmt.Errorf("Partitions is %d but the store has %d; every DC and its store must use the same count", o.Partitions, o.Store.Partitions()))
		}
		if !slices.Contains(o.DCs, o.Store.DC()) {
			errs = append(errs, fmt.Errorf("DCs %v does not list the store's DC %q", o.DCs, o.Store.DC()))
		}
	}
	for i, b := range o.BackOff {
		if b <= 0 {
			errs = append(errs, fmt.Errorf("BackOff[%d] is %s, want a positive duration", i, b))
		}
	}
	if o.PullExpiry != 0 && o.PullExpiry < time.Second {
		errs = append(errs, fmt.Errorf("PullExpiry is %s, want at least 1s (or 0 for the default, 30s)", o.PullExpiry))
	}
	errs = append(errs, o.validateHealing()...)
	if o.Owned != nil {
		if o.Shard == "" {
			errs = append(errs, errors.New("Owned needs Shard, the shard's name in its consumers' names"))
		}
		for _, p := range o.Owned {
			if int(p) >= o.Partitions {
				errs = append(errs, fmt.Errorf("Owned names partition %d, want below %d", p, o.Partitions))
			}
		}
		if o.Coordinator == nil && o.Plan.CanHeal() {
			errs = append(errs, fmt.Errorf("Owned in topology %s needs a Coordinator: a shard forwards a transaction spanning its DC's shards only once every shard has applied it", o.Plan.Topology))
		}
	}
	if ri := o.withDefaults().ReportInterval; o.ExpiryTakeover != 0 && o.ExpiryTakeover < 2*ri {
		errs = append(errs, fmt.Errorf("ExpiryTakeover is %s, shorter than two report intervals (%s): a live DC would be taken as unreachable and two DCs would delete one expired value; raise it", o.ExpiryTakeover, 2*ri))
	}
	if len(errs) > 0 {
		return fmt.Errorf("bridge: options: %w", errors.Join(errs...))
	}
	return nil
}

// env is what the parts of a Replicator share. It is fixed once New
// returns, but for ready, which Start sets, and the counters, which are
// atomic.
type env struct {
	opts  Options
	store *changelog.Store
	nc    *nats.Conn
	js    jetstream.JetStream // management and dead letters
	self  string
	known map[string]bool
	log   *slog.Logger
	c     *counters
	// plan is the static plan; forward is the forwarding rule in force
	// (the healer's effective plan when healing is on).
	plan    Plan
	forward func(*event.Event) bool
	check   core.Checker
	// ready judges readiness (GET /readyz) and keeps each peer's last
	// report time; set by Start.
	ready atomic.Pointer[readiness]
	// cover keeps when each peer last reported on each partition, for
	// liveness and expiry; set by Start.
	cover atomic.Pointer[coverage]
	// owned marks, by partition, those this shard owns, and shard is what
	// the core decides differently for it; both nil when the DC is not
	// sharded (see shard.go).
	owned []bool
	shard *core.Shard
}

func (e *env) now() time.Time { return e.opts.Now() }

// repairer returns the core's gap repair over this DC's store and the
// origins' repair servers.
func (e *env) repairer() core.Repairer {
	return core.Repairer{Store: e.store, Source: origins{e}, Forward: e.forward,
		Partitions: e.opts.Partitions, Limits: e.opts.Limits, Log: e.log, Shard: e.shard}
}

// readiness returns whether this DC has caught up since it started (see
// Readiness).
func (e *env) readiness() Readiness {
	rd := e.ready.Load()
	if rd == nil {
		return Readiness{WaitingFor: []ReadyWait{{Reason: "replication has not started"}}}
	}
	return rd.judge(e.now(), e.store.Applied)
}

// Replicator runs one DC's replication. It composes parts that each own
// their state and goroutine:
//
//   - publisher: publishes the store's outbox to this DC's stream;
//   - link: one per upstream, consumes its stream and applies what it
//     holds (heal links too, run by the healer);
//   - repairServer: answers the other DCs' gap-repair requests;
//   - heartbeat: publishes this DC's applied vector;
//   - reportIntake: takes in the other DCs' applied vectors;
//   - reporter: judges liveness (healer), catches up, refreshes lag
//     figures and runs maintenance (retention).
//
// The Replicator itself owns only their life cycle, under mu. Its
// methods are safe for concurrent use.
type Replicator struct {
	env      *env
	pub      *publisher
	links    []*link
	heal     *healer // nil when healing is off or the topology has nothing to heal
	reporter *reporter
	stream   string

	intake sync.WaitGroup // links, the repair server, reports
	pubWG  sync.WaitGroup // the publisher

	mu struct {
		sync.Mutex
		started, closed bool
		stopIntake      context.CancelFunc
		stopPub         context.CancelFunc
		subs            []*nats.Subscription
		closeErr        error
	}
}

// New checks the options and builds a Replicator; Start runs it.
func New(opts Options) (*Replicator, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	self := opts.Store.DC()
	e := &env{
		opts:  opts,
		store: opts.Store,
		nc:    opts.NC,
		js:    opts.JS,
		plan:  opts.Plan,
		self:  self,
		log:   opts.Logger.With("dc", self),
		c:     &counters{},
		check: core.NewChecker(opts.DCs, opts.Partitions, opts.Limits),
	}
	e.known = e.check.Known
	if opts.Owned != nil {
		e.owned = make([]bool, opts.Partitions)
		for _, p := range opts.Owned {
			e.owned[p] = true
		}
		e.shard = &core.Shard{Owns: e.owns, Coordinator: opts.Coordinator}
	}
	if e.js == nil {
		js, err := newJetStream(opts.NC, opts.Domain)
		if err != nil {
			return nil, fmt.Errorf("bridge: jetstream: %w", err)
		}
		e.js = js
	}
	pub, err := newPublisher(e)
	if err != nil {
		return nil, err
	}
	r := &Replicator{env: e, pub: pub, stream: names.Stream(self)}
	if opts.HealAfter > 0 && e.plan.CanHeal() {
		r.heal = newHealer(e)
		e.forward = r.heal.forward
	} else {
		e.forward = func(ev *event.Event) bool { return e.plan.ShouldForward(ev.Path, ev.Origin) }
	}
	for _, up := range e.plan.Upstreams {
		if up == self || !e.known[up] {
			return nil, fmt.Errorf("bridge: plan names upstream %q, which is this DC or not in DCs %v", up, opts.DCs)
		}
		r.links = append(r.links, newLink(e, up, names.ShardConsumer(self, up, opts.Shard), false))
	}
	r.reporter = newReporter(e, r.links, r.heal)
	return r, nil
}

func newJetStream(nc *nats.Conn, domain string, opts ...jetstream.JetStreamOpt) (jetstream.JetStream, error) {
	if domain != "" {
		return jetstream.NewWithDomain(nc, domain, opts...)
	}
	return jetstream.New(nc, opts...)
}

// DC returns the Replicator's DC.
func (r *Replicator) DC() string { return r.env.self }

// Start makes sure this DC's streams exist, raises the store's sequence
// numbers above what the stream already holds (so a DC restored from an old
// backup never reissues one), and starts the publisher, one link per
// upstream, the repair server and the applied-vector exchange. ctx bounds
// the start-up only; the goroutines run until Close.
func (r *Replicator) Start(ctx context.Context) error {
	e := r.env
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.mu.closed:
		return ErrClosed
	case r.mu.started:
		return ErrStarted
	}
	if _, ok := ctx.Deadline(); !ok {
		// Setting up streams and subscriptions must not wait for ever.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	sopts := e.opts.Stream
	sopts.Sharded = e.sharded()
	if err := EnsureStream(ctx, e.js, e.self, e.opts.Partitions, sopts); err != nil {
		if errors.Is(err, ErrNoJetStream) {
			where := "this server's JetStream"
			if e.opts.Domain != "" {
				where = fmt.Sprintf("JetStream domain %q (nats.domain)", e.opts.Domain)
			}
			return fmt.Errorf("%w; looked in %s", err, where)
		}
		return err
	}
	if err := r.pub.resume(ctx); err != nil {
		return err
	}

	repairs := make(chan *nats.Msg, 64)
	reports := make(chan *nats.Msg, 256)
	var subs []*nats.Subscription
	for subj, ch := range map[string]chan *nats.Msg{names.RepairSubject(e.self): repairs, names.AppliedWildcard: reports} {
		sub, err := e.nc.ChanSubscribe(subj, ch)
		if err != nil {
			for _, s := range subs {
				s.Unsubscribe()
			}
			return fmt.Errorf("bridge: subscribe %s: %w", subj, err)
		}
		subs = append(subs, sub)
	}
	if err := e.nc.FlushWithContext(ctx); err != nil {
		for _, s := range subs {
			s.Unsubscribe()
		}
		return fmt.Errorf("bridge: flush subscriptions: %w", err)
	}

	silent := e.opts.HealAfter
	if silent <= 0 {
		silent = defaultSilentAfter
	}
	start := e.now()
	e.ready.Store(newReadiness(e.self, e.opts.DCs, silent, start))
	e.cover.Store(newCoverage(e, start))

	base := context.WithoutCancel(ctx)
	intakeCtx, stopIntake := context.WithCancel(base)
	pubCtx, stopPub := context.WithCancel(base)
	r.mu.started = true
	r.mu.subs = subs
	r.mu.stopIntake = stopIntake
	r.mu.stopPub = stopPub

	r.pubWG.Go(func() { r.pub.run(pubCtx) })
	for _, l := range r.links {
		r.intake.Go(func() { l.run(intakeCtx) })
	}
	r.intake.Go(func() { repairServer{e}.run(intakeCtx, repairs) })
	r.intake.Go(func() { expirer{e}.run(intakeCtx) })
	r.intake.Go(func() { heartbeat{e}.run(intakeCtx) })
	r.intake.Go(func() { reportIntake{env: e, alive: r.reporter.alive}.run(intakeCtx, reports) })
	r.intake.Go(func() { r.reporter.run(intakeCtx) })
	attrs := []any{"stream", r.stream, "upstreams", e.plan.Upstreams, "partitions", e.opts.Partitions}
	if r.heal != nil {
		// Only where healing can happen (ring, star): a mesh has nothing
		// to heal, and heal_after there would mislead.
		attrs = append(attrs, "heal_after", e.opts.HealAfter)
		if e.opts.StandbyHub != "" {
			attrs = append(attrs, "standby_hub", e.opts.StandbyHub)
		}
	}
	e.log.Info("replicator started", attrs...)
	return nil
}

// Close stops intake (links, the repair server, reports), publishes
// what the outbox holds for up to FlushTimeout, and waits for every
// goroutine. It does not close the store or the connection. It is safe to
// call more than once.
func (r *Replicator) Close() error {
	e := r.env
	r.mu.Lock()
	if r.mu.closed {
		err := r.mu.closeErr
		r.mu.Unlock()
		return err
	}
	r.mu.closed = true
	started := r.mu.started
	subs, stopIntake, stopPub := r.mu.subs, r.mu.stopIntake, r.mu.stopPub
	r.mu.Unlock()
	if !started {
		return nil
	}

	var errs []error
	for _, s := range subs {
		// The connection closes after this anyway; a failed unsubscribe
		// (say, while reconnecting) loses nothing.
		if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			e.log.Warn("unsubscribe at close", "subject", s.Subject, "err", err)
		}
	}
	stopIntake()
	r.intake.Wait()

	close(r.pub.drain)
	flush := time.AfterFunc(e.opts.FlushTimeout, stopPub)
	r.pubWG.Wait()
	flush.Stop()
	stopPub()
	if d := e.store.OutboxDepth(); d > 0 {
		e.log.Info("replicator closed with events still in the outbox; they are published at the next start", "outbox", d)
	}

	err := errors.Join(errs...)
	r.mu.Lock()
	r.mu.closeErr = err
	r.mu.Unlock()
	e.log.Info("replicator closed")
	return err
}

// Status describes the Replicator for /v1/status.
type Status struct {
	DC string
	// Upstreams are the static plan's upstreams; EffectiveUpstreams adds
	// those consumed through heal consumers while healing.
	Upstreams          []string
	EffectiveUpstreams []string
	// Healing lists the bypasses in effect (see Plan.Heal); empty when
	// every DC is reachable or healing is off.
	Healing []Bypass
	Running bool
	// Stream is this DC's event stream.
	Stream string
	// Checkpoint is the last outbox index JetStream acknowledged;
	// OutboxDepth counts entries not yet published.
	Checkpoint  uint64
	OutboxDepth uint64
	// OutboxHeld counts the outbox's entries not yet applied by every
	// DC, published or not (changelog Store.OutboxHeld): 0 once every
	// DC has applied every event this DC (this shard) issued.
	OutboxHeld uint64
	// Applied is this DC's applied vector.
	Applied changelog.Applied
	// PeerApplied is the newest applied vector each other DC reported on
	// repl.applied.<dc>, by DC; a DC that has not reported since this one
	// started is missing.
	PeerApplied map[string]changelog.Applied
	// Peers is each other DC's liveness as this DC judges it from their
	// reports: last report, its age and a state (see PeerStatus).
	Peers []PeerStatus
	// Ready is whether this DC has caught up since it started (GET
	// /readyz; see Readiness).
	Ready bool
	Links []LinkStats
}

// Status returns the Replicator's current state.
func (r *Replicator) Status() Status {
	r.mu.Lock()
	running := r.mu.started && !r.mu.closed
	r.mu.Unlock()
	e := r.env
	st := Status{
		DC:          e.self,
		Upstreams:   slices.Clone(e.plan.Upstreams),
		Running:     running,
		Stream:      r.stream,
		Checkpoint:  e.store.Checkpoint(),
		OutboxDepth: e.store.OutboxDepth(),
		OutboxHeld:  e.store.OutboxHeld(),
		Applied:     e.store.Applied(),
		PeerApplied: e.store.PeerApplied(),
		Peers:       r.Peers(),
		Ready:       r.Readiness().Ready,
	}
	eff := r.effectivePlan()
	st.EffectiveUpstreams, st.Healing = eff.EffectiveUpstreams(), slices.Clone(eff.Healing)
	now := e.now()
	for _, l := range r.allLinks() {
		st.Links = append(st.Links, l.stats(now))
	}
	return st
}

// effectivePlan returns the plan in force: the static one healed around
// the dead DCs.
func (r *Replicator) effectivePlan() Plan {
	if r.heal == nil {
		return r.env.plan
	}
	return r.heal.effective()
}

// allLinks returns the static links and the running heal links.
func (r *Replicator) allLinks() []*link { return allLinks(r.links, r.heal) }

// allLinks returns the static links and h's running heal links (h may be
// nil).
func allLinks(static []*link, h *healer) []*link {
	return append(slices.Clone(static), h.links()...)
}

// Healing returns the bypasses in effect; empty when nothing is healed.
func (r *Replicator) Healing() []Bypass {
	return slices.Clone(r.effectivePlan().Healing)
}

// backoff is a capped exponential delay with jitter: its steps double
// from min up to max, and each delay is drawn at random from the upper
// half of its step. Without the jitter, the links and publishers of many
// DCs that failed together (a stalled server) would retry together, step
// after step, each time as one burst of JetStream requests.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return b.cur - half + rand.N(half+1)
}

func (b *backoff) reset() { b.cur = 0 }

// wait waits for d or ctx, and reports whether d passed.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
