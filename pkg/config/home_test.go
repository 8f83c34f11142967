package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestValidateHome(t *testing.T) {
	tests := []struct {
		name string
		home []HomeRule
		want []string
	}{
		{name: "reject, one DC", home: []HomeRule{{Prefix: "orders/", DCs: []string{"a"}}}},
		{name: "failover, every DC", home: []HomeRule{{Prefix: "orders/", DCs: []string{"b", "a", "c"}, Policy: PolicyFailover, Timeout: Duration(time.Second)}}},
		{name: "two prefixes", home: []HomeRule{{Prefix: "", DCs: []string{"a"}}, {Prefix: "x/", DCs: []string{"c"}}}},
		{name: "no dcs", home: []HomeRule{{Prefix: "o/"}},
			want: []string{`home[0].dcs: required; list the home DC first, then (policy failover) the DCs that take over in turn`}},
		{name: "unknown and repeated dc", home: []HomeRule{{Prefix: "o/", DCs: []string{"a", "z", "a"}, Policy: PolicyFailover}},
			want: []string{`home[0].dcs[1]: "z" is not in dcs [a b c]`, `home[0].dcs[2]: "a" is listed twice (also dcs[0])`}},
		{name: "bad policy", home: []HomeRule{{Prefix: "o/", DCs: []string{"a"}, Policy: "retry"}},
			want: []string{`home[0].policy: "retry" is not a policy; want reject or failover`}},
		{name: "reject with a list", home: []HomeRule{{Prefix: "o/", DCs: []string{"a", "b"}, Policy: PolicyReject}},
			want: []string{`home[0].dcs: [a b]: policy reject never fails over, so only the first DC would be used; list one DC or set policy failover`}},
		{name: "failover with one DC", home: []HomeRule{{Prefix: "o/", DCs: []string{"a"}, Policy: PolicyFailover}},
			want: []string{`home[0].dcs: [a]: policy failover needs at least 2 DCs to fail over to; add one or set policy reject`}},
		{name: "timeouts out of range", home: []HomeRule{
			{Prefix: "o/", DCs: []string{"a"}, Timeout: Duration(-time.Second)},
			{Prefix: "p/", DCs: []string{"a"}, Timeout: Duration(2 * time.Minute)}},
			want: []string{`home[0].timeout: -1s is out of range; want more than 0 and at most 1m0s`, `home[1].timeout: 2m0s is out of range; want more than 0 and at most 1m0s`}},
		{name: "duplicate prefix", home: []HomeRule{{Prefix: "o/", DCs: []string{"a"}}, {Prefix: "o/", DCs: []string{"b"}}},
			want: []string{`home[1].prefix: "o/" is also the prefix of home[0]; each prefix gets one home rule`}},
		{name: "prefix longer than any key", home: []HomeRule{{Prefix: strings.Repeat("k", 4097), DCs: []string{"a"}}},
			want: []string{`home[0].prefix: is 4097 bytes, longer than limits.max_key_bytes 4096, so it matches no key`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			c.Home = tt.home
			c.Complete()
			got := problemsOf(t, c.Validate())
			if !slices.Equal(got, tt.want) {
				t.Errorf("problems:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestParseHome(t *testing.T) {
	cfg, err := Parse([]byte("dc: a\ndcs: [a, b, c]\nhome:\n  - {prefix: orders/, dcs: [a, b], policy: failover}\n  - {prefix: orders/eu/, dcs: [c]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []HomeRule{
		{Prefix: "orders/", DCs: []string{"a", "b"}, Policy: PolicyFailover, Timeout: Duration(DefaultHomeTimeout)},
		{Prefix: "orders/eu/", DCs: []string{"c"}, Policy: PolicyReject, Timeout: Duration(DefaultHomeTimeout)},
	}
	if len(cfg.Home) != 2 || !slices.EqualFunc(cfg.Home, want, func(a, b HomeRule) bool {
		return a.Prefix == b.Prefix && slices.Equal(a.DCs, b.DCs) && a.Policy == b.Policy && a.Timeout == b.Timeout
	}) {
		t.Fatalf("home = %+v, want %+v", cfg.Home, want)
	}
	for key, home := range map[string]string{"orders/1": "orders/", "orders/eu/1": "orders/eu/", "users/1": ""} {
		r, ok := cfg.HomeFor(key)
		if ok != (home != "") || r.Prefix != home {
			t.Errorf("HomeFor(%q) = %q, %v; want %q", key, r.Prefix, ok, home)
		}
	}
	_, err = Parse([]byte("dc: a\ndcs: [a, b]\nhome:\n  - {prefix: o/, dcs: [a], polcy: reject, timeout: soon}\n"))
	for _, want := range []string{`home[0].polcy: line 4: unknown key; did you mean "policy"?`, `home[0].timeout: line 4: "soon" is not a duration`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse error %v lacks %q", err, want)
		}
	}
}
