package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/node"
)

// openConflictsShown bounds the open records `status` counts.
const openConflictsShown = 100

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", "[--config FILE | --addr URL] [--json]", stderr)
	var c clientFlags
	c.register(fs)
	raw := fs.Bool("json", false, "print GET /v1/status as it is (indented JSON) instead of the summary")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("status takes no arguments, got %q", strings.Join(rest, " "))
	}
	if err := c.finish(); err != nil {
		return err
	}
	_, body, err := c.do(ctx, http.MethodGet, "/v1/status", nil, nil)
	if err != nil {
		return err
	}
	if *raw {
		return indent(stdout, body)
	}
	var st node.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("decode GET /v1/status: %w", err)
	}
	// A sharded DC answers every shard's status (INTERFACES.md "Shards").
	var sharded struct {
		Shards []struct {
			Shard      string      `json:"shard"`
			Partitions []uint32    `json:"partitions"`
			Status     node.Status `json:"status"`
		} `json:"shards"`
	}
	_ = json.Unmarshal(body, &sharded)
	var sum statusSummary
	sum.status = st
	// /readyz says what the DC waits for (the detail only with the token,
	// which c.do sends).
	if resp, b, err := c.do(ctx, http.MethodGet, "/readyz", nil, nil); err == nil || resp != nil && resp.StatusCode == http.StatusServiceUnavailable {
		sum.readyKnown = json.Unmarshal(b, &sum.ready) == nil
	}
	if resp, b, err := c.do(ctx, http.MethodGet, fmt.Sprintf("/v1/conflicts?status=open&limit=%d", openConflictsShown), nil, nil); err == nil {
		var open []json.RawMessage
		if json.Unmarshal(b, &open) == nil {
			sum.open, sum.openKnown = len(open), true
			sum.openMore = resp.Header.Get("X-Repl-Next-After") != ""
		}
	}
	if len(sharded.Shards) == 0 {
		sum.write(stdout)
		return nil
	}
	for i, sh := range sharded.Shards {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "shard %s, partitions %v\n", sh.Shard, sh.Partitions)
		sum.status = sh.Status
		sum.write(stdout)
	}
	return nil
}

// statusSummary is what `replicator status` prints by default.
type statusSummary struct {
	status     node.Status
	ready      bridge.Readiness
	readyKnown bool
	open       int
	openKnown  bool
	openMore   bool
}

func (s statusSummary) write(w io.Writer) {
	st := s.status
	fmt.Fprintf(w, "%s · %s of %s · %d partitions\n", st.DC, st.Topology, strings.Join(st.DCs, ", "), st.Partitions)
	switch {
	case !s.readyKnown:
		fmt.Fprintln(w, "ready:      unknown (GET /readyz did not answer)")
	case s.ready.Ready:
		at := ""
		if s.ready.ReadyAt != nil {
			at = " since " + s.ready.ReadyAt.Local().Format(time.DateTime)
		}
		fmt.Fprintf(w, "ready:      yes%s (caught up after its start)\n", at)
	default:
		fmt.Fprintln(w, "ready:      no, catching up:")
		for _, wt := range s.ready.WaitingFor {
			fmt.Fprintf(w, "            waiting for %s: %s\n", orDash(wt.Peer), wt.Reason)
		}
	}
	b := st.Bridge
	if b == nil {
		fmt.Fprintln(w, "replication: off")
		return
	}
	running := "running"
	if !b.Running {
		running = "stopped"
	}
	fmt.Fprintf(w, "replication: %s · outbox %d event(s) not yet published\n", running, b.OutboxDepth)
	healing := "none"
	if len(b.Healing) > 0 {
		var hs []string
		for _, h := range b.Healing {
			hs = append(hs, fmt.Sprintf("around %s via %s", h.Dead, h.Via))
		}
		healing = strings.Join(hs, ", ")
	}
	fmt.Fprintf(w, "healing:    %s\n", healing)
	conflicts := fmt.Sprintf("%d logged or resolved entries held", st.Conflicts.Held)
	if s.openKnown {
		more := ""
		if s.openMore {
			more = "+"
		}
		conflicts = fmt.Sprintf("%d%s open record(s) · %s", s.open, more, conflicts)
	}
	if len(st.Conflicts.SinceStart) > 0 {
		var by []string
		for _, r := range slices.Sorted(maps.Keys(st.Conflicts.SinceStart)) {
			by = append(by, fmt.Sprintf("%s %d", r, st.Conflicts.SinceStart[r]))
		}
		conflicts += " · since start: " + strings.Join(by, ", ")
	}
	fmt.Fprintf(w, "conflicts:  %s\n", conflicts)

	fmt.Fprintf(w, "\nlinks into %s:\n", st.DC)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  upstream\tconnected\tlag\tapplied\tlast applied\tlast error")
	for _, l := range b.Links {
		name := l.Upstream
		if l.Heal {
			name += " (heal)"
		}
		last := "never"
		if !l.LastApplied.IsZero() {
			last = l.LastApplied.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d ev, %.1fs\t%d\t%s\t%s\n", name, yesNo(l.Connected), l.LagEvents, l.LagSeconds, l.Applied, last, orDash(l.LastError))
	}
	if len(b.Links) == 0 {
		fmt.Fprintln(tw, "  (none: this DC consumes no upstream)")
	}
	tw.Flush()

	fmt.Fprintln(w, "\npeers (their applied-vector reports):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  peer\tstate\tlast report")
	for _, p := range b.Peers {
		last := fmt.Sprintf("none for %s since this DC started", time.Duration(p.ReportAgeSeconds*float64(time.Second)).Round(100*time.Millisecond))
		if p.LastReport != nil {
			last = fmt.Sprintf("%s ago", time.Duration(p.ReportAgeSeconds*float64(time.Second)).Round(100*time.Millisecond))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", p.DC, p.State, last)
	}
	tw.Flush()

	if len(st.Home) > 0 {
		fmt.Fprintln(w, "\nhome rules:")
		for _, h := range st.Home {
			fmt.Fprintf(w, "  %-20q %s, home %s (epoch %d)\n", h.Prefix, h.Policy, h.Home, h.Epoch)
		}
	}
	fmt.Fprintln(w, "\n(`replicator status --json` prints everything GET /v1/status holds)")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
