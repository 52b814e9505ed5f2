"""A short real LoadGen run on the toy bundle: results.json, report.md, plots, accuracy, compare."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlperf_loadgen")

from _toy_model import shared_toy_bundle  # noqa: E402
from fusionedge.cli.main import main  # noqa: E402
from fusionedge.benchmarks.harness import BenchConfig, run_benchmark  # noqa: E402
from fusionedge.benchmarks.results import load_results  # noqa: E402
from fusionedge.benchmarks.stages import E2EPipeline, synthesize_clips  # noqa: E402
from fusionedge.sdk import Perception  # noqa: E402
from fusionedge.sdk.evaluate import evaluate  # noqa: E402

SS_ENGINE = "onnxruntime/fp32/SingleStream/engine"


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from fusionedge.training.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("bench-data") / "data"
    generate_dataset(out, 6, 7, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def run(bundle_dir, data_dir, tmp_path_factory):
    """Every scenario and mode, tiny durations: SingleStream reaches LoadGen's 64-query minimum."""
    out = tmp_path_factory.mktemp("bench-run")
    cfg = BenchConfig(
        bundle=bundle_dir,
        out=out,
        data=data_dir,
        accuracy=True,
        duration_s=0.05,
        min_queries=64,
        warmup_queries=2,
        samples_per_query=4,
        offline_batch=4,
        threads=1,
        progress=False,
    )
    return run_benchmark(cfg)


def test_results_json_has_every_configuration_with_loadgen_verdicts(run):
    doc = load_results(run.results_path)  # validates against the schema
    assert doc == json.loads(json.dumps(run.results))
    ids = [r["id"] for r in doc["records"]]
    assert ids == [
        f"onnxruntime/fp32/{s}/{m}"
        for s in ("SingleStream", "MultiStream", "Offline")
        for m in ("engine", "e2e")
    ]
    out = run.results_path.parent
    for r in doc["records"]:
        summary = (out / r["loadgen"]["log_dir"] / "mlperf_log_summary.txt").read_text()
        assert f"Result is : {r['loadgen']['result']}" in summary
        assert f"Scenario : {r['scenario']}" in summary
        trace = out / r["loadgen"]["log_dir"] / "mlperf_log_trace.json"
        assert not trace.exists() or trace.stat().st_size == 0, "enable_trace must be off"
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["throughput_sps"] > 0 and r["queries"] >= 1 and r["peak_rss_mb"] > 0
        assert r["samples"] == r["queries"] * r["samples_per_query"]
    by_id = {r["id"]: r for r in doc["records"]}
    for mode in ("engine", "e2e"):
        ss = by_id[f"onnxruntime/fp32/SingleStream/{mode}"]
        assert ss["loadgen"]["valid"] and ss["queries"] >= 64
        assert ss["metric"] == {"name": "p90_latency_ms", "value": ss["latency_ms"]["p90"]}
        ms = by_id[f"onnxruntime/fp32/MultiStream/{mode}"]
        assert not ms["loadgen"]["valid"] and ms["loadgen"]["early_stopping_satisfied"] is False
        assert any("662" in n for n in ms["loadgen"]["notes"])  # why: too few queries for a p99
        assert ms["samples_per_query"] == 4 and ms["metric"]["name"] == "p99_latency_ms"
        off = by_id[f"onnxruntime/fp32/Offline/{mode}"]
        assert off["metric"] == {"name": "samples_per_second", "value": off["throughput_sps"]}


def test_end_to_end_times_every_stage_and_carries_its_ratio(run):
    by_id = {r["id"]: r for r in run.results["records"]}
    for scenario in ("SingleStream", "MultiStream", "Offline"):
        e2e, engine = by_id[f"onnxruntime/fp32/{scenario}/e2e"], by_id[f"onnxruntime/fp32/{scenario}/engine"]
        assert set(e2e["stages_ms"]) == {"decode", "preprocess", "batch", "infer", "postprocess"}
        assert set(engine["stages_ms"]) == {"batch", "infer"}
        assert all(e2e["stages_ms"][s]["mean"] > 0 for s in ("decode", "preprocess", "infer", "postprocess"))
        assert sum(v["share"] for v in e2e["stages_ms"].values()) == pytest.approx(1.0, abs=1e-3)
        ratio = e2e["ratios"]["e2e_over_engine"]
        if scenario == "Offline":
            expected = engine["metric"]["value"] / e2e["metric"]["value"]
        else:
            expected = e2e["metric"]["value"] / engine["metric"]["value"]
        assert ratio == pytest.approx(expected, rel=1e-3)
        assert engine["ratios"]["e2e_over_engine"] is None


def test_eager_baseline_skip_is_recorded_with_its_reason(run):
    doc = run.results
    eager = doc["baselines"]["eager"]
    assert eager["status"] == "skipped" and "records no source checkpoint" in eager["reason"]
    assert len(doc["skipped"]) == 6 and all(s["config"].startswith("torch-eager/") for s in doc["skipped"])
    assert all(r["ratios"]["over_eager"] is None for r in doc["records"])
    assert "records no source checkpoint" in run.report_path.read_text()


