package home

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

type memEpochs struct {
	mu sync.Mutex
	m  map[string]changelog.HomeEpoch
}

func (e *memEpochs) HomeEpoch(p string) (changelog.HomeEpoch, bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.m[p]
	return v, ok, nil
}

func (e *memEpochs) SetHomeEpoch(_ context.Context, p string, v changelog.HomeEpoch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m[p] = v
	return nil
}

// startNATS runs a NATS server (core only) for the test and returns its
// URL; maxPayload 0 keeps the server's default.
func startNATS(t *testing.T, maxPayload int32) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, MaxPayload: maxPayload})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns.ClientURL()
}

// memRouter is a router of dc with one rule, epochs in memory, no probes.
func memRouter(t *testing.T, dc string, rl Rule, local WriteFunc) *Router {
	t.Helper()
	r, err := New(Options{DC: dc, Rules: []Rule{rl}, Epochs: &memEpochs{m: map[string]changelog.HomeEpoch{}}, Local: local, ProbeInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// serve connects r to the server at url and starts it; the returned stop
// (also run at the end of the test) closes the router, then its
// connection.
func serve(t *testing.T, url string, r *Router) (stop func()) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), nc); err != nil {
		nc.Close()
		t.Fatal(err)
	}
	stop = sync.OnceFunc(func() {
		r.Close()
		nc.Close()
	})
	t.Cleanup(stop)
	return stop
}

// TestSlowHomeDoesNotShareAnEpoch: dc1 is down; dc3 writes acct/1. dc2
// is slow (longer than the rule's timeout), so dc3 gives up on it and
// takes over itself. dc2 may still have been granted the epoch dc3
// proposed to it, so dc3 must take over under a higher one: before the
// fix both were home in epoch 1 and probes never settled it (found in
// review). The write itself runs at both, which is the documented cost of
// a timeout ("may still be applied").
func TestSlowHomeDoesNotShareAnEpoch(t *testing.T) {
	url := startNATS(t, 0)

	rl := Rule{Prefix: "acct/", DCs: []string{"dc1", "dc2", "dc3"}, Failover: true, Timeout: 200 * time.Millisecond}
	var mu sync.Mutex
	var applied []string
	// dc2 is slow: its writes wait for slowDC2 to close, which the test
	// does once dc3 has given up on it and taken over.
	slowDC2 := make(chan struct{})
	var release sync.Once
	local := func(dc string) WriteFunc {
		return func(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error) {
			if dc == "dc2" {
				<-slowDC2
			}
			mu.Lock()
			applied = append(applied, dc)
			mu.Unlock()
			return changelog.WriteResult{State: dvv.State{Clock: vclock.VV{dc: 1}}}, nil
		}
	}
	routers := map[string]*Router{}
	for _, dc := range []string{"dc2", "dc3"} {
		routers[dc] = memRouter(t, dc, rl, local(dc))
		serve(t, url, routers[dc])
	}
	t.Cleanup(func() { release.Do(func() { close(slowDC2) }) }) // before the routers stop
	// dc1 is down: no responders on repl.home.dc1.
	if _, err := routers["dc3"].Write(context.Background(), changelog.WriteOp{Key: "acct/1", Value: []byte("debit 100")}); err != nil {
		t.Fatalf("write at dc3: %v", err)
	}
	// dc2 finishes the write dc3 gave up on.
	release.Do(func() { close(slowDC2) })
	finished := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, dc := range applied {
			if dc == "dc2" {
				return true
			}
		}
		return false
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(10 * time.Second); !finished(); <-tick.C {
		if time.Now().After(deadline) {
			t.Fatal("dc2 did not finish the write dc3 gave up on within 10s")
		}
	}
	routers["dc2"].probeAll(context.Background())
	routers["dc3"].probeAll(context.Background())
	s2, s3 := routers["dc2"].Status()[0], routers["dc3"].Status()[0]
	mu.Lock()
	t.Logf("applied at %v; dc2 view: home %s epoch %d; dc3 view: home %s epoch %d", applied, s2.Home, s2.Epoch, s3.Home, s3.Epoch)
	n := len(applied)
	mu.Unlock()
	if n > 2 {
		t.Errorf("one client write was executed %d times; at most at the slow DC and at the one that took over", n)
	}
	if s2.Epoch != s3.Epoch || s2.Home != s3.Home || s3.Home != "dc3" {
		t.Errorf("after probes the DCs disagree or dc3 is not home: dc2 thinks %s in epoch %d, dc3 thinks %s in epoch %d", s2.Home, s2.Epoch, s3.Home, s3.Epoch)
	}
	if s2.Epoch == s3.Epoch && s2.Home != s3.Home {
		t.Errorf("two homes in epoch %d: dc2 thinks %s, dc3 thinks %s (after probes)", s2.Epoch, s2.Home, s3.Home)
	}
}

