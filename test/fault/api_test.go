package fault_test

import (
	"bufio"
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
)

// The JSON the HTTP API answers with (DESIGN.md "External interfaces").

// kvView is the JSON of GET /v1/kv/{key} (200), and of its 404, which only
// has key and context.
type kvView struct {
	Key      string    `json:"key"`
	Context  string    `json:"context"`
	Values   [][]byte  `json:"values"`
	Siblings []sibling `json:"siblings"`
	Conflict bool      `json:"conflict"`
	Resolver string    `json:"resolver"`
	// size is the length of the JSON body, the key's size as a client
	// sees it.
	size int
}

type sibling struct {
	Value   []byte `json:"value"`
	Deleted bool   `json:"deleted"`
	Origin  string `json:"origin"`
	Dot     string `json:"dot"`
	HLC     uint64 `json:"hlc"`
}

// liveValues lists the values of the live (not deleted) siblings.
func (v kvView) liveValues() []string {
	var out []string
	for _, s := range v.Siblings {
		if !s.Deleted {
			out = append(out, string(s.Value))
		}
	}
	return out
}

// canonical is the key's state in a form equal on converged DCs.
func (v kvView) canonical() string {
	sibs := make([]string, len(v.Siblings))
	for i, s := range v.Siblings {
		sibs[i] = fmt.Sprintf("%s=%q/del=%t/hlc=%d", s.Dot, s.Value, s.Deleted, s.HLC)
	}
	sort.Strings(sibs)
	return v.Context + " " + strings.Join(sibs, " ")
}

// writeResp is the JSON of a PUT or DELETE answer.
type writeResp struct {
	Key     string `json:"key"`
	Context string `json:"context"`
	Dot     string `json:"dot"`
}

// digestView is the JSON of GET /v1/digest.
type digestView struct {
	Digest string `json:"digest"`
	Keys   int    `json:"keys"`
}

// conflictView is one entry of GET /v1/conflicts.
type conflictView struct {
	ID        string    `json:"id"`
	Key       string    `json:"key"`
	Resolver  string    `json:"resolver"`
	Status    string    `json:"status"`
	Kept      []version `json:"kept"`
	Discarded []version `json:"discarded"`
}

type version struct {
	Origin  string `json:"origin"`
	Dot     string `json:"dot"`
	Value   []byte `json:"value"`
	Deleted bool   `json:"deleted"`
	HLC     uint64 `json:"hlc"`
}

// statusView is the part of GET /v1/status the tests read.
type statusView struct {
	DC     string `json:"dc"`
	Bridge *struct {
		Applied     map[string][]uint64
		OutboxDepth uint64
		Links       []struct {
			Upstream  string
			LagEvents uint64
			Connected bool
			LastError string
		}
	} `json:"bridge"`
}

