package bridge

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/names"
)

// heartbeat publishes this DC's applied vector on its own goroutine (run),
// which owns everything the heartbeat keeps.
type heartbeat struct{ *env }

// run publishes this DC's durable applied vector every
// ReportInterval, idle or not, on a goroutine of its own: the others take
// a DC that stops reporting for heal_after as unreachable, so slow work
// elsewhere (a catch-up repair, stopping a heal link, trimming) must never
// delay it. Between those it also publishes soon after the vector moves,
// at most once every ReportDebounce, so that a write waiting for other DCs
// (X-Repl-Wait) learns within milliseconds that they applied it.
func (b heartbeat) run(ctx context.Context) {
	t := time.NewTicker(b.opts.ReportInterval)
	defer t.Stop()
	// cool runs for ReportDebounce after each report; a move meanwhile
	// waits for it (pending) and is reported when it fires.
	cool := time.NewTimer(0)
	defer cool.Stop()
	cooling, pending := true, false
	var sent changelog.Applied
	report := func(always bool) {
		a := b.store.AppliedDurable()
		if !always && a.LessEq(sent) {
			return // nothing new since the last report
		}
		b.publish(a)
		sent = a
		cool.Reset(b.opts.ReportDebounce)
		cooling = true
	}
	report(true)
	for {
		var moved <-chan struct{}
		if b.opts.ReportDebounce > 0 && !pending {
			moved = b.store.DurableMoved()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			report(true)
		case <-moved:
			if cooling {
				pending = true
			} else {
				report(false)
			}
		case <-cool.C:
			cooling = false
			if pending {
				pending = false
				report(false)
			}
		}
	}
}

// reportIntake takes in the applied vectors other DCs report, on its own
// goroutine (run), which owns what it keeps.
type reportIntake struct {
	*env
	// alive hands the DCs that reported to the reporter.
	alive *reporters
}

// run records the applied vectors other DCs report as they arrive, waking
// the writes waiting for them, and hands the reporters to the reporter for
// liveness. Reports that come within ReportInterval of the last one kept
// in a peer's history update only its newest (see
// changelog.Store.UpdatePeerApplied).
func (in reportIntake) run(ctx context.Context, reports <-chan *nats.Msg) {
	kept := map[string]time.Time{}
	highest := map[string]changelog.Applied{}
	cover := in.cover.Load()
	covered := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-reports:
			dc, a, parts, ok := in.peerReport(m)
			if !ok {
				continue
			}
			a = in.peerView(highest, dc, a)
			if now := in.now(); now.Sub(kept[dc]) >= in.opts.ReportInterval {
				kept[dc] = now
				in.store.SetPeerApplied(dc, a)
			} else {
				in.store.UpdatePeerApplied(dc, a)
			}
			// Liveness, and the peer's state in readiness and status,
			// count a DC as reporting once its reports cover every
			// partition of this shard (see core.Coverage).
			at := cover.seen(dc, parts, in.now())
			if at.After(covered[dc]) {
				covered[dc] = at
				in.alive.add(dc, at)
			}
			if rd := in.ready.Load(); rd != nil {
				rd.seen(dc, a, at)
				in.readiness() // latches the moment it is reached
			}
		}
	}
}

// coverage guards the core's record of when each peer last reported on
// each partition (core.Coverage): the report intake feeds it, and the
// expirer asks it whether a key's owner is silent on the key's partition.
type coverage struct {
	mu struct {
		sync.Mutex
		c *core.Coverage
	}
}

// newCoverage tracks the reports on this sidecar's partitions (every
// partition when the DC is not sharded) from start.
func newCoverage(e *env, start time.Time) *coverage {
	var mine []uint32
	if e.sharded() {
		mine = e.ownedPartitions()
	}
	c := &coverage{}
	c.mu.c = core.NewCoverage(mine, e.opts.Partitions, start)
	return c
}

func (c *coverage) seen(dc string, parts []uint32, now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.c.Seen(dc, parts, now)
}

