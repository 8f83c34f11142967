package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// floorAnswer is what the floor's handler answers: a write answer's shape,
// so that the client parses what it parses from the sidecar.
var floorAnswer = []byte(`{"key":"k","context":"{dc1:1}","dot":"dc1:1"}` + "\n")

// runHTTPFloor measures what the HTTP row can reach on this machine: a
// trivial handler (read the body, answer a fixed write answer) served on
// loopback in this process, driven by o.Concurrency writers with the
// replicator phase's client (the same transport, keep-alive connections and
// put) doing o.Writes PUTs of the values. It fills the http_floor figures
// of res.
func runHTTPFloor(ctx context.Context, o Options, vals values, res *Result) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("bench: http floor: %w", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(floorAnswer)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		<-served
	}()
	client, closeClient := newClient(o)
	defer closeClient()
	base := "http://" + ln.Addr().String() + "/v1/kv/"

	bar := startProgress(o.Progress, "http floor", int64(o.Writes))
	defer bar.stop()
	settle()
	before := readUsage()
	start := time.Now()
	err = drive(ctx, o, func(ctx context.Context, _, i int) error {
		if _, err := put(ctx, client, base+key(i), vals.at(i)); err != nil {
			return fmt.Errorf("bench: http floor: PUT %s: %w", key(i), err)
		}
		bar.done.Add(1)
		return nil
	})
	elapsed := time.Since(start)
	after := readUsage()
	bar.stop()
	if err != nil {
		return err
	}
	res.HTTPFloorReqPerS = float64(o.Writes) / elapsed.Seconds()
	res.HTTPFloorCPUSPer1k = (after.cpu - before.cpu).Seconds() * 1000 / float64(o.Writes)
	res.HTTPFloorMS = ms(elapsed)
	fmt.Fprintf(o.Progress, "http floor: %.0f PUTs/s\n", res.HTTPFloorReqPerS)
	return nil
}

// newClient is the HTTP client of the writers: one keep-alive connection
// per writer at most. The function it returns closes its idle connections.
func newClient(o Options) (*http.Client, func()) {
	tr := &http.Transport{MaxIdleConns: o.Concurrency, MaxIdleConnsPerHost: o.Concurrency, IdleConnTimeout: time.Minute}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr.CloseIdleConnections
}

// drive runs o.Concurrency goroutines that call fn for i = 0..o.Writes-1,
// each i once; g is the goroutine's number. The first error cancels the
// others' ctx; drive returns every error.
func drive(ctx context.Context, o Options, fn func(ctx context.Context, g, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	errs := make([]error, o.Concurrency)
	var wg sync.WaitGroup
	for g := range o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= o.Writes {
					return
				}
				if err := fn(ctx, g, i); err != nil {
					errs[g] = err
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
