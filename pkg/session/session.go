// Package session is the text form of what a client carries between
// requests so that it never goes back in time (invariant 12 in docs/DESIGN.md):
// session tokens, which name the writes a client made or saw across keys,
// and replicated-acknowledgement requests (X-Repl-Wait).
//
// A token is a comma-separated list of entries "<origin>:<partition>:<seq>",
// the Nats-Msg-Id of a write's event. A reader's DC serves a read carrying
// a token once its contiguous applied sequence of every (origin, partition)
// reaches the entry's seq. Clients merge tokens by joining them with a
// comma; the server keeps the largest seq per (origin, partition).
//
//	scope := session.Scope{DCs: []string{"dc1", "dc2"}, Partitions: 16}
//	tok, err := scope.Parse("dc1:3:17,dc2:0:4,dc1:3:9") // dc1:3:17,dc2:0:4
//	tok = tok.Merge(session.Of(session.Entry{Origin: "dc1", Partition: 5, Seq: 2}))
//	header := tok.String()
//
// The package is pure: no I/O, no clock.
//
// Internal to the sidecar: not a stable Go API. The token's text form is
// API, through the X-Repl-Session header (docs/INTERFACES.md).
package session

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// MaxEntries bounds the entries a token's text may hold, before merging,
// so that parsing a hostile token costs little.
const MaxEntries = 4096

// ErrBadInput marks a token or wait request that cannot be parsed or names
// what the deployment does not have. The errors that wrap it say what was
// wrong without repeating it, for a caller to prefix with the header or
// field the text came from.
var ErrBadInput = errors.New("session: bad input")

type inputError struct{ msg string }

func (e inputError) Error() string { return e.msg }
func (e inputError) Unwrap() error { return ErrBadInput }

func badInput(format string, args ...any) error { return inputError{fmt.Sprintf(format, args...)} }

// Entry names one event: origin's seq-th in partition, the write's dot and
// partition.
type Entry struct {
	Origin    string
	Partition uint32
	Seq       uint64
}

// String is the entry's text form, the event's Nats-Msg-Id.
func (e Entry) String() string { return event.MsgID(e.Origin, e.Partition, e.Seq) }

// Token is a set of entries, at most one per (origin, partition), sorted
// by origin then partition. Build one with Of, Parse or Merge.
type Token []Entry

// Of returns the token holding entries, keeping the largest seq per
// (origin, partition).
func Of(entries ...Entry) Token {
	t := slices.Clone(entries)
	slices.SortFunc(t, func(a, b Entry) int {
		if c := cmp.Compare(a.Origin, b.Origin); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Partition, b.Partition); c != 0 {
			return c
		}
		return cmp.Compare(b.Seq, a.Seq) // the largest first, which Compact keeps
	})
	return slices.CompactFunc(t, func(a, b Entry) bool { return a.Origin == b.Origin && a.Partition == b.Partition })
}

// Merge returns the token covering both t and o.
func (t Token) Merge(o Token) Token { return Of(append(slices.Clone(t), o...)...) }

// String is the token's text form: its entries joined by commas; "" for
// an empty token.
func (t Token) String() string {
	var b strings.Builder
	for i, e := range t {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(e.String())
	}
	return b.String()
}

// Scope is what a token or a wait request may name: the deployment's DCs
// and its partition count.
type Scope struct {
	DCs        []string
	Partitions int
}

// Parse reads a token's text form. Entries are separated by commas;
// spaces around an entry and empty entries (from joining an empty token)
// are ignored. It rejects more than MaxEntries entries, a DC not in the
// scope, a partition out of range, and a seq of 0 or of 2^62 and above,
// naming the entry.
func (s Scope) Parse(text string) (Token, error) {
	var out []Entry
	for i, rest := 0, text; rest != ""; {
		var piece string
		piece, rest, _ = strings.Cut(rest, ",")
		piece = strings.TrimSpace(piece)
		if piece == "" {
			continue
		}
		if len(out) == MaxEntries {
			return nil, badInput("more than %d entries; merge tokens per (dc, partition), as a write answer's token is", MaxEntries)
		}
		i++
		e, err := s.entry(piece)
		if err != nil {
			return nil, badInput("entry %d %q: %v", i, piece, err)
		}
		out = append(out, e)
	}
	return Of(out...), nil
}

