package resolve

import (
	"cmp"
	"slices"
	"strings"

	"github.com/replicatorhq/replicator/pkg/dvv"
)

var (
	_ Resolver = lww{}
	_ Resolver = (*priority)(nil)
)

// LWW returns the last-writer-wins resolver: the sibling with the highest
// (HLC, DC id, counter) wins, tombstones included, so a delete that wins
// shows the key as deleted. Every other live sibling is discarded, and so
// lands in the conflict log (Cassandra/DynamoDB, but audited).
func LWW() Resolver { return lww{} }

type lww struct{}

func (lww) Name() string  { return NameLWW }
func (lww) OnWrite() bool { return true }

func (lww) Resolve(_ string, sibs []dvv.Sibling) Result {
	return pick(sibs, compareLWW)
}

// compareLWW orders siblings by (HLC, DC id, counter), then by the
// remaining fields so that the order is total.
func compareLWW(a, b dvv.Sibling) int {
	if c := cmp.Compare(a.HLC, b.HLC); c != 0 {
		return c
	}
	return compareSiblings(a, b)
}

// Priority returns a resolver where the sibling whose origin DC comes
// earliest in order wins ("the replica with precedence wins"). DCs missing
// from order rank after every listed DC, by ascending DC id. Siblings from
// the same DC (two blind writes there) are ordered by HLC, then counter,
// the higher winning. Tombstones compete like values, and losers are
// discarded as in LWW. order is copied; a repeated DC counts at its first
// position.
func Priority(order []string) Resolver {
	p := &priority{rank: make(map[string]int, len(order))}
	for i, dc := range order {
		if _, ok := p.rank[dc]; !ok {
			p.rank[dc] = i
		}
	}
	return p
}

type priority struct{ rank map[string]int }

func (*priority) Name() string  { return NamePriority }
func (*priority) OnWrite() bool { return true }

func (p *priority) Resolve(_ string, sibs []dvv.Sibling) Result {
	return pick(sibs, p.compare)
}

// compare orders siblings so that the higher-priority one is greater.
func (p *priority) compare(a, b dvv.Sibling) int {
	if a.Dot.DC != b.Dot.DC {
		ra, oka := p.rank[a.Dot.DC]
		rb, okb := p.rank[b.Dot.DC]
		switch {
		case oka && okb:
			return cmp.Compare(rb, ra)
		case oka:
			return 1
		case okb:
			return -1
		}
		return strings.Compare(b.Dot.DC, a.Dot.DC)
	}
	if c := cmp.Compare(a.HLC, b.HLC); c != 0 {
		return c
	}
	return compareSiblings(a, b)
}

// pick keeps the greatest sibling under the total order compare and
// discards every other live one.
func pick(sibs []dvv.Sibling, compare func(a, b dvv.Sibling) int) Result {
	if len(sibs) == 0 {
		return Result{Deleted: true}
	}
	w := 0
	for i := 1; i < len(sibs); i++ {
		if compare(sibs[i], sibs[w]) > 0 {
			w = i
		}
	}
	winner := sibs[w]
	// One allocation backs both Kept and Discarded.
	buf := make([]dvv.Sibling, 1, len(sibs))
	buf[0] = winner
	for i, sb := range sibs {
		if i != w && !sb.Deleted {
			buf = append(buf, sb)
		}
	}
	var discarded []dvv.Sibling
	if len(buf) > 1 {
		discarded = buf[1:]
		slices.SortFunc(discarded, compareSiblings)
	}
	res := Result{Kept: buf[:1:1], Discarded: discarded, Deleted: winner.Deleted}
	if !winner.Deleted {
		res.Values = [][]byte{winner.Value}
	}
	return res
}
