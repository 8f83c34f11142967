package bridge

import (
	"strings"
	"testing"
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
