package ledger

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/cluster"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// Cluster is what the accounting reads once the DCs have converged.
type Cluster interface {
	Target
	// Members names every DC, in order.
	Members() []string
	// Conflicts reads dc's conflict log.
	Conflicts(dc string) ([]sidecar.Conflict, error)
	// Digests reads every DC's digest: equal reports that all were read
	// and are the same digest, which common is then; desc describes each.
	Digests() (equal bool, common string, desc []string)
}

// AccountOptions tune Account.
type AccountOptions struct {
	// StableTimeout bounds the wait for a stable final state.
	StableTimeout time.Duration
	// Partitions, when not 0, is the DCs' partition count, and turns on
	// the checks that no dot was acknowledged twice in a partition and
	// that every live acknowledged value carries its acknowledged dot,
	// once, at every DC.
	Partitions int
	// FindEvent, when not nil, finds the event a write of value to key at
	// origin committed, or returns nil; Account uses it to account for a
	// put superseded by a write of uncertain outcome.
	FindEvent func(origin, key, value string) *event.Event
}

// Final is what every DC shows once the DCs have converged.
type Final struct {
	Views     map[string]map[string]sidecar.KV // dc -> key -> view
	Live      map[string]map[string]bool       // dc -> values of live siblings
	Shown     map[string]map[string]bool       // dc -> values the resolver shows
	Discarded map[string]string                // value -> conflict id and DC that logged it
	Logged    int                              // conflict log entries over all DCs
}

// ReadFinal reads every key at every DC, and every DC's conflict log.
func ReadFinal(t testing.TB, c Cluster, led *Ledger, keys []string) Final {
	t.Helper()
	fs := Final{
		Views:     map[string]map[string]sidecar.KV{},
		Live:      map[string]map[string]bool{},
		Shown:     map[string]map[string]bool{},
		Discarded: map[string]string{},
	}
	for _, dc := range c.Members() {
		fs.Views[dc] = map[string]sidecar.KV{}
		fs.Live[dc] = map[string]bool{}
		fs.Shown[dc] = map[string]bool{}
		for _, key := range keys {
			v, _, err := c.Get(dc, key)
			if err != nil {
				t.Fatalf("final read: %v", err)
			}
			fs.Views[dc][key] = v
			live := v.LiveValues()
			led.Observe(v)
			for _, val := range live {
				fs.Live[dc][val] = true
			}
			for _, val := range v.Values {
				fs.Shown[dc][string(val)] = true
			}
		}
		cs, err := c.Conflicts(dc)
		if err != nil {
			t.Fatalf("final conflict log: %v", err)
		}
		fs.Logged += len(cs)
		for _, cf := range cs {
			for _, d := range cf.Discarded {
				if !d.Deleted {
					fs.Discarded[string(d.Value)] = fmt.Sprintf("conflict %s (%s, key %s) at %s", cf.ID, cf.Resolver, cf.Key, dc)
				}
			}
		}
	}
	return fs
}

// StableFinal reads the final state between two equal and identical
// digest readings, so that it sees one converged state even while the DCs
// purge causally stable tombstones in the background.
func StableFinal(t testing.TB, c Cluster, led *Ledger, keys []string, timeout time.Duration) Final {
	t.Helper()
	var fs Final
	var last []string
	err := cluster.WaitFor(timeout, 100*time.Millisecond, func() bool {
		equal, before, _ := c.Digests()
		if !equal {
			return false
		}
		fs = ReadFinal(t, c, led, keys)
		equal, after, desc := c.Digests()
		last = desc
		return equal && after == before
	})
	if err != nil {
		t.Fatalf("the DCs' digests kept changing or differing while the final state was read; last digests:\n  %s", strings.Join(last, "\n  "))
	}
	return fs
}

// Accounting is what Account found.
type Accounting struct {
	Puts, Deletes  int // acknowledged
	Live           int // live at every DC
	Superseded     int // covered by an acknowledged put's context
	Deleted        int // covered by an acknowledged delete's context
	Logged         int // discarded by a resolver and logged
	Overwritten    int // covered by a later blind lww put at a DC that held them
	DoubtCommitted int // covered by a write of uncertain outcome that was committed
	Lost           int // none of the above: must be 0
	ConflictLog    int // conflict log entries over all DCs
	Failures       string
}

