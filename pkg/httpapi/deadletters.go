package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Bounds of GET /v1/deadletters' limit parameter.
const (
	DefaultDeadLetters = 20
	MaxDeadLetters     = 1000
)

// ErrNoDeadLetters is what a Backend returns from DeadLetters when the
// sidecar has no dead-letter stream to read (it runs without replication).
var ErrNoDeadLetters = errors.New("httpapi: no dead-letter stream")

// DeadLetter is one message of the DC's dead-letter stream, as
// GET /v1/deadletters shows it.
type DeadLetter struct {
	// Seq is the message's sequence in the dead-letter stream.
	Seq uint64 `json:"seq"`
	// Time is when the dead-letter stream stored it.
	Time time.Time `json:"time"`
	// Reason, Upstream, Subject, StreamSeq and MsgID come from the
	// Repl-Dlq-* headers: why, from which upstream DC's stream, on which
	// subject, at which sequence there, and the original Nats-Msg-Id.
	Reason    string `json:"reason"`
	Upstream  string `json:"upstream"`
	Subject   string `json:"subject"`
	StreamSeq uint64 `json:"stream_seq"`
	MsgID     string `json:"msg_id"`
	// Size is the payload's length in bytes.
	Size int `json:"size"`
}

// DeadLetters is the body of GET /v1/deadletters: the newest dead letters,
// newest first, and how many the stream holds.
type DeadLetters struct {
	DeadLetters []DeadLetter `json:"dead_letters"`
	Total       uint64       `json:"total"`
}

func (s *server) deadLetters(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, []string{"limit"}) {
		return
	}
	limit := DefaultDeadLetters
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxDeadLetters {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q is not an integer from 1 to %d; leave it out for %d", v, MaxDeadLetters, DefaultDeadLetters))
			return
		}
		limit = n
	}
	d, err := s.b.DeadLetters(r.Context(), limit)
	switch {
	case errors.Is(err, ErrNoDeadLetters):
		writeError(w, http.StatusNotFound, "this sidecar has no dead-letter stream: it runs without replication")
		return
	case errors.Is(err, context.Canceled):
		writeError(w, http.StatusServiceUnavailable, "read dead letters: request canceled before it completed; retry")
		return
	case err != nil:
		// Most likely NATS is unreachable; the status page polls this route,
		// so say why here instead of logging every poll.
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("read dead letters: %v; check the sidecar's NATS connection and retry", err))
		return
	}
	if d.DeadLetters == nil {
		d.DeadLetters = []DeadLetter{}
	}
	writeJSON(w, http.StatusOK, d)
}
