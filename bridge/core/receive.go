package core

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
)

// Msg is one message taken from an upstream's stream.
type Msg struct {
	Subject string
	Header  map[string][]string
	Data    []byte
	// Seq is the message's sequence in the upstream's stream; 0 if
	// unknown.
	Seq uint64
}

// Action is what a driver does with a message once Link has judged it.
type Action int

const (
	// Ack settles the message: applied, a duplicate, or a loop dropped.
	Ack Action = iota
	// Nak has the message redelivered after Verdict.Delay (0: at once).
	Nak
	// DeadLetter copies the message to the dead-letter stream with
	// Verdict.Reason and terminates it. If the copy cannot be stored, the
	// driver naks it with the link's RetryDelay instead; once it is
	// stored, the driver calls Link.Forget.
	DeadLetter
)

func (a Action) String() string {
	switch a {
	case Ack:
		return "ack"
	case Nak:
		return "nak"
	case DeadLetter:
		return "dead-letter"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Verdict is Link's decision on one message.
type Verdict struct {
	Action Action
	// Delay is how long a nak'ed message waits before redelivery.
	Delay time.Duration
	// Reason wraps ErrRejected and says why a message is dead-lettered.
	Reason error
}

// Counts are apply outcomes (changelog.Outcome) and forwards.
type Counts struct {
	Changed, Obsolete, Duplicate, Gap, Forwarded uint64
}

func (c *Counts) add(res changelog.ApplyResult) {
	switch res.Outcome {
	case changelog.Changed:
		c.Changed++
	case changelog.Obsolete:
		c.Obsolete++
	case changelog.Duplicate:
		c.Duplicate++
	case changelog.Gap:
		c.Gap++
	}
	if res.Forwarded {
		c.Forwarded++
	}
}

// Tally counts what one step did, for the driver's figures.
type Tally struct {
	// Received counts messages judged; Loops those dropped as loops.
	Received, Loops uint64
	// Outcomes counts the outcomes of the link's own messages.
	Outcomes Counts
	// Repaired counts the outcomes of events gap repair brought (never
	// Gap).
	Repaired Counts
	// ApplyErrors counts batches the store failed to apply; ClockDrift
	// events whose HLC the store's clock refused.
	ApplyErrors, ClockDrift uint64
	// Repairs counts repair replies applied, RepairedEvents the events
	// they brought that applied in sequence, RepairErrors failed repairs.
	Repairs, RepairedEvents, RepairErrors uint64
	// LastHLC is the highest origin time (HLC) of the link's events
	// applied in sequence; 0 if none.
	LastHLC uint64
}

// Add adds u to t.
func (t *Tally) Add(u Tally) {
	t.Received += u.Received
	t.Loops += u.Loops
	t.Outcomes.plus(u.Outcomes)
	t.Repaired.plus(u.Repaired)
	t.ApplyErrors += u.ApplyErrors
	t.ClockDrift += u.ClockDrift
	t.Repairs += u.Repairs
	t.RepairedEvents += u.RepairedEvents
	t.RepairErrors += u.RepairErrors
	t.LastHLC = max(t.LastHLC, u.LastHLC)
}

func (c *Counts) plus(d Counts) {
	c.Changed += d.Changed
	c.Obsolete += d.Obsolete
	c.Duplicate += d.Duplicate
	c.Gap += d.Gap
	c.Forwarded += d.Forwarded
}

// observeClock counts and logs a remote HLC the store's clock refused. The
// store feeds every changing event's HLC to its clock inside the apply
// batch (changelog.ClockUpdater, the HLC receive rule); a reading beyond
// the drift bound is refused there, and the event is applied all the
// same, since causality never depends on the HLC.
func (t *Tally) observeClock(log *slog.Logger, res changelog.ApplyResult, ev *event.Event) {
	if res.ClockErr != nil {
		t.ClockDrift++
		log.Warn("remote clock beyond the drift bound; its time was not taken", "origin", ev.Origin, "dot", ev.Dot.String(), "err", res.ClockErr)
	}
}

// LinkConfig configures the receive side of one link.
type LinkConfig struct {
	// Up is the upstream DC whose stream the link reads.
	Up string
	// Plan is this DC's static plan; its Accept drops loops.
	Plan Plan
	// Check judges each message.
	Check Checker
	// Repair applies batches and repairs gaps; its Forward is the
	// effective plan's forwarding rule.
	Repair Repairer
	// MaxDeliver is how many times a message may fail for reasons other
	// than a gap before it is dead-lettered.
	MaxDeliver int
	// GapDelay is how long a message held by a gap waits before
	// redelivery; RetryDelay how long one waits after the store failed.
	GapDelay, RetryDelay time.Duration
	// Log receives the notes; nil discards them.
	Log *slog.Logger
	// Shard, for one of several sidecars of a DC, keeps the ops of its
	// partitions and coordinates transactions spanning the DC's shards;
	// nil for a DC of one sidecar.
	Shard *Shard
}

// Link is the receive side of one link: it judges each batch of messages
// from the upstream's stream and applies what it accepts. It keeps, by
// stream sequence, how often each message failed for a reason other than
// a gap; it is used by one goroutine at a time.
type Link struct {
	cfg      LinkConfig
	log      *slog.Logger
	failures map[uint64]int
}

// NewLink returns the receive side of a link.
func NewLink(cfg LinkConfig) *Link {
	return &Link{cfg: cfg, log: logger(cfg.Log), failures: map[uint64]int{}}
}

// inbound is a message that passed the checks, with its event, or the
// ops of its transaction; i is its index in the batch. For a shard that
// applies only part of a transaction (part), fw is what is forwarded in
// its place (Shard.whole).
type inbound struct {
	i    int
	evs  []*event.Event
	fw   []*event.Event
	part bool
}

// whole maps x's first op to what is forwarded in its place when x is a
// shard's part of a transaction; nil otherwise.
func (x inbound) whole() map[*event.Event][]*event.Event {
	if !x.part {
		return nil
	}
	return map[*event.Event][]*event.Event{x.evs[0]: x.fw}
}

// Receive judges one batch of messages, in order, and applies those it
// accepts as one store batch:
//
//   - a message that fails the checks is dead-lettered;
//   - one whose event already passed this DC, or is this DC's own, is a
//     loop: acked and dropped;
//   - the others are applied (and forwarded as the plan says); each whose
//     event, or whole transaction, the committed batch settled is acked;
//   - events held back by a gap are repaired from their origin and
//     applied again; those still held are nak'ed with GapDelay;
//   - when the store fails, see applyFailed.
//
// It returns one verdict per message, and what it did.
func (l *Link) Receive(ctx context.Context, msgs []Msg) ([]Verdict, Tally) {
	out := make([]Verdict, len(msgs))
	var t Tally
	in := make([]inbound, 0, len(msgs))
	type span struct {
		x   inbound
		all []*event.Event
	}
	var spanning []span
	for i, m := range msgs {
		t.Received++
		evs, err := l.cfg.Check.Check(l.cfg.Up, m.Subject, m.Header, m.Data)
		if err != nil {
			out[i] = Verdict{Action: DeadLetter, Reason: err}
			continue
		}
		ev := evs[0]
		if err := l.cfg.Plan.Accept(ev.Origin, ev.Path); err != nil {
			t.Loops++
			l.log.Debug("dropped a looping event", "upstream", l.cfg.Up, "dot", ev.Dot, "path", ev.Path, "err", err)
			out[i] = l.ack(m)
			continue
		}
		all := evs
		if evs = l.cfg.Shard.Own(slices.Clone(evs)); len(evs) == 0 {
			// A transaction with no op in this shard's partitions.
			out[i] = l.ack(m)
			continue
		}
		x := inbound{i: i, evs: evs}
		x.fw, x.part = l.cfg.Shard.whole(all, evs)
		if l.cfg.Shard.spans(all, evs) {
			spanning = append(spanning, span{x, all})
			continue
		}
		in = append(in, x)
	}
	if len(in) > 0 {
		l.apply(ctx, &t, msgs, in, out)
	}
	// Once one transaction spanning the DC's shards is not ready, the
	// others of the batch are prepared without waiting: the other shards
	// may be held up by a message this one has not reached, and waiting
	// at each chained the waits into stalls (TestShardedRing,
	// TestTxnSpanningReceiverShards under load).
	wait := true
	for _, s := range spanning {
		v := l.spanning(ctx, &t, msgs[s.x.i], s.x, s.all, wait)
		if v.Action == Nak {
			wait = false
		}
		out[s.x.i] = v
	}
	return out, t
}

// repairer is the link's gap repair: a repaired transaction spanning the
// DC's shards asks the other shards once (Repairer.AskOnce), since a
// batch waits for them at most once, in Receive. Waiting at each repair
// too chained a wait (the Coordinator's, 2s) per gapped partition into one
// batch, while the other shards, waiting the same way, did not reach the
// transactions asked about: a ring of sharded DCs took far longer to
// converge (TestShardedRing under load).
func (l *Link) repairer() Repairer {
	r := l.cfg.Repair
	r.AskOnce = true
	return r
}

// Forget drops what the link kept about the message at stream sequence
// seq, once the driver has dead-lettered it.
func (l *Link) Forget(seq uint64) { delete(l.failures, seq) }

// Failures returns how often the message at stream sequence seq failed
// for a reason other than a gap.
func (l *Link) Failures(seq uint64) int { return l.failures[seq] }

func (l *Link) ack(m Msg) Verdict {
	if len(l.failures) > 0 {
		delete(l.failures, m.Seq)
	}
	return Verdict{Action: Ack}
}

type gapKey struct {
	origin string
	p      uint32
}

type gapRange struct{ from, to uint64 }

// apply applies in as one store batch and settles each message whose event
// (or transaction) the committed batch settled. Events held back by a gap
// are repaired from their origin and offered again; those still held are
// redelivered later. A transaction is held while any of its ops is.
func (l *Link) apply(ctx context.Context, t *Tally, msgs []Msg, in []inbound, out []Verdict) {
	st := l.cfg.Repair.Store
	res, err := applyWhole(ctx, st, events(in), wholes(in), l.cfg.Repair.Forward)
	if err != nil {
		l.applyFailed(ctx, t, msgs, in, out, err)
		return
	}
	var held []inbound
	need := map[gapKey]gapRange{}
	i := 0
	for _, x := range in {
		rs := res[i : i+len(x.evs)]
		i += len(x.evs)
		if !gapped(rs) {
			out[x.i] = l.settle(t, msgs[x.i], x, rs)
			continue
		}
		held = append(held, x)
		for j, ev := range x.evs {
			if rs[j].Outcome != changelog.Gap || rs[j].Expected >= ev.Seq {
				continue
			}
			t.Outcomes.add(rs[j])
			k := gapKey{ev.Origin, ev.Partition}
			if g, ok := need[k]; !ok || ev.Seq-1 < g.to {
				need[k] = gapRange{from: rs[j].Expected, to: ev.Seq - 1}
			}
		}
	}
	if len(held) == 0 {
		return
	}
	keys := slices.SortedFunc(maps.Keys(need), func(a, b gapKey) int {
		if a.origin != b.origin {
			return cmp.Compare(a.origin, b.origin)
		}
		return cmp.Compare(a.p, b.p)
	})
	for _, k := range keys {
		g := need[k]
		rt, err := l.repairer().Repair(ctx, k.origin, k.p, g.from, g.to)
		t.Add(rt)
		if err != nil {
			t.RepairErrors++
			l.log.Warn("gap repair failed; the events past the gap wait", "origin", k.origin, "partition", k.p,
				"from", g.from, "to", g.to, "upstream", l.cfg.Up, "err", err)
		}
	}
	res, err = applyWhole(ctx, st, events(held), wholes(held), l.cfg.Repair.Forward)
	if err != nil {
		l.applyFailed(ctx, t, msgs, held, out, err)
		return
	}
	i = 0
	for _, x := range held {
		rs := res[i : i+len(x.evs)]
		i += len(x.evs)
		if gapped(rs) {
			out[x.i] = Verdict{Action: Nak, Delay: l.cfg.GapDelay}
			continue
		}
		out[x.i] = l.settle(t, msgs[x.i], x, rs)
	}
}

// gapped reports whether a message's results hold it back for a gap.
func gapped(rs []changelog.ApplyResult) bool {
	for _, x := range rs {
		if x.Outcome == changelog.Gap {
			return true
		}
	}
	return false
}

// settle counts what applying a message did and acks it.
func (l *Link) settle(t *Tally, m Msg, x inbound, rs []changelog.ApplyResult) Verdict {
	for j, ev := range x.evs {
		t.Outcomes.add(rs[j])
		if rs[j].Outcome == changelog.Changed || rs[j].Outcome == changelog.Obsolete {
			t.LastHLC = max(t.LastHLC, ev.HLC)
		}
		t.observeClock(l.log, rs[j], ev)
	}
	return l.ack(m)
}

// applyFailed handles a batch the store did not apply. While shutting
// down (ctx done, or the store closed) the messages are not at fault: they
// are nak'ed for redelivery at once and do not count towards MaxDeliver.
// When the store rejected an event's content, the messages are applied one
// by one so only the bad one is dead-lettered. Otherwise every message is
// redelivered after RetryDelay, and one that failed MaxDeliver times is
// dead-lettered.
func (l *Link) applyFailed(ctx context.Context, t *Tally, msgs []Msg, in []inbound, out []Verdict, err error) {
	t.ApplyErrors++
	if ctx.Err() != nil || errors.Is(err, changelog.ErrClosed) {
		for _, x := range in {
			out[x.i] = Verdict{Action: Nak}
		}
		return
	}
	if errors.Is(err, changelog.ErrBadInput) {
		if len(in) == 1 {
			out[in[0].i] = Verdict{Action: DeadLetter, Reason: fmt.Errorf("%w: the store refused it: %w", ErrRejected, err)}
			return
		}
		for _, x := range in {
			l.apply(ctx, t, msgs, []inbound{x}, out)
		}
		return
	}
	l.log.Warn("apply failed; the batch is redelivered later", "upstream", l.cfg.Up, "events", len(in), "err", err)
	for _, x := range in {
		seq := msgs[x.i].Seq
		l.failures[seq]++
		if n := l.failures[seq]; n >= l.cfg.MaxDeliver {
			out[x.i] = Verdict{Action: DeadLetter, Reason: fmt.Errorf("%w: failed to apply %d times: %w", ErrRejected, n, err)}
			continue
		}
		out[x.i] = Verdict{Action: Nak, Delay: l.cfg.RetryDelay}
	}
}

func events(in []inbound) []*event.Event {
	evs := make([]*event.Event, 0, len(in))
	for _, x := range in {
		evs = append(evs, x.evs...)
	}
	return evs
}

// wholes maps the first op of each shard's part of a transaction among in
// to what is forwarded in its place; nil when there is none.
func wholes(in []inbound) map[*event.Event][]*event.Event {
	var out map[*event.Event][]*event.Event
	for _, x := range in {
		if x.part {
			if out == nil {
				out = map[*event.Event][]*event.Event{}
			}
			out[x.evs[0]] = x.fw
		}
	}
	return out
}
