package security_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/demo"
	"github.com/replicatorhq/replicator/pkg/node"
)

// TestHTTPOffLoopbackNeedsToken: a sidecar whose API would listen on every
// interface without http.token does not start, and says which setting is
// missing. The config check (node.New) refuses it; Start checks again
// (httpapi.CheckListen) before it listens.
func TestHTTPOffLoopbackNeedsToken(t *testing.T) {
	cfg := demo.Config("dc1", []string{"dc1", "dc2"}, "mesh", t.TempDir())
	cfg.HTTP.Listen, cfg.HTTP.Token = "0.0.0.0:0", ""
	n, err := node.New(cfg, node.Options{})
	if err == nil {
		defer n.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = n.Start(ctx)
	}
	if err == nil || !strings.Contains(err.Error(), "http.token") {
		t.Fatalf("a sidecar with http.listen 0.0.0.0:0 and no http.token: err %v; want a refusal naming http.token", err)
	}
	t.Logf("refused: %v", err)
}
