package blackbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/replicatorhq/replicator/bridge"
)

// dcNames are the DCs of every test mesh.
var dcNames = []string{"dc1", "dc2", "dc3"}

// cluster is an embedded JetStream server in the test process and one
// `replicator run` process per DC, all on loopback.
type cluster struct {
	t      *testing.T
	nats   *server.Server
	procs  []*proc
	client *http.Client
}

// proc is one DC's sidecar process. It can be killed, stopped and started
// again on the same config and data dir.
type proc struct {
	t       *testing.T
	name    string
	cfgPath string
	logPath string
	addr    string // host:port of the HTTP API

	mu struct {
		sync.Mutex
		cmd    *exec.Cmd
		done   chan struct{} // closed once the process has been waited for
		starts int
	}
}

// startCluster starts NATS and the three sidecars, and waits until every
// sidecar's /healthz answers 200. Everything is torn down by t.Cleanup; on
// failure every sidecar's log is printed.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	requireBinary(t)
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{StoreDir: t.TempDir(), JetStream: true, ServerName: "blackbox"})
	if err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	c := &cluster{
		t:    t,
		nats: ns,
		client: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true},
		},
	}
	// Cleanups run last-registered first: kill the sidecars, print their
	// logs if the test failed, close idle connections, stop NATS.
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	t.Cleanup(c.client.CloseIdleConnections)
	t.Cleanup(c.dumpLogsOnFailure)
	t.Cleanup(func() {
		for _, p := range c.procs {
			p.kill()
		}
	})

	dir := t.TempDir()
	for _, dc := range dcNames {
		p := &proc{
			t:       t,
			name:    dc,
			cfgPath: filepath.Join(dir, dc+".yaml"),
			logPath: filepath.Join(dir, dc+".log"),
			addr:    freeAddr(t),
		}
		cfg := fmt.Sprintf(`# written by test/blackbox
dc: %s
dcs: [%s]
topology: mesh
partitions: 8
nats:
  url: %s
data_dir: %s
http:
  listen: %s
resolvers:
  default: siblings
  rules:
    - prefix: %q
      resolver: lww
durability:
  fsync: true
`, dc, strings.Join(dcNames, ", "), ns.ClientURL(), filepath.Join(dir, "data", dc), p.addr, lwwPrefix)
		if err := os.WriteFile(p.cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		c.procs = append(c.procs, p)
	}
	for _, p := range c.procs {
		p.start()
	}
	for _, p := range c.procs {
		c.waitHealthy(p, 30*time.Second)
	}
	return c
}

