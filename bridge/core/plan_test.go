package core

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var (
	dcs3 = []string{"a", "b", "c"}
	dcs5 = []string{"a", "b", "c", "d", "e"}
)

func TestNewPlan(t *testing.T) {
	tests := []struct {
		topology, self string
		dcs            []string
		hub            string
		upstreams      []string
		forward        bool
		next           string
	}{
		{"mesh", "a", dcs3, "", []string{"b", "c"}, false, ""},
		{"mesh", "b", dcs3, "", []string{"a", "c"}, false, ""},
		{"mesh", "e", dcs5, "", []string{"a", "b", "c", "d"}, false, ""},
		{"mesh", "b", []string{"b", "a"}, "", []string{"a"}, false, ""},

		{"ring", "a", dcs3, "", []string{"c"}, true, "b"},
		{"ring", "b", dcs3, "", []string{"a"}, true, "c"},
		{"ring", "c", dcs3, "", []string{"b"}, true, "a"},
		{"ring", "a", dcs5, "", []string{"e"}, true, "b"},
		{"ring", "c", dcs5, "", []string{"b"}, true, "d"},
		{"ring", "e", dcs5, "", []string{"d"}, true, "a"},
		// The ring follows the dcs order, not the sorted order.
		{"ring", "a", []string{"c", "a", "b"}, "", []string{"c"}, true, "b"},

		{"star", "a", dcs3, "a", []string{"b", "c"}, true, ""},
		{"star", "b", dcs3, "a", []string{"a"}, false, ""},
		{"star", "c", dcs5, "c", []string{"a", "b", "d", "e"}, true, ""},
		{"star", "e", dcs5, "c", []string{"c"}, false, ""},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%s %v at %s", tt.topology, tt.dcs, tt.self)
		t.Run(name, func(t *testing.T) {
			p, err := NewPlan(tt.topology, tt.self, tt.dcs, tt.hub)
			if err != nil {
				t.Fatal(err)
			}
			if p.DC != tt.self || p.Topology != tt.topology || !reflect.DeepEqual(p.Upstreams, tt.upstreams) || p.Forward != tt.forward || p.Next() != tt.next {
				t.Errorf("plan = {DC:%s Topology:%s Upstreams:%v Forward:%v Next:%q}, want {DC:%s Topology:%s Upstreams:%v Forward:%v Next:%q}",
					p.DC, p.Topology, p.Upstreams, p.Forward, p.Next(), tt.self, tt.topology, tt.upstreams, tt.forward, tt.next)
			}
		})
	}
}

func TestNewPlanErrors(t *testing.T) {
	many := make([]string, 65)
	for i := range many {
		many[i] = fmt.Sprintf("dc%d", i)
	}
	tests := []struct {
		topology, self string
		dcs            []string
		hub, want      string
	}{
		{"tree", "a", dcs3, "", `plan: topology "tree" is not mesh, ring or star`},
		{"mesh", "z", dcs3, "", `plan: dc "z" is not in dcs [a b c]`},
		{"mesh", "a", []string{"a", "b", "a"}, "", `plan: dc "a" is listed twice in [a b a]`},
		{"mesh", "a", []string{"a", "b c"}, "", `plan: vclock: invalid dc id "b c"`},
		{"mesh", "a", []string{"a"}, "", `plan: topology mesh needs at least 2 DCs, got [a]`},
		{"ring", "a", []string{"a", "b"}, "", `plan: topology ring needs at least 3 DCs, got [a b]`},
		{"star", "a", []string{"a", "b"}, "a", `plan: topology star needs at least 3 DCs, got [a b]`},
		{"star", "a", dcs3, "", `plan: hub "" is not in dcs [a b c]`},
		{"star", "a", dcs3, "x", `plan: hub "x" is not in dcs [a b c]`},
		{"ring", "a", dcs3, "a", `plan: hub "a" is only used by topology star, not ring`},
		{"mesh", "dc0", many, "", `plan: 65 DCs; at most 64 are supported`},
	}
	for _, tt := range tests {
		_, err := NewPlan(tt.topology, tt.self, tt.dcs, tt.hub)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("NewPlan(%q, %q, %v, %q) err = %v, want %q", tt.topology, tt.self, tt.dcs, tt.hub, err, tt.want)
		}
	}
}

