// Package names owns every NATS subject, JetStream stream and consumer
// name the sidecars use, so that one file shows the whole namespace a NATS
// operator grants permissions on (docs/DESIGN.md, "Wire protocols"). It is
// internal to the sidecar: its names are part of the wire contract, the Go
// functions are not API.
//
// Every subject starts with "repl." and its second token is either a DC id
// (the DC's event stream, repl.<dc>.<partition>) or one of the services
// below (repl.<service>.<dc>...). A DC id must therefore not be a service
// token: Reserved lists them, and config validation refuses them.
package names

import (
	"slices"
	"strconv"
	"strings"
)

// prefix is the first token of every subject.
const prefix = "repl."

// The second tokens of the sidecars' own (non-stream) subjects.
const (
	svcAntiEntropy = "ae"
	svcAPI         = "api"
	svcApplied     = "applied"
	svcHome        = "home"
	svcRepair      = "repair"
	svcSnapshot    = "snap"
	svcShard       = "shard"
	svcShards      = "shards"
)

// Reserved returns the tokens a DC id must not be, sorted: a DC with such
// an id would have its event stream repl.<dc>.<partition> overlap the
// sidecars' own subjects.
func Reserved() []string {
	r := []string{svcAntiEntropy, svcAPI, svcApplied, svcHome, svcRepair, svcSnapshot, svcShard, svcShards}
	slices.Sort(r)
	return r
}

// Stream returns the name of dc's event stream, REPL_<dc>.
func Stream(dc string) string { return "REPL_" + dc }

// DLQStream returns the name of dc's dead-letter stream, REPL_<dc>_DLQ.
func DLQStream(dc string) string { return "REPL_" + dc + "_DLQ" }

// StreamPrefix returns what every subject of dc's event stream starts
// with, repl.<dc>.
func StreamPrefix(dc string) string { return prefix + dc + "." }

// Subject returns the subject of dc's events in partition p, repl.<dc>.<p>.
func Subject(dc string, p uint32) string {
	return StreamPrefix(dc) + strconv.FormatUint(uint64(p), 10)
}

// TxnSubject returns the subject of dc's transactions, repl.<dc>.txn: a
// transaction spans partitions, so its one message goes on a subject of
// its own (see event.EncodeTxn).
func TxnSubject(dc string) string { return StreamPrefix(dc) + "txn" }

// DLQSubject returns the subject dc dead-letters bad input on, repl.<dc>.dlq.
func DLQSubject(dc string) string { return StreamPrefix(dc) + "dlq" }

// Consumer returns the durable name of the consumer through which self
// reads up's stream, repl_<self>_from_<up>.
func Consumer(self, up string) string { return "repl_" + self + "_from_" + up }

// HealConsumer returns the durable name of the consumer through which self
// reads up's stream while it heals around a dead DC,
// repl_<self>_from_<up>_heal.
func HealConsumer(self, up string) string { return Consumer(self, up) + "_heal" }

// ShardHealConsumer returns the durable name of shard's heal consumer on
// up's stream (see ShardConsumer), repl_<self>_from_<up>_shard<i>of<S>_heal;
// HealConsumer(self, up) when shard is "".
func ShardHealConsumer(self, up, shard string) string {
	return ShardConsumer(self, up, shard) + "_heal"
}

// RepairSubject returns the core NATS subject on which dc serves its own
// events to DCs that found a gap, repl.repair.<dc>.
func RepairSubject(dc string) string { return prefix + svcRepair + "." + dc }

// AppliedSubject returns the core NATS subject on which dc reports its
// applied vector, repl.applied.<dc>.
func AppliedSubject(dc string) string { return prefix + svcApplied + "." + dc }

// AppliedWildcard matches every DC's applied-vector reports.
const AppliedWildcard = prefix + svcApplied + ".*"

// AppliedDC returns the DC whose report arrived on subject, and whether
// subject is an applied-vector report's at all.
func AppliedDC(subject string) (string, bool) {
	return strings.CutPrefix(subject, prefix+svcApplied+".")
}

// AntiEntropySubject returns the core NATS subject on which dc answers
// anti-entropy requests, repl.ae.<dc>.
func AntiEntropySubject(dc string) string { return prefix + svcAntiEntropy + "." + dc }

// AntiEntropyRunSubject returns the subject on which dc runs anti-entropy
// against every peer on demand, repl.ae.<dc>.run.
func AntiEntropyRunSubject(dc string) string { return AntiEntropySubject(dc) + ".run" }

// HomeSubject returns the core NATS subject on which dc executes
// forwarded writes and answers epoch probes, repl.home.<dc>.
func HomeSubject(dc string) string { return prefix + svcHome + "." + dc }

// SnapshotSubject returns the subject dc's snapshot server (replicator
// join) listens on, repl.snap.<dc>.
func SnapshotSubject(dc string) string { return prefix + svcSnapshot + "." + dc }

// SnapshotShardSubject returns the subject on which the shard of dc
// owning partition p serves snapshots of its partitions (replicator join
// of a DC whose peer runs several shards), repl.snap.<dc>.<p>.
func SnapshotShardSubject(dc string, p uint32) string {
	return SnapshotSubject(dc) + "." + strconv.FormatUint(uint64(p), 10)
}

// APIGroup returns the subject prefix of dc's NATS key-value API,
// repl.api.<dc>.
func APIGroup(dc string) string { return prefix + svcAPI + "." + dc }

// APISubject returns the subject of operation op of dc's NATS key-value
// API, repl.api.<dc>.<op>.
func APISubject(dc, op string) string { return APIGroup(dc) + "." + op }

// Inbox returns dc's inbox prefix, _INBOX_<dc>: it lets NATS permissions
// keep each DC's replies and pulled messages (whose reply subject is the
// ack) away from the other DCs' credentials.
func Inbox(dc string) string { return "_INBOX_" + dc }

// ShardTxnSubject returns the subject a DC running several sidecars
// (shards, docs/DESIGN.md invariant 16) publishes a transaction on,
// repl.<dc>.txn.<p>, p being its first op's partition.
func ShardTxnSubject(dc string, p uint32) string {
	return TxnSubject(dc) + "." + strconv.FormatUint(uint64(p), 10)
}

// ShardTxnWildcard matches every shard transaction subject of dc,
// repl.<dc>.txn.*.
func ShardTxnWildcard(dc string) string { return TxnSubject(dc) + ".*" }

// ShardConsumer returns the durable name of the consumer through which
// shard (its ShardName) of self reads up's stream,
// repl_<self>_from_<up>_shard<i>of<S>; Consumer(self, up) when shard is "".
func ShardConsumer(self, up, shard string) string {
	if shard == "" {
		return Consumer(self, up)
	}
	return Consumer(self, up) + "_shard" + shard
}

// ShardName is the token naming shard i of n in consumer names,
// "<i>of<n>"; "" for a DC of one sidecar.
func ShardName(i, n int) string {
	if n < 2 {
		return ""
	}
	return strconv.Itoa(i) + "of" + strconv.Itoa(n)
}

// ShardSubject returns the subject on which the shard owning partition p
// of dc takes requests the other shards forward to it,
// repl.shard.<dc>.<p>.
func ShardSubject(dc string, p uint32) string {
	return prefix + svcShard + "." + dc + "." + strconv.FormatUint(uint64(p), 10)
}

// ShardsSubject returns the subject every shard of dc answers, for the
// whole DC's views, repl.shards.<dc>.
func ShardsSubject(dc string) string { return prefix + svcShards + "." + dc }
