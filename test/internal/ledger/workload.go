package ledger

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/replicatorhq/replicator/test/internal/sidecar"
)

// Target is a set of DCs whose HTTP API the workload drives.
type Target interface {
	// Get reads key at dc; status is 200 or 404 on success.
	Get(dc, key string) (sidecar.KV, int, error)
	// Write sends a PUT (value != nil) or DELETE at dc, with
	// X-Repl-Context when vctx is not nil. It returns the HTTP status (0
	// on a transport error).
	Write(dc, key string, value []byte, vctx *string) (sidecar.WriteResp, int, error)
}

// Workload drives writes at the DCs over HTTP and records them in a
// ledger. Each worker loops until it has its quota of acknowledged
// operations or the workload halts.
type Workload struct {
	c    Target
	led  *Ledger
	keys []string
	stop chan struct{}
	wg   sync.WaitGroup
}

// NewWorkload returns a workload writing keys at c.
func NewWorkload(c Target, led *Ledger, keys []string) *Workload {
	return &Workload{c: c, led: led, keys: keys, stop: make(chan struct{})}
}

// Start runs workers goroutines writing at dc, each until it has maxAcked
// acknowledged operations (0: no limit) or the workload halts.
func (w *Workload) Start(dc string, workers, maxAcked int, seed uint64) {
	for i := range workers {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		w.wg.Go(func() { w.worker(dc, maxAcked, rng) })
	}
}

// Halt stops every worker and waits for them. Workers finish the
// operation in hand, so halting leaves no write in doubt.
func (w *Workload) Halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
}

func (w *Workload) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// pause waits a little after a failure, so a worker at a dead DC does not
// spin; it returns early when the workload halts.
func (w *Workload) pause() {
	t := time.NewTimer(20 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-w.stop:
	}
}

func (w *Workload) worker(dc string, maxAcked int, rng *rand.Rand) {
	acked := 0
	for (maxAcked == 0 || acked < maxAcked) && !w.stopped() {
		key := w.keys[rng.IntN(len(w.keys))]
		roll := rng.IntN(30)
		var ok bool
		switch {
		case roll == 0:
			ok = w.DeleteWithContext(dc, key)
		case roll <= 10:
			ok = w.BlindPut(dc, key)
		default:
			ok = w.ReadModifyWrite(dc, key)
		}
		if ok {
			acked++
		} else {
			w.pause()
		}
	}
}

// read GETs the key and returns its context and live values.
func (w *Workload) read(dc, key string) (ctx string, live []string, ok bool) {
	v, status, err := w.c.Get(dc, key)
	if err != nil {
		w.led.RecordFailure(dc, fmt.Sprintf("GET status %d", status), err, nil)
		return "", nil, false
	}
	live = v.LiveValues()
	w.led.Observe(v)
	return v.Context, live, true
}

// BlindPut writes without a context. Before a blind put to an lww key it
// reads the key (and sends nothing of that read), to record which versions
// the DC held: the put implicitly supersedes them.
func (w *Workload) BlindPut(dc, key string) bool {
	var seen []string
	if strings.HasPrefix(key, LWWPrefix) {
		_, live, ok := w.read(dc, key)
		if !ok {
			return false
		}
		seen = live
	}
	return w.Put(dc, key, nil, seen)
}

// ReadModifyWrite reads the key and writes a fresh value with the
// context the read returned.
func (w *Workload) ReadModifyWrite(dc, key string) bool {
	ctx, live, ok := w.read(dc, key)
	if !ok {
		return false
	}
	return w.Put(dc, key, &ctx, live)
}

// Put writes a fresh unique value with context vctx, which covers the
// live values covered; with vctx nil it is a blind write, and covered are
// the values a read just before it returned.
func (w *Workload) Put(dc, key string, vctx *string, covered []string) bool {
	value := fmt.Sprintf("%s%s-%d", w.led.opts.Tag, dc, w.led.seqPerDC[dc].Add(1))
	return w.send(dc, key, value, vctx, covered)
}

// DeleteWithContext reads the key and deletes what the read returned.
func (w *Workload) DeleteWithContext(dc, key string) bool {
	ctx, live, ok := w.read(dc, key)
	if !ok {
		return false
	}
	if len(live) == 0 {
		return true // nothing to delete; the read counts as the operation
	}
	return w.send(dc, key, "", &ctx, live)
}

func (w *Workload) send(dc, key, value string, vctx *string, covered []string) bool {
	var preSeen []string
	if vctx == nil {
		preSeen, covered = covered, nil
	}
	var body []byte
	if value != "" {
		body = []byte(value)
	}
	w.led.Ops.Add(1)
	wr, status, err := w.c.Write(dc, key, body, vctx)
	if err == nil {
		blindLWW := vctx == nil && strings.HasPrefix(key, LWWPrefix)
		if err := w.led.RecordAck(Op{DC: dc, Key: key, Value: value, Delete: value == "", Dot: wr.Dot}, covered, blindLWW, preSeen, wr.Context); err != nil {
			w.led.RecordFailure(dc, "bad write answer", err, nil)
		}
		return true
	}
	kind := fmt.Sprintf("%s status %d", strings.ToUpper(Describe(value)[:3]), status)
	switch {
	case status == 0 && sidecar.IsRefused(err):
		// Never reached a server: certainly not committed.
		w.led.RecordFailure(dc, kind+" (refused)", err, nil)
	case status >= 400 && status < 500:
		// Rejected before any effect.
		w.led.RecordFailure(dc, kind, err, nil)
	default:
		// A lost connection, a timeout or a 5xx: maybe committed.
		desc := fmt.Sprintf("%s of %s at %s (%v)", Describe(value), key, dc, err)
		d := &Doubt{DC: dc, Key: key, Blind: vctx == nil, At: time.Now(), Desc: desc, Value: value, Covers: covered}
		if d.Blind {
			if !w.led.opts.BlindDoubts {
				d = nil
			} else {
				d.Covers = preSeen
			}
		}
		w.led.RecordFailure(dc, kind+" (in doubt)", err, d)
	}
	return false
}
