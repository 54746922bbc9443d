"""Drives bench/fleet_update.sh (issue 11, model delivery): a fresh `outpost server`, `outpost sim`
with DEVICES virtual devices that download for real, and one real `outpost agent`.

Phase 1: v1 (~5 MB) is published and assigned to every simulated device; each downloads the whole
package and verifies it. Phase 2: v2, a head-only fine-tune, is published and assigned; each device
rebuilds it from v1 by a delta. For both: the time from the assignment until the server sees every
device run the version, the server's egress (its own counters), its CPU seconds (/proc/PID/stat)
and its peak RSS (VmRSS sampled every 100 ms). Phase 3: the real agent alone gets v1, serves a few
requests, then gets v2 by a delta; its RSS is sampled every 10 ms (and its VmHWM, reset first
through /proc/PID/clear_refs) while it fetches and rebuilds v2, until v2's package is installed in
its model directory, then on while it loads v2 beside v1 and swaps."""

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import benchlib  # noqa: E402
from benchlib import cpu_s, free_port  # noqa: E402

BIN, WORK = sys.argv[1], sys.argv[2]
DEVICES = int(os.environ.get("DEVICES", 1000))
INTERVAL = int(os.environ.get("INTERVAL", 10))
TIMEOUT = int(os.environ.get("PHASE_TIMEOUT", 600))
MODEL = "det"
DELTA_GOAL = 0.05
RSS_GOAL_MB = 2.0

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def status_mb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1)) / 1024


class Peak:
    """Samples a process's VmRSS every `period` seconds in a thread; `.max` is the largest seen."""

    def __init__(self, pid, period):
        self.pid, self.period, self.max, self.samples = pid, period, 0.0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                rss = status_mb(self.pid, "VmRSS")
            except (OSError, AttributeError):
                return
            self.samples.append(rss)
            self.max = max(self.max, rss)
            time.sleep(self.period)

    def end(self):
        self.stop.set()
        self.thread.join()
        return self.max


class Api(benchlib.Api):
    """The operator API, with this benchmark's calls."""

    def egress(self):
        text = urllib.request.urlopen(f"{self.url}/metrics", timeout=30).read().decode()
        def counter(name):
            m = re.search(rf"^{name}\s+([0-9.e+]+)", text, re.M)
            return int(float(m.group(1))) if m else 0
        return counter("outpost_server_package_bytes_sent_total"), counter("outpost_server_delta_bytes_sent_total")

    def publish(self, path):
        with open(path, "rb") as f:
            return self.call("POST", "/v1/model-packages", f.read(), raw=True)["package"]

    def assign(self, selector, version):
        self.call("POST", "/v1/assignments", {"selector": selector, "model": MODEL, "version": version})

    def summary(self, selector):
        return self.call("GET", "/v1/fleet/summary?selector=" + urllib.parse.quote(selector))

    def devices(self, selector):
        out, cursor = [], ""
        while True:
            page = self.call("GET", f"/v1/devices?limit=1000&selector={urllib.parse.quote(selector)}"
                             + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else ""))
            out += page["items"]
            cursor = page.get("next_cursor") or ""
            if not cursor:
                return out


def runs_version(device, version):
    """The device's report says it runs `version` of the model, with nothing else on its way."""
    model = next((m for m in device["models"] if m["name"] == MODEL), None)
    return model is not None and model["version"] == version and model["state"] in ("ready", "probation") \
        and not model.get("update")


def active_count(api, selector, version, first):
    """Devices the server sees running `version`, from the cheap fleet summary. A device that runs
    no version yet reports the arriving one as its model (as the agent does), with an update row,
    so during the first install those are taken off; afterwards a device names a version only once
    it runs it."""
    s = api.summary(selector)
    key = f"{MODEL}@{version}"
    n = s["by_model_version"].get(key, 0)
    if first:
        n -= sum(s["updates_by_model_version"].get(key, {}).values())
    return n, s["updates_by_model_version"].get(key, {}).get("failed", 0)


def phase(api, server, selector, version, package_path, expect, first):
    """Publishes and assigns `version`; waits until `expect` devices run it. Its measurements."""
    egress0, cpu0 = api.egress(), cpu_s(server.pid)
    peak = Peak(server.pid, 0.1)
    package = api.publish(package_path)
    start = time.time()
    api.assign(selector, version)
    while True:
        n, failed = active_count(api, selector, version, first)
        if n >= expect:
            break
        if time.time() - start > TIMEOUT or failed:
            raise SystemExit(f"{version}: {n} of {expect} devices active, {failed} failed after {time.time() - start:.0f} s")
        time.sleep(0.25)
    took = time.time() - start
    cpu1, egress1 = cpu_s(server.pid), api.egress()
    rss = peak.end()
    running = sum(runs_version(d, version) for d in api.devices(selector))
    if running != expect:
        raise SystemExit(f"the summary counted {expect} devices on {version}, the device list {running}")
    return {"seconds": took, "whole": egress1[0] - egress0[0], "delta": egress1[1] - egress0[1],
            "cpu": cpu1 - cpu0, "rss": rss, "size": package["size_bytes"]}


