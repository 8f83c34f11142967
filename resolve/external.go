package resolve

import (
	"time"

	"github.com/replicatorhq/replicator/pkg/dvv"
)

// ExternalResolver is the `external` resolver: the application resolves
// conflicts through a service it runs (over NATS request/reply). Resolution
// happens at one deterministic DC, which writes a resolution event whose
// context covers the siblings (see package pkg/external); that keeps two
// DCs from resolving the same conflict into new concurrent versions for
// ever. Until then, and whenever the service fails or times out, reads show
// what the fallback resolver shows, flagged as a conflict.
type ExternalResolver struct {
	// Subject is where the application's resolver service listens.
	Subject string
	// Timeout bounds one call to the service.
	Timeout time.Duration
	// Fallback decides what reads show until the service has resolved.
	Fallback Resolver
}

// External returns the external resolver.
func External(subject string, timeout time.Duration, fallback Resolver) *ExternalResolver {
	return &ExternalResolver{Subject: subject, Timeout: timeout, Fallback: fallback}
}

// Name is "external".
func (*ExternalResolver) Name() string { return NameExternal }

// OnWrite is true: the resolution is written, like other on-write resolvers.
func (*ExternalResolver) OnWrite() bool { return true }

// Resolve shows the fallback's result; it flags a conflict while more than
// one value is live, since the application has not resolved it yet.
func (e *ExternalResolver) Resolve(key string, sibs []dvv.Sibling) Result {
	res := e.Fallback.Resolve(key, sibs)
	live := 0
	for _, sb := range sibs {
		if !sb.Deleted {
			live++
		}
	}
	res.Conflict = res.Conflict || live > 1
	return res
}
