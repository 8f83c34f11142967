package home

import (
	"path/filepath"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// TestHostileRequests: hand-made msgpack requests on repl.home.<dc>,
// among them arrays and maps declaring 2^31 elements in a few bytes (the
// msgpack decoder would allocate them whole, package msgpackcheck): each
// gets a 400, no panic.
func TestHostileRequests(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "store"))
	defer st.Close()
	r := newRouter(t, st)
	defer r.Close()
	cases := map[string][]byte{
		"empty":              {},
		"nil":                {0xc0},
		"array32 huge":       {0xdd, 0xff, 0xff, 0xff, 0xff},
		"map32 huge":         {0xdf, 0xff, 0xff, 0xff, 0xff},
		"dcs huge str array": append(mapHdr("dcs"), 0xdd, 0x7f, 0xff, 0xff, 0xff),
		"ctx huge map":       append(mapHdr("context"), 0xdf, 0x7f, 0xff, 0xff, 0xff),
		"value bin32 huge":   append(mapHdr("value"), 0xc6, 0x7f, 0xff, 0xff, 0xff),
		"key bin":            append(mapHdr("key"), 0xc4, 0x01, 0xff),
	}
	for name, b := range cases {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("%s: panic %v", name, p)
				}
			}()
			if rep := r.handle(b, false); rep.Status != 400 {
				t.Errorf("%s: status %d %q, want 400", name, rep.Status, rep.Error)
			}
		}()
	}
}

func mapHdr(field string) []byte {
	b := []byte{0x81}
	k, _ := msgpack.Marshal(field)
	return append(b, k...)
}
