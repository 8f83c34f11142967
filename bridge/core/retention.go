package core

import "time"

// Retention decides how far this DC's stream may be trimmed. Messages
// every downstream consumer has acknowledged go once older than Keep, so
// the stream never fills up and stalls publishing; when the stream is over
// 80% of its byte limit they go regardless of their age. The last message
// of every partition subject and of the transaction subject always stays:
// their Repl-Seq-Hi and Repl-Seq-His are how a DC restored from an old data
// dir learns which sequences it already issued. The history kept for Keep
// is what lets such a DC take back its own later writes from the stream.
//
// A driver steps it every maintenance interval: Cutoff with the stream's
// state, Floor with the downstream consumers' ack floors, PurgeBelow for
// each subject, then Trimmed once every purge succeeded.
type Retention struct {
	// Keep is how long acknowledged messages stay.
	Keep time.Duration

	samples   []sample
	trimmedTo uint64
}

// sample is the stream's last sequence at one moment.
type sample struct {
	at  time.Time
	seq uint64
}

// Cutoff records the stream's last sequence at now and returns the
// highest stream sequence old enough to go: the last sequence at least
// Keep ago, or the last sequence now when bytes is over 80% of maxBytes
// (0 for no limit). 0 means nothing may go.
func (r *Retention) Cutoff(now time.Time, lastSeq, bytes uint64, maxBytes int64) uint64 {
	r.samples = append(r.samples, sample{at: now, seq: lastSeq})
	cutoff := uint64(0)
	keep := r.samples[:0]
	for _, sm := range r.samples {
		if now.Sub(sm.at) >= r.Keep {
			cutoff = max(cutoff, sm.seq)
			continue
		}
		keep = append(keep, sm)
	}
	r.samples = keep
	if maxBytes > 0 && bytes*5 > uint64(maxBytes)*4 {
		// Over 80% full: keeping acknowledged history must not stall
		// publishing, so the retention gives way.
		cutoff = lastSeq
	}
	return cutoff
}

// Floor returns how far the stream may be trimmed given cutoff and the ack
// floors of every downstream consumer, and whether that is past what was
// trimmed already. A downstream that never consumed needs everything: the
// driver does not call Floor then.
func (r *Retention) Floor(cutoff uint64, acked []uint64) (uint64, bool) {
	floor := cutoff
	for _, a := range acked {
		floor = min(floor, a)
	}
	return floor, floor > r.trimmedTo
}

// Trimmed records that the stream was trimmed up to floor.
func (r *Retention) Trimmed(floor uint64) { r.trimmedTo = floor }

// PurgeBelow returns the stream sequence below which a subject whose last
// message is at last may be purged, trimming up to floor and keeping that
// last message; 0 means nothing to purge.
func PurgeBelow(floor, last uint64) uint64 {
	upTo := min(floor+1, last)
	if upTo <= 1 {
		return 0
	}
	return upTo
}
