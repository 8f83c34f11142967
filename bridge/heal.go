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

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/names"
)

// Bypass is one upstream a DC consumes through a heal consumer while a DC
// is unreachable: it reads Via's stream in place of Dead, the DC that
// normally consumes that stream and forwards what it holds.
type Bypass struct {
	// Dead is the unreachable DC whose consumer on Via's stream this one
	// stands in for.
	Dead string
	// Via is the DC whose stream the heal consumer reads.
	Via string
}

// Heal returns the effective plan of this DC while the DCs for which dead
// reports true are unreachable; standby is the star's standby hub, or "".
// It is pure: the static plan is not changed, and the result depends on
// nothing else.
//
//	mesh: nothing to heal; every DC already consumes every other.
//	ring: when the predecessor is dead, this DC also consumes the nearest
//	      live predecessor, skipping consecutive dead DCs, and the streams
//	      of the dead DCs it skips but the first (which it consumes
//	      already), so their last events are not stranded. The forwarding
//	      rule is the static one. With no live DC left besides this one
//	      nothing changes.
//	star: when the hub is dead and standby is set and live, the standby
//	      consumes every other leaf and forwards their events as the hub
//	      does, and the other leaves also consume the standby.
//
// A returning DC needs nothing from this: its durable consumers kept their
// place, and once the others drop their heal consumers the static wiring
// carries everything again. Duplicates the overlap brings are dropped by
// the store (Apply is idempotent) and forwarded only on first apply, and
// loops by Accept.
func (p Plan) Heal(dead func(dc string) bool, standby string) Plan {
	h := p
	h.Healing = nil
	switch p.Topology {
	case config.Ring:
		n := len(p.dcs)
		i := slices.Index(p.dcs, p.DC)
		if i < 0 || !dead(p.dcs[(i+n-1)%n]) {
			return h
		}
		// Walk back over the dead predecessors: each one's stream is read
		// in place of the dead DC after it (its static consumer), ending
		// at the nearest live predecessor.
		for k := 2; k < n; k++ {
			via := p.dcs[(i+n-k)%n]
			h.Healing = append(h.Healing, Bypass{Dead: p.dcs[(i+n-k+1)%n], Via: via})
			if !dead(via) {
				return h
			}
		}
		h.Healing = nil // every other DC is dead: nobody to heal through
		return h
	case config.Star:
		if standby == "" || standby == p.hub || !slices.Contains(p.dcs, standby) || !dead(p.hub) {
			return h
		}
		if p.DC == standby {
			for _, dc := range p.dcs {
				if dc != p.DC && dc != p.hub {
					h.Healing = append(h.Healing, Bypass{Dead: p.hub, Via: dc})
				}
			}
			h.Forward = len(h.Healing) > 0
			h.relay = h.Forward
			return h
		}
		if p.DC != p.hub && !dead(standby) {
			h.Healing = []Bypass{{Dead: p.hub, Via: standby}}
		}
		return h
	}
	return h
}

// EffectiveUpstreams returns the static upstreams and those of Healing,
// sorted.
func (p Plan) EffectiveUpstreams() []string {
	ups := slices.Clone(p.Upstreams)
	for _, b := range p.Healing {
		if !slices.Contains(ups, b.Via) {
			ups = append(ups, b.Via)
		}
	}
	slices.Sort(ups)
	return ups
}

// liveness tells, from the applied-vector reports each DC sends every
// report interval, which DCs are unreachable: a DC is dead once it has
// sent nothing for longer than after, and alive again once it has
// reported for after, or earlier once its reports cover what this DC had
// applied when it came back (it has caught up, so the static wiring
// carries everything at once). It is pure: the clock comes in as now.
type liveness struct {
	self  string
	after time.Duration
	// last is when each DC last reported; a DC never heard from counts
	// from start.
	start time.Time
	last  map[string]time.Time
	dead  map[string]bool
	// back is when a dead DC reported again, and want what this DC had
	// applied then (without the dead DC's own row).
	back map[string]time.Time
	want map[string]changelog.Applied
}

