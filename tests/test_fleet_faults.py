"""The fault and attack matrix of device updates.

Every test installs release 1 on a device, then attacks or breaks release 2 (or the metadata) and
asserts the exact outcome AND that the running model — the ``current`` link and the hash of every
file it points to — is untouched. Faults are real where they can be (a served repository, tampered
files, a stalled HTTP server, a full tmpfs, ``kill -9`` of a real agent process); the two seams that
are simulated say so: the engine build failure (a fake backend) and, where mounting is not permitted,
disk-full (an ``ENOSPC`` raised at the download's write seam).
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from _fleet import (
    FleetEnv,
    assert_consistent,
    bad_golden_bundle,
    hostile_archive,
    release_bundle,
    running_state,
    sign_with_compromised_key,
    tmpfs,
    umount,
)
from _toy_model import shared_toy_bundle
from fusionedge.sdk import backends as backends_module
from fusionedge.sdk.backends.base import Backend
from fusionedge.sdk.bundle import sha256_file
from fusionedge.sdk.errors import BackendError, DownloadError, VerificationError


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def releases(toy, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    return {"0.1.0": release_bundle(toy, root / "v1", "0.1.0"),
            "0.2.0": release_bundle(toy, root / "v2", "0.2.0"),
            "bad": bad_golden_bundle(toy, root / "bad", "0.2.0")}


class Installed:
    """A repository with release 1 rolled out to 100% and one device that installed it."""

    def __init__(self, env: FleetEnv, releases: dict[str, Path], **init_kw) -> None:
        self.env = env
        self.releases = releases
        env.publish(releases["0.1.0"], "0.1.0")
        env.rollout("0.1.0")
        self.agent = env.agent("dev-1")
        outcome = self.agent.check_once()
        assert outcome.action == "updated", outcome
        self.state = self.agent.state_dir
        self.before = running_state(self.state)
        self.v1_sha = Path(self.before["current"]).name

    def publish_v2(self, bundle: str = "0.2.0", *, rollout: bool = True, **kw) -> int:
        release = self.env.publish(self.releases[bundle], "0.2.0", **kw)
        if rollout:
            self.env.rollout("0.2.0")
        return release

    def v2_target(self) -> dict:
        snap = self.env.latest("targets")
        targets = self.env.metadata(f"{snap}.targets.json")["signed"]["targets"]
        return targets["models/student/0.2.0/bundle.tar"]

    def assert_untouched(self) -> None:
        assert running_state(self.state) == self.before, "the running model changed"
        assert_consistent(self.state, allow_part=True)


@pytest.fixture
def installed(tmp_path, releases):
    env = FleetEnv(tmp_path)
    try:
        yield Installed(env, releases)
    finally:
        env.close()


def _check(installed: Installed, action: str, error: type | None, match: str | None = None, agent=None):
    outcome = (agent or installed.agent).check_once()
    assert outcome.action == action, outcome
    if error is None:
        assert outcome.error is None
    else:
        assert type(outcome.error) is error, outcome.error
        if match is not None:
            assert match in str(outcome.error), str(outcome.error)
    status = json.loads((installed.state / "status.json").read_text())
    assert status["state"] == action and status["running"] == outcome.running
    return outcome


# ------------------------------------------------------------------------------------ target bytes


def test_tampered_target_bytes_are_refused_and_discarded(installed):
    from fusionedge.export.fleet.server import Fault

    installed.publish_v2()
    info = installed.v2_target()
    real = (installed.env.repo / "targets" / "models" / "student" / "0.2.0" /
            f"{info['hashes']['sha256']}.bundle.tar").read_bytes()
    tampered = bytearray(real)
    tampered[len(real) // 2] ^= 0x01
    installed.env.server.inject(Fault("/targets/*bundle.tar", "override", body=bytes(tampered), times=None))
    _check(installed, "failed", VerificationError, "does not match the signed length and hashes")
    installed.assert_untouched()
    assert list((installed.state / "staging").iterdir()) == [], "unverified bytes were kept"


def test_target_longer_than_signed_length_is_cut_off(installed):
    from fusionedge.export.fleet.server import Fault

    installed.publish_v2()
    info = installed.v2_target()
    real = (installed.env.repo / "targets" / "models" / "student" / "0.2.0" /
            f"{info['hashes']['sha256']}.bundle.tar").read_bytes()
    installed.env.server.inject(Fault("/targets/*bundle.tar", "override", body=real + b"\0" * 4096))
    _check(installed, "failed", DownloadError, f"more than the signed {info['length']} bytes")
    installed.assert_untouched()
    assert list((installed.state / "staging").iterdir()) == []
    _check(installed, "updated", None)  # the fault is gone: the real bytes install


def test_truncated_download_resumes_with_a_range_request(installed):
    from fusionedge.export.fleet.server import Fault

    installed.publish_v2()
    installed.env.server.inject(Fault("/targets/*bundle.tar", "truncate", after_bytes=100_000))
    _check(installed, "failed", DownloadError)
    installed.assert_untouched()
    (part,) = (installed.state / "staging").iterdir()
    assert part.name.endswith(".part") and part.stat().st_size == 100_000
    _check(installed, "updated", None)
    ranged = [r for r in installed.env.bundle_requests() if r.range]
    assert [(r.range, r.status) for r in ranged] == [("bytes=100000-", 206)]
    assert ranged[0].sent == installed.v2_target()["length"] - 100_000


def test_stalled_download_times_out_and_resumes(installed):
    from fusionedge.export.fleet.server import Fault

    installed.publish_v2()
    installed.env.server.inject(Fault("/targets/*bundle.tar", "stall", after_bytes=65536, seconds=30))
    agent = installed.env.agent("dev-1", state_dir=installed.state, timeout_s=0.5)
    t0 = time.monotonic()
    _check(installed, "failed", DownloadError, "stalled", agent=agent)
    assert time.monotonic() - t0 < 20, "the 30 s stall was not cut short by the 0.5 s read timeout"
    installed.assert_untouched()
    _check(installed, "updated", None, agent=agent)
    assert [r.range for r in installed.env.bundle_requests()] == [None, None, "bytes=65536-"]


@pytest.mark.parametrize("pattern", ["/metadata/timestamp.json", "/targets/*bundle.tar"])
def test_a_mirror_dripping_headers_cannot_hold_the_agent_past_its_deadline(installed, pattern):
    """One byte a second never trips a read timeout; the total deadline must end the request anyway."""
    import threading

    from fusionedge.export.fleet.server import Fault

    installed.publish_v2()
    installed.env.server.inject(Fault(pattern, "drip", seconds=0.5, times=None))
    agent = installed.env.agent("dev-1", state_dir=installed.state, timeout_s=1.0)
    outcomes: list = []
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: outcomes.append(agent.check_once()), daemon=True)
    worker.start()
    worker.join(timeout=15)  # the dripped response takes minutes; the deadline is ~1 s
    elapsed = time.monotonic() - t0
    assert not worker.is_alive(), f"the agent was still held by the dripping mirror after {elapsed:.0f} s"
    (outcome,) = outcomes
    assert outcome.action == "failed" and type(outcome.error) is DownloadError, outcome
    assert "headers not complete within 1 s" in str(outcome.error), str(outcome.error)
    assert elapsed < 8, f"gave up after {elapsed:.1f} s, expected about timeout_s (1 s)"
    installed.assert_untouched()
    # the state lock was released: the same folder updates as soon as the mirror behaves
    installed.env.server.clear_faults()
    _check(installed, "updated", None, agent=installed.env.agent("dev-1", state_dir=installed.state))


def test_a_dripping_body_is_cut_at_the_download_deadline_and_resumes(installed):
    """Headers on time, then one byte every 0.2 s: the deadline (timeout + length / min rate) ends it."""
    from fusionedge.export.fleet.server import Fault

    installed.publish_v2()
    installed.env.server.inject(Fault("/targets/*bundle.tar", "drip", after_bytes=100_000, seconds=0.2))
    agent = installed.env.agent("dev-1", state_dir=installed.state, timeout_s=1.0, min_rate_bps=1 << 20)
    t0 = time.monotonic()
    _check(installed, "failed", DownloadError, "not finished by its deadline", agent=agent)
    assert time.monotonic() - t0 < 6, "the dripping body held the agent past its deadline"
    installed.assert_untouched()
    (part,) = (installed.state / "staging").iterdir()
    kept = part.stat().st_size
    assert part.suffix == ".part" and kept >= 100_000  # what arrived is kept
    _check(installed, "updated", None, agent=agent)
    assert installed.env.bundle_requests()[-1].range == f"bytes={kept}-"


def test_disk_full_while_downloading_leaves_nothing_half_installed(installed, tmp_path):
    installed.publish_v2()
    staging = installed.state / "staging"
    mounted = tmpfs(staging, "96k")  # smaller than the ~235 KB archive
    try:
        if mounted:
            agent = installed.agent
        else:  # not root: inject ENOSPC at the download's write seam (a named fault injection)
            def enospc():
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            agent = installed.env.agent("dev-1", state_dir=installed.state,
                                        fault_hooks={"download:chunk": enospc})
        _check(installed, "failed", DownloadError, "disk full", agent=agent)
        installed.assert_untouched()
        assert list(staging.iterdir()) == [], "the partial download was not removed to free the space"
    finally:
        if mounted:
            umount(staging)
    _check(installed, "updated", None)


# --------------------------------------------------------------------------------------- metadata


def test_unsigned_metadata_is_refused(installed):
    from fusionedge.export.fleet.server import Fault

    installed.publish_v2()
    ts = installed.env.metadata("timestamp.json")
    ts["signed"]["version"] += 1  # content changed after signing
    installed.env.server.inject(Fault("/metadata/timestamp.json", "override", body=json.dumps(ts).encode()))
    _check(installed, "failed", VerificationError, "not signed by enough trusted keys")
    installed.assert_untouched()
    assert installed.env.bundle_requests()[1:] == [], "a release was fetched on unverified metadata"


def test_metadata_under_threshold_is_refused(tmp_path, releases):
    from fusionedge.export.fleet.repo import refresh_timestamp
    from fusionedge.export.fleet.server import Fault

    env = FleetEnv(tmp_path, thresholds={"timestamp": 2})
    try:
        inst = Installed(env, releases)
        refresh_timestamp(env.repo)
        ts = env.metadata("timestamp.json")
        assert len(ts["signatures"]) == 2
        ts["signatures"] = ts["signatures"][:1]  # one valid signature of the two required
        env.server.inject(Fault("/metadata/timestamp.json", "override", body=json.dumps(ts).encode()))
        _check(inst, "failed", VerificationError, "not signed by enough trusted keys")
        inst.assert_untouched()
        _check(inst, "up-to-date", None)  # the properly signed timestamp passes
    finally:
        env.close()


def test_expired_metadata_is_refused(installed):
    from fusionedge.export.fleet.repo import refresh_timestamp

    installed.publish_v2()
    refresh_timestamp(installed.env.repo, now=datetime.now(timezone.utc) - timedelta(days=2))
    _check(installed, "failed", VerificationError, "expired metadata")
    installed.assert_untouched()
    assert installed.env.bundle_requests()[1:] == [], "a release was fetched on expired metadata"


def test_frozen_timestamp_is_refused_once_it_expires(installed):
    """A freeze: the server keeps serving the same (valid) timestamp; the device notices at expiry."""
    from fusionedge.export.fleet.repo import refresh_timestamp

    refresh_timestamp(installed.env.repo, now=datetime.now(timezone.utc) - timedelta(days=1, seconds=-5))
    _check(installed, "up-to-date", None)  # still valid for ~5 s
    expires = datetime.fromisoformat(installed.env.metadata("timestamp.json")["signed"]["expires"]
                                     .replace("Z", "+00:00"))
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.5)  # frozen meanwhile
    _check(installed, "failed", VerificationError, "expired metadata")
    installed.assert_untouched()


def test_metadata_rollback_to_an_older_timestamp_is_refused(installed):
    from fusionedge.export.fleet.repo import refresh_timestamp
    from fusionedge.export.fleet.server import Fault

    old = (installed.env.repo / "metadata" / "timestamp.json").read_bytes()
    refresh_timestamp(installed.env.repo)
    _check(installed, "up-to-date", None)  # the device now trusts the newer timestamp
    installed.env.server.inject(Fault("/metadata/timestamp.json", "override", body=old, times=None))
    _check(installed, "failed", VerificationError, "rollback")
    installed.assert_untouched()


def test_mix_and_match_of_metadata_versions_is_refused(installed):
    from fusionedge.export.fleet.server import Fault

    old_targets = installed.env.latest("targets")
    old = (installed.env.repo / "metadata" / f"{old_targets}.targets.json").read_bytes()
    installed.publish_v2()
    new_targets = installed.env.latest("targets")
    assert new_targets > old_targets
    installed.env.server.inject(Fault(f"/metadata/{new_targets}.targets.json", "override", body=old,
                                      times=None))
    _check(installed, "failed", VerificationError, "targets")
    installed.assert_untouched()
    assert installed.env.bundle_requests()[1:] == []


def test_oversized_metadata_is_refused(installed):
    from fusionedge.export.fleet.server import Fault

    installed.env.server.inject(Fault("/metadata/timestamp.json", "override", body=b" " * 20_000 + b"{}"))
    _check(installed, "failed", DownloadError, "more bytes than allowed")
    installed.assert_untouched()


def test_rollback_to_a_lower_release_counter_is_refused(installed):
    installed.publish_v2()
    assert installed.agent.check_once().action == "updated"
    at_v2 = running_state(installed.state)
    installed.env.rollout("0.1.0")  # validly signed, but release 1 < the installed release 2
    _check(installed, "failed", VerificationError, "rollback to an older release refused")
    assert running_state(installed.state) == at_v2
    assert installed.agent.current_release().release == 2


def test_rollout_record_naming_another_release_is_refused(installed):
    """Mix-and-match between records: a rollout signed for release 5 names the target of release 2."""
    installed.publish_v2(rollout=False)
    record = {"model": "student", "version": "0.2.0", "release": 5, "percent": 100, "cohorts": [],
              "paused": False, "salt": "ab" * 16, "issued": "2026-11-26T18:00:00Z", "seq": 9}
    src = installed.env.root / "student.json"
    src.write_text(json.dumps(record))
    sign_with_compromised_key(installed.env, "rollouts", "rollouts/student.json", src)
    _check(installed, "failed", VerificationError, "mix-and-match refused")
    installed.assert_untouched()


def test_path_traversal_in_a_target_name_is_refused(installed):
    record = {"model": "student", "version": "../../../../etc", "release": 2, "percent": 100, "cohorts": [],
              "paused": False, "salt": "cd" * 16, "issued": "2026-11-26T18:00:00Z", "seq": 9}
    src = installed.env.root / "student.json"
    src.write_text(json.dumps(record))
    sign_with_compromised_key(installed.env, "rollouts", "rollouts/student.json", src)
    _check(installed, "failed", VerificationError, "path traversal")
    installed.assert_untouched()
    assert installed.env.bundle_requests()[1:] == []


def test_path_traversal_inside_a_signed_archive_is_refused(installed, toy):
    """A signed (compromised targets key) archive with a ``..`` entry passes TUF but not unpacking."""
    from fusionedge.export.fleet.repo import set_rollout

    archive = hostile_archive(toy, installed.env.root / "hostile.tar")
    sha = sha256_file(archive)
    custom = {"fusionedge": {"model": "student", "version": "0.2.0", "release": 2, "bundle_sha256": sha,
                             "compat": {"device_classes": ["x86-cpu"], "min_sdk": "0.1.0",
                                        "backends": ["onnxruntime"], "precision": "fp32"}, "engines": {}}}
    sign_with_compromised_key(installed.env, "targets", "models/student/0.2.0/bundle.tar", archive, custom)
    set_rollout(installed.env.repo, model="student", version="0.2.0", percent=100)
    _check(installed, "failed", VerificationError, "climbs out of the bundle")
    installed.assert_untouched()
    root = installed.env.root
    assert list(root.rglob("escaped.txt")) == [] and list(root.parent.glob("escaped.txt")) == []
    assert list((installed.state / "staging").iterdir()) == []


def test_an_archive_whose_manifest_is_not_the_pinned_one_is_refused(installed, releases):
    """Swapped labels pass every file hash and the golden test; only the release's pinned digest sees them."""
    from _tamper import edit_manifest
    from fusionedge.export.fleet.repo import set_rollout
    from fusionedge.sdk.bundle import load_bundle
    from fusionedge.sdk.bundle_archive import pack_bundle

    pinned = load_bundle(releases["0.2.0"]).digest
    swapped = Path(shutil.copytree(releases["0.2.0"], installed.env.root / "swapped"))
    edit_manifest(swapped, lambda m: m["labels"]["events"].reverse())
    assert load_bundle(swapped).digest != pinned  # still a valid bundle, another manifest
    archive = pack_bundle(swapped, installed.env.root / "swapped.tar")
    custom = {"fusionedge": {"model": "student", "version": "0.2.0", "release": 2,
                             "bundle_sha256": sha256_file(archive), "digest": pinned,
                             "compat": {"device_classes": ["x86-cpu"], "min_sdk": "0.1.0",
                                        "backends": ["onnxruntime"], "precision": "fp32"}, "engines": {}}}
    sign_with_compromised_key(installed.env, "targets", "models/student/0.2.0/bundle.tar", archive, custom)
    set_rollout(installed.env.repo, model="student", version="0.2.0", percent=100)
    _check(installed, "failed", VerificationError, "not the one the release pins")
    installed.assert_untouched()
    assert sorted(p.name for p in (installed.state / "store").iterdir()) == sorted(
        [installed.v1_sha, f"{installed.v1_sha}.release.json"]), "the unpinned bundle was left in the store"


