//go:build !unix

package changelog

import "time"

// cpuTime is unknown here; benchmarks then report 0 CPU per operation.
func cpuTime() time.Duration { return 0 }
