package cluster

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"strings"
	"sync"
)

// Proxy forwards TCP connections to a target address, and can cut the
// link: Cut closes every open connection and makes new ones close at once
// until Heal, like a network partition between the two sides.
//
// A gateway proxy (StartGatewayProxy) also knows who dials it: it reads
// the gateway name from each dialer's CONNECT before letting the
// connection through, and CutFrom cuts only the dialers of one gateway.
// The cut then holds whichever address a server dials it by, which
// matters because gateways gossip the addresses they know of each other.
type Proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	// byDialer makes the proxy read each dialer's first line and key the
	// connection by the gateway it names.
	byDialer bool

	mu struct {
		sync.Mutex
		cut bool
		// cutFrom holds the dialers (gateway names) cut by CutFrom.
		cutFrom map[string]bool
		// conns maps each forwarded connection to its dialer's gateway
		// name ("" for a plain proxy).
		conns map[net.Conn]string
	}
}

// StartProxy listens on a free loopback port and forwards to target until
// Close.
func StartProxy(target string) (*Proxy, error) {
	return startProxy(target, false)
}

// StartGatewayProxy is StartProxy for a NATS gateway port, whose
// connections can also be cut by the dialer's gateway name (CutFrom).
func StartGatewayProxy(target string) (*Proxy, error) {
	return startProxy(target, true)
}

func startProxy(target string, byDialer bool) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, byDialer: byDialer}
	p.mu.conns = map[net.Conn]string{}
	p.mu.cutFrom = map[string]bool{}
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
	if !p.track(c, "") {
		c.Close()
		return
	}
	defer p.untrack(c)
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return // the target is down: the client sees the connection close
	}
	if !p.track(up, "") {
		up.Close()
		return
	}
	defer p.untrack(up)
	var pipes sync.WaitGroup
	// pipe copies src to dst, then ends both directions.
	pipe := func(dst io.Writer, src io.Reader) {
		pipes.Go(func() {
			io.Copy(dst, src)
			c.Close()
			up.Close()
		})
	}
	pipe(c, up)
	var from io.Reader = c
	if p.byDialer {
		// The server speaks first (INFO); the dialer answers with its
		// CONNECT, which names its gateway. Nothing of the dialer's
		// reaches the server before the proxy knows who it is.
		br := bufio.NewReader(c)
		line, err := br.ReadSlice('\n')
		name := gatewayName(line)
		if err != nil || !p.track(c, name) || !p.track(up, name) {
			c.Close()
			up.Close()
			pipes.Wait()
			return
		}
		if _, err := up.Write(line); err != nil {
			c.Close()
			up.Close()
		}
		from = br
	}
	pipe(up, from)
	pipes.Wait()
}

// gatewayName is the gateway named by a CONNECT line, or "".
func gatewayName(line []byte) string {
	arg, ok := strings.CutPrefix(strings.TrimSpace(string(line)), "CONNECT ")
	if !ok {
		return ""
	}
	var connect struct {
		Gateway string `json:"gateway"`
	}
	if json.Unmarshal([]byte(arg), &connect) != nil {
		return ""
	}
	return connect.Gateway
}

// track registers c as a connection of dialer from, unless the link is
// cut for it.
func (p *Proxy) track(c net.Conn, from string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.cut || p.mu.cutFrom[from] {
		return false
	}
	p.mu.conns[c] = from
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

// CutFrom closes the connections of a gateway proxy dialed by the
// servers of gateway name, and refuses theirs until HealFrom. A dialer
// is known once it has sent its CONNECT, so a connection that has not
// yet is refused when it does.
func (p *Proxy) CutFrom(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.cutFrom[name] = true
	for c, from := range p.mu.conns {
		if from == name {
			c.Close()
		}
	}
}

// HealFrom lets gateway name's servers through again.
func (p *Proxy) HealFrom(name string) {
	p.mu.Lock()
	delete(p.mu.cutFrom, name)
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
	p.wg.Wait()
}
