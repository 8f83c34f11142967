package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
)

// Bounds of one repair reply.
const (
	MaxRepairEvents = 512
	MaxRepairBytes  = 512 << 10
)

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

// ErrOriginLacks reports an origin whose outbox no longer holds the events
// asked for: it trimmed them once every DC had reported them applied, so
// this DC must have lost them after reporting, as when its data dir is
// restored from an old backup. The upstream streams may still hold them
// (see Replays).
var ErrOriginLacks = errors.New("bridge: the origin no longer holds the events")

// ErrBadRepair reports a repair request that cannot be answered.
var ErrBadRepair = errors.New("bridge: bad repair request")

// Store is what the core needs of this DC's change log
// (*changelog.Store is one).
type Store interface {
	// Apply applies remote events in one batch (changelog.Store.Apply).
	Apply(ctx context.Context, evs []*event.Event, forward func(*event.Event) bool) ([]changelog.ApplyResult, error)
	// Applied returns this DC's applied vector.
	Applied() changelog.Applied
}

// OwnEvents reads a DC's own events for a repair request
// (*changelog.Store is one).
type OwnEvents interface {
	OwnEvents(p uint32, from, to uint64, max int) ([][]byte, error)
}

// Source fetches an origin's own events for gap repair: it asks origin
// for req and returns the encoded messages of its reply, as ServeRepair
// at the origin returns them. The driver carries the request (NATS
// request/reply in bridge); Repairer checks what comes back.
type Source interface {
	Fetch(ctx context.Context, origin string, req RepairRequest) ([][]byte, error)
}

