#!/usr/bin/env python3
"""A replicator client in Python, standard library only: a read-modify-write
that merges concurrent values (siblings) and writes back with the read's
context, a session token carried to another DC, and 503 answers retried after
their Retry-After. GET /v1/openapi.json on a sidecar is the full reference.

    python3 examples/kv.py --addr http://127.0.0.1:7071 --other http://127.0.0.1:7072 [--token T]

It adds an item to the set stored at cart/alice, as JSON, at the first DC,
then reads the cart at the other DC with the session token, so that the read
waits until that DC has the write.
"""
import argparse
import base64
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class Sidecar:
    def __init__(self, addr, token="", retries=3):
        self.addr = addr.rstrip("/")
        self.token = token
        self.retries = retries

    def request(self, method, key, body=None, headers=None, ok=(200,)):
        """Sends one request; retries a 503 after its Retry-After (a 503
        wrote nothing); returns (status, headers, decoded JSON)."""
        url = self.addr + "/v1/kv/" + urllib.parse.quote(key, safe="")
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, resp.headers, json.load(resp)
            except urllib.error.HTTPError as e:
                answer = json.load(e) if e.headers.get("Content-Type", "").startswith("application/json") else {}
                if e.code in ok:
                    return e.code, e.headers, answer
                retry_after = e.headers.get("Retry-After")
                if e.code == 503 and retry_after and attempt < self.retries:
                    time.sleep(min(int(retry_after), 5))
                    continue
                raise RuntimeError(f"{method} {key}: {e.code}: {answer.get('error', '')}") from None

    def get(self, key, session=""):
        """Returns (values as bytes, context); no values for a missing key."""
        headers = {"X-Repl-Session": session} if session else {}
        status, _, body = self.request("GET", key, headers=headers, ok=(200, 404))
        values = [base64.b64decode(v) for v in body.get("values") or []]
        return values, body["context"]

    def put(self, key, value, context=None, session=""):
        """Writes value; context is the one the read returned (None: a blind
        write). Returns the answer: key, context, dot, session."""
        headers = {"Content-Type": "application/octet-stream"}
        if context is not None:
            headers["X-Repl-Context"] = context
        if session:
            headers["X-Repl-Session"] = session
        _, _, body = self.request("PUT", key, body=value, headers=headers)
        return body


def add_to_cart(dc, key, item):
    """Read-modify-write: the union of every concurrent value plus item,
    written with the read's context so that it replaces all of them."""
    values, context = dc.get(key)
    cart = set()
    for v in values:  # more than one when two DCs wrote concurrently
        cart.update(json.loads(v))
    cart.add(item)
    return dc.put(key, json.dumps(sorted(cart)).encode(), context=context)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", default="http://127.0.0.1:7070", help="a sidecar (default %(default)s)")
    p.add_argument("--other", help="a sidecar of another DC, read with the session token")
    p.add_argument("--token", default="", help="the sidecars' http.token")
    p.add_argument("--key", default="cart/alice")
    p.add_argument("--item", default="milk")
    args = p.parse_args()

    dc = Sidecar(args.addr, args.token)
    answer = add_to_cart(dc, args.key, args.item)
    print(f"wrote {args.key} at {args.addr}: dot {answer['dot']}, context {answer['context']}")
    if args.other:
        values, context = Sidecar(args.other, args.token).get(args.key, session=answer["session"])
        print(f"read at {args.other} with the session token: {[v.decode() for v in values]} (context {context})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
