package sim

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// typedSeeds is how many seeded schedules TestTypedRandom runs.
const typedSeeds = 150

// typedRef is one typed operation in the reference model, with the dots
// of the operations on its key its DC had seen (covered by the key's clock
// there) when it made it.
type typedRef struct {
	dot   string
	kind  resolve.OpKind
	by    int64
	elems []string
	seen  map[string]bool
}

// TestTypedRandom: counters, sets and documents written at random DCs
// under reordering, duplication, loss (repaired) and restarts converge:
// every DC shows the same value, the digests are equal, and counters and
// sets show what a deliberately simple reference computes from every
// operation and what its DC had seen (an increment counts unless a delete
// saw it; an element is in while an add of it was seen by no later remove,
// add, put or delete).
func TestTypedRandom(t *testing.T) {
	for seed := int64(1); seed <= typedSeeds; seed++ {
		if msg := runTyped(seed); msg != "" {
			t.Fatalf("seed %d: %s", seed, msg)
		}
	}
}

func runTyped(seed int64) string {
	r := rand.New(rand.NewSource(seed))
	var dcs []string
	for i := range 3 + r.Intn(2) {
		dcs = append(dcs, fmt.Sprintf("dc%d", i+1))
	}
	topology, hub := config.Mesh, ""
	switch r.Intn(3) {
	case 1:
		topology = config.Ring
	case 2:
		topology, hub = config.Star, dcs[r.Intn(len(dcs))]
	}
	rules, err := resolve.NewRules(resolve.Siblings(), []resolve.Rule{
		{Prefix: "n/", Resolver: resolve.Counter()},
		{Prefix: "e/", Resolver: resolve.Set()},
		{Prefix: "d/", Resolver: resolve.Fields()},
	})
	if err != nil {
		return err.Error()
	}
	c, err := New(Options{DCs: dcs, Partitions: 1 + r.Intn(3), Resolvers: rules, Topology: topology, Hub: hub})
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	keys := []string{"n/a", "n/b", "e/a", "e/b", "d/a"}
	refs := map[string][]typedRef{}
	elems := []string{`"x"`, `"y"`, `1`, `{"k":[1,2]}`}
	links := c.Links()
	for step := range 60 + r.Intn(60) {
		switch p := r.Intn(100); {
		case p < 40:
			dc, key := dcs[r.Intn(len(dcs))], keys[r.Intn(len(keys))]
			st, _, err := c.Read(dc, key)
			if err != nil {
				return err.Error()
			}
			op, ref := randTypedOp(r, key, elems)
			res, err := c.Write(dc, Op{Key: key, Typed: &op, Delete: op.Kind == resolve.OpDelete})
			if err != nil {
				return fmt.Sprintf("step %d: %s %s at %s: %v", step, op.Kind, key, dc, err)
			}
			ref.dot = res.Event.Dot.String()
			ref.seen = map[string]bool{}
			for _, o := range refs[key] {
				if st.Clock.Covers(mustDot(o.dot)) {
					ref.seen[o.dot] = true
				}
			}
			refs[key] = append(refs[key], ref)
		case p < 70:
			l := links[r.Intn(len(links))]
			times := 1
			if r.Intn(5) == 0 {
				times = 2 // a duplicate
			}
			if c.Queued(l) > 0 {
				if _, err := c.Deliver(l, times); err != nil {
					return fmt.Sprintf("step %d: deliver %v: %v", step, l, err)
				}
			}
		case p < 78:
			if _, _, err := c.Drop(links[r.Intn(len(links))]); err != nil {
				return err.Error()
			}
		case p < 86:
			if _, err := c.Swap(links[r.Intn(len(links))]); err != nil {
				return err.Error()
			}
		case p < 92:
			if _, err := c.Repair(links[r.Intn(len(links))]); err != nil {
				return err.Error()
			}
		case p < 96:
			if _, _, err := c.Redeliver(links[r.Intn(len(links))]); err != nil {
				return err.Error()
			}
		default:
			if err := c.Restart(dcs[r.Intn(len(dcs))]); err != nil {
				return err.Error()
			}
		}
	}
	if err := c.DeliverAll(nil); err != nil {
		return "deliver all: " + err.Error()
	}
	if _, same, err := c.Digests(); err != nil || !same {
		return fmt.Sprintf("digests differ after delivering everything (%v)", err)
	}
	for _, key := range keys {
		var first string
		for i, dc := range dcs {
			st, _, err := c.Read(dc, key)
			if err != nil {
				return err.Error()
			}
			got := typedShows(c.Resolver(key), key, st)
			if i == 0 {
				first = got
			} else if got != first {
				return fmt.Sprintf("%s: %s shows %s, %s shows %s", key, dcs[0], first, dc, got)
			}
		}
		want := ""
		switch key[:2] {
		case "n/":
			want = refCounterView(refs[key])
		case "e/":
			want = refSetView(refs[key])
		default:
			continue
		}
		if first != want {
			return fmt.Sprintf("%s shows %s, the reference %s (ops %+v)", key, first, want, refs[key])
		}
	}
	return ""
}

