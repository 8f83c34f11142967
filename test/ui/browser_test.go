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
	c.poison("dc2")
	c.waitDeadLetter("dc1", "dc2", "malformed")

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

	// dc1 applied 5 writes and the two conflicting ones from dc2; dc2 and
	// dc3 report their vectors every 200 ms.
	if got := text(t, dom, "applied-dc1-dc2"); got != "7" {
		t.Errorf("dc1's applied count from dc2 is %q, want 7", got)
	}
	if got := text(t, dom, "applied-dc1-dc1"); got != "7" {
		t.Errorf("dc1's own count is %q, want 7 (5 writes and 2 contested)", got)
	}
	for _, peer := range []string{"dc2", "dc3"} {
		if row := element(t, dom, "tr", "applied-row-"+peer); !strings.Contains(row, "(reported)") {
			t.Errorf("%s's applied vector is not shown as reported: %s", peer, row)
		}
	}

	// Printable values show as text, others as base64.
	rows := regexp.MustCompile(`(?s)<tr data-testid="conflict-row".*?</tr>`).FindAllString(dom, -1)
	if len(rows) != 2 {
		t.Fatalf("%d conflict rows, want 2:\n%s", len(rows), dom)
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
