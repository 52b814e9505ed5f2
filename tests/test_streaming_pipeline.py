"""Streaming pipeline end to end on the toy bundle: parity with offline preprocessing, both queue
policies, sinks, and a clean shutdown on SIGINT of `fusionedge run` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from _toy_model import shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk.media import read_audio, read_video
from fusionedge.sdk.postprocess import softmax
from fusionedge.sdk.preprocess import preprocess_audio, preprocess_video
from fusionedge.sdk.streaming import CallbackSink, JsonlEventSink, Pipeline, PipelineConfig, VideoFileSink

FPS = 20.0


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def perception(bundle_dir):
    with Perception.load(bundle_dir, backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
        yield p


def write_clip(folder: Path, seconds: float, fps: float = FPS, rate: int = 8000, seed: int = 0) -> tuple[Path, Path]:
    """A moving-noise video (96x64) and a tone + noise WAV of the same length."""
    rng = np.random.default_rng(seed)
    video, audio = folder / f"clip{seed}.mp4", folder / f"clip{seed}.wav"
    n = int(round(seconds * fps))
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (96, 64))
    base = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    for i in range(n):
        w.write(np.roll(base, 3 * i, axis=1))
    w.release()
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.uniform(-1, 1, t.size)) * 32767
    with wave.open(str(audio), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes(pcm.astype("<i2").tobytes())
    return video, audio


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    return write_clip(tmp_path_factory.mktemp("stream"), 3.0)


def test_replay_matches_offline_preprocessing_step_for_step(perception, clip):
    results = []
    pipe = Pipeline(perception, video=str(clip[0]), audio=str(clip[1]), sinks=[CallbackSink(results.append)],
                    config=PipelineConfig(policy="offline", realtime=False))
    summary = pipe.run()
    assert summary["results"] == summary["frames_captured"] == 60 and summary["dropped"] == 0
    g = perception.geometry
    frames = read_video(clip[0]).frames
    samples, rate = read_audio(clip[1])
    for k in (5, 31, 59):  # steps with a full window behind them
        r = results[k]
        assert r.index == k and r.t == pytest.approx(k / FPS) and r.result.missing == ()
        video = preprocess_video(frames, FPS, g, start_seconds=(k + 1) / FPS - g.clip_seconds)
        audio = preprocess_audio(samples, rate, g, start_seconds=k / FPS - g.clip_seconds)
        out = perception.infer_batch(video[None], audio[None], np.ones((1, 2), np.float32))
        want = softmax(out["event_logits"][0].astype(np.float64))
        got = np.array([r.result.scores[e] for e in perception.labels["events"]])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert results[0].result.missing == ("audio",)  # no audio before the stream began


def _slow(results: list, delay: float):
    def on_result(r):
        results.append(r)
        time.sleep(delay)
    return on_result


def test_live_policy_drops_when_behind_and_counts_every_drop(perception, clip):
    results: list = []
    pipe = Pipeline(perception, video=str(clip[0]), audio=str(clip[1]), sinks=[CallbackSink(_slow(results, 0.15))],
                    config=PipelineConfig(policy="live", realtime=True, queue_size=1))
    s = pipe.run()
    assert s["dropped"] > 0
    assert s["results"] == len(results) == s["frames_captured"] - s["dropped"] - s["discarded_at_stop"]
    assert [r.index for r in results] == sorted(r.index for r in results)


def test_offline_policy_drops_nothing_when_behind(perception, clip):
    results: list = []
    pipe = Pipeline(perception, video=str(clip[0]), audio=str(clip[1]), sinks=[CallbackSink(_slow(results, 0.005))],
                    config=PipelineConfig(policy="offline", realtime=False, queue_size=1))
    s = pipe.run()
    assert s["dropped"] == 0 and s["results"] == s["frames_captured"] == 60
    assert [r.index for r in results] == list(range(60))
    assert s["stuck_threads"] == 0
    assert s["latency_ms"]["infer"]["n"] == 60 and "capture_to_result" in s["latency_ms"]


def test_sinks_write_a_playable_video_and_a_complete_event_log(perception, clip, tmp_path):
    out, events = tmp_path / "annotated.mp4", tmp_path / "events.jsonl"
    pipe = Pipeline(perception, video=str(clip[0]), audio=str(clip[1]),
                    sinks=[VideoFileSink(out, FPS), JsonlEventSink(events)],
                    config=PipelineConfig(policy="offline", realtime=False))
    pipe.run()
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    results = [x for x in lines if x["type"] == "result"]
    assert [x["index"] for x in results] == list(range(60))
    assert {x["state"] for x in lines if x["type"] == "health"} >= {"ok", "ended"}
    assert read_video(out).frames.shape == (60, 64, 96, 3)


def test_stop_ends_every_thread(perception, clip):
    before = set(threading.enumerate())
    pipe = Pipeline(perception, video=str(clip[0]), audio=str(clip[1]),
                    config=PipelineConfig(policy="live", realtime=True))
    pipe.start()
    time.sleep(0.3)
    pipe.stop()
    assert pipe.wait(1.0)
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert pipe.stats()["stuck_threads"] == 0


@pytest.mark.slow
def test_sigint_shuts_run_down_cleanly_with_complete_outputs(bundle_dir, tmp_path):
    video, audio = write_clip(tmp_path, 20.0, seed=1)
    out, events = tmp_path / "o.mp4", tmp_path / "e.jsonl"
    cmd = [sys.executable, "-m", "fusionedge.cli.run", "--bundle", str(bundle_dir), "--video", str(video),
           "--audio", str(audio), "--out", str(out), "--events", str(events), "--realtime", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not events.exists() or events.read_text().count('"result"') < 30):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] and summary["stuck_threads"] == 0
    assert summary["frames_captured"] < 400  # it really stopped early
    lines = [json.loads(line) for line in events.read_text().splitlines()]  # every line whole
    n_video = sum(1 for x in lines if x["type"] == "result" and "video" not in x["missing"])
    assert n_video == summary["results_with_video"] >= 30
    assert read_video(out).frames.shape[0] == n_video  # the index was written: it plays


def test_run_verb_registers_and_reports_bad_input_on_one_line(bundle_dir, clip, capsys):
    import argparse

    from fusionedge.cli.run import add_run_parser, main

    parser = argparse.ArgumentParser()
    add_run_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["run", "--bundle", "b", "--video", "csi://0", "--fast"])
    assert (args.video, args.realtime, args.policy) == ("csi://0", False, None)
    assert main(["--bundle", str(bundle_dir), "--video", "v4l2://front"]) == 2
    assert "device number" in capsys.readouterr().err
    assert main(["--bundle", str(bundle_dir), "--video", str(clip[0]), "--fast", "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["policy"] == "offline" and summary["results"] == 60 and summary["dropped"] == 0
