"""Several cameras when things go wrong: bad input refused as one typed error naming it (in the API and
as one line with exit 2 from ``run``), and a camera killed mid-run: the other keeps its frame rate, the
dead one is reported, retried and comes back."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _toy_model import shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.streaming import CallbackSink, MosaicSink, MultiPipeline
from test_streaming_faults import CONFIG, FPS, FakeCamera, FakeMic
from test_streaming_pipeline import write_clip


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def perception(bundle_dir):
    with Perception.load(bundle_dir, backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
        yield p


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("faults"), 0.5, seed=3)[0]


def test_bad_sources_in_the_api_are_one_typed_error_naming_them(perception, clip):
    cases = [
        ({"cameras": [("front", "ftp://cam/1")]}, "unknown scheme 'ftp'"),
        ({"cameras": [("front", str(clip))], "mics": [("cabin", "smb://mic")]}, "unknown scheme 'smb'"),
        ({"cameras": [("front", str(clip))], "mics": [("front", str(clip))]}, "'front' is given twice"),
        ({"cameras": [("front camera", str(clip))]}, "source name 'front camera'"),
        ({"cameras": []}, "at least one camera"),
        ({"cameras": [("front", str(clip))], "mics": [("cabin", str(clip))], "hears": {"cabin": ["rear"]}},
         "unknown camera 'rear'"),
        ({"cameras": [("front", str(clip))], "mics": [("a", str(clip)), ("b", str(clip))]}, "say which cameras hear"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            MultiPipeline(perception, **kwargs)


def _run_cli(bundle_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusionedge.cli.run", "--bundle", str(bundle_dir), "--fast",
                           "--no-progress", *args], check=False, capture_output=True, text=True, timeout=120)


def test_bad_sources_on_the_command_line_are_one_line_and_exit_2(bundle_dir, perception, clip):
    hi = perception.backend.io.batch_max
    cases = [
        (["--source", "front=ftp://cam/1"], "unknown scheme 'ftp'"),
        ([arg for i in range(hi + 1) for arg in ("--source", f"c{i}={clip}")],
         f"{hi + 1} cameras, but bundle"),
    ]
    for args, message in cases:
        proc = _run_cli(bundle_dir, *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr


def test_a_camera_killed_mid_run_is_reported_and_retried_while_the_other_keeps_its_rate(perception, tmp_path):
    rear: list = []  # killed after 0.5 s; its first 3 reopenings fail, then it comes back
    results: list = []
    multi = MultiPipeline(
        perception, cameras=[("front", lambda clock: FakeCamera(clock)),
                             ("rear", lambda clock: rear.append(FakeCamera(clock, "error", 10, 3)) or rear[0])],
        sinks=[CallbackSink(results.append)], config=CONFIG)
    mosaic = MosaicSink(tmp_path / "mosaic.mp4", ["front", "rear"], FPS, tile=(48, 32))
    multi.add_sink(mosaic)
    threading.Timer(3.0, multi.request_stop).start()
    summary = multi.run()
    front = sorted(r.t for r in results if r.camera == "front")
    before = sum(1 for t in front if t < 0.5) / 0.5  # results per second while both cameras ran
    after = sum(1 for t in front if 1.0 <= t < 2.5) / 1.5  # while the rear camera was down and retried
    assert before >= 0.6 * FPS and after >= 0.85 * before, (before, after)
    assert summary["cameras"]["front"]["dropped"] == 0
    states = [e.state for e in multi.pipelines["rear"].health_events if e.modality == "video"]
    assert "error" in states and states[-1] == "ok"  # reported, then recovered
    assert rear[0].opens == 5  # the first opening, three refused, the one that worked
    assert summary["sensors"]["rear/video"]["failures"] >= 1 and summary["sensors"]["rear/video"]["recoveries"] == 1
    rear_t = [r.t for r in results if r.camera == "rear" and r.frame is not None]
    assert max(rear_t) > 1.0 and min(rear_t) < 0.5  # frames before it died and after it came back
    # the mosaic showed the rear camera as no signal while it was down, and its frames again after
    assert 3 <= mosaic.no_signal_tiles <= mosaic.frames_written - 10 and mosaic.frames_written >= 40


def test_a_shared_microphone_that_fails_is_reopened_once_and_every_camera_hears_it_again(perception):
    mic: list = []  # fails after 0.5 s; its first reopening is refused, the next works
    results: list = []
    multi = MultiPipeline(
        perception, cameras=[("front", lambda clock: FakeCamera(clock)), ("rear", lambda clock: FakeCamera(clock))],
        mics=[("cabin", lambda clock: mic.append(FakeMic(clock, "error", 25, 1)) or mic[0])],
        sinks=[CallbackSink(results.append)], config=CONFIG)
    threading.Timer(3.0, multi.request_stop).start()
    summary = multi.run()
    assert len(mic) == 1 and 3 <= mic[0].opens <= 4  # one device for both cameras: opened, failed, retried
    for cam in ("front", "rear"):
        audio = summary["sensors"][f"{cam}/audio"]
        assert audio["state"] == "ok" and audio["failures"] >= 1 and audio["recoveries"] >= 1
        late = [r for r in results if r.camera == cam and r.t > 2.0]
        assert len(late) >= 10 and all("audio" not in r.result.missing for r in late)  # fusion resumed