func mustPlan(t *testing.T, topology, self string, dcs []string, hub string) Plan {
	t.Helper()
	p, err := NewPlan(topology, self, dcs, hub)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestShouldForward(t *testing.T) {
	tests := []struct {
		topology, self string
		dcs            []string
		hub, origin    string
		path           []string
		want           bool
	}{
		// Mesh: never.
		{"mesh", "b", dcs3, "", "a", []string{"a"}, false},
		{"mesh", "e", dcs5, "", "a", []string{"a"}, false},

		// Ring a->b->c->a.
		{"ring", "b", dcs3, "", "a", []string{"a"}, true},       // next c is new
		{"ring", "c", dcs3, "", "a", []string{"a", "b"}, false}, // next a is the origin
		{"ring", "a", dcs3, "", "b", []string{"b", "c"}, false}, // next b is the origin
		{"ring", "c", dcs3, "", "b", []string{"b"}, true},
		{"ring", "a", dcs3, "", "a", []string{"a"}, false}, // own write: the outbox publishes it
		// Ring a->b->c->d->e->a.
		{"ring", "b", dcs5, "", "a", []string{"a"}, true},
		{"ring", "d", dcs5, "", "a", []string{"a", "b", "c"}, true},
		{"ring", "e", dcs5, "", "a", []string{"a", "b", "c", "d"}, false},
		{"ring", "a", dcs5, "", "c", []string{"c", "d", "e"}, true},
		{"ring", "b", dcs5, "", "c", []string{"c", "d", "e", "a"}, false},
		// The next DC already on the path (not the origin) stops it too.
		{"ring", "b", dcs5, "", "a", []string{"a", "c"}, false},

		// Star with hub a (3 DCs) and hub c (5 DCs).
		{"star", "a", dcs3, "a", "b", []string{"b"}, true},
		{"star", "a", dcs3, "a", "a", []string{"a"}, false},
		{"star", "b", dcs3, "a", "c", []string{"c", "a"}, false},
		{"star", "b", dcs3, "a", "a", []string{"a"}, false},
		{"star", "c", dcs5, "c", "e", []string{"e"}, true},
		{"star", "a", dcs5, "c", "e", []string{"e", "c"}, false},
		{"star", "a", dcs5, "c", "c", []string{"c"}, false},
	}
	for _, tt := range tests {
		p := mustPlan(t, tt.topology, tt.self, tt.dcs, tt.hub)
		if got := p.ShouldForward(tt.path, tt.origin); got != tt.want {
			t.Errorf("%s %v at %s: ShouldForward(path %v, origin %s) = %v, want %v", tt.topology, tt.dcs, tt.self, tt.path, tt.origin, got, tt.want)
		}
	}
}

func TestAccept(t *testing.T) {
	p := mustPlan(t, "ring", "b", dcs5, "")
	tests := []struct {
		origin string
		path   []string
		want   string // "" for accepted
	}{
		{"a", []string{"a"}, ""},
		{"c", []string{"c", "d", "e", "a"}, ""},
		{"b", []string{"b", "c", "d", "e", "a"}, "bridge: loop: event returned to its origin b (path [b c d e a])"},
		{"a", []string{"a", "b", "c"}, "bridge: loop: b is already on the path [a b c] of an event from a"},
	}
	for _, tt := range tests {
		err := p.Accept(tt.origin, tt.path)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Accept(%s, %v) = %v, want nil", tt.origin, tt.path, err)
		case tt.want != "" && (err == nil || err.Error() != tt.want || !errors.Is(err, ErrLoop)):
			t.Errorf("Accept(%s, %v) = %v, want %q wrapping ErrLoop", tt.origin, tt.path, err, tt.want)
		}
	}
}

