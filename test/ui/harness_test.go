// Package ui_test runs three DCs in this process on an embedded NATS
// server, each serving its HTTP API, and checks what the status page and
// GET /v1/deadletters show of them: the dead letters a poison message
// leaves, and (in headless Chromium) the rendered topology, lag, applied
// vectors, conflicts and dead letters.
package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/demo"
	"github.com/replicatorhq/replicator/pkg/httpapi"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// token is the bearer token every DC's API requires in these tests, so the
// page is shown to send it.
const token = "ui-test-token"

// uiCluster is three mesh DCs, dc1..dc3, serving HTTP on loopback.
type uiCluster struct {
	*cluster.Cluster
	t *testing.T
}

func startCluster(t *testing.T) *uiCluster {
	t.Helper()
	c := cluster.Start(t, cluster.Options{
		HTTP: true, ReportInterval: 200 * time.Millisecond,
		Config: func(cfg *config.Config) {
			cfg.Resolvers.Rules = demo.Rules(cfg.DCs)
			cfg.HTTP.Token = token
		},
		Logger: func(dc string) *slog.Logger { return testutil.Logger(t, dc) },
	})
	return &uiCluster{Cluster: c, t: t}
}

// base is dc's HTTP API address.
func (c *uiCluster) base(dc string) string { return c.BaseURL(dc) }

// get fetches path from dc's API with the token and decodes the JSON
// answer into v; it returns the status code.
func (c *uiCluster) get(dc, path string, v any) (int, error) {
	req, err := http.NewRequest(http.MethodGet, c.base(dc)+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return resp.StatusCode, fmt.Errorf("GET %s: %d %q: %v", path, resp.StatusCode, b, err)
	}
	return resp.StatusCode, nil
}

// write writes key=value at dc without a context (a blind write).
func (c *uiCluster) write(dc, key, value string) {
	c.t.Helper()
	if _, err := c.Node(dc).Write(context.Background(), changelog.WriteOp{Key: key, Value: []byte(value)}); err != nil {
		c.t.Fatalf("write %s at %s: %v", key, dc, err)
	}
}

// conflict makes dc1 write key=v1 and dc2 key=v2, blindly; each blind
// write is concurrent with what the other DC wrote, so once both have
// arrived, dc1's conflict log holds the key with both versions. It waits
// for that.
func (c *uiCluster) conflict(key, v1, v2 string) {
	c.t.Helper()
	c.write("dc1", key, v1)
	c.write("dc2", key, v2)
	cluster.Eventually(c.t, 30*time.Second, "conflict on "+key+" at dc1", func() (bool, string) {
		cs, err := c.Node("dc1").Store().Conflicts(changelog.ConflictFilter{KeyPrefix: key})
		if err != nil {
			return false, err.Error()
		}
		return len(cs) > 0, fmt.Sprintf("%d conflicts", len(cs))
	})
}

// resolve resolves dc's open record of key to value through
// POST /v1/conflicts/{id}/resolve, and waits until every DC shows it.
func (c *uiCluster) resolve(dc, key, value string) {
	c.t.Helper()
	var open []changelog.Conflict
	cluster.Eventually(c.t, 30*time.Second, "open record of "+key+" at "+dc, func() (bool, string) {
		var err error
		open, err = c.Node(dc).Store().Conflicts(changelog.ConflictFilter{KeyPrefix: key, Status: changelog.StatusOpen})
		return err == nil && len(open) == 1, fmt.Sprintf("%d open: %v", len(open), err)
	})
	req, err := http.NewRequest(http.MethodPost, c.base(dc)+"/v1/conflicts/"+open[0].ID+"/resolve", strings.NewReader(`{"value_text":`+strconv.Quote(value)+`}`))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("resolve %s at %s: %s", key, dc, resp.Status)
	}
}

// waitConverged waits until every DC holds the same digest and has
// published its outbox.
func (c *uiCluster) waitConverged() {
	c.t.Helper()
	cluster.Eventually(c.t, 30*time.Second, "convergence", func() (bool, string) {
		var first string
		for _, n := range c.Nodes() {
			dc := n.Store().DC()
			d, err := n.Store().Digest()
			if err != nil || n.Store().OutboxDepth() > 0 {
				return false, fmt.Sprintf("%s: %v, outbox %d", dc, err, n.Store().OutboxDepth())
			}
			if first == "" {
				first = d.Hex()
			} else if d.Hex() != first {
				return false, "digests differ"
			}
		}
		return true, ""
	})
}

// poison publishes a message that is not an event onto up's stream; every
// DC consuming up dead-letters it as malformed.
func (c *uiCluster) poison(up string) {
	c.t.Helper()
	nc, err := nats.Connect(c.URL())
	if err != nil {
		c.t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := &nats.Msg{Subject: names.Subject(up, 0), Data: []byte("\xc1 this is not msgpack"), Header: nats.Header{}}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		c.t.Fatalf("publish poison to %s: %v", up, err)
	}
}

// deadLetters is the body of GET /v1/deadletters.
type deadLetters = httpapi.DeadLetters

// waitDeadLetter waits until dc's GET /v1/deadletters lists a message
// from up with a reason containing reason, and returns the answer.
func (c *uiCluster) waitDeadLetter(dc, up, reason string) deadLetters {
	c.t.Helper()
	var d deadLetters
	cluster.Eventually(c.t, 30*time.Second, "dead letter from "+up+" at "+dc, func() (bool, string) {
		d = deadLetters{}
		code, err := c.get(dc, "/v1/deadletters", &d)
		if err != nil || code != http.StatusOK {
			return false, fmt.Sprintf("status %d: %v", code, err)
		}
		for _, m := range d.DeadLetters {
			if m.Upstream == up && strings.Contains(m.Reason, reason) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", d)
	})
	return d
}

// waitDeadLetterCount waits until dc's dead-letter stream holds n messages.
func (c *uiCluster) waitDeadLetterCount(dc string, n uint64) deadLetters {
	c.t.Helper()
	var d deadLetters
	cluster.Eventually(c.t, 30*time.Second, fmt.Sprintf("%d dead letters at %s", n, dc), func() (bool, string) {
		d = deadLetters{}
		code, err := c.get(dc, "/v1/deadletters", &d)
		if err != nil || code != http.StatusOK {
			return false, fmt.Sprintf("status %d: %v", code, err)
		}
		return d.Total >= n, fmt.Sprintf("%+v", d)
	})
	return d
}
