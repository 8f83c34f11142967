package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/resolve"
)

// World runs the whole replication protocol the way the sidecars run it,
// on bridge/core's decisions, under one scheduler and a virtual clock:
//
//   - each DC is a real changelog.Store on a crashable in-memory
//     filesystem (vfs.NewCrashableMem); a crash keeps only what was synced
//     (CrashClone), as a power cut does, and a restart reopens the store
//     from that image;
//   - each DC's JetStream stream is a list of messages with their subjects,
//     headers and message ids (deduplicated for the dedup window); it lives
//     in NATS, so it outlives the DC's crashes and stays readable while the
//     DC is down;
//   - each link is a durable pull consumer on an upstream's stream, with
//     an ack floor, explicit acks and redeliveries (nak with a delay, or
//     after AckWait when nothing was heard), judged by core.Link.Receive;
//   - gap repair and catch-up ask the origin through core.Repairer, which
//     the origin answers with core.ServeRepair, when the two can talk;
//   - every DC reports its applied vector every ReportEvery; core.Healer
//     judges liveness from the reports and heals rings and stars around
//     dead DCs, with heal consumers placed by core.HealStart and
//     reconciled by core.Reconcile;
//   - every second the store trims its outbox and purges tombstones, and
//     the stream is trimmed by core.Retention;
//   - each DC's HLC (pkg/hlc) reads the virtual clock plus its own skew;
//   - a DC may run several sidecars (WorldOptions.Shards, invariant 16):
//     each shard has its own store owning its partitions, consumers
//     filtered to their subjects and every transaction subject, reports
//     speaking for its partitions (core.Coverage), healer, heal consumers
//     and retention, and publishes on the DC's one stream; requests go to
//     the owner of the key's partition; a remote transaction spanning the
//     DC's shards is prepared by each owner (coordinator) before any
//     applies (core.Shard), and forwarded whole by the owner of its first
//     op; a local one spanning them is refused, as pkg/node refuses it.
//
// Faults are methods: Crash and Restart (a DC, or one shard "<dc>/<i>"),
// Cut and Mend (a network partition
// between two DCs: no link, repair or report between them), LoseMsg (a
// stream loses a message, as JetStream may in a power failure), a
// delivery lost in flight (redelivered after AckWait, so later messages
// overtake it), a lost ack (a duplicate redelivery) and SetSkew; and
// WorldOptions.RepairLossPercent loses repair requests.
//
// Along the way it records violations (Violations): an event applied or
// forwarded twice at a DC, a first apply forwarded other than the
// reference rule says (shouldForward, written apart from core.Plan), a
// path with a loop, a message acked before it is applied, a dead letter,
// and a DC restarting without an own event its stream holds; with shards,
// counted per DC across them, and also an op applied by a shard that does
// not own its partition, and a transaction forwarded in part, or by two
// shards of a DC.
type World struct {
	opts    WorldOptions
	t       time.Duration      // virtual time since the epoch
	nodes   map[string]*node   // by name: the DC, or "<dc>/<i>" for a shard
	byDC    map[string][]*node // each DC's sidecars, in shard order
	streams map[string]*stream
	cons    map[string]*consumer // durable consumers by name: they live in NATS
	cuts    map[[2]string]bool
	rng     *rand.Rand
	notes   []string

	// Stats counts what happened, for the summaries.
	Stats map[string]int
	// applied counts, per DC, each event applied in sequence (Changed or
	// Obsolete), and forwarded each event forwarded: both at most once.
	applied, forwarded map[string]map[Ref]int
	violations         []string
	// txns holds each transaction written, by each of its ops, for the
	// reference forwarding rule of a sharded DC and the whole-forward
	// check; txnFwd, by DC and transaction, the shard that forwarded it.
	txns   map[Ref]*txnInfo
	txnFwd map[string]map[Ref]string
}

// txnInfo is one transaction as its origin wrote it.
type txnInfo struct {
	first Ref
	ops   []Ref
}

// WorldOptions configure a World.
type WorldOptions struct {
	DCs        []string
	Partitions int
	Topology   string // config.Mesh (default), config.Ring or config.Star
	Hub        string // the star's hub; the first DC when empty
	Standby    string // the star's standby hub; "" for none
	Resolvers  changelog.Resolvers
	// Skew is each DC's physical clock offset from the virtual clock.
	Skew map[string]time.Duration
	// MaxDrift is the HLC's drift bound (default 1 minute).
	MaxDrift time.Duration
	// HealAfter is the silence after which a DC is taken as dead (default
	// 5 s; negative turns healing off).
	HealAfter   time.Duration
	ReportEvery time.Duration // default 1 s
	RepairAfter time.Duration // catch-up delay, default 3 s
	GapDelay    time.Duration // default 200 ms
	AckWait     time.Duration // default 2 s
	// StreamKeep is how long the stream keeps acknowledged messages
	// (default 20 s).
	StreamKeep time.Duration
	// Batch bounds the messages of one delivery (default 8).
	Batch int
	// Seed seeds the crash images (which unsynced data survives).
	Seed uint64
	// UnsyncedPercent is the share of unsynced data a crash image keeps
	// (0: exactly what was synced).
	UnsyncedPercent int
	// RepairLossPercent is the share of repair requests that time out
	// (their request or reply lost).
	RepairLossPercent int
	// Shards is each DC's number of sidecars (invariant 16); absent or 1
	// for one. Shard i of S owns the partitions p with p mod S = i.
	Shards map[string]int
}

const maintEvery = time.Second

// epoch is the virtual clock's zero.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// node is one sidecar: a DC's only one, or one of its shards (invariant
// 16), with its state, which a crash loses, and its store.
type node struct {
	id     string // its DC
	name   string // the DC, or "<dc>/<i>" for shard i
	shard  string // "" or "<i>of<S>", as names.ShardConsumer takes it
	owned  []uint32
	static core.Plan
	fs     *vfs.MemFS
	store  *changelog.Store
	clock  *hlc.Clock
	up     bool
	healer *core.Healer
	pub    *core.Publisher
	catch  core.CatchUp
	ret    core.Retention
	links  map[string]*core.Link // by consumer name
	heal   map[string]core.Bypass
	// kept is when each peer's report last went into the purge history
	// (SetPeerApplied); the others only update the newest.
	kept           map[string]time.Duration
	nextReport     time.Duration
	nextMaint      time.Duration
	everConsumed   map[string]bool
	lastTransition string
	// cover judges when each peer last reported on every partition of
	// this sidecar (core.Coverage); covered is that time as the healer
	// last heard it; highest folds each peer's reports (bridge peerView).
	cover   *core.Coverage
	covered map[string]time.Time
	highest map[string]changelog.Applied
}

// owns reports whether n owns partition p: every one unless it is a shard.
func (n *node) owns(p uint32) bool { return n.owned == nil || slices.Contains(n.owned, p) }

// stream is one DC's JetStream stream.
type stream struct {
	dc   string
	msgs []*smsg // msgs[i] has sequence i+1
	ids  map[string]time.Duration
}

type smsg struct {
	seq     uint64
	subject string
	header  map[string][]string
	data    []byte
	gone    bool // lost or trimmed
	desc    string
}

// consumer is a durable pull consumer: the name and position live in
// NATS, not in the DC.
type consumer struct {
	name     string
	dc, up   string
	node     string   // the sidecar that reads it (its name)
	filter   []string // its filter subjects; nil for the whole stream
	heal     bool
	next     uint64 // the next sequence never delivered
	floor    uint64 // every sequence up to it is acknowledged
	acked    map[uint64]bool
	pending  map[uint64]time.Duration // delivered, not acknowledged: redelivery due
	dropNext int                      // deliveries to lose in flight
	loseAck  int                      // acks to lose
}