func mustDot(s string) (d vclock.Dot) {
	dc, n, _ := strings.Cut(s, ":")
	d.DC = dc
	d.N, _ = strconv.ParseUint(n, 10, 64)
	return d
}

func randTypedOp(r *rand.Rand, key string, elems []string) (resolve.Op, typedRef) {
	if r.Intn(8) == 0 {
		return resolve.Op{Kind: resolve.OpDelete}, typedRef{kind: resolve.OpDelete}
	}
	switch key[:2] {
	case "n/":
		by := int64(r.Intn(9) - 4)
		if by == 0 {
			by = 7
		}
		return resolve.Op{Kind: resolve.OpIncr, By: by}, typedRef{kind: resolve.OpIncr, by: by}
	case "e/":
		var es []string
		for range 1 + r.Intn(2) {
			es = append(es, elems[r.Intn(len(elems))])
		}
		raw := make([]json.RawMessage, len(es))
		for i, e := range es {
			raw[i] = json.RawMessage(e)
		}
		kind := resolve.OpAdd
		if r.Intn(3) == 0 {
			kind = resolve.OpRemove
		}
		return resolve.Op{Kind: kind, Elements: raw}, typedRef{kind: kind, elems: es}
	}
	fields := []string{"title", "body"}
	patch := fmt.Sprintf(`{%q:%d}`, fields[r.Intn(2)], r.Intn(5))
	if r.Intn(4) == 0 {
		patch = fmt.Sprintf(`{%q:null}`, fields[r.Intn(2)])
	}
	return resolve.Op{Kind: resolve.OpPatch, Body: []byte(patch)}, typedRef{kind: resolve.OpPatch}
}

func typedShows(r resolve.Resolver, key string, st dvv.State) string {
	res := r.Resolve(key, st.Siblings)
	if res.Deleted {
		return "<deleted>"
	}
	var parts []string
	for _, v := range res.Values {
		parts = append(parts, string(v))
	}
	if res.Conflict {
		return "conflict: " + strings.Join(parts, " | ")
	}
	return strings.Join(parts, " | ")
}

// refCounterView: the sum of the increments no delete saw.
func refCounterView(ops []typedRef) string {
	total, live := int64(0), false
	for _, op := range ops {
		if op.kind != resolve.OpIncr || slices.ContainsFunc(ops, func(o typedRef) bool { return o.kind == resolve.OpDelete && o.seen[op.dot] }) {
			continue
		}
		total += op.by
		live = true
	}
	if !live {
		return "<deleted>"
	}
	return strconv.FormatInt(total, 10)
}

// refSetView: an element is in while some add of it was seen by no remove
// of it, later add of it, or delete.
func refSetView(ops []typedRef) string {
	in := map[string]bool{}
	for _, op := range ops {
		if op.kind != resolve.OpAdd {
			continue
		}
		for _, e := range op.elems {
			gone := slices.ContainsFunc(ops, func(o typedRef) bool {
				return o.seen[op.dot] && (o.kind == resolve.OpDelete || slices.Contains(o.elems, e))
			})
			if !gone {
				in[e] = true
			}
		}
	}
	if len(in) == 0 {
		return "<deleted>"
	}
	var out []string
	for e := range in {
		out = append(out, canonical(e))
	}
	sort.Strings(out)
	return "[" + strings.Join(out, ",") + "]"
}

func canonical(e string) string {
	var x any
	_ = json.Unmarshal([]byte(e), &x)
	b, _ := json.Marshal(x)
	return string(b)
}
