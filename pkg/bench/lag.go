package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replicatorhq/replicator/changelog"
)

// sampleEvery is the interval at which the sampler reads every DC's applied
// vector: the resolution of the lag figures.
const sampleEvery = time.Millisecond

// commits records when each write was acknowledged at its origin, by
// origin (DC index), partition and sequence number. A sequence number is
// issued once per origin and partition, and the bench's are the only
// writes, so they run 1, 2, 3... in each partition.
type commits struct {
	t0      time.Time
	origins []originCommits
}

type originCommits struct {
	mu sync.Mutex
	// at[p][seq-1] is the acknowledgement time in ns after t0; 0 unknown.
	at [][]int64
}

func newCommits(t0 time.Time, dcs, partitions int) *commits {
	c := &commits{t0: t0, origins: make([]originCommits, dcs)}
	for i := range c.origins {
		c.origins[i].at = make([][]int64, partitions)
	}
	return c
}

func (c *commits) record(origin int, p uint32, seq uint64, at time.Time) {
	ns := max(int64(at.Sub(c.t0)), 1)
	oc := &c.origins[origin]
	oc.mu.Lock()
	defer oc.mu.Unlock()
	row := oc.at[p]
	if need := int(seq); need > len(row) {
		row = append(row, make([]int64, need-len(row))...)
	}
	row[seq-1] = ns
	oc.at[p] = row
}

// targets returns, by origin and partition, the highest sequence number
// written: once every other DC has applied up to it, the DC has applied
// every write.
func (c *commits) targets() [][]uint64 {
	out := make([][]uint64, len(c.origins))
	for o := range c.origins {
		oc := &c.origins[o]
		oc.mu.Lock()
		out[o] = make([]uint64, len(oc.at))
		for p, row := range oc.at {
			out[o][p] = uint64(len(row))
		}
		oc.mu.Unlock()
	}
	return out
}

// segment says that a DC's applied sequence for one origin and partition
// reached hi by the sample taken at ns after t0.
type segment struct {
	hi uint64
	at int64
}

// sampler polls every DC's applied vector every sampleEvery and records
// when each origin's sequence numbers were first seen applied: cheap (one
// vector copy per DC per millisecond, nothing on the write or apply path)
// and accurate to the sampling interval. Signalling would be exact, but the
// store's commit hook and notifications belong to the node and its
// publisher.
type sampler struct {
	stores []*changelog.Store
	names  []string
	t0     time.Time
	// segs[dc][origin][p] lists the sampled progress, hi increasing.
	segs [][][][]segment
	last [][][]uint64
	// applied counts remote writes seen applied, for the progress bar.
	applied *atomic.Int64
	// maxOutbox is the deepest outbox (entries not yet acknowledged by
	// JetStream) any DC had at a sample.
	maxOutbox uint64

	samples         int
	firstAt, lastAt time.Time
	target          [][]uint64
	targetc         chan [][]uint64
	coveredAt       time.Time
	covered         bool
}

func newSampler(stores []*changelog.Store, names []string, partitions int, t0 time.Time, applied *atomic.Int64) *sampler {
	s := &sampler{stores: stores, names: names, t0: t0, applied: applied, targetc: make(chan [][]uint64, 1)}
	n := len(names)
	s.segs = make([][][][]segment, n)
	s.last = make([][][]uint64, n)
	for d := range n {
		s.segs[d] = make([][][]segment, n)
		s.last[d] = make([][]uint64, n)
		for o := range n {
			s.segs[d][o] = make([][]segment, partitions)
			s.last[d][o] = make([]uint64, partitions)
		}
	}
	return s
}

// setTarget hands the sampler the sequence numbers every DC must reach;
// run returns once they all have.
func (s *sampler) setTarget(t [][]uint64) { s.targetc <- t }

// run samples until every DC covers the target, or ctx ends.
func (s *sampler) run(ctx context.Context) {
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			s.sample(time.Now())
			return
		case t := <-s.targetc:
			s.target = t
		case <-tick.C:
		}
		now := time.Now()
		s.sample(now)
		if s.target != nil && s.coversTarget() {
			s.covered, s.coveredAt = true, now
			return
		}
	}
}

func (s *sampler) sample(now time.Time) {
	at := int64(now.Sub(s.t0))
	if s.samples == 0 {
		s.firstAt = now
	}
	s.samples++
	s.lastAt = now
	var added int64
	for d, st := range s.stores {
		s.maxOutbox = max(s.maxOutbox, st.OutboxDepth())
		a := st.Applied()
		for o, origin := range s.names {
			if o == d {
				continue
			}
			row := a[origin]
			last := s.last[d][o]
			for p := range last {
				if p >= len(row) || row[p] <= last[p] {
					continue
				}
				added += int64(row[p] - last[p])
				last[p] = row[p]
				s.segs[d][o][p] = append(s.segs[d][o][p], segment{hi: row[p], at: at})
			}
		}
	}
	s.applied.Add(added)
}

func (s *sampler) coversTarget() bool {
	for d := range s.last {
		for o, row := range s.target {
			if o == d {
				continue
			}
			for p, hi := range row {
				if s.last[d][o][p] < hi {
					return false
				}
			}
		}
	}
	return true
}

// resolution is the mean interval between samples.
func (s *sampler) resolution() time.Duration {
	if s.samples < 2 {
		return sampleEvery
	}
	return s.lastAt.Sub(s.firstAt) / time.Duration(s.samples-1)
}

// lags returns, for every write and every DC other than its origin, the
// time from the write's acknowledgement to the first sample that showed it
// applied; negative figures (the writer recorded the acknowledgement after
// the remote apply was sampled) count as 0.
func (s *sampler) lags(c *commits) []time.Duration {
	var out []time.Duration
	for d := range s.segs {
		for o := range c.origins {
			if o == d {
				continue
			}
			oc := &c.origins[o]
			oc.mu.Lock()
			for p, row := range oc.at {
				segs := s.segs[d][o][p]
				k := 0
				for i, commit := range row {
					seq := uint64(i + 1)
					for k < len(segs) && segs[k].hi < seq {
						k++
					}
					if k == len(segs) {
						break // never applied: the run did not converge
					}
					if commit == 0 {
						continue
					}
					out = append(out, time.Duration(max(segs[k].at-commit, 0)))
				}
			}
			oc.mu.Unlock()
		}
	}
	return out
}
