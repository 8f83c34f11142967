package core

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/names"
)

// Headers the stream's messages carry besides the event headers of
// package event.
const (
	// HeaderSeqHi is the publishing DC's highest own sequence number in the
	// message's partition at publish time, so that a DC restored from an
	// old backup can continue above it.
	HeaderSeqHi = "Repl-Seq-Hi"
	// HeaderSeqHis is on a transaction's message: the publishing DC's
	// highest own sequence number in every partition at publish time, as
	// <partition>:<seq> pairs separated by commas.
	HeaderSeqHis = "Repl-Seq-His"
)

// Subject returns the subject of dc's events in partition p, repl.<dc>.<p>.
func Subject(dc string, p uint32) string { return names.Subject(dc, p) }

// TxnSubject returns the subject of dc's transactions, repl.<dc>.txn: a
// transaction spans partitions, so its one message goes on a subject of
// its own (see event.EncodeTxn).
func TxnSubject(dc string) string { return names.TxnSubject(dc) }

// Publisher builds the messages of one DC's outbox entries for its
// stream, keeping the highest own sequence of each partition sent so far
// (Repl-Seq-Hi). Feed it the entries in outbox order.
type Publisher struct {
	self  string
	seqHi []uint64
}

// NewPublisher returns the Publisher of DC self with the given partition
// count.
func NewPublisher(self string, partitions int) *Publisher {
	return &Publisher{self: self, seqHi: make([]uint64, partitions)}
}

// Resume sets partition p's highest own sequence sent, as the stream's
// last message names it (see LastOwnSeq) at start.
func (pb *Publisher) Resume(p uint32, hi uint64) {
	if int(p) < len(pb.seqHi) {
		pb.seqHi[p] = hi
	}
}

// Message builds the message of an outbox entry: the event's headers,
// Repl-Seq-Hi when needed, and the encoded event. Repl-Seq-Hi is the
// highest own sequence of the partition sent to the stream so far, this
// message included, rather than the store's last issued sequence: after a
// restore the DC continues right above what the stream holds, so a
// sequence issued but never published leaves no gap that no DC could ever
// repair. An own event that is that highest sequence leaves the header
// out, since its Nats-Msg-Id says the same (see LastOwnSeq): it is 20-odd
// bytes of every own event, stored and delivered to every consumer. A
// forwarded event, or an own one below the high-water mark, carries it.
func (pb *Publisher) Message(e changelog.OutboxEntry) Msg {
	if e.Txn != nil {
		return pb.txnMessage(e)
	}
	ev := e.Event
	p := ev.Partition
	h := event.ToHeaders(ev)
	if int(p) < len(pb.seqHi) {
		own := ev.Origin == pb.self
		if own && ev.Seq > pb.seqHi[p] {
			pb.seqHi[p] = ev.Seq
		}
		if pb.seqHi[p] > 0 && !(own && ev.Seq == pb.seqHi[p]) {
			h[HeaderSeqHi] = []string{strconv.FormatUint(pb.seqHi[p], 10)}
		}
	}
	return Msg{Subject: Subject(pb.self, p), Header: h, Data: e.Data}
}

// txnMessage builds the message of a transaction's outbox entry, on this
// DC's transaction subject. Its Repl-Seq-His header lists the highest own
// sequence sent so far of every partition, this transaction's ops
// included: the last message on the transaction subject then tells a DC
// restored from an old copy how far each partition's sequence went in
// transactions, however many single events followed on other subjects.
func (pb *Publisher) txnMessage(e changelog.OutboxEntry) Msg {
	h := event.TxnHeaders(e.Txn)
	for _, ev := range e.Txn {
		if p := ev.Partition; ev.Origin == pb.self && int(p) < len(pb.seqHi) && ev.Seq > pb.seqHi[p] {
			pb.seqHi[p] = ev.Seq
		}
	}
	var b strings.Builder
	for p, hi := range pb.seqHi {
		if hi == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(p))
		b.WriteByte(':')
		b.WriteString(strconv.FormatUint(hi, 10))
	}
	if b.Len() > 0 {
		h[HeaderSeqHis] = []string{b.String()}
	}
	return Msg{Subject: TxnSubject(pb.self), Header: h, Data: e.Data}
}

// header returns h's first value for key, or "".
func header(h map[string][]string, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// LastOwnSeq returns the highest own sequence number the headers of a
// message on self's partition p subject name: its Repl-Seq-Hi, and its own
// sequence when self is the origin.
func LastOwnSeq(self string, p uint32, h map[string][]string) (uint64, error) {
	var hi uint64
	if v := header(h, HeaderSeqHi); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n >= event.MaxCounter {
			return 0, fmt.Errorf("%s %q is not a sequence number", HeaderSeqHi, v)
		}
		hi = n
	}
	if id := header(h, event.HeaderMsgID); id != "" {
		origin, mp, seq, err := event.ParseMsgID(id)
		if err != nil {
			return 0, err
		}
		if origin == self && mp == p {
			hi = max(hi, seq)
		}
	}
	return hi, nil
}

// ParseSeqHis parses Repl-Seq-His into his, keeping the higher of each.
func ParseSeqHis(v string, his []uint64) error {
	for part := range strings.SplitSeq(v, ",") {
		ps, ns, ok := strings.Cut(part, ":")
		p, err1 := strconv.ParseUint(ps, 10, 32)
		n, err2 := strconv.ParseUint(ns, 10, 64)
		if !ok || err1 != nil || err2 != nil || int(p) >= len(his) || n >= event.MaxCounter {
			return fmt.Errorf("%s entry %q: want <partition below %d>:<sequence>", HeaderSeqHis, part, len(his))
		}
		his[p] = max(his[p], n)
	}
	return nil
}
