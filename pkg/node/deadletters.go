package node

import (
	"context"
	"time"

	"github.com/replicatorhq/replicator/pkg/httpapi"
)

// deadLetterTimeout bounds one GET /v1/deadletters read from JetStream.
const deadLetterTimeout = 10 * time.Second

// deadLetters reads the DC's dead-letter stream for GET /v1/deadletters.
func (n *Node) deadLetters(ctx context.Context, limit int) (httpapi.DeadLetters, error) {
	if n.repl == nil {
		return httpapi.DeadLetters{}, httpapi.ErrNoDeadLetters
	}
	ctx, cancel := context.WithTimeout(ctx, deadLetterTimeout)
	defer cancel()
	ds, total, err := n.repl.DeadLetters(ctx, limit)
	if err != nil {
		return httpapi.DeadLetters{}, err
	}
	out := httpapi.DeadLetters{DeadLetters: make([]httpapi.DeadLetter, len(ds)), Total: total}
	for i, d := range ds {
		out.DeadLetters[i] = httpapi.DeadLetter(d)
	}
	return out, nil
}
