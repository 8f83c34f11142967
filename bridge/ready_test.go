package bridge

import (
	"fmt"
	"testing"
	"time"
)

// TestQuietLog: a lasting condition is noted at once, then after 1 minute,
// then at doubling intervals up to an hour, not at every retry.
func TestQuietLog(t *testing.T) {
	var q quietLog
	t0 := time.Unix(0, 0)
	var logged []time.Duration
	for s := 0; s <= 4*3600; s += 5 { // a retry every 5 s for 4 hours
		if _, _, ok := q.due(t0.Add(time.Duration(s) * time.Second)); ok {
			logged = append(logged, time.Duration(s)*time.Second)
		}
	}
	want := []time.Duration{0, time.Minute, 3 * time.Minute, 7 * time.Minute, 15 * time.Minute, 31 * time.Minute,
		63 * time.Minute, 123 * time.Minute, 183 * time.Minute}
	if fmt.Sprint(logged) != fmt.Sprint(want) {
		t.Errorf("noted at %v, want %v", logged, want)
	}
}
