// Package home_test runs home-DC writes between real sidecars (pkg/node)
// on one embedded NATS JetStream server: forwarding, the reject and
// failover policies, and a write racing a failover.
package home_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/home"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/natsapi"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var dcs = []string{"dc1", "dc2", "dc3"}

// homeCluster is three DCs in a mesh sharing one embedded NATS server,
// each with its own data dir and HTTP API.
type homeCluster struct {
	*cluster.Cluster
	t *testing.T
}

func newCluster(t *testing.T, home []config.HomeRule, rules []config.Rule) *homeCluster {
	t.Helper()
	c := cluster.Start(t, cluster.Options{
		DCs: dcs, Partitions: 4, HTTP: true, ReportInterval: 50 * time.Millisecond, NoStart: true,
		Config: func(cfg *config.Config) {
			cfg.Home = home
			cfg.Resolvers.Rules = rules
		},
		Logger: func(dc string) *slog.Logger { return testutil.Logger(t, dc) },
	})
	hc := &homeCluster{Cluster: c, t: t}
	for _, dc := range dcs {
		hc.start(dc)
	}
	return hc
}

// start starts (or restarts, on the same data dir) dc.
func (c *homeCluster) start(dc string) {
	c.t.Helper()
	if err := c.StartDC(context.Background(), dc); err != nil {
		c.t.Fatal(err)
	}
}

// stop closes dc's sidecar.
func (c *homeCluster) stop(dc string) {
	c.t.Helper()
	if err := c.StopDC(dc); err != nil {
		c.t.Fatal(err)
	}
}

// reply is an HTTP answer.
type reply struct {
	code    int
	body    string
	context string
	Dot     string `json:"dot"`
	Error   string `json:"error"`
}

// put writes key at dc over HTTP; ctx, when not nil, is sent as
// X-Repl-Context.
func (c *homeCluster) put(dc, key, value string, ctx *string) reply {
	c.t.Helper()
	u := "http://" + c.Node(dc).HTTPAddr() + "/v1/kv/" + url.PathEscape(key)
	req, err := http.NewRequest(http.MethodPut, u, strings.NewReader(value))
	if err != nil {
		c.t.Fatal(err)
	}
	if ctx != nil {
		req.Header.Set("X-Repl-Context", *ctx)
	}
	return c.do(req)
}

func (c *homeCluster) do(req *http.Request) reply {
	c.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := reply{code: resp.StatusCode, body: string(b), context: resp.Header.Get("X-Repl-Context")}
	if err := json.Unmarshal(b, &r); err != nil {
		c.t.Fatalf("%s %s: %d %s: %v", req.Method, req.URL, resp.StatusCode, b, err)
	}
	return r
}

// homeStatus is dc's view of the rule with prefix, from GET /v1/status.
func (c *homeCluster) homeStatus(dc, prefix string) home.RuleStatus {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.Node(dc).HTTPAddr()+"/v1/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Home []home.RuleStatus `json:"home"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		c.t.Fatal(err)
	}
	for _, r := range st.Home {
		if r.Prefix == prefix {
			return r
		}
	}
	c.t.Fatalf("%s status has no home rule %q: %+v", dc, prefix, st.Home)
	return home.RuleStatus{}
}

// wantHome checks that each of dcs sees home as the home of prefix in
// epoch.
func (c *homeCluster) wantHome(prefix, home string, epoch uint64, dcs ...string) {
	c.t.Helper()
	for _, dc := range dcs {
		if s := c.homeStatus(dc, prefix); s.Home != home || s.Epoch != epoch {
			c.t.Errorf("%s status %+v; want home %s in epoch %d", dc, s, home, epoch)
		}
	}
}

func (c *homeCluster) writes(dc string) uint64 { return c.Node(dc).Store().Stats().Writes }

// converge waits until every running DC has published everything and all
// hold the same digest.
func (c *homeCluster) converge() {
	c.t.Helper()
	cluster.Eventually(c.t, 60*time.Second, "convergence", func() (bool, string) {
		var first, why string
		for _, dc := range dcs {
			n := c.Node(dc)
			d, err := n.Store().Digest()
			if err != nil {
				return false, err.Error()
			}
			why += fmt.Sprintf(" %s=%s outbox=%d", dc, d.Hex()[:12], n.Store().OutboxDepth())
			if n.Store().OutboxDepth() != 0 || first != "" && d.Hex() != first {
				return false, why
			}
			first = d.Hex()
		}
		return true, ""
	})
}

