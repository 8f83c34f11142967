// Package shard_test checks DCs that run several sidecars (shards), each
// owning a disjoint set of partitions (invariant 16 in docs/DESIGN.md),
// against real embedded NATS and real Pebble.
package shard_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/node"
	"github.com/replicatorhq/replicator/test/internal/testutil"
)

const partitions = 16

// sidecar is one running sidecar: a whole DC or one of its shards.
type sidecar struct {
	dc, name string
	n        *node.Node
	base     string
	cfg      config.Config
	url      string
	opts     node.Options
}

// restart closes the sidecar and starts it again on the same config,
// after wipe (if set) has run on its data dir.
func (s *sidecar) restart(t *testing.T, wipe func(dir string)) {
	t.Helper()
	if err := s.n.Close(); err != nil {
		t.Fatal(err)
	}
	if wipe != nil {
		wipe(s.cfg.DataDir)
	}
	*s = *startSidecar(t, s.cfg, s.url, s.opts)
}

// mesh starts a mesh of DCs on one embedded NATS server, DC i running
// shards[i] sidecars.
func mesh(t *testing.T, shards map[string]int) (*server.Server, []*sidecar) {
	t.Helper()
	return meshWith(t, shards, nil, node.Options{})
}

// meshWith is mesh with edit applied to every sidecar's config and opts
// (but its NATS URL, report interval and logger) given to every node.
func meshWith(t *testing.T, shards map[string]int, edit func(*config.Config), opts node.Options) (*server.Server, []*sidecar) {
	t.Helper()
	ns, dir := startNATS(t)
	var out []*sidecar
	for _, dc := range dcs {
		for i := range max(shards[dc], 1) {
			cfg := sidecarConfig(dir, dc, i, shards[dc])
			if edit != nil {
				edit(&cfg)
			}
			cfg.Complete()
			out = append(out, startSidecar(t, cfg, ns.ClientURL(), opts))
		}
	}
	return ns, out
}

