// Package apierr is the one mapping from the errors of a read or write to
// the status the sidecar's APIs answer with: the HTTP API (pkg/httpapi),
// the NATS API (pkg/natsapi, whose error codes are HTTP statuses) and
// home-DC writes (pkg/home, whose replies carry one). Each API words its
// own messages; the status is decided here. It is internal to the sidecar.
package apierr

import (
	"context"
	"errors"
	"net/http"

	"github.com/replicatorhq/replicator/changelog"
)

// StatusError is an error that knows its status, such as a home-DC
// refusal (home.Error); it says why itself.
type StatusError interface {
	error
	HTTPStatus() int
}

// Status returns the HTTP status for err, first match wins:
//
//	an error with its own status (StatusError)       that status
//	changelog.ErrValueTooLarge                         413
//	changelog.ErrTooManySiblings                       409
//	changelog.ErrBadInput                              400
//	changelog.ErrNotFound                              404
//	changelog.ErrContextAhead, changelog.ErrClosed,
//	context.Canceled, context.DeadlineExceeded         503
//	anything else (the sidecar's fault: log it)        500
//
// A store stopped by a failed fsync (changelog.ErrFailed, invariant 17 in
// docs/DESIGN.md) is a 500: the sidecar exits for a restart.
func Status(err error) int {
	var se StatusError
	switch {
	case errors.As(err, &se):
		return se.HTTPStatus()
	case errors.Is(err, changelog.ErrValueTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, changelog.ErrTooManySiblings):
		return http.StatusConflict
	case errors.Is(err, changelog.ErrBadInput):
		return http.StatusBadRequest
	case errors.Is(err, changelog.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, changelog.ErrContextAhead), errors.Is(err, changelog.ErrClosed),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// RetryHere reports whether err's 503 invites the same request at the same
// DC in a moment (Retry-After): this DC is catching up with what the
// client has seen, or a key's home cannot write just now. A closing store
// or a canceled request does not: retry against a running sidecar.
func RetryHere(err error) bool {
	var se StatusError
	if errors.As(err, &se) {
		return se.HTTPStatus() == http.StatusServiceUnavailable
	}
	return errors.Is(err, changelog.ErrContextAhead)
}

// InputStatus is the status of an input the API refused before it reached
// the store (a malformed body, a transaction over its bounds): 413 for a
// value over the value limit (changelog.ErrValueTooLarge), 400 for
// anything else.
func InputStatus(err error) int {
	if errors.Is(err, changelog.ErrValueTooLarge) {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}
