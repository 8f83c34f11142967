package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/home"
	"github.com/replicatorhq/replicator/pkg/httpapi"
	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/natsapi"
)

// A DC may run several sidecars, shards, each owning a disjoint set of
// partitions with its own store (invariant 16 in docs/DESIGN.md). Any
// shard takes any request: one for a key of another shard's partition is
// forwarded to that shard over NATS request/reply, on the owner's
// subject repl.shard.<dc>.<partition>; the whole DC's views (digest,
// status, conflicts, key listings) are gathered from every shard on
// repl.shards.<dc>.

// Headers of the shards' protocol.
const (
	// HeaderShardKind says what a forwarded message carries: "http" (an
	// HTTP request, msgpack shardHTTP), "api.<op>" (a NATS API request,
	// as the client sent it, answered as the endpoint answers),
	// "txn.state" (shardtxn.go) or "owner" (checkAlone).
	HeaderShardKind = "Repl-Shard-Kind"
	// HeaderShard names the answering shard ("i of S") and
	// HeaderShardPartitions its partitions ("0,4,8"), on gather replies
	// and on every HTTP answer of a sharded DC.
	HeaderShard           = "Repl-Shard"
	HeaderShardPartitions = "Repl-Shard-Partitions"
	// HeaderShardHop marks an HTTP request a shard forwarded: the
	// receiver serves it from its own store without routing it again.
	HeaderShardHop = "X-Repl-Shard-Hop"
	// HeaderShardView says whose view an HTTP answer is: "dc" (gathered
	// from every shard) or "shard" (this shard's partitions only).
	HeaderShardView = "X-Repl-View"
)

// shardWait bounds a forwarded request and a gather.
const shardWait = 30 * time.Second

// gatherPage is the page a sharded DC's key listing has when it names no
// limit; X-Repl-Next-After says where the next starts.
const gatherPage = 1000

// gatherWait bounds how long a gather waits for every partition's owner.
const gatherWait = 3 * time.Second

// shardHTTP is an HTTP request or answer carried over NATS.
type shardHTTP struct {
	Method string              `msgpack:"m,omitempty"`
	URI    string              `msgpack:"u,omitempty"`
	Status int                 `msgpack:"s,omitempty"`
	Header map[string][]string `msgpack:"h,omitempty"`
	Body   []byte              `msgpack:"b,omitempty"`
}

// shards is one shard's part in its DC: what it owns, its own API
// (local) and the subscriptions that serve the other shards.
type shards struct {
	n     *Node
	shard config.Shard
	owned []bool
	list  []uint32
	local http.Handler
	api   natsapi.Handler
	subs  []*nats.Subscription
	wg    sync.WaitGroup
	// held makes reads wait for the keys of prepared transactions that
	// span the DC's shards (shardtxn.go).
	held *held
	// stop ends forwarded work at Close.
	stop context.Context
	quit context.CancelFunc
}

func newShards(n *Node) *shards {
	s := &shards{n: n, shard: n.cfg.ShardOf(), owned: make([]bool, n.cfg.Partitions), list: n.cfg.OwnedPartitions(), held: newHeld()}
	for _, p := range s.list {
		s.owned[p] = true
	}
	s.stop, s.quit = context.WithCancel(context.Background())
	return s
}

func (s *shards) owns(p uint32) bool { return int(p) < len(s.owned) && s.owned[p] }

func (s *shards) partitionOf(key string) uint32 { return event.PartitionOf(key, s.n.cfg.Partitions) }

func (s *shards) partitionsText() string {
	parts := make([]string, len(s.list))
	for i, p := range s.list {
		parts[i] = strconv.FormatUint(uint64(p), 10)
	}
	return strings.Join(parts, ",")
}

