package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// cmdProbe asks a sidecar's /healthz (or /readyz) and exits 0 when it
// answers 200: a health check for a container or a supervisor that has no
// HTTP client of its own (the container image has no shell or curl).
func cmdProbe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("probe", "[--config FILE | --addr URL] [--ready] [--timeout D]", stderr)
	var c clientFlags
	c.register(fs)
	ready := fs.Bool("ready", false, "ask /readyz (caught up since the start) instead of /healthz (up and connected to NATS)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	if *timeout <= 0 {
		return usagef("--timeout %s: want a positive duration", *timeout)
	}
	if err := c.finish(); err != nil {
		return err
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	resp, body, err := c.do(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	fmt.Fprintf(stdout, "%s: %s\n", path, strings.TrimSpace(string(body)))
	return nil
}
