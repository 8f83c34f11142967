package bridge

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// healer runs topology healing for the reporter: the core's liveness and
// healing state machine (sm), and one heal link per bypass. The reporter
// goroutine owns sm and alone starts and stops heal links; plan, the
// effective plan, is read by every link goroutine for forwarding; mu
// guards running, which Status reads too.
type healer struct {
	*env
	sm   *core.Healer // set by start
	plan atomic.Pointer[Plan]
	wg   sync.WaitGroup // the running heal links

	mu struct {
		sync.Mutex
		running map[string]*healLink
	}
}

func newHealer(e *env) *healer {
	h := &healer{env: e}
	static := e.plan
	h.plan.Store(&static)
	h.mu.running = map[string]*healLink{}
	return h
}

// healLink is a running heal link.
type healLink struct {
	*link
	bypass Bypass
	stop   context.CancelFunc
	done   chan struct{}
}

// forward is the effective plan's forwarding rule.
func (h *healer) forward(ev *event.Event) bool {
	return h.plan.Load().ShouldForward(ev.Path, ev.Origin)
}

// effective returns the plan in force.
func (h *healer) effective() Plan { return *h.plan.Load() }

// links returns the running heal links, by upstream; none on a nil healer.
func (h *healer) links() []*link {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*link, 0, len(h.mu.running))
	for _, up := range slices.Sorted(maps.Keys(h.mu.running)) {
		out = append(out, h.mu.running[up].link)
	}
	return out
}

// start sets up liveness tracking at the reporter's start and deletes
// heal consumers a previous run of this DC left behind: their place is
// stale, and a new one is computed when healing starts again.
func (h *healer) start(ctx context.Context) {
	h.sm = core.NewHealer(h.env.plan, h.opts.DCs, h.opts.StandbyHub, h.opts.HealAfter, h.now())
	ctx, cancel := context.WithTimeout(ctx, h.opts.APITimeout)
	defer cancel()
	for _, up := range h.opts.DCs {
		if up == h.self {
			continue
		}
		name := names.ShardHealConsumer(h.self, up, h.opts.Shard)
		err := h.js.DeleteConsumer(ctx, names.Stream(up), name)
		switch {
		case err == nil:
			h.log.Info("deleted a heal consumer left from an earlier run", "consumer", name, "stream", names.Stream(up))
		case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
		default:
			h.log.Debug("delete a stale heal consumer", "stream", names.Stream(up), "err", err)
		}
	}
}

// seen notes that dc's reports covered this shard's partitions at at, for
// liveness.
func (h *healer) seen(dc string, at time.Time) {
	if h.sm == nil {
		return
	}
	h.sm.Seen(dc, at, func() changelog.Applied { return h.store.Applied() })
}

// tick updates liveness and, when a DC died or came back, reconciles
// the running heal links with the effective plan.
func (h *healer) tick(ctx context.Context) {
	if h.sm == nil {
		return
	}
	changes, plan, changed := h.sm.Tick(h.now(), h.store.PeerApplied())
	if !changed {
		return
	}
	for _, c := range changes {
		if c.Dead {
			h.log.Warn("DC unreachable: no applied-vector report for longer than heal_after", "peer", c.DC,
				"silent", c.Silent.Round(time.Millisecond), "heal_after", h.opts.HealAfter)
		} else {
			h.log.Info("DC reachable again", "peer", c.DC, "because", c.Reason)
		}
	}
	h.reconcile(ctx, plan)
}

// reconcile makes the running heal links match plan's bypasses: it stops
// and deletes those no longer wanted, starts the new ones, and then puts
// plan in force. Stopping a link lets it finish the batch in hand (a batch
// is acknowledged only after the store commits it), so nothing is lost or
// half applied.
func (h *healer) reconcile(ctx context.Context, plan Plan) {
	h.mu.Lock()
	running := map[string]Bypass{}
	links := maps.Clone(h.mu.running)
	for up, hl := range h.mu.running {
		running[up] = hl.bypass
	}
	h.mu.Unlock()
	before := h.plan.Load().Healing
	stop, start := core.Reconcile(running, plan)

	for _, up := range stop {
		hl := links[up]
		hl.stop()
		<-hl.done
		h.mu.Lock()
		delete(h.mu.running, up)
		h.mu.Unlock()
		dctx, cancel := context.WithTimeout(ctx, h.opts.APITimeout)
		err := h.js.DeleteConsumer(dctx, hl.stream, hl.consumer)
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			// Left behind, it is deleted at the next start or when healing
			// through the same upstream ends again.
			h.log.Warn("delete a heal consumer", "consumer", hl.consumer, "stream", hl.stream, "err", err)
		}
		h.log.Info("heal link stopped", "upstream", up, "dead", hl.bypass.Dead, "consumer", hl.consumer,
			"applied", hl.applied.Load(), "duplicates", hl.duplicates.Load(), "loops", hl.loops.Load())
	}
	// The forwarding rule changes before the new links run: a standby
	// forwards from the first event it takes in place of the hub.
	h.plan.Store(&plan)
	for _, b := range start {
		up := b.Via
		lctx, stop := context.WithCancel(ctx)
		hl := &healLink{
			link:   newLink(h.env, up, names.ShardHealConsumer(h.self, up, h.opts.Shard), true),
			bypass: b,
			stop:   stop,
			done:   make(chan struct{}),
		}
		h.mu.Lock()
		h.mu.running[up] = hl
		h.mu.Unlock()
		h.wg.Go(func() {
			defer close(hl.done)
			h.runHeal(lctx, hl)
		})
		h.log.Info("heal link started", "upstream", up, "dead", b.Dead, "consumer", hl.consumer)
	}
	if !slices.Equal(before, plan.Healing) {
		h.log.Warn("healing changed", "healing", core.DescribeBypasses(plan.Healing), "was", core.DescribeBypasses(before),
			"upstreams", plan.EffectiveUpstreams(), "forward", plan.Forward)
	}
}

