package bridge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/rpc"
)

// batchLinger bounds how long a batch waits for more messages once its
// first has arrived.
const batchLinger = 5 * time.Millisecond

// link consumes one upstream's stream through a durable pull consumer and
// hands each batch to the core (core.Link), carrying out its verdicts. Its
// goroutine (run) owns rx and startSeq; the counters are atomic, and mu
// (in linkCounters) hands the consumer to the reporter for lag figures.
type link struct {
	*env
	up       string
	stream   string
	consumer string
	// heal marks a heal link (see Plan.Heal); startSeq, if not 0, is the
	// stream sequence its consumer starts at instead of the first message.
	heal     bool
	startSeq uint64
	// rx judges and applies what the link receives.
	rx *core.Link
	linkCounters
}

func newLink(e *env, up, consumer string, heal bool) *link {
	return &link{env: e, up: up, stream: names.Stream(up), consumer: consumer, heal: heal,
		rx: core.NewLink(core.LinkConfig{
			Up: up, Plan: e.plan, Check: e.check, Repair: e.repairer(),
			MaxDeliver: e.opts.MaxDeliver, GapDelay: e.opts.GapDelay, RetryDelay: e.opts.RetryDelay, Log: e.log,
			Shard: e.shard,
		})}
}

// consumerConfig returns the durable pull consumer of a link: explicit
// acks, bounded MaxAckPending, a backoff schedule, and no server-side
// MaxDeliver, because a message that waits for a gap to be filled must be
// redelivered as often as it takes; the core counts other failures
// itself and dead-letters past Options.MaxDeliver.
func (l *link) consumerConfig() jetstream.ConsumerConfig {
	desc := "replicator: DC " + l.self + " applies events from DC " + l.up
	if l.heal {
		desc += " while healing around an unreachable DC"
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       l.consumer,
		Description:   desc,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       l.opts.BackOff[0],
		BackOff:       l.opts.BackOff,
		MaxDeliver:    -1,
		MaxAckPending: l.opts.MaxAckPending,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
		// A shard reads its own partitions and every transaction.
		FilterSubjects: l.filterSubjects(l.up),
	}
	if l.startSeq > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = l.startSeq
	}
	return cfg
}

