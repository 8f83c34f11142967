package changelog

import (
	"context"
	"encoding/binary"
	"fmt"
)

// pfxHome keys the home-DC epochs: h <rule prefix> -> u64 epoch, then the
// home DC id. They are this DC's own fencing bookkeeping (pkg/home), not
// replicated state: the digest and anti-entropy never read them.
const pfxHome = 'h'

func homeKey(prefix string) []byte { return append([]byte{pfxHome}, prefix...) }

// HomeEpoch is the fencing epoch of one home rule and the DC that is its
// home in that epoch, as this DC last learned it.
type HomeEpoch struct {
	Epoch uint64
	Home  string
}

// HomeEpoch returns the epoch stored for the home rule with prefix; ok is
// false when none is stored yet.
func (s *Store) HomeEpoch(prefix string) (e HomeEpoch, ok bool, err error) {
	v, ok, err := s.get(homeKey(prefix))
	if err != nil || !ok {
		return HomeEpoch{}, false, err
	}
	if len(v) < 8 {
		return HomeEpoch{}, false, fmt.Errorf("changelog: corrupt home epoch of prefix %q", prefix)
	}
	return HomeEpoch{Epoch: binary.BigEndian.Uint64(v), Home: string(v[8:])}, true, nil
}

// SetHomeEpoch durably records e for the home rule with prefix, so a
// restart does not forget an epoch this DC accepted. It never lowers a
// stored epoch; callers serialize the updates of one prefix.
func (s *Store) SetHomeEpoch(ctx context.Context, prefix string, e HomeEpoch) error {
	if cur, ok, err := s.HomeEpoch(prefix); err == nil && ok && cur.Epoch > e.Epoch {
		return nil
	}
	v := append(u64(e.Epoch), e.Home...)
	return s.do(ctx, func(t *txn) error { return t.set(homeKey(prefix), v) })
}