def wait_for(what, check, timeout=120, period=0.01):
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(period)


def agent_phase(api, url, run, token_secret):
    """The real agent: serving v1, then v2 by a delta; its RSS (MB) in each part."""
    port = free_port()
    models = f"{run}/agent/models"
    agent = subprocess.Popen([BIN, "agent", "--server", url, "--enroll-token", token_secret,
                              "--data-dir", f"{run}/agent/data", "--model-dir", models,
                              "--listen", f"127.0.0.1:{port}", "--backend", "tract", "--probation-s", "5"],
                             stdout=subprocess.DEVNULL, stderr=open(f"{run}/agent.log", "w"),
                             env={**os.environ, "OUTPOST_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"

    def serves(version):
        try:
            with urllib.request.urlopen(f"{base}/v2/models/{MODEL}/versions/{version}/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        api.assign("bench=agent", "1")
        wait_for("the agent serving v1", lambda: serves("1"), timeout=300, period=0.1)
        body = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 64, 64], "datatype": "FP32",
                                       "data": [0.5] * (3 * 64 * 64)}]}).encode()
        for _ in range(20):
            req = urllib.request.Request(f"{base}/v2/models/{MODEL}/infer", data=body,
                                         headers={"content-type": "application/json"})
            urllib.request.urlopen(req, timeout=30).read()
        time.sleep(6)  # past v1's probation, with the post-load page-out done
        serving = Peak(agent.pid, 0.01)
        time.sleep(3)
        serving.end()
        serving_rss = sorted(serving.samples)[len(serving.samples) // 2]
        with open(f"/proc/{agent.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        egress0 = api.egress()
        applying = Peak(agent.pid, 0.01)
        api.assign("bench=agent", "2")
        installed = f"{models}/{MODEL}-2.opkg"
        wait_for("v2 installed in the agent's model directory", lambda: os.path.exists(installed), timeout=300,
                 period=0.002)
        apply_hwm = status_mb(agent.pid, "VmHWM")
        apply_peak = applying.end()
        loading = Peak(agent.pid, 0.01)
        wait_for("the agent serving v2", lambda: serves("2"), timeout=300, period=0.05)
        loading.end()
        load_hwm = status_mb(agent.pid, "VmHWM")
        egress1 = api.egress()
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    return {"serving": serving_rss, "apply_peak": max(apply_peak, apply_hwm), "apply_sampled": apply_peak,
            "apply_hwm": apply_hwm, "load_peak": max(loading.max, load_hwm),
            "whole": egress1[0] - egress0[0], "delta": egress1[1] - egress0[1]}


def main():
    run = f"{WORK}/run"
    subprocess.run(["rm", "-rf", run], check=True)
    os.makedirs(run)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OUTPOST_LOG": "warn"}
    server = subprocess.Popen([BIN, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", f"{run}/server",
                               "--heartbeat-interval-s", str(INTERVAL)],
                              stdout=subprocess.DEVNULL, stderr=open(f"{run}/server.log", "w"), env=env)
    sim = None
    try:
        wait_for("the server", lambda: os.path.exists(f"{run}/server/admin.token"), timeout=60, period=0.1)
        time.sleep(0.5)
        api = Api(url, open(f"{run}/server/admin.token").read().strip())
        sims = api.call("POST", "/v1/enrollment-tokens", {"uses": DEVICES, "labels": {"bench": "sim"}})
        agent_token = api.call("POST", "/v1/enrollment-tokens", {"uses": 1, "labels": {"bench": "agent"}})
        sim = subprocess.Popen([BIN, "sim", "--server", url, "--token", api.token, "--enroll-token", sims["secret"],
                                "--devices", str(DEVICES), "--heartbeat-interval", f"{INTERVAL}s", "--json",
                                "--package-dir", f"{run}/sim-packages"],
                               stdout=subprocess.PIPE, stderr=open(f"{run}/sim.log", "w"), env=env)
        wait_for("every simulated device to enroll", lambda: api.summary("bench=sim")["devices"] >= DEVICES,
                 timeout=300, period=1)
        time.sleep(INTERVAL + 2)  # every device past its start delay and holding a long-poll
        p1 = phase(api, server, "bench=sim", "1", f"{WORK}/det-1.opkg", DEVICES, first=True)
        p2 = phase(api, server, "bench=sim", "2", f"{WORK}/det-2.opkg", DEVICES, first=False)
        sim_rss = status_mb(sim.pid, "VmHWM")
        sim_cpu = cpu_s(sim.pid)
        sim.send_signal(signal.SIGINT)
        out, _ = sim.communicate(timeout=120)
        report = json.loads(out)
        agent = agent_phase(api, url, run, agent_token["secret"])
    finally:
        if sim and sim.poll() is None:
            sim.kill()
        server.terminate()
        server.wait(timeout=60)
    table(p1, p2, report, agent, sim_rss, sim_cpu)


def verdict(ok):
    return "PASS" if ok else "MISS"


def table(p1, p2, report, agent, sim_rss, sim_cpu):
    u = report["updates"]
    n = DEVICES
    full1, delta_total = p1["whole"] + p1["delta"], p2["whole"] + p2["delta"]
    ratio = delta_total / full1
    limit = agent["serving"] + RSS_GOAL_MB
    print(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; server (SQLite), simulator and agent share "
          f"them. {n} simulated devices (heartbeat {INTERVAL} s, long-poll) and one real agent (tract). "
          f"v1 is a {p1['size']:,}-byte package of a 5 MB ONNX detector; v2 a head-only fine-tune of it "
          f"({p2['size']:,} bytes). Egress: the server's own counters; time: from the assignment until the server "
          f"saw every device run the version.\n")
    print("| measure | measured | goal / reference | ratio | |")
    print("|---|---:|---|---:|---|")
    rows = [
        ("v1 whole: time until all devices active", f"{p1['seconds']:.1f} s", "–", "", ""),
        ("v1 server egress", f"{full1:,} B ({full1 / n:,.0f} per device)", f"{n} × package = {n * p1['size']:,} B",
         f"{full1 / (n * p1['size']):.3f}", ""),
        ("v1 server CPU / peak RSS", f"{p1['cpu']:.1f} s / {p1['rss']:.1f} MB", "–", "", ""),
        ("v2 delta: time until all devices active", f"{p2['seconds']:.1f} s", f"v1 whole: {p1['seconds']:.1f} s",
         f"{p2['seconds'] / p1['seconds']:.2f}", ""),
        ("v2 server egress (plans + blobs; whole packages)",
         f"{delta_total:,} B ({delta_total / n:,.0f} per device; {p2['whole']:,} whole)",
         f"≤ 5 % of v1's full egress ({full1:,} B)", f"{100 * ratio:.2f} %", verdict(ratio <= DELTA_GOAL)),
        ("v2 server CPU / peak RSS", f"{p2['cpu']:.1f} s / {p2['rss']:.1f} MB",
         f"v1: {p1['cpu']:.1f} s / {p1['rss']:.1f} MB", f"{p2['cpu'] / max(p1['cpu'], 1e-3):.2f} (CPU)", ""),
        ("simulated devices: time to active, device side (both phases)",
         f"p50 {u['time_to_active_p50_ms'] / 1000:.2f} s, p99 {u['time_to_active_p99_ms'] / 1000:.2f} s, "
         f"max {u['time_to_active_max_ms'] / 1000:.2f} s", "–", "", ""),
        ("simulated downloads: whole / delta / verify failures / fallbacks / failed",
         f"{u['downloads_full']} / {u['downloads_delta']} / {u['verify_failures']} / {u['delta_fallbacks']} / {u['failed']}",
         f"{n} / {n} / 0 / 0 / 0", "",
         verdict((u['downloads_full'], u['downloads_delta'], u['verify_failures'], u['failed']) == (n, n, 0, 0))),
        ("bytes the devices received = server egress", f"{u['bytes_full'] + u['bytes_delta']:,} B",
         f"{full1 + delta_total:,} B", f"{(u['bytes_full'] + u['bytes_delta']) / (full1 + delta_total):.3f}", ""),
        ("simulator process: peak RSS / CPU", f"{sim_rss:.1f} MB / {sim_cpu:.1f} s", "–", "", ""),
        ("agent RSS serving v1", f"{agent['serving']:.1f} MB", "–", "", ""),
        ("agent peak RSS applying the v2 delta (fetch, rebuild, verify, install)",
         f"{agent['apply_peak']:.1f} MB (sampled {agent['apply_sampled']:.1f}, VmHWM {agent['apply_hwm']:.1f})",
         f"≤ serving + 2 MB = {limit:.1f} MB", f"+{agent['apply_peak'] - agent['serving']:.2f} MB",
         verdict(agent['apply_peak'] <= limit)),
        ("agent peak RSS loading v2 beside v1 and swapping", f"{agent['load_peak']:.1f} MB", "–",
         f"+{agent['load_peak'] - agent['serving']:.2f} MB", ""),
        ("agent's v2 download (server egress)", f"{agent['delta']:,} B delta, {agent['whole']:,} B whole",
         f"package {p2['size']:,} B", f"{100 * (agent['delta'] + agent['whole']) / p2['size']:.2f} %", ""),
    ]
    for r in rows:
        print("| " + " | ".join(r) + " |")


main()
