"""Drives bench/attack.sh: replays the hardening issue's attack loads against a release build and
prints, for each, what a legitimate user sees: the p99 latency and failures of a heartbeating
device next to the same device's figures with no attack running (a ratio, measured in the same
run), and the agent's peak RSS during a gzip-bomb burst.

Loads (each against a fresh server):
  baseline        the device alone
  selector flood  P viewer clients listing devices with a selector of T terms (32: the most
                  the server accepts, so every request reaches the database), back to back
  history flood   one enrolled device posting batches of far-future reports as fast as it can
  gzip bombs      N parallel 1 MB gzip bodies (each expanding to 64 MiB) against an agent
"""

import base64
import gzip
import hashlib
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

BIN = sys.argv[1]
DURATION = float(os.environ.get("DURATION", 20))
PARALLEL = int(os.environ.get("PARALLEL", 16))
TERMS = int(os.environ.get("TERMS", 32))
BOMBS = int(os.environ.get("BOMBS", 32))
FLEET = int(os.environ.get("FLEET", 200))
DATABASE = os.environ.get("DATABASE", "postgres")
PG = os.environ.get("PG", "postgres://postgres@127.0.0.1:5432/test")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=30):
    """(status, body bytes); never raises for HTTP errors."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


class Device:
    """A device with its own Ed25519 key, signing requests exactly as the agent does."""

    def __init__(self, base):
        self.base = base
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = base64.b64encode(raw).decode()
        self.id = "d-" + hashlib.sha256(raw).hexdigest()[:20]

    def send(self, method, path, payload, timestamp_ms=None):
        body = json.dumps(payload).encode()
        ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        nonce = secrets.token_hex(16)
        message = "\n".join(["OUTPOST-SIG-V1", method, path, self.id, str(ts), nonce,
                             hashlib.sha256(body).hexdigest()]).encode()
        signature = base64.b64encode(self.key.sign(message)).decode()
        headers = {"content-type": "application/json", "x-outpost-device": self.id,
                   "x-outpost-timestamp": str(ts), "x-outpost-nonce": nonce, "x-outpost-signature": signature}
        return http(method, self.base + path, body, headers)

    def enroll(self, token):
        status, body = self.send("POST", "/v1/enroll", {"token": token, "algorithm": "ed25519",
                                                         "public_key": self.public_key, "name": "attack-bench"})
        assert status in (200, 201), (status, body)

    def report(self, seq, at_ms):
        return {"seq": seq, "at_ms": at_ms, "agent_version": "bench", "uptime_s": seq, "health": "ok"}


def fresh_pg_schema():
    schema = "fleetbench_" + secrets.token_hex(4)
    subprocess.run(["psql", PG, "-qc", f"CREATE SCHEMA {schema}"], check=True, capture_output=True)
    return f"{PG}?options=-c%20search_path%3D{schema}"


class Server:
    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="attackbench-")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = [BIN, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{self.work}/data",
                "--heartbeat-interval-s", "1"]
        if DATABASE == "postgres":
            args += ["--database", fresh_pg_schema()]
        env = {**os.environ, "OUTPOST_LOG": "warn"}
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(f"{self.work}/server.log", "w"),
                                     env=env)
        deadline = time.time() + 60
        while not os.path.exists(f"{self.work}/data/admin.token"):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server did not start: {open(self.work + '/server.log').read()}")
            time.sleep(0.1)
        time.sleep(0.3)
        self.admin = open(f"{self.work}/data/admin.token").read().strip()

    def op(self, method, path, payload=None, token=None):
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"authorization": f"Bearer {token or self.admin}", "content-type": "application/json"}
        return http(method, self.url + path, body, headers)

    def enroll_token(self):
        status, body = self.op("POST", "/v1/enrollment-tokens", {"uses": FLEET + 10})
        assert status == 201, (status, body)
        return json.loads(body)["secret"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def heartbeat_probe(server, device, stop, out):
    """One heartbeat every 100 ms until `stop`; appends (latency ms, status)."""
    seq = 0
    while not stop.is_set():
        seq += 1
        t0 = time.perf_counter()
        status, _ = device.send("POST", "/v1/device/heartbeat", device.report(seq, int(time.time() * 1000)))
        out.append(((time.perf_counter() - t0) * 1000, status))
        time.sleep(0.1)


def p99(values):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def under_load(label, load):
    """Runs `load(server, stop, counters)` next to a heartbeating device for DURATION seconds."""
    server = Server()
    try:
        token = server.enroll_token()
        device = Device(server.url)
        device.enroll(token)
        for _ in range(FLEET):  # a fleet for the selector to scan
            Device(server.url).enroll(token)
        stop = threading.Event()
        beats, counters = [], {"requests": 0, "statuses": {}}
        workers = [threading.Thread(target=heartbeat_probe, args=(server, device, stop, beats))]
        workers += load(server, token, stop, counters) if load else []
        for w in workers:
            w.start()
        time.sleep(DURATION)
        stop.set()
        for w in workers:
            w.join(timeout=120)
        ok = [ms for ms, status in beats if status == 200]
        failed = sum(1 for _, status in beats if status != 200)
        attacker = counters.get("device")
        return {"label": label, "p50": statistics.median(ok) if ok else float("nan"), "p99": p99(ok),
                "beats": len(beats), "failed": failed, "attack_requests": counters["requests"],
                "attack_statuses": counters["statuses"],
                "history_rows": history_rows(server, attacker) if attacker else None}
    finally:
        server.stop()


def history_rows(server, device):
    status, body = server.op("GET", f"/v1/devices/{device.id}/history?limit=1000")
    return len(json.loads(body)) if status == 200 else None


def count(counters, status):
    counters["requests"] += 1
    counters["statuses"][status] = counters["statuses"].get(status, 0) + 1


def selector_flood(server, token, stop, counters):
    status, body = server.op("POST", "/v1/api-tokens", {"name": "viewer", "role": "viewer"})
    viewer = json.loads(body)["secret"]
    selector = ",".join(f"k{i}!=v{i}" for i in range(TERMS))
    path = "/v1/devices?selector=" + urllib.request.quote(selector)

    def client():
        while not stop.is_set():
            status, _ = http("GET", server.url + path, headers={"authorization": f"Bearer {viewer}"}, timeout=10)
            count(counters, status)
    return [threading.Thread(target=client) for _ in range(PARALLEL)]


def history_flood(server, token, stop, counters):
    attacker = Device(server.url)
    attacker.enroll(token)
    counters["device"] = attacker

    def client():
        seq = 0
        while not stop.is_set():
            future = int(time.time() * 1000) + 30 * 365 * 86_400_000
            batch = {"reports": [attacker.report(seq + i, future + (seq + i) * 1000) for i in range(2000)]}
            seq += 2000
            status, _ = attacker.send("POST", "/v1/device/reports", batch)
            count(counters, status)
    return [threading.Thread(target=client)]


def gzip_bombs():
    """Agent peak RSS before, during and 5 s after N parallel gzip bombs; status counts."""
    work = tempfile.mkdtemp(prefix="attackbench-agent-")
    models = f"{work}/models"
    subprocess.run([BIN, "model", "train-demo", "--out", models], check=True, capture_output=True)
    port = free_port()
    agent = subprocess.Popen([BIN, "agent", "--listen", f"127.0.0.1:{port}", "--model-dir", models],
                             stdout=subprocess.DEVNULL, stderr=open(f"{work}/agent.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while http("GET", url + "/v2/health/ready", timeout=1)[0] != 200:
        if agent.poll() is not None or time.time() > deadline:
            raise SystemExit(f"agent did not start: {open(work + '/agent.log').read()}")
        time.sleep(0.2)

    def rss():
        status = open(f"/proc/{agent.pid}/status").read()
        return (int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024,
                int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024)

    before, _ = rss()
    bomb = gzip.compress(b"\0" * (64 << 20), 9)
    statuses = {}
    lock = threading.Lock()

    def send():
        status, _ = http("POST", url + "/v2/models/vibration-anomaly/infer", bomb,
                         {"content-encoding": "gzip", "content-type": "application/json"}, timeout=60)
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
    threads = [threading.Thread(target=send) for _ in range(BOMBS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, peak = rss()
    time.sleep(5)
    after, _ = rss()
    healthy = http("GET", url + "/v2/health/ready", timeout=5)[0] == 200
    agent.terminate()
    agent.wait(timeout=30)
    return {"bomb_kb": len(bomb) // 1024, "before": before, "peak": peak, "after": after,
            "statuses": statuses, "healthy": healthy}


base = under_load("baseline (device alone)", None)
rows = [base,
        under_load(f"selector flood ({PARALLEL} viewers, {TERMS}-term selector)", selector_flood),
        under_load("history flood (one device, batches of 2000 future-dated reports)", history_flood)]

print(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, {DATABASE}, {DURATION:.0f} s per load; "
      f"{FLEET} enrolled devices; one legitimate device heartbeats every 100 ms through each load.\n")
print("| load | heartbeats | failed | p50 ms | p99 ms | p99 vs baseline | attack requests (statuses) | "
      "history rows stored for the attacker |")
print("|---|---:|---:|---:|---:|---:|---|---:|")
for r in rows:
    ratio = r["p99"] / base["p99"] if base["p99"] else float("nan")
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["attack_statuses"].items())) or "–"
    print(f"| {r['label']} | {r['beats']} | {r['failed']} | {r['p50']:.1f} | {r['p99']:.1f} | {ratio:.2f}x | "
          f"{r['attack_requests']} ({statuses}) | {'–' if r['history_rows'] is None else r['history_rows']} |")

g = gzip_bombs()
statuses = ", ".join(f"{k}: {v}" for k, v in sorted(g["statuses"].items()))
print(f"\nAgent under {BOMBS} parallel gzip bombs ({g['bomb_kb']} KB each, 64 MiB inflated): RSS {g['before']:.1f} MB "
      f"before, **peak {g['peak']:.1f} MB**, {g['after']:.1f} MB 5 s later; answers {statuses}; "
      f"ready afterwards: {g['healthy']}.")
