#!/usr/bin/env python3
"""Label-selector load against a running outpost server: P parallel clients send
`GET /v1/devices?selector=<N terms>` for S seconds; prints requests/s, p50/p99 latency and the
status codes seen. Standard library only, so bench/attack.sh (or anyone) can call it as is.

usage: bench/selector_load.py --server http://127.0.0.1:8700 --token opt_... \
           [--terms 32] [--parallel 16] [--duration 10] [--path /v1/devices]

The selector is the expensive legal shape: `site in (a|b)` then alternating `kN notin (64 values)`
and `!absentN` terms. Terms beyond the server's limit (32) measure how fast it refuses them (400).
"""

import argparse
import http.client
import statistics
import sys
import threading
import time
import urllib.parse
from collections import Counter


def selector(terms: int) -> str:
    values = "|".join(f"v{i}" for i in range(64))
    parts = ["site in (berlin|paris)"]
    for i in range(1, terms):
        parts.append(f"k{i} notin ({values})" if i % 2 == 0 else f"!absent{i}")
    return ",".join(parts[:terms])


def client(url, path, token, stop, latencies, statuses, lock):
    conn = None
    while time.monotonic() < stop:
        if conn is None:
            cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
            conn = cls(url.hostname, url.port, timeout=60)
        started = time.monotonic()
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as e:
            status = type(e).__name__
            conn.close()
            conn = None
        elapsed = time.monotonic() - started
        with lock:
            latencies.append(elapsed)
            statuses[status] += 1


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="base URL, e.g. http://127.0.0.1:8700")
    ap.add_argument("--token", required=True, help="operator API token (a viewer is enough)")
    ap.add_argument("--terms", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds")
    ap.add_argument("--path", default="/v1/devices", help="/v1/devices or /v1/fleet/summary")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.server)
    sel = selector(args.terms)
    path = f"{args.path}?selector={urllib.parse.quote(sel, safe='')}"
    latencies, statuses, lock = [], Counter(), threading.Lock()
    stop = time.monotonic() + args.duration
    threads = [
        threading.Thread(target=client, args=(url, path, args.token, stop, latencies, statuses, lock), daemon=True)
        for _ in range(args.parallel)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    lat = sorted(latencies)
    print(f"selector: {args.terms} terms, {len(sel)} bytes; {args.parallel} clients for {wall:.1f} s on {args.path}")
    print(f"requests: {len(lat)}  ({len(lat) / wall:.1f}/s)")
    if lat:
        print(f"latency: p50 {percentile(lat, 50) * 1000:.1f} ms  p99 {percentile(lat, 99) * 1000:.1f} ms"
              f"  max {lat[-1] * 1000:.1f} ms  mean {statistics.mean(lat) * 1000:.1f} ms")
    print("statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
