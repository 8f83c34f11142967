package sim

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// TestTranscripts runs the multi-DC scenarios in testdata/*.txt. Each file
// is a specification: regenerate with -rewrite and read the diff.
//
// Commands (DCs and links are bare words; values are key=value):
//
//	setup dcs=(dc1,dc2) [partitions=1] [resolver=siblings] [rules=(lww:t/,concat:c/)] [order=(dc2,dc1)] [sep=/]
//	      [topology=mesh|ring|star] [hub=dc1]
//	write dc1 k=title v=B [ctx=none|read|read@dc2|{dc1:1}]   default ctx=none
//	delete dc1 k=title [ctx=...]
//	txn dc1 a=1 b=2 del:c [ctx=...]     one transaction: put a and b, delete c; ctx for every op
//	tick dc1 [n=1]                      advance dc1's HLC
//	deliver dc1->dc2 [n=1|all]          pop the link's head and apply it (one message: an event or a transaction)
//	deliver dc1->dc2 batch=3            pop three messages and apply them in one Store.Apply (one fetch)
//	deliver all                         deliver every link until nothing is pending
//	dup dc1->dc2                        apply the head twice
//	drop dc1->dc2                       lose the head; repair re-sends it
//	repair dc1->dc2                     re-send dropped messages from the origin's outbox
//	fill dc1->dc2                       deliver the head; on a gap, fetch what it waits for from the origin (as the bridge does)
//	reorder dc1->dc2                    swap the first two queued messages
//	resend dc1->dc2 k=title seq=1       queue dc1's own event (or its transaction) again, from its outbox
//	show dc1 [k=title]                  clock, siblings and what the resolver shows
//	scan dc1 [k=(a,b)] [prefix=p]       what a reader sees in one consistent snapshot (Store.Scan)
//	applied dc1                         dc1's applied vector, per origin and partition
//	conflicts dc1                       the DC's conflict log
//	digest                              are the DCs' digests equal, and each
//	report all | report dc1->dc2        send applied vectors (SetPeerApplied)
//	purge dc1                           purge stable tombstones
//	pending                             what waits on each link
//	restart dc1                         close dc1's store and open it again
//	trim dc1                            checkpoint dc1's whole outbox and trim what every DC applied
func TestTranscripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		var c *Cluster
		var w *World
		defer func() {
			if c != nil {
				c.Close()
			}
			if w != nil {
				w.Close()
			}
		}()
		datadriven.RunTest(t, path, func(t *testing.T, td *datadriven.TestData) string {
			if td.Cmd == "world" {
				if w != nil {
					w.Close()
				}
				var err error
				if w, err = setupWorld(td); err != nil {
					return "error: " + err.Error()
				}
				return "ok"
			}
			if w != nil {
				out, err := runWorldCommand(w, td)
				if err != nil {
					return out + "error: " + err.Error()
				}
				return out
			}
			if td.Cmd == "setup" {
				if c != nil {
					c.Close()
				}
				var err error
				c, err = setupCluster(td)
				if err != nil {
					return "error: " + err.Error()
				}
				return "ok"
			}
			if c == nil {
				td.Fatalf(t, "%s before setup", td.Cmd)
			}
			out, err := runCommand(c, td)
			if err != nil {
				return out + "error: " + err.Error()
			}
			return out
		})
	})
}

