package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/replicatorhq/replicator/client"
	"github.com/replicatorhq/replicator/pkg/config"
	"github.com/replicatorhq/replicator/pkg/event"
)

// clientFlags are the flags every client command shares.
type clientFlags struct {
	addr, token, config string
}

// defaultAddr is the sidecar's default http.listen.
const defaultAddr = "http://127.0.0.1:7070"

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", "", "sidecar HTTP address (default: --config's http.listen, else env REPLICATOR_ADDR, else "+defaultAddr+")")
	fs.StringVar(&c.token, "token", "", "bearer token (default: --config's http.token, else env REPLICATOR_TOKEN)")
	fs.StringVar(&c.config, "config", "", "the sidecar's config FILE: take the address and token from its http.listen and http.token")
}

// finish fills in the address and token left unset by flags: from the
// config file when --config is given, else from the environment, else the
// default address. Call it after parsing.
func (c *clientFlags) finish() error {
	if c.config != "" {
		cfg, err := config.Load(c.config)
		if err != nil {
			return err
		}
		if c.addr == "" {
			c.addr = dialAddr(cfg.HTTP.Listen)
		}
		if c.token == "" {
			c.token = cfg.HTTP.Token
		}
	}
	if c.addr == "" {
		c.addr = envOr("REPLICATOR_ADDR", defaultAddr)
	}
	if c.token == "" {
		c.token = os.Getenv("REPLICATOR_TOKEN")
	}
	return nil
}

// dialAddr turns a listen address into one to dial: an unspecified host
// (":7070", "0.0.0.0:7070", "[::]:7070") becomes loopback.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// do sends one request and returns the body, or an error carrying the
// server's message for a status of 400 or more.
func (c *clientFlags) do(ctx context.Context, method, path string, body io.Reader, hdr map[string]string) (*http.Response, []byte, error) {
	req, err := c.request(ctx, method, path, body, hdr)
	if err != nil {
		return nil, nil, err
	}
	cl := &http.Client{Timeout: 30 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, nil, err
	}
	if resp.StatusCode >= 400 && resp.StatusCode != http.StatusNotFound {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return resp, b, fmt.Errorf("%s: %s", resp.Status, e.Error)
		}
		return resp, b, fmt.Errorf("%s", resp.Status)
	}
	return resp, b, nil
}

// request builds a request to the sidecar, with the token.
func (c *clientFlags) request(ctx context.Context, method, path string, body io.Reader, hdr map[string]string) (*http.Request, error) {
	base := c.addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(base, "/")+path, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return req, nil
}

// stdin is where `kv put KEY -` and `kv txn` read; tests replace it.
var stdin io.Reader = os.Stdin

// exitNotFound is the exit status of `kv get` for a key without a live
// value: not a failure of the command, and not a usage error.
const exitNotFound = 3

const kvSynopsis = "get KEY [--json] | put KEY VALUE|- [--ttl D] | del KEY [--context CTX] | txn [FILE]"

