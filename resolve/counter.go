package resolve

import (
	"cmp"
	"math"
	"math/big"
	"slices"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

var _ Typed = counter{}

// Counter returns the PN-counter resolver. Each DC keeps its own
// contributions (P, the sum of its increments, and N, of its decrements)
// and the baselines removed by the deletes it observed (RP, RN); the join
// takes each of the four per DC by max, and the counter shows
// Σ (P−RP) − (N−RN). A delete sets every baseline it observed to the
// contribution it observed, so an increment it had not seen survives it
// alone (observed-remove). A key with no contribution since the removals
// its state observed shows a delete.
func Counter() Resolver { return counter{} }

type counter struct{}

func (counter) Name() string  { return NameCounter }
func (counter) OnWrite() bool { return true }

// counterState is a counter's stored and replicated state.
type counterState struct {
	_msgpack struct{} `msgpack:",as_array"`
	Type     string
	V        int
	DCs      []counterEntry // sorted by DC
}

type counterEntry struct {
	_msgpack struct{} `msgpack:",as_array"`
	DC       string
	P, N     uint64
	RP, RN   uint64
}

// decodeCounter decodes a counter state, normalised (sorted by DC, one
// entry per DC) whatever order a peer sent.
func decodeCounter(b []byte) (counterState, error) {
	var st counterState
	if err := decodeTyped(b, NameCounter, &st); err != nil {
		return st, err
	}
	return joinCounter(counterState{}, st), nil
}

// joinCounter is the counter's join: per DC, each field by max.
func joinCounter(a, b counterState) counterState {
	out := counterState{Type: NameCounter, V: typedVersion, DCs: slices.Clone(a.DCs)}
	for _, e := range b.DCs {
		i, ok := slices.BinarySearchFunc(out.DCs, e.DC, func(x counterEntry, dc string) int { return cmp.Compare(x.DC, dc) })
		if !ok {
			out.DCs = slices.Insert(out.DCs, i, counterEntry{DC: e.DC, P: e.P, N: e.N, RP: e.RP, RN: e.RN})
			continue
		}
		x := &out.DCs[i]
		x.P, x.N, x.RP, x.RN = max(x.P, e.P), max(x.N, e.N), max(x.RP, e.RP), max(x.RN, e.RN)
	}
	return out
}

// total is Σ (P−RP) − (N−RN), exact.
func (st counterState) total() *big.Int {
	t, x := new(big.Int), new(big.Int)
	for _, e := range st.DCs {
		t.Add(t, x.SetUint64(e.P))
		t.Sub(t, x.SetUint64(e.RP))
		t.Sub(t, x.SetUint64(e.N))
		t.Add(t, x.SetUint64(e.RN))
	}
	return t
}

// exists reports whether some DC contributed since the removals observed.
func (st counterState) exists() bool {
	for _, e := range st.DCs {
		if e.P != e.RP || e.N != e.RN {
			return true
		}
	}
	return false
}

func (st counterState) view() ([]byte, bool) {
	return []byte(st.total().String()), st.exists()
}

func (counter) Resolve(_ string, sibs []dvv.Sibling) Result {
	res, _, _ := typedResolve(sibs, decodeCounter, joinCounter, counterState.view)
	return res
}

var minInt64, maxInt64 = big.NewInt(math.MinInt64), big.NewInt(math.MaxInt64)

func (counter) Apply(sibs []dvv.Sibling, op Op, dot vclock.Dot, _ uint64) ([]byte, error) {
	st, err := joinLive(NameCounter, sibs, decodeCounter, joinCounter, counterState{Type: NameCounter, V: typedVersion})
	if err != nil {
		return nil, err
	}
	switch op.Kind {
	case OpIncr:
		if op.By == 0 {
			return nil, badOp(`incr needs a non-zero "by"`)
		}
		i, ok := slices.BinarySearchFunc(st.DCs, dot.DC, func(x counterEntry, dc string) int { return cmp.Compare(x.DC, dc) })
		if !ok {
			st.DCs = slices.Insert(st.DCs, i, counterEntry{DC: dot.DC})
		}
		e := &st.DCs[i]
		if op.By > 0 {
			if e.P > math.MaxUint64-uint64(op.By) {
				return nil, badOp("this DC's increments of the counter would overflow 64 bits")
			}
			e.P += uint64(op.By)
		} else {
			by := uint64(-(op.By + 1)) + 1
			if e.N > math.MaxUint64-by {
				return nil, badOp("this DC's decrements of the counter would overflow 64 bits")
			}
			e.N += by
		}
		if t := st.total(); t.Cmp(maxInt64) > 0 || t.Cmp(minInt64) < 0 {
			return nil, badOp("incr by %d would take the counter to %s, outside int64", op.By, t)
		}
	case OpDelete:
		for i := range st.DCs {
			st.DCs[i].RP, st.DCs[i].RN = st.DCs[i].P, st.DCs[i].N
		}
	case OpPut:
		return nil, badOp(`a counter key takes no PUT; use POST /v1/kv/{key}?op=incr with {"by": N}`)
	default:
		return nil, badOp("the key is a counter: %s does not apply; use incr", op.Kind)
	}
	return encodeTyped(st), nil
}