// run consumes the upstream until ctx ends, setting the consumer up
// again, with backoff, whenever it fails (the upstream's stream may not
// exist yet, or NATS may be down).
func (l *link) run(ctx context.Context) {
	bo := backoff{min: l.opts.RetryMin, max: l.opts.RetryMax}
	var missing quietLog // the upstream's stream does not exist
	for {
		progress, err := l.consume(ctx)
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
			if n, waited, ok := missing.due(l.now()); ok {
				l.log.Info("waiting for the upstream's stream; it appears once that DC's sidecar has started",
					"upstream", l.up, "stream", l.stream, "attempts", n, "waited", waited.Round(time.Second), "next_note_in", missing.every)
			}
		} else {
			missing = quietLog{}
			l.log.Warn("link failed; setting it up again", "upstream", l.up, "consumer", l.consumer, "err", err, "retry_in", d)
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
func (l *link) consume(ctx context.Context) (progress bool, err error) {
	actx, cancel := context.WithTimeout(ctx, l.opts.APITimeout)
	cons, err := l.js.CreateOrUpdateConsumer(actx, l.stream, l.consumerConfig())
	cancel()
	if err != nil {
		return false, fmt.Errorf("create consumer %s on stream %s: %w", l.consumer, l.stream, err)
	}
	l.setConsumer(cons)
	it, err := cons.Messages(jetstream.PullMaxMessages(2*l.opts.Batch), jetstream.PullExpiry(l.opts.PullExpiry))
	if err != nil {
		return false, fmt.Errorf("consume %s on stream %s: %w", l.consumer, l.stream, err)
	}
	defer func() {
		if ctx.Err() != nil {
			l.release(it)
			return
		}
		it.Stop()
	}()
	l.connected.Store(true)
	l.setErr(nil)
	for {
		batch, err := nextBatch(ctx, it, l.opts.Batch)
		if errors.Is(err, jetstream.ErrNoHeartbeat) && l.consumerThere(ctx, cons) {
			// The server was silent for a whole pull (PullExpiry), as an
			// overloaded one is, but the consumer is there: the iterator
			// pulls again on the same inbox, so messages already on
			// their way are not lost for AckWait, and JetStream is not
			// asked to create the consumer again.
			err = fmt.Errorf("no heartbeat from %s for %s; its consumer %s is still there: pulling again", l.stream, l.opts.PullExpiry, l.consumer)
			l.setErr(err)
			l.log.Warn("link missed its heartbeats; keeping its consumer", "upstream", l.up, "err", err)
			continue
		}
		if err != nil {
			return progress, fmt.Errorf("next message from %s: %w", l.stream, err)
		}
		progress = true
		l.handle(ctx, batch)
	}
}

// consumerThere reports whether cons may still exist, so that the link
// keeps pulling from it: JetStream says it does (a consumer info, which
// the server answers from memory), or the server is too slow to answer
// within APITimeout (the next missed heartbeat asks again). A consumer
// that is gone, or a JetStream that cannot be reached at all (no
// responders: the link then sets itself up again, with backoff, and pulls
// as soon as JetStream is back), is not.
func (l *link) consumerThere(ctx context.Context, cons jetstream.Consumer) bool {
	actx, cancel := context.WithTimeout(ctx, l.opts.APITimeout)
	defer cancel()
	_, err := cons.Info(actx)
	return err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
}

// release stops the iterator on shutdown and hands back the messages it
// had prefetched, so that the next run gets them at once rather than after
// AckWait.
func (l *link) release(it jetstream.MessagesContext) {
	it.Drain()
	for range 2 * l.opts.Batch {
		m, err := it.Next(jetstream.NextMaxWait(50 * time.Millisecond))
		if err != nil {
			break
		}
		l.nak(m, 0)
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

// handle has the core judge and apply one batch, counts what it did, and
// carries out its verdict on each message, in order.
func (l *link) handle(ctx context.Context, msgs []jetstream.Msg) {
	in := make([]core.Msg, len(msgs))
	for i, m := range msgs {
		in[i] = core.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data(), Seq: streamSeq(m)}
	}
	verdicts, t := l.rx.Receive(ctx, in)
	l.count(t)
	for i, v := range verdicts {
		switch v.Action {
		case core.Ack:
			if err := msgs[i].Ack(); err != nil {
				// The message is redelivered and then found to be a duplicate.
				l.log.Debug("ack failed", "upstream", l.up, "err", err)
			}
		case core.Nak:
			l.nak(msgs[i], v.Delay)
		case core.DeadLetter:
			l.deadLetter(ctx, msgs[i], in[i].Seq, v.Reason)
		}
	}
}

// count adds what one batch did to the link's and the Replicator's
// figures.
func (l *link) count(t core.Tally) {
	l.received.Add(t.Received)
	l.loops.Add(t.Loops)
	l.applied.Add(t.Outcomes.Changed)
	l.obsolete.Add(t.Outcomes.Obsolete)
	l.duplicates.Add(t.Outcomes.Duplicate)
	l.gaps.Add(t.Outcomes.Gap)
	l.noteHLC(t.LastHLC)
	l.c.add(t)
}

func (l *link) nak(m jetstream.Msg, delay time.Duration) {
	var err error
	if delay > 0 {
		err = m.NakWithDelay(delay)
	} else {
		err = m.Nak()
	}
	if err != nil {
		l.log.Debug("nak failed; the message is redelivered after AckWait", "err", err)
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
func (l *link) deadLetter(ctx context.Context, m jetstream.Msg, seq uint64, reason error) {
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
	dm := &nats.Msg{Subject: names.DLQSubject(l.self), Header: h, Data: m.Data()}
	pctx, cancel := context.WithTimeout(ctx, l.opts.PublishAckTimeout)
	defer cancel()
	if _, err := l.js.PublishMsg(pctx, dm, jetstream.WithExpectStream(names.DLQStream(l.self))); err != nil {
		l.log.Error("dead-lettering failed; the message is redelivered later", "upstream", l.up, "stream_seq", seq, "reason", text, "err", err)
		l.nak(m, l.opts.RetryDelay)
		return
	}
	l.c.dead.Add(1)
	l.dead.Add(1)
	l.rx.Forget(seq)
	l.log.Warn("dead-lettered a message", "upstream", l.up, "stream_seq", seq, "subject", m.Subject(), "reason", text)
	if err := m.TermWithReason(truncate(text, 256)); err != nil {
		l.log.Debug("term failed; the message comes back and is dead-lettered again (deduplicated)", "err", err)
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
