package changelog

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/hlc"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// Conflict statuses.
const (
	// StatusLogged: a resolver discarded a version on its own (lww,
	// priority). The entry is the audit record of that loss.
	StatusLogged = "logged"
	// StatusOpen: the record resolver keeps siblings until a person
	// resolves them.
	StatusOpen = "open"
	// StatusResolved: a write whose context covered the siblings closed an
	// open record.
	StatusResolved = "resolved"
)

// Version is one side of a conflict, with its metadata.
type Version struct {
	Origin  string `msgpack:"origin" json:"origin"`
	Dot     string `msgpack:"dot" json:"dot"`
	Value   []byte `msgpack:"value" json:"value"`
	Deleted bool   `msgpack:"deleted" json:"deleted"`
	HLC     uint64 `msgpack:"hlc" json:"hlc"`
}

// Conflict is one entry of the conflict log.
type Conflict struct {
	ID        string    `msgpack:"id" json:"id"`
	Key       string    `msgpack:"key" json:"key"`
	Resolver  string    `msgpack:"resolver" json:"resolver"`
	Status    string    `msgpack:"status" json:"status"`
	Kept      []Version `msgpack:"kept" json:"kept"`
	Discarded []Version `msgpack:"discarded" json:"discarded"`
	// Clock is the key's clock when the conflict was seen; a write with this
	// context supersedes every version listed.
	Clock vclock.VV `msgpack:"clock" json:"-"`
	// DetectedHLC is the HLC of the event that revealed the conflict.
	DetectedHLC uint64 `msgpack:"detected_hlc" json:"detected_hlc"`
	ResolvedHLC uint64 `msgpack:"resolved_hlc,omitempty" json:"resolved_hlc,omitempty"`
	// ResolvedTo is what a resolved record's key held once it was
	// resolved: the value written (or a deleted version, for a delete).
	ResolvedTo []Version `msgpack:"resolved_to,omitempty" json:"resolved_to,omitempty"`
	// ResolvedBy is the DC whose write resolved the record, and
	// ResolvedVia how: "resolve" (POST /v1/conflicts/{id}/resolve),
	// "write" (a write or delete carrying the record's context) or
	// "anti-entropy" (a merge from a peer, which names no writer).
	ResolvedBy  string `msgpack:"resolved_by,omitempty" json:"resolved_by,omitempty"`
	ResolvedVia string `msgpack:"resolved_via,omitempty" json:"resolved_via,omitempty"`
}

// conflictJSON is Conflict's JSON form, with its clock in text form and
// wall-clock times beside the HLCs.
type conflictJSON struct {
	conflictAlias
	Context      string `json:"context"`
	DetectedTime string `json:"detected_time"`
	ResolvedTime string `json:"resolved_time,omitempty"`
}

type conflictAlias Conflict

// MarshalJSON adds context, the clock a resolution supersedes in text
// form, and detected_time and resolved_time, the HLCs as wall-clock time
// and logical counter (2026-12-02T10:11:12.345Z/0). Kept and Discarded are
// arrays, never null.
func (c Conflict) MarshalJSON() ([]byte, error) {
	if c.Kept == nil {
		c.Kept = []Version{}
	}
	if c.Discarded == nil {
		c.Discarded = []Version{}
	}
	out := conflictJSON{conflictAlias: conflictAlias(c), Context: c.Clock.String(),
		DetectedTime: hlcTime(c.DetectedHLC), ResolvedTime: hlcTime(c.ResolvedHLC)}
	return json.Marshal(out)
}

type versionAlias Version

// MarshalJSON adds hlc_time, the HLC as wall-clock time, value_text, the
// value when it is printable UTF-8, and value_typed, a counter's, fields'
// or set's state readable (resolve.Readable).
func (v Version) MarshalJSON() ([]byte, error) {
	out := struct {
		versionAlias
		ValueText  *string         `json:"value_text,omitempty"`
		ValueTyped json.RawMessage `json:"value_typed,omitempty"`
		HLCTime    string          `json:"hlc_time"`
	}{versionAlias: versionAlias(v), HLCTime: hlcTime(v.HLC)}
	if !v.Deleted && printable(v.Value) {
		s := string(v.Value)
		out.ValueText = &s
	}
	if !v.Deleted {
		out.ValueTyped, _ = resolve.Readable(v.Value)
	}
	return json.Marshal(out)
}

func hlcTime(ts uint64) string {
	if ts == 0 {
		return ""
	}
	return hlc.Timestamp(ts).String()
}

// printable reports whether b is UTF-8 text without control characters
// other than tab and newlines.
func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if unicode.IsControl(r) && r != '\t' && r != '\n' && r != '\r' {
			return false
		}
	}
	return true
}

// cause is the write behind a change of a key's state, for the conflict
// log: the DC that made it and its op. A merge by anti-entropy has none.
type cause struct {
	dc string
	op event.Op
}

// ErrNotFound reports a missing conflict id or key.
var ErrNotFound = errors.New("changelog: not found")

func versionOf(sb dvv.Sibling) Version {
	return Version{Origin: sb.Origin(), Dot: sb.Dot.String(), Value: sb.Value, Deleted: sb.Deleted, HLC: sb.HLC}
}

func versionsOf(sbs []dvv.Sibling) []Version {
	out := make([]Version, len(sbs))
	for i, sb := range sbs {
		out[i] = versionOf(sb)
	}
	return out
}

func keyHash(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:8])
}

// discardID names the log entry of one discarded version: the same at every
// DC, so seeing the loss again rewrites nothing.
func discardID(key string, d vclock.Dot) string {
	return keyHash(key) + "-" + d.DC + "-" + fmt.Sprint(d.N)
}

