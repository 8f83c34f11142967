// Package demo runs several DCs in one process against one embedded NATS
// server, drives concurrent and conflicting writes through every DC, waits
// for convergence and summarises what happened. It is what
// `replicator demo` runs.
//
// Internal to the sidecar: the engine of `replicator demo`, not a stable Go
// API.
package demo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/node"
)

// Options configure a demo run.
type Options struct {
	Topology string // mesh, ring or star; default mesh
	DCs      int    // number of DCs; default 3
	Keys     int    // keys per resolver prefix; default 20
	Writes   int    // writes per DC; default 300
	Seed     uint64 // workload seed; default 1
	// Timeout bounds the wait for convergence after the writes. Default 60s.
	Timeout time.Duration
	// Dir holds the DCs' data; default a temporary directory, removed after.
	Dir string
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
	Logger   *slog.Logger
}

// Summary is the result of a run; its JSON form is `replicator demo --json`.
type Summary struct {
	Converged bool              `json:"converged"`
	Topology  string            `json:"topology"`
	DCs       int               `json:"dcs"`
	Writes    int               `json:"writes"`
	Conflicts map[string]int    `json:"conflicts"`
	Digests   map[string]string `json:"digests"`
	ElapsedMS int64             `json:"elapsed_ms"`
	// Txns counts the transactions committed (an order and its lines,
	// POST /v1/txn's path); TxnReads the consistent reads of every DC's
	// orders taken while they streamed in, and TxnPartial the orders seen
	// with only some of their lines, in those reads or at the end (0 is
	// the only right answer: invariant 11 in docs/DESIGN.md).
	Txns       int `json:"transactions"`
	TxnReads   int `json:"transaction_reads"`
	TxnPartial int `json:"transactions_seen_partial"`
	// Seed and Workload name the workload: the same seed (with the same
	// DCs, writes and keys) gives the same Workload digest, while the
	// conflicts and digests depend on timing too (see Plan).
	Seed     uint64 `json:"seed"`
	Workload string `json:"workload"`

	// Not in the JSON object: the table shows them.
	WritePhase  time.Duration `json:"-"`
	ConvergeLag time.Duration `json:"-"`
	Published   uint64        `json:"-"`
	Applied     uint64        `json:"-"`
	Names       []string      `json:"-"`
	// Discarded counts, per resolver, the distinct versions a resolver
	// dropped and logged in some DC's conflict log; Open counts the
	// record resolver's conflicts waiting for a person.
	Discarded map[string]int `json:"-"`
	Open      int            `json:"-"`
}

// The prefixes the demo writes under, one per resolver.
var prefixes = []struct{ prefix, resolver string }{
	{"user/", config.Siblings},
	{"title/", config.LWW},
	{"owner/", config.Priority},
	{"path/", config.Concat},
	{"tags/", config.Union},
	{"doc/", config.Record},
}

func (o *Options) defaults() {
	if o.Topology == "" {
		o.Topology = config.Mesh
	}
	if o.DCs == 0 {
		o.DCs = 3
	}
	if o.Keys == 0 {
		o.Keys = 20
	}
	if o.Writes == 0 {
		o.Writes = 300
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Run runs the demo. It returns an error only when the demo could not run;
// a run that did not converge returns a Summary with Converged false.
func Run(ctx context.Context, o Options) (Summary, error) {
	o.defaults()
	start := time.Now()
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "replicator-demo-")
		if err != nil {
			return Summary{}, err
		}
		defer os.RemoveAll(dir)
		o.Dir = dir
	}
	c, err := cluster.New(ctx, cluster.Options{
		N: o.DCs, Topology: o.Topology, Dir: o.Dir, ServerName: "demo",
		Config:         func(cfg *config.Config) { cfg.Resolvers.Rules = Rules(cfg.DCs) },
		Logger:         func(string) *slog.Logger { return o.Logger },
		ReportInterval: 200 * time.Millisecond,
	})
	defer c.Close()
	if err != nil {
		return Summary{}, fmt.Errorf("demo: %w", err)
	}
	names, nodes := c.Names(), c.Nodes()
	fmt.Fprintf(o.Progress, "started %d DCs (%s) on embedded NATS %s\n", o.DCs, o.Topology, c.URL())

	writeStart := time.Now()
	watch := watchOrders(nodes)
	var done atomic.Int64
	total := int64(o.DCs * o.Writes)
	stopProgress := progress(o.Progress, "writing", &done, total)
	errs := make(chan error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- drive(ctx, n, i, o, &done)
		}()
	}
	wg.Wait()
	stopProgress()
	close(errs)
	for err := range errs {
		if err != nil {
			watch.stop()
			return Summary{}, err
		}
	}
	writePhase := time.Since(writeStart)
	fmt.Fprintf(o.Progress, "%d writes in %s; waiting for convergence\n", total, writePhase.Round(time.Millisecond))

	conv := time.Now()
	converged := cluster.Wait(ctx, o.Timeout, 100*time.Millisecond, "convergence", cluster.Stable(2, c.Converged)) == nil
	digests := c.Digests()
	reads, partial := watch.stop()
	for _, n := range nodes {
		partial += partialOrders(n.Store())
	}
	s := Summary{
		Seed:        o.Seed,
		Workload:    Workload(o),
		Txns:        o.DCs * txnsPerDC(o),
		TxnReads:    reads,
		TxnPartial:  partial,
		Converged:   converged,
		Topology:    o.Topology,
		DCs:         o.DCs,
		Writes:      int(total),
		Conflicts:   conflicts(nodes),
		Discarded:   discarded(nodes),
		Digests:     digests,
		WritePhase:  writePhase,
		ConvergeLag: time.Since(conv),
		Names:       names,
	}
	if open, err := nodes[0].Store().Conflicts(changelog.ConflictFilter{Status: changelog.StatusOpen}); err == nil {
		s.Open = len(open)
	}
	for _, n := range nodes {
		st := n.Replicator().Stats()
		s.Published += st.Published
		s.Applied += st.Applied
	}
	s.ElapsedMS = time.Since(start).Milliseconds()
	return s, nil
}

