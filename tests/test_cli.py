"""End to end through the ``fusionedge`` command line: synth → train → export → eval → predict,
and the user errors each verb must turn into one clear line (exit status 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusionedge.cli.main import main

pytestmark = pytest.mark.slow


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained and exported model, made through the CLI itself."""
    root = tmp_path_factory.mktemp("cli")
    train, test, run, bundle = root / "train", root / "test", root / "run", root / "bundle"
    assert main(["data", "synth", "--out", str(train), "--samples", "24", "--seed", "0", "--json"]) == 0
    assert main(["data", "synth", "--out", str(test), "--samples", "8", "--seed", "7", "--json"]) == 0
    assert main(["train", "--data", str(train), "--val", str(test), "--out", str(run),
                 "--epochs", "1", "--batch-size", "8", "--json"]) == 0
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(bundle), "--json"]) == 0
    return {"root": root, "train": train, "test": test, "run": run, "bundle": bundle}


def _first_sample(data: Path) -> dict:
    return json.loads((data / "manifest.jsonl").read_text().splitlines()[0])


def test_eval_json_reports_every_metric(pipeline, capsys):
    code, out, _ = run_cli(capsys, "eval", "--bundle", pipeline["bundle"], "--data", pipeline["test"], "--json")
    assert code == 0
    m = json.loads(out)
    assert m["samples"] == 8
    for key in ("event_accuracy", "event_macro_f1", "audio_tag_map", "detection_map50"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["backend"] == "onnxruntime"


def test_predict_json_on_generated_clip(pipeline, capsys):
    s = _first_sample(pipeline["test"])
    code, out, _ = run_cli(capsys, "predict", "--bundle", pipeline["bundle"],
                           "--video", pipeline["test"] / s["video"], "--audio", pipeline["test"] / s["audio"], "--json")
    assert code == 0
    r = json.loads(out)
    assert r["event"] in r["scores"]
    assert abs(sum(r["scores"].values()) - 1.0) < 1e-4
    assert set(r["audio_tags"]) == {"siren", "horn", "speech", "engine"}
    for b in r["boxes"]:
        assert {"label", "score", "x1", "y1", "x2", "y2"} <= set(b)
        assert 0 <= b["x1"] <= b["x2"] <= s["width"] and 0 <= b["y1"] <= b["y2"] <= s["height"]


def _reencode(src: Path, dst: Path, size: tuple[int, int], fps: float) -> None:
    cap = cv2.VideoCapture(str(src))
    w = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    ok, frame = cap.read()
    while ok:
        for _ in range(2):  # double the frame count to go with the higher rate
            w.write(cv2.resize(frame, size))
        ok, frame = cap.read()
    w.release()
    cap.release()


def _to_stereo(src: Path, dst: Path, rate: int) -> None:
    with wave.open(str(src)) as f:
        x = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float64)
        sr = f.getframerate()
    t_new = np.arange(int(len(x) * rate / sr)) / rate
    y = np.interp(t_new, np.arange(len(x)) / sr, x).astype(np.int16)
    with wave.open(str(dst), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.stack([y, y], 1).tobytes())


def test_predict_foreign_media_other_size_rate_and_stereo_audio(pipeline, capsys, tmp_path):
    s = _first_sample(pipeline["test"])
    video, audio = tmp_path / "clip.avi", tmp_path / "clip.wav"
    _reencode(pipeline["test"] / s["video"], video, (640, 360), 24.0)
    _to_stereo(pipeline["test"] / s["audio"], audio, 44100)
    code, out, _ = run_cli(capsys, "predict", "--bundle", pipeline["bundle"], "--video", video,
                           "--audio", audio, "--json", "--out", tmp_path / "annotated.mp4")
    assert code == 0
    r = json.loads(out)
    assert r["missing"] == []
    for b in r["boxes"]:
        assert 0 <= b["x1"] <= b["x2"] <= 640 and 0 <= b["y1"] <= b["y2"] <= 360
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 640
    ok, _ = cap.read()
    assert ok
    cap.release()


