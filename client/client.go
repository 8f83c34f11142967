// Package client is a Go client of the replicator sidecar's HTTP API
// (GET /v1/openapi.json is its reference): reads with every sibling and
// the context to write with, writes and deletes that carry that context,
// a read-modify-write helper that resolves siblings, transactions, the
// conflict log, session tokens, the change feed with automatic resume from
// the last cursor, and retries of 503 answers after their Retry-After.
//
// An application talks to the sidecar of its own DC, usually on loopback:
//
//	c, err := client.New("http://127.0.0.1:7070", client.WithToken(token))
//	item, err := c.Get(ctx, "cart/alice")            // client.ErrNotFound: no live value
//	_, err = c.Put(ctx, "cart/alice", v, client.Context(item.Context))
//	_, err = c.Update(ctx, "cart/alice", func(cur client.Item) ([]byte, error) {
//		return merge(cur.Values), nil // every concurrent value, one result
//	})
//
// A write without a context is a blind write: under the siblings and
// record resolvers it is concurrent with what the DC holds. Pass the
// context of the read the write is based on (Context), or use Update.
//
// Errors from the sidecar are *Error values carrying the HTTP status and
// the sidecar's message. A 503 with Retry-After (a context or session
// token this DC has not caught up with, an unreachable home DC) wrote
// nothing and is retried, WithRetries times (default 3), after the delay
// it names; a 202 (a write whose X-Repl-Wait timed out) stood and is not
// retried: WriteResult.Replicated says how far it got.
//
// API: this package is the stable Go client of the HTTP API described in
// docs/INTERFACES.md.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Client talks to one sidecar. It is safe for concurrent use.
type Client struct {
	base    string
	token   string
	hc      *http.Client
	retries int
	maxWait time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends the sidecar's http.token as a bearer token.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithHTTPClient sets the HTTP client; default one without a timeout of its
// own (streams such as Changes run until their context ends; bound a call
// with its context).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithRetries sets how often a 503 answer with Retry-After is retried
// (default 3; 0 never retries), waiting at most maxWait each time
// (default 5s), or what Retry-After says if less.
func WithRetries(n int, maxWait time.Duration) Option {
	return func(c *Client) { c.retries, c.maxWait = n, maxWait }
}

// New returns a client of the sidecar at addr ("http://127.0.0.1:7070",
// or "127.0.0.1:7070").
func New(addr string, opts ...Option) (*Client, error) {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("client: address %q: want http://host:port", addr)
	}
	c := &Client{base: strings.TrimRight(u.String(), "/"), hc: &http.Client{}, retries: 3, maxWait: 5 * time.Second}
	for _, o := range opts {
		o(c)
	}
	if c.maxWait <= 0 {
		c.maxWait = 5 * time.Second
	}
	return c, nil
}

// ErrNotFound is the error of Get for a key without a live value; the
// returned Item still carries the context to create the key with.
var ErrNotFound = errors.New("client: no live value")

