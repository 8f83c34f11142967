package fault_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/test/internal/ledger"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// TestMirrorUnderKills (docs/DESIGN.md, invariant 15) builds a mirror of
// one DC from its change feed with the example program examples/mirror,
// a real process that stores its rows and its cursor in one atomic file
// write, while every DC writes, in a mesh (mirroring every key) and a
// ring (mirroring the lww/ prefix only). At random moments it SIGKILLs the
// mirror, the DC's sidecar, or both, and restarts them; the mirror resumes
// from its stored cursor. At the end the mirror must equal GET
// /v1/kv?prefix= exactly, and the cursors of the changes it applied (the
// audit in its file, written with the rows) must be exactly the DC's feed
// entries under the prefix after its snapshot's cursor: none repeated
// past the stored cursor (the mirror also refuses such a line at once and
// exits), none missing.
func TestMirrorUnderKills(t *testing.T) {
	for _, tc := range []struct{ topology, prefix string }{{"mesh", ""}, {"ring", ledger.LWWPrefix}} {
		t.Run(tc.topology, func(t *testing.T) { mirrorUnderKills(t, tc.topology, tc.prefix) })
	}
}

func mirrorUnderKills(t *testing.T, topology, prefix string) {
	begin := time.Now()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 7))
	cycles := pick(12, 100)
	keys := ledger.KeySet(pick(200, 1000))
	c := newCluster(t, clusterOptions{topology: topology})
	dcs := c.opts.dcs
	led := newLedger(dcs)
	w := newWorkload(c, led, keys)
	defer w.Halt()
	for i, dc := range dcs {
		w.Start(dc, 1, 0, seed+uint64(i))
	}
	const at = "dc2" // the DC the mirror reads, SIGKILLed too
	m := c.member(at)
	mir := newMirror(t, c, m, prefix)
	mir.start()

	var readerKills, sidecarKills, bothKills int
	for range cycles {
		repl.Hold(time.Duration(rng.Int64N(int64(500*time.Millisecond))), nil)
		down := time.Duration(rng.Int64N(int64(800 * time.Millisecond)))
		switch rng.IntN(3) {
		case 0:
			mir.kill()
			readerKills++
			repl.Hold(down, nil)
			mir.start()
		case 1:
			m.kill()
			sidecarKills++
			repl.Hold(down, nil)
			m.start()
			m.waitHealthy(30 * time.Second)
		default:
			mir.kill()
			m.kill()
			readerKills++
			sidecarKills++
			bothKills++
			repl.Hold(down, nil)
			m.start()
			mir.start()
			m.waitHealthy(30 * time.Second)
		}
	}
	// Writes at every DC after the last restart, then quiet.
	base := led.AckedTotal()
	if err := repl.WaitFor(30*time.Second, 10*time.Millisecond, func() bool { return led.AckedTotal() >= base+60 }); err != nil {
		t.Fatalf("writes after the last restart: %v", err)
	}
	w.Halt()
	took := c.waitConverged(2 * time.Minute)

	// The mirror catches up with the DC's feed, then stops cleanly.
	last := feedEnd(t, c, m)
	var st mirrorState
	if err := repl.WaitFor(30*time.Second, 20*time.Millisecond, func() bool {
		st = mir.state()
		return st.Cursor != nil && *st.Cursor >= last
	}); err != nil {
		at := "no cursor"
		if st.Cursor != nil {
			at = fmt.Sprint(*st.Cursor)
		}
		t.Fatalf("the mirror did not reach the feed's last cursor %d: its file is at %s", last, at)
	}
	mir.stop()
	st = mir.state()

	// The mirror equals the listing, key by key, byte for byte.
	want := listing(t, c, m, prefix)
	if len(st.Rows) != len(want) {
		t.Errorf("the mirror holds %d keys, GET /v1/kv?prefix=%s %d", len(st.Rows), prefix, len(want))
	}
	var differ []string
	for k, row := range want {
		if got, ok := st.Rows[k]; !ok || !reflect.DeepEqual(got, row) {
			differ = append(differ, k)
			if len(differ) <= 3 {
				t.Errorf("key %s: the mirror has %+v, the DC %+v", k, got, row)
			}
		}
	}
	for k := range st.Rows {
		if _, ok := want[k]; !ok {
			differ = append(differ, k)
			t.Errorf("key %s is in the mirror but not at the DC", k)
		}
	}
	if len(differ) > 0 {
		t.Fatalf("%d keys differ between the mirror and the DC", len(differ))
	}

	// Every change after the snapshot applied once, in order; none missing.
	a := st.Audit
	if len(a.Snapshots) != 1 {
		t.Fatalf("the mirror took %d snapshots (%v), want 1: a 410 within the retention", len(a.Snapshots), a.Snapshots)
	}
	snap := a.Snapshots[0]
	for i, cur := range a.Changes {
		if cur <= snap || i > 0 && cur <= a.Changes[i-1] {
			t.Fatalf("applied change %d has cursor %d after %d (snapshot at %d): a change repeated past the stored cursor", i, cur, a.Changes[max(i-1, 0)], snap)
		}
	}
	feed := feedCursors(t, c, m, snap, prefix)
	if !slices.Equal(a.Changes, feed) {
		missing, extra := diff(feed, a.Changes)
		t.Fatalf("the mirror applied %d changes after its snapshot at %d, the DC's feed holds %d under %q: missing %v, extra %v",
			len(a.Changes), snap, len(feed), prefix, missing, extra)
	}
	c.checkLogs()
	t.Logf("%s: mirror of %q at %s: a snapshot of %s keys at cursor %d, then %d change lines applied, each once, up to cursor %d; %d mirror SIGKILLs, %d sidecar SIGKILLs (%d of both at once), %d mirror starts; %d keys at the end, equal to the listing",
		topology, prefix, at, mir.snapshotKeys(), snap, len(a.Changes), *st.Cursor, readerKills, sidecarKills, bothKills, mir.starts(), len(st.Rows))
	report(t, figures{
		Seed:       seed,
		Faults:     fmt.Sprintf("%d SIGKILLs of the mirror, %d of %s's sidecar, over %d cycles", readerKills, sidecarKills, at, cycles),
		Operations: led.Ops.Load(),
		Acked:      led.AckedTotal(),
		Converge:   round(took),
		Extra: map[string]any{
			"topology": topology, "prefix": prefix, "snapshot_cursor": snap, "changes_applied": len(a.Changes),
			"feed_entries_after_snapshot": len(feed), "last_cursor": *st.Cursor, "keys": len(st.Rows),
			"mirror_sigkills": readerKills, "sidecar_sigkills": sidecarKills, "both_at_once": bothKills,
		},
	}, begin)
}

