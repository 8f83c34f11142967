package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/hlc"
)

// expirer deletes the expired values this DC owns (invariant 14 in
// docs/DESIGN.md). It sleeps until the earliest expiry the store's index
// holds, or until a write indexes a new one, and then deletes what is due
// and this DC's (changelog.Store.ExpireDue). While due values of another
// DC remain, it looks again every ReportInterval, since their owner may
// become unreachable past ExpiryTakeover and the values this DC's.
type expirer struct{ e *env }

// unreachable reports whether dc has sent no applied-vector report
// speaking for partition p for longer than ExpiryTakeover; this DC
// itself never is. It is judged per partition (core.Coverage.SilentOn):
// a DC of several shards, one of them down, stays reachable for the
// partitions of the shards that run, which go on deleting their expired
// values (invariant 16).
func (x expirer) unreachable(dc string, p uint32) bool {
	e := x.e
	cover := e.cover.Load()
	if dc == e.self || cover == nil {
		return false
	}
	return cover.silentOn(dc, p, e.now(), e.opts.ExpiryTakeover)
}

// mine reports whether this DC deletes an expired value owner owns in
// partition p (changelog.Deleter, with the DCs unreachable for p).
func (x expirer) mine(owner string, p uint32) bool {
	silent := func(dc string) bool { return x.unreachable(dc, p) }
	return changelog.Deleter(owner, x.e.opts.DCs, silent) == x.e.self
}

func (x expirer) run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-x.e.store.ExpiryAdded():
		}
		t.Reset(x.once(ctx))
	}
}

// once expires what is due now and returns how long to sleep. A DC
// expires nothing before it is ready (Readiness: caught up with what its
// peers had applied when it started): an owner coming back after another
// DC took its expiries over first applies the deletes written meanwhile,
// instead of writing a second one.
func (x expirer) once(ctx context.Context) time.Duration {
	e := x.e
	if !e.readiness().Ready {
		return e.opts.ReportInterval
	}
	now := e.store.Now()
	deleted, others, err := e.store.ExpireDue(ctx, now, x.mine)
	switch {
	case errors.Is(err, changelog.ErrClosed), ctx.Err() != nil:
		return e.opts.ReportInterval
	case err != nil:
		e.log.Warn("expire due values", "err", err)
		return e.opts.ReportInterval
	}
	if deleted > 0 {
		e.c.expired.Add(uint64(deleted))
		e.log.Debug("expired values", "deleted", deleted, "left_for_others", others)
	}
	wait := time.Hour
	if others > 0 {
		wait = e.opts.ReportInterval
	}
	next, ok, err := e.store.NextExpiry(now)
	if err != nil {
		return e.opts.ReportInterval
	}
	if ok {
		// The expiry's physical part, less this DC's, plus a
		// millisecond for the logical part.
		d := time.Duration(hlc.Timestamp(next).Physical()-hlc.Timestamp(now).Physical())*time.Millisecond + time.Millisecond
		wait = min(wait, d)
	}
	return max(wait, time.Millisecond)
}
