package sidecar

import (
	"fmt"
	"net"
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

// FreeAddr returns a loopback address with a port that was free a moment
// ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