func newLiveness(self string, dcs []string, after time.Duration, start time.Time) *liveness {
	lv := &liveness{self: self, after: after, start: start, last: map[string]time.Time{},
		dead: map[string]bool{}, back: map[string]time.Time{}, want: map[string]changelog.Applied{}}
	for _, dc := range dcs {
		if dc != self {
			lv.last[dc] = start
		}
	}
	return lv
}

// seen records a report from dc at now; mine is this DC's applied vector,
// kept as the catch-up target when dc was dead.
func (lv *liveness) seen(dc string, now time.Time, mine func() changelog.Applied) {
	if _, ok := lv.last[dc]; !ok {
		return
	}
	if lv.dead[dc] && lv.back[dc].IsZero() {
		lv.back[dc] = now
		want := mine()
		delete(want, dc)
		lv.want[dc] = want
	}
	lv.last[dc] = now
}

// transition is one DC changing state.
type transition struct {
	dc     string
	dead   bool
	silent time.Duration // how long the DC had been silent, for a death
	reason string        // why a dead DC counts as alive again
}

// tick updates the dead set at now; peers are the applied vectors the
// other DCs last reported. It returns the DCs whose state changed.
func (lv *liveness) tick(now time.Time, peers map[string]changelog.Applied) []transition {
	var out []transition
	for _, dc := range slices.Sorted(maps.Keys(lv.last)) {
		silent := now.Sub(lv.last[dc])
		switch {
		case !lv.dead[dc] && silent > lv.after:
			lv.dead[dc] = true
			delete(lv.back, dc)
			out = append(out, transition{dc: dc, dead: true, silent: silent})
		case lv.dead[dc] && !lv.back[dc].IsZero() && silent > lv.after:
			// It came back and went silent again: still dead.
			delete(lv.back, dc)
			delete(lv.want, dc)
		case lv.dead[dc] && !lv.back[dc].IsZero():
			reason := ""
			if covers(peers[dc], lv.want[dc]) {
				reason = "caught up"
			} else if now.Sub(lv.back[dc]) >= lv.after {
				reason = "reporting again for heal_after"
			}
			if reason != "" {
				delete(lv.dead, dc)
				delete(lv.back, dc)
				delete(lv.want, dc)
				out = append(out, transition{dc: dc, reason: reason})
			}
		}
	}
	return out
}

func (lv *liveness) isDead(dc string) bool { return lv.dead[dc] }

// covers reports whether a has applied at least what want holds.
func covers(a, want changelog.Applied) bool {
	if a == nil {
		return false
	}
	for origin, row := range want {
		have := a[origin]
		for p, n := range row {
			if n == 0 {
				continue
			}
			if p >= len(have) || have[p] < n {
				return false
			}
		}
	}
	return true
}

// healer runs the heal links of one Replicator; only the reporter
// goroutine calls its methods, except snapshot and bypasses, which any
// goroutine may call.
type healer struct {
	lv *liveness
	wg sync.WaitGroup // the running heal links

	// plan is the effective plan, read for every applied event.
	plan atomic.Pointer[Plan]

	// running holds the heal links by upstream; only the reporter
	// goroutine changes it, under mu.
	mu struct {
		sync.Mutex
		running map[string]*healLink
	}
}

func newHealer(static Plan) *healer {
	h := &healer{}
	h.plan.Store(&static)
	h.mu.running = map[string]*healLink{}
	return h
}

// healLink is a running heal consumer.
type healLink struct {
	*link
	bypass Bypass
	stop   context.CancelFunc
	done   chan struct{}
}

// effectivePlan returns the plan in force: the static one healed around
// the dead DCs.
func (r *Replicator) effectivePlan() Plan {
	if r.heal == nil {
		return r.plan
	}
	return *r.heal.plan.Load()
}

// healLinks returns the running heal links.
func (r *Replicator) healLinks() []*link {
	if r.heal == nil {
		return nil
	}
	r.heal.mu.Lock()
	defer r.heal.mu.Unlock()
	out := make([]*link, 0, len(r.heal.mu.running))
	for _, up := range slices.Sorted(maps.Keys(r.heal.mu.running)) {
		out = append(out, r.heal.mu.running[up].link)
	}
	return out
}

