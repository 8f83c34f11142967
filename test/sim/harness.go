// Package sim is a deterministic simulator of a mesh of DCs, each a real
// changelog.Store on an in-memory filesystem, joined by FIFO links that
// carry encoded events. The datadriven transcripts in testdata/ and the
// seeded random schedules drive it; both check the contract of docs/DESIGN.md
// (convergence, no lost writes, bounded siblings, deletes that stay
// deleted) against the store itself, not a model of it.
//
// The usual loop is:
//
//	c, _ := sim.New(sim.Options{DCs: []string{"dc1", "dc2"}, Partitions: 1})
//	defer c.Close()
//	c.Write("dc1", sim.Op{Key: "k", Value: []byte("v")})
//	c.DeliverAll(nil)
//	c.ReportAll()
//	c.Purge("dc2")
//
// Nothing here reads the wall clock or starts a goroutine of its own; each
// DC's HLC is a counter the harness moves.
package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// ErrUnexpectedGap reports a Gap outcome the harness cannot explain: the
// event the store waits for is neither queued on the link nor dropped, so
// the store lost track of an event it was given in order.
var ErrUnexpectedGap = errors.New("sim: unexpected gap")

// Options configure a Cluster.
type Options struct {
	// DCs names the DCs of the mesh.
	DCs []string
	// Partitions is the partition count, the same at every DC.
	Partitions int
	// Resolvers picks each key's resolver, the same at every DC; nil means
	// siblings for all.
	Resolvers changelog.Resolvers
}

// Clock is a deterministic hybrid logical clock: a counter that a local
// write bumps and a received event moves forward. It is safe for
// concurrent use (the store reads it on its committer goroutine).
type Clock struct{ last atomic.Uint64 }

var _ changelog.Clock = (*Clock)(nil)

// Now returns the next reading.
func (c *Clock) Now() uint64 { return c.last.Add(1) }

// Observe moves the clock to at least ts, as an HLC does on receive.
func (c *Clock) Observe(ts uint64) {
	for {
		cur := c.last.Load()
		if ts <= cur || c.last.CompareAndSwap(cur, ts) {
			return
		}
	}
}

// Advance moves the clock n ticks forward, as the passing of physical time.
func (c *Clock) Advance(n uint64) { c.last.Add(n) }

// DC is one datacenter: its store, its clock and its filesystem.
type DC struct {
	ID    string
	Store *changelog.Store
	Clock *Clock
	fs    vfs.FS
}

// Link is a directed connection from one DC to another.
type Link struct{ From, To string }

func (l Link) String() string { return l.From + "->" + l.To }

// Ref names one event: its origin, partition and sequence.
type Ref struct {
	Origin    string
	Partition uint32
	Seq       uint64
}

type link struct {
	queue   [][]byte // encoded events, head first
	last    []byte   // the last event popped, for Redeliver
	missing []Ref    // dropped events, oldest first, waiting for repair
	// disturbed is set once the harness dropped, reordered or re-sent an
	// event on the link; until then the link is FIFO and a gap on it is
	// a bug.
	disturbed bool
}

// Cluster is a full mesh of DCs. It is driven from one goroutine.
type Cluster struct {
	opts  Options
	dcs   map[string]*DC
	links map[Link]*link
	keys  []Link // links in a stable order
}

// New opens one store per DC, each on its own in-memory filesystem.
func New(opts Options) (*Cluster, error) {
	if len(opts.DCs) < 2 {
		return nil, fmt.Errorf("sim: want at least two DCs, got %v", opts.DCs)
	}
	if opts.Partitions < 1 {
		opts.Partitions = 1
	}
	c := &Cluster{opts: opts, dcs: map[string]*DC{}, links: map[Link]*link{}}
	for _, id := range opts.DCs {
		if _, dup := c.dcs[id]; dup {
			c.Close()
			return nil, fmt.Errorf("sim: dc %q listed twice", id)
		}
		d := &DC{ID: id, Clock: &Clock{}, fs: vfs.NewMem()}
		if err := c.open(d); err != nil {
			c.Close()
			return nil, err
		}
		c.dcs[id] = d
	}
	for _, a := range opts.DCs {
		for _, b := range opts.DCs {
			if a != b {
				l := Link{a, b}
				c.links[l] = &link{}
				c.keys = append(c.keys, l)
			}
		}
	}
	sort.Slice(c.keys, func(i, j int) bool {
		if c.keys[i].From != c.keys[j].From {
			return c.keys[i].From < c.keys[j].From
		}
		return c.keys[i].To < c.keys[j].To
	})
	return c, nil
}