# ---------------------------------------------------------------------------------- compatibility


@pytest.mark.parametrize("publish_kw, message", [
    ({"device_classes": ["jetson-orin"]}, "built for device classes ['jetson-orin'], not 'x86-cpu'"),
    ({"min_sdk": "99.0.0"}, "needs fusionedge >= 99.0.0"),
    ({"backends": ["tensorrt"]}, "needs one of the backends ['tensorrt']"),
], ids=["device-class", "min-sdk", "backend"])
def test_incompatible_release_is_not_downloaded(installed, publish_kw, message):
    installed.publish_v2(**publish_kw)
    _check(installed, "incompatible", VerificationError, message)
    installed.assert_untouched()
    assert installed.env.bundle_requests()[1:] == [], "an incompatible release was downloaded"


# ----------------------------------------------------------------------------------- health check


def test_failing_self_test_rolls_back_and_is_never_retried(installed):
    installed.publish_v2("bad", self_test=False)  # a model the device rejects
    outcome = _check(installed, "rolled-back", VerificationError, "self-test on onnxruntime")
    assert "differs from the golden outputs" in str(outcome.error)
    installed.assert_untouched()
    (bad,) = installed.agent.bad_releases()
    assert (bad["model"], bad["version"], bad["release"]) == ("student", "0.2.0", 2)
    downloads = len(installed.env.bundle_requests())
    _check(installed, "skipped-bad", None)
    assert len(installed.env.bundle_requests()) == downloads, "a bad release was fetched again"
    installed.assert_untouched()


