"""Drives bench/fleet.sh: one fresh server per run, `outpost sim` against it, and /proc sampling
of the server, the simulator and PostgreSQL. Sustained heartbeats/s is the server's own counter over
the steady part of the run (from one heartbeat interval after the last device enrolled to the end);
latency is what the simulated devices measured: steady-state (heartbeats sent after the last
enrollment) and over the whole run, enrollment ramp included."""

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
from benchlib import free_port, postgres_cpu  # noqa: E402

BIN = sys.argv[1]
DEVICES = int(os.environ.get("DEVICES", 10000))
INTERVAL = int(os.environ.get("INTERVAL", 30))
DURATION = int(os.environ.get("DURATION", 150))
BIG = int(os.environ.get("BIG_DEVICES", 100000))
BIG_DURATION = int(os.environ.get("BIG_DURATION", 600))
PG = os.environ.get("PG", "postgres://postgres@127.0.0.1:5432/test")
TICK = os.sysconf("SC_CLK_TCK")

# Every long-poll is a socket on both ends.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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


def enrolled(url, token):
    req = urllib.request.Request(f"{url}/v1/fleet/summary", headers={"authorization": f"Bearer {token}"})
    try:
        return json.load(urllib.request.urlopen(req, timeout=10))["devices"]
    except OSError:
        return 0


def fresh_pg_schema():
    return benchlib.fresh_pg_schema(PG, "fleetbench")


def run(label, database, devices, long_poll, duration):
    work = tempfile.mkdtemp(prefix="fleetbench-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [BIN, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{work}/data",
            "--heartbeat-interval-s", str(INTERVAL), "--max-connections", "8"]
    if database:
        args += ["--database", database]
    env = {**os.environ, "OUTPOST_LOG": "warn"}
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(f"{work}/server.log", "w"), env=env)
    deadline = time.time() + 60
    while not os.path.exists(f"{work}/data/admin.token"):
        if server.poll() is not None or time.time() > deadline:
            raise SystemExit(f"server did not start: {open(work + '/server.log').read()}")
        time.sleep(0.1)
    time.sleep(0.5)
    token = open(f"{work}/data/admin.token").read().strip()
    _, rss_idle, _ = proc_stat(server.pid)
    sim_args = [BIN, "sim", "--server", url, "--token", token, "--devices", str(devices),
                "--heartbeat-interval", f"{INTERVAL}s", "--duration", f"{duration}s", "--json",
                "--enroll-concurrency", "64"]
    if not long_poll:
        sim_args.append("--no-long-poll")
    sim = subprocess.Popen(sim_args, stdout=subprocess.PIPE, stderr=open(f"{work}/sim.log", "w"), env=env)
    start = time.time()
    enrolled_at = None
    while sim.poll() is None and time.time() < start + duration - INTERVAL - 30:
        if enrolled(url, token) >= devices:
            enrolled_at = time.time()
            break
        time.sleep(1)
    enroll_s = (enrolled_at or time.time()) - start
    steady_from = time.time() + INTERVAL
    while time.time() < steady_from and sim.poll() is None:
        time.sleep(0.5)
    cpu0, _, _ = proc_stat(server.pid)
    sim_cpu0, _, _ = proc_stat(sim.pid)
    pg_cpu0 = postgres_cpu()
    hb0, t0 = reports_received(url), time.time()
    steady_to = start + duration - 2
    rss_steady = 0.0
    while time.time() < steady_to and sim.poll() is None:
        time.sleep(1)
        _, rss_steady, _ = proc_stat(server.pid)
    cpu1, rss, hwm = proc_stat(server.pid)
    sim_cpu1, _, _ = proc_stat(sim.pid)
    pg_cpu1 = postgres_cpu()
    hb1, t1 = reports_received(url), time.time()
    out, _ = sim.communicate(timeout=300)
    server.terminate()
    server.wait(timeout=60)
    if sim.returncode != 0:
        raise SystemExit(f"sim failed: {open(work + '/sim.log').read()[-3000:]}")
    report = json.loads(out)
    wall = max(t1 - t0, 1e-3)
    return {
        "label": label, "devices": devices, "enrolled": report["enrolled"],
        "enroll_per_s": report["enrolled"] / max(enroll_s, 1e-3),
        "hb_per_s": (hb1 - hb0) / wall, "target": devices / INTERVAL, "window": wall,
        "p50": report["steady_latency_p50_ms"], "p99": report["steady_latency_p99_ms"],
        "max": report["steady_latency_max_ms"], "p99_all": report["latency_p99_ms"],
        "failed": report["heartbeats_failed"],
        "server_cpu": 100 * (cpu1 - cpu0) / wall, "sim_cpu": 100 * (sim_cpu1 - sim_cpu0) / wall,
        "pg_cpu": 100 * (pg_cpu1 - pg_cpu0) / wall if database else None,
        "rss_idle": rss_idle, "rss": rss_steady or rss, "rss_peak": hwm,
    }


rows = [
    run("SQLite", None, DEVICES, True, DURATION),
    run("SQLite, no long-poll", None, DEVICES, False, DURATION),
    run("PostgreSQL", fresh_pg_schema(), DEVICES, True, DURATION),
]
if BIG:
    rows.append(run("PostgreSQL, no long-poll", fresh_pg_schema(), BIG, False, BIG_DURATION))

print(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; server, simulator and PostgreSQL share them. "
      f"Heartbeat every {INTERVAL} s (±10 % jitter). Rate and CPU: from one interval after the last enrollment to "
      f"the end of the run. p50/p99/max: heartbeats sent after the last enrollment; p99 all: every heartbeat, "
      f"enrollment ramp included.\n")
print("| run | devices | enrolled (per s) | heartbeats/s sustained (target) | p50 ms | p99 ms | max ms | p99 all ms "
      "| failed | server CPU % | PostgreSQL CPU % | sim CPU % | server RSS MB (peak) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    pg = "–" if r["pg_cpu"] is None else f"{r['pg_cpu']:.0f}"
    print(f"| {r['label']} | {r['devices']} | {r['enrolled']} ({r['enroll_per_s']:.0f}/s) | {r['hb_per_s']:.0f} "
          f"({r['target']:.0f}) | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.1f} | {r['p99_all']:.1f} | "
          f"{r['failed']} | {r['server_cpu']:.0f} | {pg} | {r['sim_cpu']:.0f} | {r['rss']:.1f} ({r['rss_peak']:.1f}) |")
lp, nolp = rows[0], rows[1]
per = (lp["rss"] - nolp["rss"]) * 1024 * 1024 / max(DEVICES, 1)
print(f"\nIdle long-poll cost on the server: ({lp['rss']:.1f} − {nolp['rss']:.1f}) MB / {DEVICES} devices = "
      f"**{per:.0f} bytes per waiting device** (the two SQLite runs).")
