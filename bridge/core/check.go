package core

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
	"github.com/replicatorhq/replicator/pkg/names"
)

// ErrRejected wraps every reason a message from an upstream is
// dead-lettered instead of applied.
var ErrRejected = errors.New("bridge: rejected")

// Checker decides whether a message from an upstream's stream carries an
// event this DC may apply.
type Checker struct {
	// Partitions is the partition count.
	Partitions int
	// Limits bound the events accepted; zero fields take
	// event.DefaultLimits.
	Limits event.Limits
	// Known holds every DC of the deployment.
	Known map[string]bool
}

// NewChecker returns the Checker of a deployment of dcs.
func NewChecker(dcs []string, partitions int, limits event.Limits) Checker {
	known := make(map[string]bool, len(dcs))
	for _, dc := range dcs {
		known[dc] = true
	}
	return Checker{Partitions: partitions, Limits: limits, Known: known}
}

// Check decodes and checks the message data published on subject of up's
// stream with headers h. It returns the message's event, or the ops of its
// transaction, or an error wrapping ErrRejected (and the codec's error where
// there is one) that says what is wrong. Loops are not its concern: a
// well-formed event that already passed this DC is returned, and the plan
// drops it.
func (c Checker) Check(up, subject string, h map[string][]string, data []byte) ([]*event.Event, error) {
	reject := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrRejected, fmt.Sprintf(format, args...))
	}
	prefix := names.StreamPrefix(up)
	rest, ok := strings.CutPrefix(subject, prefix)
	if !ok {
		return nil, reject("subject %q is not in %s's stream (want %s<partition> or %stxn)", subject, up, prefix, prefix)
	}
	isTxn := subject == names.TxnSubject(up)
	var sp uint64
	if !isTxn {
		var err error
		sp, err = strconv.ParseUint(rest, 10, 32)
		if err != nil || int(sp) >= c.Partitions {
			return nil, reject("subject %q does not name a partition in [0, %d) or txn", subject, c.Partitions)
		}
	}
	evs, err := event.DecodeMessage(data, c.Limits)
	if err != nil {
		return nil, fmt.Errorf("%w: decode: %w", ErrRejected, err)
	}
	first := evs[0]
	switch {
	case isTxn && first.TxnOps == 0:
		return nil, reject("event %s is not a transaction but was published on %q", first.Dot, subject)
	case !isTxn && first.TxnOps > 0:
		return nil, reject("transaction %s was published on %q, not on %s", first.Dot, subject, names.TxnSubject(up))
	case !isTxn && uint64(first.Partition) != sp:
		return nil, reject("event %s names partition %d but was published on %q", first.Dot, first.Partition, subject)
	}
	if !c.Known[first.Origin] {
		return nil, reject("origin %q is not a known DC", first.Origin)
	}
	for i, dc := range first.Path {
		if !c.Known[dc] {
			return nil, reject("path[%d] %q is not a known DC", i, dc)
		}
	}
	if last := first.Path[len(first.Path)-1]; last != up {
		return nil, reject("forged: event %s with path %v arrived on %s's stream, but its path ends at %q", first.Dot, first.Path, up, last)
	}
	for _, ev := range evs {
		// Validate ran in the decoder; the ops of a transaction share the
		// origin and path (event.CheckTxn).
		if want := event.PartitionOf(ev.Key, c.Partitions); ev.Partition != want {
			return nil, reject("event %s names partition %d, but key %q is in partition %d of %d", ev.Dot, ev.Partition, ev.Key, want, c.Partitions)
		}
	}
	info, err := event.FromHeaders(h)
	if err != nil {
		return nil, fmt.Errorf("%w: headers: %w", ErrRejected, err)
	}
	if err := info.Check(first); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return evs, nil
}

// Report decodes and checks the applied vector dc reported (a msgpack map
// of origin to one sequence per partition): dc and every origin it names
// must be known DCs, and every row must have one entry per partition.
func (c Checker) Report(dc string, data []byte) (changelog.Applied, error) {
	if !c.Known[dc] {
		return nil, fmt.Errorf("%q is not a known DC", dc)
	}
	var a map[string][]uint64
	if err := msgpackcheck.Unmarshal(data, &a); err != nil {
		return nil, err
	}
	for origin, row := range a {
		if !c.Known[origin] {
			return nil, fmt.Errorf("entry for unknown DC %q", origin)
		}
		if len(row) != c.Partitions {
			return nil, fmt.Errorf("entry for %q has %d partitions, want %d", origin, len(row), c.Partitions)
		}
	}
	return changelog.Applied(a), nil
}