// recordID names the open record of a key under the record resolver.
func recordID(key string) string { return keyHash(key) + "-record" }

// noteConflicts runs the key's resolver over its new state and writes what
// it discards, or the open record it asks for, to the conflict log.
func (t *txn) noteConflicts(key string, st dvv.State, hlc uint64, by cause) error {
	r := t.s.opts.Resolvers.For(key)
	isRecord := r.Name() == "record"
	if len(st.Siblings) < 2 {
		if !isRecord {
			return nil // only the record resolver opens records
		}
		return t.closeRecord(recordID(key), hlc, st, by)
	}
	res := r.Resolve(key, st.Siblings)
	for _, d := range res.Discarded {
		id := discardID(key, d.Dot)
		exists, err := t.conflictExists(id)
		if err != nil {
			return err
		}
		if exists {
			continue // logged when it was first discarded
		}
		c := Conflict{
			ID: id, Key: key, Resolver: r.Name(), Status: StatusLogged,
			Kept: versionsOf(res.Kept), Discarded: []Version{versionOf(d)},
			Clock: st.Clock, DetectedHLC: hlc,
		}
		if err := t.putConflict(c, true); err != nil {
			return err
		}
	}
	if !isRecord {
		return nil
	}
	rid := recordID(key)
	if !res.Conflict {
		return t.closeRecord(rid, hlc, st, by)
	}
	prev, existed, err := t.conflict(rid)
	if err != nil {
		return err
	}
	isNew := !existed || prev.Status != StatusOpen
	c := Conflict{
		ID: rid, Key: key, Resolver: r.Name(), Status: StatusOpen,
		Kept: versionsOf(st.Live()), Clock: st.Clock, DetectedHLC: hlc,
	}
	return t.putConflict(c, isNew)
}

// closeRecord marks an open record resolved by the write by, keeping
// what the key then held.
func (t *txn) closeRecord(id string, hlc uint64, st dvv.State, by cause) error {
	c, ok, err := t.conflict(id)
	if err != nil || !ok || c.Status != StatusOpen {
		return err
	}
	c.Status = StatusResolved
	c.ResolvedHLC = hlc
	c.ResolvedTo = versionsOf(st.Siblings)
	c.ResolvedBy = by.dc
	switch {
	case by.dc == "":
		c.ResolvedVia = "anti-entropy"
	case by.op == event.OpResolve:
		c.ResolvedVia = "resolve"
	default:
		c.ResolvedVia = "write"
	}
	return t.putConflict(c, false)
}

func (t *txn) conflictExists(id string) (bool, error) {
	_, ok, err := t.conflict(id)
	return ok, err
}

// conflict reads an entry as this batch has left it.
func (t *txn) conflict(id string) (Conflict, bool, error) {
	if c, ok := t.conf[id]; ok {
		return c, true, nil
	}
	return t.s.getConflict(id)
}

// putConflict writes an entry; isNew counts it in the store's stats.
func (t *txn) putConflict(c Conflict, isNew bool) error {
	b, err := msgpack.Marshal(&c)
	if err != nil {
		return err
	}
	if isNew {
		resolver := c.Resolver
		t.after = append(t.after, func() { t.s.countConflict(resolver) })
	}
	t.conf[c.ID] = c
	if err := t.set(conflictKey(c.ID), b); err != nil {
		return err
	}
	return t.indexConflict(c)
}

func (s *Store) getConflict(id string) (Conflict, bool, error) {
	b, ok, err := s.get(conflictKey(id))
	if err != nil || !ok {
		return Conflict{}, false, err
	}
	var c Conflict
	if err := msgpack.Unmarshal(b, &c); err != nil {
		return Conflict{}, false, fmt.Errorf("changelog: conflict %s: %w", id, err)
	}
	return c, true, nil
}

// Conflict returns one entry of the conflict log.
func (s *Store) Conflict(id string) (Conflict, error) {
	c, ok, err := s.getConflict(id)
	if err != nil {
		return Conflict{}, err
	}
	if !ok {
		return Conflict{}, fmt.Errorf("%w: conflict %q", ErrNotFound, id)
	}
	return c, nil
}

// ConflictFilter selects entries of the conflict log.
type ConflictFilter struct {
	// Status, if set, keeps only entries with that status.
	Status string
	// KeyPrefix, if set, keeps only entries whose key starts with it.
	KeyPrefix string
	// Limit caps the entries returned; 0 means no cap.
	Limit int
	// After, if set, starts the listing after this id (ids are ordered),
	// to page through the log.
	After string
}

// Conflicts lists the conflict log, ordered by id.
func (s *Store) Conflicts(f ConflictFilter) ([]Conflict, error) {
	lower := []byte{pfxConflict}
	if f.After != "" {
		lower = append(conflictKey(f.After), 0)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: []byte{pfxConflict + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Conflict
	for it.First(); it.Valid(); it.Next() {
		var c Conflict
		if err := msgpack.Unmarshal(it.Value(), &c); err != nil {
			return nil, fmt.Errorf("changelog: conflict %q: %w", it.Key()[1:], err)
		}
		if f.Status != "" && c.Status != f.Status || !strings.HasPrefix(c.Key, f.KeyPrefix) {
			continue
		}
		out = append(out, c)
		if f.Limit > 0 && len(out) >= f.Limit {
			break
		}
	}
	return out, it.Error()
}

func (s *Store) countConflict(resolver string) {
	s.conflictsMu.Lock()
	defer s.conflictsMu.Unlock()
	if s.conflicts == nil {
		s.conflicts = map[string]uint64{}
	}
	s.conflicts[resolver]++
}
