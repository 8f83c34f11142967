//go:build !unix

package bench

import "time"

// rusage is not available here: CPU and RSS figures read 0.
func rusage() (cpu time.Duration, maxRSS int64) { return 0, 0 }
