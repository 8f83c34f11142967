package bridge

import (
	"strings"
	"testing"
)

// TestShardOptions: a shard in a ring or star needs a Coordinator (it
// forwards a transaction spanning its DC's shards only once every shard
// has prepared it) and may heal; in a mesh it needs neither.
func TestShardOptions(t *testing.T) {
	dcs := []string{"dc1", "dc2", "dc3"}
	for _, c := range []struct {
		topology, hub string
		want          bool
	}{
		{"ring", "", true},
		{"star", "dc1", true},
		{"mesh", "", false},
	} {
		plan, err := NewPlan(c.topology, "dc2", dcs, c.hub)
		if err != nil {
			t.Fatal(err)
		}
		o := Options{Plan: plan, DCs: dcs, Partitions: 4, Owned: []uint32{0, 2}, Shard: "0of2", HealAfter: 30e9}
		err = o.validate()
		got := err != nil && strings.Contains(err.Error(), "needs a Coordinator")
		if got != c.want {
			t.Errorf("%s: %v; want the Coordinator refusal: %v", c.topology, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "heal") {
			t.Errorf("%s: %v; a shard may heal", c.topology, err)
		}
	}
}
