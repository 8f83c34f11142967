package changelog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// feedBenchStore is a store holding n changes: local writes of random
// (incompressible) 100-byte values to keys "bench/<i>" (16 bytes), 256 to
// a batch, flushed and compacted so the reads come from sstables as they
// would on a running DC.
func feedBenchStore(b *testing.B, n int) *Store {
	b.Helper()
	s := openMem(b, vfs.NewMem(), "dc1", Options{NoSync: true, Partitions: 16})
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < n; i += 256 {
		ops := make([]WriteOp, 0, 256)
		for j := i; j < min(i+256, n); j++ {
			val := make([]byte, 100)
			for k := range val {
				val[k] = byte(rng.Uint32())
			}
			ops = append(ops, WriteOp{Key: fmt.Sprintf("bench/%010d", j), Value: val})
		}
		if _, err := s.WriteTxn(context.Background(), ops); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := s.db.Compact(context.Background(), []byte{pfxFeed}, []byte{pfxFeed + 1}, false); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkFeedRead measures how fast a reader gets changes from storage:
// ReadFeed pages of 1,000 (decoding every entry and its state), from the
// first cursor to the last, over 100,000 changes. It reports changes/s, the
// bytes an entry takes in Pebble (key and value, as the size bound counts
// them) and on disk after compaction (Pebble compresses blocks).
func BenchmarkFeedRead(b *testing.B) {
	const n = 100_000
	s := feedBenchStore(b, n)
	_, last, held := s.FeedBounds()
	if last != n {
		b.Fatalf("feed ends at %d, want %d", last, n)
	}
	disk, err := s.db.EstimateDiskUsage([]byte{pfxFeed}, []byte{pfxFeed + 1})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		prefix string
	}{{"all", ""}, {"prefix-matching-all", "bench/"}} {
		b.Run(tc.name, func(b *testing.B) {
			read := 0
			b.ResetTimer()
			for read < b.N {
				since := uint64(0)
				for read < b.N {
					page, err := s.ReadFeed(FeedQuery{Since: since, Prefix: tc.prefix, Limit: 1000})
					if err != nil {
						b.Fatal(err)
					}
					read += len(page.Entries)
					since = page.Next
					if !page.More {
						break
					}
				}
			}
			b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "changes/s")
			b.ReportMetric(float64(held)/n, "entry-bytes/change")
			b.ReportMetric(float64(disk)/n, "disk-bytes/change")
		})
	}
}