// allLinks returns the static links and the running heal links.
func (r *Replicator) allLinks() []*link {
	return append(slices.Clone(r.links), r.healLinks()...)
}

// Healing returns the bypasses in effect; empty when nothing is healed.
func (r *Replicator) Healing() []Bypass {
	return slices.Clone(r.effectivePlan().Healing)
}

// healPossible reports whether healing is on and the topology has
// anything to heal.
func (r *Replicator) healPossible() bool {
	return r.opts.HealAfter > 0 && (r.plan.Topology == config.Ring || r.plan.Topology == config.Star)
}

// startHealing sets up liveness tracking at the reporter's start and
// deletes heal consumers a previous run of this DC left behind: their
// place is stale, and a new one is computed when healing starts again.
func (r *Replicator) startHealing(ctx context.Context) {
	if r.heal == nil {
		return
	}
	r.heal.lv = newLiveness(r.self, r.opts.DCs, r.opts.HealAfter, r.now())
	ctx, cancel := context.WithTimeout(ctx, r.opts.APITimeout)
	defer cancel()
	for _, up := range r.opts.DCs {
		if up == r.self {
			continue
		}
		err := r.js.DeleteConsumer(ctx, names.Stream(up), names.HealConsumer(r.self, up))
		switch {
		case err == nil:
			r.log.Info("deleted a heal consumer left from an earlier run", "consumer", names.HealConsumer(r.self, up), "stream", names.Stream(up))
		case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
		default:
			r.log.Debug("delete a stale heal consumer", "stream", names.Stream(up), "err", err)
		}
	}
}

// healReport notes a report from dc for liveness.
func (r *Replicator) healReport(dc string) {
	if r.heal == nil || r.heal.lv == nil {
		return
	}
	r.heal.lv.seen(dc, r.now(), func() changelog.Applied { return r.store.Applied() })
}

// healTick updates liveness and, when a DC died or came back, reconciles
// the running heal links with the effective plan.
func (r *Replicator) healTick(ctx context.Context) {
	if r.heal == nil || r.heal.lv == nil {
		return
	}
	lv := r.heal.lv
	changes := lv.tick(r.now(), r.store.PeerApplied())
	if len(changes) == 0 {
		return
	}
	for _, c := range changes {
		if c.dead {
			r.log.Warn("DC unreachable: no applied-vector report for longer than heal_after", "peer", c.dc,
				"silent", c.silent.Round(time.Millisecond), "heal_after", r.opts.HealAfter)
		} else {
			r.log.Info("DC reachable again", "peer", c.dc, "because", c.reason)
		}
	}
	r.reconcile(ctx, r.plan.Heal(lv.isDead, r.opts.StandbyHub))
}

// reconcile makes the running heal links match plan's bypasses: it stops
// and deletes those no longer wanted, starts the new ones, and then puts
// plan in force. Stopping a link lets it finish the batch in hand (a batch
// is acknowledged only after the store commits it), so nothing is lost or
// half applied.
func (r *Replicator) reconcile(ctx context.Context, plan Plan) {
	h := r.heal
	want := map[string]Bypass{}
	for _, b := range plan.Healing {
		want[b.Via] = b
	}
	h.mu.Lock()
	running := maps.Clone(h.mu.running)
	h.mu.Unlock()
	before := h.plan.Load().Healing

	for up, hl := range running {
		if b, ok := want[up]; ok && b == hl.bypass {
			continue
		}
		hl.stop()
		<-hl.done
		h.mu.Lock()
		delete(h.mu.running, up)
		h.mu.Unlock()
		dctx, cancel := context.WithTimeout(ctx, r.opts.APITimeout)
		err := r.js.DeleteConsumer(dctx, hl.stream, hl.consumer)
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			// Left behind, it is deleted at the next start or when healing
			// through the same upstream ends again.
			r.log.Warn("delete a heal consumer", "consumer", hl.consumer, "stream", hl.stream, "err", err)
		}
		r.log.Info("heal link stopped", "upstream", up, "dead", hl.bypass.Dead, "consumer", hl.consumer,
			"applied", hl.applied.Load(), "duplicates", hl.duplicates.Load(), "loops", hl.loops.Load())
	}
	// The forwarding rule changes before the new links run: a standby
	// forwards from the first event it takes in place of the hub.
	h.plan.Store(&plan)
	for _, up := range slices.Sorted(maps.Keys(want)) {
		if _, ok := running[up]; ok && running[up].bypass == want[up] {
			continue
		}
		b := want[up]
		lctx, stop := context.WithCancel(ctx)
		hl := &healLink{
			link:   &link{up: up, stream: names.Stream(up), consumer: names.HealConsumer(r.self, up), heal: true},
			bypass: b,
			stop:   stop,
			done:   make(chan struct{}),
		}
		h.mu.Lock()
		h.mu.running[up] = hl
		h.mu.Unlock()
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer close(hl.done)
			r.runHeal(lctx, hl)
		}()
		r.log.Info("heal link started", "upstream", up, "dead", b.Dead, "consumer", hl.consumer)
	}
	if !slices.Equal(before, plan.Healing) {
		r.log.Warn("healing changed", "healing", describeBypasses(plan.Healing), "was", describeBypasses(before),
			"upstreams", plan.EffectiveUpstreams(), "forward", plan.Forward)
	}
}

