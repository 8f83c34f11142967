package node

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// A transaction from another DC may span this DC's shards (a DC with more
// shards than the origin, or another layout). Each shard applies its own
// ops, but only once every shard owning an op has prepared: recorded
// them durably (changelog.Store.Prepare) and made reads of their keys
// wait. So a reader never sees one shard's part and then, at another
// shard, the state before the transaction (invariants 11 and 16 in
// docs/DESIGN.md). The shards ask each other on the owners' subjects
// (repl.shard.<dc>.<p>, Repl-Shard-Kind "txn.state").

var _ core.Coordinator = (*shards)(nil)

// prepareWait bounds how long Prepare waits for the other shards before
// the message is offered again later. The wait holds up the link's other
// messages, and another shard may be held up the same way by a message
// this one has not reached yet: waiting at every transaction chained
// into stalls of tens of seconds in a ring of sharded DCs
// (TestShardedRing), so a link waits at most once per batch
// (core.Link.Receive). A shorter wait (500ms) left every round short of
// the answers under -race on a busy machine (TestTxnSpanningReceiverShards
// stalled).
const prepareWait = 2 * time.Second

// txnState is the question one shard asks another about a transaction,
// and the answer: "prepared", "applied" or "no".
type txnState struct {
	ID     string      `json:"id"`
	Origin string      `json:"origin"`
	Ops    [][2]uint64 `json:"ops"`
	State  string      `json:"state,omitempty"`
}

// held is the keys reads must wait for, by prepared transaction.
type held struct {
	mu    sync.Mutex
	txns  map[string][]string
	keys  map[string]int
	moved chan struct{}
}

func newHeld() *held {
	return &held{txns: map[string][]string{}, keys: map[string]int{}, moved: make(chan struct{})}
}

func (h *held) add(id string, keys []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.txns[id]; ok {
		return
	}
	h.txns[id] = keys
	for _, k := range keys {
		h.keys[k]++
	}
}

func (h *held) remove(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys, ok := h.txns[id]
	if !ok {
		return
	}
	delete(h.txns, id)
	for _, k := range keys {
		if h.keys[k]--; h.keys[k] <= 0 {
			delete(h.keys, k)
		}
	}
	close(h.moved)
	h.moved = make(chan struct{})
}

func (h *held) has(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.txns[id]
	return ok
}

// wait returns once key (or, for "", every key) is held by no prepared
// transaction, or an error past ctx.
func (h *held) wait(ctx context.Context, key string) error {
	for {
		h.mu.Lock()
		busy := len(h.txns) > 0
		if key != "" {
			busy = h.keys[key] > 0
		}
		moved := h.moved
		h.mu.Unlock()
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("a transaction from another DC whose keys span this DC's shards is being applied and holds %s: retry", orEvery(key))
		case <-moved:
		}
	}
}

func orEvery(key string) string {
	if key == "" {
		return "keys of this shard"
	}
	return fmt.Sprintf("key %q", key)
}

// loadPrepared restores, at start, the transactions this shard prepared
// and had not applied, so reads of their keys wait again; those applied
// meanwhile are forgotten.
func (s *shards) loadPrepared(ctx context.Context) error {
	ps, err := s.n.store.PreparedTxns()
	if err != nil {
		return err
	}
	applied := s.n.store.Applied()
	for id, p := range ps {
		if p.Covered(applied) {
			if err := s.n.store.Unprepare(ctx, id); err != nil {
				return err
			}
			continue
		}
		s.held.add(id, p.Keys)
	}
	return nil
}

// Prepare records this shard's ops of transaction id as prepared and
// reports whether every other shard owning one of its ops has prepared or
// applied it, asking them for up to prepareWait (with wait) or once.
func (s *shards) Prepare(ctx context.Context, id string, all, own []*event.Event, wait bool) (bool, error) {
	if !s.held.has(id) {
		p := changelog.Prepared{Origin: own[0].Origin}
		for _, ev := range own {
			p.Keys = append(p.Keys, ev.Key)
			p.Ops = append(p.Ops, [2]uint64{uint64(ev.Partition), ev.Seq})
		}
		if err := s.n.store.Prepare(ctx, id, p); err != nil {
			return false, err
		}
		s.held.add(id, p.Keys)
	}
	// The other owners, by one partition each; each is asked about the
	// ops of every partition (it answers for its own).
	q := txnState{ID: id, Origin: all[0].Origin}
	var others []uint32
	for _, ev := range all {
		q.Ops = append(q.Ops, [2]uint64{uint64(ev.Partition), ev.Seq})
		if !s.owns(ev.Partition) && !slices.Contains(others, ev.Partition) {
			others = append(others, ev.Partition)
		}
	}
	body, err := json.Marshal(q)
	if err != nil {
		return false, err
	}
	deadline := time.Now().Add(prepareWait)
	pause := 5 * time.Millisecond
	for {
		pending := others[:0:0]
		for _, p := range others {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			m, err := s.n.nc.RequestMsgWithContext(rctx, &nats.Msg{Subject: names.ShardSubject(s.n.cfg.DC, p), Header: nats.Header{HeaderShardKind: {"txn.state"}}, Data: body})
			cancel()
			var a txnState
			if err != nil || json.Unmarshal(m.Data, &a) != nil || (a.State != "prepared" && a.State != "applied") {
				pending = append(pending, p)
			}
		}
		if len(pending) == 0 {
			return true, nil
		}
		others = pending
		if !wait || time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(pause): // a bounded poll: the other shard prepares on its own schedule
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
}

// Done forgets transaction id once this shard applied its ops.
func (s *shards) Done(ctx context.Context, id string) {
	if !s.held.has(id) {
		return
	}
	if err := s.n.store.Unprepare(ctx, id); err != nil {
		s.n.log.Warn("forget a prepared transaction", "id", id, "err", err)
	}
	s.held.remove(id)
}

// answerTxnState tells another shard how far this one is with a
// transaction: applied (every op of this shard's partitions covered, held
// or not yet forgotten), prepared or no.
func (s *shards) answerTxnState(m *nats.Msg) {
	var q txnState
	if err := json.Unmarshal(m.Data, &q); err != nil {
		_ = m.Respond([]byte(`{"state":"no"}`))
		return
	}
	a := txnState{ID: q.ID, State: "no"}
	applied := s.n.store.Applied()
	mine, covered := 0, 0
	for _, op := range q.Ops {
		if !s.owns(uint32(op[0])) {
			continue
		}
		mine++
		if applied.Covers(q.Origin, uint32(op[0]), op[1]) {
			covered++
		}
	}
	switch {
	case mine > 0 && covered == mine:
		a.State = "applied"
	case s.held.has(q.ID):
		a.State = "prepared"
	}
	b, _ := json.Marshal(a)
	_ = m.Respond(b)
}