func (c *Cluster) open(d *DC) error {
	st, err := changelog.Open("/"+d.ID, changelog.Options{
		DC:         d.ID,
		DCs:        slices.Clone(c.opts.DCs),
		Partitions: c.opts.Partitions,
		FS:         d.fs,
		NoSync:     true,
		Clock:      d.Clock,
		Resolvers:  c.opts.Resolvers,
	})
	if err != nil {
		return fmt.Errorf("sim: open %s: %w", d.ID, err)
	}
	d.Store = st
	return nil
}

// Restart closes dc's store and opens it again from the same files, as a
// clean restart of the sidecar: what the store keeps only in memory (the
// peers' reports) is gone.
func (c *Cluster) Restart(dc string) error {
	d, err := c.dc(dc)
	if err != nil {
		return err
	}
	if err := d.Store.Close(); err != nil {
		return fmt.Errorf("sim: close %s: %w", dc, err)
	}
	return c.open(d)
}

// Close closes every store. It is safe to call more than once.
func (c *Cluster) Close() error {
	var errs []error
	for _, d := range c.dcs {
		if d.Store != nil {
			errs = append(errs, d.Store.Close())
		}
	}
	return errors.Join(errs...)
}

// DCs returns the DC ids in the order they were configured.
func (c *Cluster) DCs() []string { return slices.Clone(c.opts.DCs) }

// Links returns every link in a stable order.
func (c *Cluster) Links() []Link { return slices.Clone(c.keys) }

// Partitions returns the partition count.
func (c *Cluster) Partitions() int { return c.opts.Partitions }

// DC returns the DC called id, or nil.
func (c *Cluster) DC(id string) *DC { return c.dcs[id] }

// Resolver returns the resolver for key.
func (c *Cluster) Resolver(key string) resolve.Resolver {
	if c.opts.Resolvers == nil {
		return resolve.Siblings()
	}
	return c.opts.Resolvers.For(key)
}

func (c *Cluster) dc(id string) (*DC, error) {
	d := c.dcs[id]
	if d == nil {
		return nil, fmt.Errorf("sim: no dc %q", id)
	}
	return d, nil
}

func (c *Cluster) link(l Link) (*link, error) {
	q := c.links[l]
	if q == nil {
		return nil, fmt.Errorf("sim: no link %s", l)
	}
	return q, nil
}

// Read returns the key's state at dc, as a client read sees it; ok is false
// when the DC holds nothing for the key.
func (c *Cluster) Read(dc, key string) (dvv.State, bool, error) {
	d, err := c.dc(dc)
	if err != nil {
		return dvv.State{}, false, err
	}
	return d.Store.Get(key)
}

// ReadContext returns the context a client gets from reading key at dc: the
// key's clock, and an empty (not nil) vector when the key is absent, since
// a client that read nothing still sent a context.
func (c *Cluster) ReadContext(dc, key string) (vclock.VV, error) {
	st, _, err := c.Read(dc, key)
	if err != nil {
		return nil, err
	}
	if st.Clock == nil {
		return vclock.VV{}, nil
	}
	return st.Clock.Clone(), nil
}

// Op is a local write.
type Op struct {
	Key    string
	Value  []byte
	Delete bool
	// Context is what the client read; nil when it sent none.
	Context vclock.VV
}