// checkAlone refuses to start a shard when another running sidecar of its
// DC already answers for one of its partitions (two shards with the same
// shard line, or overlapping shard_partitions): they would both number
// that partition's events, each in its own store.
func (s *shards) checkAlone(ctx context.Context, nc *nats.Conn) error {
	for _, p := range s.list {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := nc.RequestMsgWithContext(rctx, &nats.Msg{Subject: names.ShardSubject(s.n.cfg.DC, p), Header: nats.Header{HeaderShardKind: {"owner"}}})
		cancel()
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			continue
		case err != nil:
			return fmt.Errorf("node: shard %s: ask whether another sidecar of DC %s owns partition %d: %w", s.shard, s.n.cfg.DC, p, err)
		}
		return fmt.Errorf("node: shard %s of DC %s owns partition %d, but shard %q already runs and answers for it on %s: give each shard its own shard line (\"i of S\") or disjoint shard_partitions",
			s.shard, s.n.cfg.DC, p, m.Header.Get(HeaderShard), names.ShardSubject(s.n.cfg.DC, p))
	}
	return nil
}

// start subscribes to the subjects of this shard's partitions and to the
// DC's gather subject, and waits until the server has them: once the
// shard has started, the other shards' requests for its partitions reach
// it (unflushed, a write forwarded by another shard just after this one
// started found no responder: TestShardedRing under load).
func (s *shards) start(ctx context.Context, nc *nats.Conn) error {
	for _, p := range s.list {
		sub, err := nc.Subscribe(names.ShardSubject(s.n.cfg.DC, p), s.serveForwarded)
		if err != nil {
			return fmt.Errorf("node: shard subscribe: %w", err)
		}
		s.subs = append(s.subs, sub)
	}
	sub, err := nc.Subscribe(names.ShardsSubject(s.n.cfg.DC), s.serveGather)
	if err != nil {
		return fmt.Errorf("node: shard subscribe: %w", err)
	}
	s.subs = append(s.subs, sub)
	// Once the shard has started, the server knows its subjects: a write
	// another shard relays to it then finds it, rather than no responders
	// that make the DC look unable to write the key (and the sender fail
	// over from it).
	fctx, cancel := context.WithTimeout(ctx, shardWait)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil {
		return fmt.Errorf("node: shard subscribe: flush: %w", err)
	}
	return nil
}

func (s *shards) close() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.quit()
	s.wg.Wait()
}

// serveForwarded answers a request another shard forwarded to the owner
// of one of this shard's partitions.
func (s *shards) serveForwarded(m *nats.Msg) {
	kind := m.Header.Get(HeaderShardKind)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		switch kind {
		case "home":
			s.answerHome(m)
			return
		case "txn.state":
			s.answerTxnState(m)
			return
		case "owner":
			_ = m.RespondMsg(&nats.Msg{Header: nats.Header{HeaderShard: {s.shard.String()}, HeaderShardPartitions: {s.partitionsText()}}})
			return
		}
		if op, ok := strings.CutPrefix(kind, "api."); ok {
			if !s.waitHeldNATS(op, natsapi.MsgRequest{Msg: m}) {
				return
			}
			if !s.api(op, natsapi.MsgRequest{Msg: m}) {
				_ = natsapi.MsgRequest{Msg: m}.Error("400", "unknown operation "+strconv.Quote(op), nil)
			}
			return
		}
		s.answerHTTP(m)
	}()
}

// serveGather answers a gather with this shard's own view.
func (s *shards) serveGather(m *nats.Msg) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if m.Header.Get(HeaderShardKind) == "home" {
			s.answerHome(m)
			return
		}
		s.answerHTTP(m)
	}()
}

// The home router's link to the DC's other shards (home.Siblings): a
// forwarded home-DC write relayed to its key's owner, and the rules'
// views asked and told, on the shards' subjects with kind "home".
var _ home.Siblings = (*shards)(nil)

// answerHome serves another shard's home-DC request; this shard's own
// asks and tells, which reach it too on repl.shards.<dc>, it leaves.
func (s *shards) answerHome(m *nats.Msg) {
	if m.Header.Get(HeaderShard) == s.shard.String() {
		return
	}
	out := s.n.home.HandleShard(m.Data)
	if m.Reply == "" {
		return // a told view
	}
	if err := m.Respond(out); err != nil {
		s.n.log.Warn("answer another shard's home request", "err", err)
	}
}

