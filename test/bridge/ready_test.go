package bridge_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/httpapi"
)

// readyz serves GET /readyz for dc's current store and Replicator through
// the real HTTP handler, as the node wires it.
func (c *bridgeCluster) readyz(dc string) *httptest.Server {
	c.t.Helper()
	h := httpapi.New(httpapi.StoreBackend{Store: c.store(dc), ReadinessFn: func() (bool, any) {
		r := c.rep(dc).Readiness()
		return r.Ready, r
	}}, httpapi.Options{})
	srv := httptest.NewServer(h)
	c.t.Cleanup(srv.Close)
	return srv
}

// getReadyz returns the status code and body of GET /readyz.
func getReadyz(t *testing.T, srv *httptest.Server) (int, bridge.Readiness) {
	t.Helper()
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var r bridge.Readiness
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("GET /readyz: %d %q: %v", resp.StatusCode, b, err)
	}
	return resp.StatusCode, r
}

func waitingFor(r bridge.Readiness) string {
	var s []string
	for _, w := range r.WaitingFor {
		s = append(s, w.Peer+": "+w.Reason)
	}
	return strings.Join(s, "; ")
}

// restoreOld stops dc, restarts it on the copy of its data dir in backup,
// and returns its /readyz server.
func (c *bridgeCluster) restoreOld(dc, backup string) *httptest.Server {
	c.t.Helper()
	c.stop(dc)
	c.SetDataDir(dc, backup)
	c.openStore(dc)
	c.startRep(dc)
	return c.readyz(dc)
}

// writeAroundBackup has every DC write a key, backs dc3 up once that has
// replicated, then has each DC of after write 20 more keys and waits for
// them to replicate; it returns dc3's backup.
func (c *bridgeCluster) writeAroundBackup(after ...string) string {
	c.t.Helper()
	for _, dc := range c.dcs {
		c.write(dc, "before/"+dc, "v", false)
	}
	c.waitConverged(20 * time.Second)
	backup := c.backup("dc3")
	for i := range 20 {
		for _, dc := range after {
			c.write(dc, fmt.Sprintf("after/%s-%d", dc, i), "v", false)
		}
	}
	c.waitConverged(20 * time.Second)
	return backup
}

// TestReadyzWhileCatchingUp restarts dc3 on a copy of its data dir taken
// before dc1 and dc2 wrote 40 keys. Its durable consumers had acknowledged
// those events, so it gets them back only through the catch-up from their
// origins, which waits RepairAfter (3s here) without progress: /readyz
// answers 503 naming what dc3 lacks for that long, and 200 once dc3 has
// caught up, which it then has (its applied vector covers the others').
func TestReadyzWhileCatchingUp(t *testing.T) {
	c := newCluster(t, "mesh", 3, func(o *bridge.Options) { o.RepairAfter = 3 * time.Second }).start()
	backup := c.writeAroundBackup("dc1", "dc2")
	srv := c.restoreOld("dc3", backup)
	code, r := getReadyz(t, srv)
	if code != http.StatusServiceUnavailable || r.Ready {
		t.Fatalf("GET /readyz right after the restart: %d %+v, want 503", code, r)
	}
	// Both peers report within a report interval; dc3 lacks what they
	// reported until the catch-up.
	cluster.Eventually(t, 10*time.Second, "503 naming the events dc3 lacks", func() (bool, string) {
		code, r := getReadyz(t, srv)
		if code == http.StatusOK {
			t.Fatalf("ready before catching up: %+v", r)
		}
		w := waitingFor(r)
		return code == http.StatusServiceUnavailable && strings.Contains(w, "dc1: events dc1 reported applied and this DC lacks") &&
			strings.Contains(w, "dc2: events dc2 reported applied and this DC lacks"), fmt.Sprintf("%d: %s", code, w)
	})
	cluster.Eventually(t, 30*time.Second, "200 after the catch-up", func() (bool, string) {
		code, r := getReadyz(t, srv)
		return code == http.StatusOK && r.Ready && r.ReadyAt != nil, fmt.Sprintf("%d: %s", code, waitingFor(r))
	})
	mine := c.store("dc3").Applied()
	for _, dc := range []string{"dc1", "dc2"} {
		own := c.store(dc).Applied()[dc]
		if !slices.Equal(mine[dc], own) {
			t.Errorf("ready, but dc3 has applied %v of %s's %v", mine[dc], dc, own)
		}
	}
	c.waitConverged(20 * time.Second)
	// Latched: still ready.
	if code, r := getReadyz(t, srv); code != http.StatusOK {
		t.Errorf("GET /readyz after convergence: %d %+v", code, r)
	}
}

// TestReadyzDoesNotWaitForADeadPeer stops dc2 for good, then restarts dc3
// on an old copy of its data dir: dc3 catches up with dc1 but is not ready
// until dc2 has been silent for heal_after since dc3 started, and then is,
// naming dc2 as not waited for.
func TestReadyzDoesNotWaitForADeadPeer(t *testing.T) {
	const healAfter = 2 * time.Second
	c := newCluster(t, "mesh", 3, func(o *bridge.Options) { o.HealAfter = healAfter }).start()
	backup := c.writeAroundBackup("dc1")
	c.stop("dc2")

	srv := c.restoreOld("dc3", backup)
	if code, r := getReadyz(t, srv); code != http.StatusServiceUnavailable {
		t.Fatalf("GET /readyz right after the restart: %d %+v, want 503", code, r)
	}
	cluster.Eventually(t, 10*time.Second, "dc3 caught up with dc1", func() (bool, string) {
		got, want := c.store("dc3").Applied()["dc1"], c.store("dc1").Applied()["dc1"]
		return slices.Equal(got, want), fmt.Sprintf("dc3 has %v of dc1's %v", got, want)
	})
	var r bridge.Readiness
	cluster.Eventually(t, 20*time.Second, "200 without dc2", func() (bool, string) {
		var code int
		code, r = getReadyz(t, srv)
		if code != http.StatusOK && !strings.Contains(waitingFor(r), "dc2: its first applied-vector report") {
			return false, fmt.Sprintf("%d, not waiting for dc2's first report: %s", code, waitingFor(r))
		}
		return code == http.StatusOK, fmt.Sprintf("%d: %s", code, waitingFor(r))
	})
	if r.ReadyAt == nil || r.ReadyAt.Sub(r.Started) < healAfter {
		t.Errorf("ready at %v, started %v: before dc2 was silent for heal_after (%s)", r.ReadyAt, r.Started, healAfter)
	}
	if !slices.Equal(r.NotWaitedFor, []string{"dc2"}) {
		t.Errorf("not waited for %v, want [dc2]", r.NotWaitedFor)
	}
	peers := c.rep("dc3").Peers()
	states := map[string]string{}
	for _, p := range peers {
		states[p.DC] = p.State
	}
	if states["dc1"] != "alive" || states["dc2"] != "unreachable" {
		t.Errorf("peers as dc3 sees them: %+v, want dc1 alive and dc2 unreachable", peers)
	}
}
