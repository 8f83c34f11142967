package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replicatorhq/replicator/bridge/core"
	"github.com/replicatorhq/replicator/pkg/names"
	"github.com/replicatorhq/replicator/pkg/rpc"
)

// HeaderRepairError carries a repair server's error; its reply then holds
// no events.
const HeaderRepairError = "Repl-Repair-Error"

// repairProtocol is gap repair's request/reply.
var repairProtocol = rpc.Protocol{Name: "repair", ErrorHeader: HeaderRepairError}

// origins carries the core's repair requests to the origins' repair
// servers over core NATS (repl.repair.<origin>). It is stateless; any
// goroutine may use it.
type origins struct{ *env }

var _ core.Source = origins{}

// Fetch asks origin for req's events and returns the encoded events of its
// reply; the core checks them (core.CheckRepairReply).
func (o origins) Fetch(ctx context.Context, origin string, req core.RepairRequest) ([][]byte, error) {
	req.V = rpc.Version
	rctx, cancel := context.WithTimeout(ctx, o.opts.RepairTimeout)
	defer cancel()
	var raw [][]byte
	var refused *rpc.Refused
	switch err := repairProtocol.Call(rctx, o.nc, names.RepairSubject(origin), req, &raw); {
	case errors.As(err, &refused):
		return nil, fmt.Errorf("%s refused repair of partition %d [%d, %d]: %s", origin, req.Partition, req.From, req.To, refused.Msg)
	case errors.Is(err, rpc.ErrBadReply):
		return nil, fmt.Errorf("repair reply from %s: %w", origin, err)
	case err != nil:
		return nil, fmt.Errorf("ask %s for partition %d [%d, %d]: %w", origin, req.Partition, req.From, req.To, err)
	}
	return raw, nil
}

// repairServer answers the other DCs' repair requests for this DC's own
// events, on its own goroutine (run); it keeps no state.
type repairServer struct{ *env }

// run answers repair requests until ctx ends.
func (s repairServer) run(ctx context.Context, reqs <-chan *nats.Msg) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-reqs:
			s.answer(m)
		}
	}
}

func (s repairServer) answer(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	events, err := s.events(m.Data)
	var body []byte
	if err != nil {
		s.log.Warn("refused a repair request", "err", err)
	} else {
		body, err = msgpack.Marshal(events)
	}
	if err := repairProtocol.Respond(m, body, err); err != nil {
		s.log.Debug("repair reply failed", "err", err)
		return
	}
	s.c.repairsServed.Add(1)
}

func (s repairServer) events(data []byte) ([][]byte, error) {
	var req core.RepairRequest
	if err := repairProtocol.Decode(data, &req, &req.V); err != nil {
		return nil, fmt.Errorf("%w: %w", core.ErrBadRepair, err)
	}
	return core.ServeRepair(s.store, s.opts.Partitions, req)
}
