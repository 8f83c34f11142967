// Package sim simulates replicator deterministically, at two levels, with
// real changelog.Stores on in-memory filesystems and nothing that reads
// the wall clock.
//
// World runs the whole protocol on bridge/core's decisions under one
// scheduler and a virtual clock: each DC's store (on a crashable
// filesystem: a crash keeps only what was synced), its JetStream stream
// (messages with subjects, headers and dedup ids, outliving the DC),
// durable pull consumers with acks, naks and redeliveries judged by
// core.Link, gap repair and catch-up through core.Repairer and
// core.ServeRepair, applied-vector reports, liveness and healing by
// core.Healer (heal consumers placed by core.HealStart, reconciled by
// core.Reconcile), outbox trimming, tombstone purging and stream
// retention (core.Retention), and HLCs (pkg/hlc) on skewed clocks. Faults
// are methods: Crash and Restart, Cut and Mend, LoseMsg (a stream loses a
// message), lost deliveries and lost acks, and clock skew. TestRandom
// drives it with seeded random schedules in mesh, ring and star under six
// fault mixes; the transcripts that start with "world" drive it step by
// step (ring forwarding, a dead ring member healed around and coming
// back, a star losing its hub, a gap held until repair can fill it).
//
// Cluster works one message at a time: the DCs' outboxes joined along
// the topology (core.Plan) by FIFO links that the test drains, drops,
// reorders and duplicates message by message, with gap repair by
// core.Repairer. TestRandomSchedules and the other transcripts drive it,
// and check each delivery against the pure data model (pkg/dvv).
//
// Both check the contract of docs/DESIGN.md (convergence, no lost writes,
// bounded siblings, deletes that stay deleted, transactions visible whole
// or not at all, no loops) against the stores themselves, not a model of
// them. The usual loops are:
//
//	w, _ := sim.NewWorld(sim.WorldOptions{DCs: []string{"dc1", "dc2", "dc3"}, Topology: config.Ring})
//	defer w.Close()
//	w.Write("dc1", sim.Op{Key: "k", Value: []byte("v")})
//	w.Crash("dc2")
//	w.Run(10 * time.Second) // publish, deliver, report, heal, repair
//	w.Settle(time.Minute)   // restart, mend, run until every DC has everything
//	w.Digests()
//
//	c, _ := sim.New(sim.Options{DCs: []string{"dc1", "dc2"}, Partitions: 1})
//	defer c.Close()
//	c.Write("dc1", sim.Op{Key: "k", Value: []byte("v")})
//	c.WriteTxn("dc2", []sim.Op{{Key: "a", Value: []byte("1")}, {Key: "b", Delete: true}})
//	c.DeliverAll(nil)
//	c.ReportAll()
//	c.Purge("dc2")
//
// Neither starts a goroutine of its own (each store runs its committer);
// both are driven from one goroutine.
package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// ErrUnexpectedGap reports a Gap outcome the harness cannot explain: the
// event the store waits for is neither queued on the link nor dropped, so
// the store lost track of an event it was given in order.
var ErrUnexpectedGap = errors.New("sim: unexpected gap")

// ErrBadForward reports a forwarding DC whose outbox does not hold, for a
// message it applied and its plan forwards, exactly that message with the
// DC appended to its path (one entry per message; a transaction whole).
var ErrBadForward = errors.New("sim: bad forward")

