package httpapi

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
)

// TestWriteBodyMatchesMarshal checks that the hand-built answer to a write
// is byte for byte what encoding/json writes, for keys that need every
// kind of escape and for random strings.
func TestWriteBodyMatchesMarshal(t *testing.T) {
	keys := []string{
		"", "a", "bench-000012345", "a/b/c", `quote"d`, `back\slash`, "<html>&amp;",
		"tab\there", "nl\n", "\x00\x1f\x7f", "é ü 日本", "line\u2028sep\u2029", "bad\xffutf8",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, rng.IntN(24))
		for i := range b {
			if rng.IntN(4) == 0 {
				b[i] = byte(rng.IntN(256))
			} else {
				b[i] = byte(0x20 + rng.IntN(0x5f))
			}
		}
		keys = append(keys, string(b))
	}
	for _, k := range keys {
		for _, body := range []WriteAnswer{
			{Key: k, Context: "{dc1:3,dc2:1}", Dot: "dc1:3", Session: "dc1:2:3"},
			{Key: k, Context: "{dc1:3}", Dot: "dc1:3", Session: "dc1:2:3,dc2:0:9", Replicated: 2},
			{Key: k, Context: "{dc1:3}", Dot: "dc1:3", Session: "dc1:2:3", Replicated: 1, Error: "only " + k},
		} {
			want, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, '\n')
			if got := body.append(nil); string(got) != string(want) {
				t.Errorf("key %q: answer\n%s\nwant (encoding/json)\n%s", k, got, want)
			}
		}
	}
}
