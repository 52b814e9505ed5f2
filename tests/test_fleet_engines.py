"""Prebuilt engines in fleet updates: the agent fetches the signed plan for its device fingerprint.

The repository, the server, TUF and the agent are real. One seam is simulated and named as such:
the device's engine fingerprint (a TensorRT backend computes it from the GPU, TensorRT version and
bundle; there is no GPU here), so :func:`fake_fingerprint` returns a fixed string, and the "plans"
are random bytes — the agent treats a plan as an opaque signed file, and the health check runs on
onnxruntime.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _fleet import FleetEnv, assert_consistent, release_bundle, running_state
from _toy_model import shared_toy_bundle
from fusionedge.sdk.bundle import Bundle, load_bundle
from fusionedge.sdk.errors import BackendError, DownloadError, InputError, VerificationError
from fusionedge.sdk.fleet.journal import STEPS, Journal

FP = "fake-sm87-trt10.3-fp16"  # a FAKE device fingerprint (what a TensorRT backend would compute)
OTHER_FP = "fake-sm90-trt10.3-fp16"


def fake_fingerprint(value: str | None, calls: list | None = None):
    """The SIMULATED fingerprint seam: returns ``value`` for any bundle (no TensorRT / GPU here)."""

    def fingerprint(bundle: Bundle) -> str | None:
        if calls is not None:
            calls.append(bundle)
        return value

    return fingerprint


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def releases(toy, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine-releases")
    rng = np.random.default_rng(7)
    out = {v: release_bundle(toy, root / v, v) for v in ("0.1.0", "0.2.0")}
    for name, size in ((FP, 300_000), (OTHER_FP, 120_000)):
        out[name] = root / f"{name}.plan"
        out[name].write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return out


@pytest.fixture
def env(tmp_path):
    e = FleetEnv(tmp_path)
    yield e
    e.close()


def _engines(releases) -> dict[str, Path]:
    return {FP: releases[FP], OTHER_FP: releases[OTHER_FP]}


def _plan_requests(env: FleetEnv) -> list:
    return [r for r in env.server.requests if r.path.endswith(".plan")]


def _steps(state: Path) -> list[tuple[str, str]]:
    return [(r["step"], r["phase"]) for r in Journal(state / "journal.jsonl").records()]


class Installed:
    """Release 0.1.0 (no engines) installed on a device whose (fake) fingerprint is FP."""

    def __init__(self, env: FleetEnv, releases: dict[str, Path]) -> None:
        self.env = env
        env.publish(releases["0.1.0"], "0.1.0")
        env.rollout("0.1.0")
        self.agent = env.agent("dev-1", engine_fingerprint=fake_fingerprint(FP))
        assert self.agent.check_once().action == "updated"
        self.state = self.agent.state_dir
        self.before = running_state(self.state)
        env.publish(releases["0.2.0"], "0.2.0", engines=_engines(releases))
        env.rollout("0.2.0")

    def assert_untouched(self) -> None:
        assert running_state(self.state) == self.before, "the running model changed"
        assert not (self.agent.current_path / "engines").exists()
        assert_consistent(self.state, allow_part=True)


@pytest.fixture
def installed(env, releases) -> Installed:
    return Installed(env, releases)


# ---------------------------------------------------------------------------------------- matching


def test_matching_engine_lands_in_the_bundle_before_the_health_check(env, releases):
    env.publish(releases["0.1.0"], "0.1.0", engines=_engines(releases))
    env.rollout("0.1.0")
    seen_at_health: list[bytes] = []
    calls: list[Bundle] = []

    def at_health() -> None:
        seen_at_health.append((agent.store_dir / calls[0].path.name / "engines" / f"{FP}.plan").read_bytes())

    agent = env.agent("dev-1", engine_fingerprint=fake_fingerprint(FP, calls),
                      fault_hooks={"health": at_health})
    outcome = agent.check_once()
    assert outcome.action == "updated" and outcome.ok, outcome
    rel = agent.current_release()
    assert rel.engines == {FP: f"models/student/0.1.0/engines/{FP}.plan",
                           OTHER_FP: f"models/student/0.1.0/engines/{OTHER_FP}.plan"}
    # the callable saw the installed, uncommitted store entry
    assert [b.path for b in calls] == [agent.store_dir / rel.sha256]
    signed = releases[FP].read_bytes()
    assert seen_at_health == [signed], "the plan was not in place when the health check ran"
    plan = agent.current_path / "engines" / f"{FP}.plan"
    assert plan.read_bytes() == signed
    assert sorted(p.name for p in plan.parent.iterdir()) == [f"{FP}.plan"]
    assert outcome.health["engine"] == {"fingerprint": FP, "prebuilt": True, "sidecar": False}
    assert "engine" in outcome.timings
    # the plan was fetched by its content-addressed name, once; the other device's plan never
    (req,) = _plan_requests(env)
    assert req.path.endswith(f"/engines/{hashlib.sha256(signed).hexdigest()}.{FP}.plan") and req.status == 200
    # verify=True tolerates files in engines/ that the manifest does not list
    assert load_bundle(agent.current_path, verify=True).engines_dir == plan.parent
    assert_consistent(agent.state_dir)
    steps = _steps(agent.state_dir)
    every = [(s, p) for s in STEPS for p in ("begin", "end")]
    at = every.index(("health", "begin"))
    assert steps == [("check", "begin"), *every[:at], ("engine", "begin"), ("engine", "end"), *every[at:],
                     ("check", "end")]
    records = Journal(agent.state_dir / "journal.jsonl").records()
    engine_end = [r for r in records if r["step"] == "engine"][-1]
    assert engine_end["bytes"] == len(signed) and engine_end["path"] == f"engines/{FP}.plan"


def test_tampered_plan_bytes_fail_the_update_and_the_running_model_stays(installed, releases):
    from fusionedge.export.fleet.server import Fault

    real = releases[FP].read_bytes()
    tampered = bytearray(real)
    tampered[len(real) // 2] ^= 0x01
    installed.env.server.inject(Fault("/targets/*.plan", "override", body=bytes(tampered), times=None))
    outcome = installed.agent.check_once()
    assert outcome.action == "failed" and type(outcome.error) is VerificationError, outcome
    assert "does not match the signed length and hashes" in str(outcome.error)
    installed.assert_untouched()
    assert list((installed.state / "staging").iterdir()) == [], "unverified plan bytes were kept"
    assert installed.agent.bad_releases() == [], "a transport fault must not mark the release bad"
    assert _steps(installed.state)[-3:] == [("engine", "begin"), ("engine", "fail"), ("check", "end")]
    installed.env.server.clear_faults()
    outcome = installed.agent.check_once()  # retried: the real bytes install
    assert outcome.action == "updated" and outcome.running == "student@0.2.0", outcome
    assert (installed.agent.current_path / "engines" / f"{FP}.plan").read_bytes() == real


def test_truncated_plan_download_fails_then_resumes(installed, releases):
    from fusionedge.export.fleet.server import Fault

    installed.env.server.inject(Fault("/targets/*.plan", "truncate", after_bytes=100_000))
    outcome = installed.agent.check_once()
    assert outcome.action == "failed" and type(outcome.error) is DownloadError, outcome
    installed.assert_untouched()
    (part,) = (installed.state / "staging").iterdir()
    assert part.name == f"{hashlib.sha256(releases[FP].read_bytes()).hexdigest()}.part"
    assert part.stat().st_size == 100_000
    assert installed.agent.check_once().action == "updated"
    ranges = [(r.range, r.status) for r in _plan_requests(installed.env)]
    assert ranges == [(None, 200), ("bytes=100000-", 206)]
    assert (installed.agent.current_path / "engines" / f"{FP}.plan").read_bytes() == releases[FP].read_bytes()
    assert_consistent(installed.state)


# -------------------------------------------------------------------------------------- no engine


@pytest.mark.parametrize("fingerprint", ["fake-other-device", None])
def test_no_matching_fingerprint_installs_without_engines(env, releases, fingerprint):
    env.publish(releases["0.1.0"], "0.1.0", engines=_engines(releases))
    env.rollout("0.1.0")
    agent = env.agent("dev-1", engine_fingerprint=fake_fingerprint(fingerprint))
    outcome = agent.check_once()
    assert outcome.action == "updated", outcome
    assert outcome.health["engine"] == {"fingerprint": fingerprint, "prebuilt": False}
    assert not (agent.current_path / "engines").exists() and _plan_requests(env) == []
    assert "engine" not in {s for s, _ in _steps(agent.state_dir)}
    assert_consistent(agent.state_dir)


def test_a_failing_fingerprint_seam_goes_on_without_an_engine(env, releases):
    def broken(bundle: Bundle) -> str:  # SIMULATED: the device cannot be queried
        raise BackendError("cudaGetDeviceProperties(0) failed (simulated)")

    env.publish(releases["0.1.0"], "0.1.0", engines=_engines(releases))
    env.rollout("0.1.0")
    agent = env.agent("dev-1", engine_fingerprint=broken)
    outcome = agent.check_once()
    assert outcome.action == "updated" and _plan_requests(env) == []
    assert outcome.health["engine"]["prebuilt"] is False and "simulated" in outcome.health["engine"]["error"]
    with pytest.raises(InputError, match="engine_fingerprint must be a callable"):
        env.agent("dev-2", engine_fingerprint="fake-fp")


def test_without_a_fingerprint_callable_nothing_changes(env, releases):
    env.publish(releases["0.1.0"], "0.1.0", engines=_engines(releases))
    env.rollout("0.1.0")
    agent = env.agent("dev-1")
    outcome = agent.check_once()
    assert outcome.action == "updated" and "engine" not in outcome.health and "engine" not in outcome.timings
    assert not (agent.current_path / "engines").exists() and _plan_requests(env) == []
    every = [(s, p) for s in STEPS for p in ("begin", "end")]
    assert _steps(agent.state_dir) == [("check", "begin"), *every, ("check", "end")]


# ----------------------------------------------------------------------------------------- kill -9

_KILLER = textwrap.dedent("""
    import os, signal, sys
    from fusionedge.sdk.fleet.agent import Agent
    url, state, root, point, fp = sys.argv[1:6]
    agent = Agent(url, "dev-1", state, device_class="x86-cpu", model="student", root=root, timeout_s=5.0,
                  backend_options={"onnxruntime": {"intra_op_threads": 1}},
                  engine_fingerprint=lambda bundle: fp,  # the SIMULATED fingerprint seam
                  fault_hooks={point: lambda: os.kill(os.getpid(), signal.SIGKILL)})
    print(agent.check_once().action, flush=True)  # never reached
