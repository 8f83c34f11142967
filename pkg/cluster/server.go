package cluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServerOptions describe an embedded NATS server.
type ServerOptions struct {
	// Dir is where JetStream keeps its files; required unless NoJetStream
	// or Raw names a StoreDir.
	Dir string
	// Name is the server's name; empty lets NATS pick one.
	Name string
	// Host defaults to 127.0.0.1; Port 0 picks a free port, which the
	// server keeps across Restart.
	Host string
	Port int
	// Domain is the JetStream domain; empty for none.
	Domain string
	// NoJetStream runs a plain server.
	NoJetStream bool
	// User and Password, or Token, if set, are required of every client.
	User, Password, Token string
	// Raw, when set, is the server's options as they are (clusters,
	// leafnodes, accounts, TLS, JWT); only Host, Port, StoreDir, NoSigs and
	// NoLog are filled in when zero. The fields above are then ignored,
	// except Dir.
	Raw *server.Options
	// Log sends the server's log to stderr; default off (REPL_TEST_NATS_LOG
	// set also turns it on).
	Log bool
	// ReadyTimeout bounds the wait for the server to accept connections;
	// default 10s.
	ReadyTimeout time.Duration
}

// Server is an embedded NATS server that can be stopped and started again
// on the same address and store directory, as a restarted NATS process.
type Server struct {
	o    ServerOptions
	host string
	port int

	mu struct {
		sync.Mutex
		srv *server.Server
	}
}

// StartServer starts an embedded NATS server and returns once it accepts
// connections. The caller stops it with Stop.
func StartServer(o ServerOptions) (*Server, error) {
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	s := &Server{o: o, host: o.Host, port: o.Port}
	if o.Raw != nil {
		if s.host == "" {
			s.host = o.Raw.Host
		}
		if s.port == 0 {
			s.port = o.Raw.Port
		}
	}
	if s.host == "" {
		s.host = "127.0.0.1"
	}
	if s.port == 0 {
		s.port = -1
	}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// options are the server options of the next start.
func (s *Server) options() (*server.Options, error) {
	o := s.o
	var opts *server.Options
	if o.Raw != nil {
		c := *o.Raw
		opts = &c
		if opts.StoreDir == "" {
			opts.StoreDir = o.Dir
		}
	} else {
		opts = &server.Options{
			ServerName:      o.Name,
			JetStream:       !o.NoJetStream,
			StoreDir:        o.Dir,
			JetStreamDomain: o.Domain,
			Username:        o.User,
			Password:        o.Password,
			Authorization:   o.Token,
			// A transaction travels as one message, up to 8 MiB.
			MaxPayload: 8 << 20,
		}
	}
	if opts.JetStream && opts.StoreDir == "" {
		return nil, errors.New("cluster: embedded NATS: JetStream needs a store directory (ServerOptions.Dir)")
	}
	opts.Host, opts.Port = s.host, s.port
	opts.NoSigs = true
	opts.NoLog = !o.Log && os.Getenv("REPL_TEST_NATS_LOG") == ""
	return opts, nil
}

// Start starts a stopped server on the address and store directory it had.
// The port may take a moment to be free again after a Stop, so Start tries
// again for up to ReadyTimeout.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.srv != nil {
		return nil
	}
	opts, err := s.options()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(s.o.ReadyTimeout)
	var srv *server.Server
	for {
		srv, err = s.run(opts)
		if err == nil || s.port <= 0 || time.Now().After(deadline) {
			break
		}
		retry := time.NewTimer(50 * time.Millisecond) // the port is still held by the last run
		<-retry.C
	}
	if err != nil {
		return err
	}
	if s.port <= 0 {
		s.port = srv.Addr().(*net.TCPAddr).Port
	}
	s.mu.srv = srv
	return nil
}

func (s *Server) run(opts *server.Options) (*server.Server, error) {
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cluster: embedded NATS %s: %w", opts.ServerName, err)
	}
	if !opts.NoLog {
		srv.ConfigureLogger()
	}
	srv.Start()
	if !srv.ReadyForConnections(s.o.ReadyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("cluster: embedded NATS %s on %s:%d not ready after %s", opts.ServerName, opts.Host, opts.Port, s.o.ReadyTimeout)
	}
	return srv, nil
}

// Stop shuts the server down and waits; calling it again is harmless.
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.mu.srv
	s.mu.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart stops the server and starts it again on the same address and
// store directory.
func (s *Server) Restart() error {
	s.Stop()
	return s.Start()
}

// NATS returns the running nats-server, or nil when stopped.
func (s *Server) NATS() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.srv
}

// Running reports whether the server is started.
func (s *Server) Running() bool { return s.NATS() != nil }

// Addr is the server's client address, host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.host, strconv.Itoa(s.port)) }

// URL is the server's client URL.
func (s *Server) URL() string { return "nats://" + s.Addr() }

// RunServer is StartServer for tests: it fails t if the server does not
// start, and stops it at the end of the test. A Dir left empty is a fresh
// temporary directory.
func RunServer(t TB, o ServerOptions) *Server {
	t.Helper()
	if o.Dir == "" && !o.NoJetStream && (o.Raw == nil || o.Raw.JetStream && o.Raw.StoreDir == "") {
		o.Dir = t.TempDir()
	}
	s, err := StartServer(o)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(s.Stop)
	return s
}
