package config

import "time"

// Changes bounds the change feed (GET /v1/changes; docs/DESIGN.md,
// invariant 15): every change applied at this DC is kept with its cursor
// until it is older than Retention or the feed holds more than MaxBytes,
// whichever comes first, oldest first out. A reader asking for changes
// after a cursor no longer held gets 410 and starts again from a snapshot.
type Changes struct {
	// Retention is how long a change stays readable, by the time it was
	// committed at this DC. Default 24h; 0 keeps changes whatever their
	// age (max_bytes still bounds them); else at least 1m.
	Retention Duration `yaml:"retention"`
	// MaxBytes bounds the bytes the feed's entries take in the store
	// (keys and values, before Pebble compresses them); the oldest go
	// first. Default 1 GiB (1073741824); at least 1 MiB, so the feed
	// always has a bound.
	MaxBytes int64 `yaml:"max_bytes"`
	// Off turns the feed off: no entries are written (saving the second
	// copy of each change, about 40 % of the committer's CPU per change;
	// docs/BENCHMARKS.md "The change feed"), and GET /v1/changes and NATS
	// changes answer 404. Turning it on again starts a new feed: every
	// cursor from before answers 410. Default false.
	Off bool `yaml:"off"`
}

// Defaults of the change feed's bounds.
const (
	DefaultChangesRetention = 24 * time.Hour
	DefaultChangesMaxBytes  = 1 << 30
)

func (c Config) validateChanges(p *problems) {
	ch := c.Changes
	if r := time.Duration(ch.Retention); r < 0 || r > 0 && r < time.Minute {
		p.add("changes.retention", "%s is out of range; want 0 (no age bound) or at least 1m", r)
	}
	if ch.MaxBytes < mib {
		p.add("changes.max_bytes", "%d is out of range; want at least 1048576 (1 MiB): the feed always has a size bound", ch.MaxBytes)
	}
}
