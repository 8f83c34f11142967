// Package sidecar holds what the tests that run the real replicator
// binary share: building it once, stopping `replicator run` processes,
// reading their logs, and the HTTP API as a client sees it.
package sidecar

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Build runs `go build -o DIR/replicator ./cmd/replicator` at the module
// root (BuildPackage) and returns the binary's path. When the environment variable
// raceEnv is set the binary is built with the race detector; when binEnv
// is not "" and that variable is set, its value is the path of a binary
// built beforehand. noGo is not "" (and the rest empty) when the go tool
// is not on PATH; err says why the build failed.
func Build(dir, raceEnv, binEnv string) (bin, noGo string, err error) {
	if binEnv != "" {
		if p := os.Getenv(binEnv); p != "" {
			if _, err := os.Stat(p); err != nil {
				return p, "", fmt.Errorf("%s: %w", binEnv, err)
			}
			return p, "", nil
		}
	}
	return BuildPackage(dir, "./cmd/replicator", raceEnv)
}

// BuildPackage runs `go build -o DIR/<name> PKG` at the module root, where
// name is the package path's last element, and returns the binary's path;
// with the environment variable raceEnv set, with the race detector. noGo
// is not "" (and the rest empty) when the go tool is not on PATH; err says
// why the build failed.
func BuildPackage(dir, pkg, raceEnv string) (bin, noGo string, err error) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		return "", "the go tool is not on PATH, so " + pkg + " cannot be built: " + err.Error(), nil
	}
	out, err := exec.Command(gotool, "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", "", fmt.Errorf("go env GOMOD: %q, %v: run the test inside the module", gomod, err)
	}
	bin = filepath.Join(dir, filepath.Base(pkg))
	args := []string{"build", "-o", bin}
	if os.Getenv(raceEnv) != "" {
		args = append(args, "-race")
	}
	cmd := exec.Command(gotool, append(args, pkg)...)
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return bin, "", fmt.Errorf("go %s %s in %s: %v\n%s", strings.Join(args, " "), pkg, cmd.Dir, err, out)
	}
	return bin, "", nil
}

// Terminate sends SIGTERM to cmd, whose Wait closes done, and waits up to
// timeout for a clean exit. It returns an error if the process did not
// exit in time (it is then killed) or exited with a non-zero status.
func Terminate(name string, cmd *exec.Cmd, done <-chan struct{}, timeout time.Duration) error {
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("%s: SIGTERM: %w", name, err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			return fmt.Errorf("%s: after SIGTERM the process exited with %s, want status 0", name, cmd.ProcessState)
		}
		return nil
	case <-timer.C:
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s: still running %s after SIGTERM; killed it", name, timeout)
	}
}