// Owner returns key's partition and whether this shard owns it.
func (s *shards) Owner(key string) (uint32, bool) {
	p := s.partitionOf(key)
	return p, s.owns(p)
}

// Relay sends a home-DC request to the shard owning p.
func (s *shards) Relay(ctx context.Context, p uint32, req []byte) ([]byte, error) {
	m, err := s.n.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: names.ShardSubject(s.n.cfg.DC, p), Header: nats.Header{HeaderShardKind: {"home"}}, Data: req})
	if err != nil {
		return nil, err
	}
	return m.Data, nil
}

// Ask sends a home-DC request to every other shard of the DC and returns
// the replies that came within ctx, at most one per shard.
func (s *shards) Ask(ctx context.Context, req []byte) [][]byte {
	nc := s.n.nc
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil
	}
	defer sub.Unsubscribe()
	if err := nc.PublishMsg(&nats.Msg{Subject: names.ShardsSubject(s.n.cfg.DC), Reply: inbox, Header: s.homeHeader(), Data: req}); err != nil {
		return nil
	}
	var out [][]byte
	for len(out) < s.shard.Count-1 {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil || len(m.Data) == 0 {
			return out // ctx done, or no responders (a status without data)
		}
		out = append(out, m.Data)
	}
	return out
}

// Tell sends a home-DC request to every other shard of the DC, for no
// reply.
func (s *shards) Tell(req []byte) error {
	return s.n.nc.PublishMsg(&nats.Msg{Subject: names.ShardsSubject(s.n.cfg.DC), Header: s.homeHeader(), Data: req})
}

// homeHeader marks a home-DC request on repl.shards.<dc> as this shard's.
func (s *shards) homeHeader() nats.Header {
	return nats.Header{HeaderShardKind: {"home"}, HeaderShard: {s.shard.String()}}
}

// answerHTTP serves a carried HTTP request from this shard's own API.
func (s *shards) answerHTTP(m *nats.Msg) {
	reply := &nats.Msg{Header: nats.Header{HeaderShard: {s.shard.String()}, HeaderShardPartitions: {s.partitionsText()}}}
	var req shardHTTP
	if err := msgpackcheck.Unmarshal(m.Data, &req); err != nil || req.Method == "" || !strings.HasPrefix(req.URI, "/") {
		reply.Data, _ = msgpack.Marshal(shardHTTP{Status: http.StatusBadRequest, Body: []byte(`{"error":"not a forwarded HTTP request"}`)})
		_ = m.RespondMsg(reply)
		return
	}
	r, err := http.NewRequestWithContext(s.stop, req.Method, req.URI, bytes.NewReader(req.Body))
	if err != nil {
		reply.Data, _ = msgpack.Marshal(shardHTTP{Status: http.StatusBadRequest, Body: []byte(`{"error":"not a forwarded HTTP request"}`)})
		_ = m.RespondMsg(reply)
		return
	}
	r.Header = http.Header(req.Header)
	r.Header.Set(HeaderShardHop, "1")
	r.RemoteAddr = "nats"
	rec := &recorder{header: http.Header{}}
	s.ServeHTTP(rec, r) // the hop header keeps it here; reads wait for held keys
	out, err := msgpack.Marshal(shardHTTP{Status: rec.status(), Header: rec.header, Body: rec.body.Bytes()})
	if err != nil {
		out, _ = msgpack.Marshal(shardHTTP{Status: http.StatusInternalServerError, Body: []byte(`{"error":"encode the answer"}`)})
	}
	reply.Data = out
	if err := m.RespondMsg(reply); err != nil {
		s.n.log.Warn("answer a forwarded request", "err", err)
	}
}

