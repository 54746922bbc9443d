"""Helpers the benchmark drivers share: ports, /proc sampling, a fresh PostgreSQL schema, a
server started from a config file, and the operator API."""

import io
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid):
    """CPU seconds (user + system) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu_s(pid, name):
    """CPU seconds (user + system) of the threads of process `pid` named `name`."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def drop_pg_schema(url):
    """Drops the schema `fresh_pg_schema` made for `url`."""
    base, _, options = url.partition("?")
    schema = options.rsplit("%3D", 1)[-1]
    subprocess.run(["psql", base, "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE"], capture_output=True)


def postgres_cpu():
    """CPU seconds of every PostgreSQL process on the machine (the server and its backends)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:
            continue
        if "postgres" in head:
            fields = tail.split()
            # With the reaped children's time (the postmaster's cutime and cstime): a backend
            # that exits between two samples would otherwise take its CPU out of the total.
            total += sum(int(f) for f in fields[11:15]) / TICK
    return total


def fresh_pg_schema(pg, prefix):
    schema = prefix + "_" + secrets.token_hex(4)
    subprocess.run(["psql", pg, "-qc", f"CREATE SCHEMA {schema}"], check=True, capture_output=True)
    return f"{pg}?options=-c%20search_path%3D{schema}"


def start_server(binary, work, settings):
    """`outpost server --config` with `settings` (TOML keys, strings and numbers); returns the
    process, its URL and the bootstrap admin token."""
    os.makedirs(work, exist_ok=True)
    port = free_port()
    lines = [f'listen = "127.0.0.1:{port}"', f'data_dir = "{work}/data"']
    for k, v in settings.items():
        lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
    with open(f"{work}/server.toml", "w") as f:
        f.write("\n".join(lines) + "\n")
    env = {**os.environ, "OUTPOST_LOG": "warn"}
    log = open(f"{work}/server.log", "w")
    server = subprocess.Popen([binary, "server", "--config", f"{work}/server.toml"],
                              stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.time() + 60
    while not os.path.exists(f"{work}/data/admin.token"):
        if server.poll() is not None or time.time() > deadline:
            raise SystemExit(f"server did not start: {open(work + '/server.log').read()[-3000:]}")
        time.sleep(0.1)
    time.sleep(0.5)
    return server, f"http://127.0.0.1:{port}", open(f"{work}/data/admin.token").read().strip()


def package(name, version, size, seed):
    """A package whose model file is `size` pseudo-random bytes (the server and simulated devices
    check hashes, they do not run it)."""
    model = hashlib.shake_256(f"{name}-{seed}".encode()).digest(size)
    manifest = (f'format = 1\n\n[model]\nname = "{name}"\nversion = "{version}"\ntask = "anomaly"\n\n'
                f'[[inputs]]\nname = "window"\ndtype = "FP32"\nshape = [1, 8]\n\n'
                f'[[outputs]]\nname = "score"\ndtype = "FP32"\nshape = [1]\n\n[files]\n'
                f'"model.onnx" = "{hashlib.sha256(model).hexdigest()}"\n').encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for file, data in (("manifest.toml", manifest), ("model.onnx", model)):
            info = tarfile.TarInfo(file)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Api:
    """The operator API with a bearer token."""

    def __init__(self, url, token):
        self.url, self.token = url, token

    def call(self, method, path, body=None, raw=False):
        data = body if raw else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"authorization": f"Bearer {self.token}"})
        if data is not None:
            req.add_header("content-type", "application/octet-stream" if raw else "application/json")
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.load(r)

    def summary(self, selector):
        return self.call("GET", "/v1/fleet/summary?selector=" + urllib.parse.quote(selector))

    def metrics(self):
        return urllib.request.urlopen(f"{self.url}/metrics", timeout=30).read().decode()


def metric(text, name):
    """The value of one unlabelled series in Prometheus text, 0 when absent."""
    m = re.search(rf"^{re.escape(name)}\s+([0-9.e+-]+)", text, re.M)
    return float(m.group(1)) if m else 0.0


def histogram_quantile(text, name, q):
    """The upper bound of the bucket holding quantile `q` of a histogram in Prometheus text."""
    buckets = [(float("inf") if le == "+Inf" else float(le), float(v))
               for le, v in re.findall(rf'^{re.escape(name)}_bucket{{le="([^"]+)"}}\s+([0-9.e+-]+)', text, re.M)]
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(le for le, v in buckets if v >= q * total)
