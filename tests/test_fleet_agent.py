"""The device agent on the happy paths: install, A/B layout, eligibility, journal, status, hot swap, CLI."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import shutil
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from _fleet import (
    FAST,
    FleetEnv,
    Mosquitto,
    assert_consistent,
    bad_golden_bundle,
    free_port,
    release_bundle,
    retained_statuses,
    running_state,
)
from _toy_model import TOY_GEOMETRY, shared_toy_bundle
from fusionedge.sdk.errors import BundleError, InputError, UpdateError, VerificationError
from fusionedge.sdk.fleet.agent import Agent, Rollout, bucket, is_eligible
from fusionedge.sdk.fleet.hotswap import HotSwapPerception
from fusionedge.sdk.fleet.journal import STEPS, Journal


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def releases(toy, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    out = {v: release_bundle(toy, root / v, v) for v in ("0.1.0", "0.2.0", "0.3.0")}
    out["bad"] = bad_golden_bundle(toy, root / "bad", "0.2.0")
    return out


@pytest.fixture
def env(tmp_path):
    e = FleetEnv(tmp_path)
    yield e
    e.close()


def _rollout(percent: float = 10.0, cohorts=(), paused=False, salt="00" * 16) -> Rollout:
    return Rollout(model="student", version="0.2.0", release=2, percent=percent, cohorts=tuple(cohorts),
                   paused=paused, salt=salt, seq=1, issued="")


# ---------------------------------------------------------------------------------------- installing


def test_first_install_builds_the_a_b_layout_and_journals_every_step(env, releases):
    env.publish(releases["0.1.0"], "0.1.0")
    env.rollout("0.1.0")
    agent = env.agent("dev-1")
    outcome = agent.check_once()
    assert outcome.action == "updated" and outcome.ok and outcome.running == "student@0.1.0"
    assert outcome.health["backend"] == "onnxruntime" and outcome.health["self_test_max_abs_err"] < 1e-4
    assert set(outcome.timings) >= {"refresh", "download", "verify", "install", "health", "commit"}
    state = agent.state_dir
    rel = agent.current_release()
    assert (rel.model, rel.version, rel.release) == ("student", "0.1.0", 1)
    assert os.readlink(state / "current") == f"store/{rel.sha256}" and not (state / "previous").exists()
    assert sorted(p.name for p in (state / "store").iterdir()) == [rel.sha256, f"{rel.sha256}.release.json"]
    assert_consistent(state)
    # the store entry is the archive that was signed: its name is the archive's sha256
    archive = env.repo / "targets" / "models" / "student" / "0.1.0" / f"{rel.sha256}.bundle.tar"
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == rel.sha256
    records = Journal(state / "journal.jsonl").records()
    steps = [(r["step"], r["phase"]) for r in records]
    every_step = [(s, p) for s in STEPS for p in ("begin", "end")]
    assert steps == [("check", "begin"), *every_step, ("check", "end")]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    status = json.loads((state / "status.json").read_text())
    keys = ("device_id", "state", "model", "version", "release", "running", "error")
    assert {k: status[k] for k in keys} == {
        "device_id": "dev-1", "state": "updated", "model": "student", "version": "0.1.0", "release": 1,
        "running": "student@0.1.0", "error": None}
    assert status["health"]["latency_ms_median"] > 0


def test_up_to_date_check_downloads_nothing(env, releases):
    env.publish(releases["0.1.0"], "0.1.0")
    env.rollout("0.1.0")
    agent = env.agent("dev-1")
    assert agent.check_once().action == "updated"
    before = running_state(agent.state_dir)
    assert agent.check_once().action == "up-to-date"
    assert len(env.bundle_requests()) == 1 and running_state(agent.state_dir) == before


def test_updates_keep_previous_and_collect_older_store_entries(env, releases):
    agent = env.agent("dev-1")
    shas = []
    for version in ("0.1.0", "0.2.0", "0.3.0"):
        env.publish(releases[version], version)
        env.rollout(version)
        outcome = agent.check_once()
        assert outcome.action == "updated" and outcome.running == f"student@{version}"
        shas.append(agent.current_release().sha256)
    state = agent.state_dir
    assert os.readlink(state / "current") == f"store/{shas[2]}"
    assert os.readlink(state / "previous") == f"store/{shas[1]}"
    assert sorted(p.name for p in (state / "store").iterdir() if p.is_dir()) == sorted(shas[1:])
    assert_consistent(state)


def test_no_rollout_paused_and_not_eligible(env, releases):
    env.publish(releases["0.1.0"], "0.1.0")
    agent = env.agent("dev-1")
    assert agent.check_once().action == "no-rollout"
    record = env.rollout("0.1.0", percent=100, paused=True)
    assert agent.check_once().action == "paused"
    env.rollout("0.1.0", percent=0, paused=False)
    outcome = agent.check_once()
    assert outcome.action == "not-eligible" and outcome.running is None and outcome.release.release == 1
    assert bucket(record["salt"], "dev-1") >= 0  # percent 0: nobody outside a cohort
    env.rollout("0.1.0", percent=0, cohorts=["canary"])
    canary = env.agent("dev-2", cohort="canary")
    assert canary.check_once().action == "updated"
    assert agent.check_once().action == "not-eligible"
    assert env.bundle_requests() and all(r.path.endswith("bundle.tar") for r in env.bundle_requests())
    assert len(env.bundle_requests()) == 1


def test_bucket_follows_the_contract_formula_and_never_shrinks():
    salt, device = "a1b2c3", "cam-042"
    digest = hashlib.sha256(f"{salt}:{device}".encode()).digest()
    assert bucket(salt, device) == int.from_bytes(digest[:8], "big") / 2**64 * 100
    devices = [f"dev-{i:03d}" for i in range(400)]
    eligible = {p: {d for d in devices if is_eligible(_rollout(p), d, None)} for p in (10, 50, 100)}
    assert eligible[10] <= eligible[50] <= eligible[100] == set(devices)
    assert 20 <= len(eligible[10]) <= 60 and 160 <= len(eligible[50]) <= 240  # uniform buckets
    assert is_eligible(_rollout(0, cohorts=["canary"]), "x", "canary")
    assert not is_eligible(_rollout(100, paused=True), "x", None)
    other_salt = {d for d in devices if is_eligible(_rollout(10, salt="ff" * 16), d, None)}
    assert other_salt != eligible[10], "a new release's salt reshuffles who goes first"


class _RecordingStop:
    """A real stop object for Agent.run: records each wait instead of sleeping, never set."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return False

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False