// recorder is the ResponseWriter of a forwarded request.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(b)
}
func (r *recorder) Flush() {}
func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// ServeHTTP routes a request of the DC's API: a key of another shard's
// partition to that shard, a transaction to the shard owning all its keys
// (or 409 when they span shards), the whole DC's views to every shard,
// and the rest to this shard's own API.
func (s *shards) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(HeaderShard, s.shard.String())
	path := r.URL.Path
	if r.Header.Get(HeaderShardHop) != "" {
		if r.Method == http.MethodGet && !s.waitHeld(w, r, path) {
			return
		}
		s.local.ServeHTTP(w, r)
		return
	}
	switch {
	case strings.HasPrefix(path, "/v1/kv/") && len(path) > len("/v1/kv/"):
		key := strings.TrimPrefix(r.URL.EscapedPath(), "/v1/kv/")
		if k, err := unescapePath(key); err == nil {
			key = k
		}
		if p := s.partitionOf(key); !s.owns(p) {
			s.forward(w, r, p, nil)
			return
		}
		if r.Method == http.MethodGet && !s.waitHeld(w, r, path) {
			return
		}
	case path == "/v1/txn" && r.Method == http.MethodPost:
		s.txn(w, r)
		return
	case r.Method == http.MethodGet && (path == "/v1/digest" || path == "/v1/status" || path == "/v1/kv" || path == "/v1/conflicts"):
		s.gatherHTTP(w, r)
		return
	case strings.HasPrefix(path, "/v1/conflicts/"):
		s.conflict(w, r)
		return
	}
	w.Header().Set(HeaderShardView, "shard")
	s.local.ServeHTTP(w, r)
}

func unescapePath(p string) (string, error) {
	u, err := http.NewRequest(http.MethodGet, "/"+p, nil)
	if err != nil {
		return "", err
	}
	return strings.TrimPrefix(u.URL.Path, "/"), nil
}

// readBody reads a request's body up to the API's body limit.
func (s *shards) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	limit := int64(s.n.cfg.HTTP.MaxBodyBytes)
	if limit <= 0 {
		limit = 64 << 20
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, "read the request body: "+err.Error())
		return nil, false
	}
	if int64(len(b)) > limit {
		writeJSONError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is over the %d-byte limit (http.max_body_bytes)", limit))
		return nil, false
	}
	return b, true
}

// txn sends a transaction to the shard owning every key it names, or
// refuses one whose keys span shards with 409: its ops would commit in
// several stores, which no one batch can make atomic.
func (s *shards) txn(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req struct {
		Ops []struct {
			Key string `json:"key"`
		} `json:"ops"`
	}
	if err := json.Unmarshal(body, &req); err != nil || len(req.Ops) == 0 {
		// The local API says precisely what is wrong.
		r.Body = io.NopCloser(bytes.NewReader(body))
		s.local.ServeHTTP(w, r)
		return
	}
	keys := make([]string, len(req.Ops))
	for i, op := range req.Ops {
		keys[i] = op.Key
	}
	p, err := s.txnOwner(keys)
	if err != nil {
		writeJSONError(w, http.StatusConflict, err.Error())
		return
	}
	if s.owns(p) {
		r.Body = io.NopCloser(bytes.NewReader(body))
		s.local.ServeHTTP(w, r)
		return
	}
	s.forward(w, r, p, body)
}

// ErrTxnSpansShards refuses a transaction whose keys belong to more than
// one shard of this DC.
var ErrTxnSpansShards = errors.New("node: the transaction's keys belong to more than one shard of this DC")

// txnOwner returns a partition of the shard owning every key, or an error
// naming the shards (by partition owner) the keys span. With explicit
// shard_partitions lists the owner of a foreign partition is not known
// here; keys of two foreign partitions count as spanning unless the
// default layout (p mod S) puts them together.
func (s *shards) txnOwner(keys []string) (uint32, error) {
	byShard := map[int][]string{}
	var first uint32
	for i, k := range keys {
		p := s.partitionOf(k)
		if i == 0 {
			first = p
		}
		byShard[s.ownerIndex(p)] = append(byShard[s.ownerIndex(p)], fmt.Sprintf("%q (partition %d)", k, p))
	}
	if len(byShard) == 1 {
		return first, nil
	}
	var parts []string
	for _, i := range slices.Sorted(maps.Keys(byShard)) {
		name := fmt.Sprintf("shard %d of %d", i, s.shard.Count)
		if i < 0 {
			name = "this DC's other shards"
		}
		parts = append(parts, name+": "+strings.Join(byShard[i], ", "))
	}
	return 0, fmt.Errorf("%w (%s); a transaction commits in one shard's store, so its keys must all hash to partitions of one shard: split it, or choose keys of one shard", ErrTxnSpansShards, strings.Join(parts, "; "))
}

