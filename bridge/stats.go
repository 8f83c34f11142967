package bridge

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/pkg/hlc"
)

// Stats is a snapshot of a Replicator's counters since it was created.
type Stats struct {
	// Published counts events JetStream stored for the first time.
	Published uint64
	// PublishDuplicates counts re-sent events JetStream had already stored
	// (acknowledged as duplicates of their Nats-Msg-Id).
	PublishDuplicates uint64
	// PublishErrors counts failed publish rounds: a rejected or timed-out
	// publish, or an outbox that could not be read.
	PublishErrors uint64

	// Received counts messages taken from upstream streams, redeliveries
	// included.
	Received uint64
	// Applied counts remote events that changed a key (outcome Changed).
	Applied uint64
	// Obsolete counts remote events applied in sequence that an already
	// applied context covered (outcome Obsolete).
	Obsolete uint64
	// Duplicates counts remote events already applied (outcome Duplicate).
	Duplicates uint64
	// Gaps counts events that arrived before an earlier event of their
	// origin and partition, and so were held back (outcome Gap).
	Gaps uint64
	// Forwarded counts events queued for forwarding to this DC's stream.
	Forwarded uint64
	// LoopsDropped counts events dropped because this DC is their origin or
	// already on their path.
	LoopsDropped uint64
	// DeadLetters counts messages moved to the dead-letter stream.
	DeadLetters uint64
	// ApplyErrors counts batches the store failed to apply.
	ApplyErrors uint64
	// StreamTrims counts trims of this DC's stream (see core.Retention).
	StreamTrims uint64
	// ClockDrift counts applied events whose HLC was beyond the local
	// clock's drift bound, so the clock did not take it.
	ClockDrift uint64

	// Repairs counts gap-repair requests this DC answered with events
	// applied; RepairedEvents counts the events they brought.
	Repairs        uint64
	RepairedEvents uint64
	// RepairErrors counts repair requests that failed or brought nothing.
	RepairErrors uint64
	// RepairsServed counts repair requests this DC answered for others.
	RepairsServed uint64
	// Replays counts upstream streams replayed from their first message
	// because an origin no longer held events this DC lacked.
	Replays uint64

	// PeerReports counts applied vectors accepted from other DCs;
	// PeerReportsIgnored those ignored as malformed or from unknown DCs.
	PeerReports        uint64
	PeerReportsIgnored uint64
	// ReportsSent counts the applied-vector reports this DC published,
	// periodic and eager; ReportBytes their payload bytes.
	ReportsSent uint64
	ReportBytes uint64
	// Trimmed and Purged count outbox entries and tombstoned keys removed.
	Trimmed uint64
	Purged  uint64
	// Expired counts the expired values this DC deleted (changelog.Deleter
	// named it): each such delete is one replicated delete event.
	Expired uint64

	// Links holds per-upstream figures, by upstream DC.
	Links map[string]LinkStats
}

// LinkStats describes one upstream link.
type LinkStats struct {
	Upstream string
	// Consumer is the durable consumer name on the upstream's stream.
	Consumer string
	// Received, Applied, Obsolete, Duplicates, Gaps, LoopsDropped and
	// DeadLetters count what this link delivered, as in Stats.
	Received     uint64
	Applied      uint64
	Obsolete     uint64
	Duplicates   uint64
	Gaps         uint64
	LoopsDropped uint64
	DeadLetters  uint64
	// LagEvents is the consumer's pending plus unacknowledged messages at
	// the last report interval.
	LagEvents uint64
	// LagSeconds is how far behind the link is: now minus the origin time
	// (HLC) of the last event applied, when messages are pending; zero when
	// none are.
	LagSeconds float64
	// LastApplied is the origin time of the last event applied through the
	// link; zero before the first.
	LastApplied time.Time
	// Connected reports whether the link's consumer is running.
	Connected bool
	// Heal marks a heal link, which runs only while healing around an
	// unreachable DC (see Plan.Heal).
	Heal bool
	// LastError is the link's most recent error, if any.
	LastError string
}

// counters are the Replicator's totals, updated atomically.
type counters struct {
	published, publishDuplicates, publishErrors                           atomic.Uint64
	received, applied, obsolete, duplicates, gaps, forwarded, loops, dead atomic.Uint64
	applyErrors, clockDrift, streamTrims                                  atomic.Uint64
	repairs, repairedEvents, repairErrors, repairsServed, replays         atomic.Uint64
	peerReports, peerReportsIgnored, trimmed, purged                      atomic.Uint64
	reportsSent, reportBytes, expired                                     atomic.Uint64
}

