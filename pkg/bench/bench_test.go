package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun runs a tiny bench in each topology, once through the HTTP API,
// and checks that every figure was measured and every DC converged.
func TestRun(t *testing.T) {
	for _, tc := range []struct {
		topology, via string
		references    bool
	}{
		{"mesh", ViaAPI, true},
		{"ring", ViaAPI, false},
		{"star", ViaAPI, false},
		{"mesh", ViaHTTP, false},
		{"mesh", ViaHTTP, true},
		{"mesh", ViaTxn, false}, // 10 transactions of 20 puts
	} {
		name := tc.topology + "/" + tc.via
		if tc.references && tc.via == ViaHTTP {
			name += "/floor" // the references, and the HTTP floor
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var progress bytes.Buffer
			res, err := Run(ctx, Options{
				Topology: tc.topology, DCs: 3, Writes: 200, Concurrency: 8, Via: tc.via, TxnOps: 20,
				NoReferences: !tc.references, Dir: t.TempDir(), Progress: &progress,
			})
			if err != nil {
				t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
			}
			if !res.Converged {
				t.Errorf("converged = false: the DCs' digests differ after every DC applied every write")
			}
			positive := map[string]float64{
				"writes_per_s": res.WritesPerS, "acked_writes_per_s": res.AckedWritesPerS,
				"lag_p50_ms": res.LagP50MS, "lag_p99_ms": res.LagP99MS, "lag_max_ms": res.LagMaxMS,
				"write_p50_ms": res.WriteP50MS, "write_p99_ms": res.WriteP99MS,
				"cpu_s_per_1k": res.CPUSPer1k, "peak_rss_mb": res.PeakRSSMB,
				"wire_bytes_per_write": res.WireBytesPerWrite, "overhead_bytes_per_event": res.OverheadBytesPerEvent,
				"overhead_max_bytes_per_event": float64(res.OverheadMaxBytesPerEvent),
				"reports_per_s":                res.ReportsPerS, "report_bytes_per_s": res.ReportBytesPerS,
			}
			if tc.references {
				positive["baseline_msgs_per_s"] = res.BaselineMsgsPerS
				positive["kv_puts_per_s"] = res.KVPutsPerS
				positive["ratio"] = res.Ratio
				positive["cpu_ratio"] = res.CPURatio
				if tc.via == ViaHTTP {
					positive["http_floor_req_per_s"] = res.HTTPFloorReqPerS
					positive["http_floor_cpu_s_per_1k"] = res.HTTPFloorCPUSPer1k
					positive["http_floor_ratio"] = res.HTTPFloorRatio
				}
			}
			for name, v := range positive {
				if !(v > 0) {
					t.Errorf("%s = %v, want > 0", name, v)
				}
			}
			// What a write costs in each topology of 3 DCs: a mesh
			// publishes it once, a ring N-1 times, a star once or twice
			// (hub and leaf writes); each DC other than the origin
			// receives it at least once; a mesh has N(N-1) consumers, a
			// ring N, a star 2(N-1).
			bounds := map[string][2]float64{"mesh": {1, 1}, "ring": {2, 2}, "star": {1, 2}}[tc.topology]
			consumers := map[string]int{"mesh": 6, "ring": 3, "star": 4}[tc.topology]
			perMsg := 1.0 // writes per message
			if tc.via == ViaTxn {
				perMsg = 20
			}
			if lo, hi := bounds[0]/perMsg, bounds[1]/perMsg; res.PublishesPerWrite < lo || res.PublishesPerWrite > hi {
				t.Errorf("publishes_per_write = %.3f, want %.3f..%.3f for a %s", res.PublishesPerWrite, lo, hi, tc.topology)
			}
			// Each of the 2 other DCs receives every write (its message)
			// at least once: the bench counts once every consumer has
			// delivered and had acknowledged every message.
			if lo := 2 / perMsg; res.DeliveriesPerWrite < lo {
				t.Errorf("deliveries_per_write = %.3f, want at least %.3f", res.DeliveriesPerWrite, lo)
			}
			if res.Consumers != consumers {
				t.Errorf("consumers = %d, want %d for a %s of 3 DCs", res.Consumers, consumers, tc.topology)
			}
			for name, v := range map[string]float64{"server_in_bytes_per_write": res.ServerInBytesPerWrite, "server_out_bytes_per_write": res.ServerOutBytesPerWrite,
				"server_in_msgs_per_write": res.ServerInMsgsPerWrite, "server_out_msgs_per_write": res.ServerOutMsgsPerWrite} {
				if !(v > 0) {
					t.Errorf("%s = %v, want > 0", name, v)
				}
			}
			if want := 200 * 2; res.LagSamples != want {
				t.Errorf("lag_samples = %d, want %d (every write at each of the 2 other DCs)", res.LagSamples, want)
			}
			if res.LagP50MS > res.LagP99MS || res.LagP99MS > res.LagMaxMS {
				t.Errorf("lag p50 %.2f, p99 %.2f, max %.2f ms are not in order", res.LagP50MS, res.LagP99MS, res.LagMaxMS)
			}
			if tc.via == ViaTxn {
				// One message per transaction of 20 puts.
				if res.StreamMsgsPerWrite < 1.0/20 {
					t.Errorf("stream_msgs_per_write = %.3f, want at least 1/20: every transaction is stored in its origin's stream", res.StreamMsgsPerWrite)
				}
				if res.TxnKeysPerS != res.WritesPerS || res.TxnOps != 20 {
					t.Errorf("txn_keys_per_s = %v, txn_ops = %d; want writes_per_s (%v) and 20", res.TxnKeysPerS, res.TxnOps, res.WritesPerS)
				}
			} else if res.StreamMsgsPerWrite < 1 {
				t.Errorf("stream_msgs_per_write = %.2f, want at least 1: every write is stored in its origin's stream", res.StreamMsgsPerWrite)
			}
			if res.OverheadBytesPerEvent > float64(res.OverheadMaxBytesPerEvent) {
				t.Errorf("overhead %.0f B/event is above the computed maximum %d B", res.OverheadBytesPerEvent, res.OverheadMaxBytesPerEvent)
			}
			// The breakdown adds up: its lines, less the key the payload
			// carries, are the overhead.
			var sum float64
			for _, v := range res.OverheadBreakdown {
				sum += v
			}
			if got := sum - float64(len(key(0))); math.Abs(got-res.OverheadBytesPerEvent) > 1e-6 {
				t.Errorf("overhead breakdown %v sums to %.2f B beyond the key, the overhead is %.2f B", res.OverheadBreakdown, got, res.OverheadBytesPerEvent)
			}
			if tc.via != ViaTxn && res.OverheadBreakdown["Repl-Key"] < float64(len("Repl-Key: \r\n")+len(key(0))) {
				t.Errorf("overhead breakdown %v lacks the Repl-Key line", res.OverheadBreakdown)
			}
			var out bytes.Buffer
			if err := WriteJSON(&out, res); err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			if err := json.Unmarshal(out.Bytes(), &m); err != nil {
				t.Fatalf("the JSON form does not parse: %v", err)
			}
			for _, k := range []string{"baseline_msgs_per_s", "kv_puts_per_s", "writes_per_s", "ratio", "lag_p50_ms", "lag_p99_ms",
				"lag_max_ms", "write_p50_ms", "write_p99_ms", "cpu_s_per_1k", "peak_rss_mb", "wire_bytes_per_write",
				"overhead_bytes_per_event", "topology", "dcs", "writes", "value_size", "concurrency", "via", "rate"} {
				if _, ok := m[k]; !ok {
					t.Errorf("the JSON form lacks %q", k)
				}
			}
			if tc.references && tc.via == ViaHTTP {
				if _, ok := m["http_floor_req_per_s"]; !ok {
					t.Errorf("the JSON form of an http run lacks http_floor_req_per_s")
				}
			}
			if !strings.Contains(progress.String(), "replicate") {
				t.Errorf("no progress bar on the progress writer:\n%s", progress.String())
			}
		})
	}
}

