package config

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// The policies of a home rule: what a write does when the home DC does not
// answer.
const (
	// PolicyReject answers 503 and writes nothing.
	PolicyReject = "reject"
	// PolicyFailover sends the write to the next reachable DC of the
	// rule's list, under a new fencing epoch.
	PolicyFailover = "failover"
)

// Defaults and bounds of home rules.
const (
	DefaultHomeTimeout = 2 * time.Second
	MaxHomeTimeout     = time.Minute
)

// HomeRule gives the keys starting with Prefix a home DC: writes made at
// another DC are forwarded to it over NATS, so those keys never conflict
// (see README "Home-DC writes").
type HomeRule struct {
	// Prefix is the key prefix; "" matches every key. The longest matching
	// prefix wins, like resolver rules. Prefixes must be distinct.
	Prefix string `yaml:"prefix"`
	// DCs lists the candidate homes in preference order: the first DC is
	// the home, the others take over in turn under policy failover. Each
	// must be in dcs, once. Required.
	DCs []string `yaml:"dcs"`
	// Policy is reject (only the first DC may write; 503 while it is
	// unreachable) or failover (the next reachable DC of the list writes).
	// Default "reject". reject takes exactly one DC.
	Policy string `yaml:"policy"`
	// Timeout bounds one forwarded request; a home that does not answer
	// within it counts as unreachable. Default 2s, at most 1m.
	Timeout Duration `yaml:"timeout"`
}

// HomeFor returns the home rule with the longest prefix of key, and false
// when no rule matches.
func (c Config) HomeFor(key string) (HomeRule, bool) {
	best := -1
	for i, r := range c.Home {
		if strings.HasPrefix(key, r.Prefix) && (best < 0 || len(r.Prefix) > len(c.Home[best].Prefix)) {
			best = i
		}
	}
	if best < 0 {
		return HomeRule{}, false
	}
	return c.Home[best], true
}

// completeHome fills in the policy and timeout defaults of home rules.
func (c *Config) completeHome() {
	for i := range c.Home {
		r := &c.Home[i]
		if r.Policy == "" {
			r.Policy = PolicyReject
		}
		if r.Timeout == 0 {
			r.Timeout = Duration(DefaultHomeTimeout)
		}
	}
}

// checkDCList reports repeated entries of the DC list at.name and those not
// in dcs, and returns the position of each DC listed.
func (c Config) checkDCList(p *problems, at, name string, list []string) map[string]int {
	seen := make(map[string]int, len(list))
	for i, dc := range list {
		field := fmt.Sprintf("%s.%s[%d]", at, name, i)
		if j, dup := seen[dc]; dup {
			p.add(field, "%q is listed twice (also %s[%d])", dc, name, j)
			continue
		}
		seen[dc] = i
		if !slices.Contains(c.DCs, dc) {
			p.add(field, "%q is not in dcs %v", dc, c.DCs)
		}
	}
	return seen
}

func (c Config) validateHome(p *problems) {
	prefixes := make(map[string]int, len(c.Home))
	for i, r := range c.Home {
		at := fmt.Sprintf("home[%d]", i)
		if j, dup := prefixes[r.Prefix]; dup {
			p.add(at+".prefix", "%q is also the prefix of home[%d]; each prefix gets one home rule", r.Prefix, j)
		} else {
			prefixes[r.Prefix] = i
		}
		if len(r.Prefix) > c.Limits.MaxKeyBytes {
			p.add(at+".prefix", "is %d bytes, longer than limits.max_key_bytes %d, so it matches no key", len(r.Prefix), c.Limits.MaxKeyBytes)
		}
		if len(r.DCs) == 0 {
			p.add(at+".dcs", "required; list the home DC first, then (policy failover) the DCs that take over in turn")
		}
		c.checkDCList(p, at, "dcs", r.DCs)
		switch r.Policy {
		case PolicyReject:
			if len(r.DCs) > 1 {
				p.add(at+".dcs", "%v: policy reject never fails over, so only the first DC would be used; list one DC or set policy failover", r.DCs)
			}
		case PolicyFailover:
			if len(r.DCs) == 1 {
				p.add(at+".dcs", "%v: policy failover needs at least 2 DCs to fail over to; add one or set policy reject", r.DCs)
			}
		default:
			p.add(at+".policy", "%q is not a policy; want reject or failover", r.Policy)
		}
		if d := time.Duration(r.Timeout); d <= 0 || d > MaxHomeTimeout {
			p.add(at+".timeout", "%s is out of range; want more than 0 and at most %s", d, MaxHomeTimeout)
		}
	}
}
