package ui_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// findBrowser returns a Chromium-family browser on PATH. Without one the
// test is skipped, unless REPL_REQUIRE_BROWSER=1 (as in CI) makes it fail.
func findBrowser(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no chromium, chromium-browser or google-chrome on PATH; install one (Debian: apt-get install chromium) to run the status page test"
	if os.Getenv("REPL_REQUIRE_BROWSER") == "1" {
		t.Fatal(msg + " (REPL_REQUIRE_BROWSER=1 makes this a failure)")
	}
	t.Skip(msg)
	return ""
}

// checkLabels checks that no two link labels of the drawing overlap and
// that each lies inside the view box.
func checkLabels(t *testing.T, svg string) {
	t.Helper()
	vb := regexp.MustCompile(`viewBox="(-?[\d.]+) (-?[\d.]+) ([\d.]+) ([\d.]+)"`).FindStringSubmatch(svg)
	if vb == nil {
		t.Fatalf("no viewBox: %s", svg)
	}
	f := func(s string) float64 {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	x0, y0, w, h := f(vb[1]), f(vb[2]), f(vb[3]), f(vb[4])
	type box struct {
		id         string
		x, y, w, h float64
	}
	var boxes []box
	for _, m := range regexp.MustCompile(`data-testid="(link-lag-[^"]+)" data-box="([-\d.]+) ([-\d.]+) ([\d.]+) ([\d.]+)"`).FindAllStringSubmatch(svg, -1) {
		b := box{m[1], f(m[2]), f(m[3]), f(m[4]), f(m[5])}
		if b.x < x0 || b.y < y0 || b.x+b.w > x0+w || b.y+b.h > y0+h {
			t.Errorf("label %s at %+v leaves the view box %v", b.id, b, vb[1:])
		}
		for _, o := range boxes {
			if b.x < o.x+o.w && o.x < b.x+b.w && b.y < o.y+o.h && o.y < b.y+b.h {
				t.Errorf("labels %s %+v and %s %+v overlap", b.id, b, o.id, o)
			}
		}
		boxes = append(boxes, b)
	}
	if len(boxes) == 0 {
		t.Errorf("no labelled links in %s", svg)
	}
}

// dumpDOM loads url in headless Chromium, lets the page run for 5 s of
// virtual time (its polls included), and returns the DOM it rendered.
func dumpDOM(t *testing.T, browser, url string) string {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions",
		"--user-data-dir="+filepath.Join(home, "profile"),
		"--virtual-time-budget=5000", "--dump-dom", url)
	cmd.Env = append(os.Environ(), "HOME="+home)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s --dump-dom: %v\nstderr:\n%s", browser, err, stderr.String())
	}
	return string(out)
}

// text returns the text of the element with data-testid id in dom: what
// stands between the end of its start tag and the next tag.
func text(t *testing.T, dom, id string) string {
	t.Helper()
	m := regexp.MustCompile(`data-testid="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("no element with data-testid %q in the rendered page:\n%s", id, dom)
	}
	return m[1]
}

// element returns the element with data-testid id, up to its closing tag
// (the first one of its name, so for elements without nested namesakes).
func element(t *testing.T, dom, tag, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<` + tag + `[^>]*data-testid="` + regexp.QuoteMeta(id) + `".*?</` + tag + `>`).FindString(dom)
	if m == "" {
		t.Fatalf("no <%s> with data-testid %q in the rendered page:\n%s", tag, id, dom)
	}
	return m
}

