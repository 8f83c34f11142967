package session

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var scope = Scope{DCs: []string{"dc1", "dc2", "dc3"}, Partitions: 16}

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // the normalised token; "" with err set for a rejection
		err  string // a part of the error message
	}{
		{in: "", want: ""},
		{in: " , ,", want: ""},
		{in: "dc1:3:17", want: "dc1:3:17"},
		{in: "dc2:0:4,dc1:3:17", want: "dc1:3:17,dc2:0:4"},
		{in: "dc1:3:9,dc1:3:17,dc1:3:12", want: "dc1:3:17"},
		{in: "dc1:3:17, dc1:10:1 ,dc1:2:5", want: "dc1:2:5,dc1:3:17,dc1:10:1"},
		// Concatenating tokens, one of them empty.
		{in: "dc1:1:1," + "" + ",dc3:15:2", want: "dc1:1:1,dc3:15:2"},
		{in: "dc1:3", err: `entry 1 "dc1:3": want <dc>:<partition>:<seq>`},
		{in: "dc1:3:17:2", err: `seq "17:2" is not a number`},
		{in: "dc9:3:17", err: `DC "dc9" is not one of dc1, dc2, dc3`},
		{in: "dc1:1:1,:3:17", err: `entry 2 ":3:17"`},
		{in: "d c1:3:17", err: `only letters, digits`},
		{in: "dc1:16:1", err: "partition 16 is not in 0..15"},
		{in: "dc1:-1:1", err: `partition "-1" is not a number`},
		{in: "dc1:4294967296:1", err: `partition "4294967296" is not a number`},
		{in: "dc1:1:0", err: "seq 0 is not in 1..2^62-1"},
		{in: "dc1:1:4611686018427387904", err: "seq 4611686018427387904 is not in"},
		{in: "dc1:1:x", err: `seq "x" is not a number`},
		{in: "{dc1:3}", err: "this is a context"},
		{in: "{dc1:3,dc2:4}", err: "this is a context"},
		{in: strings.Repeat("dc1:1:1,", MaxEntries) + "dc1:1:2", err: "more than 4096 entries"},
	} {
		t.Run(tt.in[:min(len(tt.in), 40)], func(t *testing.T) {
			got, err := scope.Parse(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrBadInput) {
					t.Fatalf("Parse(%q) = %v, %v; want an ErrBadInput containing %q", tt.in, got, err, tt.err)
				}
				if strings.HasPrefix(err.Error(), "session") {
					t.Errorf("Parse(%q) error %q repeats a prefix the caller adds", tt.in, err)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("Parse(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestParseBound: exactly MaxEntries entries parse; the count is of entries
// given, before merging.
func TestParseBound(t *testing.T) {
	if _, err := scope.Parse(strings.Repeat("dc1:1:1,", MaxEntries)); err != nil {
		t.Fatalf("%d entries: %v", MaxEntries, err)
	}
}

func TestMerge(t *testing.T) {
	a := Of(Entry{"dc1", 3, 17}, Entry{"dc2", 0, 4})
	b := Of(Entry{"dc1", 3, 20}, Entry{"dc1", 2, 1}, Entry{"dc2", 0, 3})
	want := "dc1:2:1,dc1:3:20,dc2:0:4"
	if got := a.Merge(b).String(); got != want {
		t.Errorf("a.Merge(b) = %s; want %s", got, want)
	}
	if got := b.Merge(a).String(); got != want {
		t.Errorf("b.Merge(a) = %s; want %s", got, want)
	}
	if got := a.Merge(a).String(); got != a.String() {
		t.Errorf("a.Merge(a) = %s; want %s", got, a)
	}
	if got := Token(nil).Merge(nil).String(); got != "" {
		t.Errorf("empty merge = %q", got)
	}
	// Merging by joining the text forms gives the same token.
	joined, err := scope.Parse(a.String() + "," + b.String())
	if err != nil || joined.String() != want {
		t.Errorf("Parse(a,b) = %s, %v; want %s", joined, err, want)
	}
	// Merge leaves its operands alone.
	if a.String() != "dc1:3:17,dc2:0:4" {
		t.Errorf("a changed to %s", a)
	}
}

func TestCheck(t *testing.T) {
	if err := scope.Check(Of(Entry{"dc1", 15, 1})); err != nil {
		t.Errorf("Check of a good token: %v", err)
	}
	for _, bad := range []Entry{{"dc9", 1, 1}, {"dc1", 16, 1}, {"dc1", 1, 0}, {"", 1, 1}} {
		if err := scope.Check(Token{bad}); !errors.Is(err, ErrBadInput) {
			t.Errorf("Check(%v) = %v; want ErrBadInput", bad, err)
		}
	}
}

func TestParseWait(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"", 0, true},
		{"1", 1, true},
		{"3", 3, true},
		{" 2 ", 2, true},
		{"all", 3, true},
		{"ALL", 3, true},
		{"0", 0, false},
		{"4", 0, false},
		{"-1", 0, false},
		{"two", 0, false},
		{"2.5", 0, false},
		{"99999999999999999999", 0, false},
	} {
		got, err := scope.ParseWait(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseWait(%q) = %d, %v; want %d, ok=%t", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "want 1..3") {
			t.Errorf("ParseWait(%q) error %q does not say what is allowed", tt.in, err)
		}
	}
}

func TestParseWaitTimeout(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", DefaultWaitTimeout, true},
		{"2s", 2 * time.Second, true},
		{"500ms", 500 * time.Millisecond, true},
		{"1m", time.Minute, true},
		{"61s", 0, false},
		{"0s", 0, false},
		{"-1s", 0, false},
		{"5", 0, false},
		{"soon", 0, false},
	} {
		got, err := ParseWaitTimeout(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseWaitTimeout(%q) = %s, %v; want %s, ok=%t", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseAck(t *testing.T) {
	for _, tt := range []struct {
		wait, timeout string
		want          Ack
		err           string
	}{
		{"", "", Ack{}, ""},
		{"all", "", Ack{N: 3, Timeout: DefaultWaitTimeout}, ""},
		{"2", "250ms", Ack{N: 2, Timeout: 250 * time.Millisecond}, ""},
		{"", "1s", Ack{}, "W-T is given without W"},
		{"0", "", Ack{}, `W: "0" is not a number of DCs`},
		{"all", "2m", Ack{}, `W-T: "2m" is not a duration`},
	} {
		got, err := scope.ParseAck(tt.wait, tt.timeout, "W", "W-T")
		if got != tt.want || (err == nil) != (tt.err == "") || err != nil && (!strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrBadInput)) {
			t.Errorf("ParseAck(%q, %q) = %+v, %v; want %+v, error %q", tt.wait, tt.timeout, got, err, tt.want, tt.err)
		}
	}
}

func TestShortfall(t *testing.T) {
	got := Shortfall(2, 3, 5*time.Second)
	if !strings.Contains(got, "only 2 of 3 DCs had applied the write within 5s") || !strings.Contains(got, "stands") {
		t.Errorf("Shortfall = %q", got)
	}
}

// FuzzParse: Parse never panics; what it accepts is normalised, bounded
// and names only the scope's DCs and partitions; its text form parses back
// to itself.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "dc1:3:17", "dc2:0:4,dc1:3:17,dc1:3:2", " ,dc3:15:1, ", "dc1:1", "dc9:1:1", "dc1:1:0", "dc1:99999999999:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		tok, err := scope.Parse(in)
		if err != nil {
			if !errors.Is(err, ErrBadInput) {
				t.Fatalf("Parse(%q) error %v is not ErrBadInput", in, err)
			}
			return
		}
		if len(tok) > MaxEntries {
			t.Fatalf("Parse(%q) gave %d entries", in, len(tok))
		}
		if err := scope.Check(tok); err != nil {
			t.Fatalf("Parse(%q) accepted %v, which Check rejects: %v", in, tok, err)
		}
		seen := map[string]bool{}
		for i, e := range tok {
			k := fmt.Sprint(e.Origin, "/", e.Partition)
			if seen[k] {
				t.Fatalf("Parse(%q) = %v holds two entries for %s", in, tok, k)
			}
			seen[k] = true
			if i > 0 && (tok[i-1].Origin > e.Origin || tok[i-1].Origin == e.Origin && tok[i-1].Partition > e.Partition) {
				t.Fatalf("Parse(%q) = %v is not sorted", in, tok)
			}
		}
		again, err := scope.Parse(tok.String())
		if err != nil || again.String() != tok.String() {
			t.Fatalf("Parse(String(%v)) = %v, %v", tok, again, err)
		}
	})
}
