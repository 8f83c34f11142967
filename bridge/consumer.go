package bridge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/rpc"
)

// batchLinger bounds how long a batch waits for more messages once its
// first has arrived.
const batchLinger = 5 * time.Millisecond

// link is one upstream this DC consumes.
type link struct {
	up       string
	stream   string
	consumer string
	// heal marks a heal link (see Plan.Heal); startSeq, if not 0, is the
	// stream sequence its consumer starts at instead of the first message.
	heal     bool
	startSeq uint64
	linkCounters

	// failures counts, by stream sequence, how often a message failed for
	// a reason other than a gap. Only the link's goroutine uses it.
	failures map[uint64]int
}

// inbound is a message that passed the checks, with its event, or the
// ops of its transaction.
type inbound struct {
	msg jetstream.Msg
	evs []*event.Event
}

// consumerConfig returns the durable pull consumer of a link: explicit
// acks, bounded MaxAckPending, a backoff schedule, and no server-side
// MaxDeliver, because a message that waits for a gap to be filled must be
// redelivered as often as it takes; the Replicator counts other failures
// itself and dead-letters past Options.MaxDeliver.
func (r *Replicator) consumerConfig(l *link) jetstream.ConsumerConfig {
	desc := "replicator: DC " + r.self + " applies events from DC " + l.up
	if l.heal {
		desc += " while healing around an unreachable DC"
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       l.consumer,
		Description:   desc,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       r.opts.BackOff[0],
		BackOff:       r.opts.BackOff,
		MaxDeliver:    -1,
		MaxAckPending: r.opts.MaxAckPending,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
	if l.startSeq > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = l.startSeq
	}
	return cfg
}

// runLink consumes one upstream until ctx ends, setting the consumer up
// again, with backoff, whenever it fails (the upstream's stream may not
// exist yet, or NATS may be down).
func (r *Replicator) runLink(ctx context.Context, l *link) {
	l.failures = map[uint64]int{}
	bo := backoff{min: r.opts.RetryMin, max: r.opts.RetryMax}
	var missing quietLog // the upstream's stream does not exist
	for {
		progress, err := r.consume(ctx, l)
		l.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		if progress {
			bo.reset()
		}
		l.setErr(err)
		d := bo.next()
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			// The upstream DC has not created its stream yet, as at a
			// first start, or is not running at all: not a fault, and
			// said once, then at growing intervals, not every retry.
			if n, waited, ok := missing.due(r.now()); ok {
				r.log.Info("waiting for the upstream's stream; it appears once that DC's sidecar has started",
					"upstream", l.up, "stream", l.stream, "attempts", n, "waited", waited.Round(time.Second), "next_note_in", missing.every)
			}
		} else {
			missing = quietLog{}
			r.log.Warn("link failed; setting it up again", "upstream", l.up, "consumer", l.consumer, "err", err, "retry_in", d)
		}
		if !wait(ctx, d) {
			return
		}
	}
}

// quietLog spaces out the notes about a condition that lasts: the first
// time it is due at once, then after 1 minute, 2, 4, ... up to 1 hour.
type quietLog struct {
	first, next time.Time
	every       time.Duration
	attempts    int
}

// due counts one more occurrence at now and reports whether to log it,
// with the occurrences so far and how long the condition has lasted.
func (q *quietLog) due(now time.Time) (attempts int, lasted time.Duration, ok bool) {
	q.attempts++
	if q.first.IsZero() {
		q.first, q.next, q.every = now, now.Add(time.Minute), time.Minute
		return q.attempts, 0, true
	}
	if now.Before(q.next) {
		return q.attempts, now.Sub(q.first), false
	}
	q.every = min(2*q.every, time.Hour)
	q.next = now.Add(q.every)
	return q.attempts, now.Sub(q.first), true
}

// consume runs the link's consumer until ctx ends or the consumer fails.
// progress reports whether it handled any message.
func (r *Replicator) consume(ctx context.Context, l *link) (progress bool, err error) {
	actx, cancel := context.WithTimeout(ctx, r.opts.APITimeout)
	cons, err := r.js.CreateOrUpdateConsumer(actx, l.stream, r.consumerConfig(l))
	cancel()
	if err != nil {
		return false, fmt.Errorf("create consumer %s on stream %s: %w", l.consumer, l.stream, err)
	}
	l.setConsumer(cons)
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * r.opts.Batch))
	if err != nil {
		return false, fmt.Errorf("consume %s on stream %s: %w", l.consumer, l.stream, err)
	}
	defer func() {
		if ctx.Err() != nil {
			r.release(it)
			return
		}
		it.Stop()
	}()
	l.connected.Store(true)
	l.setErr(nil)
	for {
		batch, err := nextBatch(ctx, it, r.opts.Batch)
		if err != nil {
			return progress, fmt.Errorf("next message from %s: %w", l.stream, err)
		}
		progress = true
		r.handle(ctx, l, batch)
	}
}