func (c *cluster) proc(dc string) *proc {
	for _, p := range c.procs {
		if p.name == dc {
			return p
		}
	}
	c.t.Fatalf("no DC %q", dc)
	return nil
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// start runs `replicator run --config FILE`, its stdout and stderr appended
// to the DC's log file.
func (p *proc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.cmd != nil {
		p.t.Fatalf("%s: start: already running", p.name)
	}
	p.mu.starts++
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close() // the child has its own copy of the descriptor
	fmt.Fprintf(f, "===== blackbox: start #%d of %s at %s\n", p.mu.starts, p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(binPath, "run", "--config", p.cfgPath)
	cmd.Stdout = f
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("%s: start %s: %v", p.name, binPath, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait() // the exit status is read from cmd.ProcessState after done
		close(done)
	}()
	p.mu.cmd, p.mu.done = cmd, done
}

// running returns the current process and its done channel, or nils.
func (p *proc) running() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.cmd, p.mu.done
}

// exited reports whether the current process has exited, and how.
func (p *proc) exited() (bool, string) {
	cmd, done := p.running()
	if cmd == nil {
		return true, "not started"
	}
	select {
	case <-done:
		return true, cmd.ProcessState.String()
	default:
		return false, ""
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *proc) kill() {
	cmd, done := p.running()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
	p.mu.Lock()
	p.mu.cmd, p.mu.done = nil, nil
	p.mu.Unlock()
}

// stop sends SIGTERM and waits up to timeout for a clean exit. It returns
// how long the shutdown took, or an error if the process did not exit in
// time (it is then killed) or exited with a non-zero status.
func (p *proc) stop(timeout time.Duration) (time.Duration, error) {
	cmd, done := p.running()
	if cmd == nil {
		return 0, fmt.Errorf("%s: not running", p.name)
	}
	begin := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return 0, fmt.Errorf("%s: SIGTERM: %w", p.name, err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var err error
	select {
	case <-done:
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			err = fmt.Errorf("%s: after SIGTERM the process exited with %s, want status 0", p.name, cmd.ProcessState)
		}
	case <-timer.C:
		cmd.Process.Kill()
		<-done
		err = fmt.Errorf("%s: still running %s after SIGTERM; killed it", p.name, timeout)
	}
	p.mu.Lock()
	p.mu.cmd, p.mu.done = nil, nil
	p.mu.Unlock()
	return time.Since(begin), err
}

func (p *proc) url(path string) string { return "http://" + p.addr + path }

// waitHealthy polls /healthz until it answers 200. It fails the test if the
// process exits first or the deadline passes.
func (c *cluster) waitHealthy(p *proc, timeout time.Duration) {
	c.t.Helper()
	last := "no answer yet"
	err := waitFor(timeout, 25*time.Millisecond, func() bool {
		if gone, how := p.exited(); gone {
			last = "the process exited: " + how
			return true
		}
		resp, err := c.client.Get(p.url("/healthz"))
		if err != nil {
			last = err.Error()
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body))
		return resp.StatusCode == http.StatusOK
	})
	if gone, how := p.exited(); gone {
		c.t.Fatalf("%s did not become healthy: the process exited (%s)", p.name, how)
	}
	if err != nil {
		c.t.Fatalf("%s did not become healthy within %s; last /healthz: %s", p.name, timeout, last)
	}
}

// dumpLogsOnFailure prints the tail of every DC's log when the test failed.
func (c *cluster) dumpLogsOnFailure() {
	if !c.t.Failed() {
		return
	}
	const tail = 48 << 10
	for _, p := range c.procs {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			c.t.Logf("----- %s log: %v", p.name, err)
			continue
		}
		cut := ""
		if len(b) > tail {
			b, cut = b[len(b)-tail:], fmt.Sprintf(" (last %d bytes)", tail)
		}
		c.t.Logf("----- %s log %s%s:\n%s", p.name, p.logPath, cut, b)
	}
}

// checkLogs summarises each DC's ERROR and WARN log lines, and fails the
// test if a process panicked, crashed or reported a data race (when built
// with BLACKBOX_RACE=1).
func (c *cluster) checkLogs() {
	for _, p := range c.procs {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			c.t.Errorf("%s log: %v", p.name, err)
			continue
		}
		counts := map[string]int{}
		for _, line := range strings.Split(string(b), "\n") {
			for _, level := range []string{"ERROR", "WARN"} {
				if strings.Contains(line, "level="+level) {
					counts[level+" "+logMsg(line)]++
				}
			}
			if strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:") || strings.Contains(line, "WARNING: DATA RACE") {
				c.t.Errorf("%s log %s: %s", p.name, p.logPath, line)
			}
		}
		var sum []string
		for m, n := range counts {
			sum = append(sum, fmt.Sprintf("%dx %s", n, m))
		}
		sort.Strings(sum)
		c.t.Logf("%s log: %d kinds of ERROR/WARN lines: %s", p.name, len(sum), strings.Join(sum, "; "))
	}
}

// logMsg returns the msg= field of a slog text line.
func logMsg(line string) string {
	_, rest, ok := strings.Cut(line, " msg=")
	if !ok {
		return line
	}
	if strings.HasPrefix(rest, `"`) {
		if q, err := strconv.QuotedPrefix(rest); err == nil {
			return q
		}
	}
	m, _, _ := strings.Cut(rest, " ")
	return m
}

// waitFor calls cond every interval until it returns true or timeout
// passes.
func waitFor(timeout, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("condition not met within %s", timeout)
		}
		<-tick.C
	}
}

