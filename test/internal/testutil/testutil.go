// Package testutil holds small helpers the in-process test suites share.
package testutil

import (
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

// Eventually polls cond every interval until it holds, and fails the test
// with what and cond's last explanation once timeout has passed.
func Eventually(t testing.TB, timeout, interval time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s: %s", what, timeout, why)
		}
		<-tick.C
	}
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
