//go:build !linux

package bench

// resetPeakRSS cannot reset the peak here: the figure is the process's
// peak so far.
func resetPeakRSS() bool { return false }

func peakRSS() (int64, bool) { return 0, false }

func currentRSS() (int64, bool) { return 0, false }
