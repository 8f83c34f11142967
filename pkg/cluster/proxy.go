package cluster

import (
	"net"
	"sync"
)

// Proxy forwards TCP connections to a target address, and can cut the
// link: Cut closes every open connection and makes new ones close at once
// until Heal, like a network partition between the two sides. Freeze
// stalls it instead: nothing passes either way, but no connection closes,
// like a server or network too busy to answer, until Thaw.
type Proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu struct {
		sync.Mutex
		cut   bool
		conns map[net.Conn]bool
		// thawed is closed while bytes may pass; Freeze replaces it with
		// an open channel, which Thaw closes.
		thawed chan struct{}
	}
}

// StartProxy listens on a free loopback port and forwards to target until
// Close.
func StartProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target}
	p.mu.conns = map[net.Conn]bool{}
	p.mu.thawed = make(chan struct{})
	close(p.mu.thawed)
	p.wg.Go(p.accept)
	return p, nil
}

// RunProxy is StartProxy for tests: the proxy closes at the end of the
// test.
func RunProxy(t TB, target string) *Proxy {
	t.Helper()
	p, err := StartProxy(target)
	if err != nil {
		t.Fatalf("proxy to %s: %v", target, err)
	}
	t.Cleanup(p.Close)
	return p
}

// Addr is the address to dial instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the NATS URL to dial instead of the target.
func (p *Proxy) URL() string { return "nats://" + p.Addr() }

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *Proxy) serve(c net.Conn) {
	if !p.track(c) {
		c.Close()
		return
	}
	defer p.untrack(c)
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return // the target is down: the client sees the connection close
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.untrack(up)
	var pipes sync.WaitGroup
	for _, pair := range [][2]net.Conn{{up, c}, {c, up}} {
		pipes.Go(func() {
			p.copy(pair[0], pair[1])
			// One direction ended: end the other too.
			pair[0].Close()
			pair[1].Close()
		})
	}
	pipes.Wait()
}

// copy forwards src to dst until either fails, holding each chunk it
// read while the proxy is frozen.
func (p *Proxy) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			<-p.gate()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// gate returns a channel that is closed while bytes may pass.
func (p *Proxy) gate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.thawed
}

// Freeze stops every byte in both directions, on open connections and new
// ones, without closing any, until Thaw: to the client the server falls
// silent (no heartbeats, no replies), as one does under overload.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.mu.thawed:
		p.mu.thawed = make(chan struct{})
	default: // already frozen
	}
}

// Thaw lets the held bytes, and what follows, through again.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.mu.thawed:
	default:
		close(p.mu.thawed)
	}
}

// track registers c, unless the link is cut.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.cut {
		return false
	}
	p.mu.conns[c] = true
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.mu.conns, c)
	p.mu.Unlock()
}

// Cut closes every forwarded connection and refuses new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.cut = true
	for c := range p.mu.conns {
		c.Close()
	}
}

// Heal lets connections through again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.mu.cut = false
	p.mu.Unlock()
}

// IsCut reports whether the link is cut.
func (p *Proxy) IsCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.cut
}

// Close stops listening, closes every connection and waits for the
// forwarding goroutines; calling it again is harmless.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
	p.Thaw() // held chunks fail on their closed connections
	p.wg.Wait()
}
