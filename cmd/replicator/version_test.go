package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionFormat(t *testing.T) {
	settings := func(kv ...string) []debug.BuildSetting {
		var out []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			out = append(out, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return out
	}
	const rev = "d63bbd6a0c1e2f3a4b5c6d7e8f90a1b2c3d4e5f6"
	cases := []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want buildVersion
		text string
	}{
		{
			name: "tagged clean build",
			bi: &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/replicatorhq/replicator", Version: "v1.2.3"},
				Settings: settings("-buildmode", "exe", "vcs", "git", "vcs.revision", rev, "vcs.time", "2026-12-02T10:00:00Z", "vcs.modified", "false")},
			ok:   true,
			want: buildVersion{Version: "v1.2.3", Revision: rev, Time: "2026-12-02T10:00:00Z", Go: "go1.26.8"},
			text: "replicator v1.2.3\nrevision " + rev + "\ntime     2026-12-02T10:00:00Z\ngo       go1.26.8\n",
		},
		{
			name: "modified tree",
			bi: &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20261202100000-d63bbd6a0c1e+dirty"},
				Settings: settings("vcs.revision", rev, "vcs.time", "2026-12-02T10:00:00Z", "vcs.modified", "true")},
			ok:   true,
			want: buildVersion{Version: "v0.0.0-20261202100000-d63bbd6a0c1e+dirty", Revision: rev, Time: "2026-12-02T10:00:00Z", Modified: true, Go: "go1.26.8"},
			text: "replicator v0.0.0-20261202100000-d63bbd6a0c1e+dirty\nrevision " + rev + " (modified: built with uncommitted changes)\n" +
				"time     2026-12-02T10:00:00Z\ngo       go1.26.8\n",
		},
		{
			name: "no VCS information",
			bi:   &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			ok:   true,
			want: buildVersion{Version: "(devel)", Go: "go1.26.8"},
			text: "replicator (devel)\nrevision unknown (the build recorded none: `go build` records it in a git clone, not in a worktree, and not with -buildvcs=false)\n" +
				"go       go1.26.8\n",
		},
		{
			name: "empty main version",
			bi:   &debug.BuildInfo{GoVersion: "go1.26.8"},
			ok:   true,
			want: buildVersion{Version: "(devel)", Go: "go1.26.8"},
		},
		{
			name: "no build information",
			ok:   false,
			want: buildVersion{Version: "unknown", Go: "unknown"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := versionOf(c.bi, c.ok)
			if got != c.want {
				t.Fatalf("versionOf = %+v, want %+v", got, c.want)
			}
			if c.text == "" {
				return
			}
			var b bytes.Buffer
			if err := writeVersion(&b, got); err != nil {
				t.Fatal(err)
			}
			if b.String() != c.text {
				t.Errorf("text:\n%s\nwant:\n%s", b.String(), c.text)
			}
		})
	}
}

func TestVersionCommand(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, stderr := runCLI(args...)
		if code != 0 || !strings.HasPrefix(out, "replicator ") || !strings.Contains(out, "\ngo       "+runtime.Version()+"\n") {
			t.Errorf("replicator %v: exit %d, stdout %q, stderr %q", args, code, out, stderr)
		}
	}
	code, out, stderr := runCLI("version", "--json")
	var v buildVersion
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Go != runtime.Version() || v.Version == "" {
		t.Errorf("version --json: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	for _, args := range [][]string{{"version", "extra"}, {"--version", "--bogus"}} {
		if code, _, stderr := runCLI(args...); code != 2 || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("replicator %v: exit %d, stderr %q; want a one-line usage error and exit 2", args, code, stderr)
		}
	}
}

// TestVersionOfBuiltBinary builds the real binary from this checkout with
// VCS stamping on and checks that `version --json` and `--version` report
// the checkout's HEAD and whether its tree is modified, as git sees them.
// The Go toolchain stamps nothing in a git worktree (its .git is a file,
// not a directory), so there the test skips; CI runs it in a clone. The
// dependencies' compile is cached; the rest takes about 15 s.
func TestVersionOfBuiltBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	git := func(args ...string) string {
		out, err := exec.Command("git", args...).Output()
		if err != nil {
			t.Skipf("git %v: %v: not a git checkout, or no git", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	root := git("rev-parse", "--show-toplevel")
	if fi, err := os.Stat(filepath.Join(root, ".git")); err != nil || !fi.IsDir() {
		t.Skipf("%s is a git worktree, where the Go toolchain records no VCS information; run this test in a clone", root)
	}
	head := git("rev-parse", "HEAD")
	dirty := git("status", "--porcelain") != ""
	bin := filepath.Join(t.TempDir(), "replicator")
	build := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".")
	build.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatalf("%s version --json: %v", bin, err)
	}
	var v buildVersion
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("version --json printed %q: %v", out, err)
	}
	if v.Revision != head || v.Modified != dirty || v.Go != runtime.Version() || v.Time == "" {
		t.Errorf("version --json = %+v; want revision %s, modified %v, go %s and a commit time", v, head, dirty, runtime.Version())
	}
	if !strings.Contains(v.Version, head[:12]) && !strings.HasPrefix(v.Version, "v") {
		t.Errorf("version %q names neither a tag nor the revision %s", v.Version, head[:12])
	}
	text, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.Contains(string(text), "revision "+head) {
		t.Errorf("%s --version: %v, printed %q; want the revision %s", bin, err, text, head)
	}
}
