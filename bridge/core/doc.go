// Package core holds the decisions of the replication protocol, free of
// goroutines, NATS and the wall clock: time comes in as a value, the store
// and the origins behind small interfaces (Store, OwnEvents, Source). The
// bridge package drives it over JetStream; a simulator can drive it
// deterministically.
//
// What it decides, and how a driver steps it:
//
// Topology. NewPlan lays out one DC's place in a mesh, ring or star: the
// upstreams it consumes (Plan.Upstreams), the DCs that consume it
// (Plan.Downstreams), which events it drops as loops (Plan.Accept) and
// which it forwards (Plan.ShouldForward).
//
// Publish. A Publisher per DC turns its outbox entries, in outbox order,
// into the messages of its stream (Publisher.Message: subject, headers,
// data). At start the driver reads the last message of each partition
// subject (LastOwnSeq) and of the transaction subject (ParseSeqHis) and
// hands the highest own sequences to Publisher.Resume.
//
// Receive. One Link per upstream. The driver takes a batch of messages
// from the upstream's stream, in stream order, and calls Link.Receive with
// them. Receive checks each (Checker; a bad one is dead-lettered), drops
// loops, applies the rest in one store batch with the forwarding rule (a
// forwarded event lands in this DC's outbox), repairs the gaps that hold
// events back (Repairer, which asks the origin through Source and applies
// what comes back), applies the held events again, and returns one
// Verdict per message, which the driver carries out in order:
//
//	Ack         acknowledge: applied, a duplicate, or a loop
//	Nak         redeliver after Verdict.Delay (a gap still open, a store fault)
//	DeadLetter  copy to the dead-letter stream with Verdict.Reason, then
//	            terminate; once stored, Link.Forget; if the copy fails,
//	            nak after RetryDelay instead
//
// and a Tally to add to its figures. A message must be acknowledged only
// after Receive returned: the store has committed what it settled.
//
//	l := core.NewLink(core.LinkConfig{Up: "dc1", Plan: plan, Check: core.NewChecker(dcs, parts, limits),
//		Repair: core.Repairer{Store: st, Source: src, Forward: fwd, Partitions: parts},
//		MaxDeliver: 10, GapDelay: 200 * time.Millisecond, RetryDelay: time.Second})
//	for batch := range fromUpstream {
//		verdicts, tally := l.Receive(ctx, batch)
//		for i, v := range verdicts {
//			switch v.Action { // carry out, in order
//			case core.Ack: ack(batch[i])
//			case core.Nak: redeliver(batch[i], v.Delay)
//			case core.DeadLetter: deadLetter(batch[i], v.Reason); l.Forget(batch[i].Seq)
//			}
//		}
//		figures.Add(tally)
//	}
//
// Repair serving. At the origin, ServeRepair answers a RepairRequest from
// the DC's own events; a Source is the transport between Repairer and it.
//
// Reports and catch-up. Every report interval the driver publishes its
// applied vector and feeds the peers' vectors to:
//
//   - Healer.Seen for each report as it arrives (with its arrival time),
//     then Healer.Tick(now, peers); when it says the effective plan
//     changed, Reconcile says which heal links to stop and start: stop
//     them, put the new plan's forwarding rule in force, start the new
//     ones, each at HealStart of the dead DC's consumer on that stream;
//   - CatchUp.Due(now, applied, peers), whose repairs the driver runs with
//     Repairer.Repair; one that fails with ErrOriginLacks has the links
//     Replays.Due names replay their upstream's stream from the start.
//
// Readiness. Ready takes each peer's reports as they arrive (Ready.Seen)
// and says whether this DC has caught up since it started (Ready.Judge)
// and how each peer's reports stand (Ready.Peers).
//
// Retention. Every maintenance interval: Retention.Cutoff with the
// stream's state, Retention.Floor with every downstream consumer's ack
// floor, PurgeBelow per subject, then Retention.Trimmed. The outbox's own
// trimming and tombstone purging are the store's (changelog
// Store.TrimOutbox and Store.Purge), on the same interval.
//
// Every type here is used by one goroutine at a time; Plan is a value and
// may be shared.
package core
