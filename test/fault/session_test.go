package fault_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/natsapi"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// answer is an HTTP answer of the key-value routes, its JSON decoded into
// the fields the session tests read.
type answer struct {
	code   int
	header http.Header
	body   string

	Context    string   `json:"context"`
	Session    string   `json:"session"`
	Replicated int      `json:"replicated"`
	Error      string   `json:"error"`
	Values     [][]byte `json:"values"`
}

// call sends method path to m with the given headers (name, value, ...);
// body, when not nil, is the request body.
func (c *cluster) call(m *member, method, path string, body []byte, headers ...string) answer {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequest(method, m.url(path), rd)
	if err != nil {
		c.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s at %s: %v", method, path, m.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	a := answer{code: resp.StatusCode, header: resp.Header, body: string(b)}
	if resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(b, &a); err != nil {
			c.t.Fatalf("%s %s at %s: %d %q: %v", method, path, m.name, resp.StatusCode, b, err)
		}
	}
	return a
}

// want fails the test unless a has status code.
func (a answer) want(t *testing.T, what string, code int) answer {
	t.Helper()
	if a.code != code {
		t.Fatalf("%s: %d %s; want %d", what, a.code, strings.TrimSpace(a.body), code)
	}
	return a
}

// value is the one value a 200 GET shows.
func (a answer) value() string {
	if len(a.Values) != 1 {
		return fmt.Sprintf("<%d values>", len(a.Values))
	}
	return string(a.Values[0])
}