class FakeTensorRT(Backend):
    """A FAKE TensorRT backend whose engine build always fails (no TensorRT on this machine)."""

    name = "fake-tensorrt"

    def _load_impl(self, model_path, io):
        raise BackendError("fake-tensorrt: engine build failed: out of GPU memory (simulated)")

    def _infer_impl(self, feeds):  # pragma: no cover - never loaded
        raise AssertionError

    def _close_impl(self):
        pass


def test_engine_build_failure_rolls_back(installed, monkeypatch):
    monkeypatch.setitem(backends_module._REGISTRY, "fake-tensorrt", FakeTensorRT)
    installed.publish_v2()
    agent = installed.env.agent("dev-1", state_dir=installed.state, backends=("fake-tensorrt", "onnxruntime"))
    _check(installed, "rolled-back", VerificationError, "preferred backend 'fake-tensorrt' failed to load",
           agent=agent)
    installed.assert_untouched()
    assert [b["release"] for b in agent.bad_releases()] == [2]


def test_latency_budget_is_enforced(installed):
    installed.publish_v2()
    agent = installed.env.agent("dev-1", state_dir=installed.state, latency_budget_ms=1e-6)
    _check(installed, "rolled-back", VerificationError, "exceeds the budget", agent=agent)
    installed.assert_untouched()