// entry parses and checks one "<dc>:<partition>:<seq>".
func (s Scope) entry(piece string) (Entry, error) {
	origin, rest, ok1 := strings.Cut(piece, ":")
	ps, ns, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 {
		if strings.HasPrefix(piece, "{") {
			return Entry{}, errors.New("this is a context ({dc:n,...}), not a session token; want <dc>:<partition>:<seq>,... as a write answer's session gives it")
		}
		return Entry{}, errors.New("want <dc>:<partition>:<seq>")
	}
	p, err := strconv.ParseUint(ps, 10, 32)
	if err != nil {
		return Entry{}, fmt.Errorf("partition %q is not a number", ps)
	}
	n, err := strconv.ParseUint(ns, 10, 64)
	if err != nil {
		return Entry{}, fmt.Errorf("seq %q is not a number", ns)
	}
	e := Entry{Origin: origin, Partition: uint32(p), Seq: n}
	return e, s.check(e)
}

// check says what e names that the scope lacks, or returns nil.
func (s Scope) check(e Entry) error {
	if err := vclock.ValidID(e.Origin); err != nil {
		return err
	}
	if !slices.Contains(s.DCs, e.Origin) {
		return fmt.Errorf("DC %q is not one of %s", e.Origin, strings.Join(s.DCs, ", "))
	}
	if int64(e.Partition) >= int64(s.Partitions) {
		return fmt.Errorf("partition %d is not in 0..%d", e.Partition, s.Partitions-1)
	}
	if e.Seq == 0 || e.Seq >= event.MaxCounter {
		return fmt.Errorf("seq %d is not in 1..2^62-1", e.Seq)
	}
	return nil
}

// Check reports the first entry of t that names what the scope lacks, for
// tokens built in code (a transaction's dots) rather than parsed.
func (s Scope) Check(t Token) error {
	for _, e := range t {
		if err := s.check(e); err != nil {
			return badInput("entry %q: %v", e.String(), err)
		}
	}
	return nil
}

// Replicated acknowledgement (X-Repl-Wait) bounds.
const (
	// DefaultWaitTimeout is how long a write with X-Repl-Wait waits for
	// the other DCs when it names no timeout.
	DefaultWaitTimeout = 5 * time.Second
	// MaxWaitTimeout is the longest timeout a write may ask for.
	MaxWaitTimeout = time.Minute
)

// WaitAll is the text that asks for every DC.
const WaitAll = "all"

// ParseWait reads how many DCs, this one included, must have applied a
// write before it is answered: an integer from 1 to the number of DCs, or
// "all". "" means no wait (0).
func (s Scope) ParseWait(text string) (int, error) {
	if text == "" {
		return 0, nil
	}
	if strings.EqualFold(strings.TrimSpace(text), WaitAll) {
		return len(s.DCs), nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(text))
	if err != nil || n < 1 || n > len(s.DCs) {
		return 0, badInput("%q is not a number of DCs: want 1..%d (the deployment has %d DCs) or %q", text, len(s.DCs), len(s.DCs), WaitAll)
	}
	return n, nil
}

// ParseWaitTimeout reads a wait's timeout in Go's duration syntax ("2s",
// "500ms"); "" means DefaultWaitTimeout. It must be positive and at most
// MaxWaitTimeout.
func ParseWaitTimeout(text string) (time.Duration, error) {
	if text == "" {
		return DefaultWaitTimeout, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(text))
	if err != nil || d <= 0 || d > MaxWaitTimeout {
		return 0, badInput("%q is not a duration in (0, %s], such as \"2s\" or \"500ms\"", text, MaxWaitTimeout)
	}
	return d, nil
}

// Ack is what a write asks of replicated acknowledgement: to be answered
// once N DCs, the write's own included, have applied it, waiting at most
// Timeout. N 0 asks for nothing.
type Ack struct {
	N       int
	Timeout time.Duration
}

// ParseAck reads a replicated-acknowledgement request, wait as ParseWait
// reads it and timeout as ParseWaitTimeout does; a timeout without a wait
// is an error. Its errors name the two as waitName and timeoutName give
// them (the HTTP headers, the NATS fields).
func (s Scope) ParseAck(wait, timeout, waitName, timeoutName string) (Ack, error) {
	n, err := s.ParseWait(wait)
	if err != nil {
		return Ack{}, fmt.Errorf("%s: %w", waitName, err)
	}
	if n == 0 {
		if timeout != "" {
			return Ack{}, badInput("%s is given without %s; give both, or neither", timeoutName, waitName)
		}
		return Ack{}, nil
	}
	d, err := ParseWaitTimeout(timeout)
	if err != nil {
		return Ack{}, fmt.Errorf("%s: %w", timeoutName, err)
	}
	return Ack{N: n, Timeout: d}, nil
}

// Shortfall is the message of a write that stood but was applied by only
// got of want DCs within timeout.
func Shortfall(got, want int, timeout time.Duration) string {
	return fmt.Sprintf("only %d of %d DCs had applied the write within %s; the write stands (do not retry it): read it back later, or wait longer next time", got, want, timeout)
}
