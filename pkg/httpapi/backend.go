package httpapi

import (
	"context"
	"errors"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/session"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// Backend is what the API handlers need from the sidecar.
type Backend interface {
	// Write commits a local write and returns once it is durable.
	Write(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error)
	// WriteTxn commits the ops of one transaction at this DC, all or
	// nothing, and returns once they are durable.
	WriteTxn(ctx context.Context, ops []changelog.WriteOp) ([]changelog.WriteResult, error)
	// Get returns a key's state; ok is false when nothing is stored.
	Get(key string) (st dvv.State, ok bool, err error)
	// Scan calls fn for every key starting with prefix, in key order; an
	// error from fn stops the scan and is returned.
	Scan(prefix string, fn func(key string, st dvv.State) error) error
	// Digest summarises the whole key state.
	Digest() (changelog.Digest, error)
	// Digests is this DC's digest and every peer's, each computed when
	// asked (antientropy.Worker.Digests): anything that encodes to JSON,
	// or an error wrapping ErrNoPeers without replication.
	Digests(ctx context.Context) (any, error)
	// Conflicts lists the conflict log.
	Conflicts(f changelog.ConflictFilter) ([]changelog.Conflict, error)
	// Conflict returns one conflict log entry, or an error wrapping
	// changelog.ErrNotFound.
	Conflict(id string) (changelog.Conflict, error)
	// Resolver returns the key's resolver, the same one the store uses.
	Resolver(key string) resolve.Resolver
	// Status is GET /v1/status: anything that encodes to JSON.
	Status() any
	// DeadLetters returns up to limit of the newest messages of the DC's
	// dead-letter stream and how many it holds, or an error wrapping
	// ErrNoDeadLetters when there is no such stream.
	DeadLetters(ctx context.Context, limit int) (DeadLetters, error)
	// Ready is nil when the sidecar can serve requests; otherwise it says
	// why not, for /healthz.
	Ready() error
	// Readiness says whether the DC has caught up since it started, for
	// /readyz, and what it still waits for: anything that encodes to JSON.
	Readiness() (ready bool, detail any)
	// Scope is what session tokens and X-Repl-Wait may name here.
	Scope() session.Scope
	// WaitRead waits, up to the sidecar's context_wait, until this DC
	// covers a reader's context for key and its session token (see
	// changelog.Store.WaitRead).
	WaitRead(ctx context.Context, key string, client vclock.VV, tok session.Token) error
	// WaitReplicated waits until n DCs have applied every event tok names
	// (see changelog.Store.WaitReplicated).
	WaitReplicated(ctx context.Context, tok session.Token, n int) (int, error)
	// Feed is the change feed and the point-in-time views of the store.
	Feed() Feed
	// Now is this DC's HLC time, which reads compare expiries against.
	Now() uint64
}

var _ Backend = StoreBackend{}

// StoreBackend is the Backend over a changelog.Store.
type StoreBackend struct {
	Store *changelog.Store
	// Rules picks each key's resolver; it must be the rule set the store
	// was opened with. Nil means siblings for every key, the store's
	// default.
	Rules *resolve.Rules
	// StatusFn builds GET /v1/status. Nil gives the DC and partition count.
	StatusFn func() any
	// DeadLettersFn reads the dead-letter stream for GET /v1/deadletters.
	// Nil answers ErrNoDeadLetters.
	DeadLettersFn func(ctx context.Context, limit int) (DeadLetters, error)
	// ReadyFn, if set, is asked by /healthz after the store is checked,
	// for the node's own readiness (links up, caught up).
	ReadyFn func() error
	// DigestsFn, if set, answers GET /v1/digests. Nil: the route answers
	// 404 (no peers to ask).
	DigestsFn func(ctx context.Context) any
	// ReadinessFn, if set, is asked by /readyz once Ready is nil: whether
	// the DC has caught up since it started (bridge.Replicator.Readiness).
	// Nil counts the DC as caught up.
	ReadinessFn func() (bool, any)
	// WriteFn, if set, takes the writes instead of Store.Write: the node's
	// write path, which forwards writes to keys with a home DC elsewhere.
	WriteFn func(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error)
	// WriteTxnFn, if set, takes the transactions instead of
	// Store.WriteTxn: the node's, which checks the keys' home DCs.
	WriteTxnFn func(ctx context.Context, ops []changelog.WriteOp) ([]changelog.WriteResult, error)
}

// WriteTxn implements Backend.
func (b StoreBackend) WriteTxn(ctx context.Context, ops []changelog.WriteOp) ([]changelog.WriteResult, error) {
	if b.WriteTxnFn != nil {
		return b.WriteTxnFn(ctx, ops)
	}
	return b.Store.WriteTxn(ctx, ops)
}

// Write implements Backend.
func (b StoreBackend) Write(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error) {
	if b.WriteFn != nil {
		return b.WriteFn(ctx, op)
	}
	return b.Store.Write(ctx, op)
}

// Get implements Backend.
func (b StoreBackend) Get(key string) (dvv.State, bool, error) { return b.Store.Get(key) }

// Scan implements Backend.
func (b StoreBackend) Scan(prefix string, fn func(string, dvv.State) error) error {
	return b.Store.Scan(prefix, fn)
}

// Digest implements Backend.
func (b StoreBackend) Digest() (changelog.Digest, error) { return b.Store.Digest() }

// Conflicts implements Backend.
func (b StoreBackend) Conflicts(f changelog.ConflictFilter) ([]changelog.Conflict, error) {
	return b.Store.Conflicts(f)
}

// Conflict implements Backend.
func (b StoreBackend) Conflict(id string) (changelog.Conflict, error) { return b.Store.Conflict(id) }

// Resolver implements Backend.
func (b StoreBackend) Resolver(key string) resolve.Resolver {
	if b.Rules == nil {
		return resolve.Siblings()
	}
	return b.Rules.For(key)
}

// Status implements Backend.
func (b StoreBackend) Status() any {
	if b.StatusFn != nil {
		return b.StatusFn()
	}
	return map[string]any{"dc": b.Store.DC(), "partitions": b.Store.Partitions()}
}

// DeadLetters implements Backend.
func (b StoreBackend) DeadLetters(ctx context.Context, limit int) (DeadLetters, error) {
	if b.DeadLettersFn == nil {
		return DeadLetters{}, ErrNoDeadLetters
	}
	return b.DeadLettersFn(ctx, limit)
}

// Scope implements Backend.
func (b StoreBackend) Scope() session.Scope { return b.Store.Scope() }

// WaitRead implements Backend.
func (b StoreBackend) WaitRead(ctx context.Context, key string, client vclock.VV, tok session.Token) error {
	return b.Store.WaitRead(ctx, key, client, tok)
}

// WaitReplicated implements Backend.
func (b StoreBackend) WaitReplicated(ctx context.Context, tok session.Token, n int) (int, error) {
	return b.Store.WaitReplicated(ctx, tok, n)
}

// Feed implements Backend.
func (b StoreBackend) Feed() Feed { return b.Store }

// Now implements Backend.
func (b StoreBackend) Now() uint64 { return b.Store.Now() }

// ErrNoPeers is what Digests returns without replication.
var ErrNoPeers = errors.New("httpapi: no peers to ask: replication is off")

// Digests implements Backend.
func (b StoreBackend) Digests(ctx context.Context) (any, error) {
	if b.DigestsFn == nil {
		return nil, ErrNoPeers
	}
	return b.DigestsFn(ctx), nil
}

// Readiness implements Backend.
func (b StoreBackend) Readiness() (bool, any) {
	if b.ReadinessFn == nil {
		return true, nil
	}
	return b.ReadinessFn()
}

// Ready implements Backend.
func (b StoreBackend) Ready() error {
	if b.Store == nil {
		return errors.New("no store is open")
	}
	if b.ReadyFn != nil {
		return b.ReadyFn()
	}
	return nil
}
