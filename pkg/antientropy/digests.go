package antientropy

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// DCDigest is one DC's whole-state digest as GET /v1/digests shows it.
type DCDigest struct {
	DC     string `json:"dc"`
	Digest string `json:"digest,omitempty"`
	Keys   int    `json:"keys"`
	// Self marks this sidecar's own DC, read from its store.
	Self bool `json:"self,omitempty"`
	// Error says why a peer's digest is missing: it did not answer
	// within the timeout, has no sidecar running, or runs a build
	// without the digest request.
	Error string `json:"error,omitempty"`
	// Millis is how long the digest took to compute or fetch.
	Millis int64 `json:"ms"`
}

// Digests is the answer of GET /v1/digests: the digest of every DC this
// sidecar could reach, each computed when asked, and whether they agree.
type Digests struct {
	DCs []DCDigest `json:"dcs"`
	// Agree is true when every DC answered with the same digest. DCs
	// agree once writes stop and replication has caught up; while writes
	// flow, digests taken a few milliseconds apart differ.
	Agree bool `json:"agree"`
}

// digestTimeout bounds the wait for each peer's digest.
const digestTimeout = 3 * time.Second

// Digests computes this DC's digest and asks every peer for its own over
// repl.ae.<peer>, all at once. Each digest is one scan of that DC's keys,
// so callers ask on demand (the status page: every 30 s while shown, or
// when asked), never on a timer of their own.
func (w *Worker) Digests(ctx context.Context) Digests {
	out := Digests{DCs: make([]DCDigest, len(w.opts.DCs))}
	var wg sync.WaitGroup
	for i, dc := range w.opts.DCs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			d := DCDigest{DC: dc, Self: dc == w.opts.DC}
			var r digestReply
			var err error
			if d.Self {
				r, err = w.serveDigest()
			} else {
				ctx, cancel := context.WithTimeout(ctx, digestTimeout)
				err = w.ask(ctx, dc, request{Op: opDigest}, &r, &Report{})
				cancel()
				if errors.Is(err, nats.ErrNoResponders) {
					err = errors.New("no sidecar of " + dc + " answers: it is down or cut off from NATS")
				}
			}
			d.Millis = time.Since(start).Milliseconds()
			if err != nil {
				d.Error = err.Error()
			} else {
				d.Digest, d.Keys = r.Digest, r.Keys
			}
			out.DCs[i] = d
		}()
	}
	wg.Wait()
	out.Agree = true
	for _, d := range out.DCs {
		if d.Digest == "" || d.Digest != out.DCs[0].Digest {
			out.Agree = false
		}
	}
	return out
}