def test_accuracy_through_loadgen_equals_fusionedge_eval(run, bundle_dir, data_dir):
    [acc] = run.results["accuracy"]
    assert acc["samples"] == 6 and acc["backend"] == "onnxruntime"
    out = run.results_path.parent
    assert "AccuracyOnly" in (out / acc["loadgen"]["log_dir"] / "mlperf_log_detail.txt").read_text()
    with Perception.load(bundle_dir) as p:
        expected = evaluate(p, data_dir, progress=False)
    keys = ["event_accuracy", "event_macro_f1", "audio_tag_map", "detection_map50"]
    keys += [k for k in ("detection_ap50_coco", "detection_ap50_95_coco") if k in expected]
    assert set(keys) <= set(acc["metrics"])
    for k in keys:
        want = expected[k]
        if want is None or not np.isfinite(want):
            assert acc["metrics"][k] is None
        else:
            assert acc["metrics"][k] == pytest.approx(want, abs=1e-6), k


def test_report_and_plots_are_written(run):
    text = run.report_path.read_text()
    for r in run.results["records"]:
        assert f"`{r['id']}`" in text
    assert "| configuration | LoadGen | figure of merit |" in text and "e2e/engine" in text
    assert "## Stage breakdown" in text and "## Accuracy" in text and "## Machine" in text
    names = sorted(p.name for p in run.plots)
    assert names == ["backend_precision_matrix.png", "latency_distribution.png", "stage_breakdown.png"]
    from matplotlib.image import imread

    for p in run.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert float(img[..., :3].std()) > 0.05, f"{p.name} looks blank"
        assert f"]({p.relative_to(run.report_path.parent)})" in text


def test_energy_is_sampled_during_every_configuration(run):
    """Each record says what was drawn per inference (or why nothing could be read) and if it throttled."""
    doc = load_results(run.results_path)
    assert doc["settings"]["energy_interval_s"] == 0.1
    for r in doc["records"]:
        e = r["energy"]
        assert e["readings"] >= 2 and 0 < e["window_s"] <= r["duration_s"] + 0.5
        assert isinstance(e["throttled"], bool) and e["throttled"] == bool(e["throttle_reasons"])
        if e["joules"] is None:  # nothing readable: every power source family says why
            assert e["joules_per_inference"] is None and e["total_of"] == []
            assert {"RAPL", "NVML"} <= {k.split()[0] for k in e["unavailable"]}
            assert any(k.startswith(("hwmon power", "INA3221")) for k in e["unavailable"])
        else:
            assert e["joules"] > 0 and e["total_of"]
            assert e["joules_per_inference"] == pytest.approx(e["joules"] / r["samples"], rel=1e-3)
    text = run.report_path.read_text()
    assert "## Energy" in text and "| configuration | J/inference | mean W |" in text
    for r in doc["records"]:
        assert sum(line.startswith(f"| `{r['id']}` |") for line in text.splitlines()) == 3  # results, stages, energy
    for source, reason in doc["records"][0]["energy"]["unavailable"].items():
        assert f"- {source}: {reason}" in text


def test_e2e_pipeline_matches_perception_infer(bundle_dir, tmp_path):
    """The timed end-to-end path is the SDK's own path: same scores and boxes as Perception.infer."""
    with Perception.load(bundle_dir, score_threshold=0.0) as p:
        clips = synthesize_clips(tmp_path / "clips", p.geometry, count=2)
        pipe = E2EPipeline(p.backend, clips, p.geometry, p.labels, score_threshold=0.0, top_k=p.top_k)
        got = pipe([0, 1])
        for clip, d in zip(clips, got, strict=True):
            r = p.infer(video_path=clip.video, audio_path=clip.audio)
            assert list(d.event_scores) == pytest.approx([r.scores[e] for e in p.labels["events"]], abs=1e-6)
            assert list(d.tag_scores) == pytest.approx(
                [r.audio_tags[t] for t in p.labels["audio_tags"]], abs=1e-6
            )
            assert [(b.label, round(b.x1, 3)) for b in d.boxes] == [
                (b.label, round(b.x1, 3)) for b in r.boxes
            ]
    assert set(pipe.log.summary()) == {"decode", "preprocess", "batch", "infer", "postprocess"}


def _slowed(doc: dict, rid: str, factor: float) -> dict:
    doc = copy.deepcopy(doc)
    r = next(r for r in doc["records"] if r["id"] == rid)
    if r["scenario"] == "Offline":
        r["metric"]["value"] /= factor
        r["throughput_sps"] /= factor
    else:
        r["metric"]["value"] *= factor
    return doc


