package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime/debug"
)

// buildVersion is what `replicator version` and `--version` report about
// the running binary, read from the build information the Go toolchain
// embeds.
type buildVersion struct {
	// Version is the main module's version: a tag, a pseudo-version
	// derived from the VCS revision (with "+dirty" when the tree was
	// modified), or "(devel)" when the toolchain knew none.
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from; "" when the
	// build recorded none (go run, -buildvcs=false, or no checkout).
	Revision string `json:"revision"`
	// Time is the commit's time, RFC 3339; "" when unknown.
	Time string `json:"time,omitempty"`
	// Modified reports that the work tree had uncommitted changes.
	Modified bool `json:"modified"`
	// Go is the toolchain that built the binary.
	Go string `json:"go"`
}

// versionOf reads bi, the result of debug.ReadBuildInfo; ok false means
// the binary carries no build information.
func versionOf(bi *debug.BuildInfo, ok bool) buildVersion {
	if !ok || bi == nil {
		return buildVersion{Version: "unknown", Go: "unknown"}
	}
	v := buildVersion{Version: bi.Main.Version, Go: bi.GoVersion}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// writeVersion prints v for people: the version on the first line, then
// the revision, its time and the Go version.
func writeVersion(w io.Writer, v buildVersion) error {
	rev := v.Revision
	switch {
	case rev == "":
		rev = "unknown (the build recorded none: `go build` records it in a git clone, not in a worktree, and not with -buildvcs=false)"
	case v.Modified:
		rev += " (modified: built with uncommitted changes)"
	}
	_, err := fmt.Fprintf(w, "replicator %s\nrevision %s\n", v.Version, rev)
	if err == nil && v.Time != "" {
		_, err = fmt.Fprintf(w, "time     %s\n", v.Time)
	}
	if err == nil {
		_, err = fmt.Fprintf(w, "go       %s\n", v.Go)
	}
	return err
}

func cmdVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "[--json]", stderr)
	asJSON := fs.Bool("json", false, "print one JSON object: version, revision, time, modified, go")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("version takes no arguments, got %q", fs.Args())
	}
	v := versionOf(debug.ReadBuildInfo())
	if *asJSON {
		return json.NewEncoder(stdout).Encode(v)
	}
	return writeVersion(stdout, v)
}
