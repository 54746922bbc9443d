"""Starts a real `outpost agent` over a model directory holding the demo model the project
trains itself and a real YOLOv8n detector packed from a PyPI wheel, for tritonclient tests."""

import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("OUTPOST_BIN", REPO / "target" / "debug" / "outpost"))
MODELS = REPO / "target" / "models"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, url, log_path, timeout=120):
    """Waits for the agent at `url` to report ready; kills it and raises with its log otherwise."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("agent did not become ready: " + log_path.read_text())
        time.sleep(0.2)


def run(*args):
    subprocess.run([str(BINARY), *map(str, args)], check=True, cwd=REPO)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    run("model", "train-demo", "--out", d)
    yolo = MODELS / "yolov8n-320.onnx"
    if not yolo.exists():
        raise RuntimeError(f"{yolo} is missing: run scripts/fetch-models.sh first")
    run("model", "pack", yolo, "--name", "yolov8n", "--version", "3", "--task", "detection",
        "--backend", "tract", "--selftest-cases", "1", "--symbol", "height=320", "--symbol", "width=320", "--out", d / "yolov8n-3.opkg")
    (d / "broken.opkg").write_bytes(b"not a package")
    return d


@pytest.fixture(scope="session")
def golden(model_dir):
    """Golden vectors of the demo model, read straight from its package."""
    with tarfile.open(model_dir / "vibration-anomaly-1.opkg") as tar:
        return json.load(tar.extractfile("selftest.json"))


@pytest.fixture(scope="session")
def agent(model_dir):
    port = free_port()
    log = open(model_dir.parent / "agent.log", "w")
    proc = subprocess.Popen(
        [str(BINARY), "agent", "--listen", f"127.0.0.1:{port}", "--model-dir", str(model_dir),
         "--max-body-bytes", str(4 << 20), "--queue-capacity", "8"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"127.0.0.1:{port}"
    wait_ready(proc, url, model_dir.parent / "agent.log")
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "agent did not shut down cleanly on SIGTERM"


def start_server(tmp_path, database=None, data=None):
    """Starts `outpost server` on a free port; returns (process, URL, admin token)."""
    port = free_port()
    data = data or tmp_path / "data"
    args = [str(BINARY), "server", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)]
    if database:
        args += ["--database", database]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200 and (data / "admin.token").exists():
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("server did not start: " + (tmp_path / "server.log").read_text())
        time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}", (data / "admin.token").read_text().strip()