// startNATS starts an embedded NATS server with JetStream, stopped at
// the end of the test, and returns it and a directory for the sidecars'
// data.
func startNATS(t *testing.T) (*server.Server, string) {
	t.Helper()
	dir := t.TempDir()
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{StoreDir: filepath.Join(dir, "nats"), JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns, dir
}

func do(t *testing.T, method, url string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// dcs are the DCs of the meshes.
var dcs = []string{"dc1", "dc2", "dc3"}

// sidecarConfig is the config of shard i of count of dc (count 0 or 1:
// dc's one sidecar), its data under dir.
func sidecarConfig(dir, dc string, i, count int) config.Config {
	cfg := config.Default()
	cfg.DC, cfg.DCs, cfg.Topology, cfg.Partitions = dc, dcs, config.Mesh, partitions
	cfg.DataDir = filepath.Join(dir, fmt.Sprintf("%s-%d", dc, i))
	cfg.HTTP.Listen = "127.0.0.1:0"
	if count > 1 {
		cfg.Shard = fmt.Sprintf("%d of %d", i, count)
	}
	return cfg
}

// startSidecar starts a sidecar of cfg (completed) on the NATS server at
// url; opts but its NATS URL, report interval and logger go to the node.
func startSidecar(t *testing.T, cfg config.Config, url string, opts node.Options) *sidecar {
	t.Helper()
	s := &sidecar{dc: cfg.DC, name: fmt.Sprintf("%s shard %s", cfg.DC, cfg.Shard), cfg: cfg, url: url, opts: opts}
	o := opts
	o.NATSURL, o.ReportInterval, o.Logger = url, 100*time.Millisecond, testutil.Logger(t, cfg.DC+"/"+cfg.Shard)
	n, err := node.New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.n, s.base = n, "http://"+n.HTTPAddr()
	return s
}

// digest is a sidecar's GET /v1/digest: the whole DC's for a shard.
func digest(t *testing.T, s *sidecar) (string, int) {
	code, _, b := do(t, http.MethodGet, s.base+"/v1/digest", nil)
	if code != http.StatusOK {
		return fmt.Sprintf("%d %s", code, b), -1
	}
	var d struct {
		Digest string `json:"digest"`
		Keys   int    `json:"keys"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d.Digest, d.Keys
}

// converged waits until every sidecar shows the same whole-DC digest over
// keys keys.
func converged(t *testing.T, all []*sidecar, keys int) {
	t.Helper()
	convergedWithin(t, all, keys, 30*time.Second)
}

// convergedWithin is converged within budget.
func convergedWithin(t *testing.T, all []*sidecar, keys int, budget time.Duration) {
	t.Helper()
	start := time.Now()
	cluster.EventuallyEvery(t, budget, 50*time.Millisecond, "every DC's whole digest to agree", func() (bool, string) {
		want, n := digest(t, all[0])
		if n != keys {
			return false, fmt.Sprintf("%s holds %d keys (%s), want %d; %s", all[0].name, n, want, keys, missing(t, all))
		}
		for _, s := range all[1:] {
			if got, m := digest(t, s); got != want {
				return false, fmt.Sprintf("%s: %s over %d keys, %s: %s over %d; %s", all[0].name, want, n, s.name, got, m, missing(t, all))
			}
		}
		return true, ""
	})
	t.Logf("every DC converged on %d keys in %s", keys, time.Since(start).Round(time.Millisecond))
}

// missing says, for a failure message, what each sidecar applied and holds
// prepared, and the keys some DC holds and another lacks (up to 10).
func missing(t *testing.T, all []*sidecar) string {
	var state []string
	for _, s := range all {
		ps, _ := s.n.Store().PreparedTxns()
		var ids []string
		for id := range ps {
			ids = append(ids, id)
		}
		state = append(state, fmt.Sprintf("%s applied %s prepared %v", s.name, cluster.AppliedTotals(s.n.Store().Applied()), ids))
	}
	return strings.Join(state, "; ") + "; " + missingKeys(t, all) + "; " + behind(all)
}

// behind says, for a failure message, which events each sidecar lacks
// that their origin holds (origin, partition and sequences, against the
// origin's own sequence taken from the origin's shards), what the sidecar
// last heard the origin report for that partition (catch-up's target),
// and the state of the sidecar's links and repairs.
func behind(all []*sidecar) string {
	// The origins' own sequences, by origin and partition, from the
	// shards owning them.
	own := map[string][]uint64{}
	for _, s := range all {
		row := s.n.Store().Applied()[s.dc]
		if own[s.dc] == nil {
			own[s.dc] = make([]uint64, partitions)
		}
		for p, n := range row {
			if p < partitions {
				own[s.dc][p] = max(own[s.dc][p], n)
			}
		}
	}
	var out []string
	for _, s := range all {
		mine := s.n.Store().Applied()
		peers := s.n.Store().PeerApplied()
		var lacks []string
		for origin, row := range own {
			if origin == s.dc {
				continue
			}
			for p, want := range row {
				if !slices.Contains(s.cfg.OwnedPartitions(), uint32(p)) {
					continue
				}
				var have, reported uint64
				if p < len(mine[origin]) {
					have = mine[origin][p]
				}
				if r := peers[origin][origin]; p < len(r) {
					reported = r[p]
				}
				if have < want {
					lacks = append(lacks, fmt.Sprintf("%s p%d seq %d..%d (origin reported %d)", origin, p, have+1, want, reported))
				}
			}
		}
		if len(lacks) == 0 {
			continue
		}
		slices.Sort(lacks)
		st := s.n.Replicator().Stats()
		var links []string
		for _, up := range slices.Sorted(maps.Keys(st.Links)) {
			l := st.Links[up]
			links = append(links, fmt.Sprintf("%s: received %d applied %d dup %d gaps %d lag %d connected %v heal %v err %q",
				up, l.Received, l.Applied, l.Duplicates, l.Gaps, l.LagEvents, l.Connected, l.Heal, l.LastError))
		}
		out = append(out, fmt.Sprintf("%s lacks %s [links %s; repairs %d events %d errors %d replays %d]",
			s.name, strings.Join(lacks, ", "), strings.Join(links, "; "), st.Repairs, st.RepairedEvents, st.RepairErrors, st.Replays))
	}
	if len(out) == 0 {
		return "no sidecar lacks an event its origin holds"
	}
	return strings.Join(out, "; ")
}

func missingKeys(t *testing.T, all []*sidecar) string {
	held := map[string]map[string]bool{}
	union := map[string]bool{}
	for _, s := range all {
		if held[s.dc] != nil {
			continue
		}
		held[s.dc] = map[string]bool{}
		after := ""
		for {
			code, h, b := do(t, http.MethodGet, s.base+"/v1/kv?prefix=&limit=1000&after="+after, nil)
			if code != http.StatusOK {
				return fmt.Sprintf("list at %s: %d %s", s.name, code, b)
			}
			sc := bufio.NewScanner(bytes.NewReader(b))
			for sc.Scan() {
				var line struct {
					Key string `json:"key"`
				}
				if json.Unmarshal(sc.Bytes(), &line) == nil {
					held[s.dc][line.Key] = true
					union[line.Key] = true
				}
			}
			if after = h.Get("X-Repl-Next-After"); after == "" {
				break
			}
		}
	}
	var out []string
	for dc, keys := range held {
		for k := range union {
			if !keys[k] && len(out) < 10 {
				out = append(out, dc+" lacks "+k)
			}
		}
	}
	return strings.Join(out, ", ")
}

// owner returns the index (in dc's shards) of the shard owning key with
// the default layout.
func owner(key string, count int) int {
	return int(event.PartitionOf(key, partitions)) % count
}

// TestShardedMesh: dc1 runs 4 shards, dc2 and dc3 one sidecar each. Writes
// go through every sidecar, most to keys another shard owns; every DC's
// whole digest converges, every key reads back through every shard, the
// key listing is the whole DC's, and a transaction is forwarded whole to
// its shard, refused across shards, and applied at dc1 when it came from
// dc2 spanning dc1's shards.
func TestShardedMesh(t *testing.T) {
	_, all := mesh(t, map[string]int{"dc1": 4})
	const perSidecar = 40
	for i, s := range all {
		for j := range perSidecar {
			key := fmt.Sprintf("k/%d/%d", i, j)
			code, _, b := do(t, http.MethodPut, s.base+"/v1/kv/"+key, []byte("v-"+key))
			if code != http.StatusOK {
				t.Fatalf("PUT %s at %s: %d %s", key, s.name, code, b)
			}
		}
	}
	keys := perSidecar * len(all)
	converged(t, all, keys)

	// Every key reads back through every shard of dc1, forwarded or not.
	for _, s := range all[:4] {
		for i := range all {
			key := fmt.Sprintf("k/%d/7", i)
			code, h, b := do(t, http.MethodGet, s.base+"/v1/kv/"+key, nil)
			if code != http.StatusOK || !strings.Contains(string(b), `"key":"`+key+`"`) {
				t.Fatalf("GET %s through %s: %d %s", key, s.name, code, b)
			}
			if h.Get(node.HeaderShard) == "" {
				t.Fatalf("GET %s through %s: no %s header", key, s.name, node.HeaderShard)
			}
		}
	}

	// The listing is the whole DC's, in key order, paged.
	seen, after := 0, ""
	last := ""
	for {
		code, h, b := do(t, http.MethodGet, all[1].base+"/v1/kv?prefix=k/&limit=50&after="+after, nil)
		if code != http.StatusOK {
			t.Fatalf("list: %d %s", code, b)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			var line struct {
				Key string `json:"key"`
			}
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				t.Fatalf("list line %q: %v", sc.Text(), err)
			}
			if line.Key <= last {
				t.Fatalf("list: %q after %q, out of order or repeated", line.Key, last)
			}
			last = line.Key
			seen++
		}
		if after = h.Get("X-Repl-Next-After"); after == "" {
			break
		}
	}
	if seen != keys {
		t.Fatalf("the whole DC's listing has %d keys, want %d", seen, keys)
	}

	// A transaction of keys of one shard is forwarded whole from another.
	var one []string
	for i := 0; len(one) < 3; i++ {
		if k := fmt.Sprintf("t/one/%d", i); owner(k, 4) == 2 {
			one = append(one, k)
		}
	}
	code, _, b := do(t, http.MethodPost, all[0].base+"/v1/txn", txnBody(one))
	if code != http.StatusOK {
		t.Fatalf("txn of shard 2's keys through shard 0: %d %s", code, b)
	}
	// One spanning shards is refused, naming them, and writes nothing.
	span := []string{"t/span/a", "t/span/b", "t/span/c", "t/span/d", "t/span/e"}
	code, _, b = do(t, http.MethodPost, all[0].base+"/v1/txn", txnBody(span))
	if code != http.StatusConflict || !strings.Contains(string(b), "shard") {
		t.Fatalf("txn spanning dc1's shards: %d %s, want 409 naming the shards", code, b)
	}
	// The same transaction at dc2, one sidecar, commits and reaches
	// dc1's shards, each applying its ops.
	code, _, b = do(t, http.MethodPost, all[4].base+"/v1/txn", txnBody(span))
	if code != http.StatusOK {
		t.Fatalf("txn at dc2: %d %s", code, b)
	}
	converged(t, all, keys+len(one)+len(span))
	for _, k := range span {
		code, _, b := do(t, http.MethodGet, all[3].base+"/v1/kv/"+k, nil)
		if code != http.StatusOK {
			t.Fatalf("GET %s at dc1 after dc2's transaction: %d %s", k, code, b)
		}
	}

	// Deletes through every sidecar: the tombstones are purged at every
	// shard once every DC has applied them (invariant 8), so every DC
	// converges on the keys left.
	for i, s := range all {
		for j := range 10 {
			key := fmt.Sprintf("k/%d/%d", i, j)
			code, _, b := do(t, http.MethodDelete, s.base+"/v1/kv/"+key, nil)
			if code != http.StatusOK {
				t.Fatalf("DELETE %s at %s: %d %s", key, s.name, code, b)
			}
		}
	}
	converged(t, all, keys+len(one)+len(span)-10*len(all))

	// A session token naming writes in several partitions (at dc2) is
	// waited for by each shard for its own partitions only: a listing
	// and reads through any shard answer once dc1 has them.
	tok := ""
	for j := range 6 {
		req, _ := http.NewRequest(http.MethodPut, all[4].base+fmt.Sprintf("/v1/kv/sess/%d", j), strings.NewReader("s"))
		req.Header.Set("X-Repl-Session", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var w struct {
			Session string `json:"session"`
		}
		json.NewDecoder(resp.Body).Decode(&w)
		resp.Body.Close()
		tok = w.Session
	}
	for _, path := range []string{"/v1/kv?prefix=sess/", "/v1/kv/sess/0", "/v1/kv/sess/5"} {
		req, _ := http.NewRequest(http.MethodGet, all[1].base+path, nil)
		req.Header.Set("X-Repl-Session", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "sess/") {
			t.Fatalf("GET %s at dc1 with session %s: %d %s", path, tok, resp.StatusCode, b)
		}
	}

	// Status and conflicts are the whole DC's.
	code, _, b = do(t, http.MethodGet, all[2].base+"/v1/status", nil)
	var st struct {
		Shards []struct {
			Shard      string   `json:"shard"`
			Partitions []uint32 `json:"partitions"`
		} `json:"shards"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &st) != nil || len(st.Shards) != 4 {
		t.Fatalf("status through a shard: %d %s, want the 4 shards'", code, b)
	}
	code, _, b = do(t, http.MethodGet, all[2].base+"/v1/conflicts", nil)
	if code != http.StatusOK {
		t.Fatalf("conflicts through a shard: %d %s", code, b)
	}
}

func txnBody(keys []string) []byte {
	type op struct {
		Op        string `json:"op"`
		Key       string `json:"key"`
		ValueText string `json:"value_text"`
	}
	var ops []op
	for _, k := range keys {
		ops = append(ops, op{Op: "put", Key: k, ValueText: "tx"})
	}
	b, _ := json.Marshal(map[string]any{"ops": ops})
	return b
}

// TestShardNATSForwarding: the NATS API of a sharded DC serves keys of
// every shard, whichever shard the request reaches; a transaction
// spanning shards is refused with 409.
func TestShardNATSForwarding(t *testing.T) {
	ns, all := mesh(t, map[string]int{"dc1": 3, "dc3": 2})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := range 30 {
		key := fmt.Sprintf("n/%d", i)
		req, _ := json.Marshal(map[string]string{"key": key, "value_text": "x" + key})
		m, err := nc.Request("repl.api.dc1.put", req, 5*time.Second)
		if err != nil || m.Header.Get("Nats-Service-Error") != "" {
			t.Fatalf("put %s over NATS: %v %v", key, err, m.Header)
		}
		m, err = nc.Request("repl.api.dc1.get", []byte(`{"key":"`+key+`"}`), 5*time.Second)
		if err != nil || m.Header.Get("Nats-Service-Error") != "" || !strings.Contains(string(m.Data), key) {
			t.Fatalf("get %s over NATS: %v %v %s", key, err, m.Header, m.Data)
		}
	}
	m, err := nc.Request("repl.api.dc1.txn", txnBody([]string{"t/span/a", "t/span/b", "t/span/c", "t/span/d", "t/span/e"}), 5*time.Second)
	if err != nil || m.Header.Get("Nats-Service-Error-Code") != "409" {
		t.Fatalf("txn spanning shards over NATS: %v %v, want 409", err, m.Header)
	}
	// dc3 runs 2 shards, dc1 3: different shard counts converge.
	converged(t, all, 30)
	// With dc1's shard 2 stopped, a key it owns is a 503 naming the
	// partition, whichever shard takes the request.
	if err := all[2].n.Close(); err != nil {
		t.Fatal(err)
	}
	var key string
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("n/%d", i); owner(k, 3) == 2 {
			key = k
		}
	}
	for range 3 {
		m, err := nc.Request("repl.api.dc1.get", []byte(`{"key":"`+key+`"}`), 5*time.Second)
		if err != nil || m.Header.Get("Nats-Service-Error-Code") != "503" || !strings.Contains(m.Header.Get("Nats-Service-Error"), "owns partition") {
			t.Fatalf("get %s with its shard down: %v %v, want 503 naming the partition", key, err, m.Header)
		}
	}
}

// TestTxnSpanningReceiverShards (invariants 11 and 16): dc2, one sidecar,
// commits transactions whose keys span dc1's 4 shards, while readers at
// dc1 read each transaction's keys one after another, each through a
// different shard. Once a read shows a transaction's write, every later
// read of another of its keys must show it too: the shards apply their
// parts only once every shard has prepared, and reads of prepared keys
// wait. Afterwards every DC converges.
func TestTxnSpanningReceiverShards(t *testing.T) {
	_, all := mesh(t, map[string]int{"dc1": 4})
	dc1, dc2 := all[:4], all[4]
	const txns, ops = 40, 6
	keyOf := func(i, j int) string { return fmt.Sprintf("x/%02d/%d", i, j) }
	for i := range txns {
		var ks []string
		for j := range ops {
			ks = append(ks, keyOf(i, j))
		}
		shardsHit := map[int]bool{}
		for _, k := range ks {
			shardsHit[owner(k, 4)] = true
		}
		if len(shardsHit) < 2 {
			t.Fatalf("transaction %d's keys all fall in one shard of dc1; the test needs them spread", i)
		}
	}
	stop := make(chan struct{})
	violations := make(chan string, 16)
	var readers sync.WaitGroup
	for r := range 3 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			client := &http.Client{Timeout: 10 * time.Second}
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				i := (n*7 + r) % txns
				seen := -1
				for j := range ops {
					s := dc1[(j+r)%len(dc1)]
					resp, err := client.Get(s.base + "/v1/kv/" + keyOf(i, j))
					if err != nil {
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch {
					case resp.StatusCode == http.StatusOK && seen < 0:
						seen = j
					case resp.StatusCode == http.StatusNotFound && seen >= 0:
						select {
						case violations <- fmt.Sprintf("transaction %d: %s showed, then %s (through %s) did not", i, keyOf(i, seen), keyOf(i, j), s.name):
						default:
						}
					}
				}
			}
		}()
	}
	for i := range txns {
		var ks []string
		for j := range ops {
			ks = append(ks, keyOf(i, j))
		}
		code, _, b := do(t, http.MethodPost, dc2.base+"/v1/txn", txnBody(ks))
		if code != http.StatusOK {
			t.Fatalf("txn %d at dc2: %d %s", i, code, b)
		}
	}
	converged(t, all, txns*ops)
	close(stop)
	readers.Wait()
	close(violations)
	for v := range violations {
		t.Error("part of a transaction was visible: " + v)
	}
}