// Error is an answer of the sidecar with a status of 400 or more.
type Error struct {
	Status int
	// Message is the sidecar's "error": what was wrong and what to do.
	Message string
	// RetryAfter is the delay a 503 named, if any.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	return fmt.Sprintf("replicator: %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Sibling is one version a key holds.
type Sibling struct {
	Value   []byte `json:"value"`
	Deleted bool   `json:"deleted"`
	Origin  string `json:"origin"`
	Dot     string `json:"dot"`
	HLC     uint64 `json:"hlc"`
}

// Item is a key as the sidecar shows it.
type Item struct {
	Key string `json:"key"`
	// Context is the key's clock: send it with the next write of the key
	// (Context option) so that the write supersedes what this read saw.
	Context string `json:"context"`
	// Values are what the key's resolver shows: one value, or several
	// concurrent ones (Conflict) under the siblings and record resolvers.
	Values [][]byte `json:"values"`
	// Siblings are every version the key holds, tombstones included.
	Siblings []Sibling `json:"siblings"`
	Conflict bool      `json:"conflict"`
	Resolver string    `json:"resolver"`
}

// WriteResult is the answer to a write.
type WriteResult struct {
	Key     string `json:"key"`
	Context string `json:"context"`
	Dot     string `json:"dot"`
	// Session is the write's session token merged with the one sent.
	Session string `json:"session"`
	// Replicated is how many DCs had applied the write (with Wait).
	Replicated int `json:"replicated,omitempty"`
	// Error is set when a Wait timed out: the write stands (HTTP 202);
	// do not retry it.
	Error string `json:"error,omitempty"`
}

// Opt is an option of one call.
type Opt func(*call)

type call struct {
	hdr     http.Header
	query   url.Values
	session *Session
}

// Context sends the key's context from a read (X-Repl-Context). On a
// write, the write supersedes the versions that read saw ("{}": the read
// found the key absent); on a read, the sidecar first waits until this DC
// covers it.
func Context(kctx string) Opt { return func(c *call) { c.hdr.Set("X-Repl-Context", kctx) } }

// TTL gives a Put's value a time to live (X-Repl-TTL): it expires then at
// every DC, and reads anywhere no longer show it.
func TTL(d time.Duration) Opt { return func(c *call) { c.hdr.Set("X-Repl-TTL", d.String()) } }

// SessionToken sends a session token (X-Repl-Session): the call waits until
// this DC has applied every write it names.
func SessionToken(tok string) Opt {
	return func(c *call) {
		if tok != "" {
			c.hdr.Set("X-Repl-Session", tok)
		}
	}
}

// InSession sends s's token with the call and takes the token its answer
// carries, so that every later call in s sees the writes made in s.
func InSession(s *Session) Opt { return func(c *call) { c.session = s } }

// Wait makes a write answer only once n DCs, this one included, have
// applied it (X-Repl-Wait), within timeout (0: the sidecar's 5s).
func Wait(n int, timeout time.Duration) Opt {
	return func(c *call) {
		c.hdr.Set("X-Repl-Wait", strconv.Itoa(n))
		if timeout > 0 {
			c.hdr.Set("X-Repl-Wait-Timeout", timeout.String())
		}
	}
}

// WaitAll is Wait for every DC.
func WaitAll(timeout time.Duration) Opt {
	return func(c *call) {
		Wait(0, timeout)(c)
		c.hdr.Set("X-Repl-Wait", "all")
	}
}

// Session accumulates the session tokens of a client's writes (read your
// writes across keys and DCs): pass it with InSession. The zero value is
// an empty session; it is safe for concurrent use.
type Session struct {
	mu struct {
		sync.Mutex
		seq map[string]uint64 // "<dc>:<partition>" -> highest seq
	}
}

// Token returns the session's token, "" before its first write.
func (s *Session) Token() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	parts := make([]string, 0, len(s.mu.seq))
	for k, n := range s.mu.seq {
		parts = append(parts, k+":"+strconv.FormatUint(n, 10))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// take merges a token into the session: per DC and partition, the highest
// sequence (what the sidecar does with joined tokens).
func (s *Session) take(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range strings.Split(tok, ",") {
		i := strings.LastIndexByte(e, ':')
		if i < 0 {
			continue
		}
		n, err := strconv.ParseUint(e[i+1:], 10, 64)
		if err != nil {
			continue
		}
		if s.mu.seq == nil {
			s.mu.seq = map[string]uint64{}
		}
		if k := strings.TrimSpace(e[:i]); n > s.mu.seq[k] {
			s.mu.seq[k] = n
		}
	}
}

func (c *Client) options(opts []Opt) *call {
	cl := &call{hdr: http.Header{}, query: url.Values{}}
	for _, o := range opts {
		o(cl)
	}
	if cl.session != nil && cl.hdr.Get("X-Repl-Session") == "" {
		SessionToken(cl.session.Token())(cl)
	}
	return cl
}

// keyPath is the path of a key: each byte as written, '/' included.
func keyPath(key string) string { return "/v1/kv/" + url.PathEscape(key) }

// do sends a request, retrying a 503 that names Retry-After, and returns
// the answer with its body read; a status of 400 or more, other than
// those in ok, is an *Error.
func (c *Client) do(ctx context.Context, method, path string, body []byte, cl *call, ok ...int) (*http.Response, []byte, error) {
	for attempt := 0; ; attempt++ {
		resp, err := c.send(ctx, method, path, body, cl)
		if err != nil {
			return nil, nil, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return resp, nil, fmt.Errorf("client: read the answer of %s %s: %w", method, path, err)
		}
		if resp.StatusCode < 400 || containsInt(ok, resp.StatusCode) {
			return resp, b, nil
		}
		e := errorOf(resp, b)
		if e.Status != http.StatusServiceUnavailable || e.RetryAfter == 0 || attempt >= c.retries {
			return resp, b, e
		}
		t := time.NewTimer(min(e.RetryAfter, c.maxWait))
		select {
		case <-ctx.Done():
			t.Stop()
			return resp, b, e
		case <-t.C:
		}
	}
}

// send sends one request.
func (c *Client) send(ctx context.Context, method, path string, body []byte, cl *call) (*http.Response, error) {
	u := c.base + path
	if cl != nil && len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if cl != nil {
		for k, v := range cl.hdr {
			req.Header[k] = v
		}
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	return resp, nil
}

func errorOf(resp *http.Response, body []byte) *Error {
	e := &Error{Status: resp.StatusCode}
	var eb struct{ Error string }
	if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
		e.Message = eb.Error
	} else {
		e.Message = strings.TrimSpace(string(body))
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
		e.RetryAfter = time.Duration(max(s, 1)) * time.Second
	}
	return e
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// Get reads a key. A key without a live value returns ErrNotFound with an
// Item carrying the key and the context to create it with.
func (c *Client) Get(ctx context.Context, key string, opts ...Opt) (Item, error) {
	resp, b, err := c.do(ctx, http.MethodGet, keyPath(key), nil, c.options(opts), http.StatusNotFound)
	if err != nil {
		return Item{}, err
	}
	var it Item
	if err := json.Unmarshal(b, &it); err != nil {
		return Item{}, fmt.Errorf("client: decode the read of %q: %w", key, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		if it.Key == "" { // a 404 of another kind: no such route
			return Item{}, errorOf(resp, b)
		}
		return Item{Key: key, Context: it.Context}, ErrNotFound
	}
	return it, nil
}

// Put writes value to key; pass Context with the context of the read the
// write is based on. Without it, under the siblings or record resolver,
// the value is kept beside every value the DC holds; a key already
// holding limits.max_siblings of them answers 409 (an *Error), and Update
// is the write to use.
func (c *Client) Put(ctx context.Context, key string, value []byte, opts ...Opt) (WriteResult, error) {
	if value == nil {
		value = []byte{}
	}
	return c.write(ctx, http.MethodPut, key, value, opts)
}

// Delete deletes key; without Context it deletes what this DC holds.
func (c *Client) Delete(ctx context.Context, key string, opts ...Opt) (WriteResult, error) {
	return c.write(ctx, http.MethodDelete, key, nil, opts)
}

// Incr adds by (non-zero; negative subtracts) to a counter key: POST
// /v1/kv/{key}?op=incr.
func (c *Client) Incr(ctx context.Context, key string, by int64, opts ...Opt) (WriteResult, error) {
	body, _ := json.Marshal(map[string]int64{"by": by})
	return c.writeTo(ctx, http.MethodPost, keyPath(key)+"?op=incr", key, body, opts)
}

// Patch merges an RFC 7386 merge patch (a JSON object; a null removes a
// field) into a fields key: PATCH /v1/kv/{key}.
func (c *Client) Patch(ctx context.Context, key string, patch []byte, opts ...Opt) (WriteResult, error) {
	return c.write(ctx, http.MethodPatch, key, patch, opts)
}

// Add adds elements (JSON values) to a set key: POST /v1/kv/{key}?op=add.
func (c *Client) Add(ctx context.Context, key string, elements []json.RawMessage, opts ...Opt) (WriteResult, error) {
	return c.setOp(ctx, "add", key, elements, opts)
}

// Remove removes elements (JSON values) from a set key, the adds this DC
// has seen of them: POST /v1/kv/{key}?op=remove.
func (c *Client) Remove(ctx context.Context, key string, elements []json.RawMessage, opts ...Opt) (WriteResult, error) {
	return c.setOp(ctx, "remove", key, elements, opts)
}

func (c *Client) setOp(ctx context.Context, op, key string, elements []json.RawMessage, opts []Opt) (WriteResult, error) {
	body, err := json.Marshal(map[string][]json.RawMessage{"elements": elements})
	if err != nil {
		return WriteResult{}, fmt.Errorf("client: %s %q: elements: %w", op, key, err)
	}
	return c.writeTo(ctx, http.MethodPost, keyPath(key)+"?op="+op, key, body, opts)
}

func (c *Client) write(ctx context.Context, method, key string, value []byte, opts []Opt) (WriteResult, error) {
	return c.writeTo(ctx, method, keyPath(key), key, value, opts)
}

func (c *Client) writeTo(ctx context.Context, method, path, key string, value []byte, opts []Opt) (WriteResult, error) {
	cl := c.options(opts)
	_, b, err := c.do(ctx, method, path, value, cl)
	if err != nil {
		return WriteResult{}, err
	}
	var wr WriteResult
	if err := json.Unmarshal(b, &wr); err != nil {
		return WriteResult{}, fmt.Errorf("client: decode the answer to %s %q: %w", method, key, err)
	}
	if cl.session != nil {
		cl.session.take(wr.Session)
	}
	return wr, nil
}

// Update reads key, calls fn with what it holds (every concurrent value
// in Values and Siblings; an Item with no values for a key without a live
// value) and writes fn's result with the read's context, so the write
// replaces exactly what fn saw: the read-modify-write that resolves
// siblings. fn returning ErrDelete deletes the key instead.
func (c *Client) Update(ctx context.Context, key string, fn func(cur Item) ([]byte, error), opts ...Opt) (WriteResult, error) {
	cur, err := c.Get(ctx, key, readOpts(opts)...)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return WriteResult{}, err
	}
	v, err := fn(cur)
	if errors.Is(err, ErrDelete) {
		return c.Delete(ctx, key, append(opts, Context(cur.Context))...)
	}
	if err != nil {
		return WriteResult{}, err
	}
	return c.Put(ctx, key, v, append(opts, Context(cur.Context))...)
}

// ErrDelete, returned by an Update function, deletes the key.
var ErrDelete = errors.New("client: delete the key")

// readOpts keeps the options a read takes from a write's: the session.
func readOpts(opts []Opt) []Opt {
	probe := &call{hdr: http.Header{}, query: url.Values{}}
	for _, o := range opts {
		o(probe)
	}
	var out []Opt
	if probe.session != nil {
		out = append(out, InSession(probe.session))
	} else if tok := probe.hdr.Get("X-Repl-Session"); tok != "" {
		out = append(out, SessionToken(tok))
	}
	return out
}

// List returns the keys with a live value under prefix, from one
// consistent snapshot of this DC, in key order; limit 0 lists them all.
func (c *Client) List(ctx context.Context, prefix string, limit int, opts ...Opt) ([]Item, error) {
	cl := c.options(opts)
	cl.query.Set("prefix", prefix)
	if limit > 0 {
		cl.query.Set("limit", strconv.Itoa(limit))
	}
	_, b, err := c.do(ctx, http.MethodGet, "/v1/kv", nil, cl)
	if err != nil {
		return nil, err
	}
	var out []Item
	dec := json.NewDecoder(bytes.NewReader(b))
	for dec.More() {
		var it Item
		if err := dec.Decode(&it); err != nil {
			return out, fmt.Errorf("client: decode the listing: %w", err)
		}
		out = append(out, it)
	}
	return out, nil
}

// TxnOp is one op of a transaction: a put (Value) or, with Delete, a
// delete; Context as for a single write.
type TxnOp struct {
	Key     string
	Value   []byte
	Delete  bool
	Context string
}

// TxnResult is the answer to a transaction.
type TxnResult struct {
	Results []struct {
		Key     string `json:"key"`
		Context string `json:"context"`
		Dot     string `json:"dot"`
	} `json:"results"`
	Session    string `json:"session"`
	Replicated int    `json:"replicated,omitempty"`
	Error      string `json:"error,omitempty"`
}

// Txn commits ops at this DC as one transaction (POST /v1/txn): all or
// nothing, here and at every other DC.
func (c *Client) Txn(ctx context.Context, ops []TxnOp, opts ...Opt) (TxnResult, error) {
	type wireOp struct {
		Op      string  `json:"op"`
		Key     string  `json:"key"`
		Value   *[]byte `json:"value,omitempty"`
		Context string  `json:"context,omitempty"`
	}
	req := struct {
		Ops []wireOp `json:"ops"`
	}{}
	for _, op := range ops {
		w := wireOp{Op: "put", Key: op.Key, Context: op.Context}
		if op.Delete {
			w.Op = "del"
		} else {
			v := op.Value
			if v == nil {
				v = []byte{}
			}
			w.Value = &v
		}
		req.Ops = append(req.Ops, w)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return TxnResult{}, err
	}
	cl := c.options(opts)
	cl.hdr.Set("Content-Type", "application/json")
	_, b, err := c.do(ctx, http.MethodPost, "/v1/txn", body, cl)
	if err != nil {
		return TxnResult{}, err
	}
	var tr TxnResult
	if err := json.Unmarshal(b, &tr); err != nil {
		return TxnResult{}, fmt.Errorf("client: decode the transaction's answer: %w", err)
	}
	if cl.session != nil {
		cl.session.take(tr.Session)
	}
	return tr, nil
}

// Ready reports whether the sidecar's DC has caught up since it started
// (GET /readyz).
func (c *Client) Ready(ctx context.Context) (bool, error) {
	resp, _, err := c.do(ctx, http.MethodGet, "/readyz", nil, nil, http.StatusServiceUnavailable)
	if err != nil {
		return false, err
	}
	return resp.StatusCode == http.StatusOK, nil
}