func cmdKV(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("kv", kvSynopsis+"\n\n"+
		"get prints each value on stdout and the context on stderr; --json prints the API's JSON answer instead.\n"+
		"A key without a live value exits with status 3 (errors 1, usage errors 2).\n"+
		"put - reads the value from stdin, byte for byte.", stderr)
	var c clientFlags
	c.register(fs)
	ctxHdr := fs.String("context", "", "causal context from an earlier read (X-Repl-Context); on get, wait until this DC covers it")
	asJSON := fs.Bool("json", false, "get: print the JSON answer of GET /v1/kv/{key} (also for a missing key)")
	ttl := fs.Duration("ttl", 0, "put: the value's time to live (X-Repl-TTL), such as 30s; it expires then at every DC")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return usagef("want get|put|del KEY [VALUE], or txn [FILE]")
	}
	want := map[string]int{"get": 2, "put": 3, "del": 2}
	op := rest[0]
	switch n, ok := want[op]; {
	case op == "txn":
		if len(rest) > 2 {
			return usagef("kv txn [FILE]: one file at most, got %d arguments", len(rest)-1)
		}
	case !ok:
		return usagef("unknown kv operation %q: want get, put, del or txn", op)
	case len(rest) < n && op == "put":
		return usagef("kv put KEY VALUE (or - to read the value from stdin)")
	case len(rest) < n:
		return usagef("kv %s KEY: the key is missing", op)
	case len(rest) > n:
		return usagef("kv %s takes %d argument(s), got %d: %q", op, n-1, len(rest)-1, strings.Join(rest[1:], " "))
	}
	if *asJSON && op != "get" {
		return usagef("--json is for kv get")
	}
	if *ttl != 0 && op != "put" {
		return usagef("--ttl is for kv put")
	}
	if *ttl < 0 {
		return usagef("--ttl %s is negative; give a positive duration such as 30s", *ttl)
	}
	if err := c.finish(); err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	if op == "txn" {
		return kvTxn(ctx, cl, rest[1:], stdout)
	}
	key := rest[1]
	var opts []client.Opt
	if *ctxHdr != "" {
		opts = append(opts, client.Context(*ctxHdr))
	}
	var res client.WriteResult
	switch op {
	case "get":
		item, err := cl.Get(ctx, key, opts...)
		if errors.Is(err, client.ErrNotFound) {
			if *asJSON {
				writeJSONLine(stdout, map[string]string{"error": "no live value", "key": key, "context": item.Context})
			}
			return &exitError{code: exitNotFound, msg: fmt.Sprintf("key %q has no live value (context %s)", key, item.Context)}
		}
		if err != nil {
			return cliError(err)
		}
		if *asJSON {
			return writeJSONLine(stdout, item)
		}
		printRead(stdout, stderr, item)
		return nil
	case "put":
		value := []byte(rest[2])
		if rest[2] == "-" {
			if value, err = io.ReadAll(stdin); err != nil {
				return fmt.Errorf("read the value from stdin: %w", err)
			}
		}
		if *ttl > 0 {
			opts = append(opts, client.TTL(*ttl))
		}
		res, err = cl.Put(ctx, key, value, opts...)
	case "del":
		res, err = cl.Delete(ctx, key, opts...)
	}
	if err != nil {
		return cliError(err)
	}
	return writeJSONLine(stdout, res)
}

// client returns a client of the sidecar the flags name.
func (c *clientFlags) client() (*client.Client, error) {
	return client.New(c.addr, client.WithToken(c.token), client.WithHTTPClient(&http.Client{Timeout: 30 * time.Second}))
}