// TestRate checks that a rate-limited run takes about as long as the rate
// says.
func TestRate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, Options{DCs: 2, Writes: 100, Concurrency: 4, Rate: 200, NoReferences: true, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if res.WritesPerS > 200*1.1 {
		t.Errorf("writes_per_s = %.0f with --rate 200, want at most about 200", res.WritesPerS)
	}
}

func TestValidate(t *testing.T) {
	o := Options{Topology: "tree", DCs: 2, Writes: 0, ValueSize: 10, Concurrency: 1, Via: "grpc", TxnOps: -1, Partitions: 16}
	err := o.Validate()
	if err == nil {
		t.Fatal("Validate accepted a bad topology, write count, via and txn-ops")
	}
	for _, want := range []string{`topology "tree"`, "writes 0", `via "grpc"`, "txn-ops -1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %q does not mention %s", err, want)
		}
	}
}

func TestPercentile(t *testing.T) {
	d := make([]time.Duration, 100)
	for i := range d {
		d[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		q    float64
		want float64
	}{{0.5, 50}, {0.99, 99}, {1, 100}, {0.001, 1}} {
		if got := percentile(d, tc.q); got != tc.want {
			t.Errorf("percentile(1..100 ms, %v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %v, want 0", got)
	}
}

// TestLags checks the attribution of apply times to sequence numbers: an
// apply sampled at 5 ms covers every write up to the sampled sequence.
func TestLags(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := newCommits(t0, 2, 1)
	c.record(0, 0, 1, t0.Add(1*time.Millisecond))
	c.record(0, 0, 2, t0.Add(2*time.Millisecond))
	c.record(0, 0, 3, t0.Add(4*time.Millisecond))
	s := newSampler(nil, []string{"dc1", "dc2"}, 1, t0, nil)
	s.segs[1][0][0] = []segment{{hi: 2, at: int64(5 * time.Millisecond)}, {hi: 3, at: int64(9 * time.Millisecond)}}
	got := s.lags(c)
	want := []time.Duration{4 * time.Millisecond, 3 * time.Millisecond, 5 * time.Millisecond}
	if len(got) != len(want) {
		t.Fatalf("lags = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("lags = %v, want %v", got, want)
			break
		}
	}
	if tg := c.targets(); tg[0][0] != 3 || tg[1][0] != 0 {
		t.Errorf("targets = %v, want [[3] [0]]", tg)
	}
}

// TestOverheadGrowsLinearly checks that each DC more adds a bounded number
// of bytes to the largest event: its context entry and path element, in
// the payload and in the headers (plus, once, the 4 bytes of msgpack's
// 16-bit container lengths past 15 entries).
func TestOverheadGrowsLinearly(t *testing.T) {
	var prev, first int
	for n := 2; n <= 16; n++ {
		names := make([]string, n)
		for i := range names {
			names[i] = "dc" + string(rune('a'+i))
		}
		o, err := maxOverhead(names)
		if err != nil {
			t.Fatal(err)
		}
		if n > 2 {
			step := o - prev
			if first == 0 {
				first = step
			}
			if step > first+4 {
				t.Errorf("going from %d to %d DCs adds %d B, the first DC added %d B: growing faster than linearly", n-1, n, step, first)
			}
		}
		prev = o
	}
}

// TestTxnJSON checks the fields a --via txn run adds to the JSON form.
func TestTxnJSON(t *testing.T) {
	var out bytes.Buffer
	if err := WriteJSON(&out, Result{Via: ViaTxn, TxnOps: 100, WritesPerS: 60000, TxnKeysPerS: 60000, BaselineMsgsPerS: 50000, Ratio: 1.2}); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]float64{"txn_ops": 100, "txn_keys_per_s": 60000, "ratio": 1.2} {
		if got, ok := m[k].(float64); !ok || got != want {
			t.Errorf("%s = %v in %s, want %v", k, m[k], out.String(), want)
		}
	}
}
