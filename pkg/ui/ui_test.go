package ui

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	Handler().ServeHTTP(w, httptest.NewRequest(method, target, nil))
	return w
}

func TestHandlerServesAssets(t *testing.T) {
	tests := []struct {
		target, contentType, contains string
	}{
		{"/ui", "text/html; charset=utf-8", `<svg id="topology-svg"`},
		{"/ui/", "text/html; charset=utf-8", `<script src="/ui/app.js"`},
		{"/ui/app.js", "text/javascript; charset=utf-8", "/v1/deadletters?limit=20"},
		{"/ui/style.css", "text/css; charset=utf-8", "#topology-svg"},
	}
	for _, tt := range tests {
		w := get(t, http.MethodGet, tt.target)
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s: status %d, want 200", tt.target, w.Code)
		}
		if got := w.Header().Get("Content-Type"); got != tt.contentType {
			t.Errorf("GET %s: Content-Type %q, want %q", tt.target, got, tt.contentType)
		}
		if !strings.Contains(w.Body.String(), tt.contains) {
			t.Errorf("GET %s: body lacks %q", tt.target, tt.contains)
		}
		for _, h := range []string{"Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy"} {
			if w.Header().Get(h) == "" {
				t.Errorf("GET %s: no %s header", tt.target, h)
			}
		}
	}
	if w := get(t, http.MethodHead, "/ui"); w.Code != http.StatusOK || w.Body.Len() != 0 {
		t.Errorf("HEAD /ui: status %d with %d body bytes, want 200 and none", w.Code, w.Body.Len())
	}
}

func TestHandlerUnknownAsset(t *testing.T) {
	for _, target := range []string{"/ui/nope.js", "/ui/assets/index.html", "/ui/index.html"} {
		w := get(t, http.MethodGet, target)
		if w.Code != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", target, w.Code)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" || !strings.Contains(w.Body.String(), `"error"`) {
			t.Errorf("GET %s: %q body %q, want a JSON error", target, ct, w.Body.String())
		}
	}
}

// TestPageIsSelfContained checks that the page loads nothing from outside
// the sidecar and that every element the script looks up exists.
func TestPageIsSelfContained(t *testing.T) {
	html := get(t, http.MethodGet, "/ui").Body.String()
	js := get(t, http.MethodGet, "/ui/app.js").Body.String()
	css := get(t, http.MethodGet, "/ui/style.css").Body.String()
	for name, body := range map[string]string{"index.html": html, "app.js": js, "style.css": css} {
		// The SVG namespace is a name, not a download.
		body = strings.ReplaceAll(body, "http://www.w3.org/2000/svg", "")
		if m := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/`).FindString(body); m != "" {
			t.Errorf("%s refers to %q: the page must work offline", name, m)
		}
		if strings.Contains(body, "innerHTML") {
			t.Errorf("%s uses innerHTML; render API data with textContent", name)
		}
	}
	for _, m := range regexp.MustCompile(`\$\('([a-z-]+)'\)`).FindAllStringSubmatch(js, -1) {
		if !strings.Contains(html, `id="`+m[1]+`"`) {
			t.Errorf("app.js looks up #%s, which index.html lacks", m[1])
		}
	}
}
