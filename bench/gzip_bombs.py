#!/usr/bin/env python3
"""Agent memory under parallel gzip bombs: starts `outpost agent` over the demo model, sends N
parallel 1 MB gzip bodies that inflate to 1 GiB of zeros each, and prints the agent's RSS before,
its peak (VmHWM) and its RSS 5 s after, with the statuses it answered. A regression of the
request-body budget (`max_inflight_body_bytes`) shows as a peak far above idle.

usage: bench/gzip_bombs.py path/to/outpost [N=32] [extra agent flags...]
"""

import collections
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path


def status_kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def bomb(inflated_mib=1024):
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    zeros = bytes(1 << 20)
    parts = [c.compress(zeros) for _ in range(inflated_mib)]
    return b"".join(parts) + c.flush()


def main():
    binary, n, flags = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 32, sys.argv[3:]
    work = Path(tempfile.mkdtemp(prefix="outpost-bombs-"))
    subprocess.run([binary, "model", "train-demo", "--out", work / "models"], check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = subprocess.Popen([binary, "agent", "--listen", f"127.0.0.1:{port}", "--model-dir", work / "models",
                              "--data-dir", work / "data", *flags],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        body = bomb()
        idle = status_kib(agent.pid, "VmRSS")
        statuses = collections.Counter()

        def send():
            req = urllib.request.Request(f"{base}/v2/models/vibration-anomaly/infer", data=body,
                                         headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    statuses[r.status] += 1
            except urllib.error.HTTPError as e:
                statuses[e.code] += 1
            except OSError as e:
                statuses[type(e).__name__] += 1

        threads = [threading.Thread(target=send) for _ in range(n)]
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        peak = status_kib(agent.pid, "VmHWM")
        time.sleep(5)
        after = status_kib(agent.pid, "VmRSS")
        print(f"{n} parallel gzip bombs of {len(body) / 1e6:.2f} MB (1 GiB inflated) in {elapsed:.1f} s: "
              f"answers {dict(statuses)}")
        print(f"agent RSS idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, 5 s after {after / 1024:.0f} MiB")
    finally:
        agent.terminate()
        agent.wait()


if __name__ == "__main__":
    main()
