// Package reshard changes the number of sidecars (shards) of a DC offline
// (replicator reshard; invariant 16 in docs/DESIGN.md): with the DC's
// sidecars stopped after their outboxes drained, it copies their stores,
// partition by partition, into the stores of the new layout
// (changelog.Reshard). The new sidecars then start on them.
//
//	res, err := reshard.Run(ctx, oldCfgs, newCfgs, nil) // sidecars stopped
//
// Internal to the sidecar: not a stable Go API.
package reshard

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/join"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/setup"
)

// Result is what Run did.
type Result struct {
	DC string `json:"dc"`
	// From and To are the old and new layouts' shard lines ("" for one
	// sidecar).
	From []string `json:"from"`
	To   []string `json:"to"`
	// Stores is what each new store received, in the order of To.
	Stores []changelog.ReshardStats `json:"stores"`
	// ConsumersReset counts the DC's durable consumers of the old layout
	// deleted from the other DCs' streams (when nc was given).
	ConsumersReset int `json:"consumers_reset"`
}

// Run copies the stores of the sidecars of configs from (a DC's whole old
// layout, every sidecar stopped and drained) into the stores of the
// sidecars of configs to (the new layout; their stores empty or absent).
// With nc (the DC's NATS), it then deletes the DC's durable consumers of
// the old layout on the other DCs' streams, which the new sidecars do not
// use. It refuses, writing nothing, configs of different DCs or partition
// counts, a missing old store, a store in use, layouts that do not each
// own every partition once, an old store not drained, or a new store not
// empty.
func Run(ctx context.Context, from, to []config.Config, nc *nats.Conn) (Result, error) {
	if len(from) == 0 || len(to) == 0 {
		return Result{}, errors.New("reshard: give the config of every sidecar of the old layout and of the new one")
	}
	res := Result{DC: from[0].DC}
	for _, c := range append(append([]config.Config(nil), from...), to...) {
		if err := c.Validate(); err != nil {
			return res, err
		}
		if c.DC != res.DC || c.Partitions != from[0].Partitions {
			return res, fmt.Errorf("reshard: every config must be of DC %s with %d partitions; %s has dc %s and %d partitions", res.DC, from[0].Partitions, c.DataDir, c.DC, c.Partitions)
		}
	}
	seen := map[string]bool{}
	for _, c := range append(append([]config.Config(nil), from...), to...) {
		dir := setup.StoreDir(c)
		if seen[dir] {
			return res, fmt.Errorf("reshard: two sidecars use the store %s; each old and new sidecar needs its own data_dir", dir)
		}
		seen[dir] = true
	}
	for _, c := range from {
		res.From = append(res.From, c.Shard)
		if _, err := os.Stat(setup.StoreDir(c)); err != nil {
			return res, fmt.Errorf("reshard: the old sidecar %q of DC %s has no store at %s (%v): give the configs of the old layout's sidecars as they ran", c.Shard, c.DC, setup.StoreDir(c), err)
		}
	}
	for _, c := range to {
		res.To = append(res.To, c.Shard)
	}
	var open []*changelog.Store
	defer func() {
		for _, st := range open {
			st.Close()
		}
	}()
	stores := func(cfgs []config.Config) ([]changelog.ReshardStore, error) {
		var out []changelog.ReshardStore
		for _, c := range cfgs {
			st, err := setup.OpenStore(c, setup.Hooks{})
			if errors.Is(err, changelog.ErrLocked) {
				return nil, fmt.Errorf("reshard: the store of sidecar %q of DC %s is in use: stop every sidecar of the DC first: %w", c.Shard, c.DC, err)
			}
			if err != nil {
				return nil, err
			}
			open = append(open, st)
			out = append(out, changelog.ReshardStore{Store: st, Owns: c.OwnedPartitions()})
		}
		return out, nil
	}
	olds, err := stores(from)
	if err != nil {
		return res, err
	}
	news, err := stores(to)
	if err != nil {
		return res, err
	}
	if res.Stores, err = changelog.Reshard(ctx, olds, news); err != nil {
		return res, fmt.Errorf("reshard: %w", err)
	}
	var errs []error
	for _, st := range open {
		errs = append(errs, st.Close())
	}
	open = nil
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("reshard: close the stores: %w", err)
	}
	if nc == nil {
		return res, nil
	}
	for _, c := range to {
		n, err := join.ResetConsumers(ctx, nc, c.NATS.Domain, c.DC, c.DCs, names.ShardName(c.ShardOf().Index, c.ShardOf().Count))
		res.ConsumersReset += n
		if err != nil {
			return res, fmt.Errorf("reshard: the stores are copied, but %w; delete the old layout's consumers (nats consumer rm) before starting the new sidecars", err)
		}
	}
	return res, nil
}