// Write commits op at dc and sends the encoded event down every link out
// of dc.
func (c *Cluster) Write(dc string, op Op) (changelog.WriteResult, error) {
	d, err := c.dc(dc)
	if err != nil {
		return changelog.WriteResult{}, err
	}
	res, err := d.Store.Write(context.Background(), changelog.WriteOp{
		Key: op.Key, Value: op.Value, Delete: op.Delete, Context: op.Context,
	})
	if err != nil {
		return res, fmt.Errorf("sim: write %s at %s: %w", op.Key, dc, err)
	}
	b, err := res.Event.Encode(nil)
	if err != nil {
		return res, fmt.Errorf("sim: encode %s: %w", res.Event.Dot, err)
	}
	for _, l := range c.keys {
		if l.From == dc {
			c.links[l].queue = append(c.links[l].queue, b)
		}
	}
	return res, nil
}

// Delivery is one event applied at the end of a link.
type Delivery struct {
	Link   Link
	Event  *event.Event
	Result changelog.ApplyResult
	// Requeued is set when the event met a gap and went to the back of
	// the link's queue.
	Requeued bool
}

func (d Delivery) String() string {
	ev := d.Event
	what := ev.Op.String() + " " + ev.Key
	if ev.Op != event.OpDelete {
		what += fmt.Sprintf("=%q", ev.Value)
	}
	s := fmt.Sprintf("%s %s %s ctx=%s: %s", d.Link, ev.Dot, what, ev.Context, d.Result.Outcome)
	if d.Requeued {
		s += fmt.Sprintf(" (waits for seq %d; requeued)", d.Result.Expected)
	}
	return s
}

// Queued returns how many events wait on link l.
func (c *Cluster) Queued(l Link) int {
	if q := c.links[l]; q != nil {
		return len(q.queue)
	}
	return 0
}

// Missing returns the dropped events waiting for repair on link l.
func (c *Cluster) Missing(l Link) []Ref {
	if q := c.links[l]; q != nil {
		return slices.Clone(q.missing)
	}
	return nil
}

// Pending counts the events still to deliver: queued or dropped.
func (c *Cluster) Pending() int {
	n := 0
	for _, q := range c.links {
		n += len(q.queue) + len(q.missing)
	}
	return n
}

// Deliver pops the head of link l and applies it at l.To; times > 1 applies
// the same bytes again (a duplicate delivery). An event that meets a gap is
// left queued, at the back of the link, and later attempts are skipped.
func (c *Cluster) Deliver(l Link, times int) ([]Delivery, error) {
	q, err := c.link(l)
	if err != nil {
		return nil, err
	}
	if len(q.queue) == 0 {
		return nil, nil
	}
	b := q.queue[0]
	q.queue = q.queue[1:]
	q.last = b
	var out []Delivery
	for i := 0; i < max(times, 1); i++ {
		d, err := c.apply(l, b)
		if err != nil {
			return out, err
		}
		out = append(out, d)
		if d.Requeued {
			break
		}
	}
	return out, nil
}

// Peek decodes the event at the head of link l; nil when the link is
// empty.
func (c *Cluster) Peek(l Link) (*event.Event, error) {
	q, err := c.link(l)
	if err != nil || len(q.queue) == 0 {
		return nil, err
	}
	return event.Decode(q.queue[0], event.DefaultLimits())
}

// Redeliver applies again the last event Deliver popped from link l (a
// duplicate delivery); ok is false when nothing was delivered yet. A gap
// requeues it like any delivery.
func (c *Cluster) Redeliver(l Link) (d Delivery, ok bool, err error) {
	q, err := c.link(l)
	if err != nil || q.last == nil {
		return Delivery{}, false, err
	}
	d, err = c.apply(l, q.last)
	return d, err == nil, err
}

