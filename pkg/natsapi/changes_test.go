package natsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/resolve"
)

// changesSetup starts a NATS server with the given max_payload, a store
// whose feed keeps one minute of changes by a clock the test moves, and
// the service.
func changesSetup(t *testing.T, maxPayload int32) (*nats.Conn, *changelog.Store, func(time.Duration) time.Time) {
	t.Helper()
	return changesSetupWith(t, maxPayload, changelog.Options{})
}

// changesSetupWith is changesSetup with more store options (the feed's
// clock and retention are the setup's).
func changesSetupWith(t *testing.T, maxPayload int32, opts changelog.Options) (*nats.Conn, *changelog.Store, func(time.Duration) time.Time) {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, MaxPayload: maxPayload, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	now := time.UnixMilli(1_700_000_000_000)
	clock := make(chan time.Time, 1)
	clock <- now
	read := func() time.Time { t := <-clock; clock <- t; return t }
	advance := func(d time.Duration) time.Time { t := <-clock; t = t.Add(d); clock <- t; return t }
	opts.DC, opts.DCs, opts.Partitions, opts.FS = "dc1", []string{"dc1", "dc2"}, 2, vfs.NewMem()
	opts.Now, opts.FeedRetention, opts.FeedPruneEvery = read, time.Minute, time.Hour
	st, err := changelog.Open("/s", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rules, _ := resolve.NewRules(resolve.Siblings(), []resolve.Rule{{Prefix: "l/", Resolver: resolve.LWW()}})
	svc, err := Serve(nc, "dc1", st, rules)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	return nc, st, advance
}

func changesCall(t *testing.T, nc *nats.Conn, body string) (ChangesReply, string, string) {
	t.Helper()
	m, err := nc.Request(names.APISubject("dc1", "changes"), []byte(body), 5*time.Second)
	if err != nil {
		t.Fatalf("changes %s: %v", body, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return ChangesReply{}, code, m.Header.Get("Nats-Service-Error")
	}
	var rep ChangesReply
	dec := json.NewDecoder(bytes.NewReader(m.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("changes %s: reply %s: %v", body, m.Data, err)
	}
	return rep, "", ""
}

// TestChanges: pages of the feed over NATS hold every change once, in
// cursor order, in the shape of GET /v1/changes' lines; prefix and limit
// work as over HTTP; a reply never exceeds max_payload, splitting a page
// instead; a change larger than max_payload, a cursor past retention and
// bad requests are refused with the status as the error code.
func TestChanges(t *testing.T) {
	ctx := context.Background()
	nc, st, advance := changesSetup(t, 64<<10)
	var want []string
	for i := range 30 {
		k := fmt.Sprintf("k/%02d", i)
		if i%4 == 0 {
			k = fmt.Sprintf("l/%02d", i)
		}
		if _, err := st.Write(ctx, changelog.WriteOp{Key: k, Value: bytes.Repeat([]byte{'a' + byte(i%26)}, 10<<10)}); err != nil {
			t.Fatal(err)
		}
		want = append(want, k)
	}
	var got []string
	pages := 0
	for since := uint64(0); ; pages++ {
		rep, code, msg := changesCall(t, nc, fmt.Sprintf(`{"since":%d,"limit":100}`, since))
		if code != "" {
			t.Fatalf("page after %d: %s %s", since, code, msg)
		}
		for i, c := range rep.Changes {
			if c.Type != "change" || c.Cursor != since+uint64(i)+1 || len(c.Values) != 1 || c.Origin != "dc1" || c.Dot == "" {
				t.Fatalf("page after %d, change %d: %+v", since, i, c)
			}
			got = append(got, c.Key)
		}
		since = rep.Next
		if !rep.More {
			break
		}
	}
	if !slices.Equal(got, want) || pages < 4 {
		t.Fatalf("%d pages gave %q, want several pages of %q", pages+1, got, want)
	}
	rep, _, _ := changesCall(t, nc, `{"since":5,"prefix":"l/","limit":2}`)
	if len(rep.Changes) != 2 || rep.Changes[0].Key != "l/08" || rep.Changes[1].Key != "l/12" || rep.Next != 13 || !rep.More || rep.Changes[0].Resolver != "lww" {
		t.Fatalf("prefix l/ after 5, limit 2: %+v", rep)
	}
	if rep, code, _ := changesCall(t, nc, ``); code != "" || len(rep.Changes) == 0 || rep.Changes[0].Cursor != 1 {
		t.Fatalf("an empty request: %s %+v, want the first page", code, rep)
	}

	if _, err := st.Write(ctx, changelog.WriteOp{Key: "big", Value: bytes.Repeat([]byte("b"), 70<<10)}); err != nil {
		t.Fatal(err)
	}
	if _, code, msg := changesCall(t, nc, `{"since":30}`); code != "413" || !strings.Contains(msg, "GET /v1/changes?since=30&limit=1") {
		t.Fatalf("a change over max_payload: %s %s", code, msg)
	}
	if _, err := st.PruneFeed(ctx, advance(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ body, code, says string }{
		{`{"since":3}`, "410", "snapshot"},
		{`{"since":99}`, "410", "ahead"},
		{`{"since":31}`, "", ""},
		{`{"since":"now"}`, "400", "since"},
		{`{"cursor":1}`, "400", "cursor"},
		{`{"limit":-1}`, "400", "limit -1"},
		{`{"limit":1001}`, "400", "limit 1001"},
		{`{"prefix":"` + strings.Repeat("p", 5000) + `"}`, "400", "prefix"},
		{`[1]`, "400", "request"},
	} {
		_, code, msg := changesCall(t, nc, tc.body)
		if code != tc.code || !strings.Contains(msg, tc.says) {
			t.Errorf("%.40s: %q %q; want %q saying %q", tc.body, code, msg, tc.code, tc.says)
		}
	}
}

// TestChangesFeedOff: at a DC whose feed is off, changes answers 404
// naming changes.off.
func TestChangesFeedOff(t *testing.T) {
	nc, st, _ := changesSetupWith(t, 64<<10, changelog.Options{FeedOff: true})
	if _, err := st.Write(context.Background(), changelog.WriteOp{Key: "k", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if _, code, msg := changesCall(t, nc, `{"since":0}`); code != "404" || !strings.Contains(msg, "changes.off") {
		t.Fatalf("changes with the feed off: code %q, %q; want 404 naming changes.off", code, msg)
	}
}