// diff returns what want has that got lacks, and the reverse.
func diff(want, got []uint64) (missing, extra []uint64) {
	in := func(s []uint64, v uint64) bool { _, ok := slices.BinarySearch(s, v); return ok }
	for _, v := range want {
		if !in(got, v) {
			missing = append(missing, v)
		}
	}
	for _, v := range got {
		if !in(want, v) {
			extra = append(extra, v)
		}
	}
	return missing, extra
}

// feedLine is a line of GET /v1/changes, as far as these tests read it.
type feedLine struct {
	Type   string  `json:"type"`
	Cursor *uint64 `json:"cursor"`
	Key    string  `json:"key"`
	Error  string  `json:"error"`
}

// feedLines reads a normal (ending) GET /v1/changes at m.
func feedLines(t *testing.T, c *cluster, m *member, query string) []feedLine {
	t.Helper()
	resp, err := c.client.Get(m.url("/v1/changes?" + query))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /v1/changes?%s at %s: %s", query, m.name, resp.Status)
	}
	var out []feedLine
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var l feedLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 || out[len(out)-1].Type != "end" {
		t.Fatalf("GET /v1/changes?%s at %s did not end with an end line: %+v", query, m.name, out)
	}
	return out
}

// feedEnd is the DC's last cursor.
func feedEnd(t *testing.T, c *cluster, m *member) uint64 {
	t.Helper()
	ls := feedLines(t, c, m, "since=now")
	return *ls[len(ls)-1].Cursor
}

// feedCursors lists the cursors of the DC's changes under prefix after
// since.
func feedCursors(t *testing.T, c *cluster, m *member, since uint64, prefix string) []uint64 {
	t.Helper()
	var out []uint64
	for _, l := range feedLines(t, c, m, fmt.Sprintf("since=%d&prefix=%s", since, url.QueryEscape(prefix))) {
		if l.Type == "change" {
			out = append(out, *l.Cursor)
		}
	}
	return out
}

// mirrorState is the mirror's file; its rows are in the shape of GET
// /v1/kv/{key}, as the listing's lines are.
type mirrorState struct {
	Prefix string                 `json:"prefix"`
	Cursor *uint64                `json:"cursor"`
	Rows   map[string]*sidecar.KV `json:"rows"`
	Audit  struct {
		Snapshots []uint64 `json:"snapshots"`
		Changes   []uint64 `json:"changes"`
	} `json:"audit"`
}