func (c *coverage) silentOn(dc string, p uint32, now time.Time, bound time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.c.SilentOn(dc, p, now, bound)
}

// reporter, on its own goroutine (run), judges the peers' liveness
// (through the healer, which it alone drives), catches up with the
// origins, refreshes the links' lag figures and runs maintenance. It owns
// catchUp, replays and retention.
type reporter struct {
	*env
	links []*link // the static links
	heal  *healer // nil when healing is off
	// alive hands the DCs whose reports arrived from the report intake to
	// the reporter, which judges liveness.
	alive     *reporters
	catchUp   core.CatchUp
	replays   core.Replays
	retention *retention
}

func newReporter(e *env, links []*link, heal *healer) *reporter {
	return &reporter{env: e, links: links, heal: heal, alive: newReporters(),
		catchUp:   core.CatchUp{After: e.opts.RepairAfter, Known: e.known},
		replays:   core.Replays{Every: 10 * e.opts.RepairAfter},
		retention: newRetention(e)}
}

// run, every ReportInterval, refreshes the links' lag, judges the
// peers' liveness and catches up; every MaintenanceInterval it trims the
// outbox and purges stable tombstones; and it notes which DCs reported.
// It returns when ctx ends.
func (r *reporter) run(ctx context.Context) {
	report := time.NewTicker(r.opts.ReportInterval)
	defer report.Stop()
	maint := time.NewTicker(r.opts.MaintenanceInterval)
	defer maint.Stop()
	if r.heal != nil {
		r.heal.start(ctx)
		defer r.heal.stopAll()
	}
	seen := func() {
		for dc, at := range r.alive.take() {
			if r.heal != nil {
				r.heal.seen(dc, at)
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.alive.wake:
			seen()
		case <-report.C:
			// Reports that arrived while this goroutine was busy (a slow
			// repair, say) count before liveness is judged.
			seen()
			r.readiness() // a silent peer's bound may have passed
			if r.heal != nil {
				r.heal.tick(ctx)
			}
			r.refreshLag(ctx)
			r.catchUpNow(ctx)
		case <-maint.C:
			r.maintain(ctx)
		}
	}
}

// reporters collects the DCs whose reports arrived since the reporter last
// looked, each with the time its reports last covered this shard's
// partitions (the latest, however often it reported).
type reporters struct {
	mu   sync.Mutex
	dcs  map[string]time.Time
	wake chan struct{}
}

func newReporters() *reporters {
	return &reporters{dcs: map[string]time.Time{}, wake: make(chan struct{}, 1)}
}

func (p *reporters) add(dc string, at time.Time) {
	p.mu.Lock()
	if at.After(p.dcs[dc]) {
		p.dcs[dc] = at
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *reporters) take() map[string]time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := maps.Clone(p.dcs)
	clear(p.dcs)
	return out
}

func (b heartbeat) publish(a changelog.Applied) {
	data, err := msgpack.Marshal(map[string][]uint64(a))
	if err != nil {
		b.log.Error("encode the applied vector", "err", err)
		return
	}
	m := &nats.Msg{Subject: names.AppliedSubject(b.self), Data: data}
	if b.sharded() {
		// Each shard speaks for its own partitions (core.Coverage).
		m.Header = nats.Header{core.HeaderReportPartitions: {core.FormatPartitions(b.ownedPartitions())}}
	}
	if err := b.nc.PublishMsg(m); err != nil {
		b.log.Debug("publish the applied vector", "err", err)
		return
	}
	b.c.reportsSent.Add(1)
	b.c.reportBytes.Add(uint64(len(data)))
}

// peerReport decodes an applied vector another DC published, if it is
// well formed and comes from a known DC, and counts it; parts are the
// partitions it speaks for (nil: every one).
func (in reportIntake) peerReport(m *nats.Msg) (string, changelog.Applied, []uint32, bool) {
	dc, ok := names.AppliedDC(m.Subject)
	if !ok || dc == in.self {
		return "", nil, nil, false
	}
	a, err := in.check.Report(dc, m.Data)
	var parts []uint32
	if err == nil {
		parts, err = core.ParsePartitions(m.Header.Get(core.HeaderReportPartitions), in.opts.Partitions)
	}
	if err != nil {
		in.c.peerReportsIgnored.Add(1)
		in.log.Debug("ignored an applied-vector report", "from", dc, "err", err)
		return "", nil, nil, false
	}
	in.c.peerReports.Add(1)
	return dc, a, parts, true
}

// maintain trims outbox entries every DC has applied and purges
// tombstones every DC has seen.
func (r *reporter) maintain(ctx context.Context) {
	if n, err := r.store.TrimOutbox(ctx); err != nil {
		r.log.Warn("trim the outbox", "err", err)
	} else {
		r.c.trimmed.Add(uint64(n))
	}
	if n, err := r.store.Purge(ctx); err != nil {
		r.log.Warn("purge tombstones", "err", err)
	} else {
		r.c.purged.Add(uint64(n))
	}
	r.retention.trim(ctx)
}

// refreshLag reads each link's consumer for its pending and unacknowledged
// message counts.
func (r *reporter) refreshLag(ctx context.Context) {
	for _, l := range allLinks(r.links, r.heal) {
		cons := l.getConsumer()
		if cons == nil {
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, min(r.opts.ReportInterval, r.opts.APITimeout))
		info, err := cons.Info(ictx)
		cancel()
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				r.log.Debug("read consumer info", "consumer", l.consumer, "err", err)
			}
			continue
		}
		l.lagEvents.Store(info.NumPending + uint64(info.NumAckPending))
	}
}