func (c *homeCluster) conflicts(dc, prefix string) []changelog.Conflict {
	c.t.Helper()
	cs, err := c.Node(dc).Store().Conflicts(changelog.ConflictFilter{KeyPrefix: prefix})
	if err != nil {
		c.t.Fatal(err)
	}
	return cs
}

// TestForwarding: with orders/ homed at dc1, a write at dc2 (HTTP) or dc3
// (NATS API) is executed at dc1 and answered as if local; dc2 and dc3
// writing one orders/ key in a loop never conflict, while the same
// workload on a key without a home does.
func TestForwarding(t *testing.T) {
	c := newCluster(t,
		[]config.HomeRule{{Prefix: "orders/", DCs: []string{"dc1"}}},
		[]config.Rule{{Prefix: "orders/", Resolver: config.LWW}, {Prefix: "ctl/", Resolver: config.LWW}})

	before1, before2 := c.writes("dc1"), c.writes("dc2")
	r := c.put("dc2", "orders/1", "v1", nil)
	if r.code != http.StatusOK || !strings.HasPrefix(r.Dot, "dc1:") || r.context == "" {
		t.Fatalf("PUT at dc2: %d %s (context %q); want 200 with a dc1 dot and a context", r.code, r.body, r.context)
	}
	if got := c.writes("dc2"); got != before2 {
		t.Errorf("dc2 made %d local writes; the home dc1 should have made the write", got-before2)
	}
	if got := c.writes("dc1"); got != before1+1 {
		t.Errorf("dc1 made %d local writes, want 1", got-before1)
	}
	// The context the answer carries supersedes the first write.
	r2 := c.put("dc2", "orders/1", "v2", &r.context)
	if r2.code != http.StatusOK || !strings.HasPrefix(r2.Dot, "dc1:") {
		t.Fatalf("PUT with the returned context: %d %s", r2.code, r2.body)
	}
	cluster.EventuallyEvery(t, 30*time.Second, 20*time.Millisecond, "v2 alone at dc2", func() (bool, string) {
		st, _, err := c.Node("dc2").Store().Get("orders/1")
		if err != nil || len(st.Siblings) != 1 || string(st.Siblings[0].Value) != "v2" {
			return false, fmt.Sprintf("%+v %v", st.Siblings, err)
		}
		return true, ""
	})

	// The NATS API goes through the same path.
	msg := c.natsPut("dc3", "orders/2", "n1")
	var wr natsapi.WriteReply
	if err := json.Unmarshal(msg.Data, &wr); err != nil || !strings.HasPrefix(wr.Dot, "dc1:") || wr.Context == "" {
		t.Fatalf("NATS put at dc3: %s %v; want a dc1 dot and a context", msg.Data, err)
	}

	// dc2 and dc3 write one key concurrently, blind writes in a loop. Without
	// a home they conflict (the control); with one they cannot.
	race := func(key string, rounds int) {
		var wg sync.WaitGroup
		for _, dc := range []string{"dc2", "dc3"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range rounds {
					if _, err := c.Node(dc).Write(context.Background(), changelog.WriteOp{Key: key, Value: fmt.Appendf(nil, "%s-%d", dc, i)}); err != nil {
						t.Errorf("write %s at %s: %v", key, dc, err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	rounds := 0
	for rounds < 400 && len(c.conflicts("dc2", "ctl/"))+len(c.conflicts("dc3", "ctl/")) == 0 {
		race("ctl/race", 20)
		rounds += 20
		c.converge()
	}
	if len(c.conflicts("dc2", "ctl/"))+len(c.conflicts("dc3", "ctl/")) == 0 {
		t.Fatalf("the control made no conflict in %d rounds", rounds)
	}
	race("orders/race", max(rounds, 40))
	c.converge()
	for _, dc := range dcs {
		if cs := c.conflicts(dc, "orders/"); len(cs) != 0 {
			t.Errorf("%s logged %d conflicts on orders/, want none: %+v", dc, len(cs), cs[0])
		}
		st, _, err := c.Node(dc).Store().Get("orders/race")
		if err != nil || len(st.Siblings) != 1 || st.Siblings[0].Dot.DC != "dc1" {
			t.Errorf("%s orders/race siblings %+v (%v); want one, written by dc1", dc, st.Siblings, err)
		}
	}
	t.Logf("control conflicted within %d rounds; home key: %d writes, no conflict", rounds, 2*max(rounds, 40))
}

// natsPut writes key at dc through the NATS API and returns the answer.
func (c *homeCluster) natsPut(dc, key, value string) *nats.Msg {
	c.t.Helper()
	nc, err := nats.Connect(c.URL())
	if err != nil {
		c.t.Fatal(err)
	}
	defer nc.Close()
	req, _ := json.Marshal(natsapi.Request{Key: key, ValueText: &value})
	msg, err := nc.Request(names.APISubject(dc, "put"), req, 10*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	return msg
}

// TestRejectPolicy: with the home dc1 stopped, a write to an orders/ key at
// dc2 answers 503 naming dc1 and writes nothing; keys without a home are
// still written locally.
func TestRejectPolicy(t *testing.T) {
	c := newCluster(t, []config.HomeRule{{Prefix: "orders/", DCs: []string{"dc1"}, Policy: config.PolicyReject}}, nil)
	c.stop("dc1")
	before := c.writes("dc2")
	r := c.put("dc2", "orders/9", "x", nil)
	if r.code != http.StatusServiceUnavailable || !strings.Contains(r.Error, "home DC dc1") || !strings.Contains(r.Error, "no responders") {
		t.Fatalf("PUT at dc2 with dc1 down: %d %s; want 503 naming dc1 and no responders", r.code, r.body)
	}
	t.Logf("503 body: %s", r.body)
	if _, ok, err := c.Node("dc2").Store().Get("orders/9"); ok || err != nil {
		t.Errorf("dc2 stored orders/9 (%v, %v); a rejected write writes nothing", ok, err)
	}
	if got := c.writes("dc2"); got != before {
		t.Errorf("dc2 made %d local writes, want 0", got-before)
	}
	if r := c.put("dc2", "users/1", "x", nil); r.code != http.StatusOK || !strings.HasPrefix(r.Dot, "dc2:") {
		t.Errorf("PUT of a key without a home: %d %s", r.code, r.body)
	}
	// The NATS API answers with the same status.
	msg := c.natsPut("dc3", "orders/9", "x")
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "503" || !strings.Contains(msg.Header.Get("Nats-Service-Error"), "dc1") {
		t.Errorf("NATS put: code %q error %q; want 503 naming dc1", code, msg.Header.Get("Nats-Service-Error"))
	}
}

// TestFailoverPolicy: with [dc1, dc2] failover and dc1 stopped, a write at
// dc3 lands at dc2 under epoch 1; once dc1 is back on its data dir, writes
// go to dc1 again under epoch 2, and the DCs converge.
func TestFailoverPolicy(t *testing.T) {
	c := newCluster(t, []config.HomeRule{{Prefix: "acct/", DCs: []string{"dc1", "dc2"}, Policy: config.PolicyFailover, Timeout: config.Duration(2 * time.Second)}}, nil)
	if r := c.put("dc3", "acct/1", "a", nil); r.code != http.StatusOK || !strings.HasPrefix(r.Dot, "dc1:") {
		t.Fatalf("PUT with dc1 up: %d %s", r.code, r.body)
	}
	if s := c.homeStatus("dc3", "acct/"); s.Policy != "failover" {
		t.Fatalf("dc3 status %+v; want policy failover", s)
	}
	c.wantHome("acct/", "dc1", 0, "dc3")
	c.converge()
	c.stop("dc1")

	r := c.put("dc3", "acct/1", "b", nil)
	if r.code != http.StatusOK || !strings.HasPrefix(r.Dot, "dc2:") {
		t.Fatalf("PUT with dc1 down: %d %s; want it executed at dc2", r.code, r.body)
	}
	c.wantHome("acct/", "dc2", 1, "dc2", "dc3")
	// dc2 writes locally as the home now.
	if r := c.put("dc2", "acct/2", "c", nil); r.code != http.StatusOK || !strings.HasPrefix(r.Dot, "dc2:") {
		t.Errorf("PUT at the new home: %d %s", r.code, r.body)
	}

	c.start("dc1")
	// dc1's start-up probe told it about epoch 1.
	c.wantHome("acct/", "dc2", 1, "dc1")
	r = c.put("dc3", "acct/1", "d", nil)
	if r.code != http.StatusOK || !strings.HasPrefix(r.Dot, "dc1:") {
		t.Fatalf("PUT after dc1 came back: %d %s; want it executed at dc1", r.code, r.body)
	}
	c.wantHome("acct/", "dc1", 2, "dc1", "dc3")
	// The former home dc2 learns the new epoch from its next write, which
	// dc1 executes.
	if r := c.put("dc2", "acct/2", "e", nil); r.code != http.StatusOK || !strings.HasPrefix(r.Dot, "dc1:") {
		t.Errorf("PUT at the former home: %d %s; want it executed at dc1", r.code, r.body)
	}
	c.wantHome("acct/", "dc1", 2, "dc2")
	c.converge()
}

// TestFailoverRace: dc1 accepts a write on a key while its home responder
// is cut off (its replication keeps running), and dc2, failing over,
// accepts another. After the cut heals both versions are there at every
// DC: as siblings, or with lww the loser in every DC's conflict log.
func TestFailoverRace(t *testing.T) {
	c := newCluster(t,
		[]config.HomeRule{{Prefix: "acct/", DCs: []string{"dc1", "dc2"}, Policy: config.PolicyFailover}},
		[]config.Rule{{Prefix: "acct/lww/", Resolver: config.LWW}})
	if err := c.Node("dc1").Home().StopServing(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, key := range []string{"acct/sib/k", "acct/lww/k"} {
		// Both writers read the key absent ({}), so neither write covers
		// the other, whichever arrives first.
		res, err := c.Node("dc2").Write(ctx, changelog.WriteOp{Key: key, Value: []byte("from-dc2"), Context: vclock.VV{}})
		if err != nil || res.Event.Dot.DC != "dc2" {
			t.Fatalf("write %s at dc2: %v (%+v); want dc2 to take over", key, err, res.Event)
		}
		res, err = c.Node("dc1").Write(ctx, changelog.WriteOp{Key: key, Value: []byte("from-dc1"), Context: vclock.VV{}})
		if err != nil || res.Event.Dot.DC != "dc1" {
			t.Fatalf("write %s at dc1: %v (%+v); want dc1, cut off, to write as home", key, err, res.Event)
		}
	}
	c.wantHome("acct/", "dc2", 1, "dc2")
	if err := c.Node("dc1").Home().Serve(); err != nil {
		t.Fatal(err)
	}
	c.converge()
	for _, dc := range dcs {
		st, _, err := c.Node(dc).Store().Get("acct/sib/k")
		vals := map[string]bool{}
		for _, sb := range st.Live() {
			vals[string(sb.Value)] = true
		}
		if err != nil || len(vals) != 2 || !vals["from-dc1"] || !vals["from-dc2"] {
			t.Errorf("%s acct/sib/k siblings %+v (%v); want both writes", dc, st.Siblings, err)
		}
		cs := c.conflicts(dc, "acct/lww/")
		if len(cs) != 1 || len(cs[0].Discarded) != 1 || len(cs[0].Kept) != 1 {
			t.Errorf("%s conflict log for acct/lww/: %+v; want the loser logged once", dc, cs)
			continue
		}
		got := string(cs[0].Kept[0].Value) + "+" + string(cs[0].Discarded[0].Value)
		if got != "from-dc1+from-dc2" && got != "from-dc2+from-dc1" {
			t.Errorf("%s conflict kept+discarded = %s; want the two writes", dc, got)
		}
	}
	// After the heal, dc2's next write goes back to dc1 under a new epoch.
	st, _, _ := c.Node("dc2").Store().Get("acct/sib/k")
	res, err := c.Node("dc2").Write(ctx, changelog.WriteOp{Key: "acct/sib/k", Value: []byte("merged"), Context: st.Clock})
	if err != nil || res.Event.Dot.DC != "dc1" || len(res.State.Siblings) != 1 {
		t.Fatalf("write after heal at dc2: %v, %+v; want dc1 to execute it, replacing both siblings", err, res)
	}
	c.wantHome("acct/", "dc1", 2, "dc2")
	c.converge()
}
