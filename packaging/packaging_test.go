// Package packaging_test checks the packaging files against the code they
// package: the Dockerfile's Go version is go.mod's, the compose file's and
// the Kubernetes manifest's sidecar configs load and validate, their
// probes are the sidecar's routes, and the systemd unit runs the sidecar.
// What needs a Docker engine or a cluster (building the image, applying
// the manifest) is not run here; README, "Packaging", says how to.
package packaging_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/replicatorhq/replicator/pkg/config"
)

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDockerfile(t *testing.T) {
	df := read(t, "../Dockerfile")
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(read(t, "../go.mod"))
	if goVersion == nil {
		t.Fatal("go.mod names no go version")
	}
	for _, want := range []string{
		"FROM golang:" + goVersion[1] + "-bookworm AS build", // the toolchain go.mod asks for
		"CGO_ENABLED=0 go build",                             // a static binary
		"FROM gcr.io/distroless/static-debian12:nonroot",     // no shell, no libc needed
		"USER 65532:65532",                                   // not root
		`VOLUME ["/data"]`,
		"EXPOSE 7070",
		`CMD ["/usr/local/bin/replicator", "probe", "--addr", "http://127.0.0.1:7070"]`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

func TestCompose(t *testing.T) {
	var compose struct {
		Services map[string]struct {
			Command []string `yaml:"command"`
			Volumes []string `yaml:"volumes"`
			Ports   []string `yaml:"ports"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "compose/docker-compose.yaml")), &compose); err != nil {
		t.Fatal(err)
	}
	if _, ok := compose.Services["nats"]; !ok {
		t.Error("no nats service")
	}
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		svc, ok := compose.Services[dc]
		if !ok {
			t.Errorf("no service %s", dc)
			continue
		}
		var cfgFile string
		for _, v := range svc.Volumes {
			if src, dst, _ := strings.Cut(v, ":"); strings.HasPrefix(dst, "/etc/replicator/replicator.yaml") {
				cfgFile = src
			}
		}
		cfg, err := config.Load(filepath.Join("compose", cfgFile))
		if err != nil {
			t.Errorf("%s's config %q: %v", dc, cfgFile, err)
			continue
		}
		if cfg.DC != dc || cfg.DataDir != "/data" || cfg.NATS.URL != "nats://nats:4222" || cfg.HTTP.Listen != "0.0.0.0:7070" {
			t.Errorf("%s's config: dc %s, data_dir %s, nats.url %s, http.listen %s", dc, cfg.DC, cfg.DataDir, cfg.NATS.URL, cfg.HTTP.Listen)
		}
		if len(svc.Ports) != 1 || !strings.HasPrefix(svc.Ports[0], "127.0.0.1:") || !strings.HasSuffix(svc.Ports[0], ":7070") {
			t.Errorf("%s publishes %v, want its API on the host's loopback", dc, svc.Ports)
		}
	}
}

func TestKubernetesManifest(t *testing.T) {
	dec := yaml.NewDecoder(bytes.NewReader([]byte(read(t, "k8s/app-with-replicator.yaml"))))
	kinds := map[string]map[string]any{}
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kind, _ := doc["kind"].(string)
		if doc["apiVersion"] == nil || kind == "" || doc["metadata"] == nil {
			t.Errorf("document without apiVersion, kind or metadata: %v", doc)
		}
		kinds[kind] = doc
	}
	secret := kinds["Secret"]["stringData"].(map[string]any)
	cfg, err := config.Parse([]byte(secret["replicator.yaml"].(string)))
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatalf("the sidecar's config in the Secret: %v", err)
	}
	if cfg.HTTP.Token != secret["token"] || cfg.HTTP.Listen != "0.0.0.0:7070" || cfg.DataDir != "/data" {
		t.Errorf("config token %q (Secret's %q), listen %s, data_dir %s", cfg.HTTP.Token, secret["token"], cfg.HTTP.Listen, cfg.DataDir)
	}
	spec := kinds["StatefulSet"]["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	side := spec["initContainers"].([]any)[0].(map[string]any)
	if side["restartPolicy"] != "Always" {
		t.Errorf("the sidecar is not a native sidecar (restartPolicy Always): %v", side["restartPolicy"])
	}
	probe := func(name string) string {
		return side[name].(map[string]any)["httpGet"].(map[string]any)["path"].(string)
	}
	if probe("livenessProbe") != "/healthz" || probe("readinessProbe") != "/readyz" {
		t.Errorf("probes: liveness %s, readiness %s; want /healthz and /readyz", probe("livenessProbe"), probe("readinessProbe"))
	}
	if app := spec["containers"].([]any)[0].(map[string]any); app["name"] != "app" {
		t.Errorf("the first container is %v, want the application", app["name"])
	}
}

func TestSystemdUnit(t *testing.T) {
	unit := read(t, "replicator.service")
	for _, want := range []string{
		"ExecStart=/usr/local/bin/replicator run --config /etc/replicator/replicator.yaml",
		"Restart=on-failure", "DynamicUser=yes", "StateDirectory=replicator", "[Install]",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("replicator.service lacks %q", want)
		}
	}
}
