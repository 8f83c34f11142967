package cluster

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/replicatorhq/replicator/changelog"
)

// Converged reports whether every running DC shows the same digest and the
// same applied vector with an empty outbox, and says what each holds.
func (c *Cluster) Converged() (bool, string) {
	return Converged(c.Stores())
}

// Converged reports whether stores agree: the same digest, the same
// applied vector, nothing left to publish. The explanation names each
// store's digest, outbox and applied totals.
func Converged(stores []*changelog.Store) (bool, string) {
	var b strings.Builder
	same := true
	var firstDigest string
	var firstApplied changelog.Applied
	for i, st := range stores {
		d, err := st.Digest()
		if err != nil {
			fmt.Fprintf(&b, "%s: digest: %v; ", st.DC(), err)
			same = false
			continue
		}
		a := st.Applied()
		fmt.Fprintf(&b, "%s digest=%.12s keys=%d outbox=%d applied=%s; ", st.DC(), d.Hex(), d.Keys, st.OutboxDepth(), AppliedTotals(a))
		if st.OutboxDepth() > 0 {
			same = false
		}
		if i == 0 {
			firstDigest, firstApplied = d.Hex(), a
			continue
		}
		if d.Hex() != firstDigest || !a.LessEq(firstApplied) || !firstApplied.LessEq(a) {
			same = false
		}
	}
	return same, b.String()
}

// SameDigests reports whether stores show the same state digest.
func SameDigests(stores []*changelog.Store) (bool, string) {
	var first string
	var lines []string
	equal := true
	for _, st := range stores {
		d, err := st.Digest()
		if err != nil {
			return false, err.Error()
		}
		h := d.Hex()
		lines = append(lines, fmt.Sprintf("%s: %s (%d keys)", st.DC(), h[:16], d.Keys))
		if first == "" {
			first = h
		} else if h != first {
			equal = false
		}
	}
	return equal, "digests " + strings.Join(lines, ", ")
}

// Digests returns each running DC's state digest, by DC.
func (c *Cluster) Digests() map[string]string {
	out := map[string]string{}
	for _, st := range c.Stores() {
		if d, err := st.Digest(); err == nil {
			out[st.DC()] = d.Hex()
		}
	}
	return out
}

// WaitConverged waits until Converged holds twice in a row, and fails the
// test with every DC's state when timeout passes first. It returns how
// long it waited.
func (c *Cluster) WaitConverged(t TB, timeout time.Duration) time.Duration {
	t.Helper()
	begin := time.Now()
	var last string
	Eventually(t, timeout, "convergence", Stable(2, func() (bool, string) {
		ok, why := c.Converged()
		if !ok {
			why += c.links()
		}
		last = why
		return ok, why
	}))
	took := time.Since(begin)
	t.Logf("converged after %s: %s", took.Round(time.Millisecond), last)
	return took
}

// links says what each running DC's links are doing, for failure
// messages.
func (c *Cluster) links() string {
	var b strings.Builder
	for _, name := range c.o.DCs {
		r := c.Replicator(name)
		if r == nil {
			continue
		}
		for _, l := range r.Status().Links {
			fmt.Fprintf(&b, "[%s<-%s received=%d applied=%d gaps=%d lag=%d connected=%t err=%q] ",
				name, l.Upstream, l.Received, l.Applied, l.Gaps, l.LagEvents, l.Connected, l.LastError)
		}
	}
	return b.String()
}

// LinksConnected reports whether every running DC's consumers run, and
// names those that do not.
func (c *Cluster) LinksConnected() (bool, string) {
	var missing []string
	for _, name := range c.o.DCs {
		r := c.Replicator(name)
		if r == nil {
			continue
		}
		for _, l := range r.Status().Links {
			if !l.Connected {
				missing = append(missing, name+"<-"+l.Upstream)
			}
		}
	}
	return len(missing) == 0, fmt.Sprintf("links not connected: %v", missing)
}

// CaughtUp reports whether DC name has applied every event origin holds
// of its own and published its outbox (its forwards).
func (c *Cluster) CaughtUp(name, origin string) (bool, string) {
	st, o := c.Store(name), c.Store(origin)
	if st == nil || o == nil {
		return false, fmt.Sprintf("%s or %s is stopped", name, origin)
	}
	got, want := st.Applied()[origin], o.Applied()[origin]
	return slices.Equal(got, want) && st.OutboxDepth() == 0,
		fmt.Sprintf("%s applied %v of %s's %v, outbox %d", name, got, origin, want, st.OutboxDepth())
}

// HasKey reports whether DC name shows key with a live value equal to
// value (any live value when value is nil).
func (c *Cluster) HasKey(name, key string, value []byte) (bool, string) {
	st := c.Store(name)
	if st == nil {
		return false, name + " is stopped"
	}
	s, ok, err := st.Get(key)
	if err != nil {
		return false, err.Error()
	}
	if !ok || s.LiveCount() == 0 {
		return false, fmt.Sprintf("%s has no live %s", name, key)
	}
	if value == nil {
		return true, ""
	}
	var vals []string
	for _, sib := range s.Siblings {
		if !sib.Deleted && string(sib.Value) == string(value) {
			return true, ""
		}
		vals = append(vals, string(sib.Value))
	}
	return false, fmt.Sprintf("%s holds %s=%q", name, key, vals)
}

// AppliedTotals sums each origin's applied sequences over its partitions,
// for short messages.
func AppliedTotals(a changelog.Applied) string {
	origins := make([]string, 0, len(a))
	for o := range a {
		origins = append(origins, o)
	}
	slices.Sort(origins)
	var parts []string
	for _, o := range origins {
		var sum uint64
		for _, s := range a[o] {
			sum += s
		}
		parts = append(parts, fmt.Sprintf("%s:%d", o, sum))
	}
	return "{" + strings.Join(parts, ",") + "}"
}
