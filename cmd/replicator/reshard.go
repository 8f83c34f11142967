package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/reshard"
	"github.com/replicatorhq/replicator/pkg/setup"
)

// cmdReshard changes a DC's shard count offline (pkg/reshard): with every
// sidecar of the DC stopped after its outbox drained, it copies the old
// layout's stores, partition by partition, into the new layout's.
func cmdReshard(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("reshard", "--from OLD.yaml[,OLD.yaml...] --to NEW.yaml[,NEW.yaml...] [--json]", stderr)
	from := fs.String("from", "", "the config files of every sidecar of the DC's current layout, comma-separated (required); each must be stopped, its outbox drained")
	to := fs.String("to", "", "the config files of every sidecar of the new layout, comma-separated (required); each with its own, empty data_dir")
	asJSON := fs.Bool("json", false, "print the figures as one JSON object")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	if *from == "" || *to == "" {
		return usagef("--from and --to are required: the config files of the DC's old and new sidecars")
	}
	load := func(list string) ([]config.Config, error) {
		var out []config.Config
		for path := range strings.SplitSeq(list, ",") {
			cfg, err := config.Load(strings.TrimSpace(path))
			if err != nil {
				return nil, err
			}
			out = append(out, cfg)
		}
		return out, nil
	}
	olds, err := load(*from)
	if err != nil {
		return err
	}
	news, err := load(*to)
	if err != nil {
		return err
	}
	// The DC's old consumers on the other DCs' streams are deleted when
	// NATS is reachable (not when it runs embedded in the stopped sidecar).
	var nc *nats.Conn
	if !news[0].NATS.UseEmbedded() {
		if nc, err = setup.Connect(news[0], setup.ConnOptions{Name: "replicator-reshard-" + news[0].DC}); err != nil {
			return err
		}
		defer nc.Close()
	}
	res, err := reshard.Run(ctx, olds, news, nc)
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "reshard: "))
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	for i, st := range res.Stores {
		fmt.Fprintf(stdout, "dc %s shard %q: partitions %v, %d keys, %d records, digest %s\n", res.DC, res.To[i], st.Partitions, st.Keys, st.Records, st.Digest)
	}
	if nc == nil {
		fmt.Fprintf(stdout, "NATS runs embedded: delete dc %s's consumers of the old layout on the other DCs' streams (nats consumer rm REPL_<dc> repl_%s_from_<dc>...) before starting\n", res.DC, res.DC)
	} else {
		fmt.Fprintf(stdout, "%d consumers of the old layout deleted\n", res.ConsumersReset)
	}
	fmt.Fprintf(stdout, "now start the new sidecars: replicator run --config NEW.yaml, one per file of --to\n")
	return nil
}
