package cluster_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func write(t *testing.T, c *cluster.Cluster, dc, key, value string) {
	t.Helper()
	if _, err := c.Store(dc).Write(context.Background(), changelog.WriteOp{Key: key, Value: []byte(value)}); err != nil {
		t.Fatalf("write %s at %s: %v", key, dc, err)
	}
}

// TestNodesCutHealRestart: a ring of nodes behind proxies converges; a
// cut DC misses a write until healed; a restarted DC and a restarted NATS
// server both catch up.
func TestNodesCutHealRestart(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Topology: config.Ring, Proxies: true, Partitions: 4, ReportInterval: 100 * time.Millisecond})
	write(t, c, "dc1", "a", "1")
	cluster.Eventually(t, 20*time.Second, "a at dc3", func() (bool, string) { return c.HasKey("dc3", "a", []byte("1")) })

	c.Cut("dc2")
	write(t, c, "dc2", "b", "2")
	cluster.Hold(200*time.Millisecond, nil) // the cut lasts a moment
	if ok, _ := c.HasKey("dc1", "b", nil); ok {
		t.Fatal("dc1 got b from dc2 while dc2's link was cut")
	}
	c.Heal("dc2")
	c.WaitConverged(t, 30*time.Second)

	if err := c.RestartDC(context.Background(), "dc3"); err != nil {
		t.Fatal(err)
	}
	if err := c.Server().Restart(); err != nil {
		t.Fatal(err)
	}
	write(t, c, "dc3", "c", "3")
	c.WaitConverged(t, 30*time.Second)
	if s := c.Stats("dc3"); s.Published == 0 {
		t.Errorf("dc3's stats across its restart show nothing published: %+v", s)
	}
}

// TestEngines: bare engines in a star replicate, a stopped Replicator's
// writes wait in its outbox, and the config a DC would run with parses
// back from its YAML.
func TestEngines(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Topology: config.Star, Engine: true, Partitions: 4})
	if err := c.StopReplicator("dc2"); err != nil {
		t.Fatal(err)
	}
	write(t, c, "dc2", "x", "y")
	if d := c.Store("dc2").OutboxDepth(); d == 0 {
		t.Fatal("a write with the Replicator stopped left nothing in the outbox")
	}
	if err := c.StartReplicator(context.Background(), "dc2"); err != nil {
		t.Fatal(err)
	}
	cluster.Eventually(t, 20*time.Second, "dc3 caught up with dc2", func() (bool, string) { return c.CaughtUp("dc3", "dc2") })
	c.WaitConverged(t, 20*time.Second)

	b, err := cluster.YAML(c.Config("dc3"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(b)
	if err != nil {
		t.Fatalf("the YAML of dc3's config does not parse: %v\n%s", err, b)
	}
	if cfg.Hub != "dc1" || cfg.Topology != config.Star || cfg.NATS.URL != c.NATSURL("dc3") {
		t.Errorf("dc3's config came back as hub %q topology %q url %q", cfg.Hub, cfg.Topology, cfg.NATS.URL)
	}
}
