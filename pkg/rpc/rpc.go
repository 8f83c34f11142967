// Package rpc is the one request/reply helper of the sidecars' msgpack
// protocols over core NATS: gap repair (repl.repair.<dc>), anti-entropy
// (repl.ae.<dc>), home-DC writes (repl.home.<dc>) and the snapshots of
// `replicator join` (repl.snap.<dc>). It is internal to the sidecar; the
// protocols themselves are the wire contract (docs/DESIGN.md, "Wire
// protocols and their versions").
//
// Versions. Every request is a msgpack map whose key "v" holds the
// protocol version the sender speaks, Version. A request without "v" (from
// a sidecar that predates the field, as repair and snapshot requests did)
// is version 1; a server refuses any other version with a clear error, as
// it refuses a malformed request. Every reply carries the header
// Repl-Version (HeaderVersion); a reply without it (from an older sidecar)
// is version 1, and a client refuses a reply of any other version. Older
// sidecars ignore the "v" key and the header, so old and new DCs
// interoperate.
//
// Every request and reply is checked by pkg/msgpackcheck before the
// msgpack decoder sees it: a hostile or corrupt payload is an error, never
// a panic or a huge allocation.
//
//	var p = rpc.Protocol{Name: "repair", ErrorHeader: "Repl-Repair-Error"}
//	err := p.Call(ctx, nc, subject, req, &reply)          // client
//	err := p.Decode(m.Data, &req, &req.V)                 // server
//	p.Respond(m, body, err)
package rpc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/pkg/msgpackcheck"
)

// Version is the version of every request/reply protocol this sidecar
// speaks.
const Version = 1

// HeaderVersion is the reply header that carries the reply's version.
const HeaderVersion = "Repl-Version"

// The ways a request or reply is refused: Decode's and ReadReply's
// errors wrap one of them, and say why in their text.
var (
	ErrBadRequest = errors.New("rpc: bad request")
	ErrBadReply   = errors.New("rpc: bad reply")
)

// badError is a refused request or reply: its text is the cause's, and it
// is both kind (ErrBadRequest or ErrBadReply) and the cause.
type badError struct{ kind, cause error }

func (e badError) Error() string   { return e.cause.Error() }
func (e badError) Unwrap() []error { return []error{e.kind, e.cause} }

// Protocol is one of the request/reply protocols.
type Protocol struct {
	// Name names the protocol in errors.
	Name string
	// ErrorHeader is the reply header a server's refusal travels in, the
	// reply then holding no body. Empty for a protocol whose replies say
	// so in their body (home-DC writes).
	ErrorHeader string
}

// Refused is a server's refusal, read from the protocol's error header.
type Refused struct {
	Msg string
}

func (e *Refused) Error() string { return e.Msg }

// missing marks a request's version field before decoding: still there
// after it, the request had no "v" key.
const missing = math.MinInt

// Decode checks a request (msgpackcheck) and decodes it into req; v points
// at req's version field, the one tagged "v". A request without that key is
// version 1. A request that is malformed, or of another version, is an
// error wrapping ErrBadRequest that says why.
func (p Protocol) Decode(data []byte, req any, v *int) error {
	*v = missing
	if err := msgpackcheck.Unmarshal(data, req); err != nil {
		return badError{ErrBadRequest, fmt.Errorf("not a msgpack %s request: %w", p.Name, err)}
	}
	if *v == missing {
		*v = Version
	}
	if err := check(*v); err != nil {
		return badError{ErrBadRequest, err}
	}
	return nil
}

// check refuses a version other than Version.
func check(v int) error {
	switch {
	case v == Version:
		return nil
	case v > Version:
		return fmt.Errorf("protocol version %d; this DC speaks %d: upgrade this DC's sidecar", v, Version)
	}
	return fmt.Errorf("protocol version %d; this DC speaks %d", v, Version)
}

// Respond answers request m with body, or, when err is not nil, with err's
// text in the protocol's error header and no body. Every reply carries
// HeaderVersion. A request without a reply subject is not answered.
func (p Protocol) Respond(m *nats.Msg, body []byte, err error) error {
	if m.Reply == "" {
		return nil
	}
	out := nats.NewMsg(m.Reply)
	out.Header.Set(HeaderVersion, strconv.Itoa(Version))
	if err != nil && p.ErrorHeader != "" {
		out.Header.Set(p.ErrorHeader, HeaderText(err.Error()))
	} else {
		out.Data = body
	}
	return m.RespondMsg(out)
}

// Call sends req, msgpack-encoded, on subject and decodes the reply into
// out (nothing when out is nil), waiting until ctx ends. It returns the
// NATS error as it is when no reply came (nats.ErrNoResponders, a
// timeout), a *Refused for a server's refusal, and an error wrapping
// ErrBadReply for a reply of another version or one that is not msgpack of
// out's shape.
func (p Protocol) Call(ctx context.Context, nc *nats.Conn, subject string, req, out any) error {
	data, err := msgpack.Marshal(req)
	if err != nil {
		return fmt.Errorf("%s: encode request: %w", p.Name, err)
	}
	m, err := nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return err
	}
	return p.ReadReply(m, out)
}

// ReadReply checks a reply (its version, the error header, msgpackcheck)
// and decodes its body into out (nothing when out is nil); see Call.
func (p Protocol) ReadReply(m *nats.Msg, out any) error {
	if h := m.Header.Get(HeaderVersion); h != "" {
		v, err := strconv.Atoi(h)
		if err != nil {
			return badError{ErrBadReply, fmt.Errorf("%s reply: header %s %q is not a version", p.Name, HeaderVersion, h)}
		}
		if err := check(v); err != nil {
			return badError{ErrBadReply, fmt.Errorf("%s reply of %w", p.Name, err)}
		}
	}
	if p.ErrorHeader != "" {
		if e := m.Header.Get(p.ErrorHeader); e != "" {
			return &Refused{Msg: e}
		}
	}
	if out == nil {
		return nil
	}
	if err := msgpackcheck.Unmarshal(m.Data, out); err != nil {
		return badError{ErrBadReply, err}
	}
	return nil
}

// HeaderText makes s fit a NATS header value: control characters become
// spaces (a line break would end the header), and past 1 KiB it is cut on
// a rune boundary and ends with an ellipsis.
func HeaderText(s string) string {
	s = strings.Map(func(c rune) rune {
		if c == '\r' || c == '\n' || c < 0x20 && c != '\t' {
			return ' '
		}
		return c
	}, s)
	const limit = 1024
	if len(s) <= limit {
		return s
	}
	n := limit
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
