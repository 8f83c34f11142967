package bridge

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/pkg/names"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// embeddedJS starts an embedded JetStream server for the test and returns a
// JetStream context on it.
func embeddedJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv, err := StartEmbedded(EmbeddedOptions{StoreDir: t.TempDir(), JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestEnsureStream(t *testing.T) {
	js := embeddedJS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for range 2 { // the second call finds both streams as they should be
		if err := EnsureStream(ctx, js, "dc1", 3, StreamOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, "REPL_dc1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if want := []string{"repl.dc1.0", "repl.dc1.1", "repl.dc1.2", "repl.dc1.txn"}; strings.Join(cfg.Subjects, " ") != strings.Join(want, " ") {
		t.Errorf("subjects %v, want %v", cfg.Subjects, want)
	}
	if cfg.Duplicates != DefaultDuplicateWindow || cfg.Discard != jetstream.DiscardNew || cfg.Retention != jetstream.LimitsPolicy ||
		cfg.Storage != jetstream.FileStorage || cfg.MaxBytes != DefaultMaxBytes || cfg.MaxAge != 0 {
		t.Errorf("stream config %+v", cfg)
	}
	dlq, err := js.Stream(ctx, "REPL_dc1_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	if got := dlq.CachedInfo().Config.Subjects; len(got) != 1 || got[0] != "repl.dc1.dlq" {
		t.Errorf("dead-letter subjects %v, want [repl.dc1.dlq]", got)
	}
	// The event stream must not catch the dead-letter subject.
	ack, err := js.Publish(ctx, "repl.dc1.dlq", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if ack.Stream != "REPL_dc1_DLQ" {
		t.Errorf("a dead letter went to %s", ack.Stream)
	}
}

// TestEnsureStreamAddsTxnSubject: a stream made before transactions gains
// their subject, and nothing else about it changes.
func TestEnsureStreamAddsTxnSubject(t *testing.T) {
	js := embeddedJS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := StreamConfig("dc1", 3, StreamOptions{})
	old.Subjects = old.Subjects[:3]
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "repl.dc1.1", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if err := EnsureStream(ctx, js, "dc1", 3, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, "REPL_dc1")
	if err != nil {
		t.Fatal(err)
	}
	info := s.CachedInfo()
	if got := strings.Join(info.Config.Subjects, " "); got != "repl.dc1.0 repl.dc1.1 repl.dc1.2 repl.dc1.txn" {
		t.Fatalf("subjects after the upgrade: %s", got)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("the upgrade left %d messages, want the 1 there was", info.State.Msgs)
	}
	// A stream of another partition count is still refused, not widened.
	if err := EnsureStream(ctx, js, "dc1", 4, StreamOptions{}); !errors.Is(err, ErrStreamMismatch) {
		t.Fatalf("4 partitions against 3: %v", err)
	}
}

func TestEnsureStreamMismatch(t *testing.T) {
	js := embeddedJS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := StreamConfig("dc1", 2, StreamOptions{Memory: true, DuplicateWindow: 5 * time.Minute})
	old.Discard = jetstream.DiscardOld
	old.MaxAge = time.Hour
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	err := EnsureStream(ctx, js, "dc1", 3, StreamOptions{})
	if !errors.Is(err, ErrStreamMismatch) {
		t.Fatalf("err = %v, want ErrStreamMismatch", err)
	}
	for _, want := range []string{
		"REPL_dc1",
		"subjects: have 3 [repl.dc1.0 repl.dc1.1 repl.dc1.txn], want 4 [repl.dc1.0 repl.dc1.1 repl.dc1.2 repl.dc1.txn]",
		"storage: have Memory, want File",
		"discard: have DiscardOld, want DiscardNew",
		"duplicate_window: have 5m0s, want 2m0s",
		"max_age: have 1h0m0s",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "retention") {
		t.Errorf("error names retention, which matches:\n%v", err)
	}
	// Nothing was changed.
	s, err := js.Stream(ctx, "REPL_dc1")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.Discard; got != jetstream.DiscardOld {
		t.Errorf("EnsureStream changed the existing stream's discard policy to %v", got)
	}
}

func TestStreamFullRejects(t *testing.T) {
	js := embeddedJS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := EnsureStream(ctx, js, "dc1", 1, StreamOptions{MaxBytes: 1024}); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = js.Publish(ctx, names.Subject("dc1", 0), make([]byte, 100))
	}
	if err == nil {
		t.Fatal("a full stream accepted every publish; it must reject them so the outbox keeps the events")
	}
	s, _ := js.Stream(ctx, "REPL_dc1")
	info, _ := s.Info(ctx)
	if info.State.FirstSeq != 1 {
		t.Errorf("the full stream dropped its oldest messages (first seq %d)", info.State.FirstSeq)
	}
}

// flakyCreate fails the first creates with JetStream's 10049 ("error
// creating store for stream"), as nats-server v2.15.2 does when two
// connections race to load an account.
type flakyCreate struct {
	jetstream.JetStream
	fails, calls int
	code         jetstream.ErrorCode
}

func (f *flakyCreate) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	f.calls++
	if f.calls <= f.fails {
		return nil, &jetstream.APIError{Code: 500, ErrorCode: f.code, Description: "error creating store for stream"}
	}
	return f.JetStream.CreateStream(ctx, cfg)
}

// TestEnsureStreamRetriesStoreCreate: a create that meets 10049 is
// retried and succeeds; any other create error is returned at once; a
// 10049 that persists is returned after the retries.
func TestEnsureStreamRetriesStoreCreate(t *testing.T) {
	js := embeddedJS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	defer func(n int, d time.Duration) { createRetries, createBackoff = n, d }(createRetries, createBackoff)
	createRetries, createBackoff = 3, time.Millisecond

	f := &flakyCreate{JetStream: js, fails: 2, code: errStoreCreate}
	if err := EnsureStream(ctx, f, "dc1", 2, StreamOptions{}); err != nil {
		t.Fatalf("two 10049 answers then success: %v", err)
	}
	if f.calls != 4 { // 2 failures + the event stream + the DLQ stream
		t.Fatalf("%d creates, want 4", f.calls)
	}
	f = &flakyCreate{JetStream: js, fails: 1, code: 10001}
	if err := EnsureStream(ctx, f, "dc2", 2, StreamOptions{}); err == nil || f.calls != 1 {
		t.Fatalf("another API error: %v after %d creates, want the error after 1", err, f.calls)
	}
	f = &flakyCreate{JetStream: js, fails: 100, code: errStoreCreate}
	err := EnsureStream(ctx, f, "dc3", 2, StreamOptions{})
	var api *jetstream.APIError
	if !errors.As(err, &api) || api.ErrorCode != errStoreCreate || f.calls != 4 {
		t.Fatalf("a lasting 10049: %v after %d creates, want it after 4 (1 + 3 retries)", err, f.calls)
	}
}
