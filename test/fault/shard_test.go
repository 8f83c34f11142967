package fault_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/bridge"
	repl "github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// shardProc is one `replicator run` process of a sharded test mesh.
type shardProc struct {
	name, cfg, log, base string
	cmd                  *exec.Cmd
	done                 chan struct{}
}

func (p *shardProc) start(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p.cmd = exec.Command(binPath, "run", "--config", p.cfg)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(p.cmd, p.done)
}

func (p *shardProc) exited() (bool, string) {
	select {
	case <-p.done:
		return true, p.cmd.ProcessState.String()
	default:
		return false, ""
	}
}

func (p *shardProc) kill() {
	_ = p.cmd.Process.Kill() // SIGKILL
	<-p.done
}

// TestShardSIGKILL (docs/DESIGN.md, invariants 1 and 16): dc1 runs as 4
// `replicator run` processes (shards), dc2 and dc3 as one each, in a mesh
// and in a ring (where dc1's shards forward dc3's events to dc2, each for
// its partitions) on one embedded JetStream server. Writers put unique keys through every
// sidecar, most of them keys another shard of dc1 owns (so forwarded),
// while one of dc1's shards is SIGKILLed and restarted again and again.
// After the writers stop, every sidecar shows the same whole-DC digest and
// every acknowledged write reads back, with its value, through every
// sidecar: 0 acknowledged writes lost.
func TestShardSIGKILL(t *testing.T) {
	requireBinary(t)
	for _, topology := range []string{"mesh", "ring"} {
		t.Run(topology, func(t *testing.T) { shardSIGKILL(t, topology) })
	}
}

func shardSIGKILL(t *testing.T, topology string) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	cycles := pick(3, 40)
	dir := t.TempDir()
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{StoreDir: filepath.Join(dir, "nats"), JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	var procs []*shardProc
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		n := 1
		if dc == "dc1" {
			n = 4
		}
		for i := range n {
			name, shard := dc, ""
			if n > 1 {
				name, shard = fmt.Sprintf("%s.s%d", dc, i), fmt.Sprintf("shard: \"%d of %d\"\n", i, n)
			}
			addr := repl.FreeAddr(t)
			p := &shardProc{name: name, cfg: filepath.Join(dir, name+".yaml"), log: filepath.Join(dir, name+".log"), base: "http://" + addr}
			y := fmt.Sprintf("dc: %s\ndcs: [dc1, dc2, dc3]\ntopology: %s\npartitions: 8\n%snats:\n  url: %s\ndata_dir: %s\nhttp:\n  listen: %s\n",
				dc, topology, shard, ns.ClientURL(), filepath.Join(dir, "data", name), addr)
			if err := os.WriteFile(p.cfg, []byte(y), 0o600); err != nil {
				t.Fatal(err)
			}
			procs = append(procs, p)
		}
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer client.CloseIdleConnections()
	defer func() {
		for _, p := range procs {
			if gone, _ := p.exited(); !gone {
				p.kill()
			}
			if t.Failed() {
				sidecar.DumpLog(t, p.name, p.log, 16<<10)
			}
		}
	}()
	for _, p := range procs {
		p.start(t)
	}
	for _, p := range procs {
		sidecar.WaitHealthy(t, client, p.name, p.base, p.exited, 30*time.Second, 10*time.Millisecond)
	}
	victim := procs[1]

	var (
		mu    sync.Mutex
		acked = map[string]string{}
		tries int
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	for wi, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("s/%d/%d", wi, n)
				value := "v" + key
				_, code, err := sidecar.Write(client, p.name, p.base, key, []byte(value), nil)
				mu.Lock()
				tries++
				if err == nil && code == http.StatusOK {
					acked[key] = value
				}
				mu.Unlock()
				if err != nil || code != http.StatusOK {
					repl.Hold(20*time.Millisecond, stop) // the sidecar or the key's shard is down: back off
				}
			}
		}()
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	if err := repl.WaitFor(30*time.Second, 10*time.Millisecond, func() bool { return count() >= 200 }); err != nil {
		t.Fatalf("warm-up writes: %v (acked %d)", err, count())
	}
	for range cycles {
		repl.Hold(time.Duration(rng.Int64N(int64(300*time.Millisecond))), nil)
		victim.kill()
		repl.Hold(time.Duration(rng.Int64N(int64(500*time.Millisecond))), nil)
		victim.start(t)
		sidecar.WaitHealthy(t, client, victim.name, victim.base, victim.exited, 30*time.Second, 10*time.Millisecond)
	}
	before := count()
	if err := repl.WaitFor(30*time.Second, 10*time.Millisecond, func() bool { return count() >= before+100 }); err != nil {
		t.Fatalf("writes after the last restart: %v", err)
	}
	close(stop)
	wg.Wait()
	t.Logf("%s: %d SIGKILLs of %s; %d writes tried, %d acknowledged", topology, cycles, victim.name, tries, count())

	var last []string
	if err := repl.WaitFor(60*time.Second, 50*time.Millisecond, func() bool {
		last = last[:0]
		var first string
		equal := true
		for i, p := range procs {
			var d struct {
				Digest string `json:"digest"`
				Keys   int    `json:"keys"`
			}
			resp, err := client.Get(p.base + "/v1/digest")
			if err != nil {
				return false
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if json.Unmarshal(b, &d) != nil || d.Keys < count() {
				// A write cut by a kill may have committed unacknowledged:
				// keys >= acknowledged.
				equal = false
			}
			last = append(last, fmt.Sprintf("%s: %.16s over %d keys", p.name, d.Digest, d.Keys))
			if i == 0 {
				first = d.Digest
			} else if d.Digest != first {
				equal = false
			}
		}
		return equal
	}); err != nil {
		t.Fatalf("the DCs' whole digests did not agree over at least %d keys: %s", count(), strings.Join(last, "; "))
	}
	lost := 0
	for key, value := range acked {
		for _, p := range procs {
			kv, code, err := sidecar.Get(client, p.name, p.base, key)
			if err != nil || code != http.StatusOK || !strings.Contains(strings.Join(kv.LiveValues(), ","), value) {
				lost++
				if lost <= 5 {
					t.Errorf("acknowledged %s=%s reads through %s as %d %v %v", key, value, p.name, code, kv.LiveValues(), err)
				}
				break
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged writes lost", lost, len(acked))
	}
	t.Logf("0 of %d acknowledged writes lost; whole digests equal at every sidecar", len(acked))
}
