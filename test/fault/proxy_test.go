package fault_test

import (
	"io"
	"net"
	"sync"
	"testing"
)

// proxy forwards TCP connections to a target address: one DC's link to
// NATS. Cut closes every open connection and makes new ones close at once
// until Heal, as a network partition between the DC and NATS does.
type proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu struct {
		sync.Mutex
		cut   bool
		cuts  int
		conns map[net.Conn]bool
	}
}

// startProxy listens on a free loopback port and forwards to target until
// the end of the test.
func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.mu.conns = map[net.Conn]bool{}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

// URL is the NATS URL to dial instead of the target.
func (p *proxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *proxy) serve(c net.Conn) {
	if !p.track(c) {
		c.Close()
		return
	}
	defer p.untrack(c)
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return // NATS is down: the client sees the connection close
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.untrack(up)
	var pipes sync.WaitGroup
	for _, pair := range [][2]net.Conn{{up, c}, {c, up}} {
		pipes.Go(func() {
			io.Copy(pair[0], pair[1])
			// One direction ended: end the other too.
			pair[0].Close()
			pair[1].Close()
		})
	}
	pipes.Wait()
}

// track registers c, unless the link is cut.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.cut {
		return false
	}
	p.mu.conns[c] = true
	return true
}

func (p *proxy) untrack(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.mu.conns, c)
	p.mu.Unlock()
}

// Cut closes every forwarded connection and refuses new ones.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.cut = true
	p.mu.cuts++
	for c := range p.mu.conns {
		c.Close()
	}
}

// Heal lets connections through again.
func (p *proxy) Heal() {
	p.mu.Lock()
	p.mu.cut = false
	p.mu.Unlock()
}

func (p *proxy) close() {
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}
