package changelog

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/replicatorhq/replicator/pkg/event"
)

// BenchmarkLocalWrite measures durable local writes (fsync before ack) on
// the real filesystem, with group commit at 1, 16 and 64 writers, against a
// store that commits each write on its own (one fsync per write). Compare
// the ops/s of group/writers=64 with fsync-per-write/writers=64.
func BenchmarkLocalWrite(b *testing.B) {
	for _, mode := range []struct {
		name     string
		maxGroup int
		serial   bool
	}{{"group", 0, false}, {"fsync-per-write", 1, true}} {
		for _, writers := range []int{1, 16, 64} {
			if mode.maxGroup == 1 && writers != 64 {
				continue
			}
			b.Run(fmt.Sprintf("%s/writers=%d", mode.name, writers), func(b *testing.B) {
				s := openMem(b, nil, "dc1", Options{MaxGroup: mode.maxGroup, serial: mode.serial, Partitions: 16})
				val := make([]byte, 100)
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for w := 0; w < writers; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							i := next.Add(1)
							if i > int64(b.N) {
								return
							}
							if _, err := s.Write(context.Background(), WriteOp{Key: fmt.Sprint("key-", i), Value: val}); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
				st := s.Stats()
				b.ReportMetric(float64(st.Requests)/float64(max(st.Groups, 1)), "writes/fsync")
			})
		}
	}
}

// BenchmarkApply measures remote events applied in batches of 256 (one
// durable Pebble batch per fetch), against a raw Pebble batch that writes the
// same encoded event bytes under the same number of keys.
func BenchmarkApply(b *testing.B) {
	const batch = 256
	src := openMem(b, nil, "dc1", Options{NoSync: true, Partitions: 16})
	var evs []*event.Event
	var bytesPer int
	for i := 0; i < 64*batch; i++ {
		r := mustWrite(b, src, WriteOp{Key: fmt.Sprint("key-", i), Value: make([]byte, 100)})
		evs = append(evs, r.Event)
		enc, _ := r.Event.Encode(nil)
		bytesPer += len(enc)
	}
	bytesPer /= len(evs)
	b.Run("replicator", func(b *testing.B) {
		n := 0
		for n < b.N {
			b.StopTimer()
			dst := openMem(b, nil, "dc2", Options{Partitions: 16})
			b.StartTimer()
			for off := 0; off < len(evs) && n < b.N; off += batch {
				end := min(off+batch, len(evs))
				if _, err := dst.Apply(context.Background(), evs[off:end], nil); err != nil {
					b.Fatal(err)
				}
				n += end - off
			}
			b.StopTimer()
			dst.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("raw-pebble", func(b *testing.B) {
		db, err := pebble.Open(b.TempDir(), &pebble.Options{Logger: quietLogger{slog.New(slog.DiscardHandler)}})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		val := make([]byte, bytesPer)
		b.ResetTimer()
		for n := 0; n < b.N; n += batch {
			bt := db.NewBatch()
			for i := 0; i < batch; i++ {
				bt.Set([]byte(fmt.Sprint("key-", n+i)), val, nil)
			}
			if err := bt.Commit(pebble.Sync); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
}

// BenchmarkApplyCPU measures the committer's CPU per remote event, without
// fsync and on an in-memory filesystem so that the disk's noise stays out:
// batches of 32 events for new keys (the bench's workload: every apply
// first reads the key's state and finds none) into a store that already
// holds 100,000 keys, all compacted; with the change feed on and off.
func BenchmarkApplyCPU(b *testing.B) {
	for _, off := range []bool{false, true} {
		b.Run(fmt.Sprint("feedoff=", off), func(b *testing.B) { benchApplyCPU(b, off) })
	}
}

// benchApplyCPU is BenchmarkApplyCPU with the change feed on or off
// (Options.FeedOff) at the applying store.
func benchApplyCPU(b *testing.B, feedOff bool) {
	const batch, held = 32, 100000
	src := openMem(b, vfs.NewMem(), "dc1", Options{NoSync: true, Partitions: 16})
	var evs []*event.Event
	for i := 0; i < held+256*batch; i++ {
		r := mustWrite(b, src, WriteOp{Key: fmt.Sprint("key-", i), Value: make([]byte, 100)})
		evs = append(evs, r.Event)
	}
	src.Close()
	b.ResetTimer()
	var cpu time.Duration
	n := 0
	for n < b.N {
		b.StopTimer()
		dst := openMem(b, vfs.NewMem(), "dc2", Options{NoSync: true, Partitions: 16, FeedOff: feedOff})
		for off := 0; off < held; off += 1000 {
			if _, err := dst.Apply(context.Background(), evs[off:off+1000], nil); err != nil {
				b.Fatal(err)
			}
		}
		// Settle the LSM, so no flush or compaction of the preload runs
		// while the CPU is counted.
		if err := dst.DB().Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c0 := cpuTime()
		for off := held; off+batch <= len(evs) && n < b.N; off += batch {
			if _, err := dst.Apply(context.Background(), evs[off:off+batch], nil); err != nil {
				b.Fatal(err)
			}
			n += batch
		}
		cpu += cpuTime() - c0
		b.StopTimer()
		dst.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(n), "cpu-ns/event")
}
