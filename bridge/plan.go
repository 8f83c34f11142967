package bridge

import "github.com/replicatorhq/replicator/bridge/core"

// Plan is one DC's place in the topology (see core.Plan).
type Plan = core.Plan

// Bypass is one upstream consumed through a heal consumer (see
// core.Bypass).
type Bypass = core.Bypass

// RepairRequest asks a DC for its own events (see core.RepairRequest).
type RepairRequest = core.RepairRequest

// Bounds of one repair reply.
const (
	MaxRepairEvents = core.MaxRepairEvents
	MaxRepairBytes  = core.MaxRepairBytes
)

// Errors of the core, kept under their bridge names.
var (
	// ErrLoop reports an event that returned to its origin or already
	// passed this DC (docs/DESIGN.md, invariant 7).
	ErrLoop = core.ErrLoop
	// ErrRejected wraps every reason a message from an upstream is
	// dead-lettered instead of applied.
	ErrRejected = core.ErrRejected
)

// NewPlan builds the plan of DC self (see core.NewPlan).
func NewPlan(topology, self string, dcs []string, hub string) (Plan, error) {
	return core.NewPlan(topology, self, dcs, hub)
}
