package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/pkg/names"
)

// Headers the bridge adds to the event headers of package event.
const (
	// HeaderSeqHi is the publishing DC's highest own sequence number in the
	// message's partition at publish time, so that a DC restored from an
	// old backup can continue above it.
	HeaderSeqHi = core.HeaderSeqHi
	// HeaderSeqHis is on a transaction's message: the publishing DC's
	// highest own sequence number in every partition at publish time, as
	// <partition>:<seq> pairs separated by commas.
	HeaderSeqHis = core.HeaderSeqHis
	// HeaderDLQReason says why a message was dead-lettered.
	HeaderDLQReason = "Repl-Dlq-Reason"
	// HeaderDLQUpstream names the upstream DC whose stream held the message.
	HeaderDLQUpstream = "Repl-Dlq-Upstream"
	// HeaderDLQSubject is the subject the message was published on.
	HeaderDLQSubject = "Repl-Dlq-Subject"
	// HeaderDLQStreamSeq is the message's sequence in the upstream stream.
	HeaderDLQStreamSeq = "Repl-Dlq-Stream-Seq"
	// HeaderDLQMsgID is the original Nats-Msg-Id, if any; the dead-letter
	// copy carries its own id so that distinct bad messages are never
	// deduplicated against each other.
	HeaderDLQMsgID = "Repl-Dlq-Msg-Id"
)

// StreamOptions configure a DC's streams. A zero field takes the default
// named in its comment.
type StreamOptions struct {
	// Replicas is the stream's replica count. Default 1.
	Replicas int
	// DuplicateWindow is how long JetStream remembers message ids to drop
	// republished events. It is always set explicitly on the stream (a
	// stream without it gets no window when it has sources). Default 2m.
	DuplicateWindow time.Duration
	// MaxBytes bounds the stream's size. Default 1 GiB.
	MaxBytes int64
	// Memory selects memory storage instead of file storage. Only for
	// tests; the default, file storage, survives a server restart.
	Memory bool
}

// Defaults of StreamOptions.
const (
	DefaultDuplicateWindow = 2 * time.Minute
	DefaultMaxBytes        = 1 << 30
)

func (o StreamOptions) withDefaults() StreamOptions {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = DefaultDuplicateWindow
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	return o
}

// StreamConfig returns the configuration of dc's event stream: the
// subjects repl.<dc>.0 … repl.<dc>.<partitions-1> listed one by one (a
// wildcard would also catch the dead-letter subject) and repl.<dc>.txn, limits retention with
// no age or count limit, and DiscardNew, so that a full stream rejects new
// publishes rather than dropping events a consumer still needs: the
// publisher keeps the rejected event in the outbox and retries, and the
// outbox grows until an operator raises MaxBytes or consumers catch up.
func StreamConfig(dc string, partitions int, opts StreamOptions) jetstream.StreamConfig {
	opts = opts.withDefaults()
	subjects := make([]string, partitions, partitions+1)
	for p := range subjects {
		subjects[p] = names.Subject(dc, uint32(p))
	}
	subjects = append(subjects, names.TxnSubject(dc))
	return jetstream.StreamConfig{
		Name:        names.Stream(dc),
		Description: "replicator events emitted by DC " + dc,
		Subjects:    subjects,
		Retention:   jetstream.LimitsPolicy,
		MaxMsgs:     -1,
		MaxBytes:    opts.MaxBytes,
		Discard:     jetstream.DiscardNew,
		MaxAge:      0,
		Storage:     storage(opts),
		Replicas:    opts.Replicas,
		Duplicates:  opts.DuplicateWindow,
	}
}

// DLQStreamConfig returns the configuration of dc's dead-letter stream,
// subject repl.<dc>.dlq. Like the event stream it rejects publishes when
// full instead of dropping old dead letters.
func DLQStreamConfig(dc string, opts StreamOptions) jetstream.StreamConfig {
	opts = opts.withDefaults()
	return jetstream.StreamConfig{
		Name:        names.DLQStream(dc),
		Description: "replicator dead letters rejected by DC " + dc,
		Subjects:    []string{names.DLQSubject(dc)},
		Retention:   jetstream.LimitsPolicy,
		MaxMsgs:     -1,
		MaxBytes:    opts.MaxBytes,
		Discard:     jetstream.DiscardNew,
		Storage:     storage(opts),
		Replicas:    opts.Replicas,
		Duplicates:  opts.DuplicateWindow,
	}
}

