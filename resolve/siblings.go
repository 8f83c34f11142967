package resolve

import (
	"bytes"
	"slices"

	"github.com/replicatorhq/replicator/pkg/dvv"
)

var (
	_ Resolver = siblings{}
	_ Resolver = concat{}
)

// Siblings returns the default resolver, which resolves on read: a read
// shows every live value, sorted by dot, with a conflict flag when there is
// more than one, and a write with the read's context replaces them (Riak
// allow_mult, CouchDB). It discards nothing.
func Siblings() Resolver { return siblings{name: NameSiblings} }

// Record returns a resolver that shows what Siblings shows; the store opens
// a conflict record whenever Result.Conflict is set, and a person resolves
// it later through the API or CLI (CouchDB _conflicts, Cosmos conflict
// feed).
func Record() Resolver { return siblings{name: NameRecord} }

type siblings struct{ name string }

func (s siblings) Name() string  { return s.name }
func (s siblings) OnWrite() bool { return false }

func (s siblings) Resolve(_ string, sibs []dvv.Sibling) Result {
	return showAll(sibs)
}

// showAll shows every live value sorted by dot, flagging a conflict when
// there is more than one.
func showAll(sibs []dvv.Sibling) Result {
	live := sorted(sibs, isLive)
	if len(live) == 0 {
		return deleted(sibs)
	}
	return Result{Values: values(live), Kept: live, Conflict: len(live) > 1}
}

// Concat returns a resolver that joins the live values, sorted bytewise and
// de-duplicated, with sep into one value: concurrent "B" and "C" show
// "B/C" (docs/DESIGN.md "Resolvers": sort and concatenate). An empty sep means
// DefaultSeparator. Tombstones are ignored unless every sibling is one,
// which shows a delete. Every live value is represented, so nothing is
// discarded; Kept lists every live sibling.
func Concat(sep string) Resolver {
	if sep == "" {
		sep = DefaultSeparator
	}
	return concat{sep: []byte(sep)}
}

type concat struct{ sep []byte }

func (concat) Name() string  { return NameConcat }
func (concat) OnWrite() bool { return true }

func (c concat) Resolve(_ string, sibs []dvv.Sibling) Result {
	live := sorted(sibs, isLive)
	if len(live) == 0 {
		return deleted(sibs)
	}
	if len(live) == 1 {
		return Result{Values: [][]byte{live[0].Value}, Kept: live}
	}
	vals := values(live)
	slices.SortFunc(vals, bytes.Compare)
	uniq := vals[:1]
	for _, v := range vals[1:] {
		if !bytes.Equal(v, uniq[len(uniq)-1]) {
			uniq = append(uniq, v)
		}
	}
	return Result{Values: [][]byte{bytes.Join(uniq, c.sep)}, Kept: live}
}
