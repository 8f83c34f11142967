// Package testutil holds small helpers the in-process test suites share;
// waits on conditions are pkg/cluster's (Eventually, Wait).
package testutil

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream connects to the NATS server at url for the test's own reads
// of the streams, and closes the connection at the end of the test.
func JetStream(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
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

// Logger logs everything from DC dc to the test log when REPL_TEST_LOG is
// set, and discards everything otherwise.
func Logger(t testing.TB, dc string) *slog.Logger {
	if os.Getenv("REPL_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test_dc", dc)
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
