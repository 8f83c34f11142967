package changelog

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/event"
)

// BenchmarkApplyConcurrent measures remote events applied by several links
// at once, each in batches of 256 events (the links' apply batch), durable
// on the real filesystem: the committer's apply throughput when applies
// share batches with each other.
func BenchmarkApplyConcurrent(b *testing.B) {
	const batch = 256
	for _, links := range []int{1, 4} {
		b.Run(fmt.Sprintf("links=%d", links), func(b *testing.B) {
			per := (b.N + links - 1) / links
			backlog := remoteBacklog("dc2", links, per)
			s := openMem(b, nil, "dc1", Options{Partitions: links})
			b.ResetTimer()
			applyLinks(b, s, backlog, batch)
			b.StopTimer()
			b.ReportMetric(float64(links*per)/b.Elapsed().Seconds(), "events/s")
			st := s.Stats()
			b.ReportMetric(float64(links*per)/float64(max(st.Groups, 1)), "events/fsync")
		})
	}
}

// BenchmarkWriteDuringBacklog measures a local write's latency while 8
// links apply a backlog of remote events, each in batches of 256, durable
// on the real filesystem: one writer makes b.N writes one after another
// (run it with -benchtime=30x: the backlog must outlast the writes). It
// reports the latency's median and 99th percentile, and the remote events
// committed while a write waited (applies-ahead, the mean), which the
// machine's load does not move.
func BenchmarkWriteDuringBacklog(b *testing.B) {
	const links, batch = 8, 256
	backlog := remoteBacklog("dc2", links, 64*batch)
	commits := make(chan struct{}, 1)
	var applied atomic.Int64 // remote changes committed so far
	s := openMem(b, nil, "dc1", Options{Partitions: links, OnCommit: func(chs []Change) {
		for _, ch := range chs {
			if ch.Origin != "dc1" {
				applied.Add(1)
			}
		}
		select {
		case commits <- struct{}{}:
		default:
		}
	}})
	stop := make(chan struct{})
	wg, dry := startAppliers(b, s, backlog, batch, stop)
	defer wg.Wait()
	defer close(stop)
	// Let the backlog queue up: two batches of applies before the first
	// write.
	<-commits
	<-commits
	lat := make([]time.Duration, 0, b.N)
	var ahead int64
	b.ResetTimer()
	for i := range b.N {
		t0, a0 := time.Now(), applied.Load()
		if _, err := s.Write(context.Background(), WriteOp{Key: fmt.Sprint("local-", i), Value: []byte("v")}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		ahead += applied.Load() - a0
	}
	b.StopTimer()
	if n := dry.Load(); n > 0 {
		b.Fatalf("%d links ran out of backlog before the writes ended; use fewer writes (-benchtime=30x)", n)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(ahead)/float64(b.N), "applies-ahead")
}

// BenchmarkApplyUnderWrites measures remote events applied by 4 links, in
// batches of 256, while 16 writers make local writes without pause,
// durable on the real filesystem: the apply throughput a steady local load
// leaves, and the local writes made meanwhile.
func BenchmarkApplyUnderWrites(b *testing.B) {
	const links, batch, writers = 4, 256, 16
	per := (b.N + links - 1) / links
	backlog := remoteBacklog("dc2", links, per)
	s := openMem(b, nil, "dc1", Options{Partitions: links})
	stop := make(chan struct{})
	local, writes := startWriters(b, s, writers, stop)
	b.ResetTimer()
	w0 := writes.Load()
	applyLinks(b, s, backlog, batch)
	b.StopTimer()
	w1 := writes.Load()
	close(stop)
	local.Wait()
	b.ReportMetric(float64(links*per)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(w1-w0)/b.Elapsed().Seconds(), "writes/s")
}

// applyLinks applies each backlog on a goroutine of its own, as the links
// do, batch events an Apply, and returns when all are applied.
func applyLinks(b *testing.B, s *Store, backlogs [][]*event.Event, batch int) {
	wg, _ := startAppliers(b, s, backlogs, batch, nil)
	wg.Wait()
}
