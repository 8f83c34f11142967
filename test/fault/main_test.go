// Package fault_test injects the faults that break real replicators into
// running DCs and checks the correctness contract of docs/DESIGN.md under
// each one (docs/RELIABILITY.md, rows 1 to 6):
//
//  1. SIGKILL of `replicator run` processes at random moments
//     (kill_test.go);
//  2. the NATS server killed and restarted, a DC's link cut and healed, a
//     sidecar paused with SIGSTOP, in mesh, ring and star (nats_test.go);
//  3. clock skew and a backward clock jump (skew_test.go);
//  4. a hot key written from every DC (hotkey_test.go);
//  5. one DC partitioned while the others delete (partition_test.go);
//  6. an event with a field a newer version added, in a ring of 4
//     (mixed_test.go).
//
// session_test.go checks the session guarantees and replicated
// acknowledgement of invariant 12 in docs/DESIGN.md across a cut link and a
// stopped DC. txn_test.go checks the atomic visibility of transactions
// (invariant 11) across SIGKILLs of a ring's forwarding DC.
//
// Every test has a fast form, run by `go test ./test/fault` and by CI, and
// a long form run with -fault.long. The commands and the figures of the
// last long run are in docs/RELIABILITY.md. Its rows 7 and 8 live in
// changelog/crash_test.go and test/sim.
//
// DCs are either real processes of the replicator binary (TestMain builds
// it) or in-process nodes (pkg/node) when a test needs to inject the
// physical clock or read a store directly. Either way they talk to one
// embedded JetStream server in the test process, each through its own TCP
// proxy, so that a test can cut one DC's link; and the test drives them
// over their HTTP API only.
package fault_test

import (
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

var (
	longForm = flag.Bool("fault.long", false,
		"run the long form of every fault test (minutes each; see docs/RELIABILITY.md)")
	seedFlag = flag.Uint64("fault.seed", 0,
		"seed of the tests' random choices (victims, moments, keys); 0 picks one from the clock and logs it")
	figuresFile = flag.String("fault.figures", "",
		"append each test's figures, one JSON object per line, to this file")
)

// binPath is the replicator binary TestMain builds; buildErr says why
// there is none. buildDir is the directory it builds in, which lasts as
// long as the test binary.
var (
	binPath  string
	buildErr error
	buildDir string
)

func TestMain(m *testing.M) {
	flag.Parse()
	sidecar.Main(m, "fault", buildBinary)
}

// buildBinary runs `go build -o DIR/replicator ./cmd/replicator` at the
// module root; FAULT_RACE=1 builds it with the race detector, and
// FAULT_BIN=PATH uses a binary built beforehand instead.
func buildBinary(dir string) {
	buildDir = dir
	var noGo string
	binPath, noGo, buildErr = sidecar.Build(dir, "FAULT_RACE", "FAULT_BIN")
	if noGo != "" {
		buildErr = errors.New(noGo)
	}
}

func requireBinary(t *testing.T) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("building the replicator binary failed: %v", buildErr)
	}
}

// testSeed returns the seed of a test's random choices and logs how to
// replay them. Timing still varies between runs: the seed fixes what the
// test chooses (victims, hold times, keys), not how the processes
// interleave.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	s := *seedFlag
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	long := ""
	if *longForm {
		long = " -fault.long"
	}
	t.Logf("seed %d; replay the same choices with: go test ./test/fault -run '^%s$' -count=1 -v%s -fault.seed=%d",
		s, strings.SplitN(t.Name(), "/", 2)[0], long, s)
	return s
}

// pick returns fast or long by the form being run.
func pick[T any](fast, long T) T {
	if *longForm {
		return long
	}
	return fast
}

// form names the form being run, for figures.
func form() string { return pick("fast", "long") }
