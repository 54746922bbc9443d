"""Drives bench/rollout.sh (issue 12, rollouts): a fresh `outpost server` on PostgreSQL, `outpost
sim` with DEVICES virtual devices that download, verify and report per-version windows for real,
v1 assigned to all of them, then a rollout of v2 in four waves (1 %, 10 %, 50 %, 100 %) with a bake
of BAKE seconds and two ratio gates. Per wave: devices, the time until the wave's devices ran v2
(bake start), the bake, the whole wave. For the engine, from the server's own metrics: one
evaluation (what changed in the fleet since the last tick, gates over every member's windows, step,
write) mean and p99 bucket, the pure step alone, each part's mean, database statements per
evaluation; server and PostgreSQL CPU over the rollout."""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import (Api, cpu_s, drop_pg_schema, fresh_pg_schema, histogram_quantile, metric, package,  # noqa: E402
                      postgres_cpu, start_server, thread_cpu_s)  # noqa: E402

BIN = sys.argv[1]
DEVICES = int(os.environ.get("DEVICES", 10000))
INTERVAL = int(os.environ.get("INTERVAL", 10))
BAKE = int(os.environ.get("BAKE", 10))
PG = os.environ.get("PG", "postgres://postgres@127.0.0.1:5432/test")
TIMEOUT = int(os.environ.get("TIMEOUT", 1200))
GOAL_MS = 100.0
QUIET_S = int(os.environ.get("QUIET_S", 20))
SELECTOR = "simulated=true"
# A long-poll per device is a socket on both ends: 10,000 of them beside the heartbeats' own
# connections pass this machine's 20,000 open files. Without it a device sees its new desired
# state in its next heartbeat's answer, so each wave's "until updated" includes up to one interval.
LONG_POLL_MODE = os.environ.get("LONG_POLL", "auto")  # on, off, or auto: on up to 4,000 devices
LONG_POLL = [] if LONG_POLL_MODE == "on" or (LONG_POLL_MODE == "auto" and DEVICES <= 4000) else ["--no-long-poll"]

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

work = tempfile.mkdtemp(prefix="rolloutbench-")
DATABASE = fresh_pg_schema(PG, "rolloutbench")
server, url, token = start_server(BIN, work, {
    "database": DATABASE, "heartbeat_interval_s": INTERVAL, "rollout_tick_ms": 1000,
    "device_reports_per_min": 0, "stale_after_s": 6 * INTERVAL,
})
api = Api(url, token)
for version, seed in (("1", 1), ("2", 2), ("3", 3)):
    api.call("POST", "/v1/model-packages", package("bench-det", version, 32 * 1024, seed), raw=True)

sim = subprocess.Popen([BIN, "sim", "--server", url, "--token", token, "--devices", str(DEVICES),
                        "--heartbeat-interval", f"{INTERVAL}s", "--enroll-concurrency", "64",
                        "--package-dir", f"{work}/packages", "--json"] + LONG_POLL,
                       stdout=subprocess.PIPE, stderr=open(f"{work}/sim.log", "w"),
                       env={**os.environ, "OUTPOST_LOG": "warn"})


def wait(what, check, timeout=TIMEOUT, needs_sim=True):
    start = time.time()
    while not check():
        if needs_sim and sim.poll() is not None:
            raise SystemExit(f"sim ended: {open(work + '/sim.log').read()[-3000:]}")
        if time.time() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1)
    return time.time() - start


enroll_s = wait("enrollment", lambda: api.summary(SELECTOR)["devices"] >= DEVICES)
api.call("POST", "/v1/assignments", {"selector": SELECTOR, "model": "bench-det", "version": "1"})
v1_s = wait("v1 everywhere", lambda: api.summary(SELECTOR)["by_model_version"].get("bench-det@1", 0) >= DEVICES)
# A baseline of v1 windows on every device before it changes.
time.sleep(2 * INTERVAL)