func storage(o StreamOptions) jetstream.StorageType {
	if o.Memory {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}

// ErrStreamMismatch reports an existing stream whose configuration is not
// what this DC needs.
var ErrStreamMismatch = errors.New("bridge: stream exists with an incompatible configuration")

// ErrNoJetStream reports that no JetStream answered the stream look-up.
var ErrNoJetStream = errors.New("bridge: no JetStream answered")

// EnsureStream creates dc's event stream and its dead-letter stream (see
// StreamConfig and DLQStreamConfig), or checks that they exist with a
// compatible configuration. It never updates an existing stream: a
// difference in subjects (the partition count), storage, retention, discard
// policy, duplicate window or a limit that would drop events is returned as
// an error wrapping ErrStreamMismatch that names each field and both
// values. Replicas and MaxBytes may differ; operators tune them.
func EnsureStream(ctx context.Context, js jetstream.JetStream, dc string, partitions int, opts StreamOptions) error {
	if partitions < 1 {
		return fmt.Errorf("bridge: ensure stream for %s: partitions is %d, want at least 1", dc, partitions)
	}
	if err := ensure(ctx, js, StreamConfig(dc, partitions, opts)); err != nil {
		return err
	}
	return ensure(ctx, js, DLQStreamConfig(dc, opts))
}

// errStoreCreate is JetStream's "error creating store for stream" (API
// error 10049). nats-server v2.15.2 answers it when two connections of an
// account that is just being loaded race: one enables the account's
// JetStream (probing its store directory) while the other already creates
// a stream there. It passes; the create is retried.
const errStoreCreate = 10049

// createRetries bounds the retries of a create that met errStoreCreate;
// the waits double from createBackoff.
var (
	createRetries = 5
	createBackoff = 100 * time.Millisecond
)

func createStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
	wait := createBackoff
	for try := 0; ; try++ {
		_, err := js.CreateStream(ctx, want)
		var api *jetstream.APIError
		if try >= createRetries || !errors.As(err, &api) || api.ErrorCode != errStoreCreate {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

func ensure(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		err = createStream(ctx, js, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Another process created it in between; check what it made.
			return ensure(ctx, js, want)
		}
		if err != nil {
			return fmt.Errorf("bridge: create stream %s: %w", want.Name, err)
		}
		return nil
	}
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%w: look up stream %s: %v; enable JetStream on the server, or set nats.domain to the JetStream domain that holds the replication streams when this DC reaches them over a leafnode", ErrNoJetStream, want.Name, err)
	}
	if err != nil {
		return fmt.Errorf("bridge: look up stream %s: %w", want.Name, err)
	}
	got := s.CachedInfo().Config
	if onlyLacksTxn(want, got) {
		// A stream made before transactions existed: adding their subject
		// changes nothing else.
		got.Subjects = append(got.Subjects, want.Subjects[len(want.Subjects)-1])
		if _, err := js.UpdateStream(ctx, got); err != nil {
			return fmt.Errorf("bridge: add the transaction subject %s to stream %s, made by a build without transactions: %w; "+
				"with a NATS user that may not update streams, add it once as an administrator: nats stream edit %s --subjects '%s'",
				want.Subjects[len(want.Subjects)-1], want.Name, err, want.Name, strings.Join(got.Subjects, ","))
		}
	}
	if diffs := streamDiffs(want, got); len(diffs) > 0 {
		return fmt.Errorf("%w: %s: %s; delete or fix the stream (nats stream edit/rm %s), or configure the DC to match",
			ErrStreamMismatch, want.Name, strings.Join(diffs, "; "), want.Name)
	}
	return nil
}

// streamDiffs lists, as "field: have X, want Y", each way got is not
// compatible with want.
func streamDiffs(want, got jetstream.StreamConfig) []string {
	var out []string
	diff := func(field string, have, need any) {
		out = append(out, fmt.Sprintf("%s: have %v, want %v", field, have, need))
	}
	if !slices.Equal(sortedCopy(got.Subjects), sortedCopy(want.Subjects)) {
		diff("subjects", fmt.Sprintf("%d %v", len(got.Subjects), got.Subjects), fmt.Sprintf("%d %v", len(want.Subjects), want.Subjects))
	}
	if got.Storage != want.Storage {
		diff("storage", got.Storage, want.Storage)
	}
	if got.Retention != want.Retention {
		diff("retention", got.Retention, want.Retention)
	}
	if got.Discard != want.Discard {
		diff("discard", got.Discard, want.Discard)
	}
	if got.Duplicates != want.Duplicates {
		diff("duplicate_window", got.Duplicates, want.Duplicates)
	}
	if got.MaxAge != 0 {
		diff("max_age", got.MaxAge, "0 (none: events would expire unread)")
	}
	if got.MaxMsgs > 0 {
		diff("max_msgs", got.MaxMsgs, "-1 (none)")
	}
	if got.MaxMsgsPerSubject > 0 {
		diff("max_msgs_per_subject", got.MaxMsgsPerSubject, "-1 (none)")
	}
	return out
}

// onlyLacksTxn reports whether got is an event stream whose subjects are
// want's less the transaction subject, its last.
func onlyLacksTxn(want, got jetstream.StreamConfig) bool {
	n := len(want.Subjects)
	if n < 2 || !strings.HasSuffix(want.Subjects[n-1], ".txn") || len(got.Subjects) != n-1 {
		return false
	}
	return slices.Equal(sortedCopy(got.Subjects), sortedCopy(want.Subjects[:n-1]))
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
