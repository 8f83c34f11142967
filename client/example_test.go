package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http/httptest"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/client"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/httpapi"
)

// sidecarAPI serves one DC's HTTP API over an in-memory store, without
// replication, for the examples to run against; an application would use
// its sidecar's address, http://127.0.0.1:7070.
func sidecarAPI() (addr string, stop func()) {
	st, err := changelog.Open("/example", changelog.Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 4,
		FS: vfs.NewMem(), Clock: hlc.New(time.Now, 0)})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(httpapi.New(httpapi.StoreBackend{Store: st}, httpapi.Options{}))
	return srv.URL, func() { srv.Close(); st.Close() }
}

func Example() {
	addr, stop := sidecarAPI()
	defer stop()
	ctx := context.Background()

	c, err := client.New(addr) // client.WithToken(token) for a sidecar with http.token
	if err != nil {
		log.Fatal(err)
	}
	// Read before writing: a missing key still gives the context to
	// create it with.
	cur, err := c.Get(ctx, "greeting")
	if !errors.Is(err, client.ErrNotFound) {
		log.Fatal(err)
	}
	if _, err := c.Put(ctx, "greeting", []byte("hello"), client.Context(cur.Context)); err != nil {
		log.Fatal(err)
	}
	item, err := c.Get(ctx, "greeting")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (context %s)\n", item.Values[0], item.Context)
	// Output: hello (context {dc1:1})
}

// Update resolves siblings: two writes that did not see each other (here
// two blind writes) are both kept, and a read-modify-write with the read's
// context replaces them with one value.
func ExampleClient_Update() {
	addr, stop := sidecarAPI()
	defer stop()
	ctx := context.Background()
	c, _ := client.New(addr)
	c.Put(ctx, "cart/alice", []byte("milk"))
	c.Put(ctx, "cart/alice", []byte("eggs"))

	item, _ := c.Get(ctx, "cart/alice")
	fmt.Println(len(item.Values), "values, conflict:", item.Conflict)

	_, err := c.Update(ctx, "cart/alice", func(cur client.Item) ([]byte, error) {
		var all []string
		for _, v := range cur.Values {
			all = append(all, string(v))
		}
		slices.Sort(all)
		return []byte(strings.Join(all, ",")), nil
	})
	if err != nil {
		log.Fatal(err)
	}
	item, _ = c.Get(ctx, "cart/alice")
	fmt.Printf("%s, conflict: %v\n", item.Values[0], item.Conflict)
	// Output:
	// 2 values, conflict: true
	// eggs,milk, conflict: false
}

// Txn commits an order and its lines at once: every DC shows all of them
// or none.
func ExampleClient_Txn() {
	addr, stop := sidecarAPI()
	defer stop()
	ctx := context.Background()
	c, _ := client.New(addr)
	res, err := c.Txn(ctx, []client.TxnOp{
		{Key: "orders/7", Value: []byte(`{"lines":2}`)},
		{Key: "orders/7/line/0", Value: []byte("apples")},
		{Key: "orders/7/line/1", Value: []byte("pears")},
	})
	if err != nil {
		log.Fatal(err)
	}
	items, _ := c.List(ctx, "orders/7", 0)
	fmt.Println(len(res.Results), "ops committed,", len(items), "keys listed")
	// Output: 3 ops committed, 3 keys listed
}

// A Session carries the tokens of its writes to every later call: a read
// at another DC waits until that DC has applied them.
func ExampleSession() {
	addr, stop := sidecarAPI()
	defer stop()
	ctx := context.Background()
	dc1, _ := client.New(addr)
	var s client.Session
	if _, err := dc1.Put(ctx, "profile/alice", []byte("v2"), client.InSession(&s)); err != nil {
		log.Fatal(err)
	}
	// dc2, _ := client.New("http://dc2-sidecar:7070") would wait as well.
	item, err := dc1.Get(ctx, "profile/alice", client.InSession(&s))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(item.Values[0]), s.Token() != "")
	// Output: v2 true
}

// Changes follows the change feed from a snapshot and resumes by itself
// after a broken connection; a mirror stores each line's cursor with the
// data it derives from it, and passes it as Since after a restart.
func ExampleClient_Changes() {
	c, _ := client.New("http://127.0.0.1:7070")
	var last uint64 // persisted with the mirror's data
	err := c.Changes(context.Background(), client.FeedOptions{Since: last, Prefix: "orders/", Follow: true},
		func(ch client.Change) error {
			switch {
			case ch.Type == "change" && ch.Deleted:
				fmt.Println("delete", ch.Key)
			case ch.Type == "change":
				fmt.Println("upsert", ch.Key, len(ch.Values), "value(s)")
			}
			last = ch.Cursor
			return nil
		})
	if errors.Is(err, client.ErrFeedGone) {
		// Start again with FeedOptions{Snapshot: true}.
	}
}