// TestPlanSimulation pushes one event from every origin through the plans
// of every DC: a publish on a DC's stream is delivered to each DC that
// consumes it, which drops it when Accept refuses it, applies it otherwise,
// and publishes a copy with itself appended to the path when ShouldForward
// says so. Every DC must apply each event exactly once, no event may be
// applied at its origin, no event may cross a link twice, and a write must
// cost mesh 1, ring N-1 and star at most 2 publishes.
func TestPlanSimulation(t *testing.T) {
	type cluster struct {
		topology string
		dcs      []string
		hub      string
	}
	var clusters []cluster
	for _, dcs := range [][]string{dcs3, dcs5, {"e", "c", "a", "d", "b", "f", "g"}} {
		clusters = append(clusters, cluster{"mesh", dcs, ""}, cluster{"ring", dcs, ""})
		for _, hub := range dcs {
			clusters = append(clusters, cluster{"star", dcs, hub})
		}
	}
	clusters = append(clusters, cluster{"mesh", []string{"x", "y"}, ""})

	for _, cl := range clusters {
		plans := make(map[string]Plan, len(cl.dcs))
		for _, dc := range cl.dcs {
			plans[dc] = mustPlan(t, cl.topology, dc, cl.dcs, cl.hub)
		}
		for _, origin := range cl.dcs {
			name := fmt.Sprintf("%s %v hub=%q from %s", cl.topology, cl.dcs, cl.hub, origin)
			t.Run(name, func(t *testing.T) {
				applied := map[string]int{}
				crossed := map[[2]string]int{} // (stream owner, consumer) deliveries
				publishes := 0
				type publish struct {
					stream string   // the DC whose stream holds it
					path   []string // origin first, ends at stream
				}
				queue := []publish{{origin, []string{origin}}} // the outbox's publish
				for len(queue) > 0 {
					pub := queue[0]
					queue = queue[1:]
					publishes++
					if last := pub.path[len(pub.path)-1]; last != pub.stream {
						t.Fatalf("publish on %s's stream with path %v: the path must end at the stream's DC", pub.stream, pub.path)
					}
					for _, dc := range cl.dcs {
						if !slices.Contains(plans[dc].Upstreams, pub.stream) {
							continue
						}
						crossed[[2]string{pub.stream, dc}]++
						if err := plans[dc].Accept(origin, pub.path); err != nil {
							if !errors.Is(err, ErrLoop) {
								t.Fatalf("Accept at %s: %v does not wrap ErrLoop", dc, err)
							}
							continue
						}
						applied[dc]++
						if plans[dc].ShouldForward(pub.path, origin) {
							queue = append(queue, publish{dc, append(slices.Clone(pub.path), dc)})
						}
					}
					if publishes > 10*len(cl.dcs) {
						t.Fatalf("%d publishes and counting: the event loops", publishes)
					}
				}

				for _, dc := range cl.dcs {
					want := 1
					if dc == origin {
						want = 0
					}
					if applied[dc] != want {
						t.Errorf("%s applied the event %d times, want %d", dc, applied[dc], want)
					}
				}
				for link, n := range crossed {
					if n > 1 {
						t.Errorf("the event crossed link %s->%s %d times, want at most once", link[0], link[1], n)
					}
					// Only the star's hub stream reaches the origin (a
					// leaf), which Accept drops.
					if link[1] == origin && !(cl.topology == "star" && link[0] == cl.hub) {
						t.Errorf("the event came back to its origin %s over %s's stream", origin, link[0])
					}
				}
				var want int
				switch cl.topology {
				case "mesh":
					want = 1
				case "ring":
					want = len(cl.dcs) - 1
				case "star":
					want = 2
					if origin == cl.hub {
						want = 1
					}
				}
				if publishes != want {
					t.Errorf("%d publishes for one write, want %d", publishes, want)
				}
			})
		}
	}
}

func deadSet(dcs ...string) func(string) bool {
	return func(dc string) bool { return slices.Contains(dcs, dc) }
}

