package changelog

import (
	"context"
	"encoding/json"
	"fmt"
)

// pfxPrepared keys the transactions spanning this DC's shards that this
// shard has prepared and not yet applied: p <id> -> JSON Prepared. They
// are this shard's own bookkeeping (invariants 11 and 16 in
// docs/DESIGN.md): the digest, anti-entropy and snapshots never read them.
const pfxPrepared = 'p'

func preparedKey(id string) []byte { return append([]byte{pfxPrepared}, id...) }

// Prepared is what a shard records of a transaction it prepared: the
// origin, and the keys and (partition, sequence) of its own ops, whose
// reads wait until the transaction is applied here.
type Prepared struct {
	Origin string      `json:"origin"`
	Keys   []string    `json:"keys"`
	Ops    [][2]uint64 `json:"ops"`
}

// Covered reports whether applied covers every op of p.
func (p Prepared) Covered(applied Applied) bool {
	for _, op := range p.Ops {
		if !applied.Covers(p.Origin, uint32(op[0]), op[1]) {
			return false
		}
	}
	return true
}

// Prepare durably records that this shard prepared transaction id.
func (s *Store) Prepare(ctx context.Context, id string, p Prepared) error {
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return s.do(ctx, func(t *txn) error { return t.set(preparedKey(id), v) })
}

// Unprepare forgets transaction id, once applied.
func (s *Store) Unprepare(ctx context.Context, id string) error {
	return s.do(ctx, func(t *txn) error { return t.del(preparedKey(id)) })
}

// PreparedTxns returns every transaction this shard prepared and has not
// forgotten.
func (s *Store) PreparedTxns() (map[string]Prepared, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	lo := []byte{pfxPrepared}
	it, err := s.db.NewIter(nil)
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := map[string]Prepared{}
	for ok := it.SeekGE(lo); ok && it.Key()[0] == pfxPrepared; ok = it.Next() {
		var p Prepared
		if err := json.Unmarshal(it.Value(), &p); err != nil {
			return nil, fmt.Errorf("changelog: prepared transaction %q: %w", it.Key()[1:], err)
		}
		out[string(it.Key()[1:])] = p
	}
	return out, it.Error()
}
