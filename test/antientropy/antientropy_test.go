// Package antientropy_test runs anti-entropy (pkg/antientropy) between real
// sidecars (pkg/node) on a real embedded JetStream: a DC whose data dir is
// restored from an old copy, while JetStream no longer holds the events it
// lacks, converges again, its own lost writes come back from the peers, and
// keys deleted elsewhere stay deleted (docs/DESIGN.md "Anti-entropy").
//
// The node runs its own worker every 5 minutes; the test starts one more next
// to each node, on its own NATS connection, to run rounds on demand. Set
// REPL_TEST_LOG=1 to see the sidecars' warnings.
package antientropy_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/antientropy"
	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/demo"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/node"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var dcNames = []string{"dc1", "dc2", "dc3"}

// sidecar is one DC of the cluster and, next to its node, its own
// anti-entropy worker.
type sidecar struct {
	t    *testing.T
	name string
	c    *cluster.Cluster
	n    *node.Node
	nc   *nats.Conn
	w    *antientropy.Worker
}

func (s *sidecar) start() {
	t := s.t
	t.Helper()
	if err := s.c.StartDC(context.Background(), s.name); err != nil {
		t.Fatal(err)
	}
	n := s.c.Node(s.name)
	nc, err := nats.Connect(s.c.URL(), nats.Name("antientropy-"+s.name))
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.c.Config(s.name)
	w, err := antientropy.New(antientropy.Options{
		Store: n.Store(), NC: nc, DC: s.name, DCs: cfg.DCs, Partitions: cfg.Partitions,
		Interval: -1, Logger: testLogger(s.name),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.n, s.nc, s.w = n, nc, w
}

func (s *sidecar) stop() {
	if s.n == nil {
		return
	}
	s.w.Close()
	s.nc.Close()
	if err := s.c.StopDC(s.name); err != nil {
		s.t.Logf("%s: close: %v", s.name, err)
	}
	s.n = nil
}

func (s *sidecar) store() *changelog.Store { return s.n.Store() }

func (s *sidecar) put(key, val string) {
	s.t.Helper()
	_, st, _, err := s.n.Read(key)
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.n.Write(context.Background(), changelog.WriteOp{Key: key, Value: []byte(val), Context: st.Clock}); err != nil {
		s.t.Fatalf("%s: write %s: %v", s.name, key, err)
	}
}

func (s *sidecar) del(key string) {
	s.t.Helper()
	if _, err := s.n.Write(context.Background(), changelog.WriteOp{Key: key, Delete: true}); err != nil {
		s.t.Fatalf("%s: delete %s: %v", s.name, key, err)
	}
}

// show renders what a key's resolver shows at the DC: its live values, or
// "-" when none is live.
func (s *sidecar) show(key string) string {
	s.t.Helper()
	res, _, ok, err := s.n.Read(key)
	if err != nil {
		s.t.Fatal(err)
	}
	if !ok || res.Deleted {
		return "-"
	}
	var out []string
	for _, v := range res.Values {
		out = append(out, string(v))
	}
	return fmt.Sprint(out)
}

func (s *sidecar) digest() string {
	s.t.Helper()
	d, err := s.store().Digest()
	if err != nil {
		s.t.Fatal(err)
	}
	return d.Hex()
}

type mesh struct {
	t   *testing.T
	url string
	dcs map[string]*sidecar
}

func (m *mesh) each(fn func(*sidecar)) {
	for _, n := range dcNames {
		fn(m.dcs[n])
	}
}

// converged reports whether every DC shows the same digest.
func (m *mesh) converged() (bool, string) {
	ds := map[string]string{}
	m.each(func(s *sidecar) { ds[s.name] = s.digest() })
	for _, n := range dcNames {
		if ds[n] != ds[dcNames[0]] {
			return false, fmt.Sprintf("digests %v", ds)
		}
	}
	return true, ""
}

func TestRestoredDCRepairedByAntiEntropy(t *testing.T) {
	begin := time.Now()
	c := cluster.Start(t, cluster.Options{
		DCs: dcNames, ServerName: "ae", ReportInterval: 100 * time.Millisecond, NoStart: true,
		Config: func(cfg *config.Config) { cfg.Resolvers.Rules = demo.Rules(cfg.DCs) },
		Logger: testLogger,
	})
	m := &mesh{t: t, url: c.URL(), dcs: map[string]*sidecar{}}
	for _, n := range dcNames {
		s := &sidecar{t: t, name: n, c: c}
		s.start()
		m.dcs[n] = s
		defer s.stop()
	}
	dc1, dc2, dc3 := m.dcs["dc1"], m.dcs["dc2"], m.dcs["dc3"]

	// 1. Writes everywhere, then a copy of dc3's data dir, taken early.
	const keys = 30
	for i := range keys {
		m.each(func(s *sidecar) { s.put(fmt.Sprintf("user/%d", i), s.name+"-1") })
		dc1.put(fmt.Sprintf("title/%d", i), "dc1-1")
		dc2.put(fmt.Sprintf("gone/%d", i), "doomed")
	}
	cluster.Eventually(t, 20*time.Second, "convergence before the copy", m.converged)
	dc3.stop()
	backup := filepath.Join(t.TempDir(), "dc3-backup")
	if err := os.CopyFS(backup, os.DirFS(c.DataDir("dc3"))); err != nil {
		t.Fatal(err)
	}
	dc3.start()

	// 2. More writes after the copy: updates, new keys, dc3's own writes,
	// and deletes that every DC applies and then purges.
	for i := range keys {
		dc1.put(fmt.Sprintf("user/%d", i), "dc1-2")
		dc2.put(fmt.Sprintf("new/%d", i), "dc2-new")
		dc3.put(fmt.Sprintf("dc3/%d", i), "dc3-after-copy")
		dc3.put(fmt.Sprintf("title/%d", i), "dc3-2")
		dc1.del(fmt.Sprintf("gone/%d", i))
	}
	cluster.Eventually(t, 20*time.Second, "convergence after the second round of writes", m.converged)
	cluster.Eventually(t, 20*time.Second, "purge of the deleted keys at every DC", func() (bool, string) {
		for _, s := range m.dcs {
			for i := range keys {
				if _, ok, err := s.store().Get(fmt.Sprintf("gone/%d", i)); err != nil || ok {
					return false, fmt.Sprintf("%s still holds gone/%d", s.name, i)
				}
			}
		}
		return true, ""
	})
	// JetStream and the outboxes forget: the streams keep only the last
	// message of each subject (what a DC needs to resume its sequences),
	// and every outbox entry is trimmed once every DC applied it. No
	// stream replay or gap repair can give the restored copy what it
	// lacks.
	forgetStreams(t, m.url, c.Partitions())
	cluster.Eventually(t, 20*time.Second, "trimmed outboxes", func() (bool, string) {
		for _, s := range m.dcs {
			if es, err := s.store().ReadOutbox(0, 1); err != nil || len(es) > 0 {
				return false, s.name + " still holds outbox entries"
			}
		}
		return true, ""
	})
	issued := dc3.store().Applied()["dc3"]
	want := map[string]string{}
	for i := range keys {
		for _, k := range []string{"user/%d", "title/%d", "new/%d", "dc3/%d", "gone/%d"} {
			key := fmt.Sprintf(k, i)
			want[key] = dc1.show(key)
		}
	}

	// 3. dc3 comes back from the old copy. What the bridge will do at
	// start once it calls Store.ResumeAbove instead of EnsureSeqAbove is
	// done here on the store directly: the own sequences the copy lacks
	// and the stream no longer holds are marked lost.
	dc3.stop()
	if err := os.RemoveAll(c.DataDir("dc3")); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(c.DataDir("dc3"), os.DirFS(backup)); err != nil {
		t.Fatal(err)
	}
	markLost(t, c.Config("dc3"), issued)
	dc3.start()
	stale := 0
	for key, v := range want {
		if dc3.show(key) != v {
			stale++
		}
	}
	resurrected := 0
	for i := range keys {
		if dc3.show(fmt.Sprintf("gone/%d", i)) != "-" {
			resurrected++
		}
	}
	if ok, _ := m.converged(); ok || stale == 0 || resurrected != keys {
		t.Fatalf("the restored copy should be stale: converged %v, %d stale keys, %d deleted keys live", ok, stale, resurrected)
	}
	t.Logf("restored dc3 from the old copy: %d of %d keys stale, %d deleted keys live again there", stale, len(want), resurrected)

	// 4. Anti-entropy from every DC to every peer.
	aeStart := time.Now()
	rounds := 0
	var total antientropy.Report
	for rounds < 3 {
		rounds++
		m.each(func(s *sidecar) {
			for _, peer := range dcNames {
				if peer == s.name {
					continue
				}
				rep, err := s.w.RunOnce(context.Background(), peer)
				if err != nil {
					t.Fatalf("%s: anti-entropy against %s: %v", s.name, peer, err)
				}
				t.Logf("round %d %s <- %s: %d partitions differed, %d keys exchanged, %d changed (%d versions taken, %d dropped, %d keys removed, %d lost own versions back), %d requests, %s",
					rounds, s.name, peer, rep.PartitionsDiffered, rep.KeysExchanged, rep.KeysChanged, rep.VersionsTaken,
					rep.VersionsDropped, rep.KeysRemoved, rep.LostFound, rep.Requests, rep.Duration.Round(time.Millisecond))
				total.KeysChanged += rep.KeysChanged
				total.KeysRemoved += rep.KeysRemoved
				total.LostFound += rep.LostFound
				total.KeysExchanged += rep.KeysExchanged
			}
		})
		if ok, _ := m.converged(); ok {
			break
		}
	}
	aeTook := time.Since(aeStart)
	if ok, why := m.converged(); !ok {
		t.Fatalf("not converged after %d anti-entropy rounds: %s", rounds, why)
	}
	if rounds != 1 {
		t.Errorf("anti-entropy needed %d rounds; one pull from every peer should do", rounds)
	}
	for key, v := range want {
		m.each(func(s *sidecar) {
			if got := s.show(key); got != v {
				t.Errorf("%s: %s = %s, want %s", s.name, key, got, v)
			}
		})
	}
	resurrected = 0
	m.each(func(s *sidecar) {
		for i := range keys {
			if _, ok, _ := s.store().Get(fmt.Sprintf("gone/%d", i)); ok {
				resurrected++
			}
		}
	})
	if resurrected != 0 {
		t.Errorf("%d deleted keys came back", resurrected)
	}
	if total.LostFound != keys*2 {
		t.Errorf("%d of dc3's lost own writes came back, want %d", total.LostFound, keys*2)
	}

	// 5. The restored DC writes again, above the sequences it had issued,
	// and its peers apply it through the stream as usual.
	dc3.put("after/restore", "dc3-3")
	cluster.Eventually(t, 20*time.Second, "dc3's write after the repair reaching its peers", func() (bool, string) {
		for _, s := range []*sidecar{dc1, dc2} {
			if got := s.show("after/restore"); got != "[dc3-3]" {
				return false, fmt.Sprintf("%s shows %s", s.name, got)
			}
		}
		return true, ""
	})
	// A write at dc1 cannot reach dc3 through the stream: dc3's applied
	// vector went back with the copy, and the events between are gone
	// from JetStream and from dc1's outbox, so dc3 waits at the gap. The
	// on-demand run (`replicator repair`) carries it.
	dc1.put("after/dc1", "dc1-3")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reply, err := antientropy.RequestRun(ctx, dc3.nc, "dc3")
	if err != nil {
		t.Fatal(err)
	}
	if got := dc3.show("after/dc1"); got != "[dc1-3]" {
		t.Fatalf("after an on-demand run dc3 shows after/dc1 = %s; reports %+v", got, reply.Reports)
	}
	t.Logf("figures: %d keys, %d stale at restored dc3; %d round(s) of 6 pulls in %s: %d keys exchanged, %d changed, %d removed, %d lost own versions back; 0 resurrections; whole test %s",
		len(want), stale, rounds, aeTook.Round(time.Millisecond), total.KeysExchanged, total.KeysChanged, total.KeysRemoved, total.LostFound,
		time.Since(begin).Round(time.Millisecond))
}

// forgetStreams purges every DC's stream down to the last message of each
// subject, as the bridge's stream retention does after StreamRetention.
func forgetStreams(t *testing.T, url string, partitions int) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, dc := range dcNames {
		s, err := js.Stream(ctx, names.Stream(dc))
		if err != nil {
			t.Fatal(err)
		}
		for p := range partitions {
			if err := s.Purge(ctx, jetstream.WithPurgeSubject(names.Subject(dc, uint32(p))), jetstream.WithPurgeKeep(1)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// markLost opens the restored store and marks the own sequences it lacks
// as lost (changelog.Store.ResumeAbove), as the bridge will at start.
func markLost(t *testing.T, cfg config.Config, issued []uint64) {
	t.Helper()
	st, err := changelog.Open(filepath.Join(cfg.DataDir, "store"), changelog.Options{DC: cfg.DC, DCs: cfg.DCs, Partitions: cfg.Partitions})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	lost := 0
	for p, hi := range issued {
		r, err := st.ResumeAbove(context.Background(), uint32(p), hi)
		if err != nil {
			t.Fatal(err)
		}
		if r.To > 0 {
			lost += int(r.To - r.From + 1)
		}
	}
	t.Logf("dc3's copy lacks %d own sequences; marked lost", lost)
}

func testLogger(dc string) *slog.Logger {
	if os.Getenv("REPL_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("dc", dc)
}
