package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
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
	// Sharded adds the subjects of a sharded DC's transactions,
	// repl.<dc>.txn.* (see names.ShardTxnSubject).
	Sharded bool
	// Placement is where JetStream creates the streams in a supercluster:
	// a cluster, server tags, or both. Nil leaves it to JetStream (the
	// cluster of the server connected to). EnsureStream never moves an
	// existing stream; see placementDiffs.
	Placement *jetstream.Placement
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
	if opts.Sharded {
		subjects = append(subjects, names.ShardTxnWildcard(dc))
	}
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
		Placement:   opts.Placement,
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
		Placement:   opts.Placement,
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

// ErrPlacement reports a stream that does not live where nats.placement
// asks: created before placement was set, moved by an operator, or
// created on a JetStream that cannot honour it (one server, not a
// cluster). The sidecar does not move streams.
var ErrPlacement = errors.New("bridge: stream is not placed where nats.placement asks")

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
		err := retryUnavailable(ctx, func() error {
			_, err := js.CreateStream(ctx, want)
			return err
		})
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

// errUnavailable is JetStream's "JetStream system temporarily
// unavailable" (API error 10008). A clustered JetStream answers it while
// its meta group has no leader: during an election, and for as long as
// the servers answering are cut off from most of the meta group's
// servers, as a region cut off from the rest of a supercluster is (see
// docs/SCALING.md). Stream look-ups, message reads and creates all meet
// it then, even for a stream whose own servers are fine.
const errUnavailable = 10008

// unavailableMaxWait caps the doubling waits of retryUnavailable.
const unavailableMaxWait = time.Second

// ErrMetaLeaderless reports that JetStream kept answering "temporarily
// unavailable" until the context ended.
var ErrMetaLeaderless = errors.New("bridge: JetStream has no meta leader (an election, or this region is cut off from most of the supercluster's servers); the sidecar starts once it has one")

// retryUnavailable runs op again while it fails with errUnavailable and
// ctx lasts; then it returns op's error, wrapped in ErrMetaLeaderless if
// it was still errUnavailable.
func retryUnavailable(ctx context.Context, op func() error) error {
	wait := createBackoff
	for {
		err := op()
		var api *jetstream.APIError
		if !errors.As(err, &api) || api.ErrorCode != errUnavailable {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrMetaLeaderless, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, unavailableMaxWait)
	}
}

// lookupStream is js.Stream, retried while JetStream is unavailable.
func lookupStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	var s jetstream.Stream
	err := retryUnavailable(ctx, func() error {
		var err error
		s, err = js.Stream(ctx, name)
		return err
	})
	return s, err
}

// lastMsg is s.GetLastMsgForSubject, retried while JetStream is
// unavailable.
func lastMsg(ctx context.Context, s jetstream.Stream, subject string) (*jetstream.RawStreamMsg, error) {
	var m *jetstream.RawStreamMsg
	err := retryUnavailable(ctx, func() error {
		var err error
		m, err = s.GetLastMsgForSubject(ctx, subject)
		return err
	})
	return m, err
}

func ensure(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
	s, err := lookupStream(ctx, js, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		err = createStream(ctx, js, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Another process created it in between; check what it made.
			return ensure(ctx, js, want)
		}
		if err != nil {
			if want.Placement != nil {
				return fmt.Errorf("bridge: create stream %s in %s: %w; check that nats.placement names a cluster of the supercluster (nats server list) with enough servers carrying the tags for durability.stream_replicas",
					want.Name, describePlacement(want.Placement), err)
			}
			return fmt.Errorf("bridge: create stream %s: %w", want.Name, err)
		}
		// A JetStream that is not clustered accepts a placement it cannot
		// honour: check where the stream went.
		s, err = lookupStream(ctx, js, want.Name)
		if err != nil {
			return fmt.Errorf("bridge: look up stream %s after creating it: %w", want.Name, err)
		}
		return checkPlacement(want, s.CachedInfo())
	}
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%w: look up stream %s: %v; enable JetStream on the server, or set nats.domain to the JetStream domain that holds the replication streams when this DC reaches them over a leafnode", ErrNoJetStream, want.Name, err)
	}
	if err != nil {
		return fmt.Errorf("bridge: look up stream %s: %w", want.Name, err)
	}
	got := s.CachedInfo().Config
	if n := len(got.Subjects); n == len(want.Subjects)+1 && got.Subjects[n-1] == names.ShardTxnWildcard(strings.TrimPrefix(want.Name, "REPL_")) &&
		slices.Equal(sortedCopy(got.Subjects[:n-1]), sortedCopy(want.Subjects)) {
		// The DC ran several shards before and runs one sidecar now: the
		// shards' transaction subjects stay, so their last messages still
		// tell where sequences resume.
		want.Subjects = got.Subjects
	}
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
	return checkPlacement(want, s.CachedInfo())
}

