package resolve

import (
	"strings"
	"testing"
)

func TestRulesLongestPrefix(t *testing.T) {
	rules, err := NewRules(Siblings(), []Rule{
		{Prefix: "cart/", Resolver: Union()},
		{Prefix: "user/", Resolver: LWW()},
		{Prefix: "user/admin/", Resolver: Priority([]string{"dc1"})},
		{Prefix: "user/admin/audit", Resolver: Record()},
		{Prefix: "u", Resolver: Concat("")},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ key, want string }{
		{"cart/42", "union"},
		{"cart/", "union"},
		{"cart", "siblings"}, // shorter than every prefix it might match
		{"user/7", "lww"},
		{"user/admin/root", "priority"},
		{"user/admin/audit/1", "record"},
		{"user/admin", "lww"},
		{"users", "concat"},
		{"u", "concat"},
		{"", "siblings"},
		{"other", "siblings"},
		{"Cart/1", "siblings"}, // prefixes are case-sensitive
	}
	for _, tt := range tests {
		if got := rules.For(tt.key).Name(); got != tt.want {
			t.Errorf("For(%q) = %s, want %s", tt.key, got, tt.want)
		}
	}
	if got := rules.Default().Name(); got != "siblings" {
		t.Errorf("Default() = %s, want siblings", got)
	}
}

func TestRulesNoRules(t *testing.T) {
	rules, err := NewRules(LWW(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := rules.For("any").Name(); got != "lww" {
		t.Errorf("For with no rules = %s, want the default lww", got)
	}
}

func TestRulesDoesNotKeepCallerSlice(t *testing.T) {
	in := []Rule{{Prefix: "a", Resolver: LWW()}, {Prefix: "ab", Resolver: Union()}}
	rules, err := NewRules(Siblings(), in)
	if err != nil {
		t.Fatal(err)
	}
	in[0].Resolver, in[1].Resolver = Record(), Record()
	if got := rules.For("abc").Name(); got != "union" {
		t.Errorf("after the caller changed its slice, For(abc) = %s, want union", got)
	}
}

func TestNewRulesErrors(t *testing.T) {
	tests := []struct {
		name   string
		def    Resolver
		rules  []Rule
		errHas []string
	}{
		{"nil default", nil, nil, []string{"default resolver is nil"}},
		{"nil rule resolver", Siblings(), []Rule{{Prefix: "a/"}}, []string{`rule 0 (prefix "a/"): resolver is nil`}},
		{"duplicate prefix", Siblings(), []Rule{{"a/", LWW()}, {"b/", LWW()}, {"a/", Union()}},
			[]string{`rule 2: prefix "a/" is already used by rule 0`}},
		{"empty prefix", Siblings(), []Rule{{"", LWW()}}, []string{"rule 0: prefix is empty"}},
		{"every problem at once", nil, []Rule{{"x", nil}, {"x", LWW()}},
			[]string{"default resolver is nil", "rule 0", "rule 1"}},
	}
	for _, tt := range tests {
		_, err := NewRules(tt.def, tt.rules)
		if err == nil {
			t.Errorf("%s: NewRules succeeded, want an error", tt.name)
			continue
		}
		for _, s := range tt.errHas {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q does not mention %q", tt.name, err, s)
			}
		}
	}
}
