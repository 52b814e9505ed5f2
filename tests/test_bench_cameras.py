"""``fusionedge bench cameras``: the most live cameras a device sustains, batched against one inference
per camera, run for real on the shared toy bundle (synthetic cameras and microphone, ONNX Runtime)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from fusionedge.benchmarks import bench_cameras
from fusionedge.cli.main import main

from tests._toy_model import shared_toy_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


def _strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_cameras_verb_measures_both_modes_with_audio_and_writes_results_report_and_plot(bundle, tmp_path, capsys):
    out, report = tmp_path / "cams.json", tmp_path / "cams.md"
    code = main(["bench", "cameras", "--bundle", str(bundle), "--cameras", "1", "--seconds", "1", "--repeats", "1",
                 "--audio", "--size", "96x64", "--out", str(out), "--report", str(report), "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    shown = _strict(printed.out)
    doc = shown["results"]
    assert _strict(out.read_text()) == doc and shown["results_path"] == str(out)
    assert doc["schema"] == bench_cameras.SCHEMA and doc["fps"] == 30.0 and doc["size"] == "96x64"
    assert doc["audio"] is True and doc["frame_period_ms"] == pytest.approx(33.333, abs=1e-3)
    assert len(doc["loadavg_before"]) == 3 and doc["cores"] >= 1
    assert sorted((p["cameras"], p["mode"]) for p in doc["points"]) == [(1, "batched"), (1, "per-camera")]
    for p in doc["points"]:
        assert p["expected_per_camera"] == 30 and p["dropped"] >= 0
        assert p["min_results_per_camera"] > 0, "a live toy camera delivered no result in 1 s"
        assert p["cpu_ms_per_result"] > 0 and p["p99_ms"] >= p["p50_ms"] > 0
        assert p["sustained"] == (p["dropped"] == 0 and p["min_results_per_camera"] >= 27 and p["p99_ms"] < 1e3 / 30)
    rows = {r["mode"]: r for r in doc["summary"]}
    assert set(rows) == {"batched", "per-camera"} and all(r["rounds"] == 1 for r in rows.values())
    head = doc["headline"]
    assert head == doc["headlines"][0] and (head["threads"], head["spinning"], head["busy"]) == ("auto", "off", "off")
    for mode, row in rows.items():
        assert head["max_cameras_sustained"][mode] == (1 if row["sustained"] else 0)
    ratio = rows["batched"]["cpu_ms_per_result_median"] / rows["per-camera"]["cpu_ms_per_result_median"]
    assert head["cpu_ratio"] == pytest.approx(ratio, abs=1e-3) and head["cpu_ratio_cameras"] == 1
    for p in doc["points"]:  # where the worst camera's time went, stage by stage
        st = p["stages"]
        assert set(st["p50"]) >= {"capture_queue", "audio_wait", "batch_wait", "inference", "postprocess"}
        assert st["p50"]["inference"] > 0 and st["tail_ms"] >= sum(st["p50"][k] for k in list(st["p50"])[:9]) * 0.5
        assert p["audio_lag_ms"] is None or 0 <= p["audio_lag_ms"]["max"] <= 26.0
    (inf,) = doc["inference"]  # the model call alone: batch N against N calls at batch 1
    assert inf["cameras"] == 1 and inf["rounds"] >= 10 and inf["threads"] == "auto"
    assert inf["batched_ms_per_frame"] > 0 and inf["separate_ms_per_frame"] > 0
    assert inf["ratio"] == pytest.approx(inf["batched_ms_per_frame"] / inf["separate_ms_per_frame"], abs=2e-3)
    text = report.read_text()
    assert "## Headline" in text and "| 1 | batched |" in text and "| 1 | per-camera |" in text
    assert "## Where the time goes" in text and "## Inference alone: batch N against N calls" in text
    if importlib.util.find_spec("matplotlib") is None:
        assert shown["plots"] == [] and "matplotlib is not installed" in text
    else:
        assert shown["plots"] == [str(report.with_suffix(".png"))]
        assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(cams.png)" in text


@pytest.mark.parametrize(("args", "says"), [
    (["--cameras", "0"], "--cameras takes counts from 1"),
    (["--cameras", "1,x"], "--cameras takes counts like 1,2,3"),
    (["--max-cameras", "0"], "--max-cameras takes 1 to"),
    (["--cameras", "1", "--max-cameras", "2"], "not both"),
    (["--fps", "0"], "--fps takes a frame rate above 0"),
    (["--fps", "-30"], "--fps takes a frame rate above 0"),
    (["--fps", "nan"], "--fps takes a frame rate above 0"),
    (["--size", "1280"], "--size takes WIDTHxHEIGHT"),
    (["--size", "wxh"], "--size takes WIDTHxHEIGHT"),
    (["--size", "0x720"], "--size takes 16x16 to"),
    (["--seconds", "0"], "--seconds takes a length above 0"),
    (["--seconds", "0.1"], "frames per camera"),
    (["--repeats", "0"], "--repeats takes 1 or more"),
    (["--threads", "auto,0"], "--threads takes auto or counts"),
    (["--out", "/nonexistent-folder/x.json"], "does not exist"),
])
def test_bad_values_are_one_line_errors(bundle, capsys, args, says):
    assert main(["bench", "cameras", "--bundle", str(bundle), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fusionedge bench cameras: error: ") and says in err, err


def test_batched_counts_beyond_the_bundles_batch_range_are_refused_before_running(bundle, capsys):
    from fusionedge.sdk import Perception
    from fusionedge.sdk.streaming.multi import batch_limits

    with Perception.load(bundle) as p:
        hi = batch_limits(p)[1]
    if hi >= bench_cameras.MAX_CAMERAS:
        pytest.skip(f"the toy bundle takes batches up to {hi}")
    assert main(["bench", "cameras", "--bundle", str(bundle), "--cameras", str(hi + 1), "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"takes a batch of 1 to {hi}" in err, err


def test_script_still_runs_with_its_modes_option(bundle, tmp_path, capsys):
    out = tmp_path / "script.json"
    assert bench_cameras.main(["--bundle", str(bundle), "--max-cameras", "1", "--seconds", "0.5", "--fps", "20",
                               "--repeats", "1", "--modes", "per-camera", "--out", str(out)]) == 0
    doc = _strict(out.read_text())
    assert [(p["cameras"], p["mode"]) for p in doc["points"]] == [(1, "per-camera")] and doc["fps"] == 20.0
    assert _strict(capsys.readouterr().out) == doc


@pytest.mark.parametrize("args", [["--size", "abc"], ["--cameras", "0"]])
def test_script_says_a_bad_value_in_one_line_and_exits_2(bundle, capsys, args):
    assert bench_cameras.main(["--bundle", str(bundle), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench_cameras.py: error: --"), err


def test_inference_alone_times_batch_n_against_n_calls_on_the_same_inputs(bundle):
    from fusionedge.benchmarks.cameras_inference import inference_alone
    from fusionedge.sdk import Perception

    with Perception.load(bundle, backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
        rows = inference_alone(p, [2, 3], rounds=5)
    assert [r["cameras"] for r in rows] == [2, 3] and all(r["rounds"] == 5 for r in rows)
    for r in rows:
        lo, hi = r["batched_ms_range"]
        assert 0 < lo <= r["batched_ms_per_frame"] <= hi
        lo, hi = r["separate_ms_range"]
        assert 0 < lo <= r["separate_ms_per_frame"] <= hi
        assert r["cpu_ratio"] > 0 and r["ratio"] == pytest.approx(r["batched_ms_per_frame"] / r["separate_ms_per_frame"],
                                                                  abs=2e-3)
