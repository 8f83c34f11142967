package resolve

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// Resolver decides what a key with concurrent siblings shows. Pure and
// deterministic: the result depends only on the set of siblings, never on
// their order.
type Resolver interface {
	// Name is the resolver's config name, such as "lww".
	Name() string
	// Resolve returns what key shows given its siblings. It does not modify
	// sibs; the Result may share value bytes with it.
	Resolve(key string, sibs []dvv.Sibling) Result
	// OnWrite reports whether the resolver resolves on write (lww, priority,
	// concat, union, external): for those, a write that carries no context
	// supersedes everything the DC holds for the key.
	OnWrite() bool
}

// Result is what a resolver decided for one key.
//
// Values, Kept and Discarded may share their byte slices with the siblings
// passed to Resolve; callers must not modify them.
type Result struct {
	// Values is what a read shows, in a deterministic order; empty when the
	// outcome is a delete or the key is absent.
	Values [][]byte
	// Deleted reports that no live value is shown: every sibling is a
	// tombstone, there are none, or a tombstone won.
	Deleted bool
	// Kept holds the siblings whose versions the result shows, sorted by
	// dot (the conflict log's "kept" side). When the outcome is a delete it
	// holds the tombstone(s) that decided it.
	Kept []dvv.Sibling
	// Discarded holds the live versions the resolver drops, sorted by dot;
	// the store writes each to the conflict log. A losing tombstone is never
	// listed: it carries no value, so dropping it loses nothing.
	Discarded []dvv.Sibling
	// Conflict reports that a read should flag a conflict: more than one
	// live value is shown and nobody has resolved them yet (siblings,
	// record, and union when it cannot merge).
	Conflict bool
}

// Resolver names, as written in the config.
const (
	NameSiblings = "siblings"
	NameLWW      = "lww"
	NamePriority = "priority"
	NameConcat   = "concat"
	NameUnion    = "union"
	NameRecord   = "record"
	NameCounter  = "counter"
	NameFields   = "fields"
	NameSet      = "set"
	// NameExternal is valid in the config but built by the node, which
	// owns the NATS connection; ByName rejects it.
	NameExternal = "external"
)

// DefaultSeparator is what concat joins values with when none is set.
const DefaultSeparator = "/"

// Names returns the resolvers ByName builds, in a stable order.
func Names() []string {
	return []string{NameSiblings, NameLWW, NamePriority, NameConcat, NameUnion, NameRecord, NameCounter, NameFields, NameSet}
}

// Options holds the settings some resolvers take. A setting given to a
// resolver that does not use it is an error, so a misplaced config field is
// reported rather than ignored.
type Options struct {
	// Order is priority's DC list, highest priority first. Required for
	// priority; DC ids must be valid and appear once.
	Order []string
	// Separator is what concat joins values with; empty means
	// DefaultSeparator ("/").
	Separator string
}

// ErrUnknown reports a resolver name ByName does not know.
var ErrUnknown = errors.New("resolve: unknown resolver")

// ByName builds the resolver called name with opts.
func ByName(name string, opts Options) (Resolver, error) {
	var errs []error
	if len(opts.Order) > 0 && name != NamePriority {
		errs = append(errs, fmt.Errorf("resolve: %s: order applies only to %s", name, NamePriority))
	}
	if opts.Separator != "" && name != NameConcat {
		errs = append(errs, fmt.Errorf("resolve: %s: separator applies only to %s", name, NameConcat))
	}
	var r Resolver
	switch name {
	case NameSiblings:
		r = Siblings()
	case NameLWW:
		r = LWW()
	case NamePriority:
		errs = append(errs, checkOrder(opts.Order)...)
		r = Priority(opts.Order)
	case NameConcat:
		r = Concat(opts.Separator)
	case NameUnion:
		r = Union()
	case NameRecord:
		r = Record()
	case NameCounter:
		r = Counter()
	case NameFields:
		r = Fields()
	case NameSet:
		r = Set()
	case NameExternal:
		return nil, fmt.Errorf("resolve: %q is built by the node, which wraps a fallback resolver from this package", name)
	default:
		return nil, fmt.Errorf("%w %q: valid names are %s", ErrUnknown, name, strings.Join(Names(), ", "))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return r, nil
}

func checkOrder(order []string) []error {
	if len(order) == 0 {
		return []error{fmt.Errorf("resolve: %s: order must list at least one DC, highest priority first", NamePriority)}
	}
	var errs []error
	seen := make(map[string]int, len(order))
	for i, dc := range order {
		if err := vclock.ValidID(dc); err != nil {
			errs = append(errs, fmt.Errorf("resolve: %s: order[%d]: %w", NamePriority, i, err))
			continue
		}
		if j, dup := seen[dc]; dup {
			errs = append(errs, fmt.Errorf("resolve: %s: order[%d]: dc %q already listed at order[%d]", NamePriority, i, dc, j))
			continue
		}
		seen[dc] = i
	}
	return errs
}

// compareSiblings is the canonical total order on siblings: by dot (DC id,
// then counter), then by every other field, so sorting any permutation of a
// set gives the same slice.
func compareSiblings(a, b dvv.Sibling) int {
	if c := cmp.Compare(a.Dot.DC, b.Dot.DC); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Dot.N, b.Dot.N); c != 0 {
		return c
	}
	return compareVersions(a.Version, b.Version)
}

// compareVersions orders versions by every field: live before tombstone,
// then HLC, then value bytes (nil before empty).
func compareVersions(a, b dvv.Version) int {
	if a.Deleted != b.Deleted {
		if a.Deleted {
			return 1
		}
		return -1
	}
	if c := cmp.Compare(a.HLC, b.HLC); c != 0 {
		return c
	}
	if c := bytes.Compare(a.Value, b.Value); c != 0 {
		return c
	}
	if (a.Value == nil) != (b.Value == nil) {
		if a.Value == nil {
			return -1
		}
		return 1
	}
	return 0
}

// sorted returns the siblings that keep selects, as a new slice in
// canonical order; nil when there are none.
func sorted(sibs []dvv.Sibling, keep func(dvv.Sibling) bool) []dvv.Sibling {
	var out []dvv.Sibling
	for _, sb := range sibs {
		if keep(sb) {
			out = append(out, sb)
		}
	}
	slices.SortFunc(out, compareSiblings)
	return out
}

func isLive(sb dvv.Sibling) bool { return !sb.Deleted }
func isAny(dvv.Sibling) bool     { return true }

// deleted is the Result when no sibling is live: a delete, kept by the
// tombstones, or an absent key.
func deleted(sibs []dvv.Sibling) Result {
	return Result{Deleted: true, Kept: sorted(sibs, isAny)}
}

// values returns the values of sibs in order.
func values(sibs []dvv.Sibling) [][]byte {
	out := make([][]byte, len(sibs))
	for i, sb := range sibs {
		out[i] = sb.Value
	}
	return out
}