# ----------------------------------------------------------------------------------------- kill -9

_KILLER = textwrap.dedent("""
    import os, signal, sys
    from fusionedge.sdk.fleet.agent import Agent
    url, state, root, point = sys.argv[1:5]
    agent = Agent(url, "dev-1", state, device_class="x86-cpu", model="student", root=root, timeout_s=5.0,
                  backend_options={"onnxruntime": {"intra_op_threads": 1}},
                  fault_hooks={point: lambda: os.kill(os.getpid(), signal.SIGKILL)})
    print(agent.check_once().action, flush=True)  # never reached
""")


def _kill_at(installed: Installed, point: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLER, installed.env.url, str(installed.state),
                           str(installed.env.trusted_root), point],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("point, after_recover", [
    ("download:chunk", "v1"), ("verify", "v1"), ("install", "v1"), ("health", "v1"), ("commit", "v1"),
    ("commit:switched", "v2"),
])
def test_kill_9_at_each_step_then_recover(installed, point, after_recover):
    installed.publish_v2()
    _kill_at(installed, point)
    agent = installed.env.agent("dev-1", state_dir=installed.state)
    actions = agent.recover()
    assert actions, "recovery found nothing to do after a kill"
    assert_consistent(installed.state, allow_part=point in ("download:chunk", "verify"))
    if after_recover == "v1":
        assert running_state(installed.state) == installed.before
    else:  # the link had switched: the commit is finished, the old model kept as previous
        now = running_state(installed.state)
        assert Path(now["previous"]).name == installed.v1_sha
        assert now["current"] != installed.before["current"]
        assert agent.current_release().version == "0.2.0"
    assert agent.recover() == [], "recovery is idempotent"
    outcome = agent.check_once()
    assert outcome.action == ("updated" if after_recover == "v1" else "up-to-date"), outcome
    assert outcome.running == "student@0.2.0" and agent.bad_releases() == []
    assert_consistent(installed.state)
    assert Path(running_state(installed.state)["previous"]).name == installed.v1_sha


def test_repeated_crash_in_health_check_marks_the_release_bad(installed):
    installed.publish_v2()
    agent = installed.env.agent("dev-1", state_dir=installed.state)
    _kill_at(installed, "health")
    agent.recover()
    assert agent.bad_releases() == []  # one crash may be a power cut
    _kill_at(installed, "health")
    agent.recover()
    assert [b["release"] for b in agent.bad_releases()] == [2]
    assert agent.check_once().action == "skipped-bad"
    assert running_state(installed.state) == installed.before
    assert_consistent(installed.state)
