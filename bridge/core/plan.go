package core

import (
	"errors"
	"fmt"
	"slices"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// ErrLoop reports an event that returned to its origin or already passed
// this DC (docs/DESIGN.md, invariant 7): it is neither applied nor forwarded.
var ErrLoop = errors.New("bridge: loop")

// Plan is one DC's place in the topology: which DCs' streams it consumes
// and whether it forwards the events it applies. It is pure data, built
// once from the config by NewPlan, and decides per event with Accept and
// ShouldForward.
//
//	mesh: every DC consumes every other DC; nobody forwards (1 publish per write).
//	ring: DC i consumes DC i-1 (in dcs order) and forwards until the next DC
//	      is the origin (N-1 publishes per write).
//	star: the hub consumes every leaf and forwards; leaves consume the hub
//	      (2 publishes per leaf write, 1 per hub write).
type Plan struct {
	// DC is this DC's id.
	DC string
	// Topology is config.Mesh, config.Ring or config.Star.
	Topology string
	// Upstreams are the DCs whose streams this DC consumes, sorted.
	Upstreams []string
	// Forward reports whether this DC forwards events it applies (ring DCs
	// and the star's hub).
	Forward bool
	// Healing lists the bypasses in effect: the extra upstreams this DC
	// consumes, through heal consumers, because a DC is unreachable. It is
	// empty in the static plan NewPlan builds; Heal fills it in.
	Healing []Bypass

	next  string   // the ring successor; "" outside a ring
	dcs   []string // every DC, in config order (the ring's order)
	hub   string   // the star's hub; "" outside a star
	relay bool     // a standby hub forwarding leaf events while the hub is dead
}

// NewPlan builds the plan of DC self in a deployment of dcs (in config
// order: the ring follows it) along topology. hub names the star's hub and
// must be empty for the other topologies. Mesh needs at least 2 DCs, ring
// and star at least 3, as config.Validate enforces.
func NewPlan(topology, self string, dcs []string, hub string) (Plan, error) {
	if topology != config.Mesh && topology != config.Ring && topology != config.Star {
		return Plan{}, fmt.Errorf("plan: topology %q is not mesh, ring or star", topology)
	}
	if len(dcs) > config.MaxDCs {
		return Plan{}, fmt.Errorf("plan: %d DCs; at most %d are supported", len(dcs), config.MaxDCs)
	}
	seen := make(map[string]bool, len(dcs))
	for _, dc := range dcs {
		if err := vclock.ValidID(dc); err != nil {
			return Plan{}, fmt.Errorf("plan: %w", err)
		}
		if seen[dc] {
			return Plan{}, fmt.Errorf("plan: dc %q is listed twice in %v", dc, dcs)
		}
		seen[dc] = true
	}
	i := slices.Index(dcs, self)
	if i < 0 {
		return Plan{}, fmt.Errorf("plan: dc %q is not in dcs %v", self, dcs)
	}
	minDCs := 3
	if topology == config.Mesh {
		minDCs = 2
	}
	if len(dcs) < minDCs {
		return Plan{}, fmt.Errorf("plan: topology %s needs at least %d DCs, got %v", topology, minDCs, dcs)
	}
	if topology != config.Star && hub != "" {
		return Plan{}, fmt.Errorf("plan: hub %q is only used by topology star, not %s", hub, topology)
	}

	p := Plan{DC: self, Topology: topology, dcs: slices.Clone(dcs), hub: hub}
	others := make([]string, 0, len(dcs)-1)
	for _, dc := range dcs {
		if dc != self {
			others = append(others, dc)
		}
	}
	n := len(dcs)
	switch topology {
	case config.Mesh:
		p.Upstreams = others
	case config.Ring:
		p.Upstreams = []string{dcs[(i+n-1)%n]}
		p.next = dcs[(i+1)%n]
		p.Forward = true
	default: // config.Star
		if !seen[hub] {
			return Plan{}, fmt.Errorf("plan: hub %q is not in dcs %v", hub, dcs)
		}
		if self == hub {
			p.Upstreams = others
			p.Forward = true
		} else {
			p.Upstreams = []string{hub}
		}
	}
	slices.Sort(p.Upstreams)
	return p, nil
}

// Next returns the DC after this one in the ring, the DC that consumes
// this DC's stream; "" outside a ring.
func (p Plan) Next() string { return p.next }

// Accept returns an error wrapping ErrLoop when an event from origin that
// travelled path (origin first, as received) must be dropped because its
// origin is this DC or this DC is already on its path (docs/DESIGN.md,
// invariant 7), and
// nil otherwise. The other checks on an event (known DCs, a path ending at
// the upstream whose stream carried it) come before it.
func (p Plan) Accept(origin string, path []string) error {
	if origin == p.DC {
		return fmt.Errorf("%w: event returned to its origin %s (path %v)", ErrLoop, origin, path)
	}
	if slices.Contains(path, p.DC) {
		return fmt.Errorf("%w: %s is already on the path %v of an event from %s", ErrLoop, p.DC, path, origin)
	}
	return nil
}

// ShouldForward reports whether this DC forwards an event from origin,
// with path as received (without this DC), after applying it; the
// forwarded copy goes to this DC's stream with this DC appended to its
// path.
//
//	mesh: never.
//	ring: unless the next DC is the origin or already on the path, healing
//	      or not (see Heal).
//	star: the hub forwards every event from a leaf; leaves never forward,
//	      except a standby hub while the hub is dead (see Heal), which
//	      forwards every leaf's event that did not come through the hub.
//
// It is false for an event of this DC's own, which the outbox publishes.
func (p Plan) ShouldForward(path []string, origin string) bool {
	if !p.Forward || origin == p.DC {
		return false
	}
	switch p.Topology {
	case config.Ring:
		return p.next != origin && !slices.Contains(path, p.next)
	case config.Star:
		if p.relay {
			// A standby standing in for a dead hub forwards what it takes
			// from the leaves' streams, not what the hub already forwarded.
			return origin != p.hub && !slices.Contains(path, p.hub)
		}
		return true // Forward is set only at the hub
	}
	return false
}

// Hub returns the star's hub; "" outside a star.
func (p Plan) Hub() string { return p.hub }

// DCs returns every DC, in config order.
func (p Plan) DCs() []string { return slices.Clone(p.dcs) }

// Downstreams returns the DCs that consume this DC's stream: in a mesh all
// others, in a ring the successor, in a star the hub's leaves or a leaf's
// hub (the consuming side of each link).
func (p Plan) Downstreams() []string {
	switch p.Topology {
	case config.Ring:
		return []string{p.next}
	case config.Star:
		return slices.Clone(p.Upstreams)
	}
	var out []string
	for _, dc := range p.dcs {
		if dc != p.DC {
			out = append(out, dc)
		}
	}
	return out
}

// CanHeal reports whether the topology has anything to heal: a ring or a
// star.
func (p Plan) CanHeal() bool { return p.Topology == config.Ring || p.Topology == config.Star }
