package fault_test

import (
	"encoding/json"
	"os"
	"sync"
	"testing"
	"time"
)

// figures are one test's numbers for docs/RELIABILITY.md.
type figures struct {
	Test   string `json:"test"`
	Form   string `json:"form"`
	Seed   uint64 `json:"seed"`
	Faults string `json:"faults"`
	// Operations counts client operations attempted (reads and writes).
	Operations int64 `json:"operations,omitempty"`
	// Acked counts writes the DCs acknowledged; Lost those not accounted
	// for afterwards (must be 0).
	Acked int64 `json:"acked_writes"`
	Lost  int   `json:"lost_writes"`
	// Converge is the time from the last heal (or the end of the writes)
	// until every DC showed the same digest and applied vector.
	Converge string         `json:"converge_after_heal"`
	Took     string         `json:"test_duration"`
	Extra    map[string]any `json:"extra,omitempty"`
}

var figuresMu sync.Mutex

// report logs the figures as one JSON line, and appends them to
// -fault.figures when it is set.
func report(t *testing.T, f figures, begin time.Time) {
	t.Helper()
	f.Test = t.Name()
	f.Form = form()
	f.Took = time.Since(begin).Round(time.Millisecond).String()
	b, err := json.Marshal(f)
	if err != nil {
		t.Errorf("figures: %v", err)
		return
	}
	t.Logf("FIGURES %s", b)
	if *figuresFile == "" {
		return
	}
	figuresMu.Lock()
	defer figuresMu.Unlock()
	fh, err := os.OpenFile(*figuresFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Errorf("figures: %v", err)
		return
	}
	defer fh.Close()
	if _, err := fh.Write(append(b, '\n')); err != nil {
		t.Errorf("figures: %v", err)
	}
}

func round(d time.Duration) string { return d.Round(time.Millisecond).String() }
