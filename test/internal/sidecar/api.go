package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/replicatorhq/replicator/pkg/cluster"
)

// The JSON the HTTP API answers with (docs/DESIGN.md "External interfaces").

// KV is the JSON of GET /v1/kv/{key} (200), and of its 404, which only
// has key and context.
type KV struct {
	Key      string    `json:"key"`
	Context  string    `json:"context"`
	Values   [][]byte  `json:"values"`
	Siblings []Sibling `json:"siblings"`
	Conflict bool      `json:"conflict"`
	Resolver string    `json:"resolver"`
	// Size is the length of the JSON body, the key's size as a client
	// sees it.
	Size int `json:"-"`
}

// Sibling is one version of a key in KV.
type Sibling struct {
	Value   []byte `json:"value"`
	Deleted bool   `json:"deleted"`
	Origin  string `json:"origin"`
	Dot     string `json:"dot"`
	HLC     uint64 `json:"hlc"`
}

// LiveValues lists the values of the live (not deleted) siblings.
func (v KV) LiveValues() []string {
	var out []string
	for _, s := range v.Siblings {
		if !s.Deleted {
			out = append(out, string(s.Value))
		}
	}
	return out
}

// Canonical is the key's state in a form equal on converged DCs.
func (v KV) Canonical() string {
	sibs := make([]string, len(v.Siblings))
	for i, s := range v.Siblings {
		sibs[i] = fmt.Sprintf("%s=%q/del=%t/hlc=%d", s.Dot, s.Value, s.Deleted, s.HLC)
	}
	sort.Strings(sibs)
	return v.Context + " " + strings.Join(sibs, " ")
}

// WriteResp is the JSON of a PUT or DELETE answer.
type WriteResp struct {
	Key     string `json:"key"`
	Context string `json:"context"`
	Dot     string `json:"dot"`
}

// Digest is the JSON of GET /v1/digest.
type Digest struct {
	Digest     string   `json:"digest"`
	Keys       int      `json:"keys"`
	Partitions []string `json:"partitions"`
}

// Conflict is one entry of GET /v1/conflicts.
type Conflict struct {
	ID        string    `json:"id"`
	Key       string    `json:"key"`
	Resolver  string    `json:"resolver"`
	Status    string    `json:"status"`
	Kept      []Version `json:"kept"`
	Discarded []Version `json:"discarded"`
}

// Version is a version kept or discarded in a Conflict.
type Version struct {
	Origin  string `json:"origin"`
	Dot     string `json:"dot"`
	Value   []byte `json:"value"`
	Deleted bool   `json:"deleted"`
	HLC     uint64 `json:"hlc"`
}

// Get reads a key from the DC name whose HTTP API is at base
// ("http://host:port"). status is 200 or 404 on success; anything else is
// an error.
func Get(c *http.Client, name, base, key string) (KV, int, error) {
	var v KV
	resp, err := c.Get(base + "/v1/kv/" + EscapeKey(key))
	if err != nil {
		return v, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return v, resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return v, resp.StatusCode, fmt.Errorf("GET %s at %s: %d %s", key, name, resp.StatusCode, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return v, resp.StatusCode, fmt.Errorf("GET %s at %s: decode %q: %w", key, name, body, err)
	}
	v.Size = len(body)
	if h := resp.Header.Get("X-Repl-Context"); h != v.Context {
		return v, resp.StatusCode, fmt.Errorf("GET %s at %s: X-Repl-Context %q differs from the body's context %q", key, name, h, v.Context)
	}
	return v, resp.StatusCode, nil
}

// Write sends a PUT (value != nil) or DELETE, with X-Repl-Context when
// vctx is not nil. It returns the HTTP status (0 on a transport error).
func Write(c *http.Client, name, base, key string, value []byte, vctx *string) (WriteResp, int, error) {
	var wr WriteResp
	method, body := http.MethodDelete, io.Reader(nil)
	if value != nil {
		method, body = http.MethodPut, bytes.NewReader(value)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, base+"/v1/kv/"+EscapeKey(key), body)
	if err != nil {
		return wr, 0, err
	}
	if vctx != nil {
		req.Header.Set("X-Repl-Context", *vctx)
	}
	resp, err := c.Do(req)
	if err != nil {
		return wr, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return wr, resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK {
		return wr, resp.StatusCode, fmt.Errorf("%s %s at %s: %d %s", method, key, name, resp.StatusCode, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, &wr); err != nil {
		return wr, resp.StatusCode, fmt.Errorf("%s %s at %s: decode %q: %w", method, key, name, b, err)
	}
	return wr, resp.StatusCode, nil
}

// GetJSON GETs path and decodes the 200 answer into v.
func GetJSON(c *http.Client, name, base, path string, v any) error {
	resp, err := c.Get(base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s at %s: %d %s", path, name, resp.StatusCode, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s at %s: decode: %w", path, name, err)
	}
	return nil
}

// WaitHealthy polls base's /healthz until it answers 200, every interval.
// It fails the test if the process exits first (exited says so) or the
// deadline passes.
func WaitHealthy(t interface {
	Helper()
	Fatalf(string, ...any)
}, c *http.Client, name, base string, exited func() (bool, string), timeout, interval time.Duration) {
	t.Helper()
	last := "no answer yet"
	err := cluster.WaitFor(timeout, interval, func() bool {
		if gone, how := exited(); gone {
			last = "the process exited: " + how
			return true
		}
		resp, err := c.Get(base + "/healthz")
		if err != nil {
			last = err.Error()
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body))
		return resp.StatusCode == http.StatusOK
	})
	if gone, how := exited(); gone {
		t.Fatalf("%s did not become healthy: the process exited (%s)", name, how)
	}
	if err != nil {
		t.Fatalf("%s did not become healthy within %s; last /healthz: %s", name, timeout, last)
	}
}

// EscapeKey escapes each /-separated segment of key for a URL path.
func EscapeKey(key string) string {
	parts := strings.Split(key, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// ParseClock parses the text form of a version vector, "{dc1:3,dc2:5}".
func ParseClock(s string) (map[string]uint64, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "{") || !strings.HasSuffix(s, "}") {
		return nil, fmt.Errorf("clock %q: want {dc:n,...}", s)
	}
	out := map[string]uint64{}
	inner := strings.TrimSpace(s[1 : len(s)-1])
	if inner == "" {
		return out, nil
	}
	for _, e := range strings.Split(inner, ",") {
		dc, n, err := ParseDot(e)
		if err != nil {
			return nil, fmt.Errorf("clock %q: %w", s, err)
		}
		out[dc] = n
	}
	return out, nil
}

// ParseDot parses "dc:n".
func ParseDot(s string) (string, uint64, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return "", 0, fmt.Errorf("dot %q: want dc:n", s)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s[i+1:]), 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("dot %q: %w", s, err)
	}
	return strings.TrimSpace(s[:i]), n, nil
}

// IsRefused reports whether the request never reached a listening server,
// so it certainly had no effect.
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
