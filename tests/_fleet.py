"""Shared pieces of the fleet tests: a served repository, toy releases, a real MQTT broker, state probes.

The repository side is the real one (``fusionedge.export.fleet.repo`` + ``.server``); devices are
real :class:`~fusionedge.sdk.fleet.agent.Agent` objects, each with its own state folder. Releases are
copies of the shared toy bundle with another manifest version (the manifest is not hashed, so the
copies stay valid bundles with distinct archive hashes) — cheap to make, no re-export.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fusionedge.sdk.bundle import sha256_file

FAST = {"onnxruntime": {"intra_op_threads": 1}}
MODEL = "student"


def release_bundle(base: Path, dest: Path, version: str) -> Path:
    """A copy of ``base`` whose manifest says ``version`` (a valid bundle with a different archive hash)."""
    out = Path(shutil.copytree(base, dest))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["version"] = version
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def bad_golden_bundle(base: Path, dest: Path, version: str) -> Path:
    """A bundle whose hashes verify but whose self-test fails: golden outputs shifted, manifest rehashed."""
    out = release_bundle(base, dest, version)
    golden = out / "golden.npz"
    with np.load(golden) as data:
        arrays = {k: data[k] for k in data.files}
    for k in arrays:
        if k.startswith("output."):
            arrays[k] = arrays[k] + np.float32(1.0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    golden.write_bytes(buf.getvalue())
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["golden.npz"] = {"sha256": sha256_file(golden), "size": golden.stat().st_size}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def running_state(state_dir: Path) -> dict:
    """What the device runs: the current/previous links and the hash of every file in the current bundle."""
    current = state_dir / "current"
    out: dict[str, Any] = {"current": os.readlink(current) if current.is_symlink() else None,
                           "previous": os.readlink(state_dir / "previous")
                           if (state_dir / "previous").is_symlink() else None}
    if current.is_symlink():
        out["files"] = {p.name: sha256_file(p) for p in sorted(current.resolve().iterdir()) if p.is_file()}
    return out


def assert_consistent(state_dir: Path, *, allow_part: bool = False) -> None:
    """What recovery must restore: links to verified bundles, no orphans, no open transaction."""
    from fusionedge.sdk.bundle import load_bundle
    from fusionedge.sdk.fleet.journal import Journal

    keep = set()
    for name in ("current", "previous"):
        link = state_dir / name
        if link.is_symlink():
            target = link.resolve()
            assert target.is_dir(), f"{name} dangles"
            load_bundle(target)  # every file verifies
            keep.add(target.name)
    store = sorted(p.name for p in (state_dir / "store").iterdir())
    assert store == sorted(keep | {f"{k}.release.json" for k in keep}), f"orphans in store: {store}"
    staging = sorted(p.name for p in (state_dir / "staging").iterdir())
    if allow_part:
        assert all(n.endswith(".part") for n in staging) and len(staging) <= 1, staging
    else:
        assert staging == [], staging
    assert Journal(state_dir / "journal.jsonl").open_transaction() is None


class FleetEnv:
    """One repository folder, served on loopback, plus helpers to publish, roll out and make devices."""

    def __init__(self, root: Path, **init_kw: Any) -> None:
        from fusionedge.export.fleet.repo import init_repository
        from fusionedge.export.fleet.server import serve

        self.root = root
        self.repo = root / "repo"
        self.trusted_root = init_repository(self.repo, **init_kw)
        self.server = serve(self.repo)
        self.url = self.server.url
        self.agents: list[Any] = []

    def publish(self, bundle: Path, version: str, **kw: Any) -> int:
        from fusionedge.export.fleet.repo import publish

        kw.setdefault("device_classes", ["x86-cpu"])
        return publish(self.repo, bundle, model=MODEL, version=version, **kw)

    def rollout(self, version: str, percent: float = 100, **kw: Any) -> dict:
        from fusionedge.export.fleet.repo import set_rollout

        return set_rollout(self.repo, model=MODEL, version=version, percent=percent, **kw)

    def agent(self, device_id: str = "dev-1", **kw: Any) -> Any:
        from fusionedge.sdk.fleet.agent import Agent

        kw.setdefault("device_class", "x86-cpu")
        kw.setdefault("model", MODEL)
        kw.setdefault("root", self.trusted_root)
        kw.setdefault("backend_options", FAST)
        kw.setdefault("timeout_s", 5.0)
        agent = Agent(self.url, device_id, kw.pop("state_dir", self.root / "devices" / device_id), **kw)
        self.agents.append(agent)
        return agent

    def metadata(self, name: str) -> dict:
        return json.loads((self.repo / "metadata" / name).read_text())

    def latest(self, role: str) -> int:
        """The version of ``role`` the current timestamp/snapshot names."""
        snap_version = self.metadata("timestamp.json")["signed"]["meta"]["snapshot.json"]["version"]
        if role == "snapshot":
            return snap_version
        return self.metadata(f"{snap_version}.snapshot.json")["signed"]["meta"][f"{role}.json"]["version"]

    def bundle_requests(self) -> list:
        return [r for r in self.server.requests if r.path.endswith("bundle.tar")]

    def close(self) -> None:
        for a in self.agents:
            a.close()
        self.server.close()


def sign_with_compromised_key(env: FleetEnv, role: str, target_path: str, src: Path,
                              custom: dict | None = None) -> None:
    """Add a target signed with the repository's own ``role`` key (a compromised signer or a bad publish).

    Uses the repository module's internal writer, so the metadata is exactly what a real signer makes.
    """
    from fusionedge.export.fleet.roles import open_repo

    with open_repo(env.repo, None, None) as state:
        state.md[role].signed.targets[target_path] = state.add_target(target_path, src, custom)
        state.commit({role}, datetime.now(timezone.utc))


def hostile_archive(base: Path, out: Path) -> Path:
    """A bundle archive with the bundle's files plus an entry that climbs out with ``..``."""
    with tarfile.open(out, "w") as tar:
        for name in ("golden.npz", "manifest.json", "model.onnx"):
            tar.add(base / name, arcname=name)
        info = tarfile.TarInfo("../../escaped.txt")
        payload = b"owned"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return out


