package bridge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
)

// publisher publishes the store's outbox to this DC's stream, in order,
// on its own goroutine (run), which owns seqHi and cursor; resume sets
// seqHi at Start, before run begins. drain is closed by Close once intake
// has stopped.
type publisher struct {
	*env
	pub    jetstream.JetStream // publishing, with a bounded async window
	stream string
	// seqHi is the highest own sequence per partition known to be in the
	// stream or sent to it.
	seqHi []uint64
	// cursor is the last acknowledged outbox index.
	cursor uint64
	// drain tells the publisher that intake has stopped: it publishes what
	// the outbox holds and exits.
	drain chan struct{}
}

func newPublisher(e *env) (*publisher, error) {
	pub, err := newJetStream(e.opts.NC, e.opts.Domain,
		jetstream.WithPublishAsyncMaxPending(e.opts.PublishWindow),
		jetstream.WithPublishAsyncTimeout(e.opts.PublishAckTimeout))
	if err != nil {
		return nil, fmt.Errorf("bridge: jetstream publisher: %w", err)
	}
	return &publisher{env: e, pub: pub, stream: StreamName(e.self), seqHi: make([]uint64, e.opts.Partitions), drain: make(chan struct{})}, nil
}

// resume reads the last message of each of this DC's partition
// subjects and raises the store's sequence above the highest own sequence it
// names, so that a DC whose data dir was restored from an old backup never
// reissues a sequence number (docs/DESIGN.md, invariant 4): a reissued number
// would carry an old Nats-Msg-Id and be dropped as a duplicate, and its dot
// would be taken for an event other DCs already applied.
func (r *publisher) resume(ctx context.Context) error {
	s, err := r.js.Stream(ctx, r.stream)
	if err != nil {
		return fmt.Errorf("bridge: open stream %s: %w", r.stream, err)
	}
	his := make([]uint64, r.opts.Partitions)
	var behind []uint32
	own := r.store.Applied()[r.self]
	for p := range r.opts.Partitions {
		subj := Subject(r.self, uint32(p))
		m, err := s.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bridge: read the last message on %s: %w", subj, err)
		}
		hi, err := lastOwnSeq(r.self, uint32(p), m.Header)
		if err != nil {
			return fmt.Errorf("bridge: last message on %s (stream seq %d): %w", subj, m.Sequence, err)
		}
		his[p] = hi
		if p < len(own) && own[p] < hi {
			behind = append(behind, uint32(p))
		}
	}
	switch m, err := s.GetLastMsgForSubject(ctx, TxnSubject(r.self)); {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return fmt.Errorf("bridge: read the last message on %s: %w", TxnSubject(r.self), err)
	case m.Header.Get(HeaderSeqHis) != "":
		if err := parseSeqHis(m.Header.Get(HeaderSeqHis), his); err != nil {
			return fmt.Errorf("bridge: last message on %s (stream seq %d): %w", TxnSubject(r.self), m.Sequence, err)
		}
		behind = behind[:0]
		for p, hi := range his {
			if p < len(own) && own[p] < hi {
				behind = append(behind, uint32(p))
			}
		}
	}
	if len(behind) > 0 {
		r.log.Warn("the stream holds own events the store lacks; taking them back from the stream (was the data dir restored from a backup?)",
			"partitions", behind)
		if err := r.recoverOwn(ctx, s, behind); err != nil {
			return err
		}
	}
	for p, hi := range his {
		if hi == 0 {
			continue
		}
		lost, err := r.store.ResumeAbove(ctx, uint32(p), hi)
		if err != nil {
			return fmt.Errorf("bridge: raise partition %d's sequence to %d: %w", p, hi, err)
		}
		if lost.To > 0 {
			r.log.Warn("own events neither the store nor the stream holds; marked lost, anti-entropy takes them back from the peers",
				"partition", p, "from", lost.From, "to", lost.To)
		}
		r.seqHi[p] = hi
	}
	return nil
}

// recoverOwn reads this DC's own stream for the given partitions and hands
// the DC's own events its store lacks back to the store (changelog
// Store.Recover), so a DC restored from an old copy of its data dir gets
// back the writes it made after that copy. An event the stream no longer
// holds cannot come back this way; the DC then continues above the
// stream's sequence, and the loss is logged.
func (r *publisher) recoverOwn(ctx context.Context, s jetstream.Stream, parts []uint32) error {
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("bridge: stream info %s: %w", r.stream, err)
	}
	last := info.State.LastSeq
	subjects := make([]string, len(parts), len(parts)+1)
	for i, p := range parts {
		subjects[i] = Subject(r.self, p)
	}
	subjects = append(subjects, TxnSubject(r.self))
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return fmt.Errorf("bridge: read own stream %s: %w", r.stream, err)
	}
	recovered, gaps := 0, 0
	var seen uint64
	for seen < last {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("bridge: read own stream %s: %w", r.stream, err)
		}
		var evs []*event.Event
		n := 0
		for m := range batch.Messages() {
			n++
			if md, err := m.Metadata(); err == nil {
				seen = md.Sequence.Stream
			}
			got, err := event.DecodeMessage(m.Data(), r.opts.Limits)
			if err != nil || got[0].Origin != r.self || len(got[0].Path) != 1 {
				continue
			}
			evs = append(evs, got...)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("bridge: read own stream %s: %w", r.stream, err)
		}
		if len(evs) > 0 {
			res, err := r.store.Recover(ctx, evs)
			if err != nil {
				return fmt.Errorf("bridge: recover own events: %w", err)
			}
			for _, x := range res {
				switch x.Outcome {
				case changelog.Changed, changelog.Obsolete:
					recovered++
				case changelog.Gap:
					gaps++
				}
			}
		}
		if n == 0 {
			break // nothing more within the wait
		}
	}
	if gaps > 0 {
		r.log.Error("some own events are gone from the stream as well; they cannot be taken back here", "missing_after_gap", gaps)
	}
	r.log.Info("took back own events from the stream", "events", recovered)
	return nil
}

