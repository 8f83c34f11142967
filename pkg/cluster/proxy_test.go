package cluster_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replicatorhq/replicator/pkg/cluster"
)

// TestGatewayProxyCutFrom: a gateway proxy cuts the connections of the
// gateway named in the dialer's CONNECT, and refuses that gateway's new
// ones until healed, while another gateway's connection goes on.
func TestGatewayProxyCutFrom(t *testing.T) {
	// The target speaks as a gateway port does: INFO first, then it echoes
	// every line it gets.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				fmt.Fprintf(c, "INFO {\"gateway\":\"target\"}\r\n")
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			})
		}
	})
	p, err := cluster.StartGatewayProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)

	// dial connects as gateway name and returns the connection once its
	// CONNECT came back, or the error that ended it.
	dial := func(name string) (net.Conn, *bufio.Reader, error) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			return nil, nil, err
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			return nil, nil, fmt.Errorf("INFO: %w", err)
		}
		connect := fmt.Sprintf("CONNECT {\"gateway\":%q}\r\n", name)
		fmt.Fprint(c, connect)
		echo, err := r.ReadString('\n')
		if err != nil || echo != connect {
			return nil, nil, fmt.Errorf("CONNECT came back as %q: %v", echo, err)
		}
		return c, r, nil
	}
	// alive says whether c still carries a line both ways.
	alive := func(c net.Conn, r *bufio.Reader) bool {
		if _, err := fmt.Fprint(c, "PING\r\n"); err != nil {
			return false
		}
		line, err := r.ReadString('\n')
		return err == nil && strings.TrimSpace(line) == "PING"
	}

	a, ar, err := dial("a")
	if err != nil {
		t.Fatal(err)
	}
	b, br, err := dial("b")
	if err != nil {
		t.Fatal(err)
	}
	p.CutFrom("a")
	if alive(a, ar) {
		t.Error("gateway a's connection still carries data after CutFrom(a)")
	}
	if _, _, err := dial("a"); err == nil {
		t.Error("gateway a connected again while cut")
	}
	if !alive(b, br) {
		t.Error("gateway b's connection ended when a was cut")
	}
	p.HealFrom("a")
	if _, _, err := dial("a"); err != nil {
		t.Errorf("gateway a after HealFrom(a): %v", err)
	}
}