text0 = api.metrics()
cpu0, pg0, t0 = cpu_s(server.pid), postgres_cpu(), time.time()
ENGINE = "rollout-engine"  # the engine's thread (outpost-server's rollout::driver::spawn)
eng0 = thread_cpu_s(server.pid, ENGINE)
rollout = api.call("POST", "/v1/rollouts", {
    "model": "bench-det", "version": "2", "selector": SELECTOR, "waves": [1, 10, 50, 100], "bake_s": BAKE,
    "gates": ["error_rate<2x", "p99_latency<1.5x"], "min_samples": 500, "wave_deadline_s": 600,
})
rid = rollout["id"]
state = {}


def ended():
    state["r"] = api.call("GET", f"/v1/rollouts/{rid}")
    return state["r"]["state"] not in ("pending", "running")


wait("the rollout", ended)
r = state["r"]
wall = time.time() - t0
text1 = api.metrics()
cpu1, pg1 = cpu_s(server.pid), postgres_cpu()
eng1 = thread_cpu_s(server.pid, ENGINE)
if r["state"] != "completed":
    raise SystemExit(f"rollout ended {r['state']}: {r['reason']}\n{json.dumps(r, indent=1)[:4000]}")

# Every gate over every device at once: v3 to all devices in one wave with a long bake. Once it
# bakes, each evaluation judges the gates over all members' windows; timed first while the
# devices keep reporting (and the last 10 % still update), then with the simulator stopped (the
# engine alone: the devices stay online for stale_after, longer than the measurement).
whole = api.call("POST", "/v1/rollouts", {
    "model": "bench-det", "version": "3", "selector": SELECTOR, "waves": [100], "bake_s": 600,
    "gates": ["error_rate<2x", "p99_latency<1.5x"], "min_samples": 500, "wave_deadline_s": 900,
})
wait("one wave of every device baking",
     lambda: api.call("GET", f"/v1/rollouts/{whole['id']}")["waves"][0].get("bake_started_ms") is not None)

def sample():
    """Metrics, the engine thread's CPU and PostgreSQL's CPU, now."""
    return api.metrics(), thread_cpu_s(server.pid, ENGINE), postgres_cpu()


w0 = sample()
time.sleep(QUIET_S)
w1 = sample()
sim.terminate()
sim.communicate(timeout=120)
time.sleep(2)
q0 = sample()
time.sleep(QUIET_S)
q1 = sample()
whole_view = api.call("GET", f"/v1/rollouts/{whole['id']}")
api.call("POST", f"/v1/rollouts/{whole['id']}/abort")
server.terminate()
server.wait(timeout=60)
drop_pg_schema(DATABASE)
if whole_view["state"] != "running" or whole_view["waves"][0]["phase"] != "baking":
    raise SystemExit(f"the one-wave rollout left its bake: {whole_view['state']}: {whole_view['reason']}")
whole_members = whole_view["waves"][0]["devices"]


def mean_ms(before, after, name):
    n = metric(after, f"{name}_count") - metric(before, f"{name}_count")
    return 1000 * (metric(after, f"{name}_sum") - metric(before, f"{name}_sum")) / max(n, 1), n


PARTS = ("claim", "sync", "load", "members", "changes", "online", "busy", "windows", "save")


def parts(before, after):
    """Mean milliseconds of each engine part between two metric texts."""
    out = []
    for p in PARTS:
        name = f'outpost_server_rollout_part_duration_seconds_{{}}{{{{part="{p}"}}}}'
        n = metric(after, name.format("count")) - metric(before, name.format("count"))
        if n:
            out.append(f"{p} {1000 * (metric(after, name.format('sum')) - metric(before, name.format('sum'))) / n:.1f}")
    return ", ".join(out) or "none"


def delta(name):
    return metric(text1, name) - metric(text0, name)


evals = delta("outpost_server_rollout_evaluations_total")
eval_mean = 1000 * delta("outpost_server_rollout_evaluation_duration_seconds_sum") / max(delta("outpost_server_rollout_evaluation_duration_seconds_count"), 1)
step_mean = 1000 * delta("outpost_server_rollout_step_duration_seconds_sum") / max(delta("outpost_server_rollout_step_duration_seconds_count"), 1)
eval_p99 = histogram_quantile(text1, "outpost_server_rollout_evaluation_duration_seconds", 0.99)
statements = delta("outpost_server_rollout_db_statements_total")

