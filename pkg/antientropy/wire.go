package antientropy

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/changelog"
	"github.com/replicatorhq/replicator/pkg/rpc"
)

// HeaderError carries a server's error; its reply then holds nothing else.
const HeaderError = "Repl-AE-Error"

// Protocol is the version of the request format (rpc.Version); a server
// refuses others.
const Protocol = rpc.Version

// aeProtocol is anti-entropy's request/reply.
var aeProtocol = rpc.Protocol{Name: "anti-entropy", ErrorHeader: HeaderError}

// Bounds of one exchange. A reply stays under MaxReplyBytes and under the
// connection's max payload, except one key state larger than
// MaxReplyBytes, which goes alone; a state larger than the max payload
// cannot travel and is reported as skipped.
const (
	MaxReplyBytes      = 512 << 10
	MaxRequestKeyBytes = 256 << 10
	MaxRequestKeys     = 1024
	treesPerRequest    = 32                            // 32 trees of 8 KiB
	treeBytes          = changelog.TreeBuckets*32 + 64 // one tree on the wire
)

// The request operations.
const (
	opTrees   = "trees"
	opBuckets = "buckets"
	opStates  = "states"
	opDigest  = "digest"
)

// request is one anti-entropy request, as msgpack.
type request struct {
	V  int    `msgpack:"v"`
	Op string `msgpack:"op"`
	// Partitions: trees of these partitions.
	Partitions []uint32 `msgpack:"partitions,omitempty"`
	// Partition, Buckets: the keys of these buckets of the partition,
	// ordered by bucket then key, after (AfterBucket, AfterKey) when After
	// is set.
	Partition   uint32 `msgpack:"partition,omitempty"`
	Buckets     []int  `msgpack:"buckets,omitempty"`
	After       bool   `msgpack:"after,omitempty"`
	AfterBucket int    `msgpack:"after_bucket,omitempty"`
	AfterKey    string `msgpack:"after_key,omitempty"`
	// Keys: the states of these keys.
	Keys []string `msgpack:"keys,omitempty"`
}

type wireTree struct {
	Partition uint32 `msgpack:"p"`
	Keys      int    `msgpack:"keys"`
	// Hashes is the 256 bucket hashes, 32 bytes each, in bucket order.
	Hashes []byte `msgpack:"hashes"`
}

// treesReply holds the trees of a prefix of the partitions asked for, as
// many as fit the server's bounds.
type treesReply struct {
	Trees []wireTree `msgpack:"trees"`
}

type wireKeyHash struct {
	Key    string `msgpack:"k"`
	Bucket int    `msgpack:"b"`
	Hash   []byte `msgpack:"h"`
}

type bucketsReply struct {
	Keys []wireKeyHash `msgpack:"keys"`
	// More says the reply was cut short; ask again after its last key.
	More bool `msgpack:"more"`
}

type statesReply struct {
	// Knowledge is the server's, read before the states.
	Knowledge changelog.Knowledge `msgpack:"knowledge"`
	// States are the stored states (changelog.EncodeState) of the keys the
	// server holds; the keys it does not hold are in Absent.
	States map[string][]byte `msgpack:"states"`
	Absent []string          `msgpack:"absent,omitempty"`
	// More lists keys left out to bound the reply; ask again.
	More []string `msgpack:"more,omitempty"`
	// TooBig lists keys whose state alone exceeds the max payload.
	TooBig []string `msgpack:"too_big,omitempty"`
}

// digestReply is the server's whole-state digest (GET /v1/digest).
type digestReply struct {
	Digest string `msgpack:"digest"`
	Keys   int    `msgpack:"keys"`
}

var errBadRequest = errors.New("antientropy: bad request")

// answer serves one request.
func (w *Worker) answer(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	data, err := w.reply(m.Data)
	if err == nil && len(data) > w.maxPayload() {
		err = fmt.Errorf("the reply is %d bytes, over this connection's max payload of %d", len(data), w.maxPayload())
	}
	if err != nil {
		w.log.Warn("refused an anti-entropy request", "err", err)
	}
	if err := aeProtocol.Respond(m, data, err); err != nil {
		w.log.Debug("anti-entropy reply failed", "err", err)
	}
}

func (w *Worker) reply(data []byte) ([]byte, error) {
	var req request
	if err := aeProtocol.Decode(data, &req, &req.V); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadRequest, err)
	}
	var out any
	var err error
	switch req.Op {
	case opTrees:
		out, err = w.serveTrees(req)
	case opBuckets:
		out, err = w.serveBuckets(req)
	case opStates:
		out, err = w.serveStates(req)
	case opDigest:
		out, err = w.serveDigest()
	default:
		return nil, fmt.Errorf("%w: op %q: want %s, %s, %s or %s", errBadRequest, req.Op, opTrees, opBuckets, opStates, opDigest)
	}
	if err != nil {
		return nil, err
	}
	return msgpack.Marshal(out)
}

