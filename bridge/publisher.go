package bridge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// publisher publishes the store's outbox to this DC's stream, in order,
// on its own goroutine (run), which owns out and cursor; resume sets
// out's high-water marks at Start, before run begins. drain is closed by Close once intake
// has stopped.
type publisher struct {
	*env
	pub    jetstream.JetStream // publishing, with a bounded async window
	stream string
	// out builds the messages and keeps the highest own sequence per
	// partition known to be in the stream or sent to it.
	out *core.Publisher
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
	return &publisher{env: e, pub: pub, stream: names.Stream(e.self), out: core.NewPublisher(e.self, e.opts.Partitions), drain: make(chan struct{})}, nil
}

// resume reads the last message of each of this DC's partition
// subjects and raises the store's sequence above the highest own sequence it
// names, so that a DC whose data dir was restored from an old backup never
// reissues a sequence number (docs/DESIGN.md, invariant 4): a reissued number
// would carry an old Nats-Msg-Id and be dropped as a duplicate, and its dot
// would be taken for an event other DCs already applied.
func (pb *publisher) resume(ctx context.Context) error {
	s, err := pb.js.Stream(ctx, pb.stream)
	if err != nil {
		return fmt.Errorf("bridge: open stream %s: %w", pb.stream, err)
	}
	his := make([]uint64, pb.opts.Partitions)
	var behind []uint32
	own := pb.store.Applied()[pb.self]
	for p := range pb.opts.Partitions {
		subj := names.Subject(pb.self, uint32(p))
		m, err := s.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bridge: read the last message on %s: %w", subj, err)
		}
		hi, err := core.LastOwnSeq(pb.self, uint32(p), m.Header)
		if err != nil {
			return fmt.Errorf("bridge: last message on %s (stream seq %d): %w", subj, m.Sequence, err)
		}
		his[p] = hi
		if p < len(own) && own[p] < hi {
			behind = append(behind, uint32(p))
		}
	}
	switch m, err := s.GetLastMsgForSubject(ctx, names.TxnSubject(pb.self)); {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return fmt.Errorf("bridge: read the last message on %s: %w", names.TxnSubject(pb.self), err)
	case m.Header.Get(HeaderSeqHis) != "":
		if err := core.ParseSeqHis(m.Header.Get(HeaderSeqHis), his); err != nil {
			return fmt.Errorf("bridge: last message on %s (stream seq %d): %w", names.TxnSubject(pb.self), m.Sequence, err)
		}
		behind = behind[:0]
		for p, hi := range his {
			if p < len(own) && own[p] < hi {
				behind = append(behind, uint32(p))
			}
		}
	}
	if len(behind) > 0 {
		pb.log.Warn("the stream holds own events the store lacks; taking them back from the stream (was the data dir restored from a backup?)",
			"partitions", behind)
		if err := pb.recoverOwn(ctx, s, behind); err != nil {
			return err
		}
	}
	for p, hi := range his {
		if hi == 0 {
			continue
		}
		lost, err := pb.store.ResumeAbove(ctx, uint32(p), hi)
		if err != nil {
			return fmt.Errorf("bridge: raise partition %d's sequence to %d: %w", p, hi, err)
		}
		if lost.To > 0 {
			pb.log.Warn("own events neither the store nor the stream holds; marked lost, anti-entropy takes them back from the peers",
				"partition", p, "from", lost.From, "to", lost.To)
		}
		pb.out.Resume(uint32(p), hi)
	}
	return nil
}

// recoverOwn reads this DC's own stream for the given partitions and hands
// the DC's own events its store lacks back to the store (changelog
// Store.Recover), so a DC restored from an old copy of its data dir gets
// back the writes it made after that copy. An event the stream no longer
// holds cannot come back this way; the DC then continues above the
// stream's sequence, and the loss is logged.
func (pb *publisher) recoverOwn(ctx context.Context, s jetstream.Stream, parts []uint32) error {
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("bridge: stream info %s: %w", pb.stream, err)
	}
	last := info.State.LastSeq
	subjects := make([]string, len(parts), len(parts)+1)
	for i, p := range parts {
		subjects[i] = names.Subject(pb.self, p)
	}
	subjects = append(subjects, names.TxnSubject(pb.self))
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return fmt.Errorf("bridge: read own stream %s: %w", pb.stream, err)
	}
	recovered, gaps := 0, 0
	var seen uint64
	for seen < last {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("bridge: read own stream %s: %w", pb.stream, err)
		}
		var evs []*event.Event
		n := 0
		for m := range batch.Messages() {
			n++
			if md, err := m.Metadata(); err == nil {
				seen = md.Sequence.Stream
			}
			got, err := event.DecodeMessage(m.Data(), pb.opts.Limits)
			if err != nil || got[0].Origin != pb.self || len(got[0].Path) != 1 {
				continue
			}
			evs = append(evs, got...)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("bridge: read own stream %s: %w", pb.stream, err)
		}
		if len(evs) > 0 {
			res, err := pb.store.Recover(ctx, evs)
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
		pb.log.Error("some own events are gone from the stream as well; they cannot be taken back here", "missing_after_gap", gaps)
	}
	pb.log.Info("took back own events from the stream", "events", recovered)
	return nil
}

