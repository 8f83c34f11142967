package fault_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// TestShardSIGKILL (docs/DESIGN.md, invariants 1 and 16): dc1 runs as 4
// sidecar processes (shards), dc2 and dc3 as one each, in a mesh. Writers
// put unique keys through every sidecar, most of them keys another shard
// of dc1 owns (so forwarded), while one of dc1's shards is SIGKILLed and
// restarted again and again. After the writers stop, every DC's whole
// digest is equal and every acknowledged write reads back, with its
// value, through every sidecar: 0 acknowledged writes lost.
func TestShardSIGKILL(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	cycles := pick(3, 40)
	c := newCluster(t, clusterOptions{shards: map[string]int{"dc1": 4}})
	victim := c.member("dc1.s1")

	var (
		mu    sync.Mutex
		acked = map[string]string{}
		tries atomic.Int64
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	for wi, m := range c.members {
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
				tries.Add(1)
				_, code, err := c.write(m, key, []byte(value), nil)
				if err == nil && code == http.StatusOK {
					mu.Lock()
					acked[key] = value
					mu.Unlock()
					continue
				}
				hold(20*time.Millisecond, stop) // the sidecar or the key's shard is down: back off

			}
		}()
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	if err := sidecar.WaitFor(30*time.Second, 10*time.Millisecond, func() bool { return count() >= 200 }); err != nil {
		t.Fatalf("warm-up writes: %v (acked %d)", err, count())
	}
	for range cycles {
		hold(time.Duration(rng.Int64N(int64(300*time.Millisecond))), nil)
		victim.kill()
		hold(time.Duration(rng.Int64N(int64(500*time.Millisecond))), nil)
		victim.start()
		victim.waitHealthy(30 * time.Second)
	}
	before := count()
	if err := sidecar.WaitFor(30*time.Second, 10*time.Millisecond, func() bool { return count() >= before+100 }); err != nil {
		t.Fatalf("writes after the last restart: %v", err)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d SIGKILLs of %s; %d writes tried, %d acknowledged", cycles, victim.name, tries.Load(), count())

	var last []string
	if err := sidecar.WaitFor(60*time.Second, 50*time.Millisecond, func() bool {
		var equal bool
		var d digestView
		equal, d, last = c.digests()
		return equal && d.Keys >= count() // a write cut by the kill may have committed unacknowledged
	}); err != nil {
		t.Fatalf("the DCs' whole digests did not agree over %d keys: %s", count(), strings.Join(last, "; "))
	}
	lost := 0
	for key, value := range acked {
		for _, m := range c.members {
			kv, code, err := c.get(m, key)
			if err != nil || code != http.StatusOK || !strings.Contains(strings.Join(kv.LiveValues(), ","), value) {
				lost++
				if lost <= 5 {
					t.Errorf("acknowledged %s=%s reads through %s as %d %v %v", key, value, m.name, code, kv.LiveValues(), err)
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
