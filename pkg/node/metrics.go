package node

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// registerRuntime adds the Go runtime (go_*) and process (process_*)
// collectors to reg, with the dc label every other series carries. A
// registry that already holds them for this DC (a node started again on
// it) keeps the ones it has.
func registerRuntime(reg prometheus.Registerer, dc string) error {
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"dc": dc}, reg)
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		var are prometheus.AlreadyRegisteredError
		if err := wrapped.Register(c); err != nil && !errors.As(err, &are) {
			return fmt.Errorf("node: register runtime metrics: %w", err)
		}
	}
	return nil
}

// collector exposes the node's counters to Prometheus at scrape time, from
// the store's and the bridge's own counters, so the hot paths pay nothing
// for metrics. It is registered on the registry the node was given.
type collector struct {
	n *Node

	writes, applies, obsolete, duplicates, loops, dead, published, pubErrors,
	gaps, repairs, purged, conflicts, lagEvents, lagSeconds, outbox, groups, drift *prometheus.Desc
	conflictLog, conflictsPruned *prometheus.Desc
	heal                         *prometheus.Desc
	reportsSent, reportBytes     *prometheus.Desc
	ready, peerAge               *prometheus.Desc
	expired                      *prometheus.Desc
	siblingsRefused              *prometheus.Desc
}

// newPublishLatency is the histogram of JetStream publish latency, fed by
// the bridge's ObservePublish hook.
func newPublishLatency(dc string) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:        "replicator_publish_latency_seconds",
		Help:        "Time from sending an event to JetStream to its acknowledgement.",
		ConstLabels: prometheus.Labels{"dc": dc},
		Buckets:     prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
}

func newCollector(n *Node) *collector {
	dc := prometheus.Labels{"dc": n.cfg.DC}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("replicator_"+name, help, labels, dc)
	}
	return &collector{
		n:               n,
		writes:          d("writes_total", "Durable local writes."),
		applies:         d("applies_total", "Remote events applied that changed a key."),
		obsolete:        d("obsolete_total", "Remote events applied in order that an applied context already covered."),
		duplicates:      d("duplicates_dropped_total", "Remote events dropped as already applied."),
		loops:           d("loops_dropped_total", "Events dropped because this DC is their origin or on their path."),
		dead:            d("dead_letters_total", "Messages moved to the dead-letter stream."),
		published:       d("published_total", "Events JetStream stored."),
		pubErrors:       d("publish_errors_total", "Failed publish rounds (retried)."),
		gaps:            d("gaps_total", "Events held back behind a sequence gap."),
		repairs:         d("repaired_events_total", "Events fetched from their origin to fill gaps."),
		purged:          d("tombstones_purged_total", "Tombstoned keys purged after causal stability."),
		expired:         d("expired_total", "Expired values (TTL) this DC deleted, each with one replicated delete."),
		conflicts:       d("conflicts_total", "Conflict-log entries written, by resolver.", "resolver"),
		lagEvents:       d("link_lag_events", "Messages pending on an upstream link.", "upstream"),
		lagSeconds:      d("link_lag_seconds", "Age of the newest event applied from an upstream, while messages are pending.", "upstream"),
		outbox:          d("outbox_depth", "Outbox entries not yet acknowledged by JetStream."),
		groups:          d("commit_groups_total", "Pebble batches committed (one fsync each)."),
		drift:           d("clock_drift_rejected_total", "Applied events whose HLC was beyond the drift bound (max_clock_drift)."),
		conflictLog:     d("conflict_log_entries", "Logged and resolved conflict-log entries held (open records not counted)."),
		conflictsPruned: d("conflicts_pruned_total", "Conflict-log entries pruned by conflict_log.retention or max_entries."),
		heal:            d("heal_active", "1 while this DC heals around the unreachable DC dead (heal_after), else 0.", "dead"),
		reportsSent:     d("reports_sent_total", "Applied-vector reports published on repl.applied.<dc>, periodic and soon after a move."),
		reportBytes:     d("report_bytes_total", "Payload bytes of the applied-vector reports published."),
		ready:           d("ready", "1 once this DC has caught up since it started (GET /readyz answers 200), else 0."),
		siblingsRefused: d("siblings_refused_total", "Local writes refused because their key already held limits.max_siblings siblings (409)."),
		peerAge:         d("peer_report_age_seconds", "Seconds since the peer's last applied-vector report (since this DC started, for a peer not heard from).", "peer"),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.writes, c.applies, c.obsolete, c.duplicates, c.loops, c.dead, c.published,
		c.pubErrors, c.gaps, c.repairs, c.purged, c.conflicts, c.lagEvents, c.lagSeconds, c.outbox, c.groups, c.drift,
		c.conflictLog, c.conflictsPruned, c.heal, c.reportsSent, c.reportBytes, c.ready, c.peerAge, c.expired, c.siblingsRefused} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ss := c.n.store.Stats()
	counter(c.writes, ss.Writes)
	counter(c.groups, ss.Groups)
	counter(c.siblingsRefused, ss.SiblingsRefused)
	for r, v := range ss.Conflicts {
		counter(c.conflicts, v, r)
	}
	gauge(c.outbox, float64(c.n.store.OutboxDepth()))
	gauge(c.conflictLog, float64(ss.ConflictsHeld))
	counter(c.conflictsPruned, ss.ConflictsPruned)
	if c.n.repl == nil {
		gauge(c.ready, 0)
		return
	}
	ready := 0.0
	if c.n.repl.Readiness().Ready {
		ready = 1
	}
	gauge(c.ready, ready)
	for _, p := range c.n.repl.Peers() {
		gauge(c.peerAge, p.ReportAgeSeconds, p.DC)
	}
	bs := c.n.repl.Stats()
	counter(c.applies, bs.Applied)
	counter(c.obsolete, bs.Obsolete)
	counter(c.duplicates, bs.Duplicates)
	counter(c.loops, bs.LoopsDropped)
	counter(c.dead, bs.DeadLetters)
	counter(c.published, bs.Published)
	counter(c.pubErrors, bs.PublishErrors)
	counter(c.gaps, bs.Gaps)
	counter(c.repairs, bs.RepairedEvents)
	counter(c.purged, bs.Purged)
	counter(c.expired, bs.Expired)
	counter(c.drift, bs.ClockDrift)
	counter(c.reportsSent, bs.ReportsSent)
	counter(c.reportBytes, bs.ReportBytes)
	for up, l := range bs.Links {
		gauge(c.lagEvents, float64(l.LagEvents), up)
		gauge(c.lagSeconds, l.LagSeconds, up)
	}
	healing := c.n.repl.Healing()
	for _, dc := range c.n.cfg.DCs {
		if dc == c.n.cfg.DC {
			continue
		}
		active := 0.0
		for _, b := range healing {
			if b.Dead == dc {
				active = 1
			}
		}
		gauge(c.heal, active, dc)
	}
}
