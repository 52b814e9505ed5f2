"""Bad benchmark requests are refused before anything runs, with typed errors that say what to do."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from _toy_model import shared_toy_bundle
from fusionedge.cli.main import main
from fusionedge.benchmarks.errors import BenchConfigError
from fusionedge.benchmarks.harness import BenchConfig, plan_benchmark
from fusionedge.sdk import backends as backends_module
from fusionedge.sdk.backends.onnxruntime import OnnxRuntimeBackend
from fusionedge.sdk.errors import BackendError, BundleError, DataError, InputError


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


def _cfg(bundle_dir: Path, tmp_path: Path, **kw) -> BenchConfig:
    return BenchConfig(bundle=bundle_dir, out=tmp_path / "out", **kw)


def test_a_good_request_plans_every_configuration(bundle_dir, tmp_path):
    plan = plan_benchmark(_cfg(bundle_dir, tmp_path))
    assert plan.backends == ["onnxruntime"] and plan.precisions == ["fp32"]
    assert len(plan.configurations) == 3 * 2
    assert ("onnxruntime", "fp32", "MultiStream", "e2e") in plan.configurations
    assert not (tmp_path / "out").exists(), "planning must not write anything"


def test_unknown_backend_lists_the_known_ones(bundle_dir, tmp_path):
    with pytest.raises(BackendError, match=r"unknown backend 'tensorrtx'; known backends: .*onnxruntime"):
        plan_benchmark(_cfg(bundle_dir, tmp_path, backends=("tensorrtx",)))


class _MissingLibBackend(OnnxRuntimeBackend):
    name = "needs-missing-lib"
    requires: ClassVar[tuple[str, ...]] = ("fusionedge_no_such_module",)


def test_backend_whose_library_is_missing_says_why(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(backends_module._REGISTRY, "needs-missing-lib", _MissingLibBackend)
    with pytest.raises(
        BackendError,
        match=r"'needs-missing-lib' cannot run on this machine: .*"
        r"fusionedge_no_such_module",
    ):
        plan_benchmark(_cfg(bundle_dir, tmp_path, backends=("onnxruntime", "needs-missing-lib")))


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle folder"):
        plan_benchmark(BenchConfig(bundle=tmp_path / "nope", out=tmp_path / "out"))


@pytest.mark.parametrize("scenario", ["Server", "singlestream", ""])
def test_unknown_scenario(bundle_dir, tmp_path, scenario):
    with pytest.raises(BenchConfigError, match="scenario|--scenarios is empty") as e:
        plan_benchmark(_cfg(bundle_dir, tmp_path, scenarios=(scenario,)))
    assert isinstance(e.value, InputError)  # the CLI's one-line user error


def test_scenario_the_bundle_cannot_serve_names_the_batch_and_the_option(bundle_dir, tmp_path):
    with pytest.raises(
        BenchConfigError,
        match=r"cannot run MultiStream .* batches of 64 .* 1 to 32; "
        r"change --samples-per-query",
    ):
        plan_benchmark(_cfg(bundle_dir, tmp_path, samples_per_query=64))
    # Without MultiStream the same request is fine.
    plan_benchmark(_cfg(bundle_dir, tmp_path, samples_per_query=64, scenarios=("SingleStream", "Offline")))


def test_precision_the_bundle_does_not_hold(bundle_dir, tmp_path):
    with pytest.raises(BenchConfigError, match=r"holds precision fp32 only, not 'int8'"):
        plan_benchmark(_cfg(bundle_dir, tmp_path, precisions=("fp32", "int8")))


@pytest.mark.parametrize(
    "kw, option",
    [
        ({"duration_s": 0}, "--duration"),
        ({"warmup_queries": 0}, "--warmup"),
        ({"min_queries": 0}, "--min-queries"),
        ({"max_duration_s": 1.0, "duration_s": 5.0}, "--max-duration"),
        ({"modes": ("fast",)}, "mode 'fast'"),
        ({"accuracy": True}, "accuracy mode needs a labelled data-set manifest"),
    ],
)
def test_bad_numbers_and_options(bundle_dir, tmp_path, kw, option):
    with pytest.raises(BenchConfigError, match=option):
        plan_benchmark(_cfg(bundle_dir, tmp_path, **kw))


def test_the_eager_baseline_is_not_a_backend(bundle_dir, tmp_path):
    with pytest.raises(BenchConfigError, match="torch-eager is the baseline"):
        plan_benchmark(_cfg(bundle_dir, tmp_path, backends=("torch-eager",)))


def test_missing_data_manifest(bundle_dir, tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        plan_benchmark(_cfg(bundle_dir, tmp_path, data=tmp_path / "no-data"))


def test_cli_prints_one_line_and_exits_2(bundle_dir, tmp_path, capsys):
    code = main(["bench", "--bundle", str(bundle_dir), "--out", str(tmp_path / "o"), "--scenarios", "Server"])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and len(err) == 1
        and err[0].startswith("fusionedge bench: error: unknown scenario 'Server'")
    )
    assert main(["bench", "--bundle", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a bundle folder" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "o")]) == 2
    assert "needs --bundle and --out" in capsys.readouterr().err
    assert main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "no such results file" in capsys.readouterr().err
