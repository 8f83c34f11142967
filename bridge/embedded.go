package bridge

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions configure an in-process NATS server, for the demo and for
// tests.
type EmbeddedOptions struct {
	// StoreDir is where JetStream keeps its files; required with JetStream.
	StoreDir string
	// Host to listen on. Default "127.0.0.1".
	Host string
	// Port to listen on; -1 picks a free port. Zero means -1.
	Port int
	// JetStream enables JetStream.
	JetStream bool
	// ServerName names the server; empty lets NATS pick one.
	ServerName string
	// Domain is the JetStream domain; empty for none.
	Domain string
	// User and Password, or Token, if set, are required of every client.
	User, Password, Token string
	// ReadyTimeout bounds the wait for the server to accept connections.
	// Default 10s.
	ReadyTimeout time.Duration
}

// StartEmbedded starts a NATS server in this process and returns it once it
// accepts connections. The caller shuts it down with Shutdown and
// WaitForShutdown.
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = -1
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	if o.JetStream && o.StoreDir == "" {
		return nil, errors.New("bridge: embedded NATS: JetStream needs a StoreDir")
	}
	opts := &server.Options{
		ServerName:      o.ServerName,
		Host:            o.Host,
		Port:            o.Port,
		JetStream:       o.JetStream,
		StoreDir:        o.StoreDir,
		JetStreamDomain: o.Domain,
		Username:        o.User,
		Password:        o.Password,
		Authorization:   o.Token,
		NoLog:           true,
		NoSigs:          true,
		// A transaction travels as one message, up to 8 MiB.
		MaxPayload: 8 << 20,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bridge: embedded NATS: %w", err)
	}
	s.Start() // does not block: it starts the server's own goroutines
	if !s.ReadyForConnections(o.ReadyTimeout) {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("bridge: embedded NATS on %s:%d not ready after %s", o.Host, o.Port, o.ReadyTimeout)
	}
	return s, nil
}