// ownerIndex is the index of the shard owning p: this shard's own when it
// owns p, else the default layout's p mod S.
func (s *shards) ownerIndex(p uint32) int {
	if s.owns(p) {
		return s.shard.Index
	}
	if len(s.n.cfg.ShardPartitions) > 0 {
		return -1
	}
	return int(p) % s.shard.Count
}

// conflict serves GET /v1/conflicts/{id} and its resolve from the shard
// that holds the entry: this one if it does, else the one whose gathered
// answer is not a 404.
func (s *shards) conflict(w http.ResponseWriter, r *http.Request) {
	id, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v1/conflicts/"), "/")
	if _, err := s.n.store.Conflict(id); err == nil {
		s.local.ServeHTTP(w, r)
		return
	}
	probe, _ := http.NewRequest(http.MethodGet, "/v1/conflicts/"+id, nil)
	probe.Header = r.Header.Clone()
	answers, err := s.gather(r.Context(), probe, nil)
	if err != nil {
		writeJSONError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	for _, a := range answers {
		if a.Status == http.StatusOK && len(a.partitions) > 0 {
			if r.Method == http.MethodGet {
				writeAnswer(w, a.shardHTTP)
				return
			}
			body, ok := s.readBody(w, r)
			if !ok {
				return
			}
			s.forward(w, r, a.partitions[0], body)
			return
		}
	}
	s.local.ServeHTTP(w, r) // this shard's 404 (or 400) says what is wrong
}

// forward sends r to the shard owning partition p and relays its answer.
func (s *shards) forward(w http.ResponseWriter, r *http.Request, p uint32, body []byte) {
	if body == nil {
		var ok bool
		if body, ok = s.readBody(w, r); !ok {
			return
		}
	}
	data, err := msgpack.Marshal(shardHTTP{Method: r.Method, URI: r.URL.RequestURI(), Header: r.Header, Body: body})
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, "encode the forwarded request: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), shardWait)
	defer cancel()
	msg := &nats.Msg{Subject: names.ShardSubject(s.n.cfg.DC, p), Header: nats.Header{HeaderShardKind: {"http"}}, Data: data}
	reply, err := s.n.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		status := http.StatusServiceUnavailable
		msg := fmt.Sprintf("forward to the shard owning partition %d of DC %s on %s: %v", p, s.n.cfg.DC, names.ShardSubject(s.n.cfg.DC, p), err)
		if errors.Is(err, nats.ErrNoResponders) {
			msg = fmt.Sprintf("no shard of DC %s owns partition %d (nothing answers on %s): start that shard, or check the shards' shard and shard_partitions", s.n.cfg.DC, p, names.ShardSubject(s.n.cfg.DC, p))
		}
		w.Header().Set("Retry-After", "1")
		writeJSONError(w, status, msg)
		return
	}
	var a shardHTTP
	if err := msgpackcheck.Unmarshal(reply.Data, &a); err != nil {
		writeJSONError(w, http.StatusBadGateway, "the owning shard's answer is malformed: "+err.Error())
		return
	}
	writeAnswer(w, a)
}

func writeAnswer(w http.ResponseWriter, a shardHTTP) {
	for k, v := range a.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(a.Status)
	_, _ = w.Write(a.Body)
}

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// gathered is one shard's answer to a gather.
type gathered struct {
	shardHTTP
	shard      string
	partitions []uint32
}