// ServeRepair answers a repair request at the origin from its own events:
// at most MaxRepairEvents, cut after about MaxRepairBytes (at least one).
func ServeRepair(own OwnEvents, partitions int, req RepairRequest) ([][]byte, error) {
	if int(req.Partition) >= partitions || req.From == 0 || req.To < req.From {
		return nil, fmt.Errorf("%w: partition %d [%d, %d]: want a partition below %d and 1 <= from <= to",
			ErrBadRepair, req.Partition, req.From, req.To, partitions)
	}
	evs, err := own.OwnEvents(req.Partition, req.From, req.To, MaxRepairEvents)
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

// Repairer fills gaps in an origin's sequence by asking the origin for the
// missing events and applying them.
type Repairer struct {
	// Store is this DC's change log.
	Store Store
	// Source carries repair requests to the origins.
	Source Source
	// Forward is the effective plan's forwarding rule (Plan.ShouldForward
	// of the event's path and origin).
	Forward func(*event.Event) bool
	// Partitions is the partition count; Limits bound decoded events.
	Partitions int
	Limits     event.Limits
	// Log receives the notes; nil discards them.
	Log *slog.Logger
	// Shard, for one of several sidecars of a DC, keeps the repaired ops
	// of its partitions and coordinates transactions spanning the DC's
	// shards; nil for a DC of one sidecar.
	Shard *Shard
	// AskOnce has a repaired transaction spanning the DC's shards ask the
	// other shards once whether they have prepared it, rather than wait
	// for them (Coordinator.Prepare without wait): a link's repairs, so
	// that its batch waits at most once (Link.Receive). It is prepared
	// here all the same, and the events wait for the next try.
	AskOnce bool
}

// maxRepairDepth bounds how many partitions deep a repair follows
// transactions held by gaps in other partitions.
const maxRepairDepth = 4

// Repair fetches origin's events [from, to] of partition p from the origin
// and applies them, until this DC has applied up to to, the origin has
// nothing more to give, or a request fails. It never skips a gap: events
// that do not continue the sequence are left to the next try. The tally
// counts what it did, error or not.
func (r Repairer) Repair(ctx context.Context, origin string, p uint32, from, to uint64) (Tally, error) {
	var t Tally
	err := r.repair(ctx, &t, origin, p, from, to, 0)
	return t, err
}

// repair is Repair; a transaction the origin sends back that waits for a
// gap in another of its partitions has that gap repaired first, up to
// maxRepairDepth partitions deep.
func (r Repairer) repair(ctx context.Context, t *Tally, origin string, p uint32, from, to uint64, depth int) error {
	if from > to {
		return nil
	}
	log := logger(r.Log)
	// stalled marks a round that filled another partition's gap for a
	// transaction and applied nothing here; a second such round in a row
	// means the fill did not let the transaction apply, and asking again
	// would only spin.
	stalled := false
	for from <= to {
		if done := r.Store.Applied()[origin]; int(p) < len(done) && done[p] >= to {
			return nil
		} else if int(p) < len(done) && done[p] >= from {
			from = done[p] + 1
		}
		req := RepairRequest{Partition: p, From: from, To: to}
		raw, err := r.Source.Fetch(ctx, origin, req)
		if err != nil {
			return err
		}
		evs, err := CheckRepairReply(origin, req, raw, r.Partitions, r.Limits)
		if err != nil {
			return err
		}
		if len(evs) == 0 {
			return fmt.Errorf("%w: %s, partition %d, from seq %d", ErrOriginLacks, origin, p, from)
		}
		evs, whole, prepared, waiting := r.Shard.repaired(ctx, evs, !r.AskOnce)
		if len(evs) == 0 && waiting {
			return errors.New("a repaired transaction spanning this DC's shards waits for its other shards to prepare it")
		}
		if len(evs) == 0 {
			return fmt.Errorf("%w: %s, partition %d, from seq %d", ErrOriginLacks, origin, p, from)
		}
		res, err := applyWhole(ctx, r.Store, evs, whole, r.Forward)
		if err != nil {
			return fmt.Errorf("apply repaired events: %w", err)
		}
		// A transaction prepared and applied is forgotten, whatever
		// else of the batch waits for a gap.
		for i, ev := range evs {
			if id, ok := prepared[ev]; ok && res[i].Outcome != changelog.Gap {
				r.Shard.Coordinator.Done(ctx, id)
			}
		}
		applied := 0
		var elsewhere *event.Event // an op of another partition that waits for a gap
		var held error
		for i, x := range res {
			t.observeClock(log, x, evs[i])
			switch x.Outcome {
			case changelog.Changed:
				t.Repaired.Changed++
				applied++
			case changelog.Obsolete:
				t.Repaired.Obsolete++
				applied++
			case changelog.Duplicate:
				t.Repaired.Duplicate++
			case changelog.Gap:
				switch {
				case evs[i].Partition != p && x.Expected < evs[i].Seq:
					if elsewhere == nil {
						elsewhere = evs[i]
						if err := r.repair(ctx, t, origin, evs[i].Partition, x.Expected, evs[i].Seq-1, depth+1); err != nil || depth >= maxRepairDepth {
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
				t.Repaired.Forwarded++
			}
		}
		t.Repairs++
		t.RepairedEvents += uint64(applied)
		log.Info("repaired a gap", "origin", origin, "partition", p, "from", from, "events", len(evs), "applied", applied)
		if held != nil {
			return held
		}
		if elsewhere != nil {
			if stalled && applied == 0 {
				return fmt.Errorf("repaired transaction %s still waits for a gap in partition %d after its repair", elsewhere.Dot, elsewhere.Partition)
			}
			stalled = applied == 0
			continue // the other partition's gap is filled: ask again from where this one stands
		}
		stalled = false
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

// CheckRepairReply decodes the encoded messages origin sent back for req
// and checks them: every event must be origin's own, in the partition its
// key hashes to, and the ops in the asked partition must continue the
// sequence from req.From up to at most req.To.
func CheckRepairReply(origin string, req RepairRequest, raw [][]byte, partitions int, limits event.Limits) ([]*event.Event, error) {
	evs := make([]*event.Event, 0, len(raw))
	next := req.From
	for i, b := range raw {
		got, err := event.DecodeMessage(b, limits)
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
			case ev.Partition != event.PartitionOf(ev.Key, partitions):
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

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
