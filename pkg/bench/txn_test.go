package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// fakeTxn is a stand-in for the sidecar's POST /v1/txn: it decodes the
// body strictly as the endpoint's contract has it, keeps the puts, and
// answers each op with a dot of dc1 in order.
type fakeTxn struct {
	mu   sync.Mutex
	seq  uint64
	puts map[string][]byte
	// answer, if set, replaces the answer to every request.
	answer func(w http.ResponseWriter, keys []string)
}

func (f *fakeTxn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/txn" {
		http.Error(w, `{"error":"no route"}`, http.StatusNotFound)
		return
	}
	var body struct {
		Ops []struct {
			Op    string `json:"op"`
			Key   string `json:"key"`
			Value string `json:"value"`
		} `json:"ops"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		http.Error(w, fmt.Sprintf(`{"error":"bad body: %v"}`, err), http.StatusBadRequest)
		return
	}
	keys := make([]string, len(body.Ops))
	f.mu.Lock()
	defer f.mu.Unlock()
	type result struct {
		Key     string `json:"key"`
		Context string `json:"context"`
		Dot     string `json:"dot"`
	}
	var out struct {
		Results []result `json:"results"`
	}
	for i, op := range body.Ops {
		v, err := base64.StdEncoding.DecodeString(op.Value)
		if op.Op != "put" || err != nil {
			http.Error(w, fmt.Sprintf(`{"error":"op %d: %q, value %v"}`, i, op.Op, err), http.StatusBadRequest)
			return
		}
		keys[i] = op.Key
		f.seq++
		f.puts[op.Key] = v
		dot := vclock.Dot{DC: "dc1", N: f.seq}
		out.Results = append(out.Results, result{Key: op.Key, Context: "{dc1:" + fmt.Sprint(f.seq) + "}", Dot: dot.String()})
	}
	if f.answer != nil {
		f.answer(w, keys)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// TestPostTxn drives the fake endpoint: the body carries every key and
// value, and the dots come back in the order of the ops.
func TestPostTxn(t *testing.T) {
	f := &fakeTxn{puts: map[string][]byte{}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	vals := newValues(100, 250)
	var next uint64
	for j := range txnCount(250, 100) {
		lo, hi := txnRange(j, 100, 250)
		var keys []string
		var vs [][]byte
		for i := lo; i < hi; i++ {
			keys, vs = append(keys, key(i)), append(vs, vals.at(i))
		}
		dots, err := postTxn(context.Background(), srv.Client(), srv.URL+"/v1/txn", keys, vs)
		if err != nil {
			t.Fatalf("transaction %d: %v", j, err)
		}
		if len(dots) != hi-lo {
			t.Fatalf("transaction %d: %d dots for %d ops", j, len(dots), hi-lo)
		}
		for i, d := range dots {
			next++
			if want := (vclock.Dot{DC: "dc1", N: next}); d != want {
				t.Errorf("transaction %d op %d: dot %s, want %s", j, i, d, want)
			}
		}
	}
	if len(f.puts) != 250 {
		t.Errorf("the endpoint saw %d keys, want 250 (transactions of 100, 100 and 50)", len(f.puts))
	}
	for i := range 250 {
		if got := f.puts[key(i)]; !bytes.Equal(got, vals.at(i)) {
			t.Errorf("%s: the endpoint got %d bytes %x..., want the value written", key(i), len(got), got[:min(len(got), 8)])
		}
	}
}

// TestPostTxnErrors checks what the driver makes of answers it cannot use,
// above all a 404 from a build without /v1/txn.
func TestPostTxnErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		path   string
		answer func(w http.ResponseWriter, keys []string)
		want   string
		is     error
	}{
		{name: "no endpoint", path: "/v1/nope", is: ErrNoTxnEndpoint},
		{name: "refused", path: "/v1/txn", answer: func(w http.ResponseWriter, _ []string) {
			http.Error(w, `{"error":"op 1: key \"k\" appears twice"}`, http.StatusBadRequest)
		}, want: `400 Bad Request: {"error":"op 1: key \"k\" appears twice"}`},
		{name: "short answer", path: "/v1/txn", answer: func(w http.ResponseWriter, keys []string) {
			fmt.Fprintf(w, `{"results":[{"key":%q,"context":"{}","dot":"dc1:1"}]}`, keys[0])
		}, want: "the answer has 1 results for 2 ops"},
		{name: "other key", path: "/v1/txn", answer: func(w http.ResponseWriter, _ []string) {
			fmt.Fprint(w, `{"results":[{"key":"x","context":"{}","dot":"dc1:1"},{"key":"y","context":"{}","dot":"dc1:2"}]}`)
		}, want: `result 0 is for key "x"`},
		{name: "bad dot", path: "/v1/txn", answer: func(w http.ResponseWriter, keys []string) {
			fmt.Fprintf(w, `{"results":[{"key":%q,"context":"{}","dot":"dc1"},{"key":%q,"context":"{}","dot":"dc1:2"}]}`, keys[0], keys[1])
		}, want: `dot "dc1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(&fakeTxn{puts: map[string][]byte{}, answer: tc.answer})
			defer srv.Close()
			_, err := postTxn(context.Background(), srv.Client(), srv.URL+tc.path, []string{"a", "b"}, [][]byte{{1}, {2}})
			switch {
			case err == nil:
				t.Fatal("postTxn accepted the answer")
			case tc.is != nil && !errors.Is(err, tc.is):
				t.Errorf("error %q is not %q", err, tc.is)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestTxnRanges(t *testing.T) {
	for _, tc := range []struct {
		writes, ops int
		want        [][2]int
	}{
		{250, 100, [][2]int{{0, 100}, {100, 200}, {200, 250}}},
		{200, 100, [][2]int{{0, 100}, {100, 200}}},
		{3, 1, [][2]int{{0, 1}, {1, 2}, {2, 3}}},
		{5, 100, [][2]int{{0, 5}}},
	} {
		var got [][2]int
		for j := range txnCount(tc.writes, tc.ops) {
			lo, hi := txnRange(j, tc.ops, tc.writes)
			got = append(got, [2]int{lo, hi})
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%d keys, %d per transaction: %v, want %v", tc.writes, tc.ops, got, tc.want)
		}
	}
}
