package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/replicatorhq/replicator/bridge"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/vclock"
)

// overheadSamples is how many stored messages of each DC's stream are read
// back to measure the per-event overhead.
const overheadSamples = 64

// measureWire reads every DC's event stream: the bytes and messages it
// stores per write, and, from a sample of messages read back, the bytes an
// event carries beyond its key and value.
func measureWire(ctx context.Context, url string, dcs []string, o Options, res *Result) error {
	nc, js, err := connectJS(url, "replicator-bench-wire")
	if err != nil {
		return err
	}
	defer nc.Close()
	var stored, msgs uint64
	var headers, payload, payloadKey, sampled int
	byHeader := map[string]int{}
	for _, dc := range dcs {
		s, err := js.Stream(ctx, names.Stream(dc))
		if err != nil {
			return fmt.Errorf("bench: stream of %s: %w", dc, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return fmt.Errorf("bench: stream info of %s: %w", dc, err)
		}
		st := info.State
		stored += st.Bytes
		msgs += st.Msgs
		if st.Msgs == 0 {
			continue
		}
		step := max(st.Msgs/overheadSamples, 1)
		for seq := st.FirstSeq; seq <= st.LastSeq; seq += step {
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				return fmt.Errorf("bench: read message %d of %s: %w", seq, names.Stream(dc), err)
			}
			// A transaction's message carries its ops: its overhead is
			// shared by them, and counted per op.
			evs, err := event.DecodeMessage(m.Data, event.Limits{})
			if err != nil {
				return fmt.Errorf("bench: decode message %d of %s: %w", seq, names.Stream(dc), err)
			}
			headers += addHeaderBytes(byHeader, m.Header)
			payload += len(m.Data)
			payloadKey += len(m.Data)
			for _, ev := range evs {
				payload -= len(ev.Key) + len(ev.Value)
				payloadKey -= len(ev.Value)
			}
			sampled += len(evs)
		}
	}
	res.WireBytesPerWrite = float64(stored) / float64(o.Writes)
	if msgs > 0 {
		res.WireBytesPerEvent = float64(stored) / float64(msgs)
	}
	res.StreamMsgsPerWrite = float64(msgs) / float64(o.Writes)
	if sampled > 0 {
		res.HeaderBytesPerEvent = float64(headers) / float64(sampled)
		res.PayloadOverheadBytesPerEvent = float64(payload) / float64(sampled)
		res.OverheadBytesPerEvent = res.HeaderBytesPerEvent + res.PayloadOverheadBytesPerEvent
		res.OverheadBreakdown = map[string]float64{"payload (msgpack, without value)": float64(payloadKey) / float64(sampled)}
		for k, n := range byHeader {
			res.OverheadBreakdown[k] = float64(n) / float64(sampled)
		}
	}
	most, err := maxOverhead(dcs)
	if err != nil {
		return err
	}
	res.OverheadMaxBytesPerEvent = most
	return nil
}

// getHeaders are the headers JetStream adds to a message read back, which
// the publisher did not send.
var getHeaders = []string{"Nats-Stream", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Subject", "Nats-Last-Sequence", "Nats-Num-Pending"}

// headerBytes is the size of h's NATS header block as a publisher sends
// it: "NATS/1.0\r\n", a "Name: value\r\n" line per value, and "\r\n".
func headerBytes(h nats.Header) int { return addHeaderBytes(nil, h) }

// headerFraming names the header block's own framing in a breakdown.
const headerFraming = "(NATS/1.0 and end)"

// addHeaderBytes returns headerBytes(h) and, if by is not nil, adds each
// header's line, and the framing, to by.
func addHeaderBytes(by map[string]int, h nats.Header) int {
	if len(h) == 0 {
		return 0
	}
	n := len("NATS/1.0\r\n") + len("\r\n")
	if by != nil {
		by[headerFraming] += n
	}
	for k, vs := range h {
		if isGetHeader(k) {
			continue
		}
		for _, v := range vs {
			line := len(k) + len(": ") + len(v) + len("\r\n")
			n += line
			if by != nil {
				by[k] += line
			}
		}
	}
	return n
}

func isGetHeader(k string) bool {
	for _, g := range getHeaders {
		if strings.EqualFold(k, g) {
			return true
		}
	}
	return false
}

// maxOverhead is the overhead of the largest event these DCs can produce:
// a context and a path naming every DC, with counters and an HLC of
// realistic size (sequences near a billion, HLC of today).
func maxOverhead(dcs []string) (int, error) {
	const seq = 1_000_000_000
	ctx := vclock.VV{}
	for _, dc := range dcs {
		ctx[dc] = seq
	}
	ev := &event.Event{
		Version: event.SchemaVersion, Origin: dcs[0], Partition: 15, Seq: seq + 1,
		Key: "k", Op: event.OpPut, Value: []byte("v"),
		Dot: vclock.Dot{DC: dcs[0], N: seq + 1}, Context: ctx,
		HLC: 1_800_000_000_000 << 16, Path: dcs,
	}
	b, err := ev.Encode(nil)
	if err != nil {
		return 0, fmt.Errorf("bench: encode: %w", err)
	}
	h := nats.Header(event.ToHeaders(ev))
	h.Set(bridge.HeaderSeqHi, fmt.Sprint(seq+1))
	return headerBytes(h) + len(b) - len(ev.Key) - len(ev.Value), nil
}

// waitDelivered waits, until ctx ends, for every consumer of every DC's
// stream to have delivered and had acknowledged every message (no pending,
// none unacknowledged). A DC can hold every write before its links have
// taken them all, when catch-up or gap repair fetched some from the
// origin first; the links' Received counts, and so deliveries_per_write,
// are only whole once the consumers are drained.
func waitDelivered(ctx context.Context, url string, dcs []string) error {
	nc, js, err := connectJS(url, "replicator-bench-drain")
	if err != nil {
		return err
	}
	defer nc.Close()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		behind, err := undelivered(ctx, js, dcs)
		if err != nil {
			return err
		}
		if behind == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bench: consumers not drained: %s", behind)
		case <-tick.C:
		}
	}
}

// undelivered names the first consumer of the DCs' streams with messages
// pending or unacknowledged, or returns "" when there is none.
func undelivered(ctx context.Context, js jetstream.JetStream, dcs []string) (behind string, err error) {
	for _, dc := range dcs {
		s, err := js.Stream(ctx, names.Stream(dc))
		if err != nil {
			return "", fmt.Errorf("bench: stream of %s: %w", dc, err)
		}
		l := s.ListConsumers(ctx)
		// Read the list to its end: the lister's goroutine blocks until
		// every entry is taken.
		for info := range l.Info() {
			if n := info.NumPending + uint64(info.NumAckPending); n > 0 && behind == "" {
				behind = fmt.Sprintf("%s has %d messages to deliver or acknowledge", info.Name, n)
			}
		}
		if err := l.Err(); err != nil {
			return "", fmt.Errorf("bench: consumers of %s: %w", names.Stream(dc), err)
		}
		if behind != "" {
			return behind, nil
		}
	}
	return "", nil
}

// connectJS connects to the bench's NATS server as name, with JetStream.
func connectJS(url, name string) (*nats.Conn, jetstream.JetStream, error) {
	// A server carrying 32 or more DCs on a loaded machine can take longer
	// than the client's default 2 s to answer a new connection.
	nc, err := nats.Connect(url, nats.Name(name), nats.Timeout(30*time.Second))
	if err != nil {
		return nil, nil, fmt.Errorf("bench: connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("bench: jetstream: %w", err)
	}
	return nc, js, nil
}
