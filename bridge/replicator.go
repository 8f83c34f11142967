package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
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
	// downstream DC has acknowledged (see trimStream). Default 24h.
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
	// failed publish or a failed consumer setup. Defaults 50ms and 5s.
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
	// before the first other DC of DCs that still reports deletes the
	// value in its place. Default 30s (or twice ReportInterval when that
	// is longer); at least twice ReportInterval.
	ExpiryTakeover time.Duration
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
	errs = append(errs, o.validateHealing()...)
	if ri := o.withDefaults().ReportInterval; o.ExpiryTakeover != 0 && o.ExpiryTakeover < 2*ri {
		errs = append(errs, fmt.Errorf("ExpiryTakeover is %s, shorter than two report intervals (%s): a live DC would be taken as unreachable and two DCs would delete one expired value; raise it", o.ExpiryTakeover, 2*ri))
	}
	if len(errs) > 0 {
		return fmt.Errorf("bridge: options: %w", errors.Join(errs...))
	}
	return nil
}

// Replicator runs one DC's replication: it publishes the store's outbox,
// consumes the plan's upstreams, repairs gaps, serves repairs to others and
// exchanges applied vectors. Its methods are safe for concurrent use.
type Replicator struct {
	opts   Options
	store  *changelog.Store
	nc     *nats.Conn
	js     jetstream.JetStream // management and dead letters
	pub    jetstream.JetStream // publishing, with a bounded async window
	plan   Plan
	self   string
	known  map[string]bool
	links  []*link
	log    *slog.Logger
	stream string
	check  checker
	c      counters
	// heal runs topology healing; nil when it is off or the topology has
	// nothing to heal.
	heal *healer

	// seqHi is the publisher's highest own sequence per partition known to
	// be in the stream or sent to it; only the publisher goroutine uses it
	// once Start has returned.
	seqHi []uint64
	// cursor is the publisher's last acknowledged outbox index; only the
	// publisher goroutine uses it.
	cursor uint64

	// samples and trimmedTo belong to the maintenance goroutine: the
	// stream's last sequence over time, and how far it has been trimmed.
	samples   []streamSample
	trimmedTo uint64

	// behind records, per origin and partition, since when and from where
	// this DC has been behind the origin's own report; only the reporter
	// goroutine uses it.
	behind map[gapKey]lag
	// replayed records when each link last replayed its upstream's stream;
	// only the reporter goroutine uses it.
	replayed map[string]time.Time

	// alive hands the DCs whose reports arrived from the report intake to
	// the reporter goroutine, which judges liveness.
	alive *reporters
	// ready judges readiness (GET /readyz) and keeps each peer's last
	// report time; set by Start.
	ready atomic.Pointer[readiness]

	// drain tells the publisher that intake has stopped: it publishes what
	// the outbox holds and exits.
	drain chan struct{}

	intake sync.WaitGroup // consumers, servers and the reporter
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
	r := &Replicator{
		opts:   opts,
		store:  opts.Store,
		nc:     opts.NC,
		js:     opts.JS,
		plan:   opts.Plan,
		self:   self,
		known:  make(map[string]bool, len(opts.DCs)),
		log:    opts.Logger.With("dc", self),
		stream: StreamName(self),
		seqHi:  make([]uint64, opts.Partitions),
		drain:  make(chan struct{}),
		behind: map[gapKey]lag{},
		alive:  newReporters(),

		replayed: map[string]time.Time{},
	}
	for _, dc := range opts.DCs {
		r.known[dc] = true
	}
	r.check = checker{partitions: opts.Partitions, limits: opts.Limits, known: r.known}
	if r.js == nil {
		js, err := newJetStream(opts.NC, opts.Domain)
		if err != nil {
			return nil, fmt.Errorf("bridge: jetstream: %w", err)
		}
		r.js = js
	}
	pub, err := newJetStream(opts.NC, opts.Domain,
		jetstream.WithPublishAsyncMaxPending(opts.PublishWindow),
		jetstream.WithPublishAsyncTimeout(opts.PublishAckTimeout))
	if err != nil {
		return nil, fmt.Errorf("bridge: jetstream publisher: %w", err)
	}
	r.pub = pub
	for _, up := range r.plan.Upstreams {
		if up == self || !r.known[up] {
			return nil, fmt.Errorf("bridge: plan names upstream %q, which is this DC or not in DCs %v", up, opts.DCs)
		}
		r.links = append(r.links, &link{up: up, stream: StreamName(up), consumer: ConsumerName(self, up)})
	}
	if r.healPossible() {
		r.heal = newHealer(r.plan)
	}
	return r, nil
}

func newJetStream(nc *nats.Conn, domain string, opts ...jetstream.JetStreamOpt) (jetstream.JetStream, error) {
	if domain != "" {
		return jetstream.NewWithDomain(nc, domain, opts...)
	}
	return jetstream.New(nc, opts...)
}

// DC returns the Replicator's DC.
func (r *Replicator) DC() string { return r.self }

