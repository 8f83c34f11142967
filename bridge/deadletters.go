package bridge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/replicatorhq/replicator/pkg/names"
)

// MaxDeadLetters bounds how many dead letters one DeadLetters call reads.
const MaxDeadLetters = 1000

// DeadLetter describes one message of a DC's dead-letter stream, from the
// headers the consumer set when it moved the message there.
type DeadLetter struct {
	// Seq is the message's sequence in the dead-letter stream.
	Seq uint64
	// Time is when the dead-letter stream stored it.
	Time time.Time
	// Reason says why the message was rejected (Repl-Dlq-Reason).
	Reason string
	// Upstream is the DC whose stream held the message.
	Upstream string
	// Subject is the subject the message was published on.
	Subject string
	// StreamSeq is the message's sequence in the upstream's stream; zero
	// if the header is missing or malformed.
	StreamSeq uint64
	// MsgID is the message's original Nats-Msg-Id, if it had one.
	MsgID string
	// Size is the payload's length in bytes.
	Size int
}

// DeadLetters returns up to limit of the newest messages in this DC's
// dead-letter stream REPL_<dc>_DLQ, newest first, and how many messages
// the stream holds. It reads them one by one by sequence, walking back
// from the last, so limit is capped at MaxDeadLetters.
func (r *Replicator) DeadLetters(ctx context.Context, limit int) ([]DeadLetter, uint64, error) {
	if limit <= 0 || limit > MaxDeadLetters {
		return nil, 0, fmt.Errorf("bridge: dead letters: limit %d is not between 1 and %d", limit, MaxDeadLetters)
	}
	name := names.DLQStream(r.env.self)
	s, err := r.env.js.Stream(ctx, name)
	if err != nil {
		return nil, 0, fmt.Errorf("bridge: dead-letter stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("bridge: dead-letter stream %s: %w", name, err)
	}
	st := info.State
	out := []DeadLetter{}
	if st.Msgs == 0 {
		return out, 0, nil
	}
	// Deleted messages leave holes; there are at most NumDeleted of them,
	// and messages removed after the Info call answer "not found" too.
	tries := limit + st.NumDeleted
	for seq := st.LastSeq; seq >= st.FirstSeq && seq > 0 && len(out) < limit && tries > 0; seq-- {
		tries--
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("bridge: dead letter %d in %s: %w", seq, name, err)
		}
		out = append(out, deadLetterOf(m))
	}
	return out, st.Msgs, nil
}

func deadLetterOf(m *jetstream.RawStreamMsg) DeadLetter {
	d := DeadLetter{
		Seq:      m.Sequence,
		Time:     m.Time,
		Reason:   m.Header.Get(HeaderDLQReason),
		Upstream: m.Header.Get(HeaderDLQUpstream),
		Subject:  m.Header.Get(HeaderDLQSubject),
		MsgID:    m.Header.Get(HeaderDLQMsgID),
		Size:     len(m.Data),
	}
	if n, err := strconv.ParseUint(m.Header.Get(HeaderDLQStreamSeq), 10, 64); err == nil {
		d.StreamSeq = n
	}
	return d
}
