package bridge

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/pkg/names"
)

// retention trims this DC's stream for the reporter, whose goroutine
// owns it (core.Retention keeps the samples and how far it trimmed).
type retention struct {
	*env
	stream string
	core   core.Retention
}

func newRetention(e *env) *retention {
	return &retention{env: e, stream: names.Stream(e.self), core: core.Retention{Keep: e.opts.StreamRetention}}
}

// trim deletes messages of this DC's stream that every downstream
// consumer has acknowledged and that are older than StreamRetention, so the
// stream never fills up and stalls publishing. It keeps the last message
// of every partition subject and of the transaction subject: their
// Repl-Seq-Hi and Repl-Seq-His are how a DC restored from an
// old data dir learns which sequences it already issued. The history kept
// for StreamRetention is what lets such a DC take back its own later
// writes from the stream; a DC restored from a copy older than that loses
// them, and they must come back from the other DCs by anti-entropy. When the
// stream is over 80% of its MaxBytes, acknowledged messages go regardless of
// their age, so a full stream never stalls publishing (core.Retention).
func (t *retention) trim(ctx context.Context) {
	s, err := t.js.Stream(ctx, t.stream)
	if err != nil {
		t.log.Debug("trim stream: look up", "err", err)
		return
	}
	info := s.CachedInfo()
	cutoff := t.core.Cutoff(t.now(), info.State.LastSeq, info.State.Bytes, info.Config.MaxBytes)
	if cutoff == 0 {
		return
	}
	var acked []uint64
	for _, dc := range t.plan.Downstreams() {
		c, err := s.Consumer(ctx, names.Consumer(dc, t.self))
		if err != nil {
			if !errors.Is(err, jetstream.ErrConsumerNotFound) {
				t.log.Debug("trim stream: consumer info", "downstream", dc, "err", err)
			}
			return // a downstream that never consumed needs everything
		}
		acked = append(acked, c.CachedInfo().AckFloor.Stream)
	}
	floor, ok := t.core.Floor(cutoff, acked)
	if !ok {
		return
	}
	for p := range t.opts.Partitions + 1 {
		subj := names.TxnSubject(t.self)
		if p < t.opts.Partitions {
			subj = names.Subject(t.self, uint32(p))
		}
		last, err := s.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.log.Debug("trim stream: last message", "subject", subj, "err", err)
			return
		}
		upTo := core.PurgeBelow(floor, last.Sequence) // purge below upTo: the last message stays
		if upTo == 0 {
			continue
		}
		if err := s.Purge(ctx, jetstream.WithPurgeSubject(subj), jetstream.WithPurgeSequence(upTo)); err != nil {
			t.log.Warn("trim stream", "subject", subj, "err", err)
			return
		}
	}
	t.core.Trimmed(floor)
	t.c.streamTrims.Add(1)
}
