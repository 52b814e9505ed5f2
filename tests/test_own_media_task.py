"""A task no one here designed, end to end through the command line: own heads, geometry and modalities.

The data is made with other tools (ffmpeg draws shapes over noise, sox makes tones and noises; see
``_own_media.py``): 3 events, 5 audio tags and 2 object classes at 320x240, 8 frames over 2 s with
22.05 kHz audio. A tiny model is trained on it (frames read at 160x128), exported, evaluated, run on a clip
and on a stream, benchmarked, quantized with the accuracy gate and installed by a fleet device. The
same, smaller, for a video-only task without audio tags (its bundle refuses audio alone) and for
an audio-only task without boxes. Bad geometries are one line, exit status 2 and nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _own_media import AUDIO_EVENTS, OWN_EVENTS, OWN_OBJECTS, OWN_TAGS, make_own_media_set
from fusionedge.cli.main import main

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("ffmpeg") and shutil.which("sox")),
                                 reason="needs ffmpeg and sox on PATH (apt-get install ffmpeg sox)")]

TINY = ["--set", "video_channels=[8,8,8,8]", "--set", "video_depth=0", "--set", "audio_channels=[8,8,8]",
        "--set", "audio_depth=0", "--set", "audio_dim=8", "--set", "fusion_dim=8", "--set", "fusion_heads=2",
        "--set", "head_hidden=8", "--set", "det_channels=8", "--set", "n_mels=32"]
#: 8 frames over 2 s of 22.05 kHz audio; the 320x240 clips are read at half size to keep the test short
GEOMETRY = ["--input-size", "160x128", "--clip-frames", "8", "--clip-seconds", "2", "--sample-rate", "22050"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _train_and_export(capsys, root: Path, data: Path, val: Path, *extra: str) -> tuple[Path, Path]:
    run, bundle = root / "run", root / "bundle"
    code, _, err = run_cli(capsys, "train", "--data", data, "--val", val, "--out", run, "--epochs", "1",
                           "--batch-size", "4", *TINY, *extra, "--json")
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", "--checkpoint", run / "best.pt", "--out", bundle, "--json")
    assert code == 0, err
    return run, bundle


def test_own_media_task_trains_exports_evaluates_runs_benchmarks_quantizes_and_installs(tmp_path, capsys):
    train = make_own_media_set(tmp_path / "train", 6, seed=0)
    val = make_own_media_set(tmp_path / "val", 3, seed=1)
    run, bundle = _train_and_export(capsys, tmp_path, train, val, *GEOMETRY)

    # the geometry and the task's own vocabularies are in the checkpoint and the bundle
    config = json.loads((run / "config.json").read_text())
    want_geometry = {"width": 160, "height": 128, "clip_frames": 8, "clip_seconds": 2.0, "sample_rate": 22050}
    assert {k: config["train"]["geometry"][k] for k in want_geometry} == want_geometry
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {k: manifest["geometry"][k] for k in want_geometry} == want_geometry
    assert manifest["labels"] == {"events": list(OWN_EVENTS), "objects": list(OWN_OBJECTS),
                                  "audio_tags": list(OWN_TAGS)}
    assert manifest["modalities"] == ["video", "audio"]
    shapes = {e["name"]: e["shape"] for e in manifest["inputs"] + manifest["outputs"]}
    assert shapes["video"] == ["batch", 8, 3, 128, 160] and shapes["audio"] == ["batch", 44100]
    assert shapes["det_heatmap"] == ["batch", 2, 32, 40] and shapes["audio_tag_logits"] == ["batch", 5]

    code, out, err = run_cli(capsys, "eval", "--bundle", bundle, "--data", val, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["samples"] == 3
    assert {"event_accuracy", "audio_tag_map", "detection_map50"} <= set(metrics)

    clip = val / "media" / "001_0001.mp4"
    code, out, err = run_cli(capsys, "predict", "--bundle", bundle, "--video", clip,
                             "--audio", clip.with_suffix(".wav"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["event"] in OWN_EVENTS and set(result["scores"]) == set(OWN_EVENTS)
    assert set(result["audio_tags"]) == set(OWN_TAGS) and result["missing"] == []
    assert {b["label"] for b in result["boxes"]} <= set(OWN_OBJECTS)
    assert all(0 <= b["x1"] <= b["x2"] <= 320 and 0 <= b["y1"] <= b["y2"] <= 240 for b in result["boxes"])

    # the stream runs windows of the bundle's 2 s over the 2 s clip
    events = tmp_path / "events.jsonl"
    code, out, err = run_cli(capsys, "run", "--bundle", bundle, "--video", clip,
                             "--audio", clip.with_suffix(".wav"), "--fast", "--no-progress",
                             "--events", events, "--json")
    assert code == 0, err
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    stepped = [x for x in lines if x.get("event") in OWN_EVENTS]
    assert stepped, lines

    code, out, err = run_cli(capsys, "bench", "--bundle", bundle, "--out", tmp_path / "bench", "--data", val,
                             "--accuracy", "--no-eager", "--no-plots", "--scenarios", "SingleStream",
                             "--duration", "0.5", "--min-queries", "4", "--warmup", "1", "--json")
    assert code == 0, err
    accuracy = json.loads(out)["results"]["accuracy"][0]["metrics"]
    assert {"event_accuracy", "audio_tag_map", "detection_map50"} <= set(accuracy)

    code, out, err = run_cli(capsys, "quantize", "--bundle", bundle, "--out", tmp_path / "int8",
                             "--data", train, "--validation", val, "--calibration-samples", "4", "--json")
    assert code == 0, err
    gate_metrics = json.loads(out)["gate"]["steps"][-1]["metrics"]
    assert set(gate_metrics) == {"event_accuracy", "detection_map50"}  # what the fused gate holds

    from _fleet import FleetEnv

    env = FleetEnv(tmp_path / "fleet")
    try:
        env.publish(bundle, "0.1.0")
        env.rollout("0.1.0")
        outcome = env.agent("dev-own").check_once()
        assert outcome.ok and outcome.action == "updated", outcome
        assert outcome.health["self_test_max_abs_err"] < 1e-3
    finally:
        env.close()


def test_video_only_task_without_audio_tags_has_no_tag_head_and_refuses_audio_alone(tmp_path, capsys):
    train = make_own_media_set(tmp_path / "train", 4, seed=2, kind="video", seconds=1.0)
    val = make_own_media_set(tmp_path / "val", 2, seed=3, kind="video", seconds=1.0)
    run, bundle = _train_and_export(capsys, tmp_path, train, val, "--input-size", "128x96",
                                    "--clip-frames", "2", "--clip-seconds", "1")
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["modalities"] == ["video"]  # inferred: no sample has audio
    assert config["labels"]["audio_tags"] == [] and config["model_config"]["num_audio_tags"] == 0
    history = json.loads((run / "metrics.json").read_text())["history"][0]
    assert "audio_tags" not in history["train"] and "audio_tag_map" not in history["val"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["modalities"] == ["video"]
    names = [o["name"] for o in manifest["outputs"]]
    assert names == ["event_logits", "det_heatmap", "det_size", "det_offset"]

    code, out, err = run_cli(capsys, "eval", "--bundle", bundle, "--data", val, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert "event_accuracy" in metrics and "detection_map50" in metrics and "audio_tag_map" not in metrics

    clip = val / "media" / "003_0000.mp4"
    code, out, err = run_cli(capsys, "predict", "--bundle", bundle, "--video", clip, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["event"] in OWN_EVENTS and result["audio_tags"] == {} and result["missing"] == []

    from fusionedge.sdk import Perception
    from fusionedge.sdk.errors import InputError

    wav = tmp_path / "sound.wav"
    shutil.copy(make_own_media_set(tmp_path / "sound", 1, seed=4, kind="audio", seconds=1.0) / "media"
                / "004_0000.wav", wav)
    with Perception.load(bundle) as p, pytest.raises(InputError, match="reads video only; no video given"):
        p.infer(audio_path=wav)


def test_audio_only_task_without_boxes_needs_no_video_anywhere(tmp_path, capsys):
    train = make_own_media_set(tmp_path / "train", 4, seed=6, kind="audio", seconds=1.0, rate=8000)
    val = make_own_media_set(tmp_path / "val", 2, seed=7, kind="audio", seconds=1.0, rate=8000)
    run, bundle = _train_and_export(capsys, tmp_path, train, val, "--clip-seconds", "1",
                                    "--sample-rate", "8000")
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["modalities"] == ["audio"]  # inferred: no sample has video
    assert config["model_config"]["num_objects"] == 0 and config["model_config"]["f_max"] == 4000
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["modalities"] == ["audio"] and manifest["labels"]["objects"] == []
    assert [o["name"] for o in manifest["outputs"]] == ["event_logits", "audio_tag_logits"]

    code, out, err = run_cli(capsys, "eval", "--bundle", bundle, "--data", val, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert {"event_accuracy", "audio_tag_map"} <= set(metrics) and "detection_map50" not in metrics

    wav = val / "media" / "007_0000.wav"
    code, out, err = run_cli(capsys, "predict", "--bundle", bundle, "--audio", wav, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["event"] in AUDIO_EVENTS
    assert set(result["audio_tags"]) == set(OWN_TAGS)
    assert result["boxes"] == [] and result["missing"] == []
    code, out, err = run_cli(capsys, "quantize", "--bundle", bundle, "--out", tmp_path / "int8",
                             "--data", train, "--validation", val, "--calibration-samples", "2", "--json")
    assert code == 0, err
    assert set(json.loads(out)["gate"]["steps"][-1]["metrics"]) == {"event_accuracy"}  # no boxes: no mAP gate
    clip_set = make_own_media_set(tmp_path / "clip", 1, seed=8, kind="video", seconds=1.0)
    video = clip_set / "media" / "008_0000.mp4"
    code, out, err = run_cli(capsys, "predict", "--bundle", bundle, "--video", video)
    assert code == 2 and "reads audio only; no audio given" in err and len(err.strip().splitlines()) == 1


def test_a_geometry_the_model_cannot_take_is_one_line_and_nothing_is_written(tmp_path, capsys):
    data = make_own_media_set(tmp_path / "data", 1, seed=5, seconds=1.0)
    for argv, words in ((["--input-size", "100x96"], "100x96"),
                        (["--input-size", "320by240"], "--input-size '320by240'"),
                        (["--clip-frames", "0"], "clip_frames=0"),
                        (["--clip-seconds", "0"], "clip_seconds=0"),
                        (["--output-stride", "8"], "output_stride"),
                        (["--modalities", "lidar"], "--modalities 'lidar'")):
        out = tmp_path / "run"
        code, _, err = run_cli(capsys, "train", "--data", data, "--out", out, *TINY, *argv)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not out.exists()
