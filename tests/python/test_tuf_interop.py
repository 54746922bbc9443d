"""TUF interoperability both ways. python-tuf's client downloads a package published to an
`outpost server` (keys from `outpost keys init`, targets signed by `outpost model publish
--keys-dir`, snapshot and timestamp signed by the server). And `outpost tuf-client` reads a
repository written by python-tuf, the reference
implementation: consistent snapshots, a target in a subdirectory, and a terminating delegated
role whose name holds a `/` (percent-encoded in file names and URLs). Flags go before or after
the subcommand; several --target-name are fetched by one client; the metadata directory keeps
only the specification's file names; a tampered target or an expired timestamp exits 1."""

import hashlib
import http.server
import shutil
import subprocess
import tarfile
import threading
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole, Delegations, MetaFile, Metadata, Root, Snapshot, TargetFile, Targets, Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from conftest import BINARY, start_server

PAYLOADS = {
    "docs/readme.txt": b"a top-level target\n",
    "vision/detector-2.opkg": b"model package bytes " * 500,
}


def write(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_repo(repo: Path, expires: datetime):
    signers = {r: CryptoSigner.generate_ed25519() for r in ["root", "targets", "snapshot", "timestamp", "vision"]}
    root = Root(expires=expires, consistent_snapshot=True)
    for role in ["root", "targets", "snapshot", "timestamp"]:
        root.add_key(signers[role].public_key, role)
    top = Targets(expires=expires)
    readme = TargetFile.from_data("docs/readme.txt", PAYLOADS["docs/readme.txt"], ["sha256"])
    top.targets[readme.path] = readme
    vkey = signers["vision"].public_key
    role = DelegatedRole(name="models/vision", keyids=[vkey.keyid], threshold=1, terminating=True, paths=["vision/*"])
    top.delegations = Delegations(keys={vkey.keyid: vkey}, roles={role.name: role})
    delegated = Targets(expires=expires)
    model = TargetFile.from_data("vision/detector-2.opkg", PAYLOADS["vision/detector-2.opkg"], ["sha256"])
    delegated.targets[model.path] = model
    snapshot = Snapshot(expires=expires)
    snapshot.meta["targets.json"] = MetaFile(1)
    snapshot.meta["models/vision.json"] = MetaFile(1)
    timestamp = Timestamp(expires=expires)
    timestamp.snapshot_meta = MetaFile(1)
    serializer = JSONSerializer(compact=False)
    for name, signed, signer in [
        ("1.root.json", root, "root"),
        ("1.targets.json", top, "targets"),
        # The client asks for `1.models%2Fvision.json`, as python-tuf does; this static server
        # decodes the `%2F` before it looks for the file.
        ("1.models/vision.json", delegated, "vision"),
        ("1.snapshot.json", snapshot, "snapshot"),
        ("timestamp.json", timestamp, "timestamp"),
    ]:
        md = Metadata(signed)
        md.sign(signers[signer])
        write(repo / "metadata" / name, md.to_bytes(serializer))
    for path, data in PAYLOADS.items():
        folder, _, file = path.rpartition("/")
        write(repo / "targets" / folder / f"{hashlib.sha256(data).hexdigest()}.{file}", data)


@pytest.fixture
def served(tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(repo))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield repo, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def client(*args, env=None):
    return subprocess.run([str(BINARY), "tuf-client", *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def test_outpost_client_reads_a_python_tuf_repository(served, tmp_path):
    repo, url = served
    meta, downloads = tmp_path / "trusted", tmp_path / "downloads"
    r = client("--metadata-dir", meta, "init", repo / "metadata" / "1.root.json")
    assert r.returncode == 0, r.stderr
    r = client("refresh", "--metadata-url", f"{url}/metadata", "--metadata-dir", meta)
    assert r.returncode == 0, r.stderr
    r = client("--metadata-dir", meta, "--metadata-url", f"{url}/metadata", "download",
               "--target-name", "docs/readme.txt", "--target-name", "vision/detector-2.opkg",
               "--target-base-url", f"{url}/targets", "--target-dir", downloads)
    assert r.returncode == 0, r.stderr
    assert (downloads / "docs%2Freadme.txt").read_bytes() == PAYLOADS["docs/readme.txt"]
    assert (downloads / "vision%2Fdetector-2.opkg").read_bytes() == PAYLOADS["vision/detector-2.opkg"]
    names = sorted(p.name for p in meta.iterdir() if p.name.endswith(".json"))
    assert names == ["models%2Fvision.json", "root.json", "snapshot.json", "targets.json", "timestamp.json"]
    assert (meta / "timestamp.json").read_bytes() == (repo / "metadata" / "timestamp.json").read_bytes()

    # A target the delegation does not cover, or one whose bytes were swapped, is a failure.
    r = client("download", "--metadata-dir", meta, "--metadata-url", f"{url}/metadata",
               "--target-name", "vision/absent.opkg", "--target-base-url", f"{url}/targets", "--target-dir", downloads)
    assert r.returncode == 1, r.stderr
    data = PAYLOADS["docs/readme.txt"]
    (repo / "targets" / "docs" / f"{hashlib.sha256(data).hexdigest()}.readme.txt").write_bytes(b"tampered\n" + data)
    (downloads / "docs%2Freadme.txt").unlink()
    r = client("download", "--metadata-dir", meta, "--metadata-url", f"{url}/metadata",
               "--target-name", "docs/readme.txt", "--target-base-url", f"{url}/targets", "--target-dir", downloads)
    assert r.returncode == 1, r.stderr
    assert not (downloads / "docs%2Freadme.txt").exists()


def test_the_client_reads_the_c_library_clock_so_faketime_expires_metadata(served, tmp_path):
    faketime = shutil.which("faketime")
    if faketime is None:
        if __import__("os").environ.get("CI"):
            raise RuntimeError("faketime is required under CI (scripts/test.sh installs Debian's faketime)")
        pytest.skip("faketime not installed")
    repo, url = served
    meta = tmp_path / "trusted"
    assert client("--metadata-dir", meta, "init", repo / "metadata" / "1.root.json").returncode == 0
    later = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("@%Y-%m-%d %H:%M:%S")
    r = subprocess.run([faketime, "-f", later, str(BINARY), "tuf-client", "--metadata-dir", str(meta),
                        "--metadata-url", f"{url}/metadata", "refresh"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "expired" in r.stderr, r.stderr
    assert client("--metadata-dir", meta, "--metadata-url", f"{url}/metadata", "refresh").returncode == 0


def run(*args, cwd=None):
    r = subprocess.run([str(BINARY), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    return r.stdout


def test_python_tuf_downloads_a_package_published_to_the_server(tmp_path):
    from tuf.ngclient import Updater

    keys, data = tmp_path / "keys", tmp_path / "data"
    run("keys", "init", "--keys-dir", keys, "--data-dir", data)
    shown = run("keys", "show", "--keys-dir", keys, "--data-dir", data)
    assert "root v1" in shown and "held in" in shown, shown
    proc, url, token = start_server(tmp_path, data=data)
    try:
        run("model", "train-demo", "--out", tmp_path / "models")
        package = tmp_path / "models" / "vibration-anomaly-1.opkg"
        out = run("model", "publish", package, "--keys-dir", keys, "--server", url, "--token", token)
        assert "TUF: targets v2 lists vibration-anomaly/vibration-anomaly-1.opkg" in out, out

        trusted = tmp_path / "python-tuf"
        trusted.mkdir()
        shutil.copy(keys / "1.root.json", trusted / "root.json")
        downloads = tmp_path / "python-downloads"
        downloads.mkdir()
        updater = Updater(metadata_dir=str(trusted), metadata_base_url=f"{url}/tuf/metadata/",
                          target_base_url=f"{url}/tuf/targets/", target_dir=str(downloads),
                          bootstrap=(keys / "1.root.json").read_bytes())
        updater.refresh()
        info = updater.get_targetinfo("vibration-anomaly/vibration-anomaly-1.opkg")
        assert info is not None and info.length == package.stat().st_size
        path = updater.download_target(info)
        assert Path(path).read_bytes() == package.read_bytes()

        # The same through outpost's own client, from the same repository.
        meta = tmp_path / "outpost-tuf"
        run("tuf-client", "--metadata-dir", meta, "init", keys / "1.root.json")
        run("tuf-client", "--metadata-dir", meta, "--metadata-url", f"{url}/tuf/metadata", "download",
            "--target-name", "vibration-anomaly/vibration-anomaly-1.opkg",
            "--target-base-url", f"{url}/tuf/targets", "--target-dir", tmp_path / "outpost-downloads")
        got = tmp_path / "outpost-downloads" / "vibration-anomaly%2Fvibration-anomaly-1.opkg"
        assert got.read_bytes() == package.read_bytes()

        # Publishing again changes nothing; a package the targets key did not sign is not listed.
        out = run("model", "publish", package, "--keys-dir", keys, "--server", url, "--token", token)
        assert "already published" in out and "targets v2" in out, out

        # A namespace delegated to a team's own keys: the team publishes `vision.cam` with only
        # those keys; both clients find it through the delegation.
        out = run("keys", "delegate", "vision", "--keys-dir", keys, "--server", url, "--token", token)
        assert "targets v3 delegates" in out and "role vision v1" in out, out
        team = tmp_path / "team-keys"
        (team / "delegated").mkdir(parents=True)
        shutil.move(keys / "delegated" / "vision.json", team / "delegated" / "vision.json")
        with tarfile.open(package) as tar:
            tar.extract("model.onnx", tmp_path / "onnx")
        cam = tmp_path / "models" / "vision.cam-1.opkg"
        run("model", "pack", tmp_path / "onnx" / "model.onnx", "--name", "vision.cam", "--task", "anomaly", "-o", cam)
        r = subprocess.run([str(BINARY), "model", "publish", cam, "--keys-dir", keys, "--server", url, "--token", token],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "delegate" in r.stderr, "the targets keys alone cannot sign into the namespace"
        out = run("model", "publish", cam, "--keys-dir", team, "--server", url, "--token", token)
        assert "TUF: role vision v2 lists vision.cam/vision.cam-1.opkg" in out, out
        shown = run("keys", "show", "--keys-dir", keys, "--data-dir", data)
        assert "delegated vision" in shown and "not here" in shown, shown
        updater = Updater(metadata_dir=str(trusted), metadata_base_url=f"{url}/tuf/metadata/",
                          target_base_url=f"{url}/tuf/targets/", target_dir=str(downloads), bootstrap=None)
        updater.refresh()
        info = updater.get_targetinfo("vision.cam/vision.cam-1.opkg")
        assert info is not None and Path(updater.download_target(info)).read_bytes() == cam.read_bytes()
        assert updater.get_targetinfo("vision.other/vision.other-1.opkg") is None
        run("tuf-client", "--metadata-dir", meta, "--metadata-url", f"{url}/tuf/metadata", "download",
            "--target-name", "vision.cam/vision.cam-1.opkg",
            "--target-base-url", f"{url}/tuf/targets", "--target-dir", tmp_path / "outpost-downloads")
        assert (tmp_path / "outpost-downloads" / "vision.cam%2Fvision.cam-1.opkg").read_bytes() == cam.read_bytes()
        assert (meta / "vision.json").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