func (a Accounting) String() string {
	return fmt.Sprintf("%d acked puts + %d acked deletes. Puts: %d live at every DC, %d superseded by an acked put with context, "+
		"%d superseded by an acked delete with context, %d discarded and logged by a resolver, %d overwritten by a later blind lww put at a DC that held them, "+
		"%d superseded by a write of uncertain outcome that was committed; %d LOST. %d conflict log entries over all DCs. Failed requests: %s",
		a.Puts, a.Deletes, a.Live, a.Superseded, a.Deleted, a.Logged, a.Overwritten, a.DoubtCommitted, a.Lost, a.ConflictLog, a.Failures)
}

// Account checks, after convergence, that every acknowledged put is
// accounted for; that nothing superseded through a context is live again
// (no resurrection); that no discarded version is what a DC shows; and,
// with o.Partitions, that each live acknowledged value carries the dot
// its write was acknowledged with, at every DC, so no write became two
// events.
func Account(t testing.TB, c Cluster, led *Ledger, keys []string, o AccountOptions) Accounting {
	t.Helper()
	fs := StableFinal(t, c, led, keys, o.StableTimeout)
	dcs := led.dcs

	// The digests are equal; the per-key states must be too.
	for _, key := range keys {
		want := fs.Views[dcs[0]][key].Canonical()
		for _, dc := range dcs[1:] {
			if got := fs.Views[dc][key].Canonical(); got != want {
				t.Errorf("digests are equal but key %s differs: %s has %s, %s has %s", key, dcs[0], want, dc, got)
			}
		}
	}

	a := Accounting{Failures: led.FailureSummary()}
	if ex := led.examples(); len(ex) > 0 {
		t.Logf("first failures:\n  %s", strings.Join(ex, "\n  "))
	}
	led.mu.Lock()
	defer led.mu.Unlock()
	var lost, partial []string
	ackedDot := map[string]string{} // value -> dot
	for _, op := range led.mu.acked {
		if op.Delete {
			a.Deletes++
			continue
		}
		a.Puts++
		ackedDot[op.Value] = op.Dot
		v := op.Value
		liveAt := 0
		for _, dc := range dcs {
			if fs.Live[dc][v] {
				liveAt++
			}
		}
		switch {
		case liveAt == len(dcs):
			a.Live++
		case liveAt > 0:
			partial = append(partial, fmt.Sprintf("%s (key %s, dot %s) is live at %d of %d DCs", v, op.Key, op.Dot, liveAt, len(dcs)))
		case led.mu.superseded[v] != "":
			a.Superseded++
		case led.mu.deleted[v] != "":
			a.Deleted++
		case fs.Discarded[v] != "":
			a.Logged++
		case led.committedDoubt(v):
			a.DoubtCommitted++
		default:
			if by, _ := led.overwrittenBy(op); by != "" {
				a.Overwritten++
				continue
			}
			if by := led.coveredByDoubtful(o.FindEvent, op); by != "" {
				t.Logf("%s (key %s, dot %s) was superseded by %s", v, op.Key, op.Dot, by)
				a.DoubtCommitted++
				continue
			}
			lost = append(lost, fmt.Sprintf("%s (key %s, acked by %s, dot %s; seen by a read during the run: %t; final state of the key at %s: %s)%s",
				v, op.Key, op.DC, op.Dot, led.mu.observed[v], dcs[0], fs.Views[dcs[0]][op.Key].Canonical(), led.keyHistory(op.Key)))
		}
	}
	a.Lost = len(lost)
	a.ConflictLog = fs.Logged
	for _, s := range partial {
		t.Errorf("not converged: %s", s)
	}
	if len(lost) > 0 {
		t.Errorf("%d acknowledged puts are lost: not live, not superseded through a context, not in any conflict log:\n  %s",
			len(lost), strings.Join(lost[:min(len(lost), 20)], "\n  "))
	}

	if o.Partitions > 0 {
		// A DC never reissues a sequence number (docs/DESIGN.md,
		// invariant 4): no two
		// acknowledged writes share a dot in one partition.
		issued := map[string]string{} // partition/dot -> write
		for _, op := range led.mu.acked {
			k := fmt.Sprintf("%d/%s", event.PartitionOf(op.Key, o.Partitions), op.Dot)
			desc := fmt.Sprintf("%s of %s at %s", Describe(op.Value), op.Key, op.DC)
			if prev, dup := issued[k]; dup {
				t.Errorf("dot %s of partition %s was acknowledged twice: %s, then %s (a sequence number reissued)", op.Dot, k[:strings.IndexByte(k, '/')], prev, desc)
			}
			issued[k] = desc
		}

		// Exactly-once effect, seen from outside: a value lives under one
		// dot, the one its write was acknowledged with, and under one key.
		for _, dc := range dcs {
			where := map[string]string{} // value -> key/dot
			for _, key := range keys {
				for _, s := range fs.Views[dc][key].Siblings {
					if s.Deleted {
						continue
					}
					v := string(s.Value)
					if prev, dup := where[v]; dup {
						t.Errorf("%s holds value %s twice: %s and %s/%s (one write applied as two events)", dc, v, prev, key, s.Dot)
					}
					where[v] = key + "/" + s.Dot
					if d, ok := ackedDot[v]; ok && d != s.Dot {
						t.Errorf("%s holds %s of key %s under dot %s, but its write was acknowledged with dot %s", dc, v, key, s.Dot, d)
					}
				}
			}
		}
	}

	// What an acknowledged context write covered must never be live again,
	// and a version a resolver discarded must never be the one shown.
	for _, dc := range dcs {
		for v := range fs.Live[dc] {
			if by := led.mu.superseded[v]; by != "" {
				t.Errorf("%s is live at %s although the acknowledged %s had a context covering it", v, dc, by)
			}
			if by := led.mu.deleted[v]; by != "" {
				t.Errorf("RESURRECTION: %s is live at %s although the acknowledged %s had a context covering it", v, dc, by)
			}
		}
		for v := range fs.Shown[dc] {
			if in := fs.Discarded[v]; in != "" {
				t.Errorf("%s is the value %s shows although %s lists it as discarded", v, dc, in)
			}
		}
	}
	t.Logf("accounting: %s", a)
	return a
}