// TestStatusPage runs three mesh DCs with writes, a conflict and a poison
// message, opens dc1's status page in headless Chromium with the token in
// the URL fragment, and checks what it drew: the three DCs, the six links
// with live lag on the two into dc1 and "?" on the rest, the applied
// vectors, the conflict with both versions and the dead letter. Without the
// token the page shows the API's 401 in its error banner instead.
func TestStatusPage(t *testing.T) {
	browser := findBrowser(t)
	c := startCluster(t)
	for i := range 5 {
		for _, dc := range []string{"dc1", "dc2", "dc3"} {
			c.write(dc, fmt.Sprintf("user/%s-%d", dc, i), "v")
		}
	}
	c.conflict("title/contested", "from-dc1", "from-dc2")
	c.conflict("title/binary", "\x00\x01\xff", "\xfe\xfd")
	c.conflict("doc/contract", "terms-dc1", "terms-dc2")
	c.resolve("dc1", "doc/contract", "merged terms")
	c.poison("dc2")
	c.waitDeadLetter("dc1", "dc2", "malformed")
	c.waitConverged()

	dom := dumpDOM(t, browser, c.base("dc1")+"/ui#token="+token)
	if t.Failed() {
		return
	}

	if banner := element(t, dom, "div", "error-banner"); !strings.Contains(banner, "hidden") {
		t.Errorf("the error banner shows with the right token: %s", banner)
	}
	if form := element(t, dom, "form", "token-form"); !strings.Contains(form, "hidden") {
		t.Errorf("the token form shows with the right token: %s", form)
	}
	if got := text(t, dom, "dc"); got != "dc1" {
		t.Errorf("page names DC %q, want dc1", got)
	}
	svg := element(t, dom, "svg", "topology-svg")
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		node := element(t, svg, "g", "dc-node-"+dc)
		if !strings.Contains(node, "<circle") || !strings.Contains(node, ">"+dc+"</text>") {
			t.Errorf("DC %s is not drawn as a labelled circle: %s", dc, node)
		}
	}
	if n := strings.Count(svg, `data-testid="dc-node-`); n != 3 {
		t.Errorf("%d DC nodes drawn, want 3", n)
	}
	if n := strings.Count(svg, `data-testid="link-lag-`); n != 6 {
		t.Errorf("%d links drawn, want 6 (a full mesh of 3)", n)
	}
	measured := regexp.MustCompile(`^(\d+) ev · (\d+\.\d) s$`)
	for _, up := range []string{"dc2", "dc3"} {
		label := text(t, svg, "link-lag-"+up+"-dc1")
		m := measured.FindStringSubmatch(label)
		if m == nil {
			t.Errorf("link %s→dc1 is labelled %q, want its measured lag \"N ev · S.s s\"", up, label)
			continue
		}
		events := text(t, dom, "lag-events-"+up)
		if _, err := strconv.ParseUint(events, 10, 64); err != nil {
			t.Errorf("links table: lag events of %s is %q, want a number", up, events)
		}
		if secs := text(t, dom, "lag-seconds-"+up); !regexp.MustCompile(`^\d+\.\d{3}$`).MatchString(secs) {
			t.Errorf("links table: lag seconds of %s is %q, want a number", up, secs)
		}
	}
	for _, l := range [][2]string{{"dc1", "dc2"}, {"dc1", "dc3"}, {"dc2", "dc3"}, {"dc3", "dc2"}} {
		if label := text(t, svg, "link-lag-"+l[0]+"-"+l[1]); label != "lag ?" {
			t.Errorf("link %s→%s, which dc1 cannot measure, is labelled %q, want \"lag ?\"", l[0], l[1], label)
		}
	}

	// dc1 applied 5 writes and the three conflicting ones from dc2; dc2
	// and dc3 report their vectors every 200 ms.
	if got := text(t, dom, "applied-dc1-dc2"); got != "8" {
		t.Errorf("dc1's applied count from dc2 is %q, want 8", got)
	}
	if got := text(t, dom, "applied-dc1-dc1"); got != "9" {
		t.Errorf("dc1's own count is %q, want 9 (5 writes, 3 contested and a resolution)", got)
	}
	for _, peer := range []string{"dc2", "dc3"} {
		if row := element(t, dom, "tr", "applied-row-"+peer); !strings.Contains(row, "(reported)") {
			t.Errorf("%s's applied vector is not shown as reported: %s", peer, row)
		}
	}

	// Each peer's liveness and report age, readiness, and every DC's
	// digest, which agree once the writes have replicated.
	if got := text(t, dom, "ready"); got != "yes" {
		t.Errorf("ready %q, want yes", got)
	}
	for _, peer := range []string{"dc2", "dc3"} {
		if got := text(t, dom, "peer-state-"+peer); got != "alive" {
			t.Errorf("%s is %q, want alive", peer, got)
		}
		if got := text(t, dom, "peer-age-"+peer); !regexp.MustCompile(`^\d+\.\d s ago$`).MatchString(got) {
			t.Errorf("%s's report age is %q, want \"N.N s ago\"", peer, got)
		}
		if node := element(t, svg, "g", "dc-node-"+peer); !strings.Contains(node, `data-state="alive"`) {
			t.Errorf("%s is not drawn alive: %s", peer, node)
		}
	}
	if got := text(t, dom, "digest-verdict"); got != "— all DCs agree" {
		t.Errorf("digest verdict %q, want all DCs agree", got)
	}
	for _, dc := range []string{"dc1", "dc2", "dc3"} {
		if got := text(t, dom, "digest-"+dc); !regexp.MustCompile(`^[0-9a-f]{16}…$`).MatchString(got) {
			t.Errorf("digest of %s shows %q", dc, got)
		}
	}
	checkLabels(t, svg)

	// Printable values show as text, others as base64; HLCs as wall-clock
	// time beside the raw number.
	rows := regexp.MustCompile(`(?s)<tr data-testid="conflict-row".*?</tr>`).FindAllString(dom, -1)
	if len(rows) != 3 {
		t.Fatalf("%d conflict rows, want 3:\n%s", len(rows), dom)
	}
	for key, values := range map[string][]string{
		"title/contested": {">from-dc1<", ">from-dc2<"},
		"title/binary":    {">base64:AAH/<", ">base64:/v0=<"},
	} {
		var row string
		for _, r := range rows {
			if strings.Contains(r, `data-key="`+key+`"`) {
				row = r
			}
		}
		for _, want := range append(values, ">"+key+"<", ">lww<", "origin dc1", "origin dc2", `data-testid="kept"`, `data-testid="discarded"`) {
			if !strings.Contains(row, want) {
				t.Errorf("conflict row of %s lacks %q: %s", key, want, row)
			}
		}
	}
	for _, r := range rows {
		if !regexp.MustCompile(`data-testid="detected"[^>]*><span class="wall">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC /\d+</span> <span class="dim raw">hlc \d+</span>`).MatchString(r) {
			t.Errorf("conflict row without a wall-clock detection time next to its HLC: %s", r)
		}
	}
	var record string
	for _, r := range rows {
		if strings.Contains(r, `data-key="doc/contract"`) {
			record = r
		}
	}
	resolved := element(t, record, "td", "resolved")
	for _, want := range []string{">merged terms<", ">resolved<", "by dc1 via resolve", `data-testid="resolved-at"`} {
		if !strings.Contains(record, want) {
			t.Errorf("the resolved record's row lacks %q: %s", want, resolved)
		}
	}
	if got := text(t, dom, "dlq-total"); got != "1" {
		t.Errorf("dead-letter total %q, want 1", got)
	}
	if reason := text(t, dom, "deadletter-reason"); !strings.Contains(reason, "malformed") {
		t.Errorf("dead letter reason %q, want it to say malformed", reason)
	}
	if got := text(t, dom, "updated"); got == "never" || got == "" {
		t.Errorf("last updated %q after polling", got)
	}

	// Without the token every API call answers 401 and the banner says so.
	dom = dumpDOM(t, browser, c.base("dc1")+"/ui")
	banner := element(t, dom, "div", "error-banner")
	if strings.Contains(banner, "hidden") || !strings.Contains(banner, "401") || !strings.Contains(banner, "bearer token") {
		t.Errorf("without the token the banner does not show the 401: %s", banner)
	}
	if got := text(t, dom, "updated"); got != "never" {
		t.Errorf("without the token last updated is %q, want never", got)
	}
}
