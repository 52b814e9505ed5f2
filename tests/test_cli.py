"""End to end through the ``fusionedge`` command line: synth → train → export → eval → predict,
the user errors each verb must turn into one clear line (exit status 2), and what every verb shares:
the verb list, strict ``--json``, one ``--backends`` parser, the guard for a missing extra, a closed
pipe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
from fusionedge.cli.main import build_parser, main
from fusionedge.cli.options import parse_backends

ROOT = Path(__file__).resolve().parents[1]
FUSIONEDGE = Path(sys.executable).parent / "fusionedge"


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


@pytest.mark.slow
def test_eval_json_reports_every_metric(pipeline, capsys):
    code, out, _ = run_cli(capsys, "eval", "--bundle", pipeline["bundle"], "--data", pipeline["test"], "--json")
    assert code == 0
    m = json.loads(out)
    assert m["samples"] == 8
    for key in ("event_accuracy", "event_macro_f1", "audio_tag_map", "detection_map50"):
        assert 0.0 <= m[key] <= 1.0, key
    per_class = m["detection_ap50_per_class"]  # the classes with a box in the split, their mean the mAP
    assert per_class and set(per_class) <= {"car", "pedestrian", "traffic_light", "emergency_vehicle"}
    assert sum(per_class.values()) / len(per_class) == pytest.approx(m["detection_map50"])
    assert m["backend"] == "onnxruntime"


def test_eval_text_prints_the_ap_of_each_class_under_the_map():
    from fusionedge.cli.predict import format_metrics

    text = format_metrics({"detection_map50": 0.5, "detection_ap50_per_class": {"car": 0.75, "pedestrian": 0.25},
                           "samples": 4})
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["detection_map50", "0.5000"]
    assert lines[1].strip() == "per class: car 0.7500, pedestrian 0.2500"
    assert "per class" not in format_metrics({"detection_map50": 0.5, "samples": 4})


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_predict_without_audio_runs_on_vision_and_says_so(pipeline, capsys):
    s = _first_sample(pipeline["test"])
    code, out, _ = run_cli(capsys, "predict", "--bundle", pipeline["bundle"],
                           "--video", pipeline["test"] / s["video"])
    assert code == 0
    assert "missing sensors: audio" in out


@pytest.mark.slow
def test_truncated_video_is_a_clear_error(pipeline, capsys, tmp_path):
    s = _first_sample(pipeline["test"])
    data = (pipeline["test"] / s["video"]).read_bytes()
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(data[: len(data) // 10])
    code, _, err = run_cli(capsys, "predict", "--bundle", pipeline["bundle"], "--video", bad)
    assert code == 2
    assert "truncated.mp4" in err and "error" in err


@pytest.mark.slow
def test_wav_that_is_not_audio_is_a_clear_error(pipeline, capsys, tmp_path):
    s = _first_sample(pipeline["test"])
    bad = tmp_path / "notaudio.wav"
    bad.write_text("this is not a wav file\n" * 50)
    code, _, err = run_cli(capsys, "predict", "--bundle", pipeline["bundle"],
                           "--video", pipeline["test"] / s["video"], "--audio", bad)
    assert code == 2
    assert "notaudio.wav" in err


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_quickstart_refuses_a_bad_size_and_data_of_another_size(tmp_path, capsys):
    work = tmp_path / "qs"
    code, _, err = run_cli(capsys, "quickstart", "--workdir", work, "--train-samples", "0")
    assert code != 0 and "train-samples" in err and "0" in err
    code, _, err = run_cli(capsys, "quickstart", "--workdir", work, "--epochs", "-2")
    assert code != 0 and "epochs" in err and "-2" in err
    assert not work.exists(), "a refused size must not create the work folder"
    # A train split of 3 clips left by an earlier run is not silently trained on as 5.
    assert main(["data", "synth", "--out", str(work / "data" / "train"), "--samples", "3", "--seed", "0",
                 "--workers", "1", "--json"]) == 0
    capsys.readouterr()
    code, _, err = run_cli(capsys, "quickstart", "--workdir", work, "--train-samples", "5", "--epochs", "1")
    assert code != 0 and "holds 3 clips, not the 5" in err and "--overwrite" in err
    assert not (work / "run").exists() and not (work / "data" / "val").exists()


def test_data_synth_cue_agreement(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "data", "synth", "--out", tmp_path / "pool", "--samples", "4", "--seed", "2",
                           "--workers", "1", "--cue-agreement", "1.0", "--json")
    assert code == 0 and json.loads(out)["cue_agreement"] == 1.0
    from fusionedge.sdk.datamanifest import read_manifest

    assert {s.event for s in read_manifest(tmp_path / "pool")} <= {"none", "emergency_ahead"}
    code, _, err = run_cli(capsys, "data", "synth", "--out", tmp_path / "bad", "--samples", "2",
                           "--cue-agreement", "2")
    assert code == 2 and "cue_agreement" in err and not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------ what verbs share


def _readme_verbs() -> set[str]:
    """The verbs of README.md's command table (``| `fusionedge VERB ...` |``)."""
    verbs = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `fusionedge "):
            first = line.split("`")[1].split()[1]
            verbs.update(first.split("\\|"))
    return verbs


