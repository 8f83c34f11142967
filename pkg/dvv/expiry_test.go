package dvv

import (
	"math/rand"
	"testing"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// TestExpiryModel holds Expiry, Expirer and Visible against a simple
// reference over random sibling sets in random orders: the key expires at
// the latest expiry of its live values unless one of them has none
// (the longest TTL wins), the owner is a live sibling with that expiry,
// the answer does not depend on the order, and a read at or after the
// expiry shows no live value and keeps the clock.
func TestExpiryModel(t *testing.T) {
	r := rand.New(rand.NewSource(14))
	for i := range 5000 {
		var sibs []Sibling
		for j := range r.Intn(5) {
			sb := Sibling{Dot: vclock.Dot{DC: []string{"dc1", "dc2", "dc3"}[r.Intn(3)], N: uint64(j + 1)}}
			switch r.Intn(4) {
			case 0:
				sb.Deleted = true
			case 1:
				sb.Value = []byte("v")
			default:
				sb.Value, sb.Expires = []byte("v"), uint64(1+r.Intn(5))
			}
			sibs = append(sibs, sb)
		}
		// The reference.
		var want uint64
		forever, live := false, 0
		for _, sb := range sibs {
			if sb.Deleted {
				continue
			}
			live++
			if sb.Expires == 0 {
				forever = true
			}
			want = max(want, sb.Expires)
		}
		if forever || live == 0 {
			want = 0
		}
		st := State{Clock: vclock.VV{"dc1": 9}, Siblings: sibs}
		shuffled := State{Clock: st.Clock, Siblings: append([]Sibling(nil), sibs...)}
		r.Shuffle(len(shuffled.Siblings), func(a, b int) {
			shuffled.Siblings[a], shuffled.Siblings[b] = shuffled.Siblings[b], shuffled.Siblings[a]
		})
		got := st.Expiry()
		if got != want || shuffled.Expiry() != want {
			t.Fatalf("case %d %+v: Expiry %d (shuffled %d), want %d", i, sibs, got, shuffled.Expiry(), want)
		}
		owner := st.Expirer()
		if want == 0 && owner != "" {
			t.Fatalf("case %d: a key that never expires has owner %q", i, owner)
		}
		if want != 0 {
			found := false
			for _, sb := range sibs {
				found = found || (!sb.Deleted && sb.Expires == want && sb.Origin() == owner)
			}
			if !found {
				t.Fatalf("case %d %+v: owner %q holds no live sibling expiring at %d", i, sibs, owner, want)
			}
		}
		now := uint64(r.Intn(7))
		v := st.Visible(now)
		expired := want != 0 && want <= now
		if expired != (v.LiveCount() == 0 && live > 0) && live > 0 {
			t.Fatalf("case %d: at %d, expiry %d: %d live shown of %d", i, now, want, v.LiveCount(), live)
		}
		if !v.Clock.Equal(st.Clock) || len(v.Siblings) != len(st.Siblings) {
			t.Fatalf("case %d: Visible changed the clock or the dots", i)
		}
		if v2 := v.Visible(now); v2.LiveCount() != v.LiveCount() {
			t.Fatalf("case %d: Visible is not idempotent", i)
		}
	}
}
