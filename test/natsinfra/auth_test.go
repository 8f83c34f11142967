package natsinfra_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/config"
)

// authCase is a server that demands some proof of identity, the sidecar
// settings that give it, and settings that must be refused.
type authCase struct {
	name string
	// setup starts the server and returns how to configure a sidecar that
	// may use it, and sidecar settings the server must refuse.
	setup func(t *testing.T) (url string, good func(*config.Config), bad []badAuth)
}

// badAuth is a sidecar setting that must make Start fail with an error
// containing every string of want (compared case-insensitively).
type badAuth struct {
	name   string
	adjust func(*config.Config)
	want   []string
}

// TestAuth runs, for each way a server can demand credentials, two DCs
// that present them and replicate a write, and sidecars with wrong or
// missing credentials, whose Start must fail at once with an error that
// says why.
func TestAuth(t *testing.T) {
	for _, tc := range []authCase{
		{"user and password", userPasswordServer},
		{"token", tokenServer},
		{"JWT credentials", jwtServer},
		{"mutual TLS with a private CA", tlsServer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, good, bad := tc.setup(t)
			dcs := []string{"dc1", "dc2"}
			mesh := startMesh(t, dcs, func(int) string { return url }, good)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			nodes := mesh.Nodes()
			if _, err := nodes[0].Write(ctx, changelog.WriteOp{Key: "auth/k", Value: []byte("v")}); err != nil {
				t.Fatal(err)
			}
			if _, err := nodes[1].Write(ctx, changelog.WriteOp{Key: "auth/j", Value: []byte("w")}); err != nil {
				t.Fatal(err)
			}
			mesh.WaitConverged(t, 20*time.Second)
			if _, _, ok, err := nodes[1].Read("auth/k"); !ok || err != nil {
				t.Fatalf("dc2 does not hold dc1's write auth/k (ok %t, err %v)", ok, err)
			}

			for _, b := range bad {
				t.Run(b.name, func(t *testing.T) {
					cfg := sidecarConfig(t, "dc3", []string{"dc1", "dc2", "dc3"}, url)
					good(&cfg)
					b.adjust(&cfg)
					n := newSidecar(t, cfg)
					ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
					defer cancel()
					start := time.Now()
					err := n.Start(ctx)
					took := time.Since(start)
					if err == nil {
						t.Fatalf("Start succeeded; want an error mentioning %q", b.want)
					}
					t.Logf("Start failed after %s: %v", took.Round(time.Millisecond), err)
					for _, w := range b.want {
						if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(w)) {
							t.Errorf("Start error %q does not mention %q", err, w)
						}
					}
					if took > 10*time.Second {
						t.Errorf("Start took %s to fail; refused credentials should fail at once", took)
					}
				})
			}
		})
	}
}

func userPasswordServer(t *testing.T) (string, func(*config.Config), []badAuth) {
	s := runServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir(), Username: "repl", Password: "s3cret"})
	good := func(c *config.Config) { c.NATS.User, c.NATS.Password = "repl", "s3cret" }
	return s.ClientURL(), good, []badAuth{
		{"wrong password", func(c *config.Config) { c.NATS.Password = "guess" }, []string{"connect to NATS", "authorization violation"}},
		{"no credentials", func(c *config.Config) { c.NATS.User, c.NATS.Password = "", "" }, []string{"connect to NATS", "authorization violation"}},
	}
}

func tokenServer(t *testing.T) (string, func(*config.Config), []badAuth) {
	s := runServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir(), Authorization: "s3cret-token"})
	good := func(c *config.Config) { c.NATS.Token = "s3cret-token" }
	return s.ClientURL(), good, []badAuth{
		{"wrong token", func(c *config.Config) { c.NATS.Token = "guess" }, []string{"connect to NATS", "authorization violation"}},
		{"no token", func(c *config.Config) { c.NATS.Token = "" }, []string{"connect to NATS", "authorization violation"}},
	}
}

