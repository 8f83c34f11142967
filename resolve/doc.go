// Package resolve holds the conflict resolvers: pure functions from a key's
// concurrent versions (siblings) to what a read shows and what is dropped.
//
// A resolver sees the set of siblings a DC stores for a key and returns a
// Result. It does no I/O and reads no clock, and its Result depends only on
// the set of siblings, never on their order, so every DC that has applied
// the same events shows the same value (docs/DESIGN.md, invariant 5). Every
// live version a resolver drops is listed in Result.Discarded, and the store
// writes each one to the conflict log (invariant 6).
//
// The store's loop for a key is:
//
//	r := rules.For(key)
//	ctx := st.WriteContext(client, r.OnWrite() && len(client) == 0, purged)
//	...
//	res := r.Resolve(key, st.Siblings)
//	for _, d := range res.Discarded { log(key, res.Kept, d) }
//	if res.Conflict { open or flag a conflict record }
//	show res.Values (404 when res.Deleted)
//
// Resolvers are chosen per key prefix with Rules, and built from config
// names with ByName.
//
// # Fallback
//
// The external resolver (ask the application's resolver service over NATS
// request/reply) is not built here, because it needs NATS; the node builds
// it by wrapping a Resolver from this package, its fallback:
//
//   - Name returns "external" and OnWrite returns true.
//   - Resolve must stay pure, so it cannot wait on the service. It returns
//     the fallback's Result; that is what reads show until a resolution
//     arrives, and what every DC shows if the service never answers.
//   - The service is asked by one deterministic DC only (the arbiter, the
//     first DC of the configuration: pkg/external), outside Resolve. On an
//     answer, that DC writes a resolution event whose context covers the
//     siblings it asked about, which supersedes them everywhere. On timeout
//     or error it writes nothing, and the fallback's Result stands.
//   - Asking from one DC, with a context covering the siblings, is what keeps
//     write-time resolution from starting a resolution storm.
//
// Internal to the sidecar: not a stable Go API. The resolver names and their
// options are API, through the config (docs/INTERFACES.md).
package resolve