func TestHeal(t *testing.T) {
	dcs4 := []string{"a", "b", "c", "d"}
	tests := []struct {
		topology, self string
		dcs            []string
		hub, standby   string
		dead           []string
		healing        []Bypass
		forward        bool
	}{
		// Ring: the DC after a dead one consumes the nearest live
		// predecessor, and the streams of the dead DCs it skips.
		{"ring", "c", dcs3, "", "", []string{"b"}, []Bypass{{"b", "a"}}, true},
		{"ring", "a", dcs3, "", "", []string{"b"}, nil, true}, // its predecessor c lives
		{"ring", "c", dcs4, "", "", []string{"b"}, []Bypass{{"b", "a"}}, true},
		{"ring", "d", dcs4, "", "", []string{"b"}, nil, true},
		{"ring", "d", dcs4, "", "", []string{"b", "c"}, []Bypass{{"c", "b"}, {"b", "a"}}, true},
		{"ring", "c", dcs3, "", "", []string{"a", "b"}, nil, true}, // nobody left to heal through
		{"ring", "d", dcs5, "", "", []string{"b", "c"}, []Bypass{{"c", "b"}, {"b", "a"}}, true},
		{"ring", "a", dcs5, "", "", []string{"c", "e"}, []Bypass{{"e", "d"}}, true},
		{"ring", "d", dcs5, "", "", []string{"c", "e"}, []Bypass{{"c", "b"}}, true},
		{"ring", "b", dcs5, "", "", []string{"a"}, []Bypass{{"a", "e"}}, true},
		// Star, hub a, standby b.
		{"star", "b", dcs5, "a", "b", []string{"a"}, []Bypass{{"a", "c"}, {"a", "d"}, {"a", "e"}}, true},
		{"star", "c", dcs5, "a", "b", []string{"a"}, []Bypass{{"a", "b"}}, false},
		{"star", "c", dcs5, "a", "b", []string{"a", "d"}, []Bypass{{"a", "b"}}, false},
		{"star", "c", dcs5, "a", "b", []string{"a", "b"}, nil, false}, // the standby is dead too
		{"star", "c", dcs5, "a", "", []string{"a"}, nil, false},       // no standby
		{"star", "b", dcs5, "a", "b", []string{"c"}, nil, false},      // a leaf is dead: nothing to heal
		{"star", "a", dcs5, "a", "b", []string{"b"}, nil, true},
		// Mesh: nothing to heal.
		{"mesh", "c", dcs5, "", "", []string{"a", "b"}, nil, false},
	}
	for _, tt := range tests {
		p := mustPlan(t, tt.topology, tt.self, tt.dcs, tt.hub)
		h := p.Heal(deadSet(tt.dead...), tt.standby)
		if !reflect.DeepEqual(h.Healing, tt.healing) || h.Forward != tt.forward {
			t.Errorf("%s %v at %s, dead %v: Heal = %v (forward %v), want %v (forward %v)",
				tt.topology, tt.dcs, tt.self, tt.dead, h.Healing, h.Forward, tt.healing, tt.forward)
		}
		if p.Healing != nil || !reflect.DeepEqual(p, mustPlan(t, tt.topology, tt.self, tt.dcs, tt.hub)) {
			t.Errorf("Heal changed the static plan: %+v", p)
		}
		if !reflect.DeepEqual(h.Upstreams, p.Upstreams) {
			t.Errorf("Heal changed the static upstreams %v to %v", p.Upstreams, h.Upstreams)
		}
	}
}

