package httpapi

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicatorhq/replicator/changelog"
)

// openAPIDoc is what TestOpenAPI reads of the reference.
type openAPIDoc struct {
	OpenAPI string `json:"openapi"`
	Paths   map[string]map[string]struct {
		Parameters []struct {
			Ref     string `json:"$ref"`
			Name    string `json:"name"`
			In      string `json:"in"`
			Example any    `json:"example"`
		} `json:"parameters"`
		RequestBody *struct{} `json:"requestBody"`
		Responses   map[string]json.RawMessage
	} `json:"paths"`
}

// routeOf turns a mux pattern, "GET /v1/kv/{key...}", into the method and
// the reference's path, "get" and "/v1/kv/{key}".
func routeOf(pattern string) (method, path string) {
	method, path, _ = strings.Cut(pattern, " ")
	return strings.ToLower(method), strings.ReplaceAll(path, "...}", "}")
}

// TestOpenAPI holds the reference served at /v1/openapi.json against the
// handler: every route the server registers is documented with its
// method, every documented operation answers (no "no route" 404, no 405),
// with a status code the reference lists for it, and every documented
// query parameter is one the handler takes.
func TestOpenAPI(t *testing.T) {
	f := newFixture(t, Options{})
	// A key, an open record and a dead letter to read.
	f.put(t, "r/doc", "B", "")
	f.remoteWrite(t, "r/doc", "C")
	open, err := f.store.Conflicts(changelog.ConflictFilter{Status: changelog.StatusOpen})
	if err != nil || len(open) != 1 {
		t.Fatalf("open records: %v %v", open, err)
	}
	dlq := &fakeDeadLetters{out: DeadLetters{DeadLetters: []DeadLetter{{Seq: 1, Reason: "malformed"}}, Total: 1}}
	h := New(StoreBackend{Store: f.store, Rules: f.rules, DeadLettersFn: dlq.read,
		DigestsFn:   func(context.Context) any { return map[string]any{"dcs": []any{}, "agree": true} },
		ReadinessFn: func() (bool, any) { return true, map[string]bool{"ready": true} },
	}, Options{Watch: closedSource{}, Registry: prometheus.NewRegistry()})

	w := serve(h, req{method: "GET", target: "/v1/openapi.json"})
	wantStatus(t, w, http.StatusOK)
	var doc openAPIDoc
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatalf("GET /v1/openapi.json is not JSON: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi %q, want 3.x", doc.OpenAPI)
	}

	var full struct {
		Components struct {
			Schemas    map[string]schema          `json:"schemas"`
			Responses  map[string]json.RawMessage `json:"responses"`
			Parameters map[string]struct {
				Name    string `json:"name"`
				Example any    `json:"example"`
			} `json:"parameters"`
		} `json:"components"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &full); err != nil {
		t.Fatal(err)
	}
	schemas := full.Components.Schemas
	for name, r := range full.Components.Responses {
		schemas["#response/"+name] = schema{Response: r}
	}

	registered := map[string]bool{}
	for _, p := range h.(*server).patterns {
		method, path := routeOf(p)
		registered[method+" "+path] = true
		if _, ok := doc.Paths[path][method]; !ok {
			t.Errorf("route %q is registered but not in openapi.json", p)
		}
	}

	examples := map[string]string{"{key}": "r%2Fdoc", "{id}": open[0].ID}
	bodies := map[string]string{
		"put /v1/kv/{key}":                "v",
		"post /v1/txn":                    `{"ops":[{"op":"put","key":"t/1","value_text":"x"}]}`,
		"post /v1/conflicts/{id}/resolve": `{"value_text":"B+C"}`,
	}
	for _, path := range slices.Sorted(maps.Keys(doc.Paths)) {
		for _, method := range slices.Sorted(maps.Keys(doc.Paths[path])) {
			op := doc.Paths[path][method]
			name := method + " " + path
			if !registered[name] {
				t.Errorf("openapi.json documents %s, which the server does not register", name)
				continue
			}
			target := path
			for k, v := range examples {
				target = strings.ReplaceAll(target, k, v)
			}
			// The route without query parameters, then with each one
			// alone (some exclude others: since and snapshot).
			targets := []string{target}
			for _, p := range op.Parameters {
				if p.In != "query" {
					continue
				}
				if p.Example == nil {
					t.Errorf("%s: query parameter %s has no example", name, p.Name)
					continue
				}
				targets = append(targets, target+"?"+url.Values{p.Name: {toString(p.Example)}}.Encode())
			}
			for _, target := range targets {
				w := serve(h, req{method: strings.ToUpper(method), target: target, body: bodies[name],
					header: http.Header{"Content-Type": {"application/json"}}})
				code := strconv.Itoa(w.Code)
				if w.Code == http.StatusMethodNotAllowed || strings.Contains(w.Body.String(), "no route") {
					t.Errorf("%s %s: %d %s: the documented route does not answer", strings.ToUpper(method), target, w.Code, w.Body.String())
				}
				if strings.Contains(w.Body.String(), "unknown query parameter") {
					t.Errorf("%s %s: a documented query parameter is refused: %s", strings.ToUpper(method), target, w.Body.String())
				}
				resp, ok := op.Responses[code]
				if !ok {
					t.Errorf("%s %s answered %s, which openapi.json does not list for it: %s", strings.ToUpper(method), target, code, w.Body.String())
					continue
				}
				checkFields(t, name+" "+code, resp, w.Body.Bytes(), schemas)
			}
		}
	}

	// A PUT with the documented X-Repl-TTL takes it, and the GET of the
	// key then shows only documented fields (expires, expires_time).
	ttl := full.Components.Parameters["TTLHeader"]
	if ttl.Name != TTLHeader || ttl.Example == nil {
		t.Fatalf("openapi.json documents the TTL header as %q with example %v; want %s with one", ttl.Name, ttl.Example, TTLHeader)
	}
	w = serve(h, req{method: "PUT", target: "/v1/kv/ttl%2Fk", body: "v", header: http.Header{TTLHeader: {toString(ttl.Example)}}})
	wantStatus(t, w, http.StatusOK)
	w = serve(h, req{method: "GET", target: "/v1/kv/ttl%2Fk"})
	wantStatus(t, w, http.StatusOK)
	if !strings.Contains(w.Body.String(), `"expires_time"`) {
		t.Fatalf("GET of a key with a TTL: %s; want its expiry", w.Body.String())
	}
	checkFields(t, "get /v1/kv/{key} with a TTL", doc.Paths["/v1/kv/{key}"]["get"].Responses["200"], w.Body.Bytes(), schemas)
}

// schema is what checkFields reads of a schema (or, for a named response,
// the response).
type schema struct {
	Ref        string            `json:"$ref"`
	Type       string            `json:"type"`
	Properties map[string]schema `json:"properties"`
	Items      *schema           `json:"items"`
	Response   json.RawMessage   `json:"-"`
}

// checkFields checks that every top-level field of a JSON answer (each
// line of an NDJSON one) is a property of the schema the reference gives
// the response.
func checkFields(t *testing.T, what string, resp json.RawMessage, body []byte, schemas map[string]schema) {
	t.Helper()
	var r struct {
		Ref     string `json:"$ref"`
		Content map[string]struct{ Schema schema }
	}
	if err := json.Unmarshal(resp, &r); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if r.Ref != "" {
		named := schemas["#response/"+strings.TrimPrefix(r.Ref, "#/components/responses/")]
		if err := json.Unmarshal(named.Response, &r); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	for ct, c := range r.Content {
		if ct != "application/json" && ct != "application/x-ndjson" {
			continue
		}
		sc := c.Schema
		if sc.Items != nil && sc.Type == "array" {
			sc = *sc.Items
		}
		if sc.Ref != "" {
			sc = schemas[strings.TrimPrefix(sc.Ref, "#/components/schemas/")]
		}
		if len(sc.Properties) == 0 {
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(string(body)), "\n") {
			var objs []map[string]json.RawMessage
			if strings.HasPrefix(line, "[") {
				json.Unmarshal([]byte(line), &objs)
			} else {
				var o map[string]json.RawMessage
				json.Unmarshal([]byte(line), &o)
				objs = append(objs, o)
			}
			for _, o := range objs {
				for field := range o {
					if _, ok := sc.Properties[field]; !ok {
						t.Errorf("%s: the answer has field %q, which openapi.json does not document: %s", what, field, line)
					}
				}
			}
		}
	}
}

func toString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	b, _ := json.Marshal(v)
	return string(b)
}