// gather sends r to every shard of the DC and returns their answers once
// every partition's owner has answered. It fails, naming the partitions,
// when some have no owner within gatherWait or two shards claim one.
func (s *shards) gather(ctx context.Context, r *http.Request, body []byte) ([]gathered, error) {
	data, err := msgpack.Marshal(shardHTTP{Method: r.Method, URI: r.URL.RequestURI(), Header: r.Header, Body: body})
	if err != nil {
		return nil, err
	}
	nc := s.n.nc
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishMsg(&nats.Msg{Subject: names.ShardsSubject(s.n.cfg.DC), Reply: inbox, Header: nats.Header{HeaderShardKind: {"http"}}, Data: data}); err != nil {
		return nil, err
	}
	owner := make([]string, s.n.cfg.Partitions)
	covered := 0
	var out []gathered
	deadline := time.Now().Add(gatherWait)
	for covered < len(owner) {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			var missing []string
			for p, o := range owner {
				if o == "" {
					missing = append(missing, strconv.Itoa(p))
				}
			}
			return nil, fmt.Errorf("DC %s's view needs every partition's shard, and none answered for partitions %s within %s: start the shard(s) owning them, or check every shard's shard and shard_partitions", s.n.cfg.DC, strings.Join(missing, ","), gatherWait)
		}
		g := gathered{shard: m.Header.Get(HeaderShard)}
		if err := msgpackcheck.Unmarshal(m.Data, &g.shardHTTP); err != nil {
			return nil, fmt.Errorf("shard %s answered a malformed reply: %w", g.shard, err)
		}
		for part := range strings.SplitSeq(m.Header.Get(HeaderShardPartitions), ",") {
			p, err := strconv.ParseUint(part, 10, 32)
			if err != nil || int(p) >= len(owner) {
				return nil, fmt.Errorf("shard %s names partition %q, not one of 0 to %d: do the shards agree on partitions?", g.shard, part, len(owner)-1)
			}
			if o := owner[p]; o != "" {
				return nil, fmt.Errorf("partition %d is owned by two shards of DC %s, %q and %q: fix their shard or shard_partitions so each partition has one owner", p, s.n.cfg.DC, o, g.shard)
			}
			owner[p] = g.shard
			covered++
			g.partitions = append(g.partitions, uint32(p))
		}
		out = append(out, g)
	}
	return out, nil
}

// gatherHTTP answers GET /v1/digest, /v1/status, /v1/conflicts and
// /v1/kv (listing) with the whole DC's view, merged from every shard.
func (s *shards) gatherHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.URL.Path == "/v1/kv" && q.Get("limit") == "" {
		// Each shard sends a page at most: a whole listing would not fit
		// one NATS message.
		q.Set("limit", strconv.Itoa(gatherPage))
		r = r.Clone(r.Context())
		r.URL.RawQuery = q.Encode()
	}
	answers, err := s.gather(r.Context(), r, nil)
	if err != nil {
		w.Header().Set("Retry-After", "1")
		writeJSONError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	for _, a := range answers {
		if a.Status != http.StatusOK {
			writeAnswer(w, a.shardHTTP) // the first refusal says what is wrong
			return
		}
	}
	w.Header().Set(HeaderShardView, "dc")
	switch r.URL.Path {
	case "/v1/digest":
		s.mergeDigest(w, answers)
	case "/v1/status":
		s.mergeStatus(w, answers)
	case "/v1/conflicts":
		mergePages(w, r, answers, false)
	case "/v1/kv":
		mergePages(w, r, answers, true)
	}
}