// run publishes the outbox in order until ctx ends, or until
// Close has stopped intake and the outbox is empty. It wakes on the store's
// notifications, with a fallback poll.
func (pb *publisher) run(ctx context.Context) {
	poll := time.NewTicker(pb.opts.PublishPoll)
	defer poll.Stop()
	defer pb.flushCheckpoint()
	bo := backoff{min: pb.opts.RetryMin, max: pb.opts.RetryMax}
	for {
		more, err := pb.publishWindow(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			pb.c.publishErrors.Add(1)
			d := bo.next()
			pb.log.Warn("publish failed; retrying from the first unacknowledged event", "err", err, "retry_in", d)
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
		case <-pb.drain:
			// A notification may be ready too, and select picks either:
			// leave only once nothing durable is left to publish (Close
			// bounds the flush with FlushTimeout).
			if pb.unpublished() {
				continue
			}
			return
		case <-pb.store.Notify():
		case <-poll.C:
		}
	}
}

// unpublished reports whether the outbox holds a durable entry past the
// publisher's cursor.
func (pb *publisher) unpublished() bool {
	e, err := pb.store.ReadOutbox(max(pb.cursor, pb.store.Checkpoint()), 1)
	return err == nil && len(e) > 0
}

// publishWindow publishes up to PublishWindow outbox entries after the
// checkpoint and moves the checkpoint over the longest prefix JetStream
// acknowledged without error. more reports a full window, after which more
// entries may wait.
func (pb *publisher) publishWindow(ctx context.Context) (more bool, err error) {
	ckpt := max(pb.cursor, pb.store.Checkpoint())
	entries, err := pb.store.ReadOutbox(ckpt, pb.opts.PublishWindow)
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
		m := pb.message(e)
		sent = append(sent, time.Now())
		// No WithExpectStream: the subject belongs to this stream alone, and
		// the header would be stored and delivered with every event.
		f, err := pb.pub.PublishMsgAsync(m, jetstream.WithStallWait(pb.opts.PublishAckTimeout))
		if err != nil {
			sendErr = fmt.Errorf("publish %s: %w", m.Header.Get(jetstream.MsgIDHeader), err)
			break
		}
		futs = append(futs, f)
	}
	acked, ackErr := pb.awaitAcks(ctx, ckpt, entries, futs, sent)
	if acked > ckpt {
		// The cursor moves at once; the stored checkpoint follows without
		// the publisher waiting for its fsync (see flushCheckpoint).
		pb.cursor = acked
		pb.store.AdvanceCheckpoint(acked)
	}
	if err := errors.Join(ackErr, sendErr); err != nil {
		return false, err
	}
	return len(entries) == pb.opts.PublishWindow, nil
}

// awaitAcks waits for the acknowledgements of futs, which were published
// for entries in order, and returns the index of the last entry of the
// acknowledged prefix (ckpt if none) and the first error.
func (pb *publisher) awaitAcks(ctx context.Context, ckpt uint64, entries []changelog.OutboxEntry, futs []jetstream.PubAckFuture, sent []time.Time) (uint64, error) {
	timeout := time.NewTimer(pb.opts.PublishAckTimeout)
	defer timeout.Stop()
	last, prefix := ckpt, true
	var firstErr error
	for i, f := range futs {
		select {
		case ack := <-f.Ok():
			if pb.opts.ObservePublish != nil {
				pb.opts.ObservePublish(time.Since(sent[i]))
			}
			if ack.Duplicate {
				pb.c.publishDuplicates.Add(1)
			} else {
				pb.c.published.Add(1)
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
				f.Msg().Header.Get(jetstream.MsgIDHeader), pb.opts.PublishAckTimeout))
		case <-ctx.Done():
			return last, ctx.Err()
		}
	}
	return last, firstErr
}

// message builds the JetStream message of an outbox entry (see
// core.Publisher.Message).
func (pb *publisher) message(e changelog.OutboxEntry) *nats.Msg {
	m := pb.out.Message(e)
	return &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}
}

// flushCheckpoint makes the publisher's cursor the durable checkpoint, once
// it stops, so a clean restart sends nothing again.
func (pb *publisher) flushCheckpoint() {
	if pb.cursor <= pb.store.Checkpoint() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := pb.store.SetCheckpoint(ctx, pb.cursor); err != nil {
		pb.log.Warn("save the publish checkpoint; events after it will be sent again", "checkpoint", pb.cursor, "err", err)
	}
}
