package config

import "time"

// ConflictLog bounds the conflict log. Every version a resolver discards is
// logged (docs/DESIGN.md, invariant 6); on a hot key under lww that is an
// entry per loss, so without a bound the log grows for ever. Entries whose
// story is over (logged, resolved) are pruned once older than Retention, and
// the oldest beyond MaxEntries; open records (the record resolver) wait for a
// person and are never pruned.
type ConflictLog struct {
	// Retention is how long logged and resolved entries are kept, by the
	// HLC of the event that revealed them (resolved: of the resolution).
	// Default 720h (30 days); 0 keeps them for ever; else at least 1m.
	Retention Duration `yaml:"retention"`
	// MaxEntries bounds the logged and resolved entries kept; the oldest
	// go first. Default 1000000; 0 means no bound.
	MaxEntries int `yaml:"max_entries"`
}

// Defaults of the conflict log's bounds.
const (
	DefaultConflictRetention  = 30 * 24 * time.Hour
	DefaultConflictMaxEntries = 1_000_000
)

func (c Config) validateConflictLog(p *problems) {
	l := c.ConflictLog
	if r := time.Duration(l.Retention); r < 0 || r > 0 && r < time.Minute {
		p.add("conflict_log.retention", "%s is out of range; want 0 (keep for ever) or at least 1m", r)
	}
	if l.MaxEntries < 0 {
		p.add("conflict_log.max_entries", "%d is negative; want 0 (no bound) or a positive count", l.MaxEntries)
	}
}