// TestSessionGuarantees (invariant 12 in docs/DESIGN.md) runs three `replicator
// run` processes in a mesh, each reaching NATS through its own proxy:
//
//   - a client writes at dc1 and reads at dc2, whose link is cut, with the
//     returned context, with the session token, and lists a prefix with
//     the tokens of several writes joined: each read waits until the link
//     heals and dc2 has applied the writes, then shows them; with the
//     link cut for longer than context_wait (5s) the read answers 503 with
//     Retry-After naming what is missing;
//   - X-Repl-Wait: all answers with replicated 3 (its latency is logged),
//     also through the NATS API; with dc3 stopped it answers 202 with
//     replicated 2, and the write is readable at dc1 and dc2;
//   - a bad X-Repl-Wait or token is a 400 naming the header, and writes
//     nothing.
func TestSessionGuarantees(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	dc1, dc2, dc3 := c.member("dc1"), c.member("dc2"), c.member("dc3")
	const hold = 400 * time.Millisecond // how long dc2's link stays cut before it heals

	// cutWrite cuts dc2's link and writes key=value at dc1.
	cutWrite := func(key, value string) answer {
		t.Helper()
		dc2.proxy.Cut()
		w := c.call(dc1, "PUT", "/v1/kv/"+key, []byte(value)).want(t, "PUT "+key+" at dc1", http.StatusOK)
		if w.Session == "" || w.header.Get("X-Repl-Session") != w.Session {
			t.Fatalf("PUT %s: session %q, header %q", key, w.Session, w.header.Get("X-Repl-Session"))
		}
		return w
	}
	// waitingRead reads at dc2 while its link is cut, healing the link
	// after hold: the read must wait for the heal and then see value.
	waitingRead := func(what, path, value string, headers ...string) {
		t.Helper()
		heal := time.AfterFunc(hold, dc2.proxy.Heal)
		defer heal.Stop()
		begin := time.Now()
		got := c.call(dc2, "GET", path, nil, headers...).want(t, what, http.StatusOK)
		took := time.Since(begin)
		if !strings.Contains(got.body, value) {
			t.Fatalf("%s: %s; want it to show %q", what, got.body, value)
		}
		if took < hold/2 {
			t.Errorf("%s answered in %s, before dc2's link healed (after %s)", what, took, hold)
		}
		t.Logf("%s waited %s for dc2's link to heal (cut for %s) and dc2 to apply the write", what, took.Round(time.Millisecond), hold)
	}

	// Read your write at another DC, by context.
	w := cutWrite("sess/a", "one")
	c.call(dc2, "GET", "/v1/kv/sess/a", nil).want(t, "GET without a context while dc2 is cut off", http.StatusNotFound)
	waitingRead("GET sess/a at dc2 with X-Repl-Context", "/v1/kv/sess/a", `"b25l"`, "X-Repl-Context", w.Context) // base64 "one"

	// By session token, given as a query parameter.
	w = cutWrite("sess/b", "two")
	waitingRead("GET sess/b at dc2 with ?min_session=", "/v1/kv/sess/b?min_session="+url.QueryEscape(w.Session), `"dHdv"`) // "two"

	// A listing with the tokens of several writes, joined by the client.
	dc2.proxy.Cut()
	var toks []string
	keys := []string{"sess/l/0", "sess/l/1", "sess/l/2", "sess/l/3", "sess/l/4", "sess/l/5"}
	for _, k := range keys {
		toks = append(toks, c.call(dc1, "PUT", "/v1/kv/"+k, []byte(k)).want(t, "PUT "+k, http.StatusOK).Session)
	}
	heal := time.AfterFunc(hold, dc2.proxy.Heal)
	list := c.call(dc2, "GET", "/v1/kv?prefix=sess/l/", nil, "X-Repl-Session", strings.Join(toks, ",")).want(t, "listing with the session", http.StatusOK)
	heal.Stop()
	if n := strings.Count(list.body, "\n"); n != len(keys) {
		t.Fatalf("the listing with the session token shows %d keys, want %d:\n%s", n, len(keys), list.body)
	}
	for _, k := range keys {
		if !strings.Contains(list.body, `"key":"`+k+`"`) {
			t.Errorf("the listing with the session token lacks %s", k)
		}
	}

	// With the link cut for longer than context_wait, 503 with Retry-After
	// naming what is missing, for the context and the token alike.
	w = cutWrite("sess/c", "three")
	for _, r := range []struct{ what, path, h, v string }{
		{"GET with X-Repl-Context", "/v1/kv/sess/c", "X-Repl-Context", w.Context},
		{"GET with X-Repl-Session", "/v1/kv/sess/c", "X-Repl-Session", w.Session},
	} {
		begin := time.Now()
		a := c.call(dc2, "GET", r.path, nil, r.h, r.v).want(t, r.what+" past context_wait", http.StatusServiceUnavailable)
		if a.header.Get("Retry-After") == "" || !strings.Contains(a.Error, "dc1") || !strings.Contains(a.Error, "retry") {
			t.Errorf("%s: Retry-After %q, error %q; want Retry-After and a message naming the missing dc1 event", r.what, a.header.Get("Retry-After"), a.Error)
		}
		if took := time.Since(begin); took < 4*time.Second {
			t.Errorf("%s answered 503 after %s, before context_wait (5s)", r.what, took)
		}
	}
	dc2.proxy.Heal()
	c.waitConverged(time.Minute)

	// Replicated acknowledgement, every DC up.
	var took []time.Duration
	for i := range 30 {
		begin := time.Now()
		a := c.call(dc1, "PUT", fmt.Sprintf("/v1/kv/sess/r%d", i), []byte("r"), "X-Repl-Wait", "all").want(t, "PUT with X-Repl-Wait: all", http.StatusOK)
		took = append(took, time.Since(begin))
		if a.Replicated != 3 || a.header.Get("X-Repl-Replicated") != "3" {
			t.Fatalf("PUT with X-Repl-Wait: all: replicated %d, header %q; want 3", a.Replicated, a.header.Get("X-Repl-Replicated"))
		}
	}
	first := took[0] // after an idle moment: no report was cooling down
	slices.Sort(took)
	p50, p90 := took[len(took)/2], took[len(took)*9/10]
	t.Logf("X-Repl-Wait: all, 3-DC mesh: the first PUT %s; %d back-to-back PUTs p50 %s, p90 %s, max %s (reports every 1s, and soon after a move, at most every 20ms)",
		first.Round(100*time.Microsecond), len(took), p50.Round(100*time.Microsecond), p90.Round(100*time.Microsecond), took[len(took)-1].Round(100*time.Microsecond))
	if p50 > 300*time.Millisecond {
		t.Errorf("X-Repl-Wait: all takes %s at the median: the DCs do not report soon after applying", p50)
	}

	// The same through the NATS API: put at dc1 waiting for every DC, then
	// get at dc2 with the session.
	nc, _ := c.js()
	natsCall := func(dc, op, req string) (natsapi.WriteReply, string) {
		t.Helper()
		m, err := nc.Request(names.APISubject(dc, op), []byte(req), 15*time.Second)
		if err != nil {
			t.Fatalf("NATS %s at %s: %v", op, dc, err)
		}
		if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
			t.Fatalf("NATS %s %s at %s: %s %s", op, req, dc, code, m.Header.Get("Nats-Service-Error"))
		}
		var r natsapi.WriteReply
		json.Unmarshal(m.Data, &r)
		return r, string(m.Data)
	}
	put, _ := natsCall("dc1", "put", `{"key":"sess/n","value_text":"nats","wait":"all"}`)
	if put.Replicated != 3 || put.Session == "" {
		t.Errorf("NATS put with wait all: %+v; want replicated 3 and a session", put)
	}
	if _, got := natsCall("dc2", "get", fmt.Sprintf(`{"key":"sess/n","session":%q}`, put.Session)); !strings.Contains(got, `"bmF0cw=="`) {
		t.Errorf("NATS get at dc2 with the session: %s", got)
	}

	// Bad input: 400 naming the header, nothing written.
	a := c.call(dc1, "PUT", "/v1/kv/sess/bad", []byte("x"), "X-Repl-Wait", "4").want(t, "X-Repl-Wait: 4 of 3 DCs", http.StatusBadRequest)
	if !strings.Contains(a.Error, "X-Repl-Wait") {
		t.Errorf("400 for X-Repl-Wait: 4 says %q", a.Error)
	}
	c.call(dc1, "PUT", "/v1/kv/sess/bad", []byte("x"), "X-Repl-Session", "dc1:0:1,dc7:0:1").want(t, "a token naming dc7", http.StatusBadRequest)
	c.call(dc1, "GET", "/v1/kv/sess/bad", nil).want(t, "GET of a key only bad requests wrote", http.StatusNotFound)
	a = c.call(dc2, "GET", "/v1/kv?prefix=sess/", nil, "X-Repl-Session", "dc1:99:1").want(t, "a token naming partition 99", http.StatusBadRequest)
	if !strings.Contains(a.Error, "X-Repl-Session") {
		t.Errorf("400 for a bad token says %q", a.Error)
	}

	// dc3 stopped: all times out at 2 of 3, the write stands.
	if err := dc3.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	a = c.call(dc1, "PUT", "/v1/kv/sess/d", []byte("four"), "X-Repl-Wait", "all", "X-Repl-Wait-Timeout", "1s").want(t, "X-Repl-Wait: all with dc3 down", http.StatusAccepted)
	if a.Replicated != 2 || a.header.Get("X-Repl-Replicated") != "2" || !strings.Contains(a.Error, "only 2 of 3 DCs") {
		t.Errorf("X-Repl-Wait: all with dc3 down: replicated %d, header %q, error %q; want 2 and an error", a.Replicated, a.header.Get("X-Repl-Replicated"), a.Error)
	}
	for _, m := range []*member{dc1, dc2} {
		got := c.call(m, "GET", "/v1/kv/sess/d", nil, "X-Repl-Session", a.Session).want(t, "GET sess/d at "+m.name, http.StatusOK)
		if got.value() != "four" {
			t.Errorf("sess/d at %s: %s; want four", m.name, got.value())
		}
	}
	a = c.call(dc1, "DELETE", "/v1/kv/sess/d", nil, "X-Repl-Context", a.Context, "X-Repl-Wait", "2").want(t, "X-Repl-Wait: 2 with dc3 down", http.StatusOK)
	if a.Replicated != 2 {
		t.Errorf("X-Repl-Wait: 2 with dc3 down: replicated %d", a.Replicated)
	}

	dc3.start()
	dc3.waitHealthy(30 * time.Second)
	c.waitConverged(time.Minute)
	if _, status, err := sidecar.Get(c.client, "dc3", dc3.url(""), "sess/d"); err != nil || status != http.StatusNotFound {
		t.Errorf("sess/d at dc3 after it came back: %d %v; want the delete (404)", status, err)
	}
	c.checkLogs()
}
