//go:build unix

package bench

import (
	"runtime"
	"syscall"
	"time"
)

// rusage returns the process's user+system CPU time and peak resident set
// size in bytes.
func rusage() (cpu time.Duration, maxRSS int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	maxRSS = int64(ru.Maxrss)
	if runtime.GOOS != "darwin" {
		maxRSS *= 1024 // kilobytes everywhere but on macOS
	}
	return cpu, maxRSS
}