// coveredByDoubtful returns the write of uncertain outcome on op's key
// that was committed and whose context covered op's dot, or "". It finds
// the write's event in its DC's stream, by key and value, and reads the
// context there: a blind write's context is the DC's clock for the key,
// which the client never saw. l.mu must be held.
func (l *Ledger) coveredByDoubtful(find func(origin, key, value string) *event.Event, op Op) string {
	if find == nil {
		return ""
	}
	dc, n, err := sidecar.ParseDot(op.Dot)
	if err != nil {
		return ""
	}
	for _, d := range l.mu.doubtfulByKey[op.Key] {
		if d.Value == "" {
			continue // deletes are found by committedDoubt
		}
		ev := find(d.DC, d.Key, d.Value)
		if ev != nil && ev.Context[dc] >= n {
			return fmt.Sprintf("%s, committed as event %s with context %s", d.Desc, ev.Dot, ev.Context)
		}
	}
	return ""
}

// KeySet returns n keys, half under LWWPrefix and half for the default
// siblings resolver.
func KeySet(n int) []string {
	ks := make([]string, 0, n)
	for i := range n {
		if i%2 == 0 {
			ks = append(ks, fmt.Sprintf("sib/k%04d", i/2))
		} else {
			ks = append(ks, fmt.Sprintf("%sk%04d", LWWPrefix, i/2))
		}
	}
	return ks
}

// LWWKeys returns the keys under LWWPrefix.
func LWWKeys(keys []string) []string {
	var out []string
	for _, k := range keys {
		if strings.HasPrefix(k, LWWPrefix) {
			out = append(out, k)
		}
	}
	return out
}