// Config is the configuration of one demo DC.
func Config(dc string, dcs []string, topology, dir string) config.Config {
	cfg := config.Default()
	cfg.DC, cfg.DCs, cfg.Topology, cfg.DataDir = dc, dcs, topology, dir
	cfg.Partitions = 8
	if topology == config.Star {
		cfg.Hub = dcs[0]
	}
	cfg.Resolvers.Rules = Rules(dcs)
	cfg.Complete()
	return cfg
}

// Rules are the demo's resolver rules, one prefix per resolver.
func Rules(dcs []string) []config.Rule {
	var rules []config.Rule
	for _, p := range prefixes {
		r := config.Rule{Prefix: p.prefix, Resolver: p.resolver}
		switch p.resolver {
		case config.Priority:
			r.Priority = dcs
		case config.Concat:
			r.Separator = "/"
		}
		rules = append(rules, r)
	}
	return rules
}

// txnsPerDC is how many orders each DC commits as transactions: one per
// ten writes.
func txnsPerDC(o Options) int { return max(o.Writes/10, 1) }

// orderPrefix holds the transactions' keys: order/<dc>-<n> and its lines
// order/<dc>-<n>/line/<j>, all written by one transaction, whose value
// names how many lines it has.
const orderPrefix = "order/"

// writeOrder commits order n of DC dc and its lines as one transaction.
func writeOrder(ctx context.Context, n *node.Node, dc string, num, lines int) error {
	id := fmt.Sprintf("%s%s-%d", orderPrefix, dc, num)
	ops := []changelog.WriteOp{{Key: id, Value: []byte(fmt.Sprintf("lines=%d", lines))}}
	for j := range lines {
		ops = append(ops, changelog.WriteOp{Key: fmt.Sprintf("%s/line/%d", id, j), Value: []byte(fmt.Sprintf("item-%d", j))})
	}
	if _, err := n.WriteTxn(ctx, ops); err != nil {
		return fmt.Errorf("demo: transaction %s at %s: %w", id, dc, err)
	}
	return nil
}

// partialOrders reads a DC's orders from one consistent snapshot and
// counts those that show only some of their lines.
func partialOrders(st *changelog.Store) int {
	want := map[string]int{} // order -> lines its header says
	have := map[string]int{} // order -> lines present
	st.Scan(orderPrefix, func(key string, s dvv.State) error {
		if s.LiveCount() == 0 {
			return nil
		}
		if i := strings.Index(key, "/line/"); i >= 0 {
			have[key[:i]]++
			return nil
		}
		var lines int
		fmt.Sscanf(string(s.Siblings[0].Value), "lines=%d", &lines)
		want[key] = lines
		return nil
	})
	bad := 0
	for id, lines := range want {
		if have[id] != lines {
			bad++
		}
		delete(have, id)
	}
	return bad + len(have) // lines without their order are half a transaction too
}

