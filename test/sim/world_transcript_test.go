package sim

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// The world commands of the transcripts (see TestTranscripts): a file that
// starts with "world" drives the whole protocol (World) instead of the
// message-level Cluster. Times are virtual.
//
//	world dcs=(dc1,dc2,dc3) [topology=mesh|ring|star] [hub=dc1] [standby=dc2] [partitions=1]
//	      [heal_after=5s] [skew=(dc2:3s,dc3:-1s)] [resolver=...] [rules=...]
//	write dc1 k=a v=1 [ctx=none|read|read@dc2]   delete dc1 k=a [ctx=...]
//	txn dc1 a=1 b=2 del:c [ctx=...]
//	publish dc1                  dc1's publisher sends its outbox to its stream
//	deliver dc1->dc2 [heal]      one batch of the consumer at dc2 of dc1's stream
//	step [n=1]                   everything a deployment does in 100 ms, n times
//	run for=2s                   step for that long
//	tick for=1s                  only the timers (reports, healing, catch-up, maintenance)
//	settle [limit=2m]            restart every DC, mend every cut, run until quiet
//	crash dc2 | restart dc2 | cut dc1 dc2 | mend dc1 dc2
//	lose dc1 seq=3               dc1's stream loses message 3
//	drop dc1->dc2 [heal]         the consumer's next delivery is lost in flight
//	lose-ack dc1->dc2            the consumer's next ack is lost
//	skew dc2 by=3s               set dc2's clock offset
//	show dc1 [k=a]  digest  healing  consumers  stream dc1  applied dc1  violations
//
// Every command that moves time or messages prints what happened, one
// line each, with its virtual time.
func runWorldCommand(w *World, td *datadriven.TestData) (string, error) {
	var b strings.Builder
	notes := func() {
		for _, n := range w.Notes() {
			b.WriteString(n + "\n")
		}
	}
	dur := func(key, def string) (time.Duration, error) { return time.ParseDuration(val(td, key, def)) }
	switch td.Cmd {
	case "write", "delete":
		dc, key := positional(td), val(td, "k", "")
		ctx, err := worldContext(w, dc, key, val(td, "ctx", "none"))
		if err != nil {
			return "", err
		}
		op := Op{Key: key, Delete: td.Cmd == "delete", Context: ctx}
		if !op.Delete {
			op.Value = []byte(val(td, "v", ""))
		}
		res, err := w.Write(dc, op)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s\n", opString(res.Event))

	case "txn":
		dc := positional(td)
		ops, err := txnOps(td, dc)
		if err != nil {
			return "", err
		}
		for i := range ops {
			ctx, err := worldContext(w, dc, ops[i].Key, val(td, "ctx", "none"))
			if err != nil {
				return "", err
			}
			ops[i].Context = ctx
		}
		res, err := w.WriteTxn(dc, ops)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "txn of %d ops:\n", len(res))
		for _, r := range res {
			fmt.Fprintf(&b, "  %s\n", opString(r.Event))
		}

	case "publish":
		k, err := w.Publish(positional(td))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "published %d; stream: %s\n", k, w.StreamDesc(positional(td)))

	case "deliver":
		_, heal := td.Arg("heal")
		ok, err := w.DeliverOn(positional(td), heal)
		if err != nil {
			return "", err
		}
		if !ok {
			b.WriteString("nothing to deliver\n")
		}
		notes()

	case "step":
		n, err := strconv.Atoi(val(td, "n", "1"))
		if err != nil {
			return "", err
		}
		for range n {
			if _, err := w.Step(); err != nil {
				return "", err
			}
		}
		notes()

	case "run", "tick":
		d, err := dur("for", "1s")
		if err != nil {
			return "", err
		}
		if td.Cmd == "run" {
			err = w.Run(d)
		} else {
			err = w.Tick(d)
		}
		notes()
		if err != nil {
			return b.String(), err
		}

	case "settle":
		limit, err := dur("limit", "2m")
		if err != nil {
			return "", err
		}
		start := w.Now()
		err = w.Settle(limit)
		notes()
		if err != nil {
			return b.String(), err
		}
		fmt.Fprintf(&b, "settled after %.1fs\n", (w.Now() - start).Seconds())

	case "crash", "restart":
		var err error
		if td.Cmd == "crash" {
			err = w.Crash(positional(td))
		} else {
			err = w.Restart(positional(td))
		}
		notes()
		if err != nil {
			return b.String(), err
		}

	case "cut", "mend":
		if len(td.CmdArgs) != 2 {
			return "", fmt.Errorf("%s: want two DCs", td.Cmd)
		}
		a, c := td.CmdArgs[0].Key, td.CmdArgs[1].Key
		if td.Cmd == "cut" {
			w.Cut(a, c)
		} else {
			w.Mend(a, c)
		}
		notes()

	case "lose":
		seq, err := strconv.ParseUint(val(td, "seq", "0"), 10, 64)
		if err != nil {
			return "", err
		}
		desc, err := w.LoseMsg(positional(td), seq)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s's stream lost message %d: %s\n", positional(td), seq, desc)

	case "drop", "lose-ack":
		_, heal := td.Arg("heal")
		c, err := w.consumer(positional(td), heal)
		if err != nil {
			return "", err
		}
		if td.Cmd == "drop" {
			c.dropNext++
		} else {
			c.loseAck++
		}
		b.WriteString("ok\n")

	case "skew":
		d, err := dur("by", "0s")
		if err != nil {
			return "", err
		}
		w.SetSkew(positional(td), d)
		b.WriteString("ok\n")

	case "show":
		dc := positional(td)
		st := w.Store(dc)
		if st == nil {
			return "", fmt.Errorf("%s is down", dc)
		}
		keys := vals(td, "k")
		if len(keys) == 0 {
			snap, err := storeSnapshot(st)
			if err != nil {
				return "", err
			}
			keys = sortedKeys(snap)
			if len(keys) == 0 {
				return "no keys\n", nil
			}
		}
		for _, k := range keys {
			s, ok, err := st.Get(k)
			if err != nil {
				return "", err
			}
			b.WriteString(showState(w.Resolver(k), k, s, ok))
		}

	case "digest":
		ds, equal, err := w.Digests()
		if err != nil {
			return "", err
		}
		if equal {
			b.WriteString("digests equal\n")
		} else {
			b.WriteString("digests differ\n")
		}
		for _, dc := range w.DCs() {
			fmt.Fprintf(&b, "%s %s\n", dc, ds[dc][:12])
		}

	case "healing":
		for _, dc := range w.DCs() {
			state := core.DescribeBypasses(w.Healing(dc))
			if !w.Up(dc) {
				state = "down"
			}
			fmt.Fprintf(&b, "%s: %s\n", dc, state)
		}

	case "consumers":
		for _, c := range w.Consumers() {
			b.WriteString(c + "\n")
		}

	case "stream":
		fmt.Fprintf(&b, "%s\n", w.StreamDesc(positional(td)))

	case "applied":
		dc := positional(td)
		st := w.Store(dc)
		if st == nil {
			return "", fmt.Errorf("%s is down", dc)
		}
		a := st.Applied()
		for _, o := range w.DCs() {
			fmt.Fprintf(&b, "%s:", o)
			for p := range w.Partitions() {
				fmt.Fprintf(&b, " p%d=%d", p, a.Vector(uint32(p))[o])
			}
			b.WriteString("\n")
		}

	case "violations":
		vs := w.Violations()
		if len(vs) == 0 {
			return "none\n", nil
		}
		for _, v := range vs {
			b.WriteString(v + "\n")
		}

	default:
		return "", fmt.Errorf("unknown world command %q", td.Cmd)
	}
	return b.String(), nil
}

