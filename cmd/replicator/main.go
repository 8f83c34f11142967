// Command replicator is the multi-leader replication sidecar: one process
// per DC (`run`), a one-process demo (`demo`), an event decoder (`inspect`),
// a client of a running sidecar (`kv`, `conflicts`, `changes`, `status`) and the
// build's version (`version`, `--version`).
//
// API: the commands, flags, outputs and exit statuses are the CLI interface
// described in docs/INTERFACES.md; the Go code is not importable.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// usageError is a command-line mistake: exit status 2, one line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg + " (see --help)" }

// exitError ends a command with its own exit status and a one-line
// message (kv get of a missing key: 3).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usagef returns a usageError.
func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"run", "run one DC's sidecar: run --config FILE", cmdRun},
	{"demo", "run N DCs on embedded NATS, drive conflicting writes, check convergence", cmdDemo},
	{"inspect", "decode msgpack change events to JSON (stdin, files, or as a nats --translate filter)", cmdInspect},
	{"kv", "get, put or delete a key, or commit a transaction, on a running sidecar: kv get|put|del KEY [VALUE], kv txn [FILE]", cmdKV},
	{"conflicts", "list or resolve conflicts on a running sidecar: conflicts list|resolve", cmdConflicts},
	{"changes", "print a running sidecar's change feed, one JSON line per change with its cursor: changes [--since C] [--prefix P] [--follow] [--snapshot] [--limit N]", cmdChanges},
	{"status", "summarise a running sidecar's status: status [--config FILE] [--json]", cmdStatus},
	{"probe", "exit 0 when a sidecar's /healthz (or /readyz with --ready) answers 200: a container health check", cmdProbe},
	{"repair", "run anti-entropy now on a running sidecar against every peer: repair --config FILE", cmdRepair},
	{"join", "bootstrap a new or restored DC from a running peer's snapshot: join --config FILE --from DC", cmdJoin},
	{"reshard", "change a DC's shard count offline, its sidecars stopped and drained: reshard --from OLD.yaml,... --to NEW.yaml,...", cmdReshard},
	{"bench", "measure replicated writes against raw JetStream and NATS KV in one process", cmdBench},
	{"version", "print the build's module version, VCS revision and Go version: version [--json]", cmdVersion},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = append([]string{"version"}, args[1:]...)
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			var ue *usageError
			var ee *exitError
			switch {
			case err == nil, errors.Is(err, flag.ErrHelp):
				return 0
			case errors.As(err, &ee):
				fmt.Fprintf(stderr, "replicator %s: %v\n", c.name, err)
				return ee.code
			case errors.As(err, &ue):
				fmt.Fprintf(stderr, "replicator %s: %v\n", c.name, err)
				return 2
			default:
				fmt.Fprintf(stderr, "replicator %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "replicator: unknown command %q; run 'replicator --help' for the list\n", args[0])
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: replicator COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'replicator COMMAND --help' for a command's flags.")
}

// newFlags returns a FlagSet that reports errors instead of exiting.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("replicator "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: replicator %s %s\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseArgs parses flags that may stand before, between or after the
// positional arguments (`kv put --addr A key value`), and returns the
// positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		// A negative number that is no flag's value is an argument
		// (kv incr KEY -2), not an unknown flag.
		var after []string
		if i := negativeArg(fs, args); i >= 0 {
			args, after = args[:i], args[i:]
		}
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		rest := append(fs.Args(), after...)
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// negativeArg returns the index of the first argument that is a negative
// integer and not the value of the flag before it, or -1.
func negativeArg(fs *flag.FlagSet, args []string) int {
	for i, a := range args {
		if a == "--" {
			return -1
		}
		if _, err := strconv.ParseInt(a, 10, 64); err != nil || !strings.HasPrefix(a, "-") {
			continue
		}
		if i > 0 {
			prev := strings.TrimLeft(args[i-1], "-")
			if f := fs.Lookup(prev); f != nil && strings.HasPrefix(args[i-1], "-") && !strings.Contains(prev, "=") {
				if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
					continue // the flag's value
				}
			}
		}
		return i
	}
	return -1
}

// parseNone parses the flags of a command that takes no positional
// arguments: any is a usage error.
func parseNone(fs *flag.FlagSet, args []string) error {
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("%s takes no arguments, got %q", strings.TrimPrefix(fs.Name(), "replicator "), strings.Join(rest, " "))
	}
	return nil
}

// parse parses flags; a bad flag becomes a one-line usage error.
func parse(fs *flag.FlagSet, args []string) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return err
	}
	if err != nil {
		return usagef("%v", err)
	}
	return nil
}

func logger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
