package setup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/config"
)

func testConfig(t *testing.T) config.Config {
	cfg := config.Default()
	cfg.DC, cfg.DCs, cfg.DataDir = "dc1", []string{"dc1", "dc2"}, t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestStoreOptionsCarryTheConfig: every setting of the config the store
// honours reaches changelog.Options, so that no caller (run, join) opens
// a store that decides differently from the others.
func TestStoreOptionsCarryTheConfig(t *testing.T) {
	cfg := testConfig(t)
	cfg.Partitions = 8
	cfg.Durability.Fsync = false
	cfg.ContextWait = config.Duration(7 * time.Second)
	cfg.Limits.MaxKeyBytes, cfg.Limits.MaxValueBytes = 100, 2000
	cfg.Limits.MaxTxnOps, cfg.Limits.MaxTxnBytes = 9, 90000
	cfg.ConflictLog.Retention, cfg.ConflictLog.MaxEntries = config.Duration(time.Hour), 77
	cfg.Changes.Retention, cfg.Changes.MaxBytes = config.Duration(2*time.Hour), 5<<20
	o, err := StoreOptions(cfg, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"DC", o.DC, "dc1"}, {"DCs", len(o.DCs), 2}, {"Partitions", o.Partitions, 8}, {"NoSync", o.NoSync, true},
		{"ContextWait", o.ContextWait, 7 * time.Second},
		{"MaxKeyBytes", o.Limits.MaxKeyBytes, 100}, {"MaxValueBytes", o.Limits.MaxValueBytes, 2000},
		{"TxnMaxOps", o.TxnMaxOps, 9}, {"TxnMaxBytes", o.TxnMaxBytes, 90000},
		{"ConflictRetention", o.ConflictRetention, time.Hour}, {"ConflictMaxEntries", o.ConflictMaxEntries, 77},
		{"FeedRetention", o.FeedRetention, 2 * time.Hour}, {"FeedMaxBytes", o.FeedMaxBytes, int64(5 << 20)},
		{"Clock set", o.Clock != nil, true}, {"Resolvers set", o.Resolvers != nil, true}, {"Now set", o.Now != nil, true},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestURL: the CLI reaches an external NATS at nats.url and the embedded
// one at nats.listen, which must be on a fixed port.
func TestURL(t *testing.T) {
	cfg := testConfig(t)
	cfg.NATS.URL, cfg.NATS.Listen = "", "127.0.0.1:4333"
	if u, err := URL(cfg); err != nil || u != "nats://127.0.0.1:4333" {
		t.Errorf("embedded: %q, %v", u, err)
	}
	cfg.NATS.Listen = "127.0.0.1:-1"
	if _, err := URL(cfg); err == nil || !strings.Contains(err.Error(), "random port") {
		t.Errorf("embedded on a random port: %v, want advice to set a fixed port", err)
	}
	cfg.NATS.URL = "nats://n1:4222"
	if u, err := URL(cfg); err != nil || u != "nats://n1:4222" {
		t.Errorf("external: %q, %v", u, err)
	}
}

// TestNATSOptionsTLS: a bad CA or key pair is a config error that names
// the field.
func TestNATSOptionsTLS(t *testing.T) {
	cfg := testConfig(t)
	cfg.NATS.URL = "tls://n1:4222"
	bad := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.NATS.TLS.CA = bad
	if _, err := NATSOptions(cfg, ConnOptions{}); err == nil || !strings.Contains(err.Error(), "nats.tls.ca") {
		t.Errorf("a CA file without a certificate: %v", err)
	}
	cfg.NATS.TLS = config.TLS{Cert: bad, Key: bad}
	if _, err := NATSOptions(cfg, ConnOptions{}); err == nil || !strings.Contains(err.Error(), "nats.tls.cert/key") {
		t.Errorf("a bad key pair: %v", err)
	}
}