print(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores (server, {DEVICES} simulated devices and "
      f"PostgreSQL share them); heartbeat every {INTERVAL} s, {'no ' if LONG_POLL else ''}long-poll, engine tick 1 s, bake {BAKE} s, gates "
      f"error_rate<2x and p99_latency<1.5x (min 500 samples), a 32 KiB package. Enrollment took {enroll_s:.0f} s, "
      f"v1 on every device {v1_s:.0f} s.\n")
print("| wave | devices | until updated (s) | bake (s) | wave (s) | gates at the end |")
print("|---|---:|---:|---:|---:|---|")
ends = [w.get("started_ms") for w in r["waves"][1:]] + [r["updated_ms"]]
for w, end in zip(r["waves"], ends):
    start, bake = w.get("started_ms"), w.get("bake_started_ms")
    if start is None:
        continue
    until = (bake - start) / 1000 if bake else float("nan")
    baked = (end - bake) / 1000 if bake and end else float("nan")
    gates = "; ".join(f"{g['gate']} {g['verdict']} ({g['value'] if g['value'] is None else round(g['value'], 4)} vs {g['limit'] if g['limit'] is None else round(g['limit'], 4)})" for g in w["gates"])
    print(f"| {w['index'] + 1} ({w['percent']:g} %) | {w['devices']} | {until:.1f} | {baked:.1f} | {(end - start) / 1000:.1f} | {gates or '–'} |")
print(f"\nRollout of {DEVICES} devices: {wall:.0f} s. Engine: {evals:.0f} evaluations; one evaluation "
      f"(devices stamped since the last tick, quiet devices, busy devices, new windows, gates over every member, step, write) **{eval_mean:.1f} ms mean**, "
      f"p99 ≤ {1000 * eval_p99 if eval_p99 is not None else float('nan'):.0f} ms (histogram bucket) — goal < {GOAL_MS:.0f} ms "
      f"for 10,000 devices: {eval_mean / GOAL_MS:.2f}× the goal, {'met' if eval_mean < GOAL_MS else 'missed'}; "
      f"the pure step alone {step_mean:.2f} ms; the engine thread's CPU {1000 * (eng1 - eng0) / max(evals, 1):.1f} ms per evaluation; "
      f"{statements / max(evals, 1):.1f} database statements per evaluation (lease and cache sync included). "
      f"Server CPU {100 * (cpu1 - cpu0) / wall:.0f} %, PostgreSQL CPU {100 * (pg1 - pg0) / wall:.0f} % over the rollout "
      f"(heartbeats and downloads included). Mean ms per part: {parts(text0, text1)}.")
EVAL = "outpost_server_rollout_evaluation_duration_seconds"
STEP = "outpost_server_rollout_step_duration_seconds"
for title, (a, ea, pa), (b, eb, pb) in (("while the devices report", w0, w1),
                                         ("the engine alone (simulator stopped)", q0, q1)):
    mean, n = mean_ms(a, b, EVAL)
    step, _ = mean_ms(a, b, STEP)
    # PostgreSQL's CPU is the engine's statements only when the devices are quiet.
    pg = f"; PostgreSQL {1000 * (pb - pa) / max(n, 1):.1f} ms CPU per evaluation" if "alone" in title else ""
    print(f"\nOne wave of all {whole_members} devices baking, {title}, {n:.0f} evaluations over {QUIET_S} s: "
          f"one evaluation of every gate over every member **{mean:.1f} ms mean**, {mean / GOAL_MS:.2f}× the "
          f"{GOAL_MS:.0f} ms goal ({'met' if mean < GOAL_MS else 'missed'}); the pure step {step:.2f} ms; "
          f"the engine thread's CPU {1000 * (eb - ea) / max(n, 1):.1f} ms per evaluation{pg}. "
          f"Mean ms per part: {parts(a, b)}.")
