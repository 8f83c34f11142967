package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
	"github.com/replicatorhq/replicator/pkg/names"
)

// runHeartbeat publishes this DC's durable applied vector every
// ReportInterval, idle or not, on a goroutine of its own: the others take
// a DC that stops reporting for heal_after as unreachable, so slow work
// elsewhere (a catch-up repair, stopping a heal link, trimming) must never
// delay it. Between those it also publishes soon after the vector moves,
// at most once every ReportDebounce, so that a write waiting for other DCs
// (X-Repl-Wait) learns within milliseconds that they applied it.
func (r *Replicator) runHeartbeat(ctx context.Context) {
	t := time.NewTicker(r.opts.ReportInterval)
	defer t.Stop()
	// cool runs for ReportDebounce after each report; a move meanwhile
	// waits for it (pending) and is reported when it fires.
	cool := time.NewTimer(0)
	defer cool.Stop()
	cooling, pending := true, false
	var sent changelog.Applied
	report := func(always bool) {
		a := r.store.AppliedDurable()
		if !always && a.LessEq(sent) {
			return // nothing new since the last report
		}
		r.publishApplied(a)
		sent = a
		cool.Reset(r.opts.ReportDebounce)
		cooling = true
	}
	report(true)
	for {
		var moved <-chan struct{}
		if r.opts.ReportDebounce > 0 && !pending {
			moved = r.store.DurableMoved()
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

// runReportIntake records the applied vectors other DCs report as they
// arrive, waking the writes waiting for them, and hands the reporters to
// runReports for liveness. Reports that come within ReportInterval of the
// last one kept in a peer's history update only its newest (see
// changelog.Store.UpdatePeerApplied).
func (r *Replicator) runReportIntake(ctx context.Context, reports <-chan *nats.Msg) {
	kept := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-reports:
			dc, a, ok := r.peerReport(m)
			if !ok {
				continue
			}
			if now := r.now(); now.Sub(kept[dc]) >= r.opts.ReportInterval {
				kept[dc] = now
				r.store.SetPeerApplied(dc, a)
			} else {
				r.store.UpdatePeerApplied(dc, a)
			}
			r.alive.add(dc)
			if rd := r.ready.Load(); rd != nil {
				rd.seen(dc, a, r.now())
				r.Readiness() // latches the moment it is reached
			}
		}
	}
}

// runReports, every ReportInterval, refreshes the links' lag, judges the
// peers' liveness and catches up; every MaintenanceInterval it trims the
// outbox and purges stable tombstones; and it notes which DCs reported.
// It returns when ctx ends.
func (r *Replicator) runReports(ctx context.Context) {
	report := time.NewTicker(r.opts.ReportInterval)
	defer report.Stop()
	maint := time.NewTicker(r.opts.MaintenanceInterval)
	defer maint.Stop()
	r.startHealing(ctx)
	defer r.stopHealing()
	seen := func() {
		for _, dc := range r.alive.take() {
			r.healReport(dc)
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
			r.Readiness() // a silent peer's bound may have passed
			r.healTick(ctx)
			r.refreshLag(ctx)
			r.catchUp(ctx)
		case <-maint.C:
			r.maintain(ctx)
		}
	}
}

// reporters collects the DCs whose reports arrived since runReports last
// looked; a DC is kept once however often it reported.
type reporters struct {
	mu   sync.Mutex
	dcs  map[string]bool
	wake chan struct{}
}

func newReporters() *reporters {
	return &reporters{dcs: map[string]bool{}, wake: make(chan struct{}, 1)}
}

func (p *reporters) add(dc string) {
	p.mu.Lock()
	p.dcs[dc] = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *reporters) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.dcs))
	for dc := range p.dcs {
		out = append(out, dc)
	}
	clear(p.dcs)
	return out
}

