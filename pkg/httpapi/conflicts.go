package httpapi

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// conflictJSON is a conflict log entry as the API shows it:
// changelog.Conflict's JSON, with its clock in text form ("context", the
// context a resolution supersedes) and wall-clock times beside the HLCs.
type conflictJSON = changelog.Conflict

func toConflictJSON(c changelog.Conflict) conflictJSON { return c }

var conflictStatuses = []string{changelog.StatusOpen, changelog.StatusLogged, changelog.StatusResolved}

func (s *server) digest(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, nil) {
		return
	}
	d, err := s.b.Digest()
	if err != nil {
		s.backendError(w, r, "digest", err)
		return
	}
	parts := make([]string, len(d.Partitions))
	for i, p := range d.Partitions {
		parts[i] = hex.EncodeToString(p[:])
	}
	writeJSON(w, http.StatusOK, struct {
		Digest     string   `json:"digest"`
		Keys       int      `json:"keys"`
		Partitions []string `json:"partitions"`
	}{d.Hex(), d.Keys, parts})
}

// digests answers GET /v1/digests: this DC's digest and each peer's,
// fetched over NATS when asked. Each costs one scan of that DC's keys.
func (s *server) digests(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, nil) {
		return
	}
	d, err := s.b.Digests(r.Context())
	if errors.Is(err, ErrNoPeers) {
		writeError(w, http.StatusNotFound, "no peer digests: this sidecar runs without replication; GET /v1/digest gives its own")
		return
	}
	if err != nil {
		s.backendError(w, r, "digests", err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// Paging of GET /v1/conflicts: a listing holds at most limit entries
// (default DefaultConflictLimit); when more follow, NextAfterHeader names
// the last id, to pass as after= for the next page.
const (
	DefaultConflictLimit = 1000
	MaxConflictLimit     = 100_000
	NextAfterHeader      = "X-Repl-Next-After"
)

func (s *server) listConflicts(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, []string{"status", "prefix", "limit", "after"}) {
		return
	}
	status := r.URL.Query().Get("status")
	if status != "" && !slices.Contains(conflictStatuses, status) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("status %q is not a conflict status; use open, logged or resolved, or leave it out for all", status))
		return
	}
	prefix, ok := s.prefixParam(w, r)
	if !ok {
		return
	}
	limit, ok := limitParam(w, r)
	if !ok {
		return
	}
	switch {
	case limit == 0:
		limit = DefaultConflictLimit
	case limit > MaxConflictLimit:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %d is over %d; page with after=<the last id> instead", limit, MaxConflictLimit))
		return
	}
	// One more than asked tells whether another page follows.
	cs, err := s.b.Conflicts(changelog.ConflictFilter{Status: status, KeyPrefix: prefix, Limit: limit + 1, After: r.URL.Query().Get("after")})
	if err != nil {
		s.backendError(w, r, "list conflicts", err)
		return
	}
	if len(cs) > limit {
		cs = cs[:limit]
		w.Header().Set(NextAfterHeader, cs[limit-1].ID)
	}
	out := make([]conflictJSON, len(cs))
	for i, c := range cs {
		out[i] = toConflictJSON(c)
	}
	writeJSON(w, http.StatusOK, out)
}

// conflict returns the {id} path's conflict, or answers and returns false.
func (s *server) conflict(w http.ResponseWriter, r *http.Request) (changelog.Conflict, bool) {
	id := r.PathValue("id")
	c, err := s.b.Conflict(id)
	if errors.Is(err, changelog.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no conflict with id %q; list them with GET /v1/conflicts", id))
		return c, false
	}
	if err != nil {
		s.backendError(w, r, "read conflict "+strconv.Quote(id), err)
		return c, false
	}
	return c, true
}

func (s *server) getConflict(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, nil) {
		return
	}
	if c, ok := s.conflict(w, r); ok {
		writeJSON(w, http.StatusOK, toConflictJSON(c))
	}
}

// resolution is the body of POST /v1/conflicts/{id}/resolve.
type resolution struct {
	Value     []byte  `json:"value"`
	ValueText *string `json:"value_text"`
	Delete    bool    `json:"delete"`
}

func (s *server) resolveConflict(w http.ResponseWriter, r *http.Request) {
	if !s.query(w, r, nil) {
		return
	}
	// The value travels base64-encoded inside JSON: allow for that.
	body, ok := s.readBody(w, r, max(s.opts.MaxBodyBytes, int64(s.opts.MaxValueBytes))/3*4+4096)
	if !ok {
		return
	}
	res, ok := s.parseResolution(w, body)
	if !ok {
		return
	}
	c, ok := s.conflict(w, r)
	if !ok {
		return
	}
	switch c.Status {
	case changelog.StatusOpen:
	case changelog.StatusLogged:
		writeError(w, http.StatusConflict, fmt.Sprintf("conflict %s was resolved automatically by the %s resolver; it is the audit record of a discarded version and has nothing to resolve. To bring that value back, PUT it to /v1/kv/{key}", c.ID, c.Resolver))
		return
	default:
		writeError(w, http.StatusConflict, fmt.Sprintf("conflict %s is %s, not open; read the key with GET /v1/kv/{key} and write over it if it still needs a change", c.ID, c.Status))
		return
	}
	ctx := c.Clock.Clone()
	if ctx == nil {
		ctx = vclock.VV{} // never a blind write: supersede what the record lists
	}
	op := changelog.WriteOp{Key: c.Key, Value: res.Value, Delete: res.Delete, Resolve: true, Context: ctx}
	if res.ValueText != nil {
		op.Value = []byte(*res.ValueText)
	}
	wr, err := s.b.Write(r.Context(), op)
	if err != nil {
		s.backendError(w, r, "resolve conflict "+strconv.Quote(c.ID), err)
		return
	}
	out, _ := view(s.b.Resolver(c.Key), c.Key, wr.State)
	if wr.Event != nil {
		out.Dot = wr.Event.Dot.String()
	}
	w.Header().Set(ContextHeader, out.Context)
	writeJSON(w, http.StatusOK, out)
}

// parseResolution decodes and checks a resolution body, or answers 4xx and
// returns false.
func (s *server) parseResolution(w http.ResponseWriter, body []byte) (resolution, bool) {
	var res resolution
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	err := dec.Decode(&res)
	if err == nil && dec.Decode(new(json.RawMessage)) != io.EOF {
		err = errors.New("the body holds more than one JSON value")
	}
	const usage = `send {"value": "<base64>"}, {"value_text": "<text>"} or {"delete": true}`
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("resolution body is not valid: %v; %s", err, usage))
		return res, false
	}
	given := 0
	for _, set := range []bool{res.Value != nil, res.ValueText != nil, res.Delete} {
		if set {
			given++
		}
	}
	if given != 1 {
		writeError(w, http.StatusBadRequest, "a resolution needs exactly one of value, value_text and delete: "+usage)
		return res, false
	}
	n := len(res.Value)
	if res.ValueText != nil {
		n = len(*res.ValueText)
	}
	if n > s.opts.MaxValueBytes {
		writeError(w, http.StatusRequestEntityTooLarge, "resolve: "+changelog.ValueTooLarge(n, s.opts.MaxValueBytes).Error())
		return res, false
	}
	return res, true
}