// release stops the iterator on shutdown and hands back the messages it
// had prefetched, so that the next run gets them at once rather than after
// AckWait.
func (r *Replicator) release(it jetstream.MessagesContext) {
	it.Drain()
	for range 2 * r.opts.Batch {
		m, err := it.Next(jetstream.NextMaxWait(50 * time.Millisecond))
		if err != nil {
			break
		}
		r.nak(m, 0)
	}
	it.Stop()
}

// nextBatch waits for a message, then takes the messages that follow it
// within batchLinger, up to max.
func nextBatch(ctx context.Context, it jetstream.MessagesContext, max int) ([]jetstream.Msg, error) {
	m, err := it.Next(jetstream.NextContext(ctx))
	if err != nil {
		return nil, err
	}
	batch := []jetstream.Msg{m}
	deadline := time.Now().Add(batchLinger)
	for len(batch) < max {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		m, err := it.Next(jetstream.NextMaxWait(left))
		if err != nil {
			break // a timeout, or a failure the next call reports
		}
		batch = append(batch, m)
	}
	return batch, nil
}

// handle checks, filters and applies one batch of messages.
func (r *Replicator) handle(ctx context.Context, l *link, msgs []jetstream.Msg) {
	in := make([]inbound, 0, len(msgs))
	for _, m := range msgs {
		r.c.received.Add(1)
		l.received.Add(1)
		evs, err := r.check.check(l.up, m.Subject(), m.Headers(), m.Data())
		if err != nil {
			r.deadLetter(ctx, l, m, err)
			continue
		}
		ev := evs[0]
		if err := r.plan.Accept(ev.Origin, ev.Path); err != nil {
			r.c.loops.Add(1)
			l.loops.Add(1)
			r.log.Debug("dropped a looping event", "upstream", l.up, "dot", ev.Dot, "path", ev.Path, "err", err)
			r.ack(l, m)
			continue
		}
		in = append(in, inbound{msg: m, evs: evs})
	}
	if len(in) > 0 {
		r.apply(ctx, l, in)
	}
}

// apply applies in as one store batch and acks each message whose event
// (or transaction) the committed batch settled. Events held back by a gap
// are repaired from their origin and offered again; those still held are
// redelivered later. A transaction is held while any of its ops is.
func (r *Replicator) apply(ctx context.Context, l *link, in []inbound) {
	res, err := r.store.Apply(ctx, events(in), r.forwardEvent)
	if err != nil {
		r.applyFailed(ctx, l, in, err)
		return
	}
	var held []inbound
	need := map[gapKey]gapRange{}
	i := 0
	for _, x := range in {
		rs := res[i : i+len(x.evs)]
		i += len(x.evs)
		if !gapped(rs) {
			r.settle(l, x, rs)
			continue
		}
		held = append(held, x)
		for j, ev := range x.evs {
			if rs[j].Outcome != changelog.Gap || rs[j].Expected >= ev.Seq {
				continue
			}
			r.count(l, rs[j], ev.HLC)
			k := gapKey{ev.Origin, ev.Partition}
			if g, ok := need[k]; !ok || ev.Seq-1 < g.to {
				need[k] = gapRange{from: rs[j].Expected, to: ev.Seq - 1}
			}
		}
	}
	if len(held) == 0 {
		return
	}
	for k, g := range need {
		if err := r.repair(ctx, k.origin, k.p, g.from, g.to); err != nil {
			r.c.repairErrors.Add(1)
			r.log.Warn("gap repair failed; the events past the gap wait", "origin", k.origin, "partition", k.p,
				"from", g.from, "to", g.to, "upstream", l.up, "err", err)
		}
	}
	res, err = r.store.Apply(ctx, events(held), r.forwardEvent)
	if err != nil {
		r.applyFailed(ctx, l, held, err)
		return
	}
	i = 0
	for _, x := range held {
		rs := res[i : i+len(x.evs)]
		i += len(x.evs)
		if gapped(rs) {
			r.nak(x.msg, r.opts.GapDelay)
			continue
		}
		r.settle(l, x, rs)
	}
}

// gapped reports whether a message's results hold it back for a gap.
func gapped(rs []changelog.ApplyResult) bool {
	for _, x := range rs {
		if x.Outcome == changelog.Gap {
			return true
		}
	}
	return false
}

// settle counts what applying a message did and acks it.
func (r *Replicator) settle(l *link, x inbound, rs []changelog.ApplyResult) {
	for j, ev := range x.evs {
		r.count(l, rs[j], ev.HLC)
		r.observeHLC(rs[j], ev)
	}
	r.ack(l, x.msg)
}

// observeHLC counts and logs a remote HLC the store's clock refused. The
// store feeds every changing event's HLC to its clock inside the apply
// batch (changelog.ClockUpdater, the HLC receive rule); a reading beyond
// the drift bound is refused there, and the event is applied all the
// same, since causality never depends on the HLC.
func (r *Replicator) observeHLC(res changelog.ApplyResult, ev *event.Event) {
	if res.ClockErr != nil {
		r.c.clockDrift.Add(1)
		r.log.Warn("remote clock beyond the drift bound; its time was not taken", "origin", ev.Origin, "dot", ev.Dot.String(), "err", res.ClockErr)
	}
}