def test_compare_catches_a_planted_regression(run, tmp_path, capsys):
    a = tmp_path / "a.json"
    shutil.copy(run.results_path, a)
    same = tmp_path / "same.json"
    shutil.copy(run.results_path, same)
    assert main(["bench", "compare", str(a), str(same)]) == 0
    assert "no regression beyond 10%" in capsys.readouterr().out

    doc = load_results(a)
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(_slowed(doc, SS_ENGINE, 1.5)))
    assert main(["bench", "compare", str(a), str(slow)]) == 1
    out = capsys.readouterr().out
    [line] = [ln for ln in out.splitlines() if "REGRESSION" in ln]
    assert line.startswith(SS_ENGINE) and "+50.0%" in line
    assert "1 regression(s)" in out

    # Offline is a throughput: a third fewer samples per second is 50% more time per sample.
    offline = "onnxruntime/fp32/Offline/e2e"
    slow.write_text(json.dumps(_slowed(doc, offline, 1.5)))
    assert main(["bench", "compare", str(a), str(slow), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["regressions"] == [offline] and report["exit_code"] == 1
    # A 5% slow-down passes the default 10% threshold but not a 1% one.
    slow.write_text(json.dumps(_slowed(doc, SS_ENGINE, 1.05)))
    assert main(["bench", "compare", str(a), str(slow)]) == 0
    assert main(["bench", "compare", str(a), str(slow), "--threshold", "0.01"]) == 1
    capsys.readouterr()


def test_cli_json_run(bundle_dir, tmp_path, capsys):
    code = main(
        [
            "bench",
            "--bundle",
            str(bundle_dir),
            "--out",
            str(tmp_path / "o"),
            "--scenarios",
            "SingleStream",
            "--modes",
            "engine",
            "--duration",
            "0.02",
            "--min-queries",
            "16",
            "--warmup",
            "1",
            "--no-eager",
            "--no-plots",
            "--energy-interval",
            "0.01",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"]["settings"]["energy_interval_s"] == 0.01
    assert out["results"]["records"][0]["energy"]["interval_s"] == 0.01
    assert Path(out["results_path"]).is_file() and out["plots"] == []
    assert [r["id"] for r in out["results"]["records"]] == [SS_ENGINE]
    assert out["results"]["baselines"]["eager"]["reason"] == "disabled (--no-eager)"


@pytest.mark.slow
def test_eager_baseline_runs_from_the_quickstart_layout(tmp_path):
    """A registered model exported from a checkpoint: the eager baseline is found, checked and timed."""
    pytest.importorskip("fusionedge.training.checkpoint")
    import torch

    from fusionedge.export import export_checkpoint
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry
    from fusionedge.training.checkpoint import save_checkpoint
    from fusionedge.training.models.registry import create_model

    torch.manual_seed(0)
    geometry = InputGeometry(clip_frames=2, height=32, width=48, clip_seconds=0.25, sample_rate=16000)
    model = create_model(
        "fusion_student", clip_frames=2, height=32, width=48, audio_samples=geometry.audio_samples
    ).eval()
    ckpt = save_checkpoint(
        tmp_path / "run" / "best.pt",
        model,
        model_name="fusion_student",
        model_config=model.config.to_dict(),
        geometry=geometry,
        labels={"events": EVENTS, "audio_tags": AUDIO_TAGS, "objects": OBJECTS},
        metrics={},
        epoch=1,
    )
    bundle = export_checkpoint(ckpt, tmp_path / "bundle", progress=False)
    cfg = BenchConfig(
        bundle=bundle,
        out=tmp_path / "bench",
        scenarios=("SingleStream",),
        duration_s=0.02,
        min_queries=16,
        warmup_queries=1,
        synthetic_clips=2,
        threads=1,
        plots=False,
        progress=False,
    )
    threads_before = torch.get_num_threads()
    doc = run_benchmark(cfg).results
    assert torch.get_num_threads() == threads_before, "torch's process-wide thread count must be restored"
    eager = doc["baselines"]["eager"]
    assert eager["status"] == "ran" and "sha256 matches" in eager["checkpoint"] and eager["threads"] == 1
    assert eager["golden_max_abs_diff"] < 1e-3
    by_id = {r["id"]: r for r in doc["records"]}
    assert set(by_id) == {
        f"{b}/fp32/SingleStream/{m}" for b in ("onnxruntime", "torch-eager") for m in ("engine", "e2e")
    }
    assert by_id["torch-eager/fp32/SingleStream/engine"]["baseline"] is True
    for m in ("engine", "e2e"):
        ort, eag = by_id[f"onnxruntime/fp32/SingleStream/{m}"], by_id[f"torch-eager/fp32/SingleStream/{m}"]
        assert ort["ratios"]["over_eager"] == pytest.approx(
            ort["metric"]["value"] / eag["metric"]["value"], rel=1e-3
        )
    assert by_id["torch-eager/fp32/SingleStream/e2e"]["ratios"]["e2e_over_engine"] > 0

    # A checkpoint that is not the bundle's is refused by its hash, and the reason recorded.
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(
        other,
        create_model(
            "fusion_student", clip_frames=2, height=32, width=48, audio_samples=geometry.audio_samples
        ),
        model_name="fusion_student",
        model_config=model.config.to_dict(),
        geometry=geometry,
        labels={"events": EVENTS, "audio_tags": AUDIO_TAGS, "objects": OBJECTS},
        metrics={},
        epoch=1,
    )
    from fusionedge.benchmarks.eager import load_eager_baseline
    from fusionedge.sdk.bundle import load_bundle

    baseline, status = load_eager_baseline(load_bundle(bundle), other)
    assert baseline is None and not status.ran and "not the bundle's model" in status.reason
