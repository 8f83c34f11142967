package cluster

import (
	"context"
	"fmt"
	"time"
)

// TB is the part of testing.TB the test helpers of this package use, so
// that the package itself, which `replicator demo` and `bench` run, does
// not import testing.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
	Failed() bool
}

// Cond is a condition to wait for: whether it holds, and if not, why not
// (the failure message shows the last explanation).
type Cond func() (bool, string)

// Poll is the interval at which the waits of this package check their
// condition.
const Poll = 20 * time.Millisecond

// Wait checks cond every interval until it holds, ctx ends or timeout
// passes; the error then names what and cond's last explanation.
func Wait(ctx context.Context, timeout, interval time.Duration, what string, cond Cond) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s within %s: %s", what, timeout, why)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no %s before %v: %s", what, ctx.Err(), why)
		case <-tick.C:
		}
	}
}

// Eventually checks cond every Poll until it holds, and fails the test
// with what and cond's last explanation once timeout has passed.
func Eventually(t TB, timeout time.Duration, what string, cond Cond) {
	t.Helper()
	EventuallyEvery(t, timeout, Poll, what, cond)
}

// EventuallyEvery is Eventually checking every interval.
func EventuallyEvery(t TB, timeout, interval time.Duration, what string, cond Cond) {
	t.Helper()
	if err := Wait(context.Background(), timeout, interval, what, cond); err != nil {
		t.Fatalf("%v", err)
	}
}

// Stable is cond holding n checks in a row: a state that holds twice is
// not one caught in passing.
func Stable(n int, cond Cond) Cond {
	seen := 0
	return func() (bool, string) {
		ok, why := cond()
		if ok {
			seen++
		} else {
			seen = 0
		}
		return seen >= n, why
	}
}

// Hold keeps a fault in place (a cut link, a paused DC, a stopped server)
// for d, or until stop is closed (nil never is). It is the length of the
// fault, not a wait for a condition.
func Hold(d time.Duration, stop <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop:
	}
}

// WaitFor checks cond every interval until it holds or timeout passes;
// the error then says so. It is Wait for a condition with nothing to
// explain.
func WaitFor(timeout, interval time.Duration, cond func() bool) error {
	return Wait(context.Background(), timeout, interval, "condition", func() (bool, string) {
		return cond(), "not met"
	})
}
