// Package event defines the change event that carries one write between
// DCs, its msgpack codec (schema v1) and its mapping to NATS headers.
package event

import (
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// SchemaVersion is the event schema this build writes and reads.
const SchemaVersion = 1

// Op is what an event does to its key.
type Op uint8

// The operations an event can carry.
const (
	OpPut     Op = 1 // a new value
	OpDelete  Op = 2 // a tombstone
	OpResolve Op = 3 // a value that resolves the siblings its context covers
)

func (o Op) String() string {
	switch o {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	case OpResolve:
		return "resolve"
	}
	return "unknown"
}

// Event is one write as it travels between DCs.
type Event struct {
	// Version is the schema version; SchemaVersion when built here.
	Version int
	// Origin is the DC that made the write.
	Origin string
	// Partition is the key's partition (hash of the key mod partitions).
	Partition uint32
	// Seq is the origin's sequence number in Partition; it is Dot.N.
	Seq uint64
	Key string
	Op  Op
	// Value is the written value; empty for deletes.
	Value []byte
	// Dot is (Origin, Seq), the event's id in version vectors.
	Dot vclock.Dot
	// Context is the causal context: the dots this write supersedes.
	Context vclock.VV
	// HLC is the origin's hybrid logical clock at the write.
	HLC uint64
	// Path lists the DCs the event has passed through, origin first.
	Path []string

	// unknown holds fields a newer schema added, raw, so that re-encoding
	// passes them on unchanged.
	unknown []rawField
}

// rawField is one map entry this version does not know: its key and its
// msgpack-encoded value, kept verbatim.
type rawField struct {
	Key string
	Raw []byte
}
