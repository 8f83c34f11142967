package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Shard says which of its DC's sidecars this one is, when a DC runs
// several (invariant 16 in docs/DESIGN.md): shard: "i of S", i counting
// from 0. Each shard owns a disjoint set of partitions, by default the
// partitions p with p mod S = i, or the explicit shard_partitions list;
// together the DC's shards must own every partition exactly once, which
// the sidecars check among themselves at run time (config alone cannot
// see the other shards' files).
type Shard struct {
	// Index is i, 0 to Count-1.
	Index int
	// Count is S, the number of sidecars of this DC. 0 or 1 means one
	// sidecar owns every partition, as without shard.
	Count int
}

// ParseShard reads "i of S".
func ParseShard(s string) (Shard, error) {
	if strings.TrimSpace(s) == "" {
		return Shard{}, nil
	}
	is, ss, ok := strings.Cut(strings.TrimSpace(s), " of ")
	if !ok {
		return Shard{}, fmt.Errorf("%q: want \"i of S\", such as \"0 of 4\" (i counts from 0)", s)
	}
	i, err1 := strconv.Atoi(strings.TrimSpace(is))
	n, err2 := strconv.Atoi(strings.TrimSpace(ss))
	if err1 != nil || err2 != nil {
		return Shard{}, fmt.Errorf("%q: want \"i of S\" with whole numbers, such as \"0 of 4\"", s)
	}
	if n < 1 || n > MaxPartitions {
		return Shard{}, fmt.Errorf("%q: the shard count %d is out of range; want 1 to %d", s, n, MaxPartitions)
	}
	if i < 0 || i >= n {
		return Shard{}, fmt.Errorf("%q: the index counts from 0, so it must be 0 to %d", s, n-1)
	}
	return Shard{Index: i, Count: n}, nil
}

// String is the "i of S" form.
func (s Shard) String() string { return fmt.Sprintf("%d of %d", s.Index, s.Count) }

// Sharded reports whether the DC runs more than one sidecar.
func (c Config) Sharded() bool {
	s, err := ParseShard(c.Shard)
	return err == nil && s.Count > 1
}

// ShardOf returns the parsed shard; the zero Shard when shard is unset.
func (c Config) ShardOf() Shard {
	s, _ := ParseShard(c.Shard)
	return s
}

// OwnedPartitions lists the partitions this sidecar owns, in order:
// every partition without shard, shard_partitions when given, else the
// partitions p with p mod S = i.
func (c Config) OwnedPartitions() []uint32 {
	s := c.ShardOf()
	var out []uint32
	switch {
	case len(c.ShardPartitions) > 0:
		for _, p := range c.ShardPartitions {
			out = append(out, uint32(p))
		}
		slices.Sort(out)
	case s.Count > 1:
		for p := s.Index; p < c.Partitions; p += s.Count {
			out = append(out, uint32(p))
		}
	default:
		for p := range c.Partitions {
			out = append(out, uint32(p))
		}
	}
	return out
}

func (c Config) validateShard(p *problems) {
	s, err := ParseShard(c.Shard)
	if err != nil {
		p.add("shard", "%v", err)
		return
	}
	if s.Count > 1 && c.Partitions >= 1 && s.Count > c.Partitions {
		p.add("shard", "%q: %d shards for %d partitions would leave a shard with none; use at most %d shards or more partitions (partitions must be equal in every DC)", c.Shard, s.Count, c.Partitions, c.Partitions)
	}
	if len(c.ShardPartitions) == 0 {
		return
	}
	if s.Count < 2 {
		p.add("shard_partitions", "given without shard: name this sidecar's place among its DC's sidecars with shard: \"i of S\" (S at least 2)")
	}
	seen := map[int]bool{}
	for _, q := range c.ShardPartitions {
		switch {
		case q < 0 || q >= c.Partitions:
			p.add("shard_partitions", "partition %d is out of range; want 0 to %d (partitions is %d)", q, c.Partitions-1, c.Partitions)
		case seen[q]:
			p.add("shard_partitions", "partition %d is listed twice", q)
		}
		seen[q] = true
	}
}