""")


@pytest.mark.parametrize("point", ["engine:chunk", "engine"])
def test_kill_9_in_the_engine_step_then_recover(installed, releases, point):
    proc = subprocess.run([sys.executable, "-c", _KILLER, installed.env.url, str(installed.state),
                           str(installed.env.trusted_root), point, FP],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    agent = installed.agent
    actions = agent.recover()
    assert any("interrupted at engine" in a for a in actions), actions
    installed.assert_untouched()
    plan_sha = hashlib.sha256(releases[FP].read_bytes()).hexdigest()
    staging = [p.name for p in (installed.state / "staging").iterdir()]
    assert staging == [f"{plan_sha}.part"], staging  # kept to resume (verified again before any use)
    assert agent.recover() == [], "recovery is idempotent"
    outcome = agent.check_once()
    assert outcome.action == "updated" and agent.bad_releases() == [], outcome
    assert (agent.current_path / "engines" / f"{FP}.plan").read_bytes() == releases[FP].read_bytes()
    assert_consistent(installed.state)
    assert os.readlink(installed.state / "previous") == installed.before["current"]


def test_plan_with_its_sidecar_passes_the_tensorrt_backends_fingerprint_gate(env, releases, tmp_path):
    """A plan built by `fusionedge engine build` (plan + sidecar) reaches the device with its sidecar, and
    the TensorRT backend's own gate (check_fingerprint) accepts it there. The fingerprint values are
    given explicitly (no GPU or TensorRT to query here); everything else is the real code."""
    import json

    from fusionedge.sdk.engine_fingerprint import check_fingerprint, device_fingerprint

    manifest = load_bundle(releases["0.1.0"]).manifest
    fp = device_fingerprint(manifest, compute_capability="8.7", trt_version="10.3.0", l4t="36.4.0")
    plan = tmp_path / f"{fp.key}.plan"
    plan.write_bytes(releases[FP].read_bytes())
    plan.with_suffix(".json").write_text(json.dumps({
        "fingerprint": fp.to_dict(), "key": fp.key,
        "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest()}))
    env.publish(releases["0.1.0"], "0.1.0", engines={fp.key: plan})
    env.rollout("0.1.0")
    agent = env.agent("dev-1", engine_fingerprint=fake_fingerprint(fp.key))
    outcome = agent.check_once()
    assert outcome.action == "updated" and outcome.health["engine"]["sidecar"] is True, outcome
    placed = agent.current_path / "engines" / f"{fp.key}.plan"
    assert placed.with_suffix(".json").read_bytes() == plan.with_suffix(".json").read_bytes()
    assert check_fingerprint(placed, fp) == fp
    assert_consistent(agent.state_dir)
