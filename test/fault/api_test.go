package fault_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// The JSON the HTTP API answers with (docs/DESIGN.md "External interfaces").

// The JSON types shared with test/blackbox (test/internal/sidecar).
type (
	kvView       = sidecar.KV
	writeResp    = sidecar.WriteResp
	digestView   = sidecar.Digest
	conflictView = sidecar.Conflict
	sibling      = sidecar.Sibling
	version      = sidecar.Version
)

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
	return sidecar.Get(c.client, m.name, m.url(""), key)
}

// write sends a PUT (value != nil) or DELETE, with X-Repl-Context when
// vctx is not nil. It returns the HTTP status (0 on a transport error).
func (c *cluster) write(m *member, key string, value []byte, vctx *string) (writeResp, int, error) {
	return sidecar.Write(c.client, m.name, m.url(""), key, value, vctx)
}

func (c *cluster) getJSON(m *member, path string, v any) error {
	return sidecar.GetJSON(c.client, m.name, m.url(""), path, v)
}

func (c *cluster) digest(m *member) (digestView, error) {
	var d digestView
	err := c.getJSON(m, "/v1/digest", &d)
	return d, err
}

func (c *cluster) conflicts(m *member) ([]conflictView, error) {
	var cs []conflictView
	err := c.getJSON(m, "/v1/conflicts?limit=100000", &cs) // every entry: the accounting needs them all
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
	err := repl.WaitFor(timeout, 20*time.Millisecond, func() bool {
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
