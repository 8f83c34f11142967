package node

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// alertRules is the shape of a Prometheus rule file, as far as
// configs/prometheus-alerts.yml uses it; unknown fields are refused.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// checkAlertRules parses configs/prometheus-alerts.yml and checks that
// every rule is complete and that every replicator_, go_ and process_
// metric its expressions name is among the series of metrics, the text a
// running sidecar's /metrics served.
func checkAlertRules(t *testing.T, metrics string) {
	t.Helper()
	data, err := os.ReadFile("../../configs/prometheus-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rf alertRules
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("configs/prometheus-alerts.yml: %v", err)
	}
	served := map[string]bool{}
	for _, line := range strings.Split(metrics, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		served[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
	}
	name := regexp.MustCompile(`\b(?:replicator|go|process)_[a-z_]+\b`)
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" || r.Labels["severity"] == "" ||
				r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("rule %q: want alert, expr, labels.severity, annotations.summary and .description", r.Alert)
			}
			for _, m := range name.FindAllString(r.Expr, -1) {
				if !served[m] {
					t.Errorf("rule %s names %s, which a sidecar does not serve", r.Alert, m)
				}
			}
		}
	}
	if n < 10 {
		t.Errorf("%d alert rules, want at least 10", n)
	}
}