// listing is GET /v1/kv?prefix= at m, by key.
func listing(t *testing.T, c *cluster, m *member, prefix string) map[string]*sidecar.KV {
	t.Helper()
	resp, err := c.client.Get(m.url("/v1/kv?prefix=" + url.QueryEscape(prefix)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]*sidecar.KV{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var r sidecar.KV
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("listing line %q: %v", sc.Text(), err)
		}
		out[r.Key] = &r
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// mirror is the examples/mirror process reading one DC, killed and
// restarted on the same file.
type mirror struct {
	t       *testing.T
	bin     string
	args    []string
	file    string
	logPath string

	mu struct {
		sync.Mutex
		cmd    *exec.Cmd
		done   chan struct{}
		starts int
	}
}

func newMirror(t *testing.T, c *cluster, m *member, prefix string) *mirror {
	t.Helper()
	bin := mirrorBinary(t)
	dir := t.TempDir()
	mr := &mirror{t: t, bin: bin, file: filepath.Join(dir, "mirror.json"), logPath: filepath.Join(dir, "mirror.log")}
	mr.args = []string{"--addr", "http://" + m.addr, "--prefix", prefix, "--file", mr.file, "--heartbeat", "1s", "--audit"}
	t.Cleanup(func() {
		mr.kill()
		if t.Failed() {
			sidecar.DumpLog(t, "mirror", mr.logPath, 16<<10)
		}
	})
	return mr
}

func (mr *mirror) start() {
	mr.t.Helper()
	mr.mu.Lock()
	defer mr.mu.Unlock()
	mr.mu.starts++
	f, err := os.OpenFile(mr.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		mr.t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "===== fault: start #%d of the mirror\n", mr.mu.starts)
	cmd := exec.Command(mr.bin, mr.args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		mr.t.Fatalf("start the mirror: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	mr.mu.cmd, mr.mu.done = cmd, done
}

func (mr *mirror) starts() int {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	return mr.mu.starts
}

// running returns the process, failing the test if it exited by itself:
// the mirror exits only on an error, such as a repeated change.
func (mr *mirror) running() (*exec.Cmd, chan struct{}) {
	mr.mu.Lock()
	cmd, done := mr.mu.cmd, mr.mu.done
	mr.mu.cmd, mr.mu.done = nil, nil
	mr.mu.Unlock()
	if cmd == nil {
		return nil, nil
	}
	select {
	case <-done:
		mr.t.Errorf("the mirror exited by itself (%s); see its log", cmd.ProcessState)
		return nil, nil
	default:
	}
	return cmd, done
}

// kill SIGKILLs the mirror.
func (mr *mirror) kill() {
	if cmd, done := mr.running(); cmd != nil {
		cmd.Process.Kill()
		<-done
	}
}

// stop asks the mirror to stop (SIGTERM) and requires a clean exit.
func (mr *mirror) stop() {
	mr.t.Helper()
	if cmd, done := mr.running(); cmd != nil {
		if err := sidecar.Terminate("mirror", cmd, done, 10*time.Second); err != nil {
			mr.t.Error(err)
		}
	}
}

// state reads the mirror's file; the zero state before it exists.
func (mr *mirror) state() mirrorState {
	mr.t.Helper()
	var st mirrorState
	b, err := os.ReadFile(mr.file)
	if os.IsNotExist(err) {
		return st
	}
	if err != nil {
		mr.t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		mr.t.Fatalf("the mirror's file: %v", err)
	}
	return st
}

// snapshotKeys is how many keys the mirror's snapshot held, from its log.
func (mr *mirror) snapshotKeys() string {
	b, _ := os.ReadFile(mr.logPath)
	for _, l := range strings.Split(string(b), "\n") {
		if i := strings.Index(l, "snapshot of "); i >= 0 {
			return strings.Fields(l[i+len("snapshot of "):])[0]
		}
	}
	return "?"
}

var (
	mirrorOnce sync.Once
	mirrorBin  string
	mirrorErr  error
)

// mirrorBinary builds examples/mirror once, in TestMain's directory.
func mirrorBinary(t *testing.T) string {
	t.Helper()
	mirrorOnce.Do(func() {
		var noGo string
		mirrorBin, noGo, mirrorErr = sidecar.BuildPackage(buildDir, "./examples/mirror", "FAULT_RACE")
		if noGo != "" {
			mirrorErr = fmt.Errorf("%s", noGo)
		}
	})
	if mirrorErr != nil {
		t.Fatalf("building examples/mirror failed: %v", mirrorErr)
	}
	return mirrorBin
}
