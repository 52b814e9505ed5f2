"""The fleet wire format: what the repository writes, the device reads — the two ends cannot disagree.

Records are produced by the real repository operations (``publish``, ``set_rollout``) and parsed by the
device's parsers (:mod:`fusionedge.sdk.fleet.protocol`, as the agent uses them); names and versions are
put through the repository's and the agent's own entry points, which must accept and refuse the same
ones. Hostile records (oversized, deep, wrong types) are refused with one line naming the file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from _fleet import FleetEnv, release_bundle, running_state
from _toy_model import shared_toy_bundle
from fusionedge.export.fleet.keys import RepositoryError
from fusionedge.export.fleet.repo import publish, set_rollout
from fusionedge.sdk.errors import InputError, VerificationError
from fusionedge.sdk.fleet.agent import Agent
from fusionedge.sdk.fleet.protocol import (
    Release,
    Rollout,
    bundle_target_path,
    hashed_target_path,
    rollout_target_path,
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def env(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    e = FleetEnv(root)
    e.publish(release_bundle(toy, root / "v1", "0.1.0"), "0.1.0", device_classes=["x86-cpu", "jetson-orin"])
    e.rollout("0.1.0", percent=12.5, cohorts=["canary", "lab-2"])
    yield e
    e.close()


def _served(env: FleetEnv, target: str, sha256: str) -> bytes:
    return (env.repo / "targets" / hashed_target_path(target, sha256)).read_bytes()


def _targets(env: FleetEnv, role: str) -> dict:
    return env.metadata(f"{env.latest(role)}.{role}.json")["signed"]["targets"]


# ---------------------------------------------------------------------------------------- records


def test_a_rollout_record_written_by_the_repository_round_trips_through_the_device_parser(env):
    target = rollout_target_path("student")
    info = _targets(env, "rollouts")[target]
    data = _served(env, target, info["hashes"]["sha256"])
    rollout = Rollout.from_json(data, model="student")
    assert (rollout.version, rollout.release, rollout.percent, rollout.cohorts, rollout.paused) == (
        "0.1.0", 1, 12.5, ("canary", "lab-2"), False)
    assert rollout.to_json() == data, "the device re-serializes the record differently from the repository"
    assert rollout.to_dict() == json.loads(data)


def test_a_release_written_by_the_repository_round_trips_through_the_device_parser(env, toy):
    from fusionedge.sdk.bundle import load_bundle

    target = bundle_target_path("student", "0.1.0")
    info = _targets(env, "targets")[target]
    release = Release.from_target(target, info["custom"], info["hashes"]["sha256"], info["length"],
                                  model="student", version="0.1.0", release=1)
    assert release.custom() == info["custom"]
    assert release.compat["device_classes"] == ["x86-cpu", "jetson-orin"]
    assert release.digest == load_bundle(env.root / "v1").digest
    # the device's stored copy of it parses back to the same release
    assert Release.from_json(release.to_json(installed="2026-01-01T00:00:00Z")) == release


def test_a_device_installs_what_the_repository_published(env):
    agent = env.agent("dev-proto", cohort="canary")
    outcome = agent.check_once()
    assert outcome.action == "updated", outcome
    assert agent.current_release() == outcome.release
    assert running_state(agent.state_dir)["current"].endswith(outcome.release.sha256)


# ---------------------------------------------------------------------------------- names, versions


_NAMES = ["a", "student", "jetson-orin", "x86_cpu", "v1.2", "A" * 64, "A" * 65, "a" * 128, "-lead", ".hidden",
          "_x", "a..b", "a/b", "../etc", "a b", "ünï", "", "a\nb", "a\\b", "CAPS-9"]
_VERSIONS = ["0.1.0", "1.2.3", "10.20.30", "1.0.0-rc.1", "1.0.0+build.5", "1.0.0-alpha..1", "1.2", "v1.2.3",
             "01.2.3", "1.2.3.4", "../1.2.3", "1.2.3/..", "1.2.3-", "", "2024.1.15", "1.0.0-" + "x" * 65]


def _random_names(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcXYZ019._-/ \\ü"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 70))) for _ in range(n)]


def _repo_accepts_model(repo: Path, name: str) -> bool:
    try:  # names are checked before the repository is opened; this one does not exist
        set_rollout(repo, model=name, version="1.0.0", percent=1)
    except RepositoryError as e:
        return "no such repository folder" in str(e)
    raise AssertionError("set_rollout on a missing repository succeeded")


def _device_accepts_model(tmp_path: Path, name: str) -> bool:
    try:
        Agent("http://127.0.0.1:9", "dev-1", tmp_path / "state", device_class="x86-cpu", model=name,
              root=b"{}").close()
    except InputError:
        return False
    return True


def _record(**fields) -> bytes:
    base = {"model": "student", "version": "1.0.0", "release": 1, "percent": 5, "cohorts": [],
            "paused": False, "salt": "00" * 16, "issued": "", "seq": 1}
    return json.dumps({**base, **fields}).encode()


def _parser_accepts(**fields) -> bool:
    try:
        Rollout.from_json(_record(**fields))
    except VerificationError:
        return False
    return True


@pytest.mark.parametrize("name", _NAMES + _random_names(40))
def test_names_accepted_by_one_end_are_accepted_by_the_other(tmp_path, name):
    repo_side = _repo_accepts_model(tmp_path / "missing-repo", name)
    assert _device_accepts_model(tmp_path, name) == repo_side, name
    assert _parser_accepts(model=name) == repo_side, name
    assert _parser_accepts(cohorts=[name]) == repo_side, name
    if name in ("A" * 64, "student", "a..b", "a/b", "A" * 65):  # the one rule, the stricter of the two
        assert repo_side == (name in ("A" * 64, "student")), name


@pytest.mark.parametrize("version", _VERSIONS)
def test_versions_accepted_by_one_end_are_accepted_by_the_other(tmp_path, version):
    try:
        set_rollout(tmp_path / "missing-repo", model="student", version=version, percent=1)
    except RepositoryError as e:
        repo_side = "no such repository folder" in str(e)
    assert _parser_accepts(version=version) == repo_side, version
    assert repo_side == (version in ("0.1.0", "1.2.3", "10.20.30", "1.0.0-rc.1", "1.0.0+build.5", "2024.1.15"))


def test_publish_and_the_agent_refuse_the_same_device_classes(tmp_path, toy):
    for name in ("x" * 65, "a/b", "a..b"):
        with pytest.raises(RepositoryError, match="device class"):
            publish(tmp_path / "missing-repo", toy, model="m", version="1.0.0", device_classes=[name])
        with pytest.raises(InputError, match="device_class"):
            Agent("http://127.0.0.1:9", "dev-1", tmp_path / "state", device_class=name, model="m", root=b"{}")


# ---------------------------------------------------------------------------------- hostile records


@pytest.mark.parametrize(("data", "match"), [
    (b"[" * 100 + b"]" * 100, "nested more than"),
    (b'{"model": "student", "release": ' + b"9" * 50 + b"}", "integer of 50 digits"),
    (b" " * (1 << 20) + b"{}", "bytes, more than"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"model": "student"', "not valid JSON"),
    (b'"student"', "expected a JSON object"),
    (_record(percent=float("nan")), "NaN is not a JSON number"),
    (_record(percent=101), "percent must be a number from 0 to 100"),
    (_record(release=True), "field 'release' missing or of the wrong type"),
    (_record(release=0), "release must be an integer >= 1"),
    (_record(paused="no"), "paused must be true or false"),
    (_record(cohorts="canary"), "field 'cohorts' must be a list"),
    (_record(salt=""), "salt must be a non-empty string"),
    (_record(model="other"), "names model 'other', expected 'student'"),
])
def test_a_hostile_rollout_record_is_one_line_naming_the_file(data, match):
    with pytest.raises(VerificationError, match=match) as info:
        Rollout.from_json(data, model="student")
    message = str(info.value)
    assert message.startswith("rollouts/student.json") and "\n" not in message, message


def test_a_release_that_disagrees_with_its_rollout_or_path_is_refused():
    good = Release(model="student", version="1.0.0", release=3, sha256="ab" * 32, length=10,
                   target=bundle_target_path("student", "1.0.0"), compat={"device_classes": ["x86-cpu"]})
    custom = good.custom()
    args = (good.target, custom, good.sha256, good.length)
    assert Release.from_target(*args, model="student", version="1.0.0", release=3) == good
    for kw, match in (({"version": "1.0.1"}, "mix-and-match"), ({"release": 2}, "mix-and-match")):
        with pytest.raises(VerificationError, match=match):
            Release.from_target(*args, model="student", **kw)
    with pytest.raises(VerificationError, match="signs the target"):
        Release.from_target(bundle_target_path("student", "2.0.0"), custom, good.sha256, 10, model="student")
    with pytest.raises(VerificationError, match="bundle_sha256 does not match"):
        Release.from_target(good.target, custom, "cd" * 32, 10, model="student")
    with pytest.raises(VerificationError, match="not a FusionEdge release"):
        Release.from_target(good.target, {}, good.sha256, 10, model="student")
    bad_engines = {"fusionedge": {**custom["fusionedge"], "engines": {"../x": "models/student/1.0.0/x"}}}
    with pytest.raises(VerificationError, match="engine fingerprint"):
        Release.from_target(good.target, bad_engines, good.sha256, 10, model="student")