func (r *Replicator) publishApplied(a changelog.Applied) {
	b, err := msgpack.Marshal(map[string][]uint64(a))
	if err != nil {
		r.log.Error("encode the applied vector", "err", err)
		return
	}
	if err := r.nc.Publish(names.AppliedSubject(r.self), b); err != nil {
		r.log.Debug("publish the applied vector", "err", err)
		return
	}
	r.c.reportsSent.Add(1)
	r.c.reportBytes.Add(uint64(len(b)))
}

// peerReport decodes an applied vector another DC published, if it is
// well formed and comes from a known DC, and counts it.
func (r *Replicator) peerReport(m *nats.Msg) (string, changelog.Applied, bool) {
	dc, ok := names.AppliedDC(m.Subject)
	if !ok || dc == r.self {
		return "", nil, false
	}
	a, err := r.decodeApplied(dc, m.Data)
	if err != nil {
		r.c.peerReportsIgnored.Add(1)
		r.log.Debug("ignored an applied-vector report", "from", dc, "err", err)
		return "", nil, false
	}
	r.c.peerReports.Add(1)
	return dc, a, true
}

func (r *Replicator) decodeApplied(dc string, data []byte) (changelog.Applied, error) {
	if !r.known[dc] {
		return nil, fmt.Errorf("%q is not a known DC", dc)
	}
	var a map[string][]uint64
	if err := msgpackcheck.Unmarshal(data, &a); err != nil {
		return nil, err
	}
	for origin, row := range a {
		if !r.known[origin] {
			return nil, fmt.Errorf("entry for unknown DC %q", origin)
		}
		if len(row) != r.opts.Partitions {
			return nil, fmt.Errorf("entry for %q has %d partitions, want %d", origin, len(row), r.opts.Partitions)
		}
	}
	return changelog.Applied(a), nil
}

// maintain trims outbox entries every DC has applied and purges
// tombstones every DC has seen.
func (r *Replicator) maintain(ctx context.Context) {
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
	r.trimStream(ctx)
}

// refreshLag reads each link's consumer for its pending and unacknowledged
// message counts.
func (r *Replicator) refreshLag(ctx context.Context) {
	for _, l := range r.allLinks() {
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

// lag is where this DC stood behind an origin, and since when.
type lag struct {
	since time.Time
	have  uint64
}

// catchUp compares this DC's applied vector with each origin's own
// sequences, as the origin last reported them, and asks the origin for the
// missing events when this DC has made no progress for RepairAfter. Gap
// detection cannot see a loss that no later event follows, such as the
// last events of a partition; this does.
func (r *Replicator) catchUp(ctx context.Context) {
	mine := r.store.Applied()
	now := r.now()
	for origin, report := range r.store.PeerApplied() {
		if !r.known[origin] {
			continue
		}
		have := mine[origin]
		for p, target := range report[origin] {
			var h uint64
			if p < len(have) {
				h = have[p]
			}
			k := gapKey{origin, uint32(p)}
			b, seen := r.behind[k]
			switch {
			case target <= h:
				delete(r.behind, k)
				continue
			case !seen || h > b.have:
				r.behind[k] = lag{since: now, have: h}
				continue
			case now.Sub(b.since) < r.opts.RepairAfter:
				continue
			}
			r.behind[k] = lag{since: now, have: h}
			r.log.Info("behind an origin without progress; asking it for the missing events",
				"origin", origin, "partition", p, "applied", h, "origin_seq", target, "for", now.Sub(b.since).Round(time.Millisecond))
			err := r.repair(ctx, origin, uint32(p), h+1, target)
			if err == nil {
				continue
			}
			r.c.repairErrors.Add(1)
			r.log.Warn("catch-up repair failed", "origin", origin, "partition", p, "err", err)
			if errors.Is(err, errOriginLacks) {
				r.replay(ctx, origin)
			}
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
func (r *Replicator) replay(ctx context.Context, origin string) {
	links := r.links
	for _, l := range r.links {
		if l.up == origin {
			links = []*link{l}
			break
		}
	}
	now := r.now()
	for _, l := range links {
		if last, ok := r.replayed[l.up]; ok && now.Sub(last) < 10*r.opts.RepairAfter {
			continue
		}
		r.replayed[l.up] = now
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