// kvView is the JSON of GET /v1/kv/{key} (200), and of its 404, which only
// has key and context.
type kvView struct {
	Key      string    `json:"key"`
	Context  string    `json:"context"`
	Values   [][]byte  `json:"values"`
	Siblings []sibling `json:"siblings"`
	Conflict bool      `json:"conflict"`
	Resolver string    `json:"resolver"`
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

// get reads a key. status is 200 or 404 on success; anything else is an
// error.
func (c *cluster) get(p *proc, key string) (kvView, int, error) {
	var v kvView
	resp, err := c.client.Get(p.url("/v1/kv/" + escapeKey(key)))
	if err != nil {
		return v, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return v, resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return v, resp.StatusCode, fmt.Errorf("GET %s at %s: %d %s", key, p.name, resp.StatusCode, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return v, resp.StatusCode, fmt.Errorf("GET %s at %s: decode %q: %w", key, p.name, body, err)
	}
	if h := resp.Header.Get("X-Repl-Context"); h != v.Context {
		return v, resp.StatusCode, fmt.Errorf("GET %s at %s: X-Repl-Context %q differs from the body's context %q", key, p.name, h, v.Context)
	}
	return v, resp.StatusCode, nil
}

// writeResp is the JSON of a PUT or DELETE answer.
type writeResp struct {
	Key     string `json:"key"`
	Context string `json:"context"`
	Dot     string `json:"dot"`
}

// write sends a PUT (value != nil) or DELETE, with X-Repl-Context when
// vctx is not nil. It returns the HTTP status (0 on a transport error).
func (c *cluster) write(p *proc, key string, value []byte, vctx *string) (writeResp, int, error) {
	var wr writeResp
	method, body := http.MethodDelete, io.Reader(nil)
	if value != nil {
		method, body = http.MethodPut, bytes.NewReader(value)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, p.url("/v1/kv/"+escapeKey(key)), body)
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
		return wr, resp.StatusCode, fmt.Errorf("%s %s at %s: %d %s", method, key, p.name, resp.StatusCode, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, &wr); err != nil {
		return wr, resp.StatusCode, fmt.Errorf("%s %s at %s: decode %q: %w", method, key, p.name, b, err)
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

// digestView is the JSON of GET /v1/digest.
type digestView struct {
	Digest     string   `json:"digest"`
	Keys       int      `json:"keys"`
	Partitions []string `json:"partitions"`
}

func (c *cluster) digest(p *proc) (digestView, error) {
	var d digestView
	err := c.getJSON(p, "/v1/digest", &d)
	return d, err
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

func (c *cluster) conflicts(p *proc) ([]conflictView, error) {
	var cs []conflictView
	err := c.getJSON(p, "/v1/conflicts", &cs)
	return cs, err
}

func (c *cluster) getJSON(p *proc, path string, v any) error {
	resp, err := c.client.Get(p.url(path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s at %s: %d %s", path, p.name, resp.StatusCode, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s at %s: decode: %w", path, p.name, err)
	}
	return nil
}

// digests reads every DC's /v1/digest. equal reports that all were read
// and are the same digest, which common is then; desc describes each.
func (c *cluster) digests() (equal bool, common string, desc []string) {
	equal = true
	for i, p := range c.procs {
		d, err := c.digest(p)
		if err != nil {
			desc = append(desc, fmt.Sprintf("%s: %v", p.name, err))
			equal = false
			continue
		}
		desc = append(desc, fmt.Sprintf("%s: digest %s keys %d partitions %v", p.name, d.Digest, d.Keys, d.Partitions))
		if i == 0 {
			common = d.Digest
		} else if d.Digest != common {
			equal = false
		}
	}
	return equal, common, desc
}

// waitConverged polls every DC's /v1/digest until all are equal, and fails
// the test with every digest if they are not within timeout.
func (c *cluster) waitConverged(timeout time.Duration) time.Duration {
	c.t.Helper()
	begin := time.Now()
	var last []string
	err := waitFor(timeout, 100*time.Millisecond, func() bool {
		var equal bool
		equal, _, last = c.digests()
		return equal
	})
	if err != nil {
		c.t.Fatalf("the DCs did not converge within %s; last digests:\n  %s", timeout, strings.Join(last, "\n  "))
	}
	return time.Since(begin)
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