// jwtServer runs a server in operator mode: an operator signs a system
// account and an application account with JetStream; the account signs
// the sidecars' user, whose JWT and NKey seed go into a .creds file.
func jwtServer(t *testing.T) (string, func(*config.Config), []badAuth) {
	dir := t.TempDir()
	op := mustKey(t, nkeys.CreateOperator)
	opClaims := jwt.NewOperatorClaims(publicKey(t, op))
	opClaims.Name = "test-operator"

	sys := mustKey(t, nkeys.CreateAccount)
	sysClaims := jwt.NewAccountClaims(publicKey(t, sys))
	sysClaims.Name = "SYS"
	opClaims.SystemAccount = publicKey(t, sys)

	app := mustKey(t, nkeys.CreateAccount)
	appClaims := jwt.NewAccountClaims(publicKey(t, app))
	appClaims.Name = "APP"
	appClaims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}

	resolver := &server.MemAccResolver{}
	for _, a := range []struct {
		claims *jwt.AccountClaims
	}{{sysClaims}, {appClaims}} {
		enc, err := a.claims.Encode(op)
		if err != nil {
			t.Fatal(err)
		}
		if err := resolver.Store(a.claims.Subject, enc); err != nil {
			t.Fatal(err)
		}
	}
	// Encoding the operator claims signs them (and fills in the issuer).
	if _, err := opClaims.Encode(op); err != nil {
		t.Fatal(err)
	}
	s := runServer(t, &server.Options{
		JetStream:        true,
		StoreDir:         t.TempDir(),
		TrustedOperators: []*jwt.OperatorClaims{opClaims},
		AccountResolver:  resolver,
		SystemAccount:    publicKey(t, sys),
	})
	// Load the account, and enable its JetStream, before any client comes.
	// Left to two sidecars connecting at once, nats-server v2.15.2 races:
	// one connection's lookup registers the account and, while its
	// EnableJetStream probes the account's store directory (mkdir, then
	// remove), the other connection, finding the account registered, may
	// already create a stream there, which fails with "error creating store
	// for stream" (10049).
	if _, err := s.LookupAccount(appClaims.Subject); err != nil {
		t.Fatalf("load account APP: %v", err)
	}

	goodCreds := writeCreds(t, dir, "good.creds", app)
	// A user signed by an account the operator never signed.
	stranger := mustKey(t, nkeys.CreateAccount)
	badCreds := writeCreds(t, dir, "stranger.creds", stranger)
	good := func(c *config.Config) { c.NATS.Creds = goodCreds }
	return s.ClientURL(), good, []badAuth{
		{"user of an unknown account", func(c *config.Config) { c.NATS.Creds = badCreds }, []string{"connect to NATS", "authorization violation"}},
		{"no credentials", func(c *config.Config) { c.NATS.Creds = "" }, []string{"connect to NATS", "authorization violation"}},
		{"missing creds file", func(c *config.Config) { c.NATS.Creds = filepath.Join(dir, "absent.creds") }, []string{"absent.creds", "no such file"}},
	}
}

// writeCreds writes a .creds file for a new user signed by account.
func writeCreds(t *testing.T, dir, name string, account nkeys.KeyPair) string {
	t.Helper()
	user := mustKey(t, nkeys.CreateUser)
	uc := jwt.NewUserClaims(publicKey(t, user))
	uc.Name = "replicator"
	ujwt, err := uc.Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := user.Seed()
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustKey(t *testing.T, create func() (nkeys.KeyPair, error)) nkeys.KeyPair {
	t.Helper()
	kp, err := create()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func publicKey(t *testing.T, kp nkeys.KeyPair) string {
	t.Helper()
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// tlsServer runs a server that requires TLS with a client certificate,
// both issued by a CA made for the test.
func tlsServer(t *testing.T) (string, func(*config.Config), []badAuth) {
	dir := t.TempDir()
	ca := newCA(t, "test CA")
	caFile := ca.writeCert(t, dir, "ca.pem")
	srvCert, srvKey := ca.issue(t, dir, "server", x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := ca.issue(t, dir, "client", x509.ExtKeyUsageClientAuth)
	other := newCA(t, "other CA")
	otherCA := other.writeCert(t, dir, "other-ca.pem")
	strangerCert, strangerKey := other.issue(t, dir, "stranger", x509.ExtKeyUsageClientAuth)

	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: caFile, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	s := runServer(t, &server.Options{
		JetStream: true, StoreDir: t.TempDir(),
		TLSConfig: tc, TLS: true, TLSVerify: true, TLSTimeout: 5,
	})
	url := "tls://" + s.Addr().String()
	good := func(c *config.Config) { c.NATS.TLS = config.TLS{CA: caFile, Cert: cliCert, Key: cliKey} }
	return url, good, []badAuth{
		{"server certificate from an untrusted CA", func(c *config.Config) { c.NATS.TLS.CA = otherCA }, []string{"connect to NATS", "certificate"}},
		// Under TLS 1.3 the client's handshake completes before the server
		// checks the client certificate, so the client sees either the
		// server's "certificate required" alert or only the closed
		// connection; both name TLS.
		{"no client certificate", func(c *config.Config) { c.NATS.TLS.Cert, c.NATS.TLS.Key = "", "" }, []string{"connect to NATS", "tls"}},
		{"client certificate from another CA", func(c *config.Config) { c.NATS.TLS.Cert, c.NATS.TLS.Key = strangerCert, strangerKey }, []string{"connect to NATS", "tls"}},
		{"no TLS settings", func(c *config.Config) { c.NATS.TLS = config.TLS{} }, []string{"connect to NATS", "certificate"}},
	}
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, der: der, key: key}
}

func (ca testCA) writeCert(t *testing.T, dir, name string) string {
	t.Helper()
	return writePEM(t, dir, name, "CERTIFICATE", ca.der)
}

// issue makes a certificate for 127.0.0.1 and localhost with usage, and
// returns the paths of the certificate and its key.
func (ca testCA) issue(t *testing.T, dir, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+"-key.pem", "EC PRIVATE KEY", keyDER)
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