// Start makes sure this DC's streams exist, raises the store's sequence
// numbers above what the stream already holds (so a DC restored from an old
// backup never reissues one), and starts the publisher, one consumer per
// upstream, the repair server and the applied-vector exchange. ctx bounds
// the start-up only; the goroutines run until Close.
func (r *Replicator) Start(ctx context.Context) error {
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
	if err := EnsureStream(ctx, r.js, r.self, r.opts.Partitions, r.opts.Stream); err != nil {
		if errors.Is(err, ErrNoJetStream) {
			where := "this server's JetStream"
			if r.opts.Domain != "" {
				where = fmt.Sprintf("JetStream domain %q (nats.domain)", r.opts.Domain)
			}
			return fmt.Errorf("%w; looked in %s", err, where)
		}
		return err
	}
	if err := r.resumeSequences(ctx); err != nil {
		return err
	}

	repairs := make(chan *nats.Msg, 64)
	reports := make(chan *nats.Msg, 256)
	var subs []*nats.Subscription
	for subj, ch := range map[string]chan *nats.Msg{RepairSubject(r.self): repairs, appliedWildcard: reports} {
		sub, err := r.nc.ChanSubscribe(subj, ch)
		if err != nil {
			for _, s := range subs {
				s.Unsubscribe()
			}
			return fmt.Errorf("bridge: subscribe %s: %w", subj, err)
		}
		subs = append(subs, sub)
	}
	if err := r.nc.FlushWithContext(ctx); err != nil {
		for _, s := range subs {
			s.Unsubscribe()
		}
		return fmt.Errorf("bridge: flush subscriptions: %w", err)
	}

	silent := r.opts.HealAfter
	if silent <= 0 {
		silent = defaultSilentAfter
	}
	r.ready.Store(newReadiness(r.self, r.opts.DCs, silent, r.now()))

	base := context.WithoutCancel(ctx)
	intakeCtx, stopIntake := context.WithCancel(base)
	pubCtx, stopPub := context.WithCancel(base)
	r.mu.started = true
	r.mu.subs = subs
	r.mu.stopIntake = stopIntake
	r.mu.stopPub = stopPub

	r.pubWG.Add(1)
	go func() {
		defer r.pubWG.Done()
		r.runPublisher(pubCtx)
	}()
	for _, l := range r.links {
		r.intake.Add(1)
		go func() {
			defer r.intake.Done()
			r.runLink(intakeCtx, l)
		}()
	}
	r.intake.Add(5)
	go func() {
		defer r.intake.Done()
		r.serveRepairs(intakeCtx, repairs)
	}()
	go func() {
		defer r.intake.Done()
		r.runExpirer(intakeCtx)
	}()
	go func() {
		defer r.intake.Done()
		r.runHeartbeat(intakeCtx)
	}()
	go func() {
		defer r.intake.Done()
		r.runReportIntake(intakeCtx, reports)
	}()
	go func() {
		defer r.intake.Done()
		r.runReports(intakeCtx)
	}()
	attrs := []any{"stream", r.stream, "upstreams", r.plan.Upstreams, "partitions", r.opts.Partitions}
	if r.heal != nil {
		// Only where healing can happen (ring, star): a mesh has nothing
		// to heal, and heal_after there would mislead.
		attrs = append(attrs, "heal_after", r.opts.HealAfter)
		if r.opts.StandbyHub != "" {
			attrs = append(attrs, "standby_hub", r.opts.StandbyHub)
		}
	}
	r.log.Info("replicator started", attrs...)
	return nil
}

// Close stops intake (consumers, the repair server, reports), publishes
// what the outbox holds for up to FlushTimeout, and waits for every
// goroutine. It does not close the store or the connection. It is safe to
// call more than once.
func (r *Replicator) Close() error {
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
			r.log.Warn("unsubscribe at close", "subject", s.Subject, "err", err)
		}
	}
	stopIntake()
	r.intake.Wait()

	close(r.drain)
	flush := time.AfterFunc(r.opts.FlushTimeout, stopPub)
	r.pubWG.Wait()
	flush.Stop()
	stopPub()
	if d := r.store.OutboxDepth(); d > 0 {
		r.log.Info("replicator closed with events still in the outbox; they are published at the next start", "outbox", d)
	}

	err := errors.Join(errs...)
	r.mu.Lock()
	r.mu.closeErr = err
	r.mu.Unlock()
	r.log.Info("replicator closed")
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
	st := Status{
		DC:          r.self,
		Upstreams:   slices.Clone(r.plan.Upstreams),
		Running:     running,
		Stream:      r.stream,
		Checkpoint:  r.store.Checkpoint(),
		OutboxDepth: r.store.OutboxDepth(),
		Applied:     r.store.Applied(),
		PeerApplied: r.store.PeerApplied(),
		Peers:       r.Peers(),
		Ready:       r.Readiness().Ready,
	}
	eff := r.effectivePlan()
	st.EffectiveUpstreams, st.Healing = eff.EffectiveUpstreams(), slices.Clone(eff.Healing)
	for _, l := range r.allLinks() {
		st.Links = append(st.Links, r.linkStats(l))
	}
	return st
}

func (r *Replicator) now() time.Time { return r.opts.Now() }

// backoff is a capped exponential delay.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
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