// linkCounters are one link's figures.
type linkCounters struct {
	received, applied, obsolete, duplicates, gaps, loops, dead atomic.Uint64
	lastHLC                                                    atomic.Uint64
	lagEvents                                                  atomic.Uint64
	connected                                                  atomic.Bool

	mu struct {
		sync.Mutex
		lastErr string
		cons    jetstream.Consumer
	}
}

func (l *linkCounters) setErr(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.mu.lastErr = ""
		return
	}
	l.mu.lastErr = err.Error()
}

func (l *linkCounters) lastErr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.lastErr
}

// add adds what the core counted in one step to the totals.
func (c *counters) add(t core.Tally) {
	c.received.Add(t.Received)
	c.loops.Add(t.Loops)
	c.applied.Add(t.Outcomes.Changed + t.Repaired.Changed)
	c.obsolete.Add(t.Outcomes.Obsolete + t.Repaired.Obsolete)
	c.duplicates.Add(t.Outcomes.Duplicate + t.Repaired.Duplicate)
	c.gaps.Add(t.Outcomes.Gap + t.Repaired.Gap)
	c.forwarded.Add(t.Outcomes.Forwarded + t.Repaired.Forwarded)
	c.applyErrors.Add(t.ApplyErrors)
	c.clockDrift.Add(t.ClockDrift)
	c.repairs.Add(t.Repairs)
	c.repairedEvents.Add(t.RepairedEvents)
	c.repairErrors.Add(t.RepairErrors)
}

// noteHLC remembers ts as the origin time of the last event applied in
// sequence, if it is later than the one kept.
func (l *linkCounters) noteHLC(ts uint64) {
	for {
		old := l.lastHLC.Load()
		if ts <= old || l.lastHLC.CompareAndSwap(old, ts) {
			return
		}
	}
}

// Stats returns a snapshot of the counters.
func (r *Replicator) Stats() Stats {
	c := r.env.c
	s := Stats{
		Published:          c.published.Load(),
		ClockDrift:         c.clockDrift.Load(),
		StreamTrims:        c.streamTrims.Load(),
		PublishDuplicates:  c.publishDuplicates.Load(),
		PublishErrors:      c.publishErrors.Load(),
		Received:           c.received.Load(),
		Applied:            c.applied.Load(),
		Obsolete:           c.obsolete.Load(),
		Duplicates:         c.duplicates.Load(),
		Gaps:               c.gaps.Load(),
		Forwarded:          c.forwarded.Load(),
		LoopsDropped:       c.loops.Load(),
		DeadLetters:        c.dead.Load(),
		ApplyErrors:        c.applyErrors.Load(),
		Repairs:            c.repairs.Load(),
		RepairedEvents:     c.repairedEvents.Load(),
		RepairErrors:       c.repairErrors.Load(),
		RepairsServed:      c.repairsServed.Load(),
		Replays:            c.replays.Load(),
		PeerReports:        c.peerReports.Load(),
		PeerReportsIgnored: c.peerReportsIgnored.Load(),
		ReportsSent:        c.reportsSent.Load(),
		ReportBytes:        c.reportBytes.Load(),
		Trimmed:            c.trimmed.Load(),
		Purged:             c.purged.Load(),
		Expired:            c.expired.Load(),
		Links:              make(map[string]LinkStats, len(r.links)),
	}
	now := r.env.now()
	for _, l := range r.allLinks() {
		s.Links[l.up] = l.stats(now)
	}
	return s
}

// stats returns the link's figures at now.
func (l *link) stats(now time.Time) LinkStats {
	ls := LinkStats{
		Upstream:     l.up,
		Consumer:     l.consumer,
		Received:     l.received.Load(),
		Applied:      l.applied.Load(),
		Obsolete:     l.obsolete.Load(),
		Duplicates:   l.duplicates.Load(),
		Gaps:         l.gaps.Load(),
		LoopsDropped: l.loops.Load(),
		DeadLetters:  l.dead.Load(),
		LagEvents:    l.lagEvents.Load(),
		Connected:    l.connected.Load(),
		Heal:         l.heal,
		LastError:    l.lastErr(),
	}
	if ts := l.lastHLC.Load(); ts > 0 {
		ls.LastApplied = hlc.Timestamp(ts).Time()
		if ls.LagEvents > 0 {
			ls.LagSeconds = max(0, now.Sub(ls.LastApplied).Seconds())
		}
	}
	return ls
}