// NewWorld opens a store per DC and creates the streams and consumers the
// static plan wires.
func NewWorld(opts WorldOptions) (*World, error) {
	if opts.Partitions < 1 {
		opts.Partitions = 1
	}
	if opts.Topology == "" {
		opts.Topology = config.Mesh
	}
	if opts.Topology == config.Star && opts.Hub == "" {
		opts.Hub = opts.DCs[0]
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&opts.MaxDrift, time.Minute)
	def(&opts.HealAfter, 5*time.Second)
	def(&opts.ReportEvery, time.Second)
	def(&opts.RepairAfter, 3*time.Second)
	def(&opts.GapDelay, 200*time.Millisecond)
	def(&opts.AckWait, 2*time.Second)
	def(&opts.StreamKeep, 20*time.Second)
	if opts.Batch == 0 {
		opts.Batch = 8
	}
	w := &World{
		opts: opts, nodes: map[string]*node{}, byDC: map[string][]*node{}, streams: map[string]*stream{}, cons: map[string]*consumer{},
		cuts: map[[2]string]bool{}, rng: rand.New(rand.NewPCG(opts.Seed, 7)), Stats: map[string]int{},
		applied: map[string]map[Ref]int{}, forwarded: map[string]map[Ref]int{},
		txns: map[Ref]*txnInfo{}, txnFwd: map[string]map[Ref]string{},
	}
	for _, id := range opts.DCs {
		plan, err := core.NewPlan(opts.Topology, id, opts.DCs, opts.Hub)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("sim: %w", err)
		}
		w.streams[id] = &stream{dc: id, ids: map[string]time.Duration{}}
		w.applied[id] = map[Ref]int{}
		w.forwarded[id] = map[Ref]int{}
		w.txnFwd[id] = map[Ref]string{}
		count := max(opts.Shards[id], 1)
		if count > opts.Partitions {
			w.Close()
			return nil, fmt.Errorf("sim: %s has %d shards for %d partitions", id, count, opts.Partitions)
		}
		for i := range count {
			n := &node{id: id, name: id, static: plan, fs: vfs.NewCrashableMem()}
			if count > 1 {
				n.name, n.shard = fmt.Sprintf("%s/%d", id, i), fmt.Sprintf("%dof%d", i, count)
				for p := i; p < opts.Partitions; p += count {
					n.owned = append(n.owned, uint32(p))
				}
			}
			w.nodes[n.name] = n
			w.byDC[id] = append(w.byDC[id], n)
		}
		for _, n := range w.byDC[id] {
			if err := w.start(n); err != nil {
				w.Close()
				return nil, err
			}
		}
	}
	return w, nil
}

// sharded reports whether dc runs several sidecars.
func (w *World) sharded(dc string) bool { return len(w.byDC[dc]) > 1 }

// all returns every sidecar, in DC and shard order.
func (w *World) all() []*node {
	var out []*node
	for _, dc := range w.opts.DCs {
		out = append(out, w.byDC[dc]...)
	}
	return out
}

// owner returns dc's sidecar owning partition p.
func (w *World) owner(dc string, p uint32) *node {
	for _, n := range w.byDC[dc] {
		if n.owns(p) {
			return n
		}
	}
	return nil
}

// ownerOf returns dc's sidecar owning key's partition.
func (w *World) ownerOf(dc, key string) (*node, error) {
	ns := w.byDC[dc]
	if len(ns) == 0 {
		return nil, fmt.Errorf("sim: no dc %q", dc)
	}
	return w.owner(dc, event.PartitionOf(key, w.opts.Partitions)), nil
}

// sidecars returns the sidecars who names: a DC (all of its sidecars) or
// one shard ("<dc>/<i>").
func (w *World) sidecars(who string) ([]*node, error) {
	if ns := w.byDC[who]; ns != nil {
		return ns, nil
	}
	if n := w.nodes[who]; n != nil {
		return []*node{n}, nil
	}
	return nil, fmt.Errorf("sim: no dc or shard %q", who)
}

// Shards returns dc's sidecars by name: dc itself, or "<dc>/<i>" for each
// shard.
func (w *World) Shards(dc string) []string {
	var out []string
	for _, n := range w.byDC[dc] {
		out = append(out, n.name)
	}
	return out
}

// Close closes every open store. It is safe to call more than once.
func (w *World) Close() error {
	var errs []error
	for _, n := range w.all() {
		if n.store != nil {
			errs = append(errs, n.store.Close())
			n.store, n.up = nil, false
		}
	}
	return errors.Join(errs...)
}

// Now is the virtual time since the start.
func (w *World) Now() time.Duration { return w.t }

func (w *World) wall() time.Time { return epoch.Add(w.t) }

// physical is dc's physical clock: the virtual clock plus its skew.
func (w *World) physical(dc string) func() time.Time {
	return func() time.Time { return w.wall().Add(w.opts.Skew[dc]) }
}

// notef records a notable event for the transcripts (Notes) with its time.
func (w *World) notef(format string, args ...any) {
	w.notes = append(w.notes, fmt.Sprintf("%6.1fs ", w.t.Seconds())+fmt.Sprintf(format, args...))
}

// Notes returns and clears what happened since the last call.
func (w *World) Notes() []string {
	out := w.notes
	w.notes = nil
	return out
}

// violate records a broken invariant; the checks report them all.
func (w *World) violate(format string, args ...any) {
	msg := fmt.Sprintf("at %.1fs: ", w.t.Seconds()) + fmt.Sprintf(format, args...)
	w.violations = append(w.violations, msg)
	w.notef("VIOLATION %s", fmt.Sprintf(format, args...))
}

// Violations returns the invariants broken along the way.
func (w *World) Violations() []string { return slices.Clone(w.violations) }

// Node accessors.

// Store returns the store of dc's only sidecar, or of shard dc
// ("<dc>/<i>"), or nil while it is down or when dc has several.
func (w *World) Store(dc string) *changelog.Store {
	if n := w.nodes[dc]; n != nil {
		return n.store
	}
	return nil
}

// Up reports whether dc is running: every sidecar of a DC, or the shard
// named ("<dc>/<i>").
func (w *World) Up(dc string) bool {
	ns, err := w.sidecars(dc)
	if err != nil {
		return false
	}
	for _, n := range ns {
		if !n.up {
			return false
		}
	}
	return true
}

// DCs returns the DC ids in config order.
func (w *World) DCs() []string { return slices.Clone(w.opts.DCs) }

// Partitions returns the partition count.
func (w *World) Partitions() int { return w.opts.Partitions }

// Resolver returns the resolver for key.
func (w *World) Resolver(key string) resolve.Resolver {
	if w.opts.Resolvers == nil {
		return resolve.Siblings()
	}
	return w.opts.Resolvers.For(key)
}

// Healing returns the bypasses in effect at dc's only sidecar, or at
// shard dc ("<dc>/<i>").
func (w *World) Healing(dc string) []core.Bypass {
	n := w.nodes[dc]
	if n == nil || n.healer == nil {
		return nil
	}
	return slices.Clone(n.healer.Plan().Healing)
}

// start opens n's store from its filesystem and starts its sidecar: the
// consumers of its static plan (created once, kept in NATS), healing from
// scratch (heal consumers a previous run left are deleted), a new catch-up
// and retention state.
func (w *World) start(n *node) error {
	n.clock = hlc.New(w.physical(n.id), w.opts.MaxDrift)
	var owns func(uint32) bool
	if n.owned != nil {
		owns = n.owns
	}
	st, err := changelog.Open("/"+n.id, changelog.Options{
		DC:         n.id,
		DCs:        slices.Clone(w.opts.DCs),
		Partitions: w.opts.Partitions,
		FS:         n.fs,
		Clock:      n.clock,
		Resolvers:  w.opts.Resolvers,
		Now:        w.physical(n.id),
		Owns:       owns,
	})
	if err != nil {
		return fmt.Errorf("sim: open %s: %w", n.name, err)
	}
	n.clock.Restore(st.HLCHighWater())
	n.store, n.up = st, true
	if err := w.resume(n); err != nil {
		st.Close()
		n.store, n.up = nil, false
		return err
	}
	n.links = map[string]*core.Link{}
	n.heal = map[string]core.Bypass{}
	n.kept = map[string]time.Duration{}
	n.everConsumed = map[string]bool{}
	n.cover = core.NewCoverage(n.owned, w.opts.Partitions, w.wall())
	n.covered = map[string]time.Time{}
	n.highest = map[string]changelog.Applied{}
	if err := w.loadPrepared(n); err != nil {
		st.Close()
		n.store, n.up = nil, false
		return err
	}
	for name, c := range w.cons {
		if c.node == n.name && c.heal {
			delete(w.cons, name)
		}
	}
	for _, up := range n.static.Upstreams {
		name := names.ShardConsumer(n.id, up, n.shard)
		if w.cons[name] == nil {
			w.cons[name] = w.newConsumer(name, n, up, false, 0)
		}
	}
	if w.opts.HealAfter > 0 && n.static.CanHeal() {
		n.healer = core.NewHealer(n.static, nil, w.opts.Standby, w.opts.HealAfter, w.wall())
	} else {
		n.healer = nil
	}
	known := map[string]bool{}
	for _, dc := range w.opts.DCs {
		known[dc] = true
	}
	n.catch = core.CatchUp{After: w.opts.RepairAfter, Known: known}
	n.ret = core.Retention{Keep: w.opts.StreamKeep}
	n.nextReport = w.t + w.opts.ReportEvery
	n.nextMaint = w.t + maintEvery
	w.checkResume(n)
	return nil
}