// cliError words a sidecar's refusal as the CLI always has: "503 Service
// Unavailable: <its message>".
func cliError(err error) error {
	var e *client.Error
	if errors.As(err, &e) {
		return fmt.Errorf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
	}
	return err
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// kvTxn posts a transaction read from a file, or from stdin when the file
// is "-" or not given: the JSON body of POST /v1/txn,
// {"ops":[{"op":"put","key":K,"value_text":V}, ...]}.
func kvTxn(ctx context.Context, cl *client.Client, args []string, stdout io.Writer) error {
	var body []byte
	var err error
	if len(args) == 0 || args[0] == "-" {
		body, err = io.ReadAll(stdin)
	} else {
		body, err = os.ReadFile(args[0])
	}
	if err != nil {
		return fmt.Errorf("read the transaction: %w", err)
	}
	var req struct {
		Ops []struct {
			Op        string  `json:"op"`
			Key       string  `json:"key"`
			Value     []byte  `json:"value"`
			ValueText *string `json:"value_text"`
			Context   string  `json:"context"`
		} `json:"ops"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return fmt.Errorf("the transaction is not the JSON of POST /v1/txn ({\"ops\":[{\"op\":\"put\",\"key\":K,\"value_text\":V}, ...]}): %w", err)
	}
	ops := make([]client.TxnOp, len(req.Ops))
	for i, op := range req.Ops {
		ops[i] = client.TxnOp{Key: op.Key, Value: op.Value, Context: op.Context}
		switch op.Op {
		case "put":
			if op.ValueText != nil {
				ops[i].Value = []byte(*op.ValueText)
			}
		case "del", "delete":
			ops[i].Delete = true
		default:
			return fmt.Errorf("op %d: \"op\" is %q; want \"put\" or \"del\"", i, op.Op)
		}
	}
	res, err := cl.Txn(ctx, ops)
	if err != nil {
		return cliError(err)
	}
	return writeJSONLine(stdout, res)
}

// printRead shows a read: each value on w, one per line, and the context
// on meta, so that w holds only the values.
func printRead(w, meta io.Writer, r client.Item) {
	for _, v := range r.Values {
		fmt.Fprintf(w, "%s\n", v)
	}
	fmt.Fprintf(meta, "context %s", r.Context)
	if r.Conflict {
		fmt.Fprint(meta, " (conflict: more than one value)")
	}
	fmt.Fprintln(meta)
}

func cmdConflicts(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("conflicts", "list [--status S] [--prefix P] [--limit N] | resolve ID VALUE", stderr)
	var c clientFlags
	c.register(fs)
	status := fs.String("status", "", "list only this status: logged, open or resolved")
	prefix := fs.String("prefix", "", "list only the entries of keys with this prefix")
	limit := fs.Int("limit", 0, "list at most N entries (0: all of them, page by page)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := c.finish(); err != nil {
		return err
	}
	if len(rest) == 0 {
		return usagef("want list or resolve")
	}
	if *limit < 0 {
		return usagef("--limit %d: want 0 (all) or more", *limit)
	}
	switch rest[0] {
	case "list":
		if len(rest) != 1 {
			return usagef("conflicts list takes no arguments, got %q", strings.Join(rest[1:], " "))
		}
		cl, err := c.client()
		if err != nil {
			return err
		}
		// Each version carries its value as base64 ("value") and, when it
		// is printable UTF-8, as text ("value_text").
		all, err := cl.Conflicts(ctx, client.ConflictFilter{Status: *status, Prefix: *prefix, Limit: *limit})
		if err != nil {
			return cliError(err)
		}
		if all == nil {
			all = []client.Conflict{}
		}
		body, err := json.Marshal(all)
		if err != nil {
			return err
		}
		return indent(stdout, body)
	case "resolve":
		if len(rest) != 3 {
			return usagef("conflicts resolve ID VALUE")
		}
		cl, err := c.client()
		if err != nil {
			return err
		}
		item, err := cl.Resolve(ctx, rest[1], []byte(rest[2]), false)
		if err != nil {
			return cliError(err)
		}
		body, err := json.Marshal(item)
		if err != nil {
			return err
		}
		return indent(stdout, body)
	}
	return usagef("unknown conflicts operation %q: want list or resolve", rest[0])
}

func indent(w io.Writer, body []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, body, "", "  "); err != nil {
		_, err = w.Write(body)
		return err
	}
	buf.WriteByte('\n')
	_, err := buf.WriteTo(w)
	return err
}

// cmdInspect decodes events. With file arguments it decodes each file; with
// none it decodes stdin, which is how `nats --translate 'replicator
// inspect'` calls it (one message body on stdin per call).
func cmdInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("inspect", "[FILE...]  (reads stdin when no file is given)", stderr)
	compact := fs.Bool("compact", false, "one line of JSON per event")
	if err := parse(fs, args); err != nil {
		return err
	}
	var inputs [][]byte
	if fs.NArg() == 0 {
		b, err := io.ReadAll(bufio.NewReader(os.Stdin))
		if err != nil {
			return err
		}
		inputs = append(inputs, b)
	}
	for _, f := range fs.Args() {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		inputs = append(inputs, b)
	}
	for _, b := range inputs {
		evs, err := event.DecodeMessage(b, event.DefaultLimits())
		if err != nil {
			return fmt.Errorf("not a replicator event: %w", err)
		}
		var v any = evs[0]
		if evs[0].TxnOps > 0 {
			v = struct {
				Version int            `json:"version"`
				Txn     []*event.Event `json:"txn"`
			}{event.TxnVersion, evs}
		}
		j, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if *compact {
			fmt.Fprintf(stdout, "%s\n", j)
			continue
		}
		if err := indent(stdout, j); err != nil {
			return err
		}
	}
	return nil
}
