package apierr

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/replicatorhq/replicator/changelog"
)

type refusal struct{ status int }

func (r refusal) Error() string   { return "refused" }
func (r refusal) HTTPStatus() int { return r.status }

// TestStatus is the one table the HTTP API, the NATS API and home-DC
// replies answer errors with: input errors are the client's (4xx), a DC
// that has not caught up or is closing is 503 (retry), anything else the
// sidecar's fault (500). A context the home DC has not caught up with is
// 503, as it is for a local write (invariant 12 in docs/DESIGN.md).
func TestStatus(t *testing.T) {
	for _, c := range []struct {
		err       error
		want      int
		retryHere bool
	}{
		{&changelog.ContextAheadError{DC: "dc2", Named: 5}, http.StatusServiceUnavailable, true},
		{fmt.Errorf("write: %w", changelog.ErrBadInput), http.StatusBadRequest, false},
		{changelog.ValueTooLarge(2000, 1000), http.StatusRequestEntityTooLarge, false},
		{&changelog.TxnError{Index: 1, Err: &changelog.TooManySiblingsError{Key: "k", Siblings: 100, Max: 100}}, http.StatusConflict, false},
		{fmt.Errorf("%w: conflict %q", changelog.ErrNotFound, "x"), http.StatusNotFound, false},
		{changelog.ErrClosed, http.StatusServiceUnavailable, false},
		{fmt.Errorf("wait: %w", context.Canceled), http.StatusServiceUnavailable, false},
		{context.DeadlineExceeded, http.StatusServiceUnavailable, false},
		{fmt.Errorf("forward: %w", refusal{http.StatusConflict}), http.StatusConflict, false},
		{refusal{http.StatusServiceUnavailable}, http.StatusServiceUnavailable, true},
		{fmt.Errorf("%w (disk gone)", changelog.ErrFailed), http.StatusInternalServerError, false},
		{errors.New("disk on fire"), http.StatusInternalServerError, false},
	} {
		if got := Status(c.err); got != c.want {
			t.Errorf("Status(%v) = %d, want %d", c.err, got, c.want)
		}
		if got := RetryHere(c.err); got != c.retryHere {
			t.Errorf("RetryHere(%v) = %v, want %v", c.err, got, c.retryHere)
		}
	}
}

func TestInputStatus(t *testing.T) {
	if got := InputStatus(changelog.ValueTooLarge(2000, 1000)); got != http.StatusRequestEntityTooLarge {
		t.Errorf("a value too large: %d, want 413", got)
	}
	if got := InputStatus(errors.New("op 0: a put needs a value")); got != http.StatusBadRequest {
		t.Errorf("a malformed op: %d, want 400", got)
	}
}
