//go:build unix

package changelog

import (
	"syscall"
	"time"
)

// cpuTime is the process's user plus system CPU time so far: on a shared
// machine, CPU per operation varies far less than wall time per operation.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
