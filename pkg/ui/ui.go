// Package ui is the sidecar's status page: one HTML page with its script
// and style sheet, embedded in the binary, that polls the HTTP API
// (/v1/status, /v1/conflicts, /v1/deadletters) and draws the topology with
// each link's lag, the applied vectors, recent conflicts and dead letters.
//
// The page needs no network beyond the sidecar: no CDN, no framework. It
// holds no data itself, so httpapi serves it without the bearer token; the
// script sends the token on every API request. A user hands it over once in
// the URL fragment, /ui#token=T (a fragment never reaches a server or its
// logs), or in the query, /ui?token=T; the script keeps it in the tab's
// sessionStorage and removes it from the address bar. After a 401 the page
// also offers a field to type it in.
//
// Mount Handler on GET /ui and GET /ui/:
//
//	mux.Handle("GET /ui", ui.Handler())
//	mux.Handle("GET /ui/", ui.Handler())
//
// Internal to the sidecar: the web UI's files, not a stable Go API.
package ui

import (
	"embed"
	"encoding/json"
	"net/http"
)

//go:embed assets
var assets embed.FS

// Prefix is the path the page lives under.
const Prefix = "/ui"

// files maps each request path to its asset and content type.
var files = map[string]struct{ name, contentType string }{
	Prefix:                {"assets/index.html", "text/html; charset=utf-8"},
	Prefix + "/":          {"assets/index.html", "text/html; charset=utf-8"},
	Prefix + "/app.js":    {"assets/app.js", "text/javascript; charset=utf-8"},
	Prefix + "/style.css": {"assets/style.css", "text/css; charset=utf-8"},
}

// csp allows only the page's own script, style sheet and API calls: the
// page renders API data (keys, values, error text) as text, and this
// keeps anything that slipped through from running or calling out.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the page and its assets; any other path under /ui/ gets
// a JSON 404 like the rest of the API.
func Handler() http.Handler {
	return http.HandlerFunc(serve)
}

func serve(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	f, ok := files[r.URL.Path]
	if !ok {
		h.Set("Content-Type", "application/json")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(map[string]string{"error": "no such file in the status page; open " + Prefix})
		return
	}
	b, err := assets.ReadFile(f.name)
	if err != nil {
		// The file map and the embedded directory are built together.
		panic("ui: embedded asset missing: " + f.name)
	}
	h.Set("Content-Type", f.contentType)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", csp)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	// The page and the binary change together; revalidating is cheap.
	h.Set("Cache-Control", "no-cache")
	if r.Method == http.MethodHead {
		return
	}
	w.Write(b)
}
