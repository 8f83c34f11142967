package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/client"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/node"
)

// eventually polls cond every interval until it holds, and fails the test
// with what and cond's last explanation after timeout.
func eventually(t *testing.T, timeout, interval time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, why)
		}
		tick := time.NewTimer(interval)
		<-tick.C
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "client-test-token"

// sidecars starts two real DCs, dc1 and dc2 of a mesh, on one embedded
// NATS server, each serving its HTTP API with a token, and returns their
// addresses. Keys under doc/ use the record resolver; the rest siblings.
func sidecars(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	ns, err := bridge.StartEmbedded(bridge.EmbeddedOptions{StoreDir: filepath.Join(dir, "nats"), JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{}
	var nodes []*node.Node
	t.Cleanup(func() {
		for _, n := range nodes {
			n.Close()
		}
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	for _, dc := range []string{"dc1", "dc2"} {
		cfg := config.Default()
		cfg.DC, cfg.DCs, cfg.DataDir, cfg.Partitions = dc, []string{"dc1", "dc2"}, filepath.Join(dir, dc), 4
		cfg.HTTP.Listen, cfg.HTTP.Token = "127.0.0.1:0", token
		cfg.ContextWait = config.Duration(50 * time.Millisecond)
		cfg.Resolvers.Rules = []config.Rule{{Prefix: "doc/", Resolver: config.Record}}
		cfg.Complete()
		n, err := node.New(cfg, node.Options{NATSURL: ns.ClientURL(), ReportInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
		if err := n.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		addrs[dc] = "http://" + n.HTTPAddr()
	}
	return addrs
}

// countingTransport counts the requests it sends.
type countingTransport struct{ n atomic.Int64 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

func newClient(t *testing.T, addr string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(addr, append([]client.Option{client.WithToken(token)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func strs(vs [][]byte) []string {
	var out []string
	for _, v := range vs {
		out = append(out, string(v))
	}
	slices.Sort(out)
	return out
}

// TestAgainstSidecars runs the client against two real sidecars: reads
// and writes with contexts, siblings resolved by Update, a transaction,
// the change feed read to its end and followed, the record resolver's
// conflict resolved, read-your-writes across DCs through a Session, a
// write waiting for every DC, a 503 retried after its Retry-After, and a
// watch.
func TestAgainstSidecars(t *testing.T) {
	addrs := sidecars(t)
	ctx := context.Background()
	tr := &countingTransport{}
	dc1 := newClient(t, addrs["dc1"], client.WithHTTPClient(&http.Client{Transport: tr}), client.WithRetries(2, 20*time.Millisecond))
	dc2 := newClient(t, addrs["dc2"])

	// A key without a value: ErrNotFound, with the context to create it.
	item, err := dc1.Get(ctx, "cart/alice")
	if !errors.Is(err, client.ErrNotFound) || item.Context != "{}" {
		t.Fatalf("Get of a missing key: %+v %v", item, err)
	}
	w, err := dc1.Put(ctx, "cart/alice", []byte("milk"), client.Context(item.Context))
	if err != nil || w.Dot != "dc1:1" || w.Session == "" {
		t.Fatalf("Put: %+v %v", w, err)
	}

	// Read your writes at the other DC: a session carries the token.
	var s client.Session
	if _, err := dc1.Put(ctx, "cart/bob", []byte("eggs"), client.InSession(&s)); err != nil {
		t.Fatal(err)
	}
	got, err := dc2.Get(ctx, "cart/bob", client.InSession(&s))
	if err != nil || strs(got.Values)[0] != "eggs" {
		t.Fatalf("Get in the session at dc2: %+v %v (token %q)", got, err, s.Token())
	}

	// Concurrent blind writes at both DCs are siblings; Update merges them
	// with the read's context, and both DCs then show the one value.
	eventually(t, 10*time.Second, 20*time.Millisecond, "cart/alice at dc2", func() (bool, string) {
		it, err := dc2.Get(ctx, "cart/alice")
		return err == nil, fmt.Sprint(it, err)
	})
	if _, err := dc2.Put(ctx, "cart/alice", []byte("bread")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, 20*time.Millisecond, "siblings at dc1", func() (bool, string) {
		it, err := dc1.Get(ctx, "cart/alice")
		return err == nil && it.Conflict && len(it.Siblings) == 2, fmt.Sprint(it, err)
	})
	w, err = dc1.Update(ctx, "cart/alice", func(cur client.Item) ([]byte, error) {
		return []byte(strings.Join(strs(cur.Values), "+")), nil
	}, client.WaitAll(5*time.Second))
	if err != nil || w.Replicated != 2 {
		t.Fatalf("Update waiting for every DC: %+v %v", w, err)
	}
	if it, err := dc2.Get(ctx, "cart/alice"); err != nil || it.Conflict || strs(it.Values)[0] != "bread+milk" {
		t.Fatalf("after Update, dc2 shows %+v %v, want the one value bread+milk", it, err)
	}

	// A transaction.
	tx, err := dc1.Txn(ctx, []client.TxnOp{{Key: "order/7", Value: []byte("lines=1")}, {Key: "order/7/line/0", Value: []byte("item")}, {Key: "cart/bob", Delete: true}})
	if err != nil || len(tx.Results) != 3 || tx.Session == "" {
		t.Fatalf("Txn: %+v %v", tx, err)
	}
	if list, err := dc1.List(ctx, "order/", 0); err != nil || len(list) != 2 {
		t.Fatalf("List order/: %+v %v", list, err)
	}

	// The change feed: from the start, unfollowed, the transaction's two
	// order keys; then followed from the last cursor, the next change.
	var last uint64
	var keys []string
	if err := dc1.Changes(ctx, client.FeedOptions{Prefix: "order/"}, func(ch client.Change) error {
		keys, last = append(keys, ch.Key), ch.Cursor
		return nil
	}); err != nil || fmt.Sprint(keys) != "[order/7 order/7/line/0]" || last == 0 {
		t.Fatalf("Changes of order/: %v, last cursor %d, %v", keys, last, err)
	}
	fctx, stop := context.WithCancel(ctx)
	next := make(chan client.Change, 1)
	fdone := make(chan error, 1)
	go func() {
		fdone <- dc1.Changes(fctx, client.FeedOptions{Since: last, Prefix: "order/", Follow: true, Heartbeat: time.Second}, func(ch client.Change) error {
			next <- ch
			return nil
		})
	}()
	if _, err := dc2.Put(ctx, "order/8", []byte("lines=0")); err != nil {
		t.Fatal(err)
	}
	select {
	case ch := <-next:
		if ch.Key != "order/8" || ch.Origin != "dc2" || ch.Cursor <= last || ch.Op != "put" {
			t.Errorf("the followed feed's next change: %+v", ch)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the followed feed did not deliver dc2's write")
	}
	stop()
	if err := <-fdone; !errors.Is(err, context.Canceled) {
		t.Errorf("Changes after cancel: %v", err)
	}

	// The record resolver keeps both values in an open record until it is
	// resolved; the resolved record keeps what it was resolved to.
	if _, err := dc1.Put(ctx, "doc/terms", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := dc2.Put(ctx, "doc/terms", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	var open []client.Conflict
	eventually(t, 10*time.Second, 20*time.Millisecond, "the open record at dc1", func() (bool, string) {
		open, err = dc1.Conflicts(ctx, client.ConflictFilter{Status: "open", Prefix: "doc/"})
		return err == nil && len(open) == 1 && len(open[0].Kept) == 2, fmt.Sprint(open, err)
	})
	if it, err := dc1.Resolve(ctx, open[0].ID, []byte("v3"), false); err != nil || strs(it.Values)[0] != "v3" {
		t.Fatalf("Resolve: %+v %v", it, err)
	}
	rec, err := dc1.Conflict(ctx, open[0].ID)
	if err != nil || rec.Status != "resolved" || rec.ResolvedBy != "dc1" || len(rec.ResolvedTo) != 1 || *rec.ResolvedTo[0].ValueText != "v3" {
		t.Fatalf("the resolved record: %+v %v", rec, err)
	}

	// A context naming an event dc1 has not applied: 503 with
	// Retry-After, retried twice, then the error.
	before := tr.n.Load()
	_, err = dc1.Put(ctx, "cart/carol", []byte("x"), client.Context("{dc2:1000}"))
	var e *client.Error
	if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || e.RetryAfter == 0 {
		t.Fatalf("a write with a context this DC lacks: %v, want a 503 with Retry-After", err)
	}
	if n := tr.n.Load() - before; n != 3 {
		t.Errorf("%d requests for a write answered 503 each time, want 3 (one and two retries)", n)
	}

	// A watch sees the changes applied at its DC.
	wctx, cancel := context.WithCancel(ctx)
	events := make(chan client.WatchEvent, 4)
	done := make(chan error, 1)
	go func() {
		done <- dc2.Watch(wctx, "watched/", func(ev client.WatchEvent) error { events <- ev; return nil })
	}()
	eventually(t, 10*time.Second, 50*time.Millisecond, "a watched change", func() (bool, string) {
		if _, err := dc1.Put(ctx, "watched/k", []byte("w")); err != nil {
			return false, err.Error()
		}
		select {
		case ev := <-events:
			return ev.Key == "watched/k" && ev.Origin == "dc1", fmt.Sprint(ev)
		case <-time.After(200 * time.Millisecond):
			return false, "no event yet"
		}
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch after cancel: %v", err)
	}
}
