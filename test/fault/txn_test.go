package fault_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repl "github.com/replicatorhq/replicator/pkg/cluster"

	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
	"github.com/replicatorhq/replicator/test/internal/txncheck"
)

// TestTxnRingSIGKILL (invariant 11 in docs/DESIGN.md, and its "Transactions
// (invariant 11)" section: atomic visibility checked on real NATS) runs a
// ring of 3 sidecar processes, dc1 → dc2 → dc3 → dc1, in which clients at
// every DC POST /v1/txn transactions of 2 to 8 puts and deletes (package
// txncheck plans them), each after single-key PUTs of the values it
// overwrites and deletes, and some followed by a single-key PUT that
// overtakes it. A reader at every DC polls GET /v1/kv?prefix= (one
// consistent snapshot) and reads the latest transactions of the other DCs
// key by key, and must never see a transaction in part. dc2, which forwards
// dc1's transactions to dc3, is SIGKILLed at random moments and restarted
// while all this goes on. Afterwards the DCs converge, every acknowledged
// transaction is whole at every DC, and dc1 and dc3 (never killed) applied
// each remote event, transaction ops included, exactly once.
func TestTxnRingSIGKILL(t *testing.T) {
	begin := time.Now()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	cycles := pick(3, 30)
	gapMax := pick(500*time.Millisecond, 2*time.Second) // writes between kills
	downMax := pick(500*time.Millisecond, 3*time.Second)
	const victim = "dc2"

	c := newCluster(t, clusterOptions{dcs: []string{"dc1", "dc2", "dc3"}, topology: config.Ring})
	w := newTxnClients(c, seed)
	defer w.halt()
	for k, m := range c.members {
		w.startReader(m)
		for i := range 2 {
			w.startWriter(m, i, 2, rand.New(rand.NewPCG(seed, uint64(10*k+i))))
		}
	}
	if err := repl.WaitFor(30*time.Second, 10*time.Millisecond, func() bool { return w.acked.Load() >= 30 }); err != nil {
		t.Fatalf("warm-up transactions: %v (%s)", err, w)
	}
	var down time.Duration
	for range cycles {
		repl.Hold(time.Duration(rng.Int64N(int64(gapMax))), nil)
		c.member(victim).kill()
		d := time.Duration(rng.Int64N(int64(downMax)))
		repl.Hold(d, nil)
		down += d
		c.member(victim).start()
		c.member(victim).waitHealthy(30 * time.Second)
	}
	// Every DC commits more after the last restart.
	base := w.committed.Counts()
	if err := repl.WaitFor(30*time.Second, 10*time.Millisecond, func() bool {
		now := w.committed.Counts()
		for _, m := range c.members {
			if now[m.name] < base[m.name]+10 {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatalf("transactions after the last restart: %v (%s)", err, w)
	}
	w.haltWriters()
	wrote := time.Since(begin)
	took := c.waitConverged(3 * time.Minute)
	w.halt()

	txns, ops := w.checkWhole(t)
	extra := exactlyOnce(t, c, "dc1", "dc3")
	c.checkLogs()
	t.Logf("%d SIGKILLs of %s, dead %s in all; %s; written in %s, converged %s after; %d transactions (%d ops) whole at each DC",
		cycles, victim, round(down), w, round(wrote), round(took), txns, ops)
	if n := w.tally.Violations.Load(); n > 0 || w.tally.Snapshots.Load() == 0 {
		t.Errorf("readers saw transactions in part (%s):\n  %s", &w.tally, strings.Join(w.tally.Examples(), "\n  "))
	}
	extra["sigkills"] = cycles
	extra["time_dead_total"] = round(down)
	extra["txns_acked"] = w.acked.Load()
	extra["txns_in_doubt"] = w.doubts.Load()
	extra["txn_ops_acked"] = w.ops.Load()
	extra["reader_snapshots"] = w.tally.Snapshots.Load()
	extra["reader_sequences"] = w.tally.Sequences.Load()
	extra["txns_seen_whole"] = w.tally.Complete.Load()
	extra["txns_seen_not_yet"] = w.tally.Pending.Load()
	extra["txns_seen_in_part"] = w.tally.Violations.Load()
	report(t, figures{
		Seed:       seed,
		Faults:     fmt.Sprintf("%d SIGKILLs of the forwarding DC %s of a ring of 3, dead 0-%s each, while every DC commits transactions", cycles, victim, downMax),
		Operations: w.requests.Load(),
		Acked:      w.acked.Load(),
		Converge:   round(took),
		Extra:      extra,
	}, begin)
}

// txnClients drive transactions at a cluster's DCs over HTTP and read
// them back (see package txncheck).
type txnClients struct {
	c     *cluster
	seed  uint64
	tally txncheck.Tally
	// acked counts transactions answered 200, ops their checked ops,
	// doubts those that got no answer (maybe committed), requests every
	// HTTP request made.
	acked, ops, doubts, requests atomic.Int64

	// committed holds the acknowledged transactions.
	committed txncheck.Log

	stopWriters, stopReaders chan struct{}
	writers, readers         sync.WaitGroup
}

func newTxnClients(c *cluster, seed uint64) *txnClients {
	return &txnClients{c: c, seed: seed, stopWriters: make(chan struct{}), stopReaders: make(chan struct{})}
}

func (w *txnClients) String() string {
	return fmt.Sprintf("%d transactions acked (%d checked ops), %d in doubt; readers: %s", w.acked.Load(), w.ops.Load(), w.doubts.Load(), &w.tally)
}

func (w *txnClients) haltWriters() {
	select {
	case <-w.stopWriters:
	default:
		close(w.stopWriters)
	}
	w.writers.Wait()
}

// halt stops the writers, then the readers.
func (w *txnClients) halt() {
	w.haltWriters()
	select {
	case <-w.stopReaders:
	default:
		close(w.stopReaders)
	}
	w.readers.Wait()
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// afterFailure waits a little after a failed request, so a client of a
// dead DC does not spin; it returns early when ch closes.
func afterFailure(ch <-chan struct{}) {
	repl.Hold(20*time.Millisecond, ch)
}

// startWriter commits transactions w, w+workers, ... at m until halted.
// A transaction whose pre values could not all be written is given up
// (its keys show nothing of it); one without an answer is in doubt: it
// may be committed, whole or not at all.
func (w *txnClients) startWriter(m *member, i, workers int, rng *rand.Rand) {
	w.writers.Go(func() {
		for n := i; !isClosed(w.stopWriters); n += workers {
			txn := txncheck.Plan(w.seed, m.name, n)
			if !w.commit(m, txn) {
				afterFailure(w.stopWriters)
				continue
			}
			if rng.IntN(3) == 0 {
				op := txn.Ops[rng.IntN(len(txn.Ops))]
				w.overtake(m, op.Key, n)
			}
		}
	})
}

// commit writes the pre values of txn, then POSTs it, each op with the
// context of its pre value. It reports whether the transaction was
// acknowledged.
func (w *txnClients) commit(m *member, txn txncheck.Txn) bool {
	type op struct {
		Op        string  `json:"op"`
		Key       string  `json:"key"`
		ValueText *string `json:"value_text,omitempty"`
		Context   string  `json:"context,omitempty"`
	}
	var body struct {
		Ops []op `json:"ops"`
	}
	for _, o := range txn.Ops {
		x := op{Op: "put", Key: o.Key}
		if o.Kind != txncheck.Fresh {
			w.requests.Add(1)
			wr, _, err := w.c.write(m, o.Key, txncheck.Pre(o.Key), nil)
			if err != nil {
				return false
			}
			x.Context = wr.Context
		}
		if o.Kind == txncheck.Delete {
			x.Op = "del"
		} else {
			v := string(txncheck.TxnValue(o.Key))
			x.ValueText = &v
		}
		body.Ops = append(body.Ops, x)
	}
	if txn.Hot != "" {
		w.requests.Add(1)
		cur, status, err := w.c.get(m, txn.Hot)
		if err != nil || status != http.StatusOK && status != http.StatusNotFound {
			return false
		}
		v := string(txncheck.HotValue(txn))
		body.Ops = append(body.Ops, op{Op: "put", Key: txn.Hot, ValueText: &v, Context: cur.Context})
	}
	b, err := json.Marshal(body)
	if err != nil {
		w.c.t.Errorf("encode transaction %s: %v", txn.ID(), err)
		return false
	}
	w.requests.Add(1)
	resp, err := w.c.client.Post(m.url("/v1/txn"), "application/json", bytes.NewReader(b))
	if err != nil {
		if !sidecar.IsRefused(err) {
			w.doubts.Add(1)
		}
		return false
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(resp.Body)
	switch {
	case err != nil || resp.StatusCode >= 500:
		w.doubts.Add(1)
		return false
	case resp.StatusCode != http.StatusOK:
		w.c.t.Errorf("POST /v1/txn %s at %s: %s %s", txn.ID(), m.name, resp.Status, bytes.TrimSpace(reply))
		return false
	}
	var res struct {
		Results []sidecar.WriteResp `json:"results"`
	}
	if err := json.Unmarshal(reply, &res); err != nil || len(res.Results) != len(body.Ops) {
		w.c.t.Errorf("POST /v1/txn %s at %s: answer %s: %v, want %d results", txn.ID(), m.name, reply, err, len(body.Ops))
		return false
	}
	a := txncheck.Acked{Txn: txn}
	for _, r := range res.Results[:len(txn.Ops)] {
		dot, err := vclock.ParseDot(r.Dot)
		if err != nil {
			w.c.t.Errorf("POST /v1/txn %s at %s: answer %s: %v", txn.ID(), m.name, reply, err)
			return false
		}
		a.Dots = append(a.Dots, dot)
	}
	w.acked.Add(1)
	w.ops.Add(int64(len(txn.Ops)))
	w.committed.Add(a)
	return true
}

// overtake reads key and PUTs a post value over it with the context read.
func (w *txnClients) overtake(m *member, key string, i int) {
	w.requests.Add(2)
	cur, status, err := w.c.get(m, key)
	if err != nil || status != http.StatusOK && status != http.StatusNotFound {
		return
	}
	w.c.write(m, key, txncheck.Post(key, i), &cur.Context) // a failure leaves the transaction as it was
}

// startReader checks, at m until halted, listings of every checked key and
// the latest transactions of the other DCs read key by key.
func (w *txnClients) startReader(m *member) {
	lookup := func(origin string, n int) (txncheck.Txn, bool) {
		for _, o := range w.c.opts.dcs {
			if o == origin {
				return txncheck.Plan(w.seed, origin, n), true
			}
		}
		return txncheck.Txn{}, false
	}
	w.readers.Go(func() {
		for !isClosed(w.stopReaders) {
			snap, err := w.list(m)
			if err != nil {
				afterFailure(w.stopReaders) // the DC is down, or the listing broke off
				continue
			}
			w.tally.Snapshot(m.name, snap, lookup)
			for _, txn := range w.committed.Latest(m.name, 2) {
				obs := make([]txncheck.Observation, len(txn.Ops))
				ok := true
				for i, op := range txn.Ops {
					v, status, err := w.c.get(m, op.Key)
					if err != nil {
						ok = false
						break
					}
					obs[i] = txncheck.Observation{Present: status == http.StatusOK, Live: v.LiveValues()}
				}
				if ok {
					w.tally.Sequence(m.name, txn, obs)
				}
			}
		}
	})
}

// list reads GET /v1/kv?prefix= of the checked keys: one consistent
// snapshot of the DC, by key.
func (w *txnClients) list(m *member) (map[string]txncheck.Observation, error) {
	views, err := w.listViews(m)
	if err != nil {
		return nil, err
	}
	snap := make(map[string]txncheck.Observation, len(views))
	for k, v := range views {
		snap[k] = txncheck.Observation{Present: true, Live: v.LiveValues()}
	}
	return snap, nil
}

func (w *txnClients) listViews(m *member) (map[string]kvView, error) {
	resp, err := w.c.client.Get(m.url("/v1/kv?prefix=" + txncheck.Prefix))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /v1/kv?prefix=%s at %s: %s %s", txncheck.Prefix, m.name, resp.Status, bytes.TrimSpace(b))
	}
	out := map[string]kvView{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var line struct {
			kvView
			Error string `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return nil, fmt.Errorf("listing at %s: %q: %w", m.name, sc.Bytes(), err)
		}
		if line.Error != "" {
			return nil, fmt.Errorf("listing at %s broke off: %s", m.name, line.Error)
		}
		out[line.Key] = line.kvView
	}
	return out, sc.Err()
}

// checkWhole requires every acknowledged transaction to be whole at every
// DC, from one listing each: every put shows the transaction or a later
// write, under a context that covers the op's dot; a deleted key is not
// listed, or shows a later write.
func (w *txnClients) checkWhole(t *testing.T) (txns, ops int) {
	t.Helper()
	all := w.committed.All()
	for _, m := range w.c.members {
		views, err := w.listViews(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range all {
			for i, op := range a.Txn.Ops {
				v, listed := views[op.Key]
				clock, err := vclock.Parse(v.Context)
				if listed && err != nil {
					t.Errorf("%s lists %s with context %q: %v", m.name, op.Key, v.Context, err)
				}
				if !txncheck.Whole(op, txncheck.Observation{Present: listed, Live: v.LiveValues()}, clock, a.Dots[i]) {
					t.Errorf("%s lacks op %d (%s, dot %s) of transaction %s acknowledged by %s: listed %t, context %s, values %q",
						m.name, i, op.Key, a.Dots[i], a.Txn.ID(), a.Txn.Origin, listed, v.Context, v.LiveValues())
				}
			}
			ops += len(a.Txn.Ops)
		}
	}
	return len(all), ops / len(w.c.members)
}