// lastOwnSeq returns the highest own sequence number the headers of a
// message on self's partition p subject name: its Repl-Seq-Hi, and its own
// sequence when self is the origin.
func lastOwnSeq(self string, p uint32, h nats.Header) (uint64, error) {
	var hi uint64
	if v := h.Get(HeaderSeqHi); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n >= event.MaxCounter {
			return 0, fmt.Errorf("%s %q is not a sequence number", HeaderSeqHi, v)
		}
		hi = n
	}
	if id := h.Get(jetstream.MsgIDHeader); id != "" {
		origin, mp, seq, err := event.ParseMsgID(id)
		if err != nil {
			return 0, err
		}
		if origin == self && mp == p {
			hi = max(hi, seq)
		}
	}
	return hi, nil
}

// run publishes the outbox in order until ctx ends, or until
// Close has stopped intake and the outbox is empty. It wakes on the store's
// notifications, with a fallback poll.
func (r *publisher) run(ctx context.Context) {
	poll := time.NewTicker(r.opts.PublishPoll)
	defer poll.Stop()
	defer r.flushCheckpoint()
	bo := backoff{min: r.opts.RetryMin, max: r.opts.RetryMax}
	for {
		more, err := r.publishWindow(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.c.publishErrors.Add(1)
			d := bo.next()
			r.log.Warn("publish failed; retrying from the first unacknowledged event", "err", err, "retry_in", d)
			if !wait(ctx, d) {
				return
			}
			continue
		}
		bo.reset()
		if more {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-r.drain:
			// A notification may be ready too, and select picks either:
			// leave only once nothing durable is left to publish (Close
			// bounds the flush with FlushTimeout).
			if r.unpublished() {
				continue
			}
			return
		case <-r.store.Notify():
		case <-poll.C:
		}
	}
}

// unpublished reports whether the outbox holds a durable entry past the
// publisher's cursor.
func (r *publisher) unpublished() bool {
	e, err := r.store.ReadOutbox(max(r.cursor, r.store.Checkpoint()), 1)
	return err == nil && len(e) > 0
}

// publishWindow publishes up to PublishWindow outbox entries after the
// checkpoint and moves the checkpoint over the longest prefix JetStream
// acknowledged without error. more reports a full window, after which more
// entries may wait.
func (r *publisher) publishWindow(ctx context.Context) (more bool, err error) {
	ckpt := max(r.cursor, r.store.Checkpoint())
	entries, err := r.store.ReadOutbox(ckpt, r.opts.PublishWindow)
	if err != nil {
		return false, fmt.Errorf("read outbox after %d: %w", ckpt, err)
	}
	if len(entries) == 0 {
		return false, nil
	}
	futs := make([]jetstream.PubAckFuture, 0, len(entries))
	sent := make([]time.Time, 0, len(entries))
	var sendErr error
	for _, e := range entries {
		m := r.message(e)
		sent = append(sent, time.Now())
		// No WithExpectStream: the subject belongs to this stream alone, and
		// the header would be stored and delivered with every event.
		f, err := r.pub.PublishMsgAsync(m, jetstream.WithStallWait(r.opts.PublishAckTimeout))
		if err != nil {
			sendErr = fmt.Errorf("publish %s: %w", m.Header.Get(jetstream.MsgIDHeader), err)
			break
		}
		futs = append(futs, f)
	}
	acked, ackErr := r.awaitAcks(ctx, ckpt, entries, futs, sent)
	if acked > ckpt {
		// The cursor moves at once; the stored checkpoint follows without
		// the publisher waiting for its fsync (see flushCheckpoint).
		r.cursor = acked
		r.store.AdvanceCheckpoint(acked)
	}
	if err := errors.Join(ackErr, sendErr); err != nil {
		return false, err
	}
	return len(entries) == r.opts.PublishWindow, nil
}