// applyFailed handles a batch the store did not apply. When the store
// rejected an event's content, the events are applied one by one so only
// the bad one is dead-lettered; otherwise every message is redelivered
// later, and one that failed MaxDeliver times is dead-lettered.
func (r *Replicator) applyFailed(ctx context.Context, l *link, in []inbound, err error) {
	r.c.applyErrors.Add(1)
	if ctx.Err() != nil || errors.Is(err, changelog.ErrClosed) {
		// Shutting down: the messages are not at fault, so they do not
		// count towards MaxDeliver, and the next run takes them at once.
		for _, x := range in {
			r.nak(x.msg, 0)
		}
		return
	}
	if errors.Is(err, changelog.ErrBadInput) {
		if len(in) == 1 {
			r.deadLetter(ctx, l, in[0].msg, fmt.Errorf("%w: the store refused it: %w", ErrRejected, err))
			return
		}
		for _, x := range in {
			r.apply(ctx, l, []inbound{x})
		}
		return
	}
	r.log.Warn("apply failed; the batch is redelivered later", "upstream", l.up, "events", len(in), "err", err)
	for _, x := range in {
		seq := streamSeq(x.msg)
		l.failures[seq]++
		if n := l.failures[seq]; n >= r.opts.MaxDeliver {
			r.deadLetter(ctx, l, x.msg, fmt.Errorf("%w: failed to apply %d times: %w", ErrRejected, n, err))
			continue
		}
		r.nak(x.msg, r.opts.RetryDelay)
	}
}

func (r *Replicator) forwardEvent(ev *event.Event) bool {
	if r.heal != nil {
		return r.heal.plan.Load().ShouldForward(ev.Path, ev.Origin)
	}
	return r.plan.ShouldForward(ev.Path, ev.Origin)
}

func events(in []inbound) []*event.Event {
	evs := make([]*event.Event, 0, len(in))
	for _, x := range in {
		evs = append(evs, x.evs...)
	}
	return evs
}

func (r *Replicator) ack(l *link, m jetstream.Msg) {
	if len(l.failures) > 0 {
		delete(l.failures, streamSeq(m))
	}
	if err := m.Ack(); err != nil {
		// The message is redelivered and then found to be a duplicate.
		r.log.Debug("ack failed", "upstream", l.up, "err", err)
	}
}

func (r *Replicator) nak(m jetstream.Msg, delay time.Duration) {
	var err error
	if delay > 0 {
		err = m.NakWithDelay(delay)
	} else {
		err = m.Nak()
	}
	if err != nil {
		r.log.Debug("nak failed; the message is redelivered after AckWait", "err", err)
	}
}

// streamSeq returns the message's sequence in its stream, or 0.
func streamSeq(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}

// deadLetter copies m, with the reason and its origin in headers, to this
// DC's dead-letter stream and then terminates it, so it is never
// redelivered and never blocks the messages behind it. If the copy cannot
// be stored, m is redelivered later instead: nothing is dropped silently.
func (r *Replicator) deadLetter(ctx context.Context, l *link, m jetstream.Msg, reason error) {
	seq := streamSeq(m)
	h := nats.Header{}
	for k, v := range m.Headers() {
		if k == jetstream.MsgIDHeader {
			h[HeaderDLQMsgID] = v
			continue
		}
		h[k] = v
	}
	text := headerText(reason.Error())
	h.Set(HeaderDLQReason, text)
	h.Set(HeaderDLQUpstream, l.up)
	h.Set(HeaderDLQSubject, m.Subject())
	h.Set(HeaderDLQStreamSeq, strconv.FormatUint(seq, 10))
	h.Set(jetstream.MsgIDHeader, "dlq:"+l.stream+":"+strconv.FormatUint(seq, 10))
	dm := &nats.Msg{Subject: names.DLQSubject(r.self), Header: h, Data: m.Data()}
	pctx, cancel := context.WithTimeout(ctx, r.opts.PublishAckTimeout)
	defer cancel()
	if _, err := r.js.PublishMsg(pctx, dm, jetstream.WithExpectStream(names.DLQStream(r.self))); err != nil {
		r.log.Error("dead-lettering failed; the message is redelivered later", "upstream", l.up, "stream_seq", seq, "reason", text, "err", err)
		r.nak(m, r.opts.RetryDelay)
		return
	}
	r.c.dead.Add(1)
	l.dead.Add(1)
	delete(l.failures, seq)
	r.log.Warn("dead-lettered a message", "upstream", l.up, "stream_seq", seq, "subject", m.Subject(), "reason", text)
	if err := m.TermWithReason(truncate(text, 256)); err != nil {
		r.log.Debug("term failed; the message comes back and is dead-lettered again (deduplicated)", "err", err)
	}
}

// headerText makes s safe as a header value: one line, bounded.
func headerText(s string) string { return rpc.HeaderText(s) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
