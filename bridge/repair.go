package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/rpc"
)

// Bounds of one repair reply.
const (
	MaxRepairEvents = 512
	MaxRepairBytes  = 512 << 10
)

// HeaderRepairError carries a repair server's error; its reply then holds
// no events.
const HeaderRepairError = "Repl-Repair-Error"

// RepairRequest asks a DC for its own events of one partition with a
// sequence in [From, To]; it travels as msgpack on repl.repair.<dc>. The
// reply is a msgpack array of encoded events, in sequence order, starting
// at From, at most MaxRepairEvents and about MaxRepairBytes; the caller
// asks again for the rest.
type RepairRequest struct {
	// V is the protocol version (package rpc); zero is left out, which a
	// server reads as version 1.
	V         int    `msgpack:"v,omitempty"`
	Partition uint32 `msgpack:"partition"`
	From      uint64 `msgpack:"from"`
	To        uint64 `msgpack:"to"`
}

// errOriginLacks reports an origin whose outbox no longer holds the events
// asked for: it trimmed them once every DC had reported them applied, so
// this DC must have lost them after reporting, as when its data dir is
// restored from an old backup. The upstream streams may still hold them.
// repairProtocol is gap repair's request/reply.
var repairProtocol = rpc.Protocol{Name: "repair", ErrorHeader: HeaderRepairError}

var errOriginLacks = errors.New("bridge: the origin no longer holds the events")

type gapKey struct {
	origin string
	p      uint32
}

type gapRange struct{ from, to uint64 }

// repair fetches origin's events [from, to] of partition p from the origin
// and applies them, until this DC has applied up to to, the origin has
// nothing more to give, or a request fails. It never skips a gap: events
// that do not continue the sequence are left to the next try.
func (r *Replicator) repair(ctx context.Context, origin string, p uint32, from, to uint64) error {
	return r.repairDepth(ctx, origin, p, from, to, 0)
}

// maxRepairDepth bounds how many partitions deep a repair follows
// transactions held by gaps in other partitions.
const maxRepairDepth = 4

// repairDepth is repair; a transaction the origin sends back that waits
// for a gap in another of its partitions has that gap repaired first, up to
// maxRepairDepth partitions deep.
func (r *Replicator) repairDepth(ctx context.Context, origin string, p uint32, from, to uint64, depth int) error {
	if from > to {
		return nil
	}
	for from <= to {
		if done := r.store.Applied()[origin]; int(p) < len(done) && done[p] >= to {
			return nil
		} else if int(p) < len(done) && done[p] >= from {
			from = done[p] + 1
		}
		evs, err := r.fetchRepair(ctx, origin, RepairRequest{Partition: p, From: from, To: to})
		if err != nil {
			return err
		}
		if len(evs) == 0 {
			return fmt.Errorf("%w: %s, partition %d, from seq %d", errOriginLacks, origin, p, from)
		}
		res, err := r.store.Apply(ctx, evs, r.forwardEvent)
		if err != nil {
			return fmt.Errorf("apply repaired events: %w", err)
		}
		applied := 0
		var elsewhere *event.Event // an op of another partition that waits for a gap
		var held error
		for i, x := range res {
			r.observeHLC(x, evs[i])
			switch x.Outcome {
			case changelog.Changed:
				r.c.applied.Add(1)
				applied++
			case changelog.Obsolete:
				r.c.obsolete.Add(1)
				applied++
			case changelog.Duplicate:
				r.c.duplicates.Add(1)
			case changelog.Gap:
				switch {
				case evs[i].Partition != p && x.Expected < evs[i].Seq:
					if elsewhere == nil {
						elsewhere = evs[i]
						if err := r.repairDepth(ctx, origin, evs[i].Partition, x.Expected, evs[i].Seq-1, depth+1); err != nil || depth >= maxRepairDepth {
							held = fmt.Errorf("repaired transaction %s waits for a gap in partition %d at %d: %v", evs[i].Dot, evs[i].Partition, x.Expected, err)
						}
					}
				case evs[i].Partition == p && x.Expected < evs[i].Seq && elsewhere == nil:
					// Behind a transaction that waited for another
					// partition's gap, now filled: asking again applies
					// them.
					held = fmt.Errorf("repaired event %s still follows a gap at %d", evs[i].Dot, x.Expected)
				}
			}
			if x.Forwarded {
				r.c.forwarded.Add(1)
			}
		}
		r.c.repairs.Add(1)
		r.c.repairedEvents.Add(uint64(applied))
		r.log.Info("repaired a gap", "origin", origin, "partition", p, "from", from, "events", len(evs), "applied", applied)
		if held != nil {
			return held
		}
		if elsewhere != nil {
			continue // the other partition's gap is filled: ask again from where this one stands
		}
		from = lastIn(evs, p) + 1
	}
	return nil
}

