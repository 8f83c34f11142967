package home

import (
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/dvv"
	"github.com/replicatorhq/replicator/pkg/event"
	"github.com/replicatorhq/replicator/pkg/rpc"
	"github.com/replicatorhq/replicator/pkg/vclock"
	"github.com/replicatorhq/replicator/resolve"
)

// Protocol is the version of the request format (rpc.Version); a DC
// refuses others.
const Protocol = rpc.Version

// homeProtocol is home-DC writes' request/reply; a refusal is a reply
// whose status says so, not a header.
var homeProtocol = rpc.Protocol{Name: "home"}

// The request operations.
const (
	opWrite = "write"
	opProbe = "probe"
	// opTell carries a view from one shard of a DC to the others (Home
	// and Epoch); it is never sent to another DC.
	opTell = "tell"
)

// maxReplyValueBytes bounds the sibling values a write reply carries; past
// it the reply lists the siblings without their values (the written one
// the sender restores from its request).
const maxReplyValueBytes = 256 << 10

// request is a forwarded write or an epoch probe, as msgpack.
type request struct {
	V  int    `msgpack:"v"`
	Op string `msgpack:"op"`
	// From is the sending DC.
	From string `msgpack:"from"`
	// Prefix and DCs are the sender's rule; the receiver refuses a write
	// when its own rule for the key differs (configs disagree).
	Prefix string   `msgpack:"prefix"`
	DCs    []string `msgpack:"dcs,omitempty"`
	// Epoch is the epoch under which the sender proposes the receiver as
	// the rule's home.
	Epoch uint64 `msgpack:"epoch"`
	// Home is the view's home in a tell.
	Home    string `msgpack:"home,omitempty"`
	Key     string `msgpack:"key,omitempty"`
	Value   []byte `msgpack:"value,omitempty"`
	Delete  bool   `msgpack:"delete,omitempty"`
	Resolve bool   `msgpack:"resolve,omitempty"`
	// TTL is the write's time to live (changelog.WriteOp.TTL); 0 for none.
	TTL time.Duration `msgpack:"ttl,omitempty"`
	// Blind marks a write without a client context; an empty Context
	// without it is the explicit "I read it absent" context.
	Blind   bool      `msgpack:"blind,omitempty"`
	Context vclock.VV `msgpack:"context,omitempty"`
	// Typed is a typed operation (incr, patch, add, remove) for the home
	// to apply to its state of the key.
	Typed *resolve.Op `msgpack:"typed,omitempty"`
}

// reply answers a request. Status is an HTTP status: 200, or the error the
// sender surfaces (400 bad input, 409 fenced or configs disagree, 503 the
// home cannot write now, 500 otherwise) with Error saying why. Epoch and
// Home are the receiver's view of the rule after the request.
type reply struct {
	Status int    `msgpack:"status"`
	Error  string `msgpack:"error,omitempty"`
	Epoch  uint64 `msgpack:"epoch"`
	Home   string `msgpack:"home"`
	// The write's result: the key's state at the home after it, and the
	// event it made (without its value).
	Clock     vclock.VV     `msgpack:"clock,omitempty"`
	Siblings  []wireSibling `msgpack:"siblings,omitempty"`
	Partition uint32        `msgpack:"partition,omitempty"`
	Seq       uint64        `msgpack:"seq,omitempty"`
	EvContext vclock.VV     `msgpack:"ev_context,omitempty"`
	HLC       uint64        `msgpack:"hlc,omitempty"`
	Op        uint8         `msgpack:"op,omitempty"`
	// Unserved says that the shard of a sharded DC that took the request
	// found no answer from the shard owning the key's partition: the
	// sender treats that DC as not answering (failover may move on), and
	// MaybeApplied as having timed out (the write may still be applied).
	Unserved     bool `msgpack:"unserved,omitempty"`
	MaybeApplied bool `msgpack:"maybe_applied,omitempty"`
}

type wireSibling struct {
	_       struct{} `msgpack:",as_array"`
	DC      string
	N       uint64
	Deleted bool
	HLC     uint64
	Value   []byte
	// NoValue marks a value left out to keep the reply small.
	NoValue bool
}

func encode(v any) ([]byte, error) {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("home: encode: %w", err)
	}
	return b, nil
}

// resultReply turns a local write's result into its reply.
func resultReply(res changelog.WriteResult, cur changelog.HomeEpoch) reply {
	rep := reply{Status: 200, Epoch: cur.Epoch, Home: cur.Home, Clock: res.State.Clock}
	total := 0
	for _, sb := range res.State.Siblings {
		total += len(sb.Value)
	}
	for _, sb := range res.State.Siblings {
		ws := wireSibling{DC: sb.Dot.DC, N: sb.Dot.N, Deleted: sb.Deleted, HLC: sb.HLC, Value: sb.Value}
		if total > maxReplyValueBytes && !sb.Deleted {
			ws.Value, ws.NoValue = nil, true
		}
		rep.Siblings = append(rep.Siblings, ws)
	}
	if ev := res.Event; ev != nil {
		rep.Partition, rep.Seq, rep.EvContext, rep.HLC, rep.Op = ev.Partition, ev.Seq, ev.Context, ev.HLC, uint8(ev.Op)
	}
	return rep
}

// result rebuilds, at the sender, the WriteResult of a write that home
// executed: the same shape a local write returns.
func (rep reply) result(home string, op changelog.WriteOp) changelog.WriteResult {
	dot := vclock.Dot{DC: home, N: rep.Seq}
	st := dvv.State{Clock: rep.Clock, Siblings: make([]dvv.Sibling, 0, len(rep.Siblings))}
	if st.Clock == nil {
		st.Clock = vclock.VV{}
	}
	for _, ws := range rep.Siblings {
		sb := dvv.Sibling{Dot: vclock.Dot{DC: ws.DC, N: ws.N}, Version: dvv.Version{Value: ws.Value, Deleted: ws.Deleted, HLC: ws.HLC}}
		if !sb.Deleted && sb.Value == nil {
			sb.Value = []byte{}
		}
		if ws.NoValue && sb.Dot == dot {
			sb.Value = op.Value
		}
		st.Siblings = append(st.Siblings, sb)
	}
	ev := &event.Event{
		Version: event.SchemaVersion, Origin: home, Partition: rep.Partition, Seq: rep.Seq,
		Key: op.Key, Op: event.Op(rep.Op), Value: op.Value, Dot: dot, Context: rep.EvContext,
		HLC: rep.HLC, Path: []string{home}, Expires: changelog.ExpiryAt(rep.HLC, op.TTL),
	}
	return changelog.WriteResult{State: st, Event: ev}
}