# -------------------------------------------------------------------------------------- MQTT broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A real mosquitto broker on 127.0.0.1 and a free port, with a generated config.

    ``settings`` are config lines for the listener and its security (default: anonymous, plain TCP).
    """

    def __init__(self, workdir: Path, settings: str = "allow_anonymous true\n") -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto")
                                               else None)
        if binary is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto): the MQTT tests need a real "
                        "broker")
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\n{settings}persistence false\n"
                        f"max_queued_messages 10000\n")
        self.log = open(workdir / "mosquitto.log", "wb")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; see "
                                   f"{workdir / 'mosquitto.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.close()
            raise RuntimeError("mosquitto did not start listening within 10 s")
        self.address = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def retained_statuses(address: str, count: int, timeout: float = 10.0) -> dict[str, dict]:
    """Subscribe as a late client and collect retained device statuses until ``count`` devices were seen."""
    import paho.mqtt.client as mqtt

    host, port = address.rsplit(":", 1)
    seen: dict[str, dict] = {}
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"probe-{time.time_ns()}")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("fusionedge/devices/+/status", qos=1)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        status = json.loads(msg.payload)
        seen[status["device_id"]] = {**status, "_retained": bool(msg.retain), "_topic": msg.topic}

    client.on_message = on_message
    client.connect(host, int(port))
    client.loop_start()
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    return seen


def tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` on ``path`` (needs root); False when mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, timeout=10)


__all__ = [
    "FAST",
    "MODEL",
    "FleetEnv",
    "Mosquitto",
    "assert_consistent",
    "bad_golden_bundle",
    "free_port",
    "hostile_archive",
    "release_bundle",
    "retained_statuses",
    "running_state",
    "sign_with_compromised_key",
    "tmpfs",
    "umount",
]