def _subparsers(parser) -> dict:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_parsers(parser, path=()) -> list[tuple[tuple[str, ...], object]]:
    out = [(path, parser)]
    for name, sub in _subparsers(parser).items():
        out += _all_parsers(sub, (*path, name))
    return out


def test_help_lists_every_verb_and_the_readme_table_names_only_real_verbs():
    out = subprocess.run([str(FUSIONEDGE), "--help"], capture_output=True, text=True, check=True).stdout
    registered = set(_subparsers(build_parser()))
    assert {"data", "train", "pretrain", "distill", "report", "export", "eval", "predict", "quickstart", "run",
            "quantize", "fp16", "engine", "compare", "bench", "fleet"} <= registered
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()}
    assert registered <= listed, f"not in --help: {registered - listed}"
    assert _readme_verbs() <= registered, f"README names verbs that do not exist: {_readme_verbs() - registered}"
    fleet = subprocess.run([str(FUSIONEDGE), "fleet", "--help"], capture_output=True, text=True,
                           check=True).stdout
    for verb in ("init", "publish", "rollout", "timestamp", "resign", "rotate-key", "status", "serve", "agent",
                 "watch"):
        assert f"    {verb}" in fleet, verb


def test_parsing_imports_no_heavy_library_and_no_lower_part_than_needed():
    script = ("import sys\n"
              "from fusionedge.cli.main import build_parser\n"
              "build_parser().parse_args(['fleet', 'status', 'r'])\n"
              "heavy = ('torch', 'tuf', 'securesystemslib', 'paho', 'mlperf_loadgen', 'onnxruntime', 'onnx', 'cv2',\n"
              "         'numpy', 'fusionedge.training', 'fusionedge.export', 'fusionedge.benchmarks.harness')\n"
              "print(sorted({m for m in sys.modules for h in heavy if m == h or m.startswith(h + '.')}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_backends_are_parsed_in_one_place():
    assert parse_backends("tensorrt, onnxruntime ,") == ["tensorrt", "onnxruntime"]
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="backend"):
        parse_backends(" , ")
    with_backends = []
    for path, parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if action.dest == "backends":
                with_backends.append(" ".join(path))
                assert action.type is parse_backends, f"{' '.join(path)} parses --backends its own way"
    assert {"eval", "predict", "run", "compare", "bench", "fleet agent"} <= set(with_backends)
    args = build_parser().parse_args(["fleet", "agent", "--url", "u", "--device-id", "d", "--state-dir", "s",
                                      "--device-class", "c", "--model", "m", "--backends", "tensorrt,onnxruntime"])
    assert args.backends == ["tensorrt", "onnxruntime"]
    assert build_parser().parse_args(["eval", "--bundle", "b", "--data", "d"]).backends == ["onnxruntime"]


