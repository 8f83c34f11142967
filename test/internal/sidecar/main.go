package sidecar

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Main is the body of a suite's TestMain: it makes a temporary directory,
// calls build with it (to build the replicator binary there), runs the
// tests failing on leaked goroutines, removes the directory and exits.
func Main(m *testing.M, suite string, build func(dir string)) {
	dir, err := os.MkdirTemp("", "replicator-"+suite+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, suite+":", err)
		os.Exit(1)
	}
	build(dir)
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}
