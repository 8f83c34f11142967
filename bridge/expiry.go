package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/hlc"
)

// silentFor is how long peer has sent no applied-vector report: since its
// last report, or since this DC started when none has come.
func (rd *readiness) silentFor(peer string, now time.Time) time.Duration {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	last, ok := rd.mu.last[peer]
	if !ok {
		last = rd.start
	}
	return now.Sub(last)
}

// unreachable reports whether dc has sent no report for longer than
// ExpiryTakeover; this DC itself never is.
func (r *Replicator) unreachable(dc string) bool {
	if dc == r.self {
		return false
	}
	rd := r.ready.Load()
	if rd == nil {
		return false
	}
	return rd.silentFor(dc, r.now()) > r.opts.ExpiryTakeover
}

// expiryMine reports whether this DC deletes an expired value expirer
// owns (changelog.Deleter).
func (r *Replicator) expiryMine(expirer string) bool {
	return changelog.Deleter(expirer, r.opts.DCs, r.unreachable) == r.self
}

// runExpirer deletes the expired values this DC owns (invariant 14 in
// docs/DESIGN.md): it sleeps until the earliest expiry the store's index
// holds, or until a write indexes a new one, and then deletes what is due
// and this DC's (changelog.Store.ExpireDue). While due values of another
// DC remain, it looks again every ReportInterval, since their owner may
// become unreachable past ExpiryTakeover and the values this DC's.
func (r *Replicator) runExpirer(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.store.ExpiryAdded():
		}
		wait := r.expireOnce(ctx)
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
	}
}

// expireOnce expires what is due now and returns how long to sleep. A DC
// expires nothing before it is ready (Readiness: caught up with what its
// peers had applied when it started): an origin coming back after another
// DC took its expiries over first applies the deletes written meanwhile,
// instead of writing a second one.
func (r *Replicator) expireOnce(ctx context.Context) time.Duration {
	if !r.Readiness().Ready {
		return r.opts.ReportInterval
	}
	now := r.store.Now()
	deleted, others, err := r.store.ExpireDue(ctx, now, r.expiryMine)
	switch {
	case errors.Is(err, changelog.ErrClosed), ctx.Err() != nil:
		return r.opts.ReportInterval
	case err != nil:
		r.log.Warn("expire due values", "err", err)
		return r.opts.ReportInterval
	}
	if deleted > 0 {
		r.c.expired.Add(uint64(deleted))
		r.log.Debug("expired values", "deleted", deleted, "left_for_others", others)
	}
	wait := time.Hour
	if others > 0 {
		wait = r.opts.ReportInterval
	}
	next, ok, err := r.store.NextExpiry(now)
	if err != nil {
		return r.opts.ReportInterval
	}
	if ok {
		// The expiry's physical part, less this DC's, plus a
		// millisecond for the logical part.
		d := time.Duration(hlc.Timestamp(next).Physical()-hlc.Timestamp(now).Physical())*time.Millisecond + time.Millisecond
		wait = min(wait, d)
	}
	return max(wait, time.Millisecond)
}