// vals returns the values of arg key, splitting single values on commas so
// that both dcs=a,b and dcs=(a,b) work.
func vals(td *datadriven.TestData, key string) []string {
	arg, ok := td.Arg(key)
	if !ok {
		return nil
	}
	var out []string
	for _, v := range arg.Vals {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func val(td *datadriven.TestData, key, def string) string {
	if v := vals(td, key); len(v) > 0 {
		return strings.Join(v, ",")
	}
	return def
}

func setupCluster(td *datadriven.TestData) (*Cluster, error) {
	dcs := vals(td, "dcs")
	parts, err := strconv.Atoi(val(td, "partitions", "1"))
	if err != nil {
		return nil, fmt.Errorf("partitions: %w", err)
	}
	rs, err := parseResolvers(td, dcs)
	if err != nil {
		return nil, err
	}
	return New(Options{DCs: dcs, Partitions: parts, Resolvers: rs, Topology: val(td, "topology", ""), Hub: val(td, "hub", "")})
}

// parseResolvers reads resolver=, rules=, order= and sep= of a setup.
func parseResolvers(td *datadriven.TestData, dcs []string) (*resolve.Rules, error) {
	ropts := resolve.Options{Order: vals(td, "order"), Separator: val(td, "sep", "")}
	if len(ropts.Order) == 0 {
		ropts.Order = dcs
	}
	build := func(name string) (resolve.Resolver, error) {
		o := resolve.Options{}
		switch name {
		case resolve.NamePriority:
			o.Order = ropts.Order
		case resolve.NameConcat:
			o.Separator = ropts.Separator
		}
		return resolve.ByName(name, o)
	}
	def, err := build(val(td, "resolver", resolve.NameSiblings))
	if err != nil {
		return nil, err
	}
	var rules []resolve.Rule
	for _, r := range vals(td, "rules") {
		name, prefix, ok := strings.Cut(r, ":")
		if !ok {
			return nil, fmt.Errorf("rule %q: want resolver:prefix", r)
		}
		res, err := build(name)
		if err != nil {
			return nil, err
		}
		rules = append(rules, resolve.Rule{Prefix: prefix, Resolver: res})
	}
	return resolve.NewRules(def, rules)
}

// txnOps reads the ops of "txn dc a=1 b=2 del:c [ctx=...]".
func txnOps(td *datadriven.TestData, dc string) ([]Op, error) {
	var ops []Op
	for _, a := range td.CmdArgs {
		switch {
		case a.Key == dc && len(a.Vals) == 0, a.Key == "ctx":
		case len(a.Vals) == 0 && strings.HasPrefix(a.Key, "del:"):
			ops = append(ops, Op{Key: strings.TrimPrefix(a.Key, "del:"), Delete: true})
		case len(a.Vals) > 0:
			ops = append(ops, Op{Key: a.Key, Value: []byte(strings.Join(a.Vals, ","))})
		default:
			return nil, fmt.Errorf("txn op %q: want key=value or del:key", a.Key)
		}
	}
	return ops, nil
}

// positional returns the first argument without a value (a DC or a link).
func positional(td *datadriven.TestData) string {
	for _, a := range td.CmdArgs {
		if len(a.Vals) == 0 {
			return a.Key
		}
	}
	return ""
}

func parseLink(s string) (Link, error) {
	from, to, ok := strings.Cut(s, "->")
	if !ok {
		return Link{}, fmt.Errorf("link %q: want from->to", s)
	}
	return Link{from, to}, nil
}

// parseContext reads ctx=none|read|read@dc|{dc:n,...} for a write at dc.
func parseContext(c *Cluster, dc, key, s string) (vclock.VV, error) {
	switch {
	case s == "" || s == "none":
		return nil, nil
	case s == "read":
		return c.ReadContext(dc, key)
	case strings.HasPrefix(s, "read@"):
		return c.ReadContext(strings.TrimPrefix(s, "read@"), key)
	}
	return vclock.Parse(s)
}

func runCommand(c *Cluster, td *datadriven.TestData) (string, error) {
	var b strings.Builder
	switch td.Cmd {
	case "write", "delete":
		dc, key := positional(td), val(td, "k", "")
		ctx, err := parseContext(c, dc, key, val(td, "ctx", "none"))
		if err != nil {
			return "", err
		}
		before, _, err := c.Read(dc, key)
		if err != nil {
			return "", err
		}
		op := Op{Key: key, Delete: td.Cmd == "delete", Context: ctx}
		if !op.Delete {
			op.Value = []byte(val(td, "v", ""))
		}
		res, err := c.Write(dc, op)
		if err != nil {
			return "", err
		}
		ev := res.Event
		fmt.Fprintf(&b, "%s %s", ev.Dot, ev.Op)
		if op.Delete {
			fmt.Fprintf(&b, " %s", key)
		} else {
			fmt.Fprintf(&b, " %s=%s", key, valueText(ev.Value))
		}
		fmt.Fprintf(&b, " ctx=%s hlc=%d", ev.Context, ev.HLC)
		if sup := before.Superseded(ev.Context); len(sup) > 0 {
			b.WriteString(" supersedes")
			for _, sb := range sup {
				b.WriteString(" " + sb.Dot.String())
			}
		}
		b.WriteString("\n")

	case "incr", "patch", "add", "remove":
		// A typed operation: incr dc k=K by=N; patch, add and remove take
		// their JSON (a merge patch, an array of elements) as input.
		dc, key := positional(td), val(td, "k", "")
		top := resolve.Op{Kind: resolve.OpKind(td.Cmd)}
		switch td.Cmd {
		case "incr":
			by, err := strconv.ParseInt(val(td, "by", "0"), 10, 64)
			if err != nil {
				return "", fmt.Errorf("by: %w", err)
			}
			top.By = by
		case "patch":
			top.Body = []byte(td.Input)
		default:
			if err := json.Unmarshal([]byte(td.Input), &top.Elements); err != nil {
				return "", fmt.Errorf("%s: the input is not a JSON array of elements: %w", td.Cmd, err)
			}
		}
		before, _, err := c.Read(dc, key)
		if err != nil {
			return "", err
		}
		res, err := c.Write(dc, Op{Key: key, Typed: &top})
		if err != nil {
			return fmt.Sprintf("refused: %v\n", err), nil
		}
		ev := res.Event
		fmt.Fprintf(&b, "%s %s %s ctx=%s hlc=%d", ev.Dot, td.Cmd, key, ev.Context, ev.HLC)
		if sup := before.Superseded(ev.Context); len(sup) > 0 {
			b.WriteString(" supersedes")
			for _, sb := range sup {
				b.WriteString(" " + sb.Dot.String())
			}
		}
		fmt.Fprintf(&b, "\n  writes %s\n", valueText(ev.Value))

	case "txn":
		dc := positional(td)
		ops, err := txnOps(td, dc)
		if err != nil {
			return "", err
		}
		befores := make([]dvv.State, len(ops))
		for i := range ops {
			ctx, err := parseContext(c, dc, ops[i].Key, val(td, "ctx", "none"))
			if err != nil {
				return "", err
			}
			ops[i].Context = ctx
			if befores[i], _, err = c.Read(dc, ops[i].Key); err != nil {
				return "", err
			}
		}
		res, err := c.WriteTxn(dc, ops)
		if err != nil {
			return "", err
		}
		// The ops share one HLC and one outbox entry: every op's sequence
		// leads to the same message.
		entries := map[string]bool{}
		for _, r := range res {
			bs, err := c.DC(dc).Store.OwnEvents(r.Event.Partition, r.Event.Seq, r.Event.Seq, 1)
			if err != nil {
				return "", err
			}
			for _, b := range bs {
				entries[string(b)] = true
			}
		}
		fmt.Fprintf(&b, "%s txn hlc=%d ops=%d in %d outbox entry\n", dc, res[0].Event.HLC, len(res), len(entries))
		for i, r := range res {
			ev := r.Event
			if ev.HLC != res[0].Event.HLC {
				fmt.Fprintf(&b, "  (op %d has hlc=%d)\n", i, ev.HLC)
			}
			fmt.Fprintf(&b, "  %s", opString(ev))
			if c.Partitions() > 1 {
				fmt.Fprintf(&b, " (partition %d)", ev.Partition)
			}
			if sup := befores[i].Superseded(ev.Context); len(sup) > 0 {
				b.WriteString(" supersedes")
				for _, sb := range sup {
					b.WriteString(" " + sb.Dot.String())
				}
			}
			b.WriteString("\n")
		}

	case "tick":
		d := c.DC(positional(td))
		if d == nil {
			return "", fmt.Errorf("no dc %q", positional(td))
		}
		n, err := strconv.ParseUint(val(td, "n", "1"), 10, 64)
		if err != nil {
			return "", err
		}
		d.Clock.Advance(n)
		fmt.Fprintf(&b, "%s hlc=%d\n", d.ID, d.Clock.last.Load())

	case "deliver", "dup":
		which := positional(td)
		print := func(d Delivery) { b.WriteString(d.String() + "\n") }
		if which == "all" {
			if err := c.DeliverAll(print); err != nil {
				return b.String(), err
			}
			break
		}
		l, err := parseLink(which)
		if err != nil {
			return "", err
		}
		if bs := val(td, "batch", ""); bs != "" {
			n, err := strconv.Atoi(bs)
			if err != nil {
				return "", err
			}
			ds, err := c.DeliverBatch(l, n)
			fmt.Fprintf(&b, "one Store.Apply of %d message(s):\n", len(ds))
			for _, d := range ds {
				print(d)
			}
			if err != nil {
				return b.String(), err
			}
			break
		}
		times := 1
		if td.Cmd == "dup" {
			times = 2
		}
		// n=all delivers until the link is empty or everything on it
		// waits for a gap to be repaired.
		n, all := 1, val(td, "n", "1") == "all"
		if !all {
			if n, err = strconv.Atoi(val(td, "n", "1")); err != nil {
				return "", err
			}
		}
		for i, waiting := 0, 0; all || i < n; i++ {
			if all && (c.Queued(l) == 0 || waiting == c.Queued(l)) {
				break
			}
			ds, err := c.Deliver(l, times)
			for _, d := range ds {
				print(d)
				if d.Requeued {
					waiting++
				} else {
					waiting = 0
				}
			}
			if err != nil {
				return b.String(), err
			}
			if len(ds) == 0 {
				b.WriteString(l.String() + ": nothing queued\n")
				break
			}
		}

	case "drop":
		l, err := parseLink(positional(td))
		if err != nil {
			return "", err
		}
		rs, ok, err := c.Drop(l)
		if err != nil {
			return "", err
		}
		if !ok {
			return l.String() + ": nothing queued\n", nil
		}
		if len(rs) == 1 {
			fmt.Fprintf(&b, "%s: dropped %s\n", l, rs[0])
			break
		}
		parts := make([]string, len(rs))
		for i, r := range rs {
			parts[i] = r.String()
		}
		fmt.Fprintf(&b, "%s: dropped a transaction: %s\n", l, strings.Join(parts, ", "))

	case "fill":
		l, err := parseLink(positional(td))
		if err != nil {
			return "", err
		}
		ds, err := c.Fill(l)
		for _, d := range ds {
			b.WriteString(d.String() + "\n")
		}
		if err != nil {
			return b.String(), err
		}
		if len(ds) == 0 {
			b.WriteString(l.String() + ": nothing queued\n")
		}

	case "repair":
		l, err := parseLink(positional(td))
		if err != nil {
			return "", err
		}
		n, err := c.Repair(l)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s: re-sent %d from %s's outbox\n", l, n, l.From)

	case "reorder":
		l, err := parseLink(positional(td))
		if err != nil {
			return "", err
		}
		ok, err := c.Swap(l)
		if err != nil {
			return "", err
		}
		if !ok {
			return l.String() + ": fewer than two queued\n", nil
		}
		fmt.Fprintf(&b, "%s: swapped the first two\n", l)

	case "resend":
		l, err := parseLink(positional(td))
		if err != nil {
			return "", err
		}
		seq, err := strconv.ParseUint(val(td, "seq", ""), 10, 64)
		if err != nil {
			return "", err
		}
		p := event.PartitionOf(val(td, "k", ""), c.Partitions())
		rs, err := c.Resend(l, p, seq)
		if err != nil {
			return "", err
		}
		if len(rs) == 1 {
			fmt.Fprintf(&b, "%s: queued %s:%d again\n", l, l.From, seq)
			break
		}
		parts := make([]string, len(rs))
		for i, r := range rs {
			parts[i] = r.String()
		}
		fmt.Fprintf(&b, "%s: queued %s:%d again, in its transaction: %s\n", l, l.From, seq, strings.Join(parts, ", "))

	case "show":
		dc := positional(td)
		keys := vals(td, "k")
		if len(keys) == 0 {
			snap, err := c.Snapshot(dc)
			if err != nil {
				return "", err
			}
			for k := range snap {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			if len(keys) == 0 {
				return "no keys\n", nil
			}
		}
		for _, k := range keys {
			st, ok, err := c.Read(dc, k)
			if err != nil {
				return "", err
			}
			b.WriteString(showState(c.Resolver(k), k, st, ok))
		}

	case "scan":
		dc := positional(td)
		d := c.DC(dc)
		if d == nil {
			return "", fmt.Errorf("no dc %q", dc)
		}
		// One Store.Scan: one consistent snapshot, as GET /v1/kv?prefix=.
		snap := map[string]dvv.State{}
		err := d.Store.Scan(val(td, "prefix", ""), func(key string, st dvv.State) error {
			snap[key] = st.Clone()
			return nil
		})
		if err != nil {
			return "", err
		}
		keys := vals(td, "k")
		if len(keys) == 0 {
			keys = sortedKeys(snap)
		}
		if len(keys) == 0 {
			return "no keys\n", nil
		}
		for _, k := range keys {
			st, ok := snap[k]
			if !ok {
				fmt.Fprintf(&b, "%s = absent\n", k)
				continue
			}
			res := c.Resolver(k).Resolve(k, st.Siblings)
			shown := "deleted"
			if !res.Deleted {
				vs := make([]string, len(res.Values))
				for i, v := range res.Values {
					vs[i] = fmt.Sprintf("%q", v)
				}
				shown = strings.Join(vs, ", ")
			}
			if res.Conflict {
				shown += " [conflict]"
			}
			dots := make([]string, len(res.Kept))
			for i, sb := range res.Kept {
				dots[i] = sb.Dot.String()
			}
			fmt.Fprintf(&b, "%s = %s  (%s)\n", k, shown, strings.Join(dots, " "))
		}

	case "applied":
		dc := positional(td)
		d := c.DC(dc)
		if d == nil {
			return "", fmt.Errorf("no dc %q", dc)
		}
		a := d.Store.Applied()
		for _, o := range c.DCs() {
			what := "applied"
			if o == dc {
				what = "issued"
			}
			fmt.Fprintf(&b, "%s %s:", o, what)
			for p := range c.Partitions() {
				fmt.Fprintf(&b, " p%d=%d", p, a.Vector(uint32(p))[o])
			}
			b.WriteString("\n")
		}

	case "conflicts":
		d := c.DC(positional(td))
		if d == nil {
			return "", fmt.Errorf("no dc %q", positional(td))
		}
		cs, err := d.Store.Conflicts(changelog.ConflictFilter{})
		if err != nil {
			return "", err
		}
		if len(cs) == 0 {
			return "no conflicts\n", nil
		}
		for _, cf := range cs {
			fmt.Fprintf(&b, "%s %s %s clock=%s\n", cf.Key, cf.Resolver, cf.Status, cf.Clock)
			fmt.Fprintf(&b, "  kept: %s\n", versions(cf.Kept))
			if len(cf.Discarded) > 0 {
				fmt.Fprintf(&b, "  discarded: %s\n", versions(cf.Discarded))
			}
		}

	case "digest":
		var first string
		equal := true
		var lines []string
		for i, id := range c.DCs() {
			d, err := c.DC(id).Store.Digest()
			if err != nil {
				return "", err
			}
			h := d.Hex()
			if i == 0 {
				first = h
			} else if h != first {
				equal = false
			}
			lines = append(lines, fmt.Sprintf("%s %s keys=%d", id, h[:12], d.Keys))
		}
		if equal {
			b.WriteString("digests equal\n")
		} else {
			b.WriteString("digests DIFFER\n")
		}
		b.WriteString(strings.Join(lines, "\n") + "\n")

	case "report":
		which := positional(td)
		if which == "all" {
			if err := c.ReportAll(); err != nil {
				return "", err
			}
			return "every DC reported its applied vector to every other\n", nil
		}
		l, err := parseLink(which)
		if err != nil {
			return "", err
		}
		if err := c.Report(l.From, l.To); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s reported its applied vector to %s\n", l.From, l.To)

	case "purge":
		n, err := c.Purge(positional(td))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "purged %d\n", n)

	case "trim":
		n, err := c.Trim(positional(td))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "trimmed %d\n", n)

	case "restart":
		dc := positional(td)
		if err := c.Restart(dc); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s restarted\n", dc)

	case "pending":
		for _, l := range c.Links() {
			q, m := c.Queued(l), c.Missing(l)
			if q == 0 && len(m) == 0 {
				continue
			}
			fmt.Fprintf(&b, "%s: %d queued, %d dropped\n", l, q, len(m))
		}
		if b.Len() == 0 {
			b.WriteString("nothing pending\n")
		}

	default:
		return "", fmt.Errorf("unknown command %q", td.Cmd)
	}
	return b.String(), nil
}

// showState renders a key: its clock, its siblings, and what its resolver
// shows.
func showState(r resolve.Resolver, key string, st dvv.State, ok bool) string {
	if !ok {
		return key + ": absent\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: clock=%s\n", key, st.Clock)
	for _, sb := range st.Siblings {
		if sb.Deleted {
			fmt.Fprintf(&b, "  %s tombstone hlc=%d\n", sb.Dot, sb.HLC)
		} else {
			fmt.Fprintf(&b, "  %s %s hlc=%d\n", sb.Dot, valueText(sb.Value), sb.HLC)
		}
	}
	res := r.Resolve(key, st.Siblings)
	fmt.Fprintf(&b, "  %s shows: ", r.Name())
	if res.Deleted {
		b.WriteString("nothing (deleted)")
	} else {
		for i, v := range res.Values {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q", v)
		}
	}
	if res.Conflict {
		b.WriteString(" [conflict]")
	}
	if len(res.Discarded) > 0 {
		b.WriteString("; discards")
		for _, d := range res.Discarded {
			fmt.Fprintf(&b, " %s", d.Dot)
		}
	}
	b.WriteString("\n")
	return b.String()
}

func versions(vs []changelog.Version) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		if v.Deleted {
			parts[i] = fmt.Sprintf("%s tombstone hlc=%d", v.Dot, v.HLC)
		} else {
			parts[i] = fmt.Sprintf("%s %q hlc=%d", v.Dot, v.Value, v.HLC)
		}
	}
	return strings.Join(parts, ", ")
}
