package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/replicatorhq/replicator/pkg/antientropy"
	"github.com/replicatorhq/replicator/pkg/config"
)

// cmdRepair asks a running sidecar to run anti-entropy against every peer
// now (pkg/antientropy, on repl.ae.<dc>.run) and prints its reports.
func cmdRepair(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("repair", "--config FILE [--timeout D] [--json]", stderr)
	path := fs.String("config", "", "the sidecar's YAML config file (required): its dc and nats settings are used")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the run to finish")
	asJSON := fs.Bool("json", false, "print the reports as one JSON object")
	if err := parseNone(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return usagef("--config FILE is required")
	}
	if *timeout <= 0 {
		return usagef("--timeout %s: want a positive duration", *timeout)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	url, opts, err := natsClient(cfg)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(url, append(opts, nats.Name("replicator-repair-"+cfg.DC))...)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	reply, err := antientropy.RequestRun(ctx, nc, cfg.DC)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(reply)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tPARTITIONS\tDIFFERED\tBUCKETS\tKEYS EXCHANGED\tKEYS CHANGED\tTAKEN\tDROPPED\tREMOVED\tLOST FOUND\tSKIPPED\tTIME\tERROR")
	failed := 0
	for _, r := range reply.Reports {
		if r.Error != "" {
			failed++
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", r.Peer, r.PartitionsCompared, r.PartitionsDiffered,
			r.BucketsDiffered, r.KeysExchanged, r.KeysChanged, r.VersionsTaken, r.VersionsDropped, r.KeysRemoved, r.LostFound,
			r.KeysSkipped, r.Duration.Round(time.Millisecond), r.Error)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dc %s: anti-entropy against %d peers in %s\n", reply.DC, len(reply.Reports), time.Since(start).Round(time.Millisecond))
	if failed > 0 {
		return fmt.Errorf("%d of %d peers failed; see the ERROR column", failed, len(reply.Reports))
	}
	return nil
}

// natsClient returns the URL and options to reach the NATS the sidecar of
// cfg uses: its external server with the configured credentials and TLS,
// or its embedded server at nats.listen.
func natsClient(cfg config.Config) (string, []nats.Option, error) {
	c := cfg.NATS
	var opts []nats.Option
	if c.User != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.UseEmbedded() {
		_, port, err := net.SplitHostPort(c.Listen)
		if err != nil {
			return "", nil, fmt.Errorf("nats.listen %q: %w", c.Listen, err)
		}
		if port == "-1" || port == "0" {
			return "", nil, fmt.Errorf("nats.listen %q: the sidecar's embedded NATS listens on a random port; set a fixed port in the config to use repair", c.Listen)
		}
		return "nats://" + c.Listen, opts, nil
	}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.TLS.Enabled() {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.TLS.InsecureSkipVerify} //nolint:gosec // opt-in, documented
		if c.TLS.CA != "" {
			pem, err := os.ReadFile(c.TLS.CA)
			if err != nil {
				return "", nil, fmt.Errorf("nats.tls.ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return "", nil, fmt.Errorf("nats.tls.ca: %s holds no PEM certificate", c.TLS.CA)
			}
			tc.RootCAs = pool
		}
		if c.TLS.Cert != "" {
			cert, err := tls.LoadX509KeyPair(c.TLS.Cert, c.TLS.Key)
			if err != nil {
				return "", nil, fmt.Errorf("nats.tls.cert/key: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(tc))
	}
	return c.URL, opts, nil
}