// setupWorld reads a world command.
func setupWorld(td *datadriven.TestData) (*World, error) {
	dcs := vals(td, "dcs")
	parts, err := strconv.Atoi(val(td, "partitions", "1"))
	if err != nil {
		return nil, fmt.Errorf("partitions: %w", err)
	}
	rs, err := parseResolvers(td, dcs)
	if err != nil {
		return nil, err
	}
	opts := WorldOptions{DCs: dcs, Partitions: parts, Resolvers: rs, Topology: val(td, "topology", ""),
		Hub: val(td, "hub", ""), Standby: val(td, "standby", ""), Skew: map[string]time.Duration{}}
	if s := val(td, "heal_after", ""); s != "" {
		if opts.HealAfter, err = time.ParseDuration(s); err != nil {
			return nil, err
		}
	}
	for _, sk := range vals(td, "skew") {
		dc, d, ok := strings.Cut(sk, ":")
		if !ok {
			return nil, fmt.Errorf("skew %q: want dc:duration", sk)
		}
		if opts.Skew[dc], err = time.ParseDuration(d); err != nil {
			return nil, err
		}
	}
	return NewWorld(opts)
}

// worldContext reads ctx=none|read|read@dc for a write at dc.
func worldContext(w *World, dc, key, s string) (vclock.VV, error) {
	at := dc
	switch {
	case s == "" || s == "none":
		return nil, nil
	case strings.HasPrefix(s, "read@"):
		at = strings.TrimPrefix(s, "read@")
	case s != "read":
		return nil, fmt.Errorf("ctx %q: want none, read or read@dc", s)
	}
	st, _, err := w.Read(at, key)
	if err != nil {
		return nil, err
	}
	if st.Clock == nil {
		return vclock.VV{}, nil
	}
	return st.Clock.Clone(), nil
}