// TestShardRestoreResumes (invariants 4 and 16): shard 0 of dc1's two
// shards writes only through transactions (so its own sequences are
// witnessed only by repl.dc1.txn.<p>, not by partition subjects), while
// shard 1 writes transactions too. Shard 0's data dir is then wiped: at
// its restart it takes its writes back from the shared stream and
// resumes its sequences above them, so its next writes reissue no
// sequence; every DC converges with every write.
func TestShardRestoreResumes(t *testing.T) {
	_, all := mesh(t, map[string]int{"dc1": 2})
	s0, s1 := all[0], all[1]
	keysOf := func(shard, n int, prefix string) []string {
		var out []string
		for i := 0; len(out) < n; i++ {
			if k := fmt.Sprintf("%s/%d", prefix, i); owner(k, 2) == shard {
				out = append(out, k)
			}
		}
		return out
	}
	written := 0
	for i := range 5 {
		for _, s := range []*sidecar{s0, s1} {
			ks := keysOf(map[*sidecar]int{s0: 0, s1: 1}[s], 3, fmt.Sprintf("r%d/%s", i, strings.ReplaceAll(s.name, " ", "")))
			if code, _, b := do(t, http.MethodPost, s.base+"/v1/txn", txnBody(ks)); code != http.StatusOK {
				t.Fatalf("txn at %s: %d %s", s.name, code, b)
			}
			written += len(ks)
		}
	}
	converged(t, all, written)
	s0.restart(t, func(dir string) {
		if err := os.RemoveAll(filepath.Join(dir, "store")); err != nil {
			t.Fatal(err)
		}
	})
	// New writes at the restored shard: their dots must be new, or the
	// other DCs would take them for events they already applied.
	for i := range 3 {
		ks := keysOf(0, 3, fmt.Sprintf("after/%d", i))
		if code, _, b := do(t, http.MethodPost, s0.base+"/v1/txn", txnBody(ks)); code != http.StatusOK {
			t.Fatalf("txn at the restored shard: %d %s", code, b)
		}
		written += len(ks)
	}
	converged(t, all, written)
}

// TestShardRefusesOverlap: a second sidecar with a shard line already
// running in its DC (so owning the same partitions) refuses to start,
// naming the partition and the shard that owns it.
func TestShardRefusesOverlap(t *testing.T) {
	_, all := mesh(t, map[string]int{"dc1": 2})
	cfg := all[1].cfg
	cfg.DataDir = filepath.Join(t.TempDir(), "dup")
	n, err := node.New(cfg, node.Options{NATSURL: all[1].url, Logger: testutil.Logger(t, "dup")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	err = n.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), `shard "1 of 2" already runs and answers for it`) {
		t.Fatalf("a second \"1 of 2\" started: %v", err)
	}
}
