// Package hlc implements a hybrid logical clock: timestamps that follow
// physical time closely yet never go backwards, even when the physical
// clock does, and that move past every timestamp received from another DC.
//
// A timestamp is a uint64: the physical time in Unix milliseconds in the
// high 48 bits and a logical counter in the low 16 bits,
//
//	ts = physicalMillis<<16 | logical
//
// so timestamps compare as plain integers, and a logical counter that
// overflows carries into the physical part. 48 bits of milliseconds last
// until the year 10889.
//
// Causality never depends on the HLC; it only orders last-writer-wins. The
// physical clock is injected, so the package never reads the wall clock
// itself. The usual loop at a DC is:
//
//	c := hlc.New(time.Now, maxDrift)
//	c.Restore(store.LastHLC()) // after a restart
//	ev.HLC = c.Now()           // local write
//	if err := c.Update(remote.HLC); err != nil { ... } // before applying a remote event
//
// Internal to the sidecar: not a stable Go API.
package hlc

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"
)

// LogicalBits is the width of the logical counter in a timestamp.
const LogicalBits = 16

const (
	logicalMask = 1<<LogicalBits - 1
	// MaxPhysical is the largest physical part, in Unix milliseconds.
	MaxPhysical = math.MaxUint64 >> LogicalBits
	// maxSafe is the largest timestamp Update accepts: it leaves the
	// logical counter of the last millisecond free, so Now cannot wrap.
	maxSafe = MaxPhysical<<LogicalBits - 1
)

// Timestamp is an HLC timestamp with helpers to read it. Clocks and events
// carry the plain uint64; convert with Timestamp(ts) to print or split it.
type Timestamp uint64

// Make joins a physical time in Unix milliseconds and a logical counter.
// Bits of physicalMillis above the 48 that fit are dropped.
func Make(physicalMillis uint64, logical uint16) Timestamp {
	return Timestamp(physicalMillis<<LogicalBits | uint64(logical))
}

// Physical returns the physical part, in Unix milliseconds.
func (t Timestamp) Physical() uint64 { return uint64(t) >> LogicalBits }

// Logical returns the logical counter.
func (t Timestamp) Logical() uint16 { return uint16(uint64(t) & logicalMask) }

// Split returns the physical part, in Unix milliseconds, and the logical
// counter.
func (t Timestamp) Split() (physicalMillis uint64, logical uint16) {
	return t.Physical(), t.Logical()
}

// Time returns the physical part as a UTC time.
func (t Timestamp) Time() time.Time {
	p := t.Physical()
	if p > math.MaxInt64 {
		p = math.MaxInt64
	}
	return time.UnixMilli(int64(p)).UTC()
}

// String renders the timestamp as the physical time in RFC 3339 with
// milliseconds, a slash and the logical counter: "2024-05-01T12:00:00.123Z/4".
func (t Timestamp) String() string {
	return t.Time().Format("2006-01-02T15:04:05.000Z07:00") + "/" + strconv.FormatUint(uint64(t.Logical()), 10)
}

// ErrDrift is the sentinel for a remote timestamp too far ahead of the local
// physical clock; Update's errors wrap it.
var ErrDrift = errors.New("hlc: remote timestamp over the max drift")

// DriftError reports a remote timestamp that Update rejected because it is
// further ahead of the local physical clock than the configured bound.
type DriftError struct {
	Remote   Timestamp
	Ahead    time.Duration // how far Remote's physical part is past the local clock
	MaxDrift time.Duration
}

func (e *DriftError) Error() string {
	return fmt.Sprintf("hlc: remote timestamp %s is %s ahead of local clock, over the max drift %s; check the clock synchronisation (NTP) of both DCs",
		e.Remote, e.Ahead, e.MaxDrift)
}

// Unwrap returns ErrDrift.
func (e *DriftError) Unwrap() error { return ErrDrift }

// Clock is a hybrid logical clock. It is safe for concurrent use.
type Clock struct {
	physical func() time.Time
	maxDrift time.Duration

	mu struct {
		sync.Mutex
		last uint64 // the highest timestamp issued, received or restored
	}
}

// New returns a clock that reads physical time from physical (time.Now in
// production, a fake in tests) and rejects remote timestamps more than
// maxDrift ahead of it. A maxDrift of zero or less disables the drift check.
func New(physical func() time.Time, maxDrift time.Duration) *Clock {
	if physical == nil {
		panic("hlc: New with a nil physical clock")
	}
	return &Clock{physical: physical, maxDrift: maxDrift}
}

// physicalMillis reads the physical clock in Unix milliseconds, clamped to
// what a timestamp can hold.
func (c *Clock) physicalMillis() uint64 {
	ms := c.physical().UnixMilli()
	switch {
	case ms < 0:
		return 0
	case uint64(ms) > MaxPhysical:
		return MaxPhysical
	}
	return uint64(ms)
}

// Now returns a new timestamp for a local event: greater than every
// timestamp the clock has issued, received or restored, and at least the
// physical time. When the physical clock is behind (it jumped backwards, or
// a remote DC is ahead), the logical counter advances instead, carrying into
// the physical part when it overflows.
func (c *Clock) Now() uint64 {
	pt := c.physicalMillis() << LogicalBits
	c.mu.Lock()
	defer c.mu.Unlock()
	if pt > c.mu.last {
		c.mu.last = pt
	} else {
		c.mu.last++
	}
	return c.mu.last
}

// Peek returns the clock's time now without issuing a timestamp: the
// greater of the physical time and the highest timestamp issued, received
// or restored. A read uses it to ask whether a value has expired.
func (c *Clock) Peek() uint64 {
	pt := c.physicalMillis() << LogicalBits
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(pt, c.mu.last)
}

// Update merges a timestamp received from another DC, so that every later
// Now is greater than it. It returns a *DriftError, wrapping ErrDrift, and
// leaves the clock unchanged when remote is more than the max drift ahead of
// the local physical clock.
func (c *Clock) Update(remote uint64) error {
	pt := c.physicalMillis()
	rp := Timestamp(remote).Physical()
	if c.maxDrift > 0 && rp > pt {
		ahead := time.Duration(rp-pt) * time.Millisecond
		if rp-pt > uint64(math.MaxInt64/int64(time.Millisecond)) {
			ahead = time.Duration(math.MaxInt64)
		}
		if ahead > c.maxDrift {
			return &DriftError{Remote: Timestamp(remote), Ahead: ahead, MaxDrift: c.maxDrift}
		}
	}
	if remote > maxSafe {
		// Only reachable with the drift check disabled.
		return &DriftError{Remote: Timestamp(remote), Ahead: time.Duration(math.MaxInt64), MaxDrift: c.maxDrift}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if remote > c.mu.last {
		c.mu.last = remote
	}
	return nil
}

// Restore raises the clock to hw, a high-water mark such as the last HLC
// the store persisted, so that time stays monotonic across a restart even
// when the physical clock is now behind. It never lowers the clock, and it
// trusts hw: no drift check applies.
func (c *Clock) Restore(hw uint64) {
	if hw > maxSafe {
		hw = maxSafe
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if hw > c.mu.last {
		c.mu.last = hw
	}
}

// Last returns the highest timestamp the clock has issued, received or
// restored; zero for a new clock.
func (c *Clock) Last() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.last
}
