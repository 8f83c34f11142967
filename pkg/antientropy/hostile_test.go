package antientropy

import (
	"errors"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// TestHostileRequestRefused: a 12-byte request whose "buckets" array
// declares 2^32-1 elements. Decoded by msgpack directly it made the
// decoder allocate the whole slice up front and the sidecar died with a
// fatal out-of-memory (found in review); it is now refused as a bad
// request before the decoder sees it.
func TestHostileRequestRefused(t *testing.T) {
	k, _ := msgpack.Marshal("buckets")
	b := append(append([]byte{0x81}, k...), 0xdd, 0xff, 0xff, 0xff, 0xff)
	w := &Worker{}
	if _, err := w.reply(b); !errors.Is(err, errBadRequest) {
		t.Fatalf("a request declaring 2^32-1 buckets in %d bytes: %v, want errBadRequest", len(b), err)
	}
}