// apply decodes b and applies it at l.To. On a gap it checks that the
// missing event is still on its way, and requeues b at the back.
func (c *Cluster) apply(l Link, b []byte) (Delivery, error) {
	ev, err := event.Decode(b, event.DefaultLimits())
	if err != nil {
		return Delivery{}, fmt.Errorf("sim: decode on %s: %w", l, err)
	}
	to := c.dcs[l.To]
	to.Clock.Observe(ev.HLC)
	res, err := to.Store.Apply(context.Background(), []*event.Event{ev}, nil)
	if err != nil {
		return Delivery{}, fmt.Errorf("sim: apply %s at %s: %w", ev.Dot, l.To, err)
	}
	d := Delivery{Link: l, Event: ev, Result: res[0]}
	if d.Result.Outcome == changelog.Gap {
		want := Ref{ev.Origin, ev.Partition, d.Result.Expected}
		if !c.links[l].disturbed {
			return d, fmt.Errorf("%w: %s at %s waits for %s:%d in partition %d, but %s is a FIFO link that lost nothing",
				ErrUnexpectedGap, ev.Dot, l.To, want.Origin, want.Seq, want.Partition, l)
		}
		if !c.onItsWay(l, want) {
			return d, fmt.Errorf("%w: %s at %s waits for %s:%d in partition %d, which is neither queued nor dropped on %s",
				ErrUnexpectedGap, ev.Dot, l.To, want.Origin, want.Seq, want.Partition, l)
		}
		q := c.links[l]
		q.queue = append(q.queue, b)
		d.Requeued = true
	}
	return d, nil
}

// onItsWay reports whether the event want is queued or dropped on link l.
func (c *Cluster) onItsWay(l Link, want Ref) bool {
	q := c.links[l]
	if slices.Contains(q.missing, want) {
		return true
	}
	for _, b := range q.queue {
		ev, err := event.Decode(b, event.DefaultLimits())
		if err == nil && (Ref{ev.Origin, ev.Partition, ev.Seq}) == want {
			return true
		}
	}
	return false
}

// Drop pops the head of link l and loses it, as NATS may; Repair sends it
// again from the origin's outbox. ok is false when the link is empty.
func (c *Cluster) Drop(l Link) (Ref, bool, error) {
	q, err := c.link(l)
	if err != nil || len(q.queue) == 0 {
		return Ref{}, false, err
	}
	ev, err := event.Decode(q.queue[0], event.DefaultLimits())
	if err != nil {
		return Ref{}, false, fmt.Errorf("sim: decode on %s: %w", l, err)
	}
	q.queue = q.queue[1:]
	r := Ref{ev.Origin, ev.Partition, ev.Seq}
	q.missing = append(q.missing, r)
	q.disturbed = true
	return r, true, nil
}

// Repair re-sends the events dropped on link l, read from the origin's
// outbox with OwnEvents, ahead of everything still queued (which was sent
// after them). It returns how many it re-sent.
func (c *Cluster) Repair(l Link) (int, error) {
	q, err := c.link(l)
	if err != nil || len(q.missing) == 0 {
		return 0, err
	}
	var resent [][]byte
	for _, r := range q.missing {
		bs, err := c.dcs[r.Origin].Store.OwnEvents(r.Partition, r.Seq, r.Seq, 1)
		if err != nil {
			return 0, fmt.Errorf("sim: repair %s:%d on %s: %w", r.Origin, r.Seq, l, err)
		}
		if len(bs) != 1 {
			return 0, fmt.Errorf("sim: repair %s:%d in partition %d on %s: the origin's outbox no longer holds it", r.Origin, r.Seq, r.Partition, l)
		}
		resent = append(resent, bs[0])
	}
	q.queue = append(resent, q.queue...)
	n := len(q.missing)
	q.missing = nil
	return n, nil
}

// Swap exchanges the first two events queued on l (a reordering), and
// reports whether there were two to swap.
func (c *Cluster) Swap(l Link) (bool, error) {
	q, err := c.link(l)
	if err != nil || len(q.queue) < 2 {
		return false, err
	}
	q.queue[0], q.queue[1] = q.queue[1], q.queue[0]
	q.disturbed = true
	return true, nil
}

