package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/replicatorhq/replicator/pkg/vclock"
)

// ErrNoTxnEndpoint is what a --via txn run fails with when the sidecar
// answers 404 for POST /v1/txn: a build without transactions.
var ErrNoTxnEndpoint = errors.New("bench: no transaction endpoint")

// txnResult is one op's entry in the answer to POST /v1/txn.
type txnResult struct {
	Key     string `json:"key"`
	Context string `json:"context"`
	Dot     string `json:"dot"`
}

// appendTxnBody appends the body of POST /v1/txn that puts vals[i] under
// keys[i]: {"ops":[{"op":"put","key":K,"value":B64},...]}.
func appendTxnBody(dst []byte, keys []string, vals [][]byte) []byte {
	dst = append(dst, `{"ops":[`...)
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"op":"put","key":`...)
		kq, _ := json.Marshal(k) // a string always encodes
		dst = append(dst, kq...)
		dst = append(dst, `,"value":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, vals[i])
		dst = append(dst, `"}`...)
	}
	return append(dst, "]}"...)
}

// postTxn puts vals[i] under keys[i] in one transaction through the HTTP
// API at u (…/v1/txn) and returns each op's dot, in the order of keys.
func postTxn(ctx context.Context, c *http.Client, u string, keys []string, vals [][]byte) ([]vclock.Dot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(appendTxnBody(nil, keys, vals)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, ErrNoTxnEndpoint
	default:
		return nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var out struct {
		Results []txnResult `json:"results"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("decode the answer: %w", err)
	}
	if len(out.Results) != len(keys) {
		return nil, fmt.Errorf("the answer has %d results for %d ops", len(out.Results), len(keys))
	}
	dots := make([]vclock.Dot, len(keys))
	for i, r := range out.Results {
		if r.Key != keys[i] {
			return nil, fmt.Errorf("result %d is for key %q, op %d put %q", i, r.Key, i, keys[i])
		}
		if dots[i], err = vclock.ParseDot(r.Dot); err != nil {
			return nil, fmt.Errorf("result %d (%s): dot %q: %w", i, keys[i], r.Dot, err)
		}
	}
	return dots, nil
}

// txnRange is the keys of transaction j: [j*ops, min((j+1)*ops, writes)).
func txnRange(j, ops, writes int) (lo, hi int) {
	lo = j * ops
	return lo, min(lo+ops, writes)
}

// txnCount is the number of transactions that write writes keys, ops at a
// time.
func txnCount(writes, ops int) int { return (writes + ops - 1) / ops }
