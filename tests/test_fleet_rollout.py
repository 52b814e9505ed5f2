"""A staged rollout across 50 simulated devices, and a failing release paused automatically by ``watch``.

The devices are real agents (each its own state folder) against one served repository, publishing
their status to a real mosquitto broker; ``watch`` is the real subscriber that signs the pause.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from _fleet import FleetEnv, Mosquitto, assert_consistent, bad_golden_bundle, release_bundle
from _toy_model import shared_toy_bundle
from fusionedge.export.fleet.keys import RepositoryError
from fusionedge.sdk.fleet.agent import bucket

N_DEVICES = 50
CANARIES = 4  # devices in the "canary" cohort: a release can reach them at any percent


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


def _check_all(agents: dict, pool: ThreadPoolExecutor) -> dict:
    futures = {d: pool.submit(a.check_once) for d, a in agents.items()}
    return {d: f.result() for d, f in futures.items()}


def test_tally_keeps_each_devices_last_verdict_per_release():
    from fusionedge.export.fleet.watch import tally

    def st(device, state, release=2, model="student"):
        return {"device_id": device, "model": model, "release": release, "state": state, "version": "0.2.0"}

    statuses = [
        st("a", "rolled-back"), st("a", "paused"),  # a later non-verdict does not erase the verdict
        st("b", "failed"), st("b", "updated"),  # a transient failure, then success: the last verdict counts
        st("c", "downloading"),  # no verdict yet
        st("d", "skipped-bad"),
        st("e", "failed", model="other"),
        st("f", "up-to-date", release=1),
    ]
    t = tally(statuses, "student")
    assert list(t) == [1, 2]
    assert (t[2].succeeded, t[2].failed, t[2].devices) == (["b"], ["a", "d"], 3)
    assert t[2].failure_rate == pytest.approx(2 / 3) and t[1].succeeded == ["f"]


def test_watch_refuses_bad_arguments(tmp_path, toy):
    from fusionedge.export.fleet.watch import watch

    env = FleetEnv(tmp_path)
    try:
        with pytest.raises(RepositoryError, match="min_devices"):
            watch("127.0.0.1:1", env.repo, "student", min_devices=0)
        with pytest.raises(RepositoryError, match="max_failure_rate"):
            watch("127.0.0.1:1", env.repo, "student", max_failure_rate=1.5)
        with pytest.raises(RepositoryError, match="no rollout to watch"):
            watch("127.0.0.1:1", env.repo, "student")
    finally:
        env.close()


@pytest.mark.slow
def test_staged_rollout_to_50_devices_and_automatic_pause_of_a_failing_release(tmp_path, toy):
    from fusionedge.cli.fleet import add_watch_parser
    from fusionedge.export.fleet.repo import repository_status
    from fusionedge.export.fleet.watch import watch

    broker = Mosquitto(tmp_path)
    env = FleetEnv(tmp_path)
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        devices = [f"dev-{i:03d}" for i in range(N_DEVICES)]
        canaries = set(devices[:CANARIES])
        agents = {d: env.agent(d, mqtt=broker.address, cohort="canary" if d in canaries else None)
                  for d in devices}
        env.publish(release_bundle(toy, tmp_path / "v1", "0.1.0"), "0.1.0")

        # ---- stages 10% -> 50% -> 100%: exactly the devices whose bucket is below the percent update
        updated: set[str] = set()
        for percent in (10, 50, 100):
            record = env.rollout("0.1.0", percent=percent)
            expected = {d for d in devices if bucket(record["salt"], d) < percent}
            outcomes = _check_all(agents, pool)
            newly = {d for d, o in outcomes.items() if o.action == "updated"}
            assert newly == expected - updated, f"stage {percent}%"
            for d, o in outcomes.items():
                want = "updated" if d in newly else "up-to-date" if d in updated else "not-eligible"
                assert o.action == want, (percent, d, o)
            assert updated <= expected, "raising the percent removed a device"
            updated |= newly
        assert updated == set(devices)
        assert len(env.bundle_requests()) == N_DEVICES  # each device downloaded release 1 exactly once

        # ---- a healthy rollout is not paused: the watch sees 50 successes (retained messages) and times out
        for a in agents.values():
            assert a.status.flush(10.0)
        healthy = watch(broker.address, env.repo, "student", min_devices=3, max_failure_rate=0.2,
                        timeout_s=5)
        assert not healthy.paused and healthy.reason == "timeout"
        assert len(healthy.tallies[1].succeeded) == N_DEVICES and healthy.tallies[1].failed == []

        # ---- a release whose self-test fails, rolled out to 20% + the canary cohort, watched
        env.publish(bad_golden_bundle(toy, tmp_path / "bad", "0.2.0"), "0.2.0", self_test=False)
        reports = []
        watcher = threading.Thread(target=lambda: reports.append(watch(
            broker.address, env.repo, "student", min_devices=3, max_failure_rate=0.2, timeout_s=60)))
        watcher.start()
        record = env.rollout("0.2.0", percent=20, cohorts=["canary"])
        eligible = {d for d in devices if bucket(record["salt"], d) < 20} | canaries
        wave1 = _check_all(agents, pool)
        for a in agents.values():
            a.status.flush(10.0)
        watcher.join(timeout=60)
        assert not watcher.is_alive() and len(reports) == 1
        report = reports[0]
        assert report.paused and report.release == 2 and "paused release 2" in report.reason
        assert len(report.tallies[2].failed) >= 3 and report.tallies[2].succeeded == []
        assert repository_status(env.repo)["models"]["student"]["rollout"]["paused"] is True

        rolled_back = {d for d, o in wave1.items() if o.action == "rolled-back"}
        assert len(rolled_back) >= 3 and rolled_back <= eligible
        for d, o in wave1.items():  # a device that checked after the pause saw it
            allowed = ("rolled-back", "paused") if d in eligible else ("not-eligible", "paused")
            assert o.action in allowed, (d, o)
        # ---- after the pause nobody takes release 2; every device still runs release 1, intact
        wave2 = _check_all(agents, pool)
        for d, o in wave2.items():  # a device that rolled back says so again (its verdict stays retained)
            assert o.action == ("skipped-bad" if d in rolled_back else "paused"), (d, o)
        assert len(env.bundle_requests()) == N_DEVICES + len(rolled_back)
        for d, a in agents.items():
            assert a.current_release().release == 1, d
            assert [b["release"] for b in a.bad_releases()] == ([2] if d in rolled_back else [])
        for d in sorted(rolled_back)[:3] + devices[-3:]:
            assert_consistent(agents[d].state_dir)

        # ---- the watch CLI reports the same tallies as JSON
        parser = argparse.ArgumentParser()
        add_watch_parser(parser.add_subparsers())
        args = parser.parse_args(["watch", "--broker", broker.address, "--repo", str(env.repo), "--model",
                                  "student", "--timeout", "1", "--json"])
        out = io.StringIO()
        with redirect_stdout(out):
            assert args.func(args) == 0
        cli = json.loads(out.getvalue())
        assert cli["paused"] is False and cli["reason"] == "timeout"  # already paused: nothing to do
        assert cli["tallies"]["2"]["failed"] == sorted(rolled_back)  # from the retained statuses alone
        print(f"\nrollout: 50 devices, stages 10/50/100 %; failing release paused after "
              f"{len(report.tallies[2].failed)} failures ({len(rolled_back)} devices rolled back, "
              f"{N_DEVICES - len(rolled_back)} never downloaded it)")
    finally:
        pool.shutdown()
        env.close()
        broker.close()
