package bridge

import (
	"strings"
	"testing"
	"time"
)

func TestHeaderText(t *testing.T) {
	got := headerText("line one\r\nline two\x00" + strings.Repeat("é", 1000))
	if strings.ContainsAny(got, "\r\n\x00") || len(got) > 1024+len("…") {
		t.Fatalf("headerText left %q (%d bytes)", got[:40], len(got))
	}
	if !strings.HasSuffix(got, "…") || !strings.HasPrefix(got, "line one  line two ") {
		t.Fatalf("headerText = %q...", got[:40])
	}
}

// TestBackoffJitter holds the retry backoff to its steps (doubling from
// min, capped at max) and to spreading the retries of links that failed
// at the same moment over the upper half of each step: without jitter,
// the links of every DC that a stalled server failed at once retry in
// lockstep, each retry a burst of JetStream requests.
func TestBackoffJitter(t *testing.T) {
	const links = 200
	first, most := 50*time.Millisecond, 5*time.Second
	bos := make([]backoff, links)
	for i := range bos {
		bos[i] = backoff{min: first, max: most}
	}
	step := first
	for retry := range 10 {
		distinct := map[time.Duration]bool{}
		for i := range bos {
			d := bos[i].next()
			if d < step/2 || d > step {
				t.Fatalf("retry %d waits %s, want between %s and %s", retry, d, step/2, step)
			}
			distinct[d] = true
		}
		if len(distinct) < links/2 {
			t.Errorf("retry %d: %d links that failed together wait only %d distinct delays (step %s); want them spread over [%s, %s]",
				retry, links, len(distinct), step, step/2, step)
		}
		step = min(2*step, most)
	}
}