// TestMaxPayloadIsNotADeadHome (found in review, fixed): a forwarded write larger than the
// NATS server's max_payload fails in Publish with nats.ErrMaxPayload;
// request() files it under "request failed" (a reason, i.e. "did not
// answer"), so under failover the sender takes the home over from a live
// dc1 (epoch bump) and writes locally; under reject it is a 503 "retry
// later" that no retry can fix (it should be a 413/400).
func TestMaxPayloadIsNotADeadHome(t *testing.T) {
	url := startNATS(t, 64<<10)
	rl := Rule{Prefix: "acct/", DCs: []string{"dc1", "dc2"}, Failover: true, Timeout: time.Second}
	var mu sync.Mutex
	var applied []string
	routers := map[string]*Router{}
	for _, dc := range []string{"dc1", "dc2"} {
		routers[dc] = memRouter(t, dc, rl, func(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error) {
			mu.Lock()
			applied = append(applied, dc)
			mu.Unlock()
			return changelog.WriteResult{State: dvv.State{Clock: vclock.VV{dc: 1}}}, nil
		})
		serve(t, url, routers[dc])
	}
	_, err := routers["dc2"].Write(context.Background(), changelog.WriteOp{Key: "acct/1", Value: make([]byte, 100<<10)})
	s := routers["dc2"].Status()[0]
	t.Logf("err=%v applied at %v; dc2 view: home %s epoch %d", err, applied, s.Home, s.Epoch)
	if s.Home != "dc1" {
		t.Errorf("dc1 is up and serving, but a large value moved the home to %s (epoch %d)", s.Home, s.Epoch)
	}
	if he := (*Error)(nil); !errors.As(err, &he) || he.Status != 413 {
		t.Errorf("a value over max_payload: %v, want a 413", err)
	}
}

