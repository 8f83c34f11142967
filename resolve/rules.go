package resolve

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Rule picks Resolver for the keys that start with Prefix.
type Rule struct {
	Prefix   string
	Resolver Resolver
}

// Rules chooses a key's resolver: the rule with the longest prefix of the
// key, else the default. It is immutable and safe for concurrent use.
type Rules struct {
	def   Resolver
	rules []Rule // longest prefix first
}

// NewRules builds the rule set. Every problem is reported at once: a nil
// default or rule resolver, an empty prefix (that is what the default is
// for), or a prefix used twice.
func NewRules(def Resolver, rules []Rule) (*Rules, error) {
	var errs []error
	if def == nil {
		errs = append(errs, errors.New("resolve: default resolver is nil"))
	}
	seen := make(map[string]int, len(rules))
	for i, r := range rules {
		if r.Resolver == nil {
			errs = append(errs, fmt.Errorf("resolve: rule %d (prefix %q): resolver is nil", i, r.Prefix))
		}
		if r.Prefix == "" {
			errs = append(errs, fmt.Errorf("resolve: rule %d: prefix is empty; set the default resolver instead", i))
			continue
		}
		if j, dup := seen[r.Prefix]; dup {
			errs = append(errs, fmt.Errorf("resolve: rule %d: prefix %q is already used by rule %d", i, r.Prefix, j))
			continue
		}
		seen[r.Prefix] = i
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sortedRules := slices.Clone(rules)
	slices.SortFunc(sortedRules, func(a, b Rule) int {
		if c := cmp.Compare(len(b.Prefix), len(a.Prefix)); c != 0 {
			return c
		}
		return strings.Compare(a.Prefix, b.Prefix)
	})
	return &Rules{def: def, rules: sortedRules}, nil
}

// For returns the resolver for key: the rule with the longest prefix of
// key, else the default.
func (r *Rules) For(key string) Resolver {
	for i := range r.rules {
		if strings.HasPrefix(key, r.rules[i].Prefix) {
			return r.rules[i].Resolver
		}
	}
	return r.def
}

// Default returns the resolver for keys no rule matches.
func (r *Rules) Default() Resolver { return r.def }
