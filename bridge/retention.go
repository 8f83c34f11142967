package bridge

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/pkg/names"
)

// streamSample is this DC's stream's last sequence at one moment.
type streamSample struct {
	at  time.Time
	seq uint64
}

// downstreams returns the DCs that consume this DC's stream: in a mesh all
// others, in a ring the successor, in a star the hub's leaves or a leaf's
// hub (the consuming side of each link).
func (r *Replicator) downstreams() []string {
	switch r.plan.Topology {
	case "ring":
		return []string{r.plan.Next()}
	case "star":
		return slices.Clone(r.plan.Upstreams)
	}
	var out []string
	for _, dc := range r.opts.DCs {
		if dc != r.self {
			out = append(out, dc)
		}
	}
	return out
}

// trimStream deletes messages of this DC's stream that every downstream
// consumer has acknowledged and that are older than StreamRetention, so the
// stream never fills up and stalls publishing. It keeps the last message
// of every partition subject and of the transaction subject: their
// Repl-Seq-Hi and Repl-Seq-His are how a DC restored from an
// old data dir learns which sequences it already issued. The history kept
// for StreamRetention is what lets such a DC take back its own later
// writes from the stream; a DC restored from a copy older than that loses
// them, and they must come back from the other DCs by anti-entropy. When the
// stream is over 80% of its MaxBytes, acknowledged messages go regardless of
// their age, so a full stream never stalls publishing.
func (r *Replicator) trimStream(ctx context.Context) {
	s, err := r.js.Stream(ctx, r.stream)
	if err != nil {
		r.log.Debug("trim stream: look up", "err", err)
		return
	}
	now := r.now()
	r.samples = append(r.samples, streamSample{at: now, seq: s.CachedInfo().State.LastSeq})
	cutoff := uint64(0)
	keep := r.samples[:0]
	for _, sm := range r.samples {
		if now.Sub(sm.at) >= r.opts.StreamRetention {
			cutoff = max(cutoff, sm.seq)
			continue
		}
		keep = append(keep, sm)
	}
	r.samples = keep
	info := s.CachedInfo()
	if max := info.Config.MaxBytes; max > 0 && info.State.Bytes*5 > uint64(max)*4 {
		// Over 80% full: keeping acknowledged history must not stall
		// publishing, so the retention gives way.
		cutoff = info.State.LastSeq
	}
	if cutoff == 0 {
		return
	}
	floor := cutoff
	for _, dc := range r.downstreams() {
		c, err := s.Consumer(ctx, names.Consumer(dc, r.self))
		if err != nil {
			if !errors.Is(err, jetstream.ErrConsumerNotFound) {
				r.log.Debug("trim stream: consumer info", "downstream", dc, "err", err)
			}
			return // a downstream that never consumed needs everything
		}
		floor = min(floor, c.CachedInfo().AckFloor.Stream)
	}
	if floor <= r.trimmedTo {
		return
	}
	for p := range r.opts.Partitions + 1 {
		subj := names.TxnSubject(r.self)
		if p < r.opts.Partitions {
			subj = names.Subject(r.self, uint32(p))
		}
		last, err := s.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			r.log.Debug("trim stream: last message", "subject", subj, "err", err)
			return
		}
		upTo := min(floor+1, last.Sequence) // purge below upTo: the last message stays
		if upTo <= 1 {
			continue
		}
		if err := s.Purge(ctx, jetstream.WithPurgeSubject(subj), jetstream.WithPurgeSequence(upTo)); err != nil {
			r.log.Warn("trim stream", "subject", subj, "err", err)
			return
		}
	}
	r.trimmedTo = floor
	r.c.streamTrims.Add(1)
}
