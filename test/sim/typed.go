package sim

import (
	"fmt"

	"github.com/replicatorhq/replicator/resolve"
)

// valueText is a value as the transcripts show it: a counter's, fields'
// or set's state readable (resolve.Readable), anything else quoted.
func valueText(v []byte) string {
	if r, ok := resolve.Readable(v); ok {
		return string(r)
	}
	return fmt.Sprintf("%q", v)
}
