package bridge

// Edge is one replication link of a topology: DC consumes Upstream's
// stream.
type Edge struct {
	Upstream string `json:"upstream"`
	DC       string `json:"dc"`
}

// Edges returns every link of the topology, the union of each DC's plan
// (NewPlan), in dcs order and then upstream order. It fails where NewPlan
// does.
func Edges(topology string, dcs []string, hub string) ([]Edge, error) {
	var out []Edge
	for _, dc := range dcs {
		p, err := NewPlan(topology, dc, dcs, hub)
		if err != nil {
			return nil, err
		}
		for _, up := range p.Upstreams {
			out = append(out, Edge{Upstream: up, DC: dc})
		}
	}
	return out, nil
}
