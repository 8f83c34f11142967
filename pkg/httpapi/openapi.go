package httpapi

import (
	_ "embed"
	"net/http"
)

// OpenAPI is the API reference: an OpenAPI 3 document of every route,
// parameter, header, field and status code, served at GET
// /v1/openapi.json. TestOpenAPI holds it against the routes.
//
//go:embed openapi.json
var OpenAPI []byte

// serveOpenAPI serves the reference; it holds no data and needs no token.
func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(OpenAPI)
}