// mergeDigest combines the shards' per-partition digests into the DC's:
// the same digest one sidecar holding every partition would show.
func (s *shards) mergeDigest(w http.ResponseWriter, answers []gathered) {
	var out struct {
		Digest     string   `json:"digest"`
		Keys       int      `json:"keys"`
		Partitions []string `json:"partitions"`
		Shards     int      `json:"shards"`
	}
	out.Partitions = make([]string, s.n.cfg.Partitions)
	for _, a := range answers {
		var d struct {
			Keys       int      `json:"keys"`
			Partitions []string `json:"partitions"`
		}
		if err := json.Unmarshal(a.Body, &d); err != nil || len(d.Partitions) != len(out.Partitions) {
			writeJSONError(w, http.StatusBadGateway, fmt.Sprintf("shard %s's digest is malformed", a.shard))
			return
		}
		out.Keys += d.Keys
		for _, p := range a.partitions {
			out.Partitions[p] = d.Partitions[p]
		}
	}
	h := sha256.New()
	for _, p := range out.Partitions {
		b, err := hex.DecodeString(p)
		if err != nil {
			writeJSONError(w, http.StatusBadGateway, "a shard's partition digest is not hex")
			return
		}
		h.Write(b)
	}
	out.Digest, out.Shards = hex.EncodeToString(h.Sum(nil)), len(answers)
	writeJSONValue(w, out)
}

// mergeStatus lists every shard's status.
func (s *shards) mergeStatus(w http.ResponseWriter, answers []gathered) {
	type shardStatus struct {
		Shard      string          `json:"shard"`
		Partitions []uint32        `json:"partitions"`
		Status     json.RawMessage `json:"status"`
	}
	out := struct {
		DC         string        `json:"dc"`
		Partitions int           `json:"partitions"`
		Shards     []shardStatus `json:"shards"`
	}{DC: s.n.cfg.DC, Partitions: s.n.cfg.Partitions}
	sort.Slice(answers, func(i, j int) bool { return answers[i].partitions[0] < answers[j].partitions[0] })
	for _, a := range answers {
		out.Shards = append(out.Shards, shardStatus{Shard: a.shard, Partitions: a.partitions, Status: json.RawMessage(bytes.TrimSpace(a.Body))})
	}
	writeJSONValue(w, out)
}

func writeJSONValue(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(b, '\n'))
}

// mergePages merges the shards' pages of a listing (NDJSON lines with a
// "key" for /v1/kv, a JSON array of entries with an "id" for
// /v1/conflicts), in order: it keeps what sorts at or before the first
// page end of a shard that has more, then at most limit items, and says
// where the next page starts in X-Repl-Next-After.
func mergePages(w http.ResponseWriter, r *http.Request, answers []gathered, ndjson bool) {
	type item struct {
		sortKey string
		raw     json.RawMessage
	}
	var items []item
	cut, cutSet := "", false
	for _, a := range answers {
		var raws []json.RawMessage
		if ndjson {
			sc := bufio.NewScanner(bytes.NewReader(a.Body))
			sc.Buffer(nil, 1<<30)
			for sc.Scan() {
				if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 {
					raws = append(raws, json.RawMessage(slices.Clone(line)))
				}
			}
		} else if err := json.Unmarshal(a.Body, &raws); err != nil {
			writeJSONError(w, http.StatusBadGateway, fmt.Sprintf("shard %s's page is malformed", a.shard))
			return
		}
		for _, raw := range raws {
			var k struct {
				Key string `json:"key"`
				ID  string `json:"id"`
			}
			_ = json.Unmarshal(raw, &k)
			sk := k.Key
			if !ndjson {
				sk = k.ID
			}
			items = append(items, item{sortKey: sk, raw: raw})
		}
		if next := http.Header(a.Header).Get(httpapi.NextAfterHeader); next != "" && (!cutSet || next < cut) {
			cut, cutSet = next, true
		}
	}
	sort.Slice(items, func(i, j int) bool { return items[i].sortKey < items[j].sortKey })
	more := false
	if cutSet {
		n := sort.Search(len(items), func(i int) bool { return items[i].sortKey > cut })
		more = true
		items = items[:n]
	}
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	if !ndjson && limit <= 0 {
		limit = httpapi.DefaultConflictLimit
	}
	if limit > 0 && len(items) > limit {
		items, more = items[:limit], true
	}
	if more && len(items) > 0 {
		w.Header().Set(httpapi.NextAfterHeader, items[len(items)-1].sortKey)
	}
	if ndjson {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		for _, it := range items {
			_, _ = w.Write(append(slices.Clone(it.raw), '\n'))
		}
		return
	}
	raws := make([]json.RawMessage, len(items))
	for i, it := range items {
		raws[i] = it.raw
	}
	writeJSONValue(w, raws)
}