// setConsumer and getConsumer hand the link's consumer from the link's
// goroutine to the reporter.
func (l *linkCounters) setConsumer(c jetstream.Consumer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.cons = c
}

func (l *linkCounters) getConsumer() jetstream.Consumer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.cons
}

// catchUpNow asks the origins for the events the core's catch-up finds
// missing (core.CatchUp): losses no later event reveals, such as the last
// events of a partition. When an origin no longer holds them, the links
// that carry them replay their upstream's stream.
func (r *reporter) catchUpNow(ctx context.Context) {
	for _, b := range r.catchUp.Due(r.now(), r.store.Applied(), r.store.PeerApplied()) {
		r.log.Info("behind an origin without progress; asking it for the missing events",
			"origin", b.Origin, "partition", b.Partition, "applied", b.From-1, "origin_seq", b.To, "for", b.For.Round(time.Millisecond))
		t, err := r.repairer().Repair(ctx, b.Origin, b.Partition, b.From, b.To)
		r.c.add(t)
		if err == nil {
			continue
		}
		r.c.repairErrors.Add(1)
		r.log.Warn("catch-up repair failed", "origin", b.Origin, "partition", b.Partition, "err", err)
		if errors.Is(err, core.ErrOriginLacks) {
			r.replay(ctx, b.Origin)
		}
	}
}

// replay makes the links that carry origin's events deliver their
// upstream's whole stream again, by deleting their durable consumers: the
// link goroutine sees its consumer go and creates it anew from the first
// message. Events already applied come back as duplicates and change
// nothing. It is the last resort when the origin's outbox no longer holds
// events this DC lacks, and runs at most once per link every
// 10×RepairAfter.
func (r *reporter) replay(ctx context.Context, origin string) {
	ups := make([]string, len(r.links))
	byUp := make(map[string]*link, len(r.links))
	for i, l := range r.links {
		ups[i], byUp[l.up] = l.up, l
	}
	for _, up := range r.replays.Due(r.now(), origin, ups) {
		l := byUp[up]
		actx, cancel := context.WithTimeout(ctx, r.opts.APITimeout)
		err := r.js.DeleteConsumer(actx, l.stream, l.consumer)
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			r.log.Warn("replay: delete consumer", "consumer", l.consumer, "stream", l.stream, "err", err)
			continue
		}
		r.c.replays.Add(1)
		r.log.Warn("replaying an upstream's stream from its first message to recover events the origin no longer holds",
			"upstream", l.up, "stream", l.stream, "origin", origin)
	}
}