def test_devices_started_together_do_not_poll_together(env):
    """A fleet rebooted at once must spread its checks: each device's waits are jittered by its id."""
    interval = 60.0
    schedules = {}
    for device in ("cam-001", "cam-002", "cam-003"):
        stop = _RecordingStop()
        env.agent(device).run(interval, max_checks=4, stop=stop)  # no rollout: each check is quick
        schedules[device] = stop.waits
    for waits in schedules.values():
        assert len(waits) == 3 and all(0.75 * interval <= w <= 1.2 * interval for w in waits), waits
    firsts = sorted(w[0] for w in schedules.values())
    assert firsts[-1] - firsts[0] > 0.01 * interval, f"devices wait in step: {schedules}"
    assert max(schedules["cam-001"]) - min(schedules["cam-001"]) > 0.01 * interval, "a fixed interval"
    stop = _RecordingStop()
    env.agent("cam-001", state_dir=env.root / "again").run(interval, max_checks=4, stop=stop)
    assert all(abs(x - y) < 0.5 for x, y in zip(stop.waits, schedules["cam-001"])), "not seeded by device id"


def test_poll_jitter_spreads_a_fleet_over_the_whole_band():
    from statistics import pstdev

    from fusionedge.sdk.fleet.decision import poll_intervals

    interval, jitter = 300.0, 0.2
    firsts = [next(poll_intervals(f"dev-{i:04d}", interval, jitter)) for i in range(2000)]
    assert min(firsts) >= interval * (1 - jitter) and max(firsts) <= interval * (1 + jitter)
    assert max(firsts) - min(firsts) > 0.38 * interval  # the band is used end to end
    # uniform on +-20%: standard deviation 0.2 / sqrt(3) = 11.5% of the interval
    assert 0.105 * interval < pstdev(firsts) < 0.125 * interval
    per_minute = [sum(1 for f in firsts if lo <= f < lo + 6) for lo in range(240, 360, 6)]
    assert max(per_minute) < 2.5 * len(firsts) / len(per_minute), per_minute  # no burst
    a, b = poll_intervals("cam-7", interval), poll_intervals("cam-7", interval)
    assert [next(a) for _ in range(5)] == [next(b) for _ in range(5)]
    assert next(poll_intervals("cam-7", interval, 0.0)) == interval
    with pytest.raises(InputError, match="jitter"):
        poll_intervals("cam-7", interval, 1.5)
    with pytest.raises(InputError, match="interval_s"):
        poll_intervals("cam-7", 0)


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_an_agent_updates_from_a_mirror_on_ipv6_loopback(env, releases):
    from fusionedge.export.fleet.server import serve

    env.publish(releases["0.1.0"], "0.1.0")
    env.rollout("0.1.0")
    with serve(env.repo, host="::1") as mirror:
        agent = Agent(mirror.url, "dev-v6", env.root / "v6", device_class="x86-cpu", model="student",
                      root=env.trusted_root, backend_options=FAST, timeout_s=5.0)
        with agent:
            outcome = agent.check_once()
        assert outcome.action == "updated" and outcome.running == "student@0.1.0", outcome
        assert any(r.path.endswith("bundle.tar") and r.status == 200 for r in mirror.requests)


