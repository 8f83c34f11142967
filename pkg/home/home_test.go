package home

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/changelog"
)

func openStore(t *testing.T, dir string) *changelog.Store {
	t.Helper()
	st, err := changelog.Open(dir, changelog.Options{DC: "dc2", DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

var acct = Rule{Prefix: "acct/", DCs: []string{"dc1", "dc2"}, Failover: true, Timeout: time.Second}

func newRouter(t *testing.T, st *changelog.Store) *Router {
	t.Helper()
	r, err := New(Options{DC: "dc2", Rules: []Rule{acct}, Epochs: st, Local: st.Write})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ask(t *testing.T, r *Router, req request) reply {
	t.Helper()
	b, err := msgpack.Marshal(&req)
	if err != nil {
		t.Fatal(err)
	}
	return r.handle(b, false)
}

// TestFencing walks dc2 through the requests it may receive as a candidate
// home, checking which it executes and which it refuses, and that its
// epoch survives a restart.
func TestFencing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	st := openStore(t, dir)
	r := newRouter(t, st)
	write := func(epoch uint64) request {
		return request{V: Protocol, Op: opWrite, From: "dc3", Prefix: "acct/", DCs: acct.DCs, Epoch: epoch, Key: "acct/1", Value: []byte("v"), Blind: true}
	}
	steps := []struct {
		name      string
		req       request
		status    int
		epoch     uint64
		home      string
		errSubstr string
	}{
		{"epoch 0 names dc1, not dc2", write(0), http.StatusConflict, 0, "dc1", "epoch 0 names another home"},
		{"epoch 1 makes dc2 the home", write(1), http.StatusOK, 1, "dc2", ""},
		{"epoch 1 again is accepted", write(1), http.StatusOK, 1, "dc2", ""},
		{"a stale epoch is refused", write(0), http.StatusConflict, 1, "dc2", "epoch 0 is stale"},
		{"a probe answers the view", request{V: Protocol, Op: opProbe, Prefix: "acct/"}, http.StatusOK, 1, "dc2", ""},
		{"configs disagree", func() request { q := write(1); q.DCs = []string{"dc2"}; return q }(), http.StatusConflict, 0, "", "configs disagree"},
		{"no rule for the key", func() request { q := write(1); q.Key = "users/1"; q.Prefix = ""; return q }(), http.StatusConflict, 0, "", "no home rule"},
		{"unknown op", request{V: Protocol, Op: "take"}, http.StatusBadRequest, 0, "", `unknown op "take"`},
		{"other protocol", request{V: 9, Op: opProbe}, http.StatusBadRequest, 0, "", "protocol version 9"},
	}
	for _, s := range steps {
		rep := ask(t, r, s.req)
		if rep.Status != s.status || rep.Epoch != s.epoch || rep.Home != s.home || !strings.Contains(rep.Error, s.errSubstr) {
			t.Errorf("%s: got %d epoch %d home %q error %q; want %d epoch %d home %q error containing %q",
				s.name, rep.Status, rep.Epoch, rep.Home, rep.Error, s.status, s.epoch, s.home, s.errSubstr)
		}
	}
	if rep := r.handle([]byte{0xc1}, false); rep.Status != http.StatusBadRequest {
		t.Errorf("garbage request: %+v, want 400", rep)
	}

	// A higher epoch naming dc1 (from a probe or a refusal) makes dc2 step
	// down: a write under that epoch is refused.
	if err := r.learn(context.Background(), r.rules[0], changelog.HomeEpoch{Epoch: 2, Home: "dc1"}, "dc1"); err != nil {
		t.Fatal(err)
	}
	if rep := ask(t, r, write(2)); rep.Status != http.StatusConflict || rep.Home != "dc1" || rep.Epoch != 2 {
		t.Errorf("write under dc1's epoch at dc2: %+v; want 409 naming dc1 in epoch 2", rep)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// The view survives a restart.
	st = openStore(t, dir)
	defer st.Close()
	r = newRouter(t, st)
	if s := r.Status(); len(s) != 1 || s[0].Home != "dc1" || s[0].Epoch != 2 || s[0].Policy != "failover" {
		t.Errorf("status after restart %+v; want home dc1 in epoch 2", s)
	}
	if rep := ask(t, r, write(1)); rep.Status != http.StatusConflict {
		t.Errorf("stale write after restart: %+v; want 409", rep)
	}
}

// TestNoRuleWritesLocally: keys no rule matches never leave the DC, and a
// router without a connection still serves them.
func TestNoRuleWritesLocally(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "store"))
	defer st.Close()
	r := newRouter(t, st)
	res, err := r.Write(context.Background(), changelog.WriteOp{Key: "users/1", Value: []byte("x")})
	if err != nil || res.Event.Dot.DC != "dc2" {
		t.Fatalf("write: %v %+v", err, res.Event)
	}
	// Without NATS, a homed key has no reachable home but this DC itself,
	// which is second in the list: it takes over.
	res, err = r.Write(context.Background(), changelog.WriteOp{Key: "acct/1", Value: []byte("x")})
	if err != nil || res.Event.Dot.DC != "dc2" || r.Status()[0].Epoch != 1 {
		t.Fatalf("write with no connection: %v %+v %+v", err, res.Event, r.Status())
	}
}