// route is the NATS API's router (natsapi.Route): get, put and del of a
// key of another shard, and a transaction all of whose keys are another
// shard's, are forwarded to the owner and its answer relayed;
// a transaction spanning shards is refused with 409; the change feed is
// this shard's.
func (s *shards) route(op string, r micro.Request) bool {
	var p uint32
	switch op {
	case "get", "put", "del", "incr", "patch", "add", "remove":
		var req struct {
			Key string `json:"key"`
		}
		if err := json.Unmarshal(r.Data(), &req); err != nil || req.Key == "" {
			return false // the handler says what is wrong
		}
		p = s.partitionOf(req.Key)
	case "txn":
		var req struct {
			Ops []struct {
				Key string `json:"key"`
			} `json:"ops"`
		}
		if err := json.Unmarshal(r.Data(), &req); err != nil || len(req.Ops) == 0 {
			return false
		}
		keys := make([]string, len(req.Ops))
		for i, op := range req.Ops {
			keys[i] = op.Key
		}
		var err error
		if p, err = s.txnOwner(keys); err != nil {
			_ = r.Error("409", err.Error(), nil)
			return true
		}
	default:
		return false
	}
	if s.owns(p) {
		return !s.waitHeldNATS(op, r)
	}
	m := &nats.Msg{Subject: names.ShardSubject(s.n.cfg.DC, p), Data: r.Data(), Header: nats.Header{HeaderShardKind: {"api." + op}}}
	for k, v := range r.Headers() {
		m.Header[k] = v
	}
	// Asked and relayed (rather than published with the client's reply
	// subject), so an owner that is down is a 503 the client hears.
	ctx, cancel := context.WithTimeout(s.stop, shardWait)
	defer cancel()
	reply, err := s.n.nc.RequestMsgWithContext(ctx, m)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		_ = r.Error("503", fmt.Sprintf("no shard of DC %s owns partition %d (nothing answers on %s): start that shard, or check the shards' shard and shard_partitions", s.n.cfg.DC, p, names.ShardSubject(s.n.cfg.DC, p)), nil)
	case err != nil:
		_ = r.Error("503", fmt.Sprintf("forward to the shard owning partition %d of DC %s: %v", p, s.n.cfg.DC, err), nil)
	default:
		_ = r.Respond(reply.Data, micro.WithHeaders(micro.Headers(reply.Header)))
	}
	return true
}

// waitHeld makes a read of a key (GET /v1/kv/{key}) or a listing (GET
// /v1/kv) wait, up to context_wait, while a prepared transaction spanning
// the DC's shards holds the key (or any key of this shard), and answers
// 503 past it.
func (s *shards) waitHeld(w http.ResponseWriter, r *http.Request, path string) bool {
	key := ""
	switch {
	case strings.HasPrefix(path, "/v1/kv/"):
		key = strings.TrimPrefix(r.URL.EscapedPath(), "/v1/kv/")
		if k, err := unescapePath(key); err == nil {
			key = k
		}
	case path != "/v1/kv":
		return true
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(s.n.cfg.ContextWait))
	defer cancel()
	if err := s.held.wait(ctx, key); err != nil {
		w.Header().Set("Retry-After", "1")
		writeJSONError(w, http.StatusServiceUnavailable, err.Error())
		return false
	}
	return true
}

// waitHeldNATS is waitHeld for a NATS get; false (after answering 503)
// when the key stays held.
func (s *shards) waitHeldNATS(op string, r micro.Request) bool {
	if op != "get" {
		return true
	}
	var req struct {
		Key string `json:"key"`
	}
	_ = json.Unmarshal(r.Data(), &req)
	ctx, cancel := context.WithTimeout(s.stop, time.Duration(s.n.cfg.ContextWait))
	defer cancel()
	if err := s.held.wait(ctx, req.Key); err != nil {
		_ = r.Error("503", err.Error(), nil)
		return false
	}
	return true
}