// stopHealing stops every heal link at shutdown, leaving its consumer in
// place (the next start deletes it).
func (r *Replicator) stopHealing() {
	if r.heal == nil {
		return
	}
	r.heal.mu.Lock()
	for _, hl := range r.heal.mu.running {
		hl.stop()
	}
	r.heal.mu.Unlock()
	r.heal.wg.Wait()
}

// runHeal places a heal link's consumer right after what the dead DC's
// consumer on the same stream had acknowledged, then consumes it as any
// link until ctx ends.
func (r *Replicator) runHeal(ctx context.Context, hl *healLink) {
	bo := backoff{min: r.opts.RetryMin, max: r.opts.RetryMax}
	for {
		start, err := r.healStart(ctx, hl)
		if err == nil {
			hl.startSeq = start
			break
		}
		if ctx.Err() != nil {
			return
		}
		hl.setErr(err)
		d := bo.next()
		r.log.Warn("heal link: set-up failed; trying again", "upstream", hl.up, "err", err, "retry_in", d)
		if !wait(ctx, d) {
			return
		}
	}
	r.runLink(ctx, hl.link)
}

// healStart deletes a heal consumer left from before (its place is stale)
// and returns the stream sequence the new one starts at: one past the ack
// floor of the dead DC's consumer on the stream, so that the heal consumer
// reads what the dead DC has not, and not the whole stream. What the dead
// DC acknowledged but had not yet forwarded when it died is missing here;
// gap repair and the catch-up from the origin fetch it. 0 means the whole
// stream: the dead DC never consumed it.
func (r *Replicator) healStart(ctx context.Context, hl *healLink) (uint64, error) {
	actx, cancel := context.WithTimeout(ctx, r.opts.APITimeout)
	defer cancel()
	err := r.js.DeleteConsumer(actx, hl.stream, hl.consumer)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, fmt.Errorf("delete the old heal consumer %s: %w", hl.consumer, err)
	}
	c, err := r.js.Consumer(actx, hl.stream, names.Consumer(hl.bypass.Dead, hl.up))
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read the dead DC's consumer %s: %w", names.Consumer(hl.bypass.Dead, hl.up), err)
	}
	if floor := c.CachedInfo().AckFloor.Stream; floor > 0 {
		return floor + 1, nil
	}
	return 0, nil
}

func describeBypasses(bs []Bypass) string {
	if len(bs) == 0 {
		return "none"
	}
	parts := make([]string, len(bs))
	for i, b := range bs {
		parts[i] = b.Dead + " via " + b.Via
	}
	return strings.Join(parts, ", ")
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
		case s == o.Plan.hub:
			errs = append(errs, fmt.Errorf("StandbyHub %q is the hub itself; name another DC", s))
		case !slices.Contains(o.DCs, s):
			errs = append(errs, fmt.Errorf("StandbyHub %q is not in DCs %v", s, o.DCs))
		}
	}
	return errs
}
