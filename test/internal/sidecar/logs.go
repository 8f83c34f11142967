package sidecar

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// DumpLog logs the last tail bytes of a DC's log file.
func DumpLog(t testing.TB, name, path string, tail int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Logf("----- %s log: %v", name, err)
		return
	}
	cut := ""
	if len(b) > tail {
		b, cut = b[len(b)-tail:], fmt.Sprintf(" (last %d bytes)", tail)
	}
	t.Logf("----- %s log %s%s:\n%s", name, path, cut, b)
}

// CheckLog summarises a DC's ERROR and WARN log lines, and fails the test
// if the process panicked, crashed or reported a data race.
func CheckLog(t testing.TB, name, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("%s log: %v", name, err)
		return
	}
	counts := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		for _, level := range []string{"ERROR", "WARN"} {
			if strings.Contains(line, "level="+level) {
				counts[level+" "+LogMsg(line)]++
			}
		}
		if strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:") || strings.Contains(line, "WARNING: DATA RACE") {
			t.Errorf("%s log %s: %s", name, path, line)
		}
	}
	var sum []string
	for msg, n := range counts {
		sum = append(sum, fmt.Sprintf("%dx %s", n, msg))
	}
	sort.Strings(sum)
	t.Logf("%s log: %d kinds of ERROR/WARN lines: %s", name, len(sum), strings.Join(sum, "; "))
}

// LogMsg returns the msg= field of a slog text line.
func LogMsg(line string) string {
	_, rest, ok := strings.Cut(line, " msg=")
	if !ok {
		return line
	}
	if strings.HasPrefix(rest, `"`) {
		if q, err := strconv.QuotedPrefix(rest); err == nil {
			return q
		}
	}
	msg, _, _ := strings.Cut(rest, " ")
	return msg
}
