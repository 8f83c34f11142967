package natsapi

// The change feed over NATS: request/reply pages on repl.api.<dc>.changes.
//
// Why pages and not a push subscription: the reader holds its cursor and
// asks for the next page when it is ready, so being slow never cuts it off
// and the sidecar keeps no state per reader (no subscription to flow-
// control, acknowledge, redeliver or clean up after a reader that
// vanished); resuming after a restart of either side is the same request
// with the stored cursor; every reply is bounded to fit the server's
// max_payload; and it goes through the same micro service, subjects and
// permissions as the rest of the NATS API. A push form with flow control
// would amount to a JetStream consumer per reader over a second copy of
// the feed. A reader that wants changes as they happen follows the HTTP
// feed (GET /v1/changes?feed=continuous), or asks again once it has
// handled a page.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/micro"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/httpapi"
)

// Bounds of a changes request's limit.
const (
	DefaultChangesLimit = 100
	MaxChangesLimit     = 1000
)

// ChangesRequest is the body of repl.api.<dc>.changes.
type ChangesRequest struct {
	// Since is the cursor to continue after (the reply's next); 0 starts
	// at the oldest change held.
	Since uint64 `json:"since"`
	// Prefix keeps the changes of keys starting with it.
	Prefix string `json:"prefix,omitempty"`
	// Limit bounds the changes in the reply: default 100, at most 1000.
	Limit int `json:"limit,omitempty"`
}

// ChangesReply answers a changes request.
type ChangesReply struct {
	// Changes are the changes after the request's since, in cursor order,
	// each as a line of GET /v1/changes.
	Changes []httpapi.ChangeLine `json:"changes"`
	// Next is the cursor to send as since in the next request.
	Next uint64 `json:"next"`
	// More reports that changes after Next were held when the reply was
	// made: ask again at once.
	More bool `json:"more"`
}

// changesHeadroom is kept out of max_payload for the reply's headers and
// the JSON around the changes.
const changesHeadroom = 4 << 10

func (h handler) changes(r micro.Request, maxPayload int64) {
	var req ChangesRequest
	dec := json.NewDecoder(bytes.NewReader(r.Data()))
	dec.DisallowUnknownFields()
	if len(r.Data()) > 0 {
		if err := dec.Decode(&req); err != nil {
			r.Error("400", `request is not {"since": cursor, "prefix": P, "limit": N}: `+err.Error(), nil)
			return
		}
	}
	switch {
	case req.Limit < 0 || req.Limit > MaxChangesLimit:
		r.Error("400", fmt.Sprintf("limit %d is out of range; want 1 to %d, or leave it out for %d", req.Limit, MaxChangesLimit, DefaultChangesLimit), nil)
		return
	case len(req.Prefix) > event.DefaultLimits().MaxKeyBytes:
		r.Error("400", fmt.Sprintf("prefix is %d bytes, longer than any key, so it can match nothing", len(req.Prefix)), nil)
		return
	case req.Limit == 0:
		req.Limit = DefaultChangesLimit
	}
	budget := int(max(maxPayload-changesHeadroom, 1024))
	page, err := h.store.ReadFeed(changelog.FeedQuery{Since: req.Since, Prefix: req.Prefix, Limit: req.Limit, MaxBytes: budget / 2})
	if err != nil {
		if errors.Is(err, changelog.ErrFeedOff) {
			r.Error("404", err.Error(), nil)
			return
		}
		var gone *changelog.FeedGoneError
		if errors.As(err, &gone) {
			r.Error("410", gone.Error(), nil)
			return
		}
		fail(r, err)
		return
	}
	reply := ChangesReply{Changes: []httpapi.ChangeLine{}, Next: page.Next, More: page.More}
	size := 0
	for _, e := range page.Entries {
		line := httpapi.NewChangeLine(h.rules.For(e.Key), e)
		b, err := json.Marshal(line)
		if err != nil {
			fail(r, err)
			return
		}
		if size+len(b)+1 > budget {
			if len(reply.Changes) == 0 {
				r.Error("413", fmt.Sprintf("the change at cursor %d (key %q) is %d bytes as JSON, over this server's max_payload of %d; read it with GET /v1/changes?since=%d&limit=1",
					e.Cursor, e.Key, len(b), maxPayload, req.Since), nil)
				return
			}
			reply.Next, reply.More = reply.Changes[len(reply.Changes)-1].Cursor, true
			break
		}
		size += len(b) + 1
		reply.Changes = append(reply.Changes, line)
	}
	r.RespondJSON(reply)
}