def test_json_output_is_strict_an_undefined_metric_is_null(tmp_path_factory, tmp_path):
    """``eval --json`` on a split without any box: detection mAP is undefined (NaN) and prints as null."""
    from _toy_model import shared_toy_bundle

    bundle = shared_toy_bundle(tmp_path_factory)
    data = tmp_path / "data"
    assert main(["data", "synth", "--out", str(data), "--samples", "3", "--workers", "1", "--json"]) == 0
    manifest = data / "manifest.jsonl"
    samples = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({**s, "boxes": []}) + "\n" for s in samples))
    proc = subprocess.run([str(FUSIONEDGE), "eval", "--bundle", str(bundle), "--data", str(data), "--json"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

    def refuse(name: str) -> None:
        raise AssertionError(f"--json printed {name}, which is not JSON")

    metrics = json.loads(proc.stdout, parse_constant=refuse)
    assert metrics["detection_map50"] is None and metrics["samples"] == 3


def _many_records_results(path: Path) -> Path:
    """A valid bench results file whose comparison prints well over a pipe's buffer (64 KiB)."""
    from fusionedge.benchmarks.results import write_results
    from test_bench_results import _record, good_doc  # the bench tests' own valid document

    doc = good_doc()
    doc["records"] = [_record(f"ort{i}", "SingleStream", "engine", 2.0) for i in range(1500)]
    write_results(doc, path)
    return path


def test_a_reader_that_closes_the_pipe_ends_the_verb_quietly(tmp_path):
    """``fusionedge ... --json | head -c1``: no traceback, exit status 141 like a shell's SIGPIPE.

    Run with Python's default (buffered) stdout: under ``PYTHONUNBUFFERED`` the interpreter drops
    the unwritten rest of a partial write without an error, and there is nothing to handle.
    """
    results = _many_records_results(tmp_path / "a.json")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    cli = subprocess.Popen([str(FUSIONEDGE), "bench", "compare", str(results), str(results), "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    head = subprocess.Popen(["head", "-c1"], stdin=cli.stdout, stdout=subprocess.PIPE)
    cli.stdout.close()  # head holds the only reading end
    first, _ = head.communicate(timeout=60)
    err = cli.stderr.read().decode()
    cli.stderr.close()
    assert cli.wait(timeout=60) == 141, err
    assert first == b"{"
    assert err == "", "a closed pipe must not print a traceback or 'Exception ignored'"


def test_a_path_the_machine_refuses_is_one_line_naming_it():
    proc = subprocess.run([str(FUSIONEDGE), "data", "synth", "--out", "/proc/x", "--samples", "2"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusionedge data synth: error: ") and "/proc/x" in lines[0], \
        proc.stderr


def test_every_verb_that_needs_an_extra_is_guarded_and_no_other():
    needs = {"train": "train", "pretrain": "train", "distill": "train", "report": "train", "export": "train",
             "quickstart": "train", "quantize": "train", "fp16": "train", "compress": "train",
             "bench": "bench", "qa train": "train", "qa finetune-detection": "train", "qa export": "train",
             "qa report": "qa", "ask": "qa",
             **{f"fleet {v}": "fleet" for v in ("init", "publish", "rollout", "timestamp", "resign", "rotate-key",
                                               "status", "serve", "agent", "watch")}}
    found = {}
    for path, parser in _all_parsers(build_parser()):
        func = parser.get_default("func")
        if func is not None and path:
            found[" ".join(path)] = getattr(func, "extra", None)
    assert {verb: extra for verb, extra in found.items() if extra is not None} == needs
    for light in ("eval", "predict", "run", "compare", "data synth", "engine build", "engine check",
                  "bench compare"):
        assert found[light] is None, f"{light} needs no extra"


_SHIM = """raise ImportError("{name} is made unimportable for this test")\n"""


@pytest.mark.parametrize("extra,module,argv", [
    ("fleet", "tuf", ["fleet", "status", "REPO"]),
    ("fleet", "paho", ["fleet", "agent", "--url", "http://127.0.0.1:9", "--device-id", "d", "--state-dir", "S",
                       "--device-class", "x86-cpu", "--model", "m"]),
    ("train", "torch", ["train", "--data", "DATA", "--out", "RUN"]),
    ("train", "torch", ["quickstart", "--workdir", "RUN"]),
    ("bench", "mlperf_loadgen", ["bench", "--bundle", "B", "--out", "RUN"]),
])
def test_a_verb_whose_extra_is_missing_is_listed_and_says_what_to_install(tmp_path, extra, module, argv):
    """The extra's module is made unimportable by a package of that name first on PYTHONPATH."""
    shim = tmp_path / "shim" / module
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(_SHIM.format(name=module))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shim")}
    argv = [a.replace("REPO", str(tmp_path / "repo")).replace("DATA", str(tmp_path / "data"))
            .replace("RUN", str(tmp_path / "run")).replace("S", str(tmp_path / "state")) if a.isupper() else a
            for a in argv]
    help_out = subprocess.run([str(FUSIONEDGE), "--help"], check=False, capture_output=True, text=True, env=env,
                              timeout=60)
    assert help_out.returncode == 0 and f"    {argv[0]}" in help_out.stdout
    proc = subprocess.run([str(FUSIONEDGE), *argv], check=False, capture_output=True, text=True, env=env,
                          timeout=60)
    verb = " ".join(argv[:2]) if argv[0] == "fleet" else argv[0]
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"fusionedge {verb}: error: this verb needs the '{extra}' extra: pip install 'fusionedge[{extra}]'"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "repo").exists()