// stopAll stops every heal link at shutdown, leaving its consumer in
// place (the next start deletes it).
func (h *healer) stopAll() {
	h.mu.Lock()
	for _, hl := range h.mu.running {
		hl.stop()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// runHeal places a heal link's consumer right after what the dead DC's
// consumer on the same stream had acknowledged, then consumes it as any
// link until ctx ends. It runs on the heal link's goroutine.
func (h *healer) runHeal(ctx context.Context, hl *healLink) {
	bo := backoff{min: h.opts.RetryMin, max: h.opts.RetryMax}
	for {
		start, err := h.healStart(ctx, hl)
		if err == nil {
			hl.startSeq = start
			break
		}
		if ctx.Err() != nil {
			return
		}
		hl.setErr(err)
		d := bo.next()
		h.log.Warn("heal link: set-up failed; trying again", "upstream", hl.up, "err", err, "retry_in", d)
		if !wait(ctx, d) {
			return
		}
	}
	hl.run(ctx)
}

// healStart deletes a heal consumer left from before (its place is stale)
// and returns the stream sequence the new one starts at (core.HealStart of
// the dead DC's consumer on the stream).
func (h *healer) healStart(ctx context.Context, hl *healLink) (uint64, error) {
	actx, cancel := context.WithTimeout(ctx, h.opts.APITimeout)
	defer cancel()
	err := h.js.DeleteConsumer(actx, hl.stream, hl.consumer)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, fmt.Errorf("delete the old heal consumer %s: %w", hl.consumer, err)
	}
	floor, found, err := h.deadFloor(actx, hl)
	if err != nil {
		return 0, err
	}
	return core.HealStart(floor, found), nil
}

// deadFloor returns the lowest ack floor of the dead DC's consumers on the
// heal link's stream that read partitions of this shard: its one
// consumer, or, for a DC of several shards, those of its shards whose
// partitions meet this shard's (any may be the dead one; taking the
// lowest only brings duplicates, which change nothing).
func (h *healer) deadFloor(ctx context.Context, hl *healLink) (floor uint64, found bool, err error) {
	s, err := h.js.Stream(ctx, hl.stream)
	if err != nil {
		return 0, false, fmt.Errorf("open stream %s: %w", hl.stream, err)
	}
	dead := names.Consumer(hl.bypass.Dead, hl.up)
	lister := s.ListConsumers(ctx)
	for info := range lister.Info() {
		name := info.Config.Durable
		if name == "" {
			name = info.Name
		}
		shard, ok := strings.CutPrefix(name, dead)
		if !ok || !(shard == "" || strings.HasPrefix(shard, "_shard") && !strings.HasSuffix(shard, "_heal")) {
			continue
		}
		if !h.readsMine(hl.up, info.Config) {
			continue
		}
		if !found || info.AckFloor.Stream < floor {
			floor = info.AckFloor.Stream
		}
		found = true
	}
	if err := lister.Err(); err != nil {
		return 0, false, fmt.Errorf("list the consumers of %s: %w", hl.stream, err)
	}
	return floor, found, nil
}

// readsMine reports whether a consumer with cfg on up's stream reads a
// partition this shard owns (every consumer, for a DC of one sidecar).
func (h *healer) readsMine(up string, cfg jetstream.ConsumerConfig) bool {
	filters := cfg.FilterSubjects
	if cfg.FilterSubject != "" {
		filters = append(filters, cfg.FilterSubject)
	}
	if len(filters) == 0 || !h.sharded() {
		return true
	}
	for _, p := range h.ownedPartitions() {
		if slices.Contains(filters, names.Subject(up, p)) {
			return true
		}
	}
	return false
}

// validateHealing checks HealAfter and StandbyHub.
func (o Options) validateHealing() []error {
	var errs []error
	report := o.ReportInterval
	if report <= 0 {
		report = time.Second
	}
	switch {
	case o.HealAfter < 0:
		errs = append(errs, fmt.Errorf("HealAfter is %s; want 0 (healing off) or a positive duration", o.HealAfter))
	case o.HealAfter > 0 && o.HealAfter < 2*report:
		errs = append(errs, fmt.Errorf("HealAfter is %s, shorter than two report intervals (%s): a live DC would be taken as unreachable; raise it", o.HealAfter, 2*report))
	}
	if s := o.StandbyHub; s != "" {
		switch {
		case o.Plan.Topology != config.Star:
			errs = append(errs, fmt.Errorf("StandbyHub %q is only used by topology star, not %s", s, o.Plan.Topology))
		case s == o.Plan.Hub():
			errs = append(errs, fmt.Errorf("StandbyHub %q is the hub itself; name another DC", s))
		case !slices.Contains(o.DCs, s):
			errs = append(errs, fmt.Errorf("StandbyHub %q is not in DCs %v", s, o.DCs))
		}
	}
	return errs
}