def test_predict_without_audio_runs_on_vision_and_says_so(pipeline, capsys):
    s = _first_sample(pipeline["test"])
    code, out, _ = run_cli(capsys, "predict", "--bundle", pipeline["bundle"],
                           "--video", pipeline["test"] / s["video"])
    assert code == 0
    assert "missing sensors: audio" in out


def test_truncated_video_is_a_clear_error(pipeline, capsys, tmp_path):
    s = _first_sample(pipeline["test"])
    data = (pipeline["test"] / s["video"]).read_bytes()
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(data[: len(data) // 10])
    code, _, err = run_cli(capsys, "predict", "--bundle", pipeline["bundle"], "--video", bad)
    assert code == 2
    assert "truncated.mp4" in err and "error" in err


def test_wav_that_is_not_audio_is_a_clear_error(pipeline, capsys, tmp_path):
    s = _first_sample(pipeline["test"])
    bad = tmp_path / "notaudio.wav"
    bad.write_text("this is not a wav file\n" * 50)
    code, _, err = run_cli(capsys, "predict", "--bundle", pipeline["bundle"],
                           "--video", pipeline["test"] / s["video"], "--audio", bad)
    assert code == 2
    assert "notaudio.wav" in err


def test_manifest_line_missing_a_field_names_line_and_field(pipeline, capsys, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pipeline["test"], data)
    lines = (data / "manifest.jsonl").read_text().splitlines()
    broken = json.loads(lines[2])
    del broken["event"]
    lines[2] = json.dumps(broken)
    (data / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "eval", "--bundle", pipeline["bundle"], "--data", data)
    assert code == 2
    assert ":3" in err and "event" in err


def test_altered_model_is_refused_and_nothing_runs(pipeline, capsys, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(pipeline["bundle"], bundle)
    model = bundle / "model.onnx"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    code, out, err = run_cli(capsys, "eval", "--bundle", bundle, "--data", pipeline["test"], "--json")
    assert code == 2
    assert out == ""
    assert "model.onnx" in err and "sha256" in err


def test_missing_bundle_and_unknown_backend(pipeline, capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "--bundle", tmp_path / "nope", "--data", pipeline["test"])
    assert code == 2 and "nope" in err
    code, _, err = run_cli(capsys, "eval", "--bundle", pipeline["bundle"], "--data", pipeline["test"],
                           "--backends", "warpdrive")
    assert code == 2 and "warpdrive" in err


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "fusionedge"
    assert exe.exists(), "the fusionedge console script is not installed next to this Python"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for verb in ("data", "train", "export", "eval", "predict", "quickstart"):
        assert verb in out


def test_quickstart_orchestration_on_a_tiny_config(tmp_path, capsys):
    from fusionedge.cli.quickstart import QuickstartConfig, run_quickstart

    cfg = QuickstartConfig(workdir=tmp_path / "qs", train_samples=24, val_samples=8, test_samples=12,
                           epochs=1, progress=False, min_event_accuracy=0.0)
    summary = run_quickstart(cfg)
    bundle = tmp_path / "qs" / "bundle"
    assert (bundle / "manifest.json").is_file()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["metrics"]["test"]["samples"] == 12
    assert json.loads((tmp_path / "qs" / "summary.json").read_text())["test"] == summary["test"]
    assert Path(summary["sample"]["annotated"]).is_file()
    assert "quickstart finished" in capsys.readouterr().out


def test_data_synth_cue_agreement(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "data", "synth", "--out", tmp_path / "pool", "--samples", "4", "--seed", "2",
                           "--workers", "1", "--cue-agreement", "1.0", "--json")
    assert code == 0 and json.loads(out)["cue_agreement"] == 1.0
    from fusionedge.sdk.datamanifest import read_manifest

    assert {s.event for s in read_manifest(tmp_path / "pool")} <= {"none", "emergency_ahead"}
    code, _, err = run_cli(capsys, "data", "synth", "--out", tmp_path / "bad", "--samples", "2",
                           "--cue-agreement", "2")
    assert code == 2 and "cue_agreement" in err and not (tmp_path / "bad").exists()
