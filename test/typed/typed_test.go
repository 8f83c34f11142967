// Package typed_test runs the typed resolvers (counter, fields, set) over
// HTTP and the NATS API on three sidecars on real embedded NATS, in mesh,
// ring and star (invariant 13 in docs/DESIGN.md).
package typed_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/client"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/natsapi"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// typedRules: counters under c/, documents under f/, sets under s/.
func typedRules(cfg *config.Config) {
	cfg.Resolvers.Rules = append(cfg.Resolvers.Rules,
		config.Rule{Prefix: "c/", Resolver: config.Counter},
		config.Rule{Prefix: "f/", Resolver: config.Fields},
		config.Rule{Prefix: "s/", Resolver: config.Set})
}

type typedCluster struct {
	*cluster.Cluster
	t  *testing.T
	nc *nats.Conn
}

func (c *typedCluster) client(dc string) *client.Client {
	cl, err := client.New(c.BaseURL(dc))
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// nats calls dc's NATS API endpoint op; an error says what failed.
func (c *typedCluster) nats(dc, op string, req natsapi.Request) error {
	b, _ := json.Marshal(req)
	m, err := c.nc.Request(names.APISubject(dc, op), b, 10*time.Second)
	if err != nil {
		return fmt.Errorf("%s %s: %w", dc, op, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return fmt.Errorf("%s %s %+v: %s %s", dc, op, req, code, m.Header.Get("Nats-Service-Error"))
	}
	return nil
}

// mustNATS is nats on the test's goroutine, failing the test on an error.
func (c *typedCluster) mustNATS(dc, op string, req natsapi.Request) {
	c.t.Helper()
	if err := c.nats(dc, op, req); err != nil {
		c.t.Fatal(err)
	}
}

// waitAPI waits until every DC's NATS API answers: a sidecar's service
// subscribes on its own connection, which reaches the server after Start
// returns.
func (c *typedCluster) waitAPI() {
	c.t.Helper()
	cluster.Eventually(c.t, 20*time.Second, "every DC's NATS API answers", func() (bool, string) {
		for _, dc := range c.Names() {
			if _, err := c.nc.Request(names.APISubject(dc, "get"), []byte(`{"key":"c/probe"}`), time.Second); err != nil {
				return false, dc + ": " + err.Error()
			}
		}
		return true, ""
	})
}

// shows is what a GET of key at dc shows: its one value or <absent>.
func (c *typedCluster) shows(dc, key string) string {
	c.t.Helper()
	it, err := c.client(dc).Get(context.Background(), key)
	if err != nil {
		if errors.Is(err, client.ErrNotFound) {
			return "<absent>"
		}
		c.t.Fatalf("get %s at %s: %v", key, dc, err)
	}
	if len(it.Values) != 1 {
		return fmt.Sprintf("%d values %q", len(it.Values), it.Values)
	}
	return string(it.Values[0])
}

// wantEverywhere waits until every DC shows want for key.
func (c *typedCluster) wantEverywhere(key, want string) {
	c.t.Helper()
	cluster.Eventually(c.t, 30*time.Second, key+" shows "+want+" at every DC", func() (bool, string) {
		for _, dc := range c.Names() {
			if got := c.shows(dc, key); got != want {
				return false, fmt.Sprintf("%s shows %s", dc, got)
			}
		}
		return true, ""
	})
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func TestTypedTopologies(t *testing.T) {
	for _, topo := range []string{config.Mesh, config.Ring, config.Star} {
		t.Run(topo, func(t *testing.T) {
			c := &typedCluster{t: t, Cluster: cluster.Start(t, cluster.Options{
				Topology: topo, N: 3, HTTP: true, Proxies: true, ReportInterval: 200 * time.Millisecond,
				Config: typedRules,
			})}
			c.nc = c.Connect(t, "typed-test")
			c.waitAPI()
			ctx := context.Background()
			wr := must[client.WriteResult](t)
			elems := func(e ...string) []json.RawMessage {
				out := make([]json.RawMessage, len(e))
				for i, x := range e {
					out[i] = json.RawMessage(x)
				}
				return out
			}

			// Concurrent increments at three DCs, over HTTP and NATS, sum.
			var wg sync.WaitGroup
			for i, dc := range c.Names() {
				wg.Go(func() {
					for range 10 {
						if i == 1 {
							by := int64(2)
							if err := c.nats(dc, "incr", natsapi.Request{Key: "c/sum", By: &by}); err != nil {
								t.Error(err)
							}
							continue
						}
						if _, err := c.client(dc).Incr(ctx, "c/sum", 2); err != nil {
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			c.wantEverywhere("c/sum", "60")

			// Set up what the concurrent writes below start from.
			wr(c.client("dc2").Incr(ctx, "c/del", 5))
			wr(c.client("dc1").Put(ctx, "f/doc", []byte(`{"title":"t0","body":"b0"}`)))
			c.mustNATS("dc1", "patch", natsapi.Request{Key: "f/same", Patch: json.RawMessage(`{"title":"t0"}`)})
			c.mustNATS("dc1", "add", natsapi.Request{Key: "s/cart", Elements: elems(`"apple"`, `"pear"`)})
			c.wantEverywhere("c/del", "5")
			c.wantEverywhere("f/same", `{"title":"t0"}`)
			c.wantEverywhere("s/cart", `["apple","pear"]`)
			c.wantEverywhere("f/doc", `{"body":"b0","title":"t0"}`)

			// dc2 is cut off; both sides write concurrently.
			c.Cut("dc2")
			wr(c.client("dc1").Delete(ctx, "c/del"))
			wr(c.client("dc2").Incr(ctx, "c/del", 3))
			wr(c.client("dc1").Patch(ctx, "f/doc", []byte(`{"title":"userA's title"}`)))
			wr(c.client("dc2").Patch(ctx, "f/doc", []byte(`{"body":"userB's body"}`)))
			wr(c.client("dc1").Patch(ctx, "f/same", []byte(`{"title":"from dc1"}`)))
			wr(c.client("dc2").Patch(ctx, "f/same", []byte(`{"title":"from dc2"}`)))
			wr(c.client("dc1").Remove(ctx, "s/cart", elems(`"apple"`, `"pear"`)))
			wr(c.client("dc2").Add(ctx, "s/cart", elems(`"apple"`)))
			c.Heal("dc2")
			c.WaitConverged(t, 60*time.Second)

			c.wantEverywhere("c/del", "3")
			c.wantEverywhere("f/doc", `{"body":"userB's body","title":"userA's title"}`)
			c.wantEverywhere("s/cart", `["apple"]`)
			same := c.shows("dc1", "f/same")
			if same != `{"title":"from dc1"}` && same != `{"title":"from dc2"}` {
				t.Fatalf("f/same shows %s", same)
			}
			c.wantEverywhere("f/same", same)

			// Different fields: no conflict entry anywhere. The same field:
			// the DCs that discarded a value logged it with both versions.
			logged := 0
			for _, dc := range c.Names() {
				cs, err := c.client(dc).Conflicts(ctx, client.ConflictFilter{})
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range cs {
					if e.Key != "f/same" || e.Resolver != "fields" || len(e.Kept) != 1 || len(e.Discarded) != 1 {
						t.Fatalf("%s: unexpected conflict entry %+v", dc, e)
					}
					kept, lost := string(e.Kept[0].Value), string(e.Discarded[0].Value)
					if kept != same || lost == same || !strings.Contains(lost, "from dc") {
						t.Fatalf("%s: entry keeps %s, discards %s; the key shows %s", dc, kept, lost, same)
					}
					logged++
				}
			}
			if logged == 0 {
				t.Fatal("the discarded field value is logged nowhere")
			}
		})
	}
}