// serveDigest computes the digest of the whole state: one scan of the
// keys, as GET /v1/digest does.
func (w *Worker) serveDigest() (digestReply, error) {
	d, err := w.opts.Store.Digest()
	if err != nil {
		return digestReply{}, err
	}
	return digestReply{Digest: d.Hex(), Keys: d.Keys}, nil
}

func (w *Worker) serveTrees(req request) (treesReply, error) {
	if len(req.Partitions) == 0 || len(req.Partitions) > treesPerRequest {
		return treesReply{}, fmt.Errorf("%w: %d partitions: want 1 to %d", errBadRequest, len(req.Partitions), treesPerRequest)
	}
	for _, p := range req.Partitions {
		if int(p) >= w.opts.Partitions {
			return treesReply{}, fmt.Errorf("%w: partition %d of %d", errBadRequest, p, w.opts.Partitions)
		}
	}
	trees, err := w.opts.Store.Trees()
	if err != nil {
		return treesReply{}, err
	}
	// As many trees as fit this side's bounds; the client asks again for
	// the rest.
	var out treesReply
	for _, p := range req.Partitions[:min(len(req.Partitions), w.treesPerRequest())] {
		t := &trees[p]
		h := make([]byte, 0, changelog.TreeBuckets*32)
		for i := range t.Buckets {
			h = append(h, t.Buckets[i][:]...)
		}
		out.Trees = append(out.Trees, wireTree{Partition: p, Keys: t.Keys, Hashes: h})
	}
	return out, nil
}

func (w *Worker) serveBuckets(req request) (bucketsReply, error) {
	if int(req.Partition) >= w.opts.Partitions || len(req.Buckets) == 0 || len(req.Buckets) > changelog.TreeBuckets {
		return bucketsReply{}, fmt.Errorf("%w: partition %d, %d buckets", errBadRequest, req.Partition, len(req.Buckets))
	}
	khs, err := w.opts.Store.Buckets(req.Partition, req.Buckets)
	if err != nil {
		return bucketsReply{}, err
	}
	var out bucketsReply
	size := 0
	for _, kh := range khs {
		if req.After && (kh.Bucket < req.AfterBucket || kh.Bucket == req.AfterBucket && kh.Key <= req.AfterKey) {
			continue
		}
		size += len(kh.Key) + 48
		if size > w.replyLimit() && len(out.Keys) > 0 {
			out.More = true
			break
		}
		out.Keys = append(out.Keys, wireKeyHash{Key: kh.Key, Bucket: kh.Bucket, Hash: kh.Hash[:]})
	}
	return out, nil
}

func (w *Worker) serveStates(req request) (statesReply, error) {
	if len(req.Keys) == 0 || len(req.Keys) > MaxRequestKeys {
		return statesReply{}, fmt.Errorf("%w: %d keys: want 1 to %d", errBadRequest, len(req.Keys), MaxRequestKeys)
	}
	k, states, err := w.opts.Store.Export(req.Keys)
	if err != nil {
		return statesReply{}, err
	}
	out := statesReply{Knowledge: k, States: map[string][]byte{}}
	// The knowledge travels in every reply; leave it room.
	size := 4096 + 64*len(k.Lost)
	for _, row := range k.Applied {
		size += 16 + 9*len(row)
	}
	payload := w.maxPayload()
	for i, key := range req.Keys {
		b, ok := states[key]
		if !ok {
			out.Absent = append(out.Absent, key)
			continue
		}
		n := len(key) + len(b) + 16
		if size+n > payload && len(out.States) == 0 {
			out.TooBig = append(out.TooBig, key) // cannot travel even alone
			continue
		}
		if size+n > payload || size+n > w.maxReply && len(out.States) > 0 {
			out.More = req.Keys[i:]
			break
		}
		size += n
		out.States[key] = b
	}
	return out, nil
}

// replyLimit is the size a reply aims to stay under.
func (w *Worker) replyLimit() int { return min(w.maxReply, w.maxPayload()) }

// treesPerRequest is how many trees one reply carries.
func (w *Worker) treesPerRequest() int {
	return max(1, min(treesPerRequest, w.replyLimit()/treeBytes))
}

// maxPayload is the largest message body the connection can send, less
// room for headers and framing.
func (w *Worker) maxPayload() int {
	if mp := int(w.opts.NC.MaxPayload()); mp > 0 {
		return mp - 4096 // headers and framing
	}
	return 1 << 20
}
