package natsapi

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/httpapi"
	"github.com/replicatorhq/replicator/resolve"
)

func TestServe(t *testing.T) {
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	st, err := changelog.Open("/s", changelog.Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 2, FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rules, _ := resolve.NewRules(resolve.Siblings(), nil)
	svc, err := Serve(nc, "dc1", st, rules)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()

	call := func(op string, req any) (*nats.Msg, error) {
		b, _ := json.Marshal(req)
		return nc.Request(Subject("dc1", op), b, 5*time.Second)
	}
	text := "hello"
	m, err := call("put", Request{Key: "k", ValueText: &text})
	if err != nil || m.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("put: %v %v", m, err)
	}
	var w WriteReply
	if err := json.Unmarshal(m.Data, &w); err != nil || w.Dot != "dc1:1" {
		t.Fatalf("put reply %s: %v", m.Data, err)
	}
	m, _ = call("get", Request{Key: "k"})
	var v httpapi.View
	if err := json.Unmarshal(m.Data, &v); err != nil || len(v.Values) != 1 || string(v.Values[0]) != "hello" {
		t.Fatalf("get reply %s: %v", m.Data, err)
	}
	m, _ = call("txn", map[string]any{"ops": []any{
		map[string]any{"op": "put", "key": "t/a", "value_text": "1"},
		map[string]any{"op": "put", "key": "t/b", "value": "Mg=="},
		map[string]any{"op": "del", "key": "k", "context": w.Context},
	}})
	var tr httpapi.TxnResponse
	if err := json.Unmarshal(m.Data, &tr); err != nil || len(tr.Results) != 3 || tr.Results[1].Key != "t/b" || tr.Results[2].Dot == "" {
		t.Fatalf("txn reply %s (%s): %v", m.Data, m.Header.Get("Nats-Service-Error"), err)
	}
	m, _ = call("get", Request{Key: "t/b"})
	if err := json.Unmarshal(m.Data, &v); err != nil || len(v.Values) != 1 || string(v.Values[0]) != "2" {
		t.Fatalf("get t/b after the txn %s: %v", m.Data, err)
	}
	w.Context = tr.Results[2].Context
	m, _ = call("del", Request{Key: "k", Context: w.Context})
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		t.Fatalf("del: error %s", code)
	}
	for _, c := range []struct {
		op   string
		req  any
		code string
	}{
		{"get", Request{Key: "k"}, "404"},
		{"get", "not an object", "400"},
		{"put", Request{Key: ""}, "400"},
		{"put", Request{Key: "k", Context: "{bad"}, "400"},
		{"put", Request{Key: "bad\nkey"}, "400"},
		{"txn", map[string]any{"ops": []any{}}, "400"},
		{"txn", map[string]any{"ops": []any{map[string]any{"op": "put", "key": "a"}}}, "400"},
		{"txn", map[string]any{"ops": []any{map[string]any{"op": "frob", "key": "a", "value_text": "x"}}}, "400"},
		{"txn", map[string]any{"ops": []any{
			map[string]any{"op": "put", "key": "a", "value_text": "x"},
			map[string]any{"op": "put", "key": "a", "value_text": "y"},
		}}, "400"},
		{"txn", map[string]any{"ops": []any{}, "extra": 1}, "400"},
	} {
		m, err := call(c.op, c.req)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Header.Get("Nats-Service-Error-Code"); got != c.code {
			t.Errorf("%s %v: code %q (%s), want %s", c.op, c.req, got, m.Header.Get("Nats-Service-Error"), c.code)
		}
	}
	// Discoverable the way `nats micro ls` finds services.
	m, err = nc.Request("$SRV.INFO.replicator", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Name      string `json:"name"`
		Endpoints []struct {
			Subject string `json:"subject"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(m.Data, &info); err != nil || info.Name != "replicator" || len(info.Endpoints) != 4 {
		t.Fatalf("service info %s: %v", m.Data, err)
	}
}