// awaitAcks waits for the acknowledgements of futs, which were published
// for entries in order, and returns the index of the last entry of the
// acknowledged prefix (ckpt if none) and the first error.
func (r *publisher) awaitAcks(ctx context.Context, ckpt uint64, entries []changelog.OutboxEntry, futs []jetstream.PubAckFuture, sent []time.Time) (uint64, error) {
	timeout := time.NewTimer(r.opts.PublishAckTimeout)
	defer timeout.Stop()
	last, prefix := ckpt, true
	var firstErr error
	for i, f := range futs {
		select {
		case ack := <-f.Ok():
			if r.opts.ObservePublish != nil {
				r.opts.ObservePublish(time.Since(sent[i]))
			}
			if ack.Duplicate {
				r.c.publishDuplicates.Add(1)
			} else {
				r.c.published.Add(1)
			}
			if prefix {
				last = entries[i].Index
			}
		case err := <-f.Err():
			prefix = false
			if firstErr == nil {
				firstErr = fmt.Errorf("publish %s: %w", f.Msg().Header.Get(jetstream.MsgIDHeader), err)
			}
		case <-timeout.C:
			// The JetStream context times each future out on its own as
			// well, so none is left waiting for ever.
			return last, errors.Join(firstErr, fmt.Errorf("publish %s: no acknowledgement within %s",
				f.Msg().Header.Get(jetstream.MsgIDHeader), r.opts.PublishAckTimeout))
		case <-ctx.Done():
			return last, ctx.Err()
		}
	}
	return last, firstErr
}

// message builds the JetStream message of an outbox entry: the event's
// headers, Repl-Seq-Hi when needed, and the encoded event. Repl-Seq-Hi is
// the highest own sequence of the partition sent to the stream so far,
// this message included, rather than the store's last issued sequence:
// after a restore the DC continues right above what the stream holds, so a
// sequence issued but never published leaves no gap that no DC could ever
// repair. An own event that is that highest sequence leaves the header
// out, since its Nats-Msg-Id says the same (see lastOwnSeq): it is 20-odd
// bytes of every own event, stored and delivered to every consumer. A
// forwarded event, or an own one below the high-water mark, carries it.
func (r *publisher) message(e changelog.OutboxEntry) *nats.Msg {
	if e.Txn != nil {
		return r.txnMessage(e)
	}
	ev := e.Event
	p := ev.Partition
	h := nats.Header(event.ToHeaders(ev))
	if int(p) < len(r.seqHi) {
		own := ev.Origin == r.self
		if own && ev.Seq > r.seqHi[p] {
			r.seqHi[p] = ev.Seq
		}
		if r.seqHi[p] > 0 && !(own && ev.Seq == r.seqHi[p]) {
			h.Set(HeaderSeqHi, strconv.FormatUint(r.seqHi[p], 10))
		}
	}
	return &nats.Msg{Subject: Subject(r.self, p), Header: h, Data: e.Data}
}

// txnMessage builds the JetStream message of a transaction's outbox entry,
// on this DC's transaction subject. Its Repl-Seq-His header lists the
// highest own sequence sent so far of every partition, this transaction's
// ops included: the last message on the transaction subject then tells a
// DC restored from an old copy how far each partition's sequence went in
// transactions, however many single events followed on other subjects.
func (r *publisher) txnMessage(e changelog.OutboxEntry) *nats.Msg {
	h := nats.Header(event.TxnHeaders(e.Txn))
	for _, ev := range e.Txn {
		if p := ev.Partition; ev.Origin == r.self && int(p) < len(r.seqHi) && ev.Seq > r.seqHi[p] {
			r.seqHi[p] = ev.Seq
		}
	}
	var b strings.Builder
	for p, hi := range r.seqHi {
		if hi == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(p))
		b.WriteByte(':')
		b.WriteString(strconv.FormatUint(hi, 10))
	}
	if b.Len() > 0 {
		h.Set(HeaderSeqHis, b.String())
	}
	return &nats.Msg{Subject: TxnSubject(r.self), Header: h, Data: e.Data}
}

// parseSeqHis parses Repl-Seq-His into his, keeping the higher of each.
func parseSeqHis(v string, his []uint64) error {
	for part := range strings.SplitSeq(v, ",") {
		ps, ns, ok := strings.Cut(part, ":")
		p, err1 := strconv.ParseUint(ps, 10, 32)
		n, err2 := strconv.ParseUint(ns, 10, 64)
		if !ok || err1 != nil || err2 != nil || int(p) >= len(his) || n >= event.MaxCounter {
			return fmt.Errorf("%s entry %q: want <partition below %d>:<sequence>", HeaderSeqHis, part, len(his))
		}
		his[p] = max(his[p], n)
	}
	return nil
}

// flushCheckpoint makes the publisher's cursor the durable checkpoint, once
// it stops, so a clean restart sends nothing again.
func (r *publisher) flushCheckpoint() {
	if r.cursor <= r.store.Checkpoint() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.store.SetCheckpoint(ctx, r.cursor); err != nil {
		r.log.Warn("save the publish checkpoint; events after it will be sent again", "checkpoint", r.cursor, "err", err)
	}
}
