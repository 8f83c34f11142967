package blackbox_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// dcNames are the DCs of every test mesh.
var dcNames = []string{"dc1", "dc2", "dc3"}

// cluster is an embedded JetStream server in the test process and one
// `replicator run` process per DC, all on loopback.
type cluster struct {
	t      *testing.T
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
	dir := t.TempDir()
	// The DCs' configs, data dirs and HTTP addresses, and the embedded
	// NATS server the processes share; the processes start below.
	cl := repl.Start(t, repl.Options{
		DCs: dcNames, Partitions: 8, Dir: filepath.Join(dir, "data"), ServerName: "blackbox", HTTP: true, NoStart: true,
		Config: func(cfg *config.Config) {
			cfg.Resolvers.Rules = []config.Rule{{Prefix: lwwPrefix, Resolver: config.LWW}}
			cfg.Durability.Fsync = true
		},
	})
	c := &cluster{
		t: t,
		client: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true},
		},
	}
	// Cleanups run last-registered first: kill the sidecars, print their
	// logs if the test failed, close idle connections, stop NATS.
	t.Cleanup(c.client.CloseIdleConnections)
	t.Cleanup(c.dumpLogsOnFailure)
	t.Cleanup(func() {
		for _, p := range c.procs {
			p.kill()
		}
	})

	for _, dc := range dcNames {
		p := &proc{
			t:       t,
			name:    dc,
			cfgPath: filepath.Join(dir, dc+".yaml"),
			logPath: filepath.Join(dir, dc+".log"),
			addr:    cl.HTTPAddr(dc),
		}
		if err := cl.WriteConfig(dc, p.cfgPath); err != nil {
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
	err := sidecar.Terminate(p.name, cmd, done, timeout)
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
	sidecar.WaitHealthy(c.t, c.client, p.name, p.url(""), p.exited, timeout, 25*time.Millisecond)
}

// dumpLogsOnFailure prints the tail of every DC's log when the test failed.
func (c *cluster) dumpLogsOnFailure() {
	if !c.t.Failed() {
		return
	}
	for _, p := range c.procs {
		sidecar.DumpLog(c.t, p.name, p.logPath, 48<<10)
	}
}

// checkLogs summarises each DC's ERROR and WARN log lines, and fails the
// test if a process panicked, crashed or reported a data race (when built
// with BLACKBOX_RACE=1).
func (c *cluster) checkLogs() {
	for _, p := range c.procs {
		sidecar.CheckLog(c.t, p.name, p.logPath)
	}
}

// The JSON the HTTP API answers with.
type (
	kvView       = sidecar.KV
	writeResp    = sidecar.WriteResp
	digestView   = sidecar.Digest
	conflictView = sidecar.Conflict
)

// get reads a key. status is 200 or 404 on success; anything else is an
// error.
func (c *cluster) get(p *proc, key string) (kvView, int, error) {
	return sidecar.Get(c.client, p.name, p.url(""), key)
}

// write sends a PUT (value != nil) or DELETE, with X-Repl-Context when
// vctx is not nil. It returns the HTTP status (0 on a transport error).
func (c *cluster) write(p *proc, key string, value []byte, vctx *string) (writeResp, int, error) {
	return sidecar.Write(c.client, p.name, p.url(""), key, value, vctx)
}

func (c *cluster) digest(p *proc) (digestView, error) {
	var d digestView
	err := c.getJSON(p, "/v1/digest", &d)
	return d, err
}

func (c *cluster) conflicts(p *proc) ([]conflictView, error) {
	var cs []conflictView
	err := c.getJSON(p, "/v1/conflicts?limit=100000", &cs) // every entry: the accounting needs them all
	return cs, err
}

func (c *cluster) getJSON(p *proc, path string, v any) error {
	return sidecar.GetJSON(c.client, p.name, p.url(""), path, v)
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
	err := repl.WaitFor(timeout, 100*time.Millisecond, func() bool {
		var equal bool
		equal, _, last = c.digests()
		return equal
	})
	if err != nil {
		c.t.Fatalf("the DCs did not converge within %s; last digests:\n  %s", timeout, strings.Join(last, "\n  "))
	}
	return time.Since(begin)
}