// newConsumer makes n's consumer of up's stream: for a shard, filtered to
// its partitions' subjects and every transaction subject, as bridge's
// filterSubjects does; its sequences are the stream's.
func (w *World) newConsumer(name string, n *node, up string, heal bool, start uint64) *consumer {
	c := &consumer{name: name, dc: n.id, node: n.name, up: up, heal: heal, next: 1, acked: map[uint64]bool{}, pending: map[uint64]time.Duration{}}
	if n.owned != nil {
		for _, p := range n.owned {
			c.filter = append(c.filter, names.Subject(up, p))
		}
		c.filter = append(c.filter, names.TxnSubject(up), names.ShardTxnWildcard(up))
	}
	if start > 1 {
		c.next, c.floor = start, start-1
	}
	return c
}

// reads reports whether c's filter takes subject (a trailing "*" matches
// one token).
func (c *consumer) reads(subject string) bool {
	if c.filter == nil {
		return true
	}
	for _, f := range c.filter {
		if pre, ok := strings.CutSuffix(f, "*"); ok {
			if rest, ok := strings.CutPrefix(subject, pre); ok && rest != "" && !strings.Contains(rest, ".") {
				return true
			}
		} else if f == subject {
			return true
		}
	}
	return false
}

// resume starts n's publisher where its stream stands, as the bridge does
// at every start: each partition subject's last message names the highest
// own sequence sent (core.LastOwnSeq), and the transaction subject's last
// message every partition's (Repl-Seq-His); a store behind that is an
// invariant 1 violation here, since nothing restores old copies.
func (w *World) resume(n *node) error {
	n.pub = core.NewPublisher(n.id, w.opts.Partitions)
	n.pub.Sharded = n.owned != nil
	his := make([]uint64, w.opts.Partitions)
	last := map[string]*smsg{}
	for _, m := range w.streams[n.id].msgs {
		if !m.gone { // trimming keeps each subject's last message; a loss may not
			last[m.subject] = m
		}
	}
	txnSubjects := []string{core.TxnSubject(n.id)}
	for p := range w.opts.Partitions {
		if !n.owns(uint32(p)) {
			continue
		}
		if n.owned != nil {
			txnSubjects = append(txnSubjects, names.ShardTxnSubject(n.id, uint32(p)))
		}
		if m := last[core.Subject(n.id, uint32(p))]; m != nil {
			hi, err := core.LastOwnSeq(n.id, uint32(p), m.header)
			if err != nil {
				return fmt.Errorf("sim: resume %s: %w", n.name, err)
			}
			his[p] = max(his[p], hi)
		}
	}
	// Each transaction subject's last message names its publisher's
	// partitions' highest sequences; a shard takes its own.
	for _, subj := range txnSubjects {
		m := last[subj]
		if m == nil {
			continue
		}
		if v := m.header[core.HeaderSeqHis]; len(v) > 0 {
			named := make([]uint64, w.opts.Partitions)
			if err := core.ParseSeqHis(v[0], named); err != nil {
				return fmt.Errorf("sim: resume %s: %w", n.name, err)
			}
			for p, hi := range named {
				if n.owns(uint32(p)) {
					his[p] = max(his[p], hi)
				}
			}
		}
	}
	own := n.store.Applied()[n.id]
	for p, hi := range his {
		n.pub.Resume(uint32(p), hi)
		if hi > 0 && (p >= len(own) || own[p] < hi) {
			w.violate("(1) %s restarted behind its stream: partition %d's sequences reach %d there, %v in its store", n.name, p, hi, own)
		}
	}
	return nil
}

// checkResume checks, at a start, that the store holds every own event its
// stream holds: the publisher sends only durable entries, so a crash can
// never take back what other DCs may have seen (invariant 1; the bridge's
// resume of sequences would find nothing to recover).
func (w *World) checkResume(n *node) {
	own := n.store.Applied()[n.id]
	for _, m := range w.streams[n.id].msgs {
		if m.gone {
			continue
		}
		evs, err := event.DecodeMessage(m.data, event.DefaultLimits())
		if err != nil {
			w.violate("%s's stream holds an undecodable message %d: %v", n.id, m.seq, err)
			continue
		}
		for _, ev := range evs {
			if ev.Origin == n.id && n.owns(ev.Partition) && (int(ev.Partition) >= len(own) || own[ev.Partition] < ev.Seq) {
				w.violate("(1) %s restarted without its own event %s, which its stream holds (own sequences %v)", n.name, ev.Dot, own)
			}
		}
	}
}

// Crash cuts the power of who, a DC (each of its sidecars that is up) or
// one shard ("<dc>/<i>"): its store keeps only what was synced (and, with
// UnsyncedPercent, a random share of the rest), its sidecar's memory is
// gone, and it stays down until Restart. Its stream and its consumers
// live in NATS and stay; the DC's other shards keep running.
func (w *World) Crash(who string) error {
	ns, err := w.sidecars(who)
	if err != nil {
		return err
	}
	crashed := 0
	for _, n := range ns {
		if !n.up {
			continue
		}
		img := n.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: w.opts.UnsyncedPercent, RNG: w.rng})
		n.store.Close() // the old filesystem is discarded with whatever Close wrote
		n.store, n.up, n.fs = nil, false, img
		n.links, n.heal = nil, nil
		w.notef("%s crashes", n.name)
		w.Stats["crash"]++
		crashed++
	}
	if crashed == 0 {
		return fmt.Errorf("sim: %s is already down", who)
	}
	return nil
}

// Restart starts who (a DC: each of its sidecars that is down; or one
// shard) again from what its crash left.
func (w *World) Restart(who string) error {
	ns, err := w.sidecars(who)
	if err != nil {
		return err
	}
	started := 0
	for _, n := range ns {
		if n.up {
			continue
		}
		if err := w.start(n); err != nil {
			return err
		}
		w.notef("%s restarts", n.name)
		w.Stats["restart"]++
		started++
	}
	if started == 0 {
		return fmt.Errorf("sim: %s is running", who)
	}
	return nil
}