// get reads a key. status is 200 or 404 on success; anything else is an
// error.
func (c *cluster) get(m *member, key string) (kvView, int, error) {
	var v kvView
	resp, err := c.client.Get(m.url("/v1/kv/" + escapeKey(key)))
	if err != nil {
		return v, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return v, resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return v, resp.StatusCode, fmt.Errorf("GET %s at %s: %d %s", key, m.name, resp.StatusCode, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return v, resp.StatusCode, fmt.Errorf("GET %s at %s: decode %q: %w", key, m.name, body, err)
	}
	v.size = len(body)
	if h := resp.Header.Get("X-Repl-Context"); h != v.Context {
		return v, resp.StatusCode, fmt.Errorf("GET %s at %s: X-Repl-Context %q differs from the body's context %q", key, m.name, h, v.Context)
	}
	return v, resp.StatusCode, nil
}

// write sends a PUT (value != nil) or DELETE, with X-Repl-Context when
// vctx is not nil. It returns the HTTP status (0 on a transport error).
func (c *cluster) write(m *member, key string, value []byte, vctx *string) (writeResp, int, error) {
	var wr writeResp
	method, body := http.MethodDelete, io.Reader(nil)
	if value != nil {
		method, body = http.MethodPut, bytes.NewReader(value)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, m.url("/v1/kv/"+escapeKey(key)), body)
	if err != nil {
		return wr, 0, err
	}
	if vctx != nil {
		req.Header.Set("X-Repl-Context", *vctx)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return wr, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return wr, resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK {
		return wr, resp.StatusCode, fmt.Errorf("%s %s at %s: %d %s", method, key, m.name, resp.StatusCode, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, &wr); err != nil {
		return wr, resp.StatusCode, fmt.Errorf("%s %s at %s: decode %q: %w", method, key, m.name, b, err)
	}
	return wr, resp.StatusCode, nil
}

func escapeKey(key string) string {
	parts := strings.Split(key, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

func (c *cluster) getJSON(m *member, path string, v any) error {
	resp, err := c.client.Get(m.url(path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s at %s: %d %s", path, m.name, resp.StatusCode, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s at %s: decode: %w", path, m.name, err)
	}
	return nil
}

func (c *cluster) digest(m *member) (digestView, error) {
	var d digestView
	err := c.getJSON(m, "/v1/digest", &d)
	return d, err
}

func (c *cluster) conflicts(m *member) ([]conflictView, error) {
	var cs []conflictView
	err := c.getJSON(m, "/v1/conflicts", &cs)
	return cs, err
}

func (c *cluster) status(m *member) (statusView, error) {
	var s statusView
	err := c.getJSON(m, "/v1/status", &s)
	if err == nil && s.Bridge == nil {
		err = fmt.Errorf("GET /v1/status at %s: no bridge status", m.name)
	}
	return s, err
}

// metrics reads /metrics and returns each replicator_ sample by its name
// without labels, summed over label sets.
func (c *cluster) metrics(m *member) (map[string]float64, error) {
	resp, err := c.client.Get(m.url("/metrics"))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics at %s: %s", m.name, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "replicator_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		out[name] += v
	}
	return out, sc.Err()
}

// digests reads every running DC's /v1/digest. equal reports that all
// were read and are the same digest; desc describes each.
func (c *cluster) digests() (equal bool, common digestView, desc []string) {
	equal = true
	for i, m := range c.members {
		d, err := c.digest(m)
		if err != nil {
			desc = append(desc, fmt.Sprintf("%s: %v", m.name, err))
			equal = false
			continue
		}
		desc = append(desc, fmt.Sprintf("%s: digest %.16s keys %d", m.name, d.Digest, d.Keys))
		if i == 0 {
			common = d
		} else if d.Digest != common.Digest {
			equal = false
		}
	}
	return equal, common, desc
}

// waitConverged polls every DC until their digests are equal and their
// applied vectors agree, and fails the test with what each DC shows if
// they do not within timeout. It returns how long it waited.
func (c *cluster) waitConverged(timeout time.Duration) time.Duration {
	c.t.Helper()
	begin := time.Now()
	var last []string
	err := waitFor(timeout, 20*time.Millisecond, func() bool {
		var equal bool
		equal, _, last = c.digests()
		if !equal {
			return false
		}
		ok, why := c.appliedEqual()
		if !ok {
			last = append(last, why)
		}
		return ok
	})
	if err != nil {
		c.t.Fatalf("the DCs did not converge within %s; last seen:\n  %s", timeout, strings.Join(last, "\n  "))
	}
	return time.Since(begin)
}

// appliedEqual reports whether every DC's applied vector is the same,
// each DC's own entry included: every DC has applied every event.
func (c *cluster) appliedEqual() (bool, string) {
	var first string
	for i, m := range c.members {
		s, err := c.status(m)
		if err != nil {
			return false, err.Error()
		}
		applied := map[string][]uint64{}
		for origin, row := range s.Bridge.Applied {
			for _, n := range row {
				if n > 0 { // a DC that issued nothing yet may be missing
					applied[origin] = row
					break
				}
			}
		}
		b, _ := json.Marshal(applied) // map keys are sorted
		if i == 0 {
			first = string(b)
		} else if string(b) != first {
			return false, fmt.Sprintf("applied vectors differ: %s has %s, %s has %s", c.members[0].name, first, m.name, b)
		}
	}
	return true, ""
}

// parseClock parses the text form of a version vector, "{dc1:3,dc2:5}".
func parseClock(s string) (map[string]uint64, error) {
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
		dc, n, err := parseDot(e)
		if err != nil {
			return nil, fmt.Errorf("clock %q: %w", s, err)
		}
		out[dc] = n
	}
	return out, nil
}

// parseDot parses "dc:n".
func parseDot(s string) (string, uint64, error) {
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

// isRefused reports whether the request never reached a listening server,
// so it certainly had no effect.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