// checkPlacement returns an error wrapping ErrPlacement when want asks for
// a placement the stream described by info does not have.
func checkPlacement(want jetstream.StreamConfig, info *jetstream.StreamInfo) error {
	diffs := placementDiffs(want.Placement, info)
	if len(diffs) == 0 {
		return nil
	}
	if info.Cluster == nil || info.Cluster.Name == "" {
		return fmt.Errorf("%w: %s: %s; the JetStream serving it is a single server, which has no clusters to place streams in: "+
			"point nats.url at the supercluster, or remove nats.placement", ErrPlacement, want.Name, strings.Join(diffs, "; "))
	}
	return fmt.Errorf("%w: %s: %s; the sidecar never moves a stream. To move it, as an administrator: nats stream edit %s %s "+
		"(JetStream copies the stream to the new place, then drops the old replicas; the sidecars keep working meanwhile). "+
		"Or set nats.placement to where the stream is",
		ErrPlacement, want.Name, strings.Join(diffs, "; "), want.Name, placementFlags(want.Placement))
}

// placementDiffs lists, as "field: have X, want Y", each way the stream
// described by info is not where want asks. The cluster is compared with
// where the stream lives; the tags, which a stream's info does not show
// per server, with the stream's configured placement.
func placementDiffs(want *jetstream.Placement, info *jetstream.StreamInfo) []string {
	if want == nil {
		return nil
	}
	var out []string
	if want.Cluster != "" {
		have := ""
		if info.Cluster != nil {
			have = info.Cluster.Name
		}
		switch {
		case have == "":
			out = append(out, fmt.Sprintf("placement.cluster: the stream's JetStream is not clustered, want cluster %q", want.Cluster))
		case have != want.Cluster:
			out = append(out, fmt.Sprintf("placement.cluster: the stream lives in cluster %q, want %q", have, want.Cluster))
		}
	}
	if len(want.Tags) > 0 {
		var have []string
		if p := info.Config.Placement; p != nil {
			have = p.Tags
		}
		if !slices.Equal(lowerSorted(have), lowerSorted(want.Tags)) {
			out = append(out, fmt.Sprintf("placement.tags: have %v, want %v", have, want.Tags))
		}
	}
	return out
}

func lowerSorted(tags []string) []string {
	out := make([]string, len(tags))
	for i, t := range tags {
		out[i] = strings.ToLower(t)
	}
	slices.Sort(out)
	return out
}

func describePlacement(p *jetstream.Placement) string {
	var parts []string
	if p.Cluster != "" {
		parts = append(parts, "cluster "+strconv.Quote(p.Cluster))
	}
	if len(p.Tags) > 0 {
		parts = append(parts, fmt.Sprintf("servers tagged %v", p.Tags))
	}
	return strings.Join(parts, " on ")
}

// placementFlags are the nats CLI flags that ask for placement p.
func placementFlags(p *jetstream.Placement) string {
	var flags []string
	if p.Cluster != "" {
		flags = append(flags, "--cluster "+p.Cluster)
	}
	for _, t := range p.Tags {
		flags = append(flags, "--tag "+t)
	}
	return strings.Join(flags, " ")
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
	if n < 2 || !(strings.HasSuffix(want.Subjects[n-1], ".txn") || strings.HasSuffix(want.Subjects[n-1], ".txn.*")) || len(got.Subjects) != n-1 {
		return false
	}
	return slices.Equal(sortedCopy(got.Subjects), sortedCopy(want.Subjects[:n-1]))
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
