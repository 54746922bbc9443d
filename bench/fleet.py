"""Drives bench/fleet.sh: one fresh server per run, `outpost sim` against it, and /proc sampling
of both processes. Sustained heartbeats/s is the server's own counter over the steady part of the
run (after every device enrolled); latency is what the simulated devices measured."""

import json
import os
import re
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = sys.argv[1]
DEVICES = int(os.environ.get("DEVICES", 10000))
INTERVAL = int(os.environ.get("INTERVAL", 30))
DURATION = int(os.environ.get("DURATION", 150))
BIG = int(os.environ.get("BIG_DEVICES", 100000))
PG = os.environ.get("PG", "postgres://postgres@127.0.0.1:5432/test")
TICK = os.sysconf("SC_CLK_TCK")

# Every long-poll is a socket on both ends.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid):
    """(cpu seconds, rss MB, peak rss MB) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    status = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    return cpu, rss, hwm


def reports_received(url):
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    m = re.search(r"^outpost_server_reports_received_total\S*\s+([0-9.e+]+)", text, re.M)
    return float(m.group(1)) if m else 0.0


def fresh_pg_schema():
    schema = "fleetbench_" + secrets.token_hex(4)
    subprocess.run(["psql", PG, "-qc", f"CREATE SCHEMA {schema}"], check=True, capture_output=True)
    return f"{PG}?options=-c%20search_path%3D{schema}"


def run(label, database, devices, long_poll):
    work = tempfile.mkdtemp(prefix="fleetbench-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [BIN, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{work}/data",
            "--heartbeat-interval-s", str(INTERVAL), "--max-connections", "8"]
    if database:
        args += ["--database", database]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(f"{work}/server.log", "w"), env={**os.environ, "OUTPOST_LOG": "warn"})
    deadline = time.time() + 60
    while not os.path.exists(f"{work}/data/admin.token"):
        if server.poll() is not None or time.time() > deadline:
            raise SystemExit(f"server did not start: {open(work + '/server.log').read()}")
        time.sleep(0.1)
    time.sleep(0.5)
    token = open(f"{work}/data/admin.token").read().strip()
    _, rss_idle, _ = proc_stat(server.pid)
    sim_args = [BIN, "sim", "--server", url, "--token", token, "--devices", str(devices),
                "--heartbeat-interval", f"{INTERVAL}s", "--duration", f"{DURATION}s", "--json",
                "--enroll-concurrency", "64"]
    if not long_poll:
        sim_args.append("--no-long-poll")
    sim = subprocess.Popen(sim_args, stdout=subprocess.PIPE, stderr=open(f"{work}/sim.log", "w"), env={**os.environ, "OUTPOST_LOG": "warn"})
    # Steady state: from one heartbeat interval after enrollment finished to the end of the run.
    start = time.time()
    steady_from = start + min(DURATION / 2, max(INTERVAL * 1.5, 20))
    while time.time() < steady_from and sim.poll() is None:
        time.sleep(0.5)
    cpu0, _, _ = proc_stat(server.pid)
    sim_cpu0, _, _ = proc_stat(sim.pid)
    hb0, t0 = reports_received(url), time.time()
    steady_to = start + DURATION - 2
    rss_steady = 0.0
    while time.time() < steady_to and sim.poll() is None:
        time.sleep(1)
        _, rss_steady, _ = proc_stat(server.pid)
    cpu1, rss, hwm = proc_stat(server.pid)
    sim_cpu1, _, _ = proc_stat(sim.pid)
    hb1, t1 = reports_received(url), time.time()
    out, _ = sim.communicate(timeout=120)
    server.terminate()
    server.wait(timeout=60)
    if sim.returncode != 0:
        raise SystemExit(f"sim failed: {open(work + '/sim.log').read()[-3000:]}")
    report = json.loads(out)
    wall = t1 - t0
    return {
        "label": label, "devices": devices, "long_poll": long_poll,
        "enrolled": report["enrolled"], "hb_per_s": (hb1 - hb0) / wall,
        "target_hb_per_s": devices / INTERVAL,
        "p50": report["latency_p50_ms"], "p99": report["latency_p99_ms"], "max": report["latency_max_ms"],
        "failed": report["heartbeats_failed"], "ok": report["heartbeats_ok"],
        "server_cpu": 100 * (cpu1 - cpu0) / wall, "sim_cpu": 100 * (sim_cpu1 - sim_cpu0) / wall,
        "rss_idle": rss_idle, "rss": rss_steady or rss, "rss_peak": hwm,
    }


rows = []
rows.append(run("SQLite", None, DEVICES, True))
rows.append(run("SQLite, no long-poll", None, DEVICES, False))
rows.append(run("PostgreSQL", fresh_pg_schema(), DEVICES, True))
if BIG:
    rows.append(run("PostgreSQL, no long-poll", fresh_pg_schema(), BIG, False))

print(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, server and simulator on the same machine; "
      f"heartbeat every {INTERVAL} s (±10 % jitter), {DURATION} s per run.\n")
print("| run | devices | enrolled | heartbeats/s sustained (target) | p50 ms | p99 ms | max ms | failed | server CPU % | sim CPU % | server RSS MB (peak) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['label']} | {r['devices']} | {r['enrolled']} | {r['hb_per_s']:.0f} ({r['target_hb_per_s']:.0f}) | {r['p50']:.2f} | {r['p99']:.2f} | "
          f"{r['max']:.1f} | {r['failed']} | {r['server_cpu']:.0f} | {r['sim_cpu']:.0f} | {r['rss']:.1f} ({r['rss_peak']:.1f}) |")
lp, nolp = rows[0], rows[1]
per = (lp["rss"] - nolp["rss"]) * 1024 * 1024 / max(DEVICES, 1)
print(f"\nIdle long-poll cost on the server: ({lp['rss']:.1f} − {nolp['rss']:.1f}) MB / {DEVICES} devices = **{per:.0f} bytes per waiting device** (SQLite runs).")