// Options configure a Cluster.
type Options struct {
	// DCs names the DCs.
	DCs []string
	// Partitions is the partition count, the same at every DC.
	Partitions int
	// Resolvers picks each key's resolver, the same at every DC; nil means
	// siblings for all.
	Resolvers changelog.Resolvers
	// Topology is config.Mesh (the default), config.Ring (in DCs order) or
	// config.Star.
	Topology string
	// Hub is the star's hub; the first DC when empty.
	Hub string
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

// Peek reads the clock without moving it (changelog.Peeker): the time
// reads and the expirer compare expiries against.
func (c *Clock) Peek() uint64 { return c.last.Load() }

// DC is one datacenter: its store, its clock, its place in the topology
// and its filesystem.
type DC struct {
	ID    string
	Store *changelog.Store
	Clock *Clock
	Plan  core.Plan
	fs    vfs.FS
	// published is the last outbox index sent down the DC's links; the
	// links play the DC's stream, which outlives a restart.
	published uint64
}

// Link is a directed connection from one DC to another: the consumer at To
// of From's stream.
type Link struct{ From, To string }

func (l Link) String() string { return l.From + "->" + l.To }

// Ref names one event: its origin, partition and sequence.
type Ref struct {
	Origin    string
	Partition uint32
	Seq       uint64
}

func (r Ref) String() string {
	return fmt.Sprintf("%s:%d (partition %d)", r.Origin, r.Seq, r.Partition)
}

// refsOf returns the refs of the events of one message.
func refsOf(evs []*event.Event) []Ref {
	out := make([]Ref, len(evs))
	for i, ev := range evs {
		out[i] = Ref{ev.Origin, ev.Partition, ev.Seq}
	}
	return out
}

// decode returns the events one message carries: one event, or a
// transaction's ops.
func decode(b []byte) ([]*event.Event, error) {
	return event.DecodeMessage(b, event.DefaultLimits())
}

type link struct {
	queue [][]byte // encoded messages, head first
	last  []byte   // the last message popped, for Redeliver
	// missing holds the refs of each dropped message, oldest first, waiting
	// for repair.
	missing [][]Ref
	// disturbed is set once the harness dropped, reordered or re-sent a
	// message on the link; until then the link is FIFO and a gap on it is
	// a bug.
	disturbed bool
}

// Cluster is a set of DCs joined along a topology. It is driven from one
// goroutine.
type Cluster struct {
	opts  Options
	dcs   map[string]*DC
	links map[Link]*link
	keys  []Link // links in a stable order
	// filled holds, per DC, the first op of every message Fill applied
	// there from its origin: delivered later from a link, it must be a
	// duplicate.
	filled map[string]map[Ref]bool
}

// New opens one store per DC, each on its own in-memory filesystem, and
// lays the links out along the topology.
func New(opts Options) (*Cluster, error) {
	if len(opts.DCs) < 2 {
		return nil, fmt.Errorf("sim: want at least two DCs, got %v", opts.DCs)
	}
	if opts.Partitions < 1 {
		opts.Partitions = 1
	}
	if opts.Topology == "" {
		opts.Topology = config.Mesh
	}
	if opts.Topology == config.Star && opts.Hub == "" {
		opts.Hub = opts.DCs[0]
	}
	c := &Cluster{opts: opts, dcs: map[string]*DC{}, links: map[Link]*link{}, filled: map[string]map[Ref]bool{}}
	for _, id := range opts.DCs {
		if _, dup := c.dcs[id]; dup {
			c.Close()
			return nil, fmt.Errorf("sim: dc %q listed twice", id)
		}
		plan, err := core.NewPlan(opts.Topology, id, opts.DCs, opts.Hub)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("sim: %w", err)
		}
		d := &DC{ID: id, Clock: &Clock{}, Plan: plan, fs: vfs.NewMem()}
		if err := c.open(d); err != nil {
			c.Close()
			return nil, err
		}
		c.dcs[id] = d
		c.filled[id] = map[Ref]bool{}
		for _, up := range plan.Upstreams {
			l := Link{up, id}
			c.links[l] = &link{}
			c.keys = append(c.keys, l)
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

// Topology returns the topology the links follow.
func (c *Cluster) Topology() string { return c.opts.Topology }

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
	// TTL gives the value a time to live; a millisecond is 1<<16 ticks
	// of a DC's Clock.
	TTL time.Duration
	// Typed is a typed operation (incr, patch, add, remove) on a key whose
	// resolver is counter, fields or set.
	Typed *resolve.Op
}

func (op Op) write() changelog.WriteOp {
	return changelog.WriteOp{Key: op.Key, Value: op.Value, Delete: op.Delete, Context: op.Context, TTL: op.TTL, Typed: op.Typed}
}

// Expire has dc delete, as its expirer does, the expired values that are
// its to delete (changelog.Deleter, with every DC reachable), and sends
// each delete down dc's links. It returns how many it deleted.
func (c *Cluster) Expire(dc string) (int, error) {
	d, err := c.dc(dc)
	if err != nil {
		return 0, err
	}
	now := d.Store.Now()
	keys, err := d.Store.Due(now)
	if err != nil {
		return 0, err
	}
	mine := func(expirer string, _ uint32) bool {
		return changelog.Deleter(expirer, c.opts.DCs, func(string) bool { return false }) == dc
	}
	n := 0
	for _, key := range keys {
		res, ok, err := d.Store.Expire(context.Background(), key, now, mine)
		if err != nil {
			return n, fmt.Errorf("sim: expire %s at %s: %w", key, dc, err)
		}
		if !ok {
			continue
		}
		b, err := res.Event.Encode(nil)
		if err != nil {
			return n, fmt.Errorf("sim: encode %s: %w", res.Event.Dot, err)
		}
		c.send(d, b)
		n++
	}
	return n, nil
}

// Write commits op at dc and sends the outbox entry down every link out of
// dc.
func (c *Cluster) Write(dc string, op Op) (changelog.WriteResult, error) {
	d, err := c.dc(dc)
	if err != nil {
		return changelog.WriteResult{}, err
	}
	res, err := d.Store.Write(context.Background(), op.write())
	if err != nil {
		return res, fmt.Errorf("sim: write %s at %s: %w", op.Key, dc, err)
	}
	b, err := res.Event.Encode(nil)
	if err != nil {
		return res, fmt.Errorf("sim: encode %s: %w", res.Event.Dot, err)
	}
	c.send(d, b)
	return res, nil
}

// WriteTxn commits ops at dc as one transaction (changelog.Store.WriteTxn)
// and sends its one outbox entry down every link out of dc. Nothing is
// written when it fails.
func (c *Cluster) WriteTxn(dc string, ops []Op) ([]changelog.WriteResult, error) {
	d, err := c.dc(dc)
	if err != nil {
		return nil, err
	}
	wops := make([]changelog.WriteOp, len(ops))
	for i, op := range ops {
		wops[i] = op.write()
	}
	res, err := d.Store.WriteTxn(context.Background(), wops)
	if err != nil {
		return nil, fmt.Errorf("sim: transaction at %s: %w", dc, err)
	}
	evs := make([]*event.Event, len(res))
	for i, r := range res {
		evs[i] = r.Event
	}
	b, err := event.EncodeTxn(nil, evs)
	if err != nil {
		return res, fmt.Errorf("sim: encode the transaction of %s: %w", evs[0].Dot, err)
	}
	c.send(d, b)
	return res, nil
}

// send publishes a local write's one outbox entry, encoded as the store
// encodes it (the random schedules check the outbox holds these bytes),
// down every link out of d.
func (c *Cluster) send(d *DC, b []byte) {
	for _, l := range c.keys {
		if l.From == d.ID {
			c.links[l].queue = append(c.links[l].queue, b)
		}
	}
	d.published++
}

// publishEntries sends d's outbox entries past the last one published down
// every link out of d, as its publisher does to its stream, and returns
// them.
func (c *Cluster) publishEntries(d *DC) ([]changelog.OutboxEntry, error) {
	es, err := d.Store.ReadOutbox(d.published, math.MaxInt32)
	if err != nil {
		return nil, fmt.Errorf("sim: read %s's outbox: %w", d.ID, err)
	}
	for _, e := range es {
		for _, l := range c.keys {
			if l.From == d.ID {
				c.links[l].queue = append(c.links[l].queue, e.Data)
			}
		}
		d.published = e.Index
	}
	return es, nil
}

// Delivery is one message applied at the end of a link: one event, or the
// ops of one transaction.
type Delivery struct {
	Link Link
	// Events are what the message carries, in order.
	Events []*event.Event
	// Results holds each event's outcome; nil when the message was
	// dropped as a loop.
	Results []changelog.ApplyResult
	// Loop is set when To is the message's origin or already on its path:
	// it was neither applied nor forwarded (docs/DESIGN.md, invariant 7).
	Loop error
	// Requeued is set when an op met a gap and the message went to the
	// back of the link's queue.
	Requeued bool
	// Fetched is set for a message Fill fetched from its origin's outbox
	// (Link is then origin->To), not taken from the link.
	Fetched bool
	// Refilled is set for a message Fill applied at To earlier: taken from
	// the link now, every op must be a duplicate.
	Refilled bool
}

// Txn reports whether the message is a transaction.
func (d Delivery) Txn() bool { return len(d.Events) > 0 && d.Events[0].TxnOps > 0 }

// Held reports whether some op met a gap, which holds the whole message.
func (d Delivery) Held() bool {
	for _, r := range d.Results {
		if r.Outcome == changelog.Gap {
			return true
		}
	}
	return false
}

// Fresh reports whether some op was taken in sequence (changed or
// obsolete): the message was applied, not a duplicate.
func (d Delivery) Fresh() bool {
	for _, r := range d.Results {
		if r.Outcome == changelog.Changed || r.Outcome == changelog.Obsolete {
			return true
		}
	}
	return false
}

// Forwarded reports whether the store queued the message for forwarding.
func (d Delivery) Forwarded() bool {
	for _, r := range d.Results {
		if r.Forwarded {
			return true
		}
	}
	return false
}

// opString renders one event without its outcome.
func opString(ev *event.Event) string {
	s := ev.Dot.String() + " " + ev.Op.String() + " " + ev.Key
	if ev.Op != event.OpDelete {
		s += "=" + valueText(ev.Value)
	}
	s += " ctx=" + ev.Context.String()
	if len(ev.Path) > 1 {
		s += " path=(" + strings.Join(ev.Path, ",") + ")"
	}
	return s
}

// String renders the delivery as the transcripts show it: one line for an
// event, and for a transaction a line for the whole followed by one line
// per op.
func (d Delivery) String() string {
	via := d.Link.String()
	if d.Fetched {
		via += " (repair)"
	}
	if d.Loop != nil {
		if d.Txn() {
			return fmt.Sprintf("%s txn of %d ops from %s: dropped, %v", via, len(d.Events), d.Events[0].Origin, d.Loop)
		}
		return fmt.Sprintf("%s %s: dropped, %v", via, opString(d.Events[0]), d.Loop)
	}
	if !d.Txn() {
		ev, r := d.Events[0], d.Results[0]
		s := fmt.Sprintf("%s %s: %s", via, opString(ev), r.Outcome)
		if r.Forwarded {
			s += ", forwarded"
		}
		if d.Requeued {
			s += fmt.Sprintf(" (waits for seq %d; requeued)", r.Expected)
		}
		return s
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s txn hlc=%d ops=%d: ", via, d.Events[0].HLC, len(d.Events))
	switch {
	case d.Held():
		b.WriteString("held, waits for")
		for i, r := range d.Results {
			if ev := d.Events[i]; r.Outcome == changelog.Gap && r.Expected < ev.Seq {
				fmt.Fprintf(&b, " seq %d in partition %d", r.Expected, ev.Partition)
			}
		}
		if d.Requeued {
			b.WriteString(" (requeued)")
		}
	case !d.Fresh():
		b.WriteString("duplicate")
	default:
		b.WriteString("applied")
		if d.Forwarded() {
			b.WriteString(", forwarded")
		}
	}
	for i, ev := range d.Events {
		r := d.Results[i]
		what := r.Outcome.String()
		switch {
		case r.Outcome == changelog.Gap && r.Expected < ev.Seq:
			what = fmt.Sprintf("gap (waits for seq %d)", r.Expected)
		case r.Outcome == changelog.Gap:
			what = "held"
		}
		fmt.Fprintf(&b, "\n  %s: %s", opString(ev), what)
	}
	return b.String()
}

// Queued returns how many messages wait on link l.
func (c *Cluster) Queued(l Link) int {
	if q := c.links[l]; q != nil {
		return len(q.queue)
	}
	return 0
}

// Missing returns the dropped messages waiting for repair on link l, each
// by its first op.
func (c *Cluster) Missing(l Link) []Ref {
	q := c.links[l]
	if q == nil {
		return nil
	}
	out := make([]Ref, len(q.missing))
	for i, rs := range q.missing {
		out[i] = rs[0]
	}
	return out
}

// Pending counts the messages still to deliver: queued or dropped.
func (c *Cluster) Pending() int {
	n := 0
	for _, q := range c.links {
		n += len(q.queue) + len(q.missing)
	}
	return n
}

// Head decodes up to n messages at the head of link l, without popping
// them.
func (c *Cluster) Head(l Link, n int) ([][]*event.Event, error) {
	q, err := c.link(l)
	if err != nil {
		return nil, err
	}
	var out [][]*event.Event
	for _, b := range q.queue[:min(n, len(q.queue))] {
		evs, err := decode(b)
		if err != nil {
			return nil, fmt.Errorf("sim: decode on %s: %w", l, err)
		}
		out = append(out, evs)
	}
	return out, nil
}

// Deliver pops the head of link l and applies it at l.To; times > 1 applies
// the same bytes again (a duplicate delivery). A message that meets a gap
// is left queued, at the back of the link, and later attempts are skipped.
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
		ds, err := c.applyFromLink(l, [][]byte{b})
		out = append(out, ds...)
		if err != nil {
			return out, err
		}
		if ds[0].Requeued {
			break
		}
	}
	return out, nil
}

// DeliverBatch pops up to n messages off the head of link l and applies
// them at l.To in one Store.Apply, as one fetch of a pull consumer: a
// transaction is one message, so a fetch boundary never splits it. The
// messages that meet a gap go to the back of the link, in order.
func (c *Cluster) DeliverBatch(l Link, n int) ([]Delivery, error) {
	q, err := c.link(l)
	if err != nil {
		return nil, err
	}
	n = min(n, len(q.queue))
	if n == 0 {
		return nil, nil
	}
	bs := slices.Clone(q.queue[:n])
	q.queue = q.queue[n:]
	q.last = bs[n-1]
	return c.applyFromLink(l, bs)
}

// Redeliver applies again the last message Deliver popped from link l (a
// duplicate delivery); ok is false when nothing was delivered yet. A gap
// requeues it like any delivery.
func (c *Cluster) Redeliver(l Link) (d Delivery, ok bool, err error) {
	q, err := c.link(l)
	if err != nil || q.last == nil {
		return Delivery{}, false, err
	}
	ds, err := c.applyFromLink(l, [][]byte{q.last})
	if err != nil {
		return Delivery{}, false, err
	}
	return ds[0], true, nil
}

// applyFromLink applies bs, taken off link l, at l.To, checks each gap is
// explained, and requeues the held messages at the back of the link.
func (c *Cluster) applyFromLink(l Link, bs [][]byte) ([]Delivery, error) {
	q, err := c.link(l)
	if err != nil {
		return nil, err
	}
	to := c.dcs[l.To]
	ds, err := c.apply(l, bs)
	if err != nil {
		return ds, err
	}
	var after changelog.Applied
	for i := range ds {
		d := &ds[i]
		d.Refilled = d.Loop == nil && c.filled[l.To][refsOf(d.Events)[0]]
		if d.Held() {
			q.queue = append(q.queue, bs[i])
			d.Requeued = true
		}
	}
	for _, d := range ds {
		if d.Held() {
			if after == nil {
				after = to.Store.Applied()
			}
			if err := c.explainGap(l, d, after); err != nil {
				return ds, err
			}
		}
	}
	return ds, nil
}

// explainGap returns an ErrUnexpectedGap unless every op of d that waits
// for a gap waits for an event still on its way down link l: dropped,
// queued, or taken later in the same batch (after, the applied vector
// once the batch committed, covers it). A gap on a link that lost and
// reordered nothing is a bug.
func (c *Cluster) explainGap(l Link, d Delivery, after changelog.Applied) error {
	q := c.links[l]
	for i, ev := range d.Events {
		r := d.Results[i]
		if r.Outcome != changelog.Gap || r.Expected >= ev.Seq {
			continue
		}
		want := Ref{ev.Origin, ev.Partition, r.Expected}
		switch {
		case !q.disturbed:
			return fmt.Errorf("%w: %s at %s waits for %s, but %s is a FIFO link that lost nothing",
				ErrUnexpectedGap, ev.Dot, l.To, want, l)
		case !after.Covers(want.Origin, want.Partition, want.Seq) && !c.onItsWay(l, want):
			return fmt.Errorf("%w: %s at %s waits for %s, which is neither queued nor dropped on %s",
				ErrUnexpectedGap, ev.Dot, l.To, want, l)
		}
	}
	return nil
}

// apply decodes bs and applies them at l.To in one Store.Apply, with the
// forwarding the DC's plan asks for; a message whose origin is l.To or
// whose path holds it is dropped as a loop first, as the consumer does.
// It checks that the DC forwarded exactly the messages it should have,
// each whole, and sends what it forwarded down its links.
func (c *Cluster) apply(l Link, bs [][]byte) ([]Delivery, error) {
	to := c.dcs[l.To]
	ds := make([]Delivery, len(bs))
	var evs []*event.Event
	for i, b := range bs {
		msg, err := decode(b)
		if err != nil {
			return nil, fmt.Errorf("sim: decode on %s: %w", l, err)
		}
		ds[i] = Delivery{Link: l, Events: msg}
		if err := to.Plan.Accept(msg[0].Origin, msg[0].Path); err != nil {
			ds[i].Loop = err
			continue
		}
		to.Clock.Observe(msg[0].HLC)
		evs = append(evs, msg...)
	}
	if len(evs) == 0 {
		return ds, nil
	}
	res, err := to.Store.Apply(context.Background(), evs, forwardRule(to))
	if err != nil {
		return nil, fmt.Errorf("sim: apply at %s: %w", l.To, err)
	}
	if len(res) != len(evs) {
		return nil, fmt.Errorf("sim: apply at %s: %d results for %d events", l.To, len(res), len(evs))
	}
	k := 0
	for i := range ds {
		if ds[i].Loop == nil {
			ds[i].Results = res[k : k+len(ds[i].Events)]
			k += len(ds[i].Events)
		}
	}
	return ds, c.checkForwards(to, ds)
}

// checkForwards publishes what d's outbox gained while it applied ds, and
// checks that it is, in order, each applied message whose plan forwards it,
// whole, with d appended to its path.
func (c *Cluster) checkForwards(d *DC, ds []Delivery) error {
	if !d.Plan.Forward {
		return nil // Apply had no forward function: it cannot forward
	}
	var es []changelog.OutboxEntry
	if last := d.Store.Checkpoint() + d.Store.OutboxDepth(); last > d.published {
		var err error
		if es, err = c.publishEntries(d); err != nil {
			return err
		}
	}
	var want [][]byte
	var what []string
	for _, dl := range ds {
		if dl.Loop != nil || dl.Held() || !dl.Fresh() || !d.Plan.ShouldForward(dl.Events[0].Path, dl.Events[0].Origin) {
			continue
		}
		fw := make([]*event.Event, len(dl.Events))
		for i, ev := range dl.Events {
			cp := *ev
			cp.Path = append(slices.Clone(ev.Path), d.ID)
			fw[i] = &cp
		}
		var b []byte
		var err error
		if dl.Txn() {
			b, err = event.EncodeTxn(nil, fw)
		} else {
			b, err = fw[0].Encode(nil)
		}
		if err != nil {
			return fmt.Errorf("sim: encode the forward of %s: %w", dl.Events[0].Dot, err)
		}
		want = append(want, b)
		what = append(what, fmt.Sprintf("%s (%d ops)", dl.Events[0].Dot, len(dl.Events)))
	}
	if len(es) != len(want) {
		var got []string
		for _, e := range es {
			got = append(got, fmt.Sprintf("%s (%d ops)", e.Event.Dot, len(e.Events())))
		}
		return fmt.Errorf("%w: %s queued %d forwards %v, want %d %v", ErrBadForward, d.ID, len(es), got, len(want), what)
	}
	for i, e := range es {
		if !bytes.Equal(e.Data, want[i]) {
			var got []string
			for _, ev := range e.Events() {
				got = append(got, fmt.Sprintf("%s %s path=%v", ev.Dot, ev.Key, ev.Path))
			}
			return fmt.Errorf("%w: %s forwarded %s as %d ops %v, want the message whole with %s appended to its path",
				ErrBadForward, d.ID, what[i], len(e.Events()), got, d.ID)
		}
	}
	return nil
}

// onItsWay reports whether the event want is queued or dropped on link l.
func (c *Cluster) onItsWay(l Link, want Ref) bool {
	q := c.links[l]
	for _, rs := range q.missing {
		if slices.Contains(rs, want) {
			return true
		}
	}
	for _, b := range q.queue {
		evs, err := decode(b)
		if err == nil && slices.Contains(refsOf(evs), want) {
			return true
		}
	}
	return false
}

// Drop pops the head of link l and loses it, as NATS may; Repair sends it
// again from the origin's outbox. It returns the refs of the message's
// events; ok is false when the link is empty.
func (c *Cluster) Drop(l Link) ([]Ref, bool, error) {
	q, err := c.link(l)
	if err != nil || len(q.queue) == 0 {
		return nil, false, err
	}
	evs, err := decode(q.queue[0])
	if err != nil {
		return nil, false, fmt.Errorf("sim: decode on %s: %w", l, err)
	}
	q.queue = q.queue[1:]
	rs := refsOf(evs)
	q.disturbed = true
	if c.dcs[l.To].Plan.Accept(evs[0].Origin, evs[0].Path) == nil {
		// A message l.To would drop as a loop needs no repair.
		q.missing = append(q.missing, rs)
	}
	return rs, true, nil
}

// Repair re-sends the messages dropped on link l, read from each origin's
// outbox with OwnEvents, ahead of everything still queued (which was sent
// after them). A transaction comes back whole, as one message, from any of
// its sequences. It returns how many it re-sent.
func (c *Cluster) Repair(l Link) (int, error) {
	q, err := c.link(l)
	if err != nil || len(q.missing) == 0 {
		return 0, err
	}
	var resent [][]byte
	for _, rs := range q.missing {
		r := rs[0]
		bs, err := c.dcs[r.Origin].Store.OwnEvents(r.Partition, r.Seq, r.Seq, 1)
		if err != nil {
			return 0, fmt.Errorf("sim: repair %s on %s: %w", r, l, err)
		}
		if len(bs) != 1 {
			return 0, fmt.Errorf("sim: repair %s on %s: the origin's outbox no longer holds it", r, l)
		}
		evs, err := decode(bs[0])
		if err != nil {
			return 0, fmt.Errorf("sim: repair %s on %s: %w", r, l, err)
		}
		if got := refsOf(evs); !slices.Equal(got, rs) {
			return 0, fmt.Errorf("sim: repair %s on %s: the origin's outbox holds %v, but the link dropped %v", r, l, got, rs)
		}
		resent = append(resent, bs[0])
	}
	q.queue = append(resent, q.queue...)
	n := len(q.missing)
	q.missing = nil
	return n, nil
}

// Fill takes the head of link l and applies it at l.To as the bridge's
// consumer does: when an op meets a gap, gap repair (core.Repairer, the
// bridge's own) asks that op's origin for the events it misses
// (core.ServeRepair over its outbox), applies them, and the head is
// applied again.
// A transaction fetched for partition p that waits for a gap in partition
// q has q filled first. A message it fetched that is still dropped on a
// link into l.To leaves that link's dropped list; one still queued arrives
// later as a duplicate (Delivery.Refilled). It returns every delivery, the
// fetched ones marked Fetched, in the order applied.
func (c *Cluster) Fill(l Link) ([]Delivery, error) {
	q, err := c.link(l)
	if err != nil || len(q.queue) == 0 {
		return nil, err
	}
	b := q.queue[0]
	q.queue = q.queue[1:]
	q.last = b
	out, err := c.applyFromLink(l, [][]byte{b})
	if err != nil || !out[0].Requeued {
		return out, err
	}
	// The head waits: take it back from the end of the queue, repair, and
	// offer it again.
	q.queue = q.queue[:len(q.queue)-1]
	to := c.dcs[l.To]
	head := out[0]
	rp := core.Repairer{Store: repairStore{c: c, to: to, out: &out}, Source: clusterSource{c}, Forward: forwardRule(to), Partitions: c.opts.Partitions}
	for i, ev := range head.Events {
		r := head.Results[i]
		if r.Outcome != changelog.Gap || r.Expected >= ev.Seq {
			continue
		}
		if _, err := rp.Repair(context.Background(), ev.Origin, ev.Partition, r.Expected, ev.Seq-1); err != nil {
			return out, fmt.Errorf("sim: repair of %s's partition %d [%d, %d] at %s: %w", ev.Origin, ev.Partition, r.Expected, ev.Seq-1, to.ID, err)
		}
	}
	ds, err := c.applyFromLink(l, [][]byte{b})
	out = append(out, ds...)
	if err != nil {
		return out, err
	}
	if ds[0].Held() {
		return out, fmt.Errorf("%w: %s at %s still waits after its gaps were repaired from the origin", ErrUnexpectedGap, ds[0].Events[0].Dot, l.To)
	}
	return out, nil
}

// repairStore is a DC's store as gap repair (core.Repairer) sees it:
// every batch repair applies is recorded as fetched deliveries, checked for
// its forwards (checkForwards), and taken off the dropped lists of the
// links into the DC (forget).
type repairStore struct {
	c   *Cluster
	to  *DC
	out *[]Delivery
}

func (r repairStore) Applied() changelog.Applied { return r.to.Store.Applied() }

func (r repairStore) Apply(ctx context.Context, evs []*event.Event, forward func(*event.Event) bool) ([]changelog.ApplyResult, error) {
	var ds []Delivery
	for i := 0; i < len(evs); {
		n := max(evs[i].TxnOps, 1)
		if i+n > len(evs) {
			return nil, fmt.Errorf("sim: repair at %s brought %d of the %d ops of transaction %s", r.to.ID, len(evs)-i, n, evs[i].Dot)
		}
		ds = append(ds, Delivery{Link: Link{evs[i].Origin, r.to.ID}, Events: evs[i : i+n], Fetched: true})
		r.to.Clock.Observe(evs[i].HLC)
		i += n
	}
	res, err := r.to.Store.Apply(ctx, evs, forward)
	if err != nil {
		return nil, err
	}
	k := 0
	for i := range ds {
		ds[i].Results = res[k : k+len(ds[i].Events)]
		k += len(ds[i].Events)
		if !ds[i].Held() {
			r.c.forget(r.to.ID, refsOf(ds[i].Events))
		}
	}
	*r.out = append(*r.out, ds...)
	return res, r.c.checkForwards(r.to, ds)
}

// clusterSource answers repair requests from the origins' outboxes, as
// their sidecars do (core.ServeRepair).
type clusterSource struct{ c *Cluster }

func (s clusterSource) Fetch(_ context.Context, origin string, req core.RepairRequest) ([][]byte, error) {
	d := s.c.dcs[origin]
	if d == nil {
		return nil, fmt.Errorf("sim: no dc %q", origin)
	}
	return core.ServeRepair(d.Store, s.c.opts.Partitions, req)
}

// forwardRule returns d's forwarding rule for Store.Apply: nil when it
// forwards nothing.
func forwardRule(d *DC) func(*event.Event) bool {
	if !d.Plan.Forward {
		return nil
	}
	return func(ev *event.Event) bool { return d.Plan.ShouldForward(ev.Path, ev.Origin) }
}

// forget records that the message with refs rs was applied at dc by a
// repair, and takes it off the dropped lists of the links into dc.
func (c *Cluster) forget(dc string, rs []Ref) {
	c.filled[dc][rs[0]] = true
	for _, l := range c.keys {
		if l.To != dc {
			continue
		}
		q := c.links[l]
		q.missing = slices.DeleteFunc(q.missing, func(m []Ref) bool { return m[0] == rs[0] })
	}
}

// Swap exchanges the first two messages queued on l (a reordering), and
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

// Resend queues again, at the back of link l, the message of l.From's own
// event seq of partition p, read from its outbox: a redelivery long after
// the fact. It returns the refs of the message's events (a transaction's
// every op).
func (c *Cluster) Resend(l Link, p uint32, seq uint64) ([]Ref, error) {
	q, err := c.link(l)
	if err != nil {
		return nil, err
	}
	bs, err := c.dcs[l.From].Store.OwnEvents(p, seq, seq, 1)
	if err != nil {
		return nil, fmt.Errorf("sim: resend %s:%d on %s: %w", l.From, seq, l, err)
	}
	if len(bs) != 1 {
		return nil, fmt.Errorf("sim: resend %s:%d in partition %d on %s: the outbox no longer holds it", l.From, seq, p, l)
	}
	evs, err := decode(bs[0])
	if err != nil {
		return nil, fmt.Errorf("sim: resend %s:%d on %s: %w", l.From, seq, l, err)
	}
	q.queue = append(q.queue, bs[0])
	q.disturbed = true
	return refsOf(evs), nil
}

// DeliverAll delivers everything, a round at a time over the links in a
// stable order, repairing dropped messages when nothing else moves. fn, if
// not nil, sees every delivery.
func (c *Cluster) DeliverAll(fn func(Delivery)) error {
	// Forwarding multiplies messages by at most the DC count; far more
	// deliveries than that means a store that keeps forwarding.
	limit, n := 10000+100*c.Pending()*len(c.opts.DCs), 0
	for c.Pending() > 0 {
		if n > limit {
			return fmt.Errorf("sim: %d deliveries and %d messages still pending: the DCs keep sending each other messages", n, c.Pending())
		}
		progress := false
		for _, l := range c.keys {
			// Deliver one message of the link; messages that meet a gap go
			// to the back, so try each queued message at most once.
			for tries := c.Queued(l); tries > 0; tries-- {
				ds, err := c.Deliver(l, 1)
				if err != nil {
					return err
				}
				n++
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
			return fmt.Errorf("sim: %d messages pending and none can be delivered", c.Pending())
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
	for _, a := range c.opts.DCs {
		for _, b := range c.opts.DCs {
			if a == b {
				continue
			}
			if err := c.Report(a, b); err != nil {
				return err
			}
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

// Snapshot returns every key's state at dc, from one consistent snapshot
// (Store.Scan), as a prefix listing reads it.
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
	return digests(c.opts.DCs, func(id string) *changelog.Store { return c.dcs[id].Store })
}

// digests returns the digest of each DC's store, in hex, and whether they
// are all equal.
func digests(dcs []string, store func(dc string) *changelog.Store) (map[string]string, bool, error) {
	out := map[string]string{}
	equal := true
	for _, id := range dcs {
		d, err := store(id).Digest()
		if err != nil {
			return nil, false, fmt.Errorf("sim: digest of %s: %w", id, err)
		}
		out[id] = d.Hex()
		equal = equal && out[id] == out[dcs[0]]
	}
	return out, equal, nil
}
