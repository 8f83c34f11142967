// Package event defines the change event that carries one write between
// DCs, its msgpack codec (schema v1) and its mapping to NATS headers.
//
// API: the event's wire format (docs/DESIGN.md, "The change event (schema
// v1)") and these Go types are stable, for programs that read the streams.
package event

import (
	"encoding/hex"
	"encoding/json"
	"unicode/utf8"

	"github.com/replicatorhq/replicator/pkg/hlc"
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
	// Expires is the HLC time at which the value expires: the origin's HLC
	// at the write plus the TTL. 0 means no TTL. Only puts and resolves
	// carry one.
	Expires uint64
	// TxnOps is, for an op of a transaction, the number of ops in it (the
	// ops travel together; see EncodeTxn); 0 for a single event. It is not
	// part of the v1 encoding.
	TxnOps int

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

// jsonEvent is the JSON view of an event, for `replicator inspect`.
type jsonEvent struct {
	Version   int               `json:"version"`
	Origin    string            `json:"origin"`
	Partition uint32            `json:"partition"`
	Seq       uint64            `json:"seq"`
	Key       string            `json:"key"`
	Op        string            `json:"op"`
	Value     []byte            `json:"value"`
	ValueText *string           `json:"value_text,omitempty"`
	Dot       string            `json:"dot"`
	Context   map[string]uint64 `json:"context"`
	HLC       uint64            `json:"hlc"`
	HLCTime   string            `json:"hlc_time"`
	Path      []string          `json:"path"`
	Expires   uint64            `json:"expires,omitempty"`
	ExpiresAt string            `json:"expires_time,omitempty"`
	Unknown   []jsonUnknown     `json:"unknown_fields,omitempty"`
}

type jsonUnknown struct {
	Key        string `json:"key"`
	MsgpackHex string `json:"msgpack_hex"`
}

// MarshalJSON renders the event for people and tools: the value in base64
// as "value", and also as "value_text" when it is valid UTF-8; the dot as
// "dc:n"; the context as an object; the HLC as a number and as "hlc_time";
// and fields this version does not know as raw msgpack in hex.
func (e *Event) MarshalJSON() ([]byte, error) {
	j := jsonEvent{
		Version:   e.Version,
		Origin:    e.Origin,
		Partition: e.Partition,
		Seq:       e.Seq,
		Key:       e.Key,
		Op:        e.Op.String(),
		Value:     e.Value,
		Dot:       e.Dot.String(),
		Context:   map[string]uint64(e.Context),
		HLC:       e.HLC,
		HLCTime:   hlc.Timestamp(e.HLC).String(),
		Path:      e.Path,
		Expires:   e.Expires,
	}
	if e.Expires != 0 {
		j.ExpiresAt = hlc.Timestamp(e.Expires).String()
	}
	if j.Value == nil {
		j.Value = []byte{}
	}
	if utf8.Valid(e.Value) {
		s := string(e.Value)
		j.ValueText = &s
	}
	if j.Context == nil {
		j.Context = map[string]uint64{}
	}
	if j.Path == nil {
		j.Path = []string{}
	}
	for _, f := range e.unknown {
		j.Unknown = append(j.Unknown, jsonUnknown{Key: f.Key, MsgpackHex: hex.EncodeToString(f.Raw)})
	}
	return json.Marshal(j)
}