// Resend queues again, at the back of link l, the origin's own event seq of
// partition p, read from its outbox: a redelivery long after the fact.
func (c *Cluster) Resend(l Link, p uint32, seq uint64) error {
	q, err := c.link(l)
	if err != nil {
		return err
	}
	bs, err := c.dcs[l.From].Store.OwnEvents(p, seq, seq, 1)
	if err != nil {
		return fmt.Errorf("sim: resend %s:%d on %s: %w", l.From, seq, l, err)
	}
	if len(bs) != 1 {
		return fmt.Errorf("sim: resend %s:%d in partition %d on %s: the outbox no longer holds it", l.From, seq, p, l)
	}
	q.queue = append(q.queue, bs[0])
	q.disturbed = true
	return nil
}

// DeliverAll delivers everything, a round at a time over the links in a
// stable order, repairing dropped events when nothing else moves. fn, if
// not nil, sees every delivery.
func (c *Cluster) DeliverAll(fn func(Delivery)) error {
	for c.Pending() > 0 {
		progress := false
		for _, l := range c.keys {
			// Deliver one event of the link; events that meet a gap go to
			// the back, so try each queued event at most once.
			for tries := c.Queued(l); tries > 0; tries-- {
				ds, err := c.Deliver(l, 1)
				if err != nil {
					return err
				}
				d := ds[0]
				if fn != nil {
					fn(d)
				}
				if !d.Requeued {
					progress = true
					break
				}
			}
		}
		if progress {
			continue
		}
		repaired := 0
		for _, l := range c.keys {
			n, err := c.Repair(l)
			if err != nil {
				return err
			}
			repaired += n
		}
		if repaired == 0 {
			return fmt.Errorf("sim: %d events pending and none can be delivered", c.Pending())
		}
	}
	return nil
}

// Report sends from's applied vector to to, as the status exchange does.
func (c *Cluster) Report(from, to string) error {
	f, err := c.dc(from)
	if err != nil {
		return err
	}
	t, err := c.dc(to)
	if err != nil {
		return err
	}
	t.Store.SetPeerApplied(from, f.Store.Applied())
	return nil
}

// ReportAll has every DC report its applied vector to every other.
func (c *Cluster) ReportAll() error {
	for _, l := range c.keys {
		if err := c.Report(l.From, l.To); err != nil {
			return err
		}
	}
	return nil
}

// Purge runs tombstone purging at dc and returns how many keys it removed.
func (c *Cluster) Purge(dc string) (int, error) {
	d, err := c.dc(dc)
	if err != nil {
		return 0, err
	}
	return d.Store.Purge(context.Background())
}

// Trim marks every outbox entry of dc published (JetStream acknowledged
// them all) and trims the entries every DC has applied, as far as the
// reports dc holds say; it returns how many went. Repair must still find
// every event some DC lacks.
func (c *Cluster) Trim(dc string) (int, error) {
	d, err := c.dc(dc)
	if err != nil {
		return 0, err
	}
	ctx := context.Background()
	if last := d.Store.Checkpoint() + d.Store.OutboxDepth(); last > d.Store.Checkpoint() {
		if err := d.Store.SetCheckpoint(ctx, last); err != nil {
			return 0, fmt.Errorf("sim: checkpoint %s at %d: %w", dc, last, err)
		}
	}
	return d.Store.TrimOutbox(ctx)
}

// Snapshot returns every key's state at dc.
func (c *Cluster) Snapshot(dc string) (map[string]dvv.State, error) {
	d, err := c.dc(dc)
	if err != nil {
		return nil, err
	}
	out := map[string]dvv.State{}
	err = d.Store.Scan("", func(key string, st dvv.State) error {
		out[key] = st.Clone()
		return nil
	})
	return out, err
}

// Digests returns each DC's state digest, in hex, and whether they are all
// equal.
func (c *Cluster) Digests() (map[string]string, bool, error) {
	out := map[string]string{}
	equal := true
	var first string
	for i, id := range c.opts.DCs {
		d, err := c.dcs[id].Store.Digest()
		if err != nil {
			return nil, false, fmt.Errorf("sim: digest of %s: %w", id, err)
		}
		out[id] = d.Hex()
		if i == 0 {
			first = out[id]
		} else if out[id] != first {
			equal = false
		}
	}
	return out, equal, nil
}
