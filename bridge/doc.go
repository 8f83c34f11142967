// Package bridge replicates one DC's change log over NATS JetStream.
//
// Each DC owns one stream, REPL_<dc>, with one subject per partition
// (repl.<dc>.<p>); it holds every event the DC emits, its own writes and
// the events it forwards. A Replicator publishes the store's outbox to that
// stream, consumes its upstreams' streams through durable pull consumers
// (one per link, named repl_<self>_from_<up>), applies what it receives in
// one store batch per fetch, and acknowledges only after the batch commits.
// A gap in an origin's sequence is repaired by asking the origin for the
// missing events over core NATS (repl.repair.<origin>); applied vectors are
// exchanged on repl.applied.<dc> so the store can trim its outbox and purge
// tombstones. Bad input goes to the dead-letter stream REPL_<dc>_DLQ.
//
// The usual life cycle at a DC:
//
//	r, err := bridge.New(bridge.Options{Store: st, NC: nc, Plan: plan, DCs: dcs, Partitions: 16})
//	if err != nil { ... }
//	if err := r.Start(ctx); err != nil { ... }
//	defer r.Close() // stop intake, flush the outbox, wait for goroutines
//
// Internal to the sidecar: not a stable Go API. The streams, subjects,
// consumers and headers it uses (package names) are the wire contract of
// docs/DESIGN.md.
package bridge
