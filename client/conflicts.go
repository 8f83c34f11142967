package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// Version is one side of a conflict.
type Version struct {
	Origin    string  `json:"origin"`
	Dot       string  `json:"dot"`
	Value     []byte  `json:"value"`
	ValueText *string `json:"value_text,omitempty"`
	Deleted   bool    `json:"deleted"`
	HLC       uint64  `json:"hlc"`
	// HLCTime is the HLC as wall-clock time and logical counter.
	HLCTime string `json:"hlc_time"`
}

// Conflict is an entry of the conflict log: a version a resolver
// discarded (status logged), or the record resolver's open or resolved
// record.
type Conflict struct {
	ID        string    `json:"id"`
	Key       string    `json:"key"`
	Resolver  string    `json:"resolver"`
	Status    string    `json:"status"`
	Kept      []Version `json:"kept"`
	Discarded []Version `json:"discarded"`
	// Context is the key's clock when the conflict was seen; a write with
	// it supersedes every version listed.
	Context      string `json:"context"`
	DetectedHLC  uint64 `json:"detected_hlc"`
	DetectedTime string `json:"detected_time"`
	ResolvedHLC  uint64 `json:"resolved_hlc,omitempty"`
	ResolvedTime string `json:"resolved_time,omitempty"`
	// ResolvedTo, ResolvedBy and ResolvedVia say what a resolved record's
	// key held once resolved, which DC's write resolved it, and how.
	ResolvedTo  []Version `json:"resolved_to,omitempty"`
	ResolvedBy  string    `json:"resolved_by,omitempty"`
	ResolvedVia string    `json:"resolved_via,omitempty"`
}

// ConflictFilter selects conflict-log entries; the zero value selects all.
type ConflictFilter struct {
	// Status is "open", "logged" or "resolved"; "" for all.
	Status string
	// Prefix keeps the entries of keys with this prefix.
	Prefix string
	// Limit caps the entries returned; 0 returns all of them, page by page.
	Limit int
}

// Conflicts lists the conflict log, ordered by id, following its pages.
func (c *Client) Conflicts(ctx context.Context, f ConflictFilter) ([]Conflict, error) {
	var out []Conflict
	after := ""
	for {
		page := 1000
		if f.Limit > 0 {
			page = min(page, f.Limit-len(out))
		}
		q := url.Values{"limit": {strconv.Itoa(page)}}
		if f.Status != "" {
			q.Set("status", f.Status)
		}
		if f.Prefix != "" {
			q.Set("prefix", f.Prefix)
		}
		if after != "" {
			q.Set("after", after)
		}
		cl := c.options(nil)
		cl.query = q
		resp, b, err := c.do(ctx, http.MethodGet, "/v1/conflicts", nil, cl)
		if err != nil {
			return out, err
		}
		var entries []Conflict
		if err := json.Unmarshal(b, &entries); err != nil {
			return out, fmt.Errorf("client: decode the conflict log: %w", err)
		}
		out = append(out, entries...)
		after = resp.Header.Get("X-Repl-Next-After")
		if after == "" || len(entries) == 0 || f.Limit > 0 && len(out) >= f.Limit {
			return out, nil
		}
	}
}

// Conflict returns one entry of the conflict log.
func (c *Client) Conflict(ctx context.Context, id string) (Conflict, error) {
	_, b, err := c.do(ctx, http.MethodGet, "/v1/conflicts/"+url.PathEscape(id), nil, nil)
	if err != nil {
		return Conflict{}, err
	}
	var e Conflict
	if err := json.Unmarshal(b, &e); err != nil {
		return Conflict{}, fmt.Errorf("client: decode conflict %s: %w", id, err)
	}
	return e, nil
}

// Resolve resolves an open record (the record resolver) to value, or
// deletes its key when del is set: a write at this DC with the record's
// context. It returns the key as it is after.
func (c *Client) Resolve(ctx context.Context, id string, value []byte, del bool) (Item, error) {
	var body []byte
	var err error
	if del {
		body, err = json.Marshal(map[string]bool{"delete": true})
	} else {
		if value == nil {
			value = []byte{}
		}
		body, err = json.Marshal(map[string][]byte{"value": value})
	}
	if err != nil {
		return Item{}, err
	}
	cl := c.options(nil)
	cl.hdr.Set("Content-Type", "application/json")
	_, b, err := c.do(ctx, http.MethodPost, "/v1/conflicts/"+url.PathEscape(id)+"/resolve", body, cl)
	if err != nil {
		return Item{}, err
	}
	var it Item
	if err := json.Unmarshal(b, &it); err != nil {
		return Item{}, fmt.Errorf("client: decode the resolution's answer: %w", err)
	}
	return it, nil
}