// TestContextWaitAnswersBeforeHomeTimeout (found in review, fixed): the node opens its store with
// ContextWait 5s (the config's context_wait) while a home rule's timeout
// defaults to 2s. A forwarded write whose context names an event the home
// has not applied yet waits at the home longer than the sender waits for
// the answer, so the ErrContextAhead 503 never reaches the client: under
// reject the client gets a "timeout" 503, under failover the sender moves
// the home away from a live, merely lagging home and writes elsewhere,
// while the home may still apply the write once it catches up.
func TestContextWaitAnswersBeforeHomeTimeout(t *testing.T) {
	url := startNATS(t, 0)
	st1, err := changelog.Open(t.TempDir(), changelog.Options{DC: "dc1", DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 4, ContextWait: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer st1.Close()
	for _, failover := range []bool{false, true} {
		func() {
			prefix := "r/"
			dcs := []string{"dc1"}
			if failover {
				prefix, dcs = "f/", []string{"dc1", "dc2"}
			}
			rl := Rule{Prefix: prefix, DCs: dcs, Failover: failover, Timeout: 500 * time.Millisecond}
			r1, err := New(Options{DC: "dc1", Rules: []Rule{rl}, Epochs: st1, Local: st1.Write, ProbeInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			r2 := memRouter(t, "dc2", rl, func(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error) {
				// dc2 has applied dc3:5 (the client read it here).
				return changelog.WriteResult{State: dvv.State{Clock: vclock.VV{"dc2": 1, "dc3": 5}}}, nil
			})
			// Each round's routers stop with it: both rounds serve dc1.
			defer serve(t, url, r1)()
			defer serve(t, url, r2)()
			_, err = r2.Write(context.Background(), changelog.WriteOp{Key: prefix + "1", Value: []byte("v"), Context: vclock.VV{"dc3": 5}})
			s := r2.Status()[0]
			t.Logf("failover=%v: err=%v; dc2 view: home %s epoch %d", failover, err, s.Home, s.Epoch)
			if !failover && (err == nil || !strings.Contains(err.Error(), "context names")) {
				t.Errorf("reject: want the home's context-ahead 503, got %v", err)
			}
			if failover && s.Home != "dc1" {
				t.Errorf("failover: dc1 is up, only behind on dc3's events, but the home moved to %s in epoch %d", s.Home, s.Epoch)
			}
		}()
	}
}

// TestConfigsDisagreeIs409 (found in review, fixed): the home answers "configs
// disagree" with 409 and a zero epoch/home. At epoch 0 the sender reads
// that as a fencing refusal (rep.Epoch == epoch && rep.Home != target),
// re-sends the write len(DCs)+2 times and answers 503 "the home kept
// moving; retry" instead of the 409 saying the configs disagree.
func TestConfigsDisagreeIs409(t *testing.T) {
	url := startNATS(t, 0)
	var mu sync.Mutex
	calls := 0
	local := func(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error) {
		return changelog.WriteResult{}, nil
	}
	serve(t, url, memRouter(t, "dc1", Rule{Prefix: "acc", DCs: []string{"dc1"}, Timeout: time.Second}, local))
	r2 := memRouter(t, "dc2", Rule{Prefix: "acct/", DCs: []string{"dc1"}, Timeout: time.Second}, local)
	serve(t, url, r2)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, _ := nc.Subscribe(names.HomeSubject("dc1"), func(*nats.Msg) { mu.Lock(); calls++; mu.Unlock() })
	defer sub.Unsubscribe()
	nc.Flush()
	_, err = r2.Write(context.Background(), changelog.WriteOp{Key: "acct/1", Value: []byte("v")})
	var he *Error
	errors.As(err, &he)
	mu.Lock()
	t.Logf("requests sent: %d; err: %v", calls, err)
	mu.Unlock()
	if he == nil || he.Status != 409 {
		t.Errorf("want 409 configs disagree, got %v", err)
	}
}

// TestAbsurdEpochRefused (found in review, fixed): a request under epoch
// 2^64-1 was executed and recorded; the next failover computed epoch+1 ==
// 0, stale everywhere, so the rule could never fail over again, even
// after a restart. Epochs at or above MaxEpoch are now refused, in
// requests and in the views other DCs report.
func TestAbsurdEpochRefused(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "store"))
	defer st.Close()
	r := newRouter(t, st)
	defer r.Close()
	before := r.rules[0].view()
	rep := ask(t, r, request{V: Protocol, Op: opWrite, From: "dc3", Prefix: "acct/", DCs: acct.DCs, Epoch: math.MaxUint64, Key: "acct/1", Value: []byte("v"), Blind: true})
	if rep.Status != 400 {
		t.Errorf("a request under epoch 2^64-1: status %d %q, want 400", rep.Status, rep.Error)
	}
	if err := r.learn(context.Background(), r.rules[0], changelog.HomeEpoch{Epoch: MaxEpoch, Home: "dc1"}, "dc1"); err == nil {
		t.Error("a view claiming epoch MaxEpoch was learned")
	}
	if after := r.rules[0].view(); after != before {
		t.Errorf("the view moved from %+v to %+v", before, after)
	}
	if _, ok, err := st.HomeEpoch("acct/"); err != nil || ok && before.Epoch == 0 {
		t.Errorf("an epoch was recorded durably: ok %t, err %v", ok, err)
	}
}

// TestCloseAnswersWhatItReceived: a router that closes answers the
// requests the server already sent it. Before the fix Close unsubscribed
// and dropped them, so their senders waited out the rule's timeout and
// took the DC for dead: in TestShardedHomeTakeover a probe that reached
// dc1's closing shard made dc3 try dc1 last for a while, and the failback
// to dc1 went to dc2 (1 run in 5 or so). Here dc1 executes one forwarded
// write at a time; while the first is held, two probes arrive (one taken
// off the subscription, one waiting in it), then dc1 closes.
func TestCloseAnswersWhatItReceived(t *testing.T) {
	url := startNATS(t, 0)
	rl := Rule{Prefix: "acct/", DCs: []string{"dc1", "dc2"}, Failover: true, Timeout: time.Second}
	entered, hold := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r, err := New(Options{DC: "dc1", Rules: []Rule{rl}, Epochs: &memEpochs{m: map[string]changelog.HomeEpoch{}}, ProbeInterval: time.Hour, MaxInFlight: 1,
		Local: func(ctx context.Context, op changelog.WriteOp) (changelog.WriteResult, error) {
			once.Do(func() { close(entered) })
			<-hold
			return changelog.WriteResult{State: dvv.State{Clock: vclock.VV{"dc1": 1}}}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	serve(t, url, r)
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release) // before the router closes
	sender, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	reqs := []request{
		{V: Protocol, Op: opWrite, From: "dc2", Prefix: rl.Prefix, DCs: rl.DCs, Epoch: 0, Key: "acct/1", Value: []byte("v"), Blind: true},
		{V: Protocol, Op: opProbe, From: "dc2", Prefix: rl.Prefix},
		{V: Protocol, Op: opProbe, From: "dc2", Prefix: rl.Prefix},
	}
	errs := make(chan error, len(reqs))
	for i, q := range reqs {
		b, err := encode(&q)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			_, err := sender.Request(names.HomeSubject("dc1"), b, 3*time.Second)
			errs <- err
		}()
		if i == 0 {
			<-entered // the write holds the only slot
		}
	}
	r.mu.Lock()
	sub := r.mu.sub
	r.mu.Unlock()
	// Pending counts the message in the handler (the first probe, waiting
	// for the slot) and those queued behind it.
	waitFor(t, "the second probe to wait in dc1's subscription", func() bool { n, _, _ := sub.Pending(); return n == 2 })
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	waitFor(t, "dc1 to stop serving", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.mu.sub == nil })
	release()
	for i := range reqs {
		if err := <-errs; err != nil {
			t.Errorf("request %d of %d to the closing dc1: %v; want an answer", i+1, len(reqs), err)
		}
	}
	if err := <-closed; err != nil {
		t.Errorf("close: %v", err)
	}
}

// waitFor waits up to 10s for cond, checking every 5ms.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(10 * time.Second); !cond(); <-tick.C {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