// orderWatch reads every DC's orders while the writes run.
type orderWatch struct {
	done    chan struct{}
	wg      sync.WaitGroup
	reads   atomic.Int64
	partial atomic.Int64
}

func watchOrders(nodes []*node.Node) *orderWatch {
	w := &orderWatch{done: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, n := range nodes {
				w.partial.Add(int64(partialOrders(n.Store())))
				w.reads.Add(1)
			}
			select {
			case <-w.done:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// stop ends the watch and returns its reads and the partial orders seen.
func (w *orderWatch) stop() (reads, partial int) {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	w.wg.Wait()
	return int(w.reads.Load()), int(w.partial.Load())
}

// Step is one step of a DC's workload: a transaction (an order and its
// lines) or a write of one key.
type Step struct {
	// OrderLines, when positive, commits the DC's next order with that
	// many lines as one transaction, before the write.
	OrderLines int
	Key        string
	Value      []byte
	Delete     bool
	// WithContext makes the write a read-modify-write: it carries the
	// context of a local read of the key, taken when the write runs.
	WithContext bool
}

// Plan returns the workload of DC number i (0-based) for o: o.Writes
// writes, mostly read-modify-writes, some blind writes, some deletes, all
// on keys the other DCs write too, so conflicts happen, and one order per
// ten writes. It depends only on o.Seed, i, o.Writes and o.Keys: the same
// seed gives the same workload. What a run makes of it still depends on
// timing: the context a read-modify-write carries is whatever the DC
// holds when it runs, so which writes are concurrent, and so the conflicts
// and how the HLC resolves them under lww, vary from run to run.
func Plan(o Options, i int) []Step {
	o.defaults()
	rng := rand.New(rand.NewPCG(o.Seed, uint64(i)))
	dc := fmt.Sprintf("dc%d", i+1)
	txnEvery, orders := o.Writes/txnsPerDC(o), 0
	steps := make([]Step, 0, o.Writes)
	for w := 0; w < o.Writes; w++ {
		var st Step
		if w%txnEvery == 0 && orders < txnsPerDC(o) {
			st.OrderLines = 1 + rng.IntN(4)
			orders++
		}
		p := prefixes[rng.IntN(len(prefixes))]
		st.Key = fmt.Sprintf("%s%d", p.prefix, rng.IntN(o.Keys))
		st.Value = []byte(fmt.Sprintf("%s-%d", dc, w))
		if p.resolver == config.Union {
			st.Value = []byte(fmt.Sprintf(`["%s","%s-%d"]`, dc, dc, w%5))
		}
		st.WithContext = rng.IntN(3) > 0
		if rng.IntN(20) == 0 {
			st.Delete, st.Value = true, nil
		}
		steps = append(steps, st)
	}
	return steps
}

// Workload returns a digest of every DC's plan for o, which `demo --json`
// prints: equal for equal seeds (and DCs, writes and keys).
func Workload(o Options) string {
	o.defaults()
	h := sha256.New()
	for i := range o.DCs {
		for _, st := range Plan(o, i) {
			fmt.Fprintf(h, "%d|%d|%q|%q|%t|%t\n", i, st.OrderLines, st.Key, st.Value, st.Delete, st.WithContext)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// drive runs DC i's plan at n.
func drive(ctx context.Context, n *node.Node, i int, o Options, done *atomic.Int64) error {
	dc := fmt.Sprintf("dc%d", i+1)
	orders := 0
	for _, st := range Plan(o, i) {
		if st.OrderLines > 0 {
			if err := writeOrder(ctx, n, dc, orders, st.OrderLines); err != nil {
				return err
			}
			orders++
		}
		op := changelog.WriteOp{Key: st.Key, Value: st.Value, Delete: st.Delete}
		if st.WithContext {
			_, cur, _, err := n.Read(st.Key)
			if err != nil {
				return err
			}
			op.Context = cur.Clock
		}
		if _, err := n.Write(ctx, op); err != nil {
			return fmt.Errorf("demo: write %s at %s: %w", st.Key, dc, err)
		}
		done.Add(1)
	}
	return nil
}

// conflicts counts, per resolver, the keys that saw concurrent versions:
// entries of any DC's conflict log (lww, priority, record), and keys still
// holding more than one sibling (siblings, concat, union).
func conflicts(nodes []*node.Node) map[string]int {
	keys := map[string]map[string]bool{}
	add := func(resolver, key string) {
		if keys[resolver] == nil {
			keys[resolver] = map[string]bool{}
		}
		keys[resolver][key] = true
	}
	for _, n := range nodes {
		cs, err := n.Store().Conflicts(changelog.ConflictFilter{})
		if err == nil {
			for _, c := range cs {
				add(c.Resolver, c.Key)
			}
		}
	}
	if len(nodes) > 0 {
		n := nodes[0]
		_ = n.Store().Scan("", func(key string, st dvv.State) error {
			if st.LiveCount() > 1 {
				add(n.Rules().For(key).Name(), key)
			}
			return nil
		})
	}
	out := map[string]int{}
	for _, p := range prefixes {
		out[p.resolver] = len(keys[p.resolver])
	}
	return out
}

// discarded counts the distinct discarded versions in the DCs' conflict
// logs, by resolver.
func discarded(nodes []*node.Node) map[string]int {
	ids := map[string]map[string]bool{}
	for _, n := range nodes {
		cs, err := n.Store().Conflicts(changelog.ConflictFilter{Status: changelog.StatusLogged})
		if err != nil {
			continue
		}
		for _, c := range cs {
			if ids[c.Resolver] == nil {
				ids[c.Resolver] = map[string]bool{}
			}
			ids[c.Resolver][c.ID] = true
		}
	}
	out := map[string]int{}
	for r, m := range ids {
		out[r] = len(m)
	}
	return out
}

func progress(w io.Writer, what string, done *atomic.Int64, total int64) func() {
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				fmt.Fprintf(w, "\r%s: %d/%d\n", what, done.Load(), total)
				return
			case <-t.C:
				fmt.Fprintf(w, "\r%s: %d/%d", what, done.Load(), total)
			}
		}
	}()
	return func() { close(stop); <-finished }
}

// WriteTable prints the summary for people.
func WriteTable(w io.Writer, s Summary) {
	fmt.Fprintf(w, "topology %s, %d DCs, %d writes; seed %d, workload %s (the same for the same seed; the conflicts depend on timing too)\n\n",
		s.Topology, s.DCs, s.Writes, s.Seed, s.Workload)
	fmt.Fprintf(w, "%-6s %s\n", "DC", "digest")
	names := append([]string(nil), s.Names...)
	sort.Strings(names)
	for _, dc := range names {
		fmt.Fprintf(w, "%-6s %s\n", dc, s.Digests[dc])
	}
	fmt.Fprintf(w, "\n%-10s %-8s %-16s %s\n", "resolver", "prefix", "keys in conflict", "how they were resolved")
	for _, p := range prefixes {
		how := ""
		switch p.resolver {
		case config.LWW, config.Priority:
			how = fmt.Sprintf("automatically; %d losing versions logged", s.Discarded[p.resolver])
		case config.Concat, config.Union:
			how = "automatically; values merged on read"
		case config.Record:
			how = fmt.Sprintf("%d open records await a person (POST /v1/conflicts/{id}/resolve)", s.Open)
		case config.Siblings:
			how = "kept as siblings; the next write with the read context replaces them"
		}
		fmt.Fprintf(w, "%-10s %-8s %-16d %s\n", p.resolver, p.prefix, s.Conflicts[p.resolver], how)
	}
	rate := float64(s.Writes) / s.WritePhase.Seconds()
	fmt.Fprintf(w, "\nwrite phase     %s (%.0f durable writes/s across DCs)\n", s.WritePhase.Round(time.Millisecond), rate)
	fmt.Fprintf(w, "converged after %s once writes stopped\n", s.ConvergeLag.Round(time.Millisecond))
	fmt.Fprintf(w, "events          %d published, %d applied\n", s.Published, s.Applied)
	fmt.Fprintf(w, "transactions    %d orders with their lines; %d consistent reads while they streamed in, %d orders seen partial\n",
		s.Txns, s.TxnReads, s.TxnPartial)
	if s.Converged {
		fmt.Fprintf(w, "\nCONVERGED: every DC holds the same state (digest %s)\n", short(s.Digests[names[0]]))
	} else {
		fmt.Fprintf(w, "\nNOT CONVERGED within the timeout: digests differ\n")
	}
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}

// WriteJSON prints the summary as one JSON object.
func WriteJSON(w io.Writer, s Summary) error {
	return json.NewEncoder(w).Encode(s)
}

var errNotConverged = errors.New("demo: not converged")

// Err returns an error when the run did not converge.
func (s Summary) Err() error {
	if !s.Converged {
		return errNotConverged
	}
	if s.TxnPartial > 0 {
		return fmt.Errorf("demo: %d orders were seen with only some of their lines", s.TxnPartial)
	}
	return nil
}