// TestHealSimulation runs events through healed plans, as
// TestPlanSimulation does through static ones, but with the store's
// idempotence: a DC applies an event the first time it gets it, forwards
// it only then, and drops later copies as duplicates (so none is applied
// twice; what must hold is that every DC gets it). For rings of 3, 4
// and 5 DCs with one dead DC, and two dead (adjacent or not) where a live
// pair remains, and for stars with a dead hub and a standby:
//
//  1. While the dead DCs are down, each live DC consumes its healed plan's
//     upstreams (static and heal links) from the event's first publish. An
//     event from every live origin, and one a dead DC published just
//     before it died, must reach every live DC; nothing may
//     loop for ever or cross a link twice; loops may come back only to the
//     DC that heals.
//  2. The dead DCs come back with their static plans and read, through
//     their durable consumers, everything published while they were down;
//     the heal links either keep running for a while (overlap) or stop at
//     once. Every DC then holds the event.
func TestHealSimulation(t *testing.T) {
	type scenario struct {
		topology string
		dcs      []string
		hub      string
		standby  string
		dead     []string
	}
	var scenarios []scenario
	for _, dcs := range [][]string{dcs3, {"a", "b", "c", "d"}, dcs5} {
		for i := range dcs {
			scenarios = append(scenarios, scenario{"ring", dcs, "", "", []string{dcs[i]}})
			if len(dcs) >= 4 {
				for j := i + 1; j < len(dcs); j++ {
					scenarios = append(scenarios, scenario{"ring", dcs, "", "", []string{dcs[i], dcs[j]}})
				}
			}
		}
	}
	scenarios = append(scenarios,
		scenario{"star", dcs5, "a", "b", []string{"a"}},
		scenario{"star", dcs5, "c", "e", []string{"c"}},
		scenario{"star", dcs5, "c", "e", []string{"c", "a"}},
		scenario{"star", []string{"a", "b", "c", "d"}, "b", "a", []string{"b"}},
		scenario{"star", dcs3, "a", "b", []string{"a"}},
	)

	for _, sc := range scenarios {
		static := map[string]Plan{}
		healed := map[string]Plan{}
		for _, dc := range sc.dcs {
			static[dc] = mustPlan(t, sc.topology, dc, sc.dcs, sc.hub)
			healed[dc] = static[dc].Heal(deadSet(sc.dead...), sc.standby)
		}
		isDead := deadSet(sc.dead...)
		var live []string
		for _, dc := range sc.dcs {
			if !isDead(dc) {
				live = append(live, dc)
			}
		}
		// The DCs with heal links; loops may come back only to these (and
		// to star leaves, over the hub's or the standby's stream).
		healers := map[string]bool{}
		for _, dc := range live {
			if len(healed[dc].Healing) > 0 {
				healers[dc] = true
			}
		}
		for _, origin := range sc.dcs {
			for _, overlap := range []bool{false, true} {
				name := fmt.Sprintf("%s %v hub=%q standby=%q dead %v from %s overlap=%v", sc.topology, sc.dcs, sc.hub, sc.standby, sc.dead, origin, overlap)
				t.Run(name, func(t *testing.T) {
					type publish struct {
						stream string
						path   []string
					}
					var log []publish                     // every publish, in order, per stream by filter
					held := map[string]bool{origin: true} // which DCs applied the event
					crossed := map[[3]string]int{}
					// cursor is each consumer's place in log: (dc, stream, kind).
					cursor := map[[3]string]int{}
					publishes := 0
					emit := func(p publish) {
						if sc.topology == "star" && p.stream == sc.standby && slices.Contains(p.path[:len(p.path)-1], sc.hub) {
							t.Errorf("the standby forwarded %v, which the hub had forwarded already", p.path)
						}
						log = append(log, p)
						publishes++
						if publishes > 10*len(sc.dcs) {
							t.Fatalf("%d publishes and counting: the event loops", publishes)
						}
					}
					deliver := func(dc, stream, kind string, plan Plan) bool {
						k := [3]string{dc, stream, kind}
						moved := false
						for cursor[k] < len(log) {
							pub := log[cursor[k]]
							cursor[k]++
							if pub.stream != stream {
								continue
							}
							moved = true
							if last := pub.path[len(pub.path)-1]; last != stream {
								t.Fatalf("publish on %s's stream with path %v", stream, pub.path)
							}
							crossed[[3]string{stream, dc, kind}]++
							if err := plan.Accept(origin, pub.path); err != nil {
								if !errors.Is(err, ErrLoop) {
									t.Fatalf("Accept at %s: %v does not wrap ErrLoop", dc, err)
								}
								star := sc.topology == "star" && (stream == sc.hub || stream == sc.standby)
								if !healers[dc] && !star {
									t.Errorf("the event looped back to %s over %s's stream (path %v), which does not heal", dc, stream, pub.path)
								}
								continue
							}
							if held[dc] {
								continue // a duplicate: the store drops it, nothing is forwarded
							}
							held[dc] = true
							if plan.ShouldForward(pub.path, origin) {
								emit(publish{dc, append(slices.Clone(pub.path), dc)})
							}
						}
						return moved
					}
					run := func(plans map[string]Plan, dcs []string) {
						for moved := true; moved; {
							moved = false
							for _, dc := range dcs {
								p := plans[dc]
								for _, up := range p.Upstreams {
									moved = deliver(dc, up, "static", p) || moved
								}
								for _, b := range p.Healing {
									moved = deliver(dc, b.Via, "heal", p) || moved
								}
							}
						}
					}

					// Phase 1: the dead DCs are down.
					emit(publish{origin, []string{origin}})
					run(healed, live)
					for _, dc := range live {
						if !held[dc] {
							t.Errorf("while %v are dead, live %s never got the event", sc.dead, dc)
						}
					}
					// Phase 2: they come back with their static plans.
					after := map[string]Plan{}
					for _, dc := range sc.dcs {
						after[dc] = static[dc]
						if overlap && !isDead(dc) {
							after[dc] = healed[dc]
						}
					}
					run(after, sc.dcs)
					for _, dc := range sc.dcs {
						if !held[dc] {
							t.Errorf("after %v returned, %s never got the event", sc.dead, dc)
						}
					}
					for link, n := range crossed {
						if n > 1 {
							t.Errorf("the event crossed link %s->%s (%s) %d times, want at most once", link[0], link[1], link[2], n)
						}
					}
				})
			}
		}
	}
}