// lastIn returns the highest sequence of partition p among evs.
func lastIn(evs []*event.Event, p uint32) uint64 {
	var hi uint64
	for _, ev := range evs {
		if ev.Partition == p {
			hi = max(hi, ev.Seq)
		}
	}
	return hi
}

// fetchRepair asks origin for req's events and checks what comes back.
func (r *Replicator) fetchRepair(ctx context.Context, origin string, req RepairRequest) ([]*event.Event, error) {
	req.V = rpc.Version
	rctx, cancel := context.WithTimeout(ctx, r.opts.RepairTimeout)
	defer cancel()
	var raw [][]byte
	var refused *rpc.Refused
	switch err := repairProtocol.Call(rctx, r.nc, names.RepairSubject(origin), req, &raw); {
	case errors.As(err, &refused):
		return nil, fmt.Errorf("%s refused repair of partition %d [%d, %d]: %s", origin, req.Partition, req.From, req.To, refused.Msg)
	case errors.Is(err, rpc.ErrBadReply):
		return nil, fmt.Errorf("repair reply from %s: %w", origin, err)
	case err != nil:
		return nil, fmt.Errorf("ask %s for partition %d [%d, %d]: %w", origin, req.Partition, req.From, req.To, err)
	}
	evs := make([]*event.Event, 0, len(raw))
	next := req.From
	for i, b := range raw {
		got, err := event.DecodeMessage(b, r.opts.Limits)
		if err != nil {
			return nil, fmt.Errorf("repair reply from %s, event %d: %w", origin, i, err)
		}
		// A transaction holds ops of other partitions too; its ops in the
		// asked partition must continue the sequence.
		inPart := 0
		for _, ev := range got {
			switch {
			case ev.Origin != origin || len(ev.Path) != 1:
				return nil, fmt.Errorf("repair reply from %s, event %d: %s with path %v is not %s's own event",
					origin, i, ev.Dot, ev.Path, origin)
			case ev.Partition != event.PartitionOf(ev.Key, r.opts.Partitions):
				return nil, fmt.Errorf("repair reply from %s, event %d: key %q is not in partition %d", origin, i, ev.Key, ev.Partition)
			case ev.Partition != req.Partition:
				continue
			case ev.Seq != next || ev.Seq > req.To:
				return nil, fmt.Errorf("repair reply from %s, event %d: seq %d, want %d", origin, i, ev.Seq, next)
			}
			next++
			inPart++
		}
		if inPart == 0 {
			return nil, fmt.Errorf("repair reply from %s, event %d: %s holds nothing of partition %d", origin, i, got[0].Dot, req.Partition)
		}
		evs = append(evs, got...)
	}
	return evs, nil
}

// serveRepairs answers repair requests for this DC's own events until ctx
// ends.
func (r *Replicator) serveRepairs(ctx context.Context, reqs <-chan *nats.Msg) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-reqs:
			r.answerRepair(m)
		}
	}
}

func (r *Replicator) answerRepair(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	events, err := r.repairEvents(m.Data)
	var body []byte
	if err != nil {
		r.log.Warn("refused a repair request", "err", err)
	} else {
		body, err = msgpack.Marshal(events)
	}
	if err := repairProtocol.Respond(m, body, err); err != nil {
		r.log.Debug("repair reply failed", "err", err)
		return
	}
	r.c.repairsServed.Add(1)
}

var errBadRepair = errors.New("bridge: bad repair request")

func (r *Replicator) repairEvents(data []byte) ([][]byte, error) {
	var req RepairRequest
	if err := repairProtocol.Decode(data, &req, &req.V); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadRepair, err)
	}
	if int(req.Partition) >= r.opts.Partitions || req.From == 0 || req.To < req.From {
		return nil, fmt.Errorf("%w: partition %d [%d, %d]: want a partition below %d and 1 <= from <= to",
			errBadRepair, req.Partition, req.From, req.To, r.opts.Partitions)
	}
	evs, err := r.store.OwnEvents(req.Partition, req.From, req.To, MaxRepairEvents)
	if err != nil {
		return nil, fmt.Errorf("read own events: %w", err)
	}
	size := 0
	for i, b := range evs {
		size += len(b)
		if size > MaxRepairBytes && i > 0 {
			return evs[:i], nil
		}
	}
	return evs, nil
}
