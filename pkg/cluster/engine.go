package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/changelog"
)

// An engine DC (Options.Engine) is its store and its Replicator, each
// started and stopped on its own: a test can write to a DC whose
// Replicator is down, or restore its store from a backup.

// OpenStore opens engine DC name's store on its data dir; an open store
// is left alone.
func (c *Cluster) OpenStore(name string) error {
	d := c.dc(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.store != nil {
		return nil
	}
	st, err := changelog.Open(d.dataDir, changelog.Options{
		DC: name, DCs: c.o.DCs, Partitions: c.o.Partitions, Clock: clock(),
	})
	if err != nil {
		return fmt.Errorf("open store %s: %w", name, err)
	}
	d.mu.store = st
	return nil
}

// CloseStore closes engine DC name's store (its Replicator must be
// stopped).
func (c *Cluster) CloseStore(name string) error {
	d := c.dc(name)
	d.mu.Lock()
	st := d.mu.store
	d.mu.store = nil
	d.mu.Unlock()
	if st == nil {
		return nil
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", name, err)
	}
	return nil
}

// Dial opens a connection to DC name's NATS (through its proxy, if any)
// that reconnects for ever, quickly.
func (c *Cluster) Dial(name string) (*nats.Conn, error) {
	return nats.Connect(c.NATSURL(name), nats.Name(name), nats.MaxReconnects(-1),
		nats.ReconnectWait(20*time.Millisecond), nats.ReconnectJitter(0, 0))
}

// StartReplicator starts engine DC name's Replicator on its open store
// and its connection (opened once, kept across restarts).
func (c *Cluster) StartReplicator(ctx context.Context, name string) error {
	d := c.dc(name)
	d.mu.Lock()
	st, nc, running := d.mu.store, d.mu.nc, d.mu.repl != nil
	d.mu.Unlock()
	if running {
		return nil
	}
	if st == nil {
		return fmt.Errorf("start replicator %s: its store is closed", name)
	}
	if nc == nil {
		var err error
		if nc, err = c.Dial(name); err != nil {
			return fmt.Errorf("connect %s: %w", name, err)
		}
		d.mu.Lock()
		d.mu.nc = nc
		d.mu.Unlock()
	}
	plan, err := bridge.NewPlan(c.o.Topology, name, c.o.DCs, c.o.Hub)
	if err != nil {
		return err
	}
	opts := bridge.Options{
		Store: st, NC: nc, Plan: plan, DCs: c.o.DCs, Partitions: c.o.Partitions,
		Logger: c.logger(name), ReportInterval: c.o.ReportInterval,
	}
	if c.o.Bridge != nil {
		c.o.Bridge(name, &opts)
	}
	r, err := bridge.New(opts)
	if err != nil {
		return fmt.Errorf("replicator %s: %w", name, err)
	}
	sctx, cancel := context.WithTimeout(ctx, c.o.StartTimeout)
	defer cancel()
	if err := r.Start(sctx); err != nil {
		r.Close()
		return fmt.Errorf("start replicator %s: %w", name, err)
	}
	d.mu.Lock()
	d.mu.repl = r
	d.mu.Unlock()
	return nil
}

// StopReplicator closes engine DC name's Replicator, keeping its stats
// (see Stats) and its store open.
func (c *Cluster) StopReplicator(name string) error {
	d := c.dc(name)
	d.mu.Lock()
	r := d.mu.repl
	d.mu.repl = nil
	if r != nil {
		defer func() {
			d.mu.Lock()
			d.mu.past = append(d.mu.past, r.Stats())
			d.mu.Unlock()
		}()
	}
	d.mu.Unlock()
	if r == nil {
		return nil
	}
	if err := r.Close(); err != nil {
		return fmt.Errorf("close replicator %s: %w", name, err)
	}
	return nil
}

// CloseConn closes engine DC name's NATS connection at once, without a
// flush (a crash's lost socket); the next StartReplicator dials a new one.
func (c *Cluster) CloseConn(name string) { c.closeConn(c.dc(name)) }

func (c *Cluster) closeConn(d *dc) {
	d.mu.Lock()
	nc := d.mu.nc
	d.mu.nc = nil
	d.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
}

// Connect opens a test's own connection to the server (no proxy), which
// reconnects for ever, quickly, and closes at the end of the test.
func (c *Cluster) Connect(t TB, name string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.URL(), nats.Name(name), nats.MaxReconnects(-1),
		nats.ReconnectWait(20*time.Millisecond), nats.ReconnectJitter(0, 0))
	if err != nil {
		t.Fatalf("connect to %s: %v", c.URL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream is a JetStream context on a Connect connection.
func (c *Cluster) JetStream(t TB) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(c.Connect(t, "test"))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}