func pair(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// Cut partitions a from b: no link, repair or report between them.
func (w *World) Cut(a, b string) {
	if !w.cuts[pair(a, b)] {
		w.notef("network cut between %s and %s", a, b)
		w.Stats["cut"]++
	}
	w.cuts[pair(a, b)] = true
}

// Mend ends the cut between a and b.
func (w *World) Mend(a, b string) {
	if w.cuts[pair(a, b)] {
		w.notef("network between %s and %s mended", a, b)
	}
	delete(w.cuts, pair(a, b))
}

// MendAll ends every cut.
func (w *World) MendAll() {
	for _, k := range slices.SortedFunc(maps.Keys(w.cuts), func(x, y [2]string) int { return strings.Compare(x[0]+x[1], y[0]+y[1]) }) {
		w.Mend(k[0], k[1])
	}
}

// Cuts returns the cut pairs.
func (w *World) Cuts() [][2]string {
	return slices.SortedFunc(maps.Keys(w.cuts), func(x, y [2]string) int { return strings.Compare(x[0]+x[1], y[0]+y[1]) })
}

// reach reports whether sidecars a and b can talk: both up and their DCs
// not cut apart.
func (w *World) reach(a, b *node) bool {
	return a != nil && b != nil && a.up && b.up && !w.cuts[pair(a.id, b.id)]
}

// reads reports whether sidecar n can read up's stream: the stream lives
// in NATS, so it stays readable while up's sidecars are down, but not
// across a cut.
func (w *World) reads(n *node, up string) bool {
	return n.up && !w.cuts[pair(n.id, up)]
}

// SetSkew sets dc's clock offset.
func (w *World) SetSkew(dc string, d time.Duration) {
	if w.opts.Skew == nil {
		w.opts.Skew = map[string]time.Duration{}
	}
	w.opts.Skew[dc] = d
}

// Errors of requests at a sharded DC.
var (
	// errShardDown: the shard owning the key's partition is down (503).
	errShardDown = errors.New("sim: the shard owning the key's partition is down")
	// errTxnSpansShards: a local transaction whose keys belong to more
	// than one shard of the DC is refused (409, node.ErrTxnSpansShards).
	errTxnSpansShards = errors.New("sim: the transaction's keys belong to more than one shard of this DC")
	// errHeld: a read of a key a prepared transaction spanning the DC's
	// shards holds waits, and past context_wait is refused (503).
	errHeld = errors.New("sim: a transaction spanning this DC's shards holds the key")
)

// up returns the live sidecar owning key at dc.
func (w *World) upOwner(dc, key string) (*node, error) {
	n, err := w.ownerOf(dc, key)
	if err != nil {
		return nil, err
	}
	if !n.up {
		if w.sharded(dc) {
			return nil, fmt.Errorf("%w: %s", errShardDown, n.name)
		}
		return nil, fmt.Errorf("sim: %s is down", dc)
	}
	return n, nil
}

// Write commits op at dc, a local write as the HTTP API makes it: at a
// sharded DC, by the shard owning the key's partition.
func (w *World) Write(dc string, op Op) (changelog.WriteResult, error) {
	n, err := w.upOwner(dc, op.Key)
	if err != nil {
		return changelog.WriteResult{}, err
	}
	return n.store.Write(context.Background(), op.write())
}

// WriteTxn commits ops at dc as one transaction: at a sharded DC, by the
// shard owning every key, and refused (errTxnSpansShards) when the keys
// belong to more than one shard, as pkg/node's txnOwner refuses it.
func (w *World) WriteTxn(dc string, ops []Op) ([]changelog.WriteResult, error) {
	if len(ops) == 0 {
		return nil, errors.New("sim: a transaction without ops")
	}
	n, err := w.upOwner(dc, ops[0].Key)
	if err != nil {
		return nil, err
	}
	wops := make([]changelog.WriteOp, len(ops))
	for i, op := range ops {
		if o, _ := w.ownerOf(dc, op.Key); o != n {
			return nil, fmt.Errorf("%w: %q is %s's, %q %s's", errTxnSpansShards, ops[0].Key, n.name, op.Key, o.name)
		}
		wops[i] = op.write()
	}
	res, err := n.store.WriteTxn(context.Background(), wops)
	if err == nil && len(res) > 0 {
		t := &txnInfo{}
		for _, r := range res {
			t.ops = append(t.ops, Ref{r.Event.Origin, r.Event.Partition, r.Event.Seq})
		}
		t.first = t.ops[0]
		for _, ref := range t.ops {
			w.txns[ref] = t
		}
	}
	return res, err
}

// Read returns key's state at dc: at a sharded DC, its owner's, and
// errHeld while a prepared transaction holds the key there.
func (w *World) Read(dc, key string) (st dvv.State, ok bool, err error) {
	n, err := w.upOwner(dc, key)
	if err != nil {
		return st, false, err
	}
	if held, err := w.holds(n, key); err != nil || held {
		if err == nil {
			err = fmt.Errorf("%w: %s at %s", errHeld, key, n.name)
		}
		return st, false, err
	}
	return n.store.Get(key)
}

// Publish sends the durable outbox entries past its checkpoint of each
// live sidecar of who (a DC, or one shard) to the DC's stream, as its
// publisher does, and moves the checkpoint. It returns how many it sent.
func (w *World) Publish(who string) (int, error) {
	ns, err := w.sidecars(who)
	if err != nil {
		return 0, err
	}
	sent := 0
	for _, n := range ns {
		if !n.up {
			continue
		}
		k, err := w.publish(n)
		sent += k
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

func (w *World) publish(n *node) (int, error) {
	dc := n.id
	es, err := n.store.ReadOutbox(n.store.Checkpoint(), 256)
	if err != nil || len(es) == 0 {
		return 0, err
	}
	s := w.streams[dc]
	for _, e := range es {
		ev := e.Event
		id := event.MsgID(ev.Origin, ev.Partition, ev.Seq)
		if at, dup := s.ids[id]; dup && w.t-at < 2*time.Minute {
			w.Stats["publish deduplicated"]++
			continue
		}
		s.ids[id] = w.t
		pm := n.pub.Message(e)
		m := &smsg{seq: uint64(len(s.msgs) + 1), subject: pm.Subject, header: pm.Header, data: pm.Data, desc: ev.Dot.String()}
		if e.Txn != nil {
			m.desc = fmt.Sprintf("txn %s (%d ops)", ev.Dot, len(e.Txn))
		}
		if len(ev.Path) > 1 {
			m.desc += " path=(" + strings.Join(ev.Path, ",") + ")"
			w.checkForward(n, ev)
			if e.Txn != nil {
				w.checkWhole(n, e.Txn)
			}
		}
		s.msgs = append(s.msgs, m)
		w.Stats["published"]++
	}
	if err := n.store.SetCheckpoint(context.Background(), es[len(es)-1].Index); err != nil {
		return 0, fmt.Errorf("sim: checkpoint %s: %w", dc, err)
	}
	return len(es), nil
}

// checkForward checks a copy n forwarded against the topology's reference
// rule, written here apart from core.Plan: never in a mesh; in a ring only
// when the next DC is neither the origin nor on the path; in a star only
// at the hub, for a leaf's event (or at the standby while it relays). A
// forward back to the origin or through a DC twice is a loop.
func (w *World) checkForward(n *node, ev *event.Event) {
	path := ev.Path // with n appended
	seen := map[string]bool{}
	for _, dc := range path {
		if seen[dc] {
			w.violate("(7) %s forwarded %s with a loop in its path %v", n.id, ev.Dot, path)
			return
		}
		seen[dc] = true
	}
	prior := path[:len(path)-1]
	switch w.opts.Topology {
	case config.Mesh:
		w.violate("(7) %s forwarded %s in a mesh", n.id, ev.Dot)
	case config.Ring:
		i := slices.Index(w.opts.DCs, n.id)
		next := w.opts.DCs[(i+1)%len(w.opts.DCs)]
		if next == ev.Origin || slices.Contains(prior, next) {
			w.violate("(7) %s forwarded %s (path %v) towards %s, which already has it", n.id, ev.Dot, prior, next)
		}
	case config.Star:
		if n.id != w.opts.Hub && n.id != w.opts.Standby {
			w.violate("(7) leaf %s forwarded %s", n.id, ev.Dot)
		}
	}
}

// checkWhole checks a transaction n forwarded: a transaction leaves a DC
// whole, with every op its origin wrote, and once (invariant 16: only the
// owner of its first op's partition forwards it; the stream's dedup
// window hides a second copy for a while, not for good).
func (w *World) checkWhole(n *node, ops []*event.Event) {
	first := Ref{ops[0].Origin, ops[0].Partition, ops[0].Seq}
	t := w.txns[first]
	if t == nil {
		w.violate("(16) %s forwarded a transaction starting at %s, which no origin wrote as a transaction's first op", n.name, first)
		return
	}
	var got []Ref
	for _, ev := range ops {
		got = append(got, Ref{ev.Origin, ev.Partition, ev.Seq})
	}
	if !slices.Equal(got, t.ops) {
		w.violate("(16) %s forwarded part of transaction %s: ops %v of %v", n.name, t.first, got, t.ops)
	}
	if by, ok := w.txnFwd[n.id][t.first]; ok && by != n.name {
		w.violate("(16) %s forwarded transaction %s, which %s of the same DC forwarded already", n.name, t.first, by)
	}
	w.txnFwd[n.id][t.first] = n.name
}

// shouldForward is the reference forwarding rule, written here apart from
// core.Plan (docs/DESIGN.md, "Topologies" and "Topology healing"): whether
// n forwards ev, received with its path, when it first applies it. A mesh
// never forwards; a ring DC forwards unless the next DC is the origin or
// on the path, healing or not; the star's hub forwards every leaf's event,
// and the standby, while it stands in for a dead hub, every leaf's event
// that did not pass the hub.
func (w *World) shouldForward(n *node, ev *event.Event) bool {
	if t := w.txns[Ref{ev.Origin, ev.Partition, ev.Seq}]; t != nil && n.owned != nil && !n.owns(t.first.Partition) {
		// A shard forwards a transaction only if it owns its first op's
		// partition (invariant 16).
		return false
	}
	switch w.opts.Topology {
	case config.Ring:
		i := slices.Index(w.opts.DCs, n.id)
		next := w.opts.DCs[(i+1)%len(w.opts.DCs)]
		return next != ev.Origin && !slices.Contains(ev.Path, next)
	case config.Star:
		hub := w.opts.Hub
		switch {
		case n.id == hub:
			return ev.Origin != hub
		case n.id == w.opts.Standby && n.healer != nil && n.healer.IsDead(hub):
			return ev.Origin != hub && !slices.Contains(ev.Path, hub)
		}
	}
	return false
}

// LoseMsg loses message seq of dc's stream, as JetStream may in a power
// failure (its publisher's checkpoint has moved on: gap repair and catch-up
// must bring it from the origin).
func (w *World) LoseMsg(dc string, seq uint64) (string, error) {
	s := w.streams[dc]
	if s == nil || seq < 1 || seq > uint64(len(s.msgs)) {
		return "", fmt.Errorf("sim: %s's stream has no message %d", dc, seq)
	}
	m := s.msgs[seq-1]
	if m.gone {
		return "", fmt.Errorf("sim: %s's stream lost message %d already", dc, seq)
	}
	m.gone = true
	w.Stats["stream message lost"]++
	return m.desc, nil
}

// StreamLen returns the last sequence of dc's stream.
func (w *World) StreamLen(dc string) uint64 { return uint64(len(w.streams[dc].msgs)) }

// consumersOf returns the consumers who (a DC: all its sidecars'; or one
// shard) runs now (static and heal), by name.
func (w *World) consumersOf(who string) []*consumer {
	ns, _ := w.sidecars(who)
	var out []*consumer
	for _, name := range slices.Sorted(maps.Keys(w.cons)) {
		c := w.cons[name]
		for _, n := range ns {
			if c.node == n.name && (!c.heal || n.heal[c.up] != (core.Bypass{})) {
				out = append(out, c)
			}
		}
	}
	return out
}

// Consumers returns the consumers running at live DCs, by name: "dc2<-dc1"
// for a static one, "dc3<-dc1 (heal)" for a heal one.
func (w *World) Consumers() []string {
	var out []string
	for _, n := range w.all() {
		if !n.up {
			continue
		}
		for _, c := range w.consumersOf(n.name) {
			out = append(out, c.String())
		}
	}
	return out
}

func (c *consumer) String() string {
	s := c.up + "->" + c.node
	if c.heal {
		s += " (heal)"
	}
	return s
}

// deliverable returns the sequences c would deliver now, in order:
// redeliveries due first, then new messages, at most max.
func (w *World) deliverable(c *consumer, max int) []uint64 {
	s := w.streams[c.up]
	var out []uint64
	for _, seq := range slices.Sorted(maps.Keys(c.pending)) {
		if len(out) == max {
			return out
		}
		if c.pending[seq] <= w.t {
			out = append(out, seq)
		}
	}
	for seq := c.next; seq <= uint64(len(s.msgs)) && len(out) < max; seq++ {
		if m := s.msgs[seq-1]; !m.gone && c.reads(m.subject) {
			out = append(out, seq)
		}
	}
	return out
}

// Ready reports whether the consumer named link ("dc1->dc2", or with
// " (heal)") has something to deliver now.
func (w *World) ready(c *consumer) bool {
	return w.reads(w.nodes[c.node], c.up) && len(w.deliverable(c, 1)) > 0
}

// consumer returns the consumer of link ("up->dc", or "up->dc/i" for a
// shard's), static or heal.
func (w *World) consumer(link string, heal bool) (*consumer, error) {
	up, dc, ok := strings.Cut(link, "->")
	if !ok {
		return nil, fmt.Errorf("sim: link %q: want up->dc", link)
	}
	name := names.Consumer(dc, up)
	if n := w.nodes[dc]; n != nil && n.shard != "" { // "up->dc1/0": a shard's
		name = names.ShardConsumer(n.id, up, n.shard)
	}
	if heal {
		name += "_heal"
	}
	c := w.cons[name]
	if c == nil {
		return nil, fmt.Errorf("sim: no consumer %s", name)
	}
	return c, nil
}

// DeliverOn delivers one batch on link ("up->dc", heal or static) and
// reports whether anything was delivered.
func (w *World) DeliverOn(link string, heal bool) (bool, error) {
	c, err := w.consumer(link, heal)
	if err != nil {
		return false, err
	}
	return w.deliver(c)
}

// deliver takes one batch for c and has its DC's core.Link judge it, then
// carries out the verdicts: ack, nak (redelivered after the delay) or
// dead-letter (a violation here: the simulation sends nothing malformed).
func (w *World) deliver(c *consumer) (bool, error) {
	n := w.nodes[c.node]
	if !w.reads(n, c.up) {
		return false, nil
	}
	s := w.streams[c.up]
	seqs := w.deliverable(c, w.opts.Batch)
	if len(seqs) == 0 {
		return false, nil
	}
	n.everConsumed[c.name] = true
	var msgs []core.Msg
	for _, seq := range seqs {
		if seq >= c.next {
			c.next = seq + 1
		}
		c.pending[seq] = w.t + w.opts.AckWait
		if c.dropNext > 0 {
			// Lost in flight: AckWait brings it back.
			c.dropNext--
			w.notef("%s: message %d (%s) lost in flight", c, seq, s.msgs[seq-1].desc)
			w.Stats["lost in flight"]++
			continue
		}
		m := s.msgs[seq-1]
		if m.gone {
			delete(c.pending, seq)
			continue
		}
		msgs = append(msgs, core.Msg{Subject: m.subject, Header: m.header, Data: m.data, Seq: seq})
	}
	if len(msgs) == 0 {
		return true, nil
	}
	l := w.link(n, c)
	verdicts, tally := l.Receive(context.Background(), msgs)
	w.tally(c, tally)
	naks := 0
	for i, v := range verdicts {
		seq := msgs[i].Seq
		switch v.Action {
		case core.Ack:
			w.checkAck(n, c, msgs[i])
			if c.loseAck > 0 {
				c.loseAck--
				w.notef("%s: the ack of message %d is lost", c, seq)
				w.Stats["ack lost"]++
				continue
			}
			c.ack(seq, s)
		case core.Nak:
			c.pending[seq] = w.t + v.Delay
			w.Stats["nak"]++
			if naks++; naks == 1 {
				delay := v.Delay
				defer func() { w.notef("%s: nak'ed %d, redelivered after %s", c, naks, delay) }()
			}
		case core.DeadLetter:
			w.violate("%s dead-lettered message %d of %s's stream: %v", c.node, seq, c.up, v.Reason)
			c.ack(seq, s)
		}
	}
	return true, nil
}

func (c *consumer) ack(seq uint64, s *stream) {
	delete(c.pending, seq)
	c.acked[seq] = true
	for {
		next := c.floor + 1
		switch {
		case c.acked[next]:
			delete(c.acked, next)
		case c.filter != nil && next < c.next && !c.reads(s.msgs[next-1].subject):
			// A filtered consumer's floor passes the messages it does
			// not read.
		default:
			return
		}
		c.floor++
	}
	// Messages lost from the stream below the next never come: the
	// floor passes them, as JetStream's does over deleted messages.
}

// checkAck checks that a message Receive acked is a loop, or applied: the
// store's applied vector covers each of its events (a held event acked
// would be lost for this link).
func (w *World) checkAck(n *node, c *consumer, m core.Msg) {
	evs, err := event.DecodeMessage(m.Data, event.DefaultLimits())
	if err != nil {
		return
	}
	if n.static.Accept(evs[0].Origin, evs[0].Path) != nil {
		return
	}
	a := n.store.Applied()
	for _, ev := range evs {
		if n.owns(ev.Partition) && !a.Covers(ev.Origin, ev.Partition, ev.Seq) {
			w.violate("(4) %s acked %s from %s's stream, but has not applied it (applied %v): a held event acked is lost on this link",
				c.node, ev.Dot, c.up, a[ev.Origin])
		}
	}
}

// link returns the core.Link of c at n, made on first use.
func (w *World) link(n *node, c *consumer) *core.Link {
	if l := n.links[c.name]; l != nil {
		return l
	}
	l := core.NewLink(core.LinkConfig{
		Up:         c.up,
		Plan:       n.static,
		Check:      core.NewChecker(w.opts.DCs, w.opts.Partitions, event.Limits{}),
		Repair:     w.repairer(n),
		MaxDeliver: 10,
		GapDelay:   w.opts.GapDelay,
		RetryDelay: time.Second,
		Shard:      w.shard(n),
	})
	n.links[c.name] = l
	return l
}

// repairer is n's core.Repairer: it asks origins through the simulated
// network, applies through an observed store, and forwards by the
// effective plan in force at the time.
func (w *World) repairer(n *node) core.Repairer {
	return core.Repairer{
		Store:      observed{w: w, n: n},
		Source:     source{w: w, self: n},
		Forward:    func(ev *event.Event) bool { return w.effective(n).ShouldForward(ev.Path, ev.Origin) },
		Partitions: w.opts.Partitions,
		Shard:      w.shard(n),
	}
}

// shard is n's core.Shard: nil for a DC's only sidecar; for a shard, its
// partitions and the coordinator of transactions spanning the DC's shards.
func (w *World) shard(n *node) *core.Shard {
	if n.owned == nil {
		return nil
	}
	return &core.Shard{Owns: n.owns, Coordinator: coordinator{w: w, n: n}}
}

func (w *World) effective(n *node) core.Plan {
	if n.healer != nil {
		return n.healer.Plan()
	}
	return n.static
}

// observed is n's store as core sees it: every Apply result is checked
// for events applied or forwarded twice (invariants 3 and 7).
type observed struct {
	w *World
	n *node
}

func (o observed) Applied() changelog.Applied { return o.n.store.Applied() }

func (o observed) Apply(ctx context.Context, evs []*event.Event, forward func(*event.Event) bool) ([]changelog.ApplyResult, error) {
	res, err := o.n.store.Apply(ctx, evs, forward)
	if err != nil {
		return res, err
	}
	o.check(evs, res)
	return res, nil
}

// ApplyWhole is a shard's apply of its part of transactions
// (changelog.Store.ApplyWhole), checked as Apply is.
func (o observed) ApplyWhole(ctx context.Context, evs []*event.Event, whole map[*event.Event][]*event.Event, forward func(*event.Event) bool) ([]changelog.ApplyResult, error) {
	res, err := o.n.store.ApplyWhole(ctx, evs, whole, forward)
	if err != nil {
		return res, err
	}
	o.check(evs, res)
	return res, nil
}

// check checks an apply's results: nothing applied or forwarded twice at
// the DC (counted across its shards), and forwarded as the reference rule
// says.
func (o observed) check(evs []*event.Event, res []changelog.ApplyResult) {
	w, id := o.w, o.n.id
	for i, r := range res {
		ev := evs[i]
		ref := Ref{ev.Origin, ev.Partition, ev.Seq}
		switch r.Outcome {
		case changelog.Changed, changelog.Obsolete:
			if w.applied[id][ref]++; w.applied[id][ref] > 1 {
				w.violate("(3) %s applied %s a second time", o.n.name, ref)
			}
			if !o.n.owns(ev.Partition) {
				w.violate("(16) %s applied %s of partition %d, which it does not own", o.n.name, ref, ev.Partition)
			}
			if want := w.shouldForward(o.n, ev); r.Forwarded != want {
				w.violate("(7) %s applied %s (path %v) and forwarded it: %v; the topology says %v", o.n.name, ref, ev.Path, r.Forwarded, want)
			}
			w.Stats["applied "+r.Outcome.String()]++
		case changelog.Duplicate:
			w.Stats["duplicate"]++
		case changelog.Gap:
			w.Stats["gap"]++
		}
		if r.Forwarded {
			if w.forwarded[id][ref]++; w.forwarded[id][ref] > 1 {
				w.violate("(7) %s forwarded %s a second time", o.n.name, ref)
			}
			w.Stats["forwarded"]++
		}
	}
}

// source carries repair requests from self to origins over the simulated
// network: the origin's sidecar owning the partition answers (a sharded
// origin's other shards stay silent); one down or cut off does not.
type source struct {
	w    *World
	self *node
}

var errUnreachable = errors.New("sim: no responders")

func (s source) Fetch(_ context.Context, origin string, req core.RepairRequest) ([][]byte, error) {
	owner := s.w.owner(origin, req.Partition)
	if !s.w.reach(s.self, owner) {
		return nil, fmt.Errorf("%w: %s cannot reach %s's owner of partition %d", errUnreachable, s.self.name, origin, req.Partition)
	}
	s.w.Stats["repair requests"]++
	if s.w.opts.RepairLossPercent > 0 && s.w.rng.IntN(100) < s.w.opts.RepairLossPercent {
		s.w.Stats["repair requests lost"]++
		return nil, fmt.Errorf("%w: the request to %s timed out", errUnreachable, origin)
	}
	return core.ServeRepair(owner.store, s.w.opts.Partitions, req)
}

// tally notes what a receive did.
func (w *World) tally(c *consumer, t core.Tally) {
	o := t.Outcomes
	if n := o.Changed + o.Obsolete; n > 0 {
		what := fmt.Sprintf("%s: applied %d", c, n)
		if o.Forwarded > 0 {
			what += fmt.Sprintf(", forwarded %d", o.Forwarded)
		}
		w.notef("%s", what)
	}
	if o.Duplicate > 0 {
		w.notef("%s: %d duplicates", c, o.Duplicate)
	}
	if t.Loops > 0 {
		w.notef("%s: %d loops dropped", c, t.Loops)
		w.Stats["loops dropped"] += int(t.Loops)
	}
	if o.Gap > 0 {
		w.notef("%s: %d held by a gap", c, o.Gap)
	}
	if t.Repairs > 0 || t.RepairErrors > 0 {
		w.notef("%s: gap repair brought %d events (%d errors)", c, t.RepairedEvents, t.RepairErrors)
		w.Stats["gap repairs"] += int(t.Repairs)
	}
}

// Tick runs every timer due up to now+d at every live DC, in 100 ms steps:
// reports (with liveness and healing) and catch-up every ReportEvery,
// outbox trimming, tombstone purging and stream retention every second.
// It delivers nothing and publishes nothing: Step does.
func (w *World) Tick(d time.Duration) error {
	end := w.t + d
	for w.t < end {
		w.t = min(end, w.t+100*time.Millisecond)
		if err := w.timers(); err != nil {
			return err
		}
	}
	return nil
}

// timers runs what is due at every live DC.
func (w *World) timers() error {
	var due []*node
	for _, n := range w.all() {
		if !n.up || n.nextReport > w.t {
			continue
		}
		n.nextReport = w.t + w.opts.ReportEvery
		w.report(n)
		due = append(due, n)
	}
	for _, n := range due {
		w.healTick(n)
		w.catchUp(n)
	}
	for _, n := range w.all() {
		if !n.up || n.nextMaint > w.t {
			continue
		}
		n.nextMaint = w.t + maintEvery
		if err := w.maintain(n); err != nil {
			return err
		}
	}
	return nil
}

// report sends n's durable applied vector to every sidecar of every other
// DC it can reach, as repl.applied.<dc>, a shard's with the partitions it
// speaks for (Repl-Shard-Partitions): the receiver keeps it (in its purge
// history once per report interval) and counts n's DC as alive once its
// reports cover each of the receiver's partitions (core.Coverage).
func (w *World) report(n *node) {
	a := n.store.AppliedDurable()
	for _, dc := range w.opts.DCs {
		if dc == n.id {
			continue
		}
		for _, to := range w.byDC[dc] {
			if w.reach(n, to) {
				w.receiveReport(to, n, a)
			}
		}
	}
}

// receiveReport is to's intake of from's report a, as bridge's
// reportIntake: a report from or to a shard is folded into the pointwise
// highest of the peer DC's reports, of which a shard keeps its own
// partitions (bridge peerView).
func (w *World) receiveReport(to, from *node, a changelog.Applied) {
	if from.owned != nil || to.owned != nil {
		a = peerView(to, from.id, a)
	}
	if w.t-to.kept[from.id] >= w.opts.ReportEvery || to.kept[from.id] == 0 {
		to.kept[from.id] = w.t
		to.store.SetPeerApplied(from.id, a)
	} else {
		to.store.UpdatePeerApplied(from.id, a)
	}
	at := to.cover.Seen(from.id, from.owned, w.wall())
	if to.healer != nil && at.After(to.covered[from.id]) {
		to.covered[from.id] = at
		to.healer.Seen(from.id, at, to.store.Applied)
	}
}

// peerView folds report a from DC dc into the highest of its reports at
// n and returns that, keeping for a shard only its own partitions.
func peerView(n *node, dc string, a changelog.Applied) changelog.Applied {
	m := n.highest[dc]
	if m == nil {
		m = changelog.Applied{}
		n.highest[dc] = m
	}
	foldMax(m, a)
	out := m.Clone()
	if n.owned == nil {
		return out
	}
	for _, row := range out {
		for p := range row {
			if !n.owns(uint32(p)) {
				row[p] = 0
			}
		}
	}
	return out
}

// healTick judges liveness at n and reconciles its heal consumers with
// the effective plan when it changed.
func (w *World) healTick(n *node) {
	if n.healer == nil {
		return
	}
	changes, plan, changed := n.healer.Tick(w.wall(), n.store.PeerApplied())
	if !changed {
		return
	}
	for _, t := range changes {
		if t.Dead {
			w.notef("%s: %s unreachable (silent %s)", n.name, t.DC, t.Silent.Round(100*time.Millisecond))
			w.Stats["heal: dc taken as dead"]++
		} else {
			w.notef("%s: %s reachable again (%s)", n.name, t.DC, t.Reason)
			w.Stats["heal: dc back"]++
		}
	}
	stop, start := core.Reconcile(n.heal, plan)
	for _, up := range stop {
		delete(w.cons, names.ShardHealConsumer(n.id, up, n.shard))
		delete(n.links, names.ShardHealConsumer(n.id, up, n.shard))
		delete(n.heal, up)
		w.notef("%s: heal consumer on %s's stream stopped", n.name, up)
	}
	for _, b := range start {
		name := names.ShardHealConsumer(n.id, b.Via, n.shard)
		floor, found := w.deadFloor(n, b)
		at := core.HealStart(floor, found)
		w.cons[name] = w.newConsumer(name, n, b.Via, true, at)
		n.heal[b.Via] = b
		w.notef("%s: heal consumer on %s's stream for dead %s, from message %d", n.name, b.Via, b.Dead, max(at, 1))
		w.Stats["heal consumers started"]++
	}
	w.notef("%s: healing %s", n.name, core.DescribeBypasses(plan.Healing))
}

// deadFloor returns the lowest ack floor of the dead DC's static
// consumers on the bypass's stream that read a partition of n (bridge
// healer.deadFloor): its one consumer, or those of its shards.
func (w *World) deadFloor(n *node, b core.Bypass) (floor uint64, found bool) {
	for _, c := range w.cons {
		if c.heal || c.dc != b.Dead || c.up != b.Via {
			continue
		}
		mine := c.filter == nil || n.owned == nil
		for _, p := range n.owned {
			mine = mine || slices.Contains(c.filter, names.Subject(b.Via, p))
		}
		if !mine {
			continue
		}
		if !found || c.floor < floor {
			floor = c.floor
		}
		found = true
	}
	return floor, found
}

// catchUp runs n's catch-up repairs that are due.
func (w *World) catchUp(n *node) {
	rp := w.repairer(n)
	for _, b := range n.catch.Due(w.wall(), n.store.Applied(), n.store.PeerApplied()) {
		t, err := rp.Repair(context.Background(), b.Origin, b.Partition, b.From, b.To)
		w.Stats["catch-up repairs"]++
		what := fmt.Sprintf("%s: catch-up from %s, partition %d [%d, %d]: %d events", n.name, b.Origin, b.Partition, b.From, b.To, t.RepairedEvents)
		if err != nil {
			what += fmt.Sprintf(" (%v)", err)
			if errors.Is(err, core.ErrOriginLacks) {
				w.violate("%s: catch-up from %s: %v (no DC here loses events after reporting them)", n.name, b.Origin, err)
			}
		}
		w.notef("%s", what)
	}
}

// maintain trims n's outbox, purges its tombstones and trims its stream
// by core.Retention over the static downstream consumers' ack floors.
func (w *World) maintain(n *node) error {
	ctx := context.Background()
	if k, err := n.store.TrimOutbox(ctx); err != nil {
		return fmt.Errorf("sim: trim %s's outbox: %w", n.name, err)
	} else {
		w.Stats["outbox trimmed"] += k
	}
	if k, err := n.store.Purge(ctx); err != nil {
		return fmt.Errorf("sim: purge %s: %w", n.name, err)
	} else if k > 0 {
		w.Stats["purged"] += k
	}
	s := w.streams[n.id]
	cutoff := n.ret.Cutoff(w.wall(), uint64(len(s.msgs)), 0, 0)
	if cutoff == 0 {
		return nil
	}
	// Every downstream's static consumers (one per shard of a sharded
	// downstream: bridge retention.ackFloors).
	var floors []uint64
	for _, dc := range n.static.Downstreams() {
		found := false
		for _, c := range w.cons {
			if !c.heal && c.dc == dc && c.up == n.id {
				floors = append(floors, c.floor)
				found = true
			}
		}
		if !found {
			return nil
		}
	}
	floor, ok := n.ret.Floor(cutoff, floors)
	if !ok {
		return nil
	}
	last := map[string]uint64{}
	for _, m := range s.msgs {
		last[m.subject] = m.seq
	}
	// A shard trims only its own subjects (bridge ownSubjects).
	own := func(subject string) bool { return true }
	if n.owned != nil {
		mine := map[string]bool{core.TxnSubject(n.id): true}
		for _, p := range n.owned {
			mine[names.Subject(n.id, p)] = true
			mine[names.ShardTxnSubject(n.id, p)] = true
		}
		own = func(subject string) bool { return mine[subject] }
	}
	trimmed := 0
	for _, m := range s.msgs {
		if upTo := core.PurgeBelow(floor, last[m.subject]); !m.gone && m.seq < upTo && own(m.subject) {
			m.gone, m.data = true, nil
			trimmed++
		}
	}
	w.Stats["stream trimmed"] += trimmed
	n.ret.Trimmed(floor)
	return nil
}

// Step runs one round of everything a running deployment does in 100 ms:
// every live DC publishes, every consumer delivers what it has (one
// batch each, a few rounds), and the timers run. It reports whether any
// message moved.
func (w *World) Step() (bool, error) {
	moved := false
	for _, dc := range w.opts.DCs {
		k, err := w.Publish(dc)
		if err != nil {
			return moved, err
		}
		moved = moved || k > 0
	}
	for _, n := range w.all() {
		if !n.up {
			continue
		}
		for _, c := range w.consumersOf(n.name) {
			ok, err := w.deliver(c)
			if err != nil {
				return moved, err
			}
			moved = moved || ok
		}
	}
	w.t += 100 * time.Millisecond
	return moved, w.timers()
}

// Run steps the world for d.
func (w *World) Run(d time.Duration) error {
	end := w.t + d
	for w.t < end {
		if _, err := w.Step(); err != nil {
			return err
		}
	}
	return nil
}

// Quiet reports whether the world has settled: every DC up, no cut, no
// healing in effect, every outbox published, every consumer drained, and
// every DC has applied every origin's every event. When not, it says why.
func (w *World) Quiet() (bool, string) {
	for _, n := range w.all() {
		if !n.up {
			return false, n.name + " is down"
		}
		if len(n.heal) > 0 {
			return false, fmt.Sprintf("%s still heals around %s", n.name, core.DescribeBypasses(w.Healing(n.name)))
		}
		if n.store.OutboxDepth() > 0 {
			if es, _ := n.store.ReadOutbox(n.store.Checkpoint(), 1); len(es) > 0 {
				return false, n.name + " has unpublished outbox entries"
			}
		}
	}
	if len(w.cuts) > 0 {
		return false, "a network cut remains"
	}
	for _, name := range slices.Sorted(maps.Keys(w.cons)) {
		c := w.cons[name]
		if c.heal {
			continue
		}
		if len(c.pending) > 0 || len(w.deliverable(c, 1)) > 0 {
			return false, fmt.Sprintf("%s has messages to deliver", c)
		}
	}
	for _, dc := range w.opts.DCs {
		a := w.Applied(dc)
		for _, o := range w.opts.DCs {
			own := w.Applied(o)[o]
			for p, seq := range own {
				if seq > 0 && !a.Covers(o, uint32(p), seq) {
					return false, fmt.Sprintf("%s lacks %s's events of partition %d up to %d (has %v)", dc, o, p, seq, a[o])
				}
			}
		}
	}
	return true, ""
}

// Settle restarts every DC that is down, mends every cut, and runs until
// the world is quiet and healing has been handed back everywhere, for at
// most limit of virtual time.
func (w *World) Settle(limit time.Duration) error {
	for _, dc := range w.opts.DCs {
		if !w.Up(dc) {
			if err := w.Restart(dc); err != nil {
				return err
			}
		}
	}
	w.MendAll()

	start := w.t
	for {
		quiet, why := w.Quiet()
		if quiet {
			return nil
		}
		if w.t-start > limit {
			return fmt.Errorf("(10) not settled after %s of virtual time: %s", limit, why)
		}
		moved, err := w.Step()
		if err != nil {
			return err
		}
		if !moved {
			// Nothing to deliver: skip to the next timer.
			next := w.t + w.opts.ReportEvery
			for _, n := range w.nodes {
				next = min(next, n.nextReport, n.nextMaint)
			}
			for _, c := range w.cons {
				for _, due := range c.pending {
					if due > w.t {
						next = min(next, due)
					}
				}
			}
			if next > w.t {
				w.t = next - 100*time.Millisecond
				w.t = max(w.t, 0)
			}
		}
	}
}

// Finish reports every DC's applied vector to every other twice and
// purges, so that every tombstone-only key goes.
func (w *World) Finish() error {
	for range 2 {
		for _, n := range w.all() {
			w.report(n)
		}
		for _, n := range w.all() {
			if _, err := n.store.Purge(context.Background()); err != nil {
				return err
			}
		}
	}
	return nil
}

// storeSnapshot returns every key's state in st, from one Scan.
func storeSnapshot(st *changelog.Store) (map[string]dvv.State, error) {
	out := map[string]dvv.State{}
	err := st.Scan("", func(key string, s dvv.State) error {
		out[key] = s.Clone()
		return nil
	})
	return out, err
}

// Digests returns each DC's digest and whether they are all equal. With
// a sharded DC, each DC's digest is a hash of its whole state, the union
// of its shards' (Snapshot).
func (w *World) Digests() (map[string]string, bool, error) {
	if len(w.all()) == len(w.opts.DCs) {
		return digests(w.opts.DCs, w.Store)
	}
	out := map[string]string{}
	equal := true
	for _, dc := range w.opts.DCs {
		snap, err := w.Snapshot(dc)
		if err != nil {
			return nil, false, err
		}
		h := sha256.New()
		for _, key := range slices.Sorted(maps.Keys(snap)) {
			fmt.Fprintf(h, "%q %+v\n", key, snap[key])
		}
		out[dc] = hex.EncodeToString(h.Sum(nil))
		equal = equal && out[dc] == out[w.opts.DCs[0]]
	}
	return out, equal, nil
}

// Applied returns dc's applied vector: the pointwise highest of its live
// sidecars' (a shard's holds 0 outside its partitions).
func (w *World) Applied(dc string) changelog.Applied {
	out := changelog.Applied{}
	for _, n := range w.byDC[dc] {
		if !n.up {
			continue
		}
		foldMax(out, n.store.Applied())
	}
	return out
}

// foldMax raises m to the pointwise highest of m and a.
func foldMax(m, a changelog.Applied) {
	for origin, row := range a {
		have := m[origin]
		if len(have) < len(row) {
			have = append(have, make([]uint64, len(row)-len(have))...)
		}
		for p, s := range row {
			have[p] = max(have[p], s)
		}
		m[origin] = have
	}
}

// Snapshot returns dc's whole state: every key of its live sidecars, each
// from its owner (one Scan each).
func (w *World) Snapshot(dc string) (map[string]dvv.State, error) {
	out := map[string]dvv.State{}
	for _, n := range w.byDC[dc] {
		if !n.up {
			continue
		}
		snap, err := storeSnapshot(n.store)
		if err != nil {
			return nil, fmt.Errorf("sim: scan %s: %w", n.name, err)
		}
		for k, st := range snap {
			if _, dup := out[k]; dup {
				return nil, fmt.Errorf("sim: %s holds key %q, which another shard of %s holds too", n.name, k, dc)
			}
			if !n.owns(event.PartitionOf(k, w.opts.Partitions)) {
				return nil, fmt.Errorf("sim: %s holds key %q of partition %d, which it does not own", n.name, k, event.PartitionOf(k, w.opts.Partitions))
			}
			out[k] = st
		}
	}
	return out, nil
}

// Conflicts returns dc's conflict log: every live sidecar's.
func (w *World) Conflicts(dc string) ([]changelog.Conflict, error) {
	var out []changelog.Conflict
	for _, n := range w.byDC[dc] {
		if !n.up {
			continue
		}
		cs, err := n.store.Conflicts(changelog.ConflictFilter{})
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

// coordinator is a shard's core.Coordinator, as pkg/node's shards: Prepare
// records the shard's ops durably (changelog.Store.Prepare), which makes
// reads of their keys wait (holds), and asks each other owner, over the
// DC's network (an owner that is down does not answer), whether it has
// prepared or applied the transaction. The simulation does not wait: the
// link's nak brings the message back.
type coordinator struct {
	w *World
	n *node
}

func (c coordinator) Prepare(ctx context.Context, id string, all, own []*event.Event, _ bool) (bool, error) {
	st := c.n.store
	ps, err := st.PreparedTxns()
	if err != nil {
		return false, err
	}
	if _, ok := ps[id]; !ok {
		p := changelog.Prepared{Origin: own[0].Origin}
		for _, ev := range own {
			p.Keys = append(p.Keys, ev.Key)
			p.Ops = append(p.Ops, [2]uint64{uint64(ev.Partition), ev.Seq})
		}
		if err := st.Prepare(ctx, id, p); err != nil {
			return false, err
		}
		c.w.Stats["shard txn prepared"]++
	}
	asked := map[*node]bool{}
	for _, ev := range all {
		o := c.w.owner(c.n.id, ev.Partition)
		if o == c.n || asked[o] {
			continue
		}
		asked[o] = true
		state, err := c.w.txnState(o, id, all)
		if err != nil || state == "no" {
			c.w.Stats["shard txn not ready"]++
			return false, nil
		}
	}
	return true, nil
}

func (c coordinator) Done(ctx context.Context, id string) {
	ps, err := c.n.store.PreparedTxns()
	if err != nil {
		return
	}
	if _, ok := ps[id]; ok {
		if err := c.n.store.Unprepare(ctx, id); err == nil {
			c.w.Stats["shard txn done"]++
		}
	}
}

// txnState is o's answer about transaction id (pkg/node answerTxnState):
// "applied" when it has applied each of its ops, "prepared" when it holds
// id prepared, else "no"; an error when o is down.
func (w *World) txnState(o *node, id string, all []*event.Event) (string, error) {
	if !o.up {
		return "", fmt.Errorf("%w: %s is down", errUnreachable, o.name)
	}
	applied := o.store.Applied()
	mine, covered := 0, 0
	for _, ev := range all {
		if o.owns(ev.Partition) {
			mine++
			if applied.Covers(ev.Origin, ev.Partition, ev.Seq) {
				covered++
			}
		}
	}
	if mine > 0 && covered == mine {
		return "applied", nil
	}
	ps, err := o.store.PreparedTxns()
	if err != nil {
		return "", err
	}
	if _, ok := ps[id]; ok {
		return "prepared", nil
	}
	return "no", nil
}

// loadPrepared forgets, at a shard's start, the prepared transactions it
// has applied meanwhile (pkg/node loadPrepared); the others hold their
// keys again.
func (w *World) loadPrepared(n *node) error {
	if n.owned == nil {
		return nil
	}
	ps, err := n.store.PreparedTxns()
	if err != nil {
		return err
	}
	applied := n.store.Applied()
	for _, id := range slices.Sorted(maps.Keys(ps)) {
		if ps[id].Covered(applied) {
			if err := n.store.Unprepare(context.Background(), id); err != nil {
				return err
			}
		}
	}
	return nil
}

// holds reports whether a prepared transaction holds key at n.
func (w *World) holds(n *node, key string) (bool, error) {
	if n.owned == nil {
		return false, nil
	}
	ps, err := n.store.PreparedTxns()
	if err != nil {
		return false, err
	}
	for _, p := range ps {
		if slices.Contains(p.Keys, key) {
			return true, nil
		}
	}
	return false, nil
}

// StreamDesc renders dc's stream: each message's sequence and what it
// carries, lost and trimmed ones marked.
func (w *World) StreamDesc(dc string) string {
	var b strings.Builder
	s := w.streams[dc]
	for _, m := range s.msgs {
		fmt.Fprintf(&b, " %d:%s", m.seq, m.desc)
		if m.gone {
			b.WriteString("(gone)")
		}
	}
	return strings.TrimSpace(b.String())
}