def test_bad_arguments_are_refused(env, tmp_path):
    for kw, message in (({"device_id": "dev/1"}, "device id"), ({"device_id": "dev+#"}, "device id"),
                        ({"model": "../x"}, "model"), ({"backends": ()}, "backends"),
                        ({"fault_hooks": {"nowhere": print}}, "unknown fault hook")):
        args = {"device_id": "dev-1", **kw}
        with pytest.raises(InputError, match=message):
            env.agent(**args)
    with pytest.raises(InputError, match="url must start with http"):
        Agent("ftp://x", "d", tmp_path / "s", device_class="x86-cpu", model="student", root=env.trusted_root)
    with pytest.raises(UpdateError, match="cannot read the trusted root metadata"):
        Agent(env.url, "d", tmp_path / "s", device_class="x86-cpu", model="student")


def test_a_second_agent_on_the_same_state_folder_is_refused(env, releases):
    env.publish(releases["0.1.0"], "0.1.0")
    env.rollout("0.1.0")
    agent = env.agent("dev-1")
    fd = os.open(agent.state_dir / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(UpdateError, match="another agent is running"):
            agent.check_once()
    finally:
        os.close(fd)
    assert agent.check_once().action == "updated"


def test_failed_activation_after_commit_is_rolled_back(env, releases):
    env.publish(releases["0.1.0"], "0.1.0")
    env.rollout("0.1.0")
    assert env.agent("dev-1").check_once().action == "updated"
    calls = []

    def refuse(path: Path) -> None:
        calls.append(path)
        assert (path / "manifest.json").is_file()
        raise BundleError("the application could not start the new model")

    agent = env.agent("dev-1", on_commit=refuse)
    before = running_state(agent.state_dir)
    env.publish(releases["0.2.0"], "0.2.0")
    env.rollout("0.2.0")
    outcome = agent.check_once()
    assert outcome.action == "rolled-back" and isinstance(outcome.error, VerificationError)
    assert "activation after commit failed" in str(outcome.error) and len(calls) == 1
    assert running_state(agent.state_dir)["current"] == before["current"]
    assert [b["version"] for b in agent.bad_releases()] == ["0.2.0"]
    assert_consistent(agent.state_dir)
    assert agent.check_once().action == "skipped-bad"


# ------------------------------------------------------------------------------------------ journal


def test_journal_drops_a_torn_last_line_and_finds_the_open_transaction(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    t1 = j.new_txn()
    j.begin(t1, "check")
    j.end(t1, "check", outcome="up-to-date")
    t2 = j.new_txn()
    j.begin(t2, "check")
    j.begin(t2, "download", sha256="ab" * 32)
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"seq": 5, "txn": "' + t2.encode() + b'", "step": "down')  # torn by a crash
    j2 = Journal(tmp_path / "journal.jsonl")
    assert (tmp_path / "journal.jsonl").read_bytes().endswith(b"\n")
    txn = j2.open_transaction()
    assert txn.txn == t2 and txn.interrupted_step == "download" and txn.value("sha256") == "ab" * 32
    record = j2.end(t2, "download")
    assert record["seq"] == 5 and len(j2.records()) == 5
    j2.end(t2, "check", outcome="failed")
    assert j2.open_transaction() is None


def test_journal_rotates_only_between_transactions(tmp_path):
    j = Journal(tmp_path / "journal.jsonl", max_bytes=200)
    t = j.new_txn()
    j.begin(t, "check", pad="x" * 300)
    assert not j.rotate_if_large(), "an open transaction must stay in the live journal"
    j.end(t, "check")
    assert j.rotate_if_large()
    assert (tmp_path / "journal.jsonl.1").is_file() and j.records() == []
    with pytest.raises(UpdateError, match="unknown phase"):
        j.append(t, "check", "maybe")


# --------------------------------------------------------------------------------------------- MQTT


def test_status_is_published_retained_to_a_real_broker(env, releases, tmp_path):
    broker = Mosquitto(tmp_path)
    try:
        env.publish(releases["0.1.0"], "0.1.0")
        env.rollout("0.1.0")
        agent = env.agent("cam-7", mqtt=broker.address)
        assert agent.check_once().action == "updated"
        assert agent.status.flush(5.0) and agent.status.publish_errors == 0
        seen = retained_statuses(broker.address, 1)  # subscribes after the fact: retained
        status = seen["cam-7"]
        assert status["_retained"] and status["_topic"] == "fusionedge/devices/cam-7/status"
        assert (status["state"], status["model"], status["version"], status["release"]) == \
            ("updated", "student", "0.1.0", 1)
        assert status["health"]["self_test_max_abs_err"] < 1e-4 and status["error"] is None and status["ts"]
    finally:
        broker.close()


def test_an_unreachable_broker_never_breaks_an_update(env, releases):
    env.publish(releases["0.1.0"], "0.1.0")
    env.rollout("0.1.0")
    agent = env.agent("dev-1", mqtt=f"127.0.0.1:{free_port()}")  # nothing listens there
    assert agent.check_once().action == "updated"
    assert json.loads((agent.state_dir / "status.json").read_text())["state"] == "updated"
    assert not agent.status.flush(0.5)  # queued, undelivered, and no exception
    agent.close()


# ----------------------------------------------------------------------------------------- hot swap


def _inputs(rng: np.random.Generator) -> dict:
    g = TOY_GEOMETRY
    return {"video": rng.integers(0, 256, (g.clip_frames, 40, 64, 3), dtype=np.uint8),
            "audio": rng.uniform(-0.5, 0.5, g.audio_samples).astype(np.float32), "sample_rate": g.sample_rate}


def test_hot_swap_under_a_running_inference_loop_drops_nothing(releases):
    live = HotSwapPerception.load(releases["0.1.0"], backend_options=FAST)
    results: dict[int, list[str]] = {0: [], 1: []}  # per inference thread, the model of each result
    errors, stop = [], threading.Event()
    rng = np.random.default_rng(0)
    inputs = [_inputs(rng) for _ in range(4)]

    def loop(k: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                results[k].append(live.infer(**inputs[i % 4]).model)
            except Exception as e:  # noqa: BLE001 - any failure is what the test looks for
                errors.append(e)
            i += 1

    def wait_until(condition) -> None:
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)

    threads = [threading.Thread(target=loop, args=(k,)) for k in results]
    for t in threads:
        t.start()
    wait_until(lambda: min(len(r) for r in results.values()) >= 10)
    t0 = time.perf_counter()
    assert live.swap_to(releases["0.2.0"]).result(timeout=60) == "toy@0.2.0"
    swap_s = time.perf_counter() - t0
    wait_until(lambda: min(r.count("toy@0.2.0") for r in results.values()) >= 10)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [], errors
    for seq in results.values():  # each thread: old model, then new model, nothing failed or out of order
        first_new = seq.index("toy@0.2.0")
        assert first_new >= 10 and seq == ["toy@0.1.0"] * first_new + ["toy@0.2.0"] * (len(seq) - first_new)
    assert live.swaps == 1 and live.model == "toy@0.2.0"
    total = sum(len(r) for r in results.values())
    print(f"\nhot swap: {swap_s * 1e3:.1f} ms to load+self-test+switch under load; "
          f"{total} inferences, 0 failed")
    live.close()


def test_a_bundle_that_fails_its_self_test_is_not_swapped_in(releases):
    with HotSwapPerception.load(releases["0.1.0"], backend_options=FAST) as live:
        future = live.swap_to(releases["bad"])
        with pytest.raises(BundleError, match="differs from the golden outputs"):
            future.result(timeout=60)
        assert live.model == "toy@0.1.0" and live.swaps == 0
        assert live.infer(**_inputs(np.random.default_rng(1))).model == "toy@0.1.0"


def test_a_swapped_in_bundle_shows_boxes_by_its_own_calibrated_thresholds(releases, tmp_path):
    """A later bundle's calibration decides its boxes (not the first model's threshold), unless the
    server was given one threshold for every class."""
    from fusionedge.sdk.calibration import Calibration
    from fusionedge.sdk.fileio import write_json_atomic
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS

    bundle = tmp_path / "calibrated"
    shutil.copytree(releases["0.2.0"], bundle)
    own = {c: 0.0 if c == "car" else 1.0 for c in OBJECTS}  # cars from any score, nothing else
    dim = len(EVENTS) + len(AUDIO_TAGS)
    cal = Calibration(temperature=1.0, tag_thresholds={t: 0.5 for t in AUDIO_TAGS}, class_means=np.zeros((4, dim)),
                      covariance=np.eye(dim), threshold=1e12, threshold_events_only=1e12, target_rate=0.05,
                      validation={"samples": 1}, detection_thresholds=own, fitted_objects=("car",))
    manifest = json.loads((bundle / "manifest.json").read_text())
    write_json_atomic(bundle / "manifest.json", {**manifest, "calibration": cal.to_manifest()})
    with HotSwapPerception.load(releases["0.1.0"], backend_options=FAST, top_k=10_000) as live:
        assert live.active.detection_thresholds == {c: 0.3 for c in OBJECTS}  # no calibration: 0.3
        assert live.swap_to(bundle).result(timeout=60) == "toy@0.2.0"
        assert live.active.detection_thresholds == own
        assert {d.label for d in live.infer(**_inputs(np.random.default_rng(2))).boxes} == {"car"}
    with HotSwapPerception.load(releases["0.1.0"], backend_options=FAST, score_threshold=0.2) as live:
        live.swap_to(bundle).result(timeout=60)
        assert live.active.detection_thresholds == {c: 0.2 for c in OBJECTS}


def test_agent_commit_hot_swaps_the_running_model(env, releases):
    env.publish(releases["0.1.0"], "0.1.0")
    env.rollout("0.1.0")
    first = env.agent("dev-1")
    assert first.check_once().action == "updated"
    with HotSwapPerception.load(first.current_path, backend_options=FAST) as live:
        agent = env.agent("dev-1", on_commit=live.on_commit)
        env.publish(releases["0.2.0"], "0.2.0")
        env.rollout("0.2.0")
        outcome = agent.check_once()
        assert outcome.action == "updated" and "activate" in outcome.timings
        assert live.infer(**_inputs(np.random.default_rng(2))).model == "toy@0.2.0"


# ---------------------------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> tuple[int, str]:
    from fusionedge.cli.fleet import add_agent_parsers

    parser = argparse.ArgumentParser(prog="fusionedge")
    fleet = parser.add_subparsers(dest="verb").add_parser("fleet").add_subparsers(dest="fleet_verb")
    add_agent_parsers(fleet)
    args = parser.parse_args(["fleet", *argv])
    out = io.StringIO()
    with redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


def test_cli_agent_once_prints_the_outcome(env, releases, tmp_path):
    env.publish(releases["0.1.0"], "0.1.0")
    env.rollout("0.1.0")
    base = ["agent", "--url", env.url, "--device-id", "cli-1", "--state-dir", str(tmp_path / "cli"),
            "--device-class", "x86-cpu", "--model", "student", "--root", str(env.trusted_root)]
    code, out = _cli([*base, "--once", "--json"])
    report = json.loads(out)
    assert code == 0 and report["action"] == "updated" and report["running"] == "student@0.1.0"
    assert report["release"]["release"] == 1 and report["error"] is None
    code, out = _cli([*base, "--interval", "0.01", "--max-checks", "2"])
    assert code == 0 and out.count("up-to-date student@0.1.0 (release 1); running student@0.1.0") == 2
    env.publish(releases["bad"], "0.2.0", self_test=False)
    env.rollout("0.2.0")
    code, out = _cli(base)
    assert code == 1 and out.startswith("rolled-back student@0.2.0 (release 2)")
    assert "VerificationError" in out


# ------------------------------------------------------------------------------------------ timing


@pytest.mark.slow
def test_time_to_apply_a_5_mb_update_on_loopback(env, tmp_path):
    """Measure download -> verify -> install -> health check -> commit -> hot swap for a ~5 MB bundle."""
    import torch
    from _toy_model import ToyFusionNet, make_toy
    from fusionedge.export import export_model

    _, info = make_toy()
    torch.manual_seed(0)
    model = ToyFusionNet(dim=560, stride=4).eval()
    info = {**info, "model_config": {"dim": 560}}
    big1 = export_model(model, info, tmp_path / "big1", version="1.0.0", progress=False)
    big2 = release_bundle(big1, tmp_path / "big2", "1.1.0")
    env.publish(big1, "1.0.0")
    env.rollout("1.0.0")
    assert env.agent("dev-1").check_once().action == "updated"
    with HotSwapPerception.load(env.agents[0].current_path, backend_options=FAST) as live:
        agent = env.agent("dev-1", on_commit=live.on_commit)
        env.publish(big2, "1.1.0")
        env.rollout("1.1.0")
        t0 = time.perf_counter()
        outcome = agent.check_once()
        total = (time.perf_counter() - t0) * 1e3
    assert outcome.action == "updated"
    size = outcome.release.length
    assert size > 4_000_000
    steps = ", ".join(f"{k} {v:.0f}" for k, v in outcome.timings.items())
    print(f"\napply {size / 1e6:.1f} MB update on loopback: {total:.0f} ms total ({steps} ms)")
