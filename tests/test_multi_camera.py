"""Several cameras and one microphone in one run: results and events per camera, one batched inference
per tick equal to per-camera inference, a camera that ends early while the other goes on, and bad input
(duplicate names, unknown schemes, more cameras than the bundle's batch) as one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _toy_model import shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.streaming import CallbackSink, JsonlEventSink, MultiPipeline, PipelineConfig
from fusionedge.sdk.streaming.multi import parse_named_source
from test_streaming_pipeline import write_clip

OFFLINE = PipelineConfig(policy="offline", realtime=False)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def perception(bundle_dir):
    with Perception.load(bundle_dir, backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
        yield p


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi")
    long_v, long_a = write_clip(folder, 2.0, seed=1)
    short_v, _ = write_clip(folder, 0.5, seed=2)  # the camera whose file ends early
    return long_v, long_a, short_v


def _run(perception, cameras, mic, *, batched=True, tmp=None):
    results = []
    sinks = [CallbackSink(results.append)]
    if tmp is not None:
        sinks.append(JsonlEventSink(tmp / "events.jsonl"))
    multi = MultiPipeline(perception, cameras=cameras, mics=[("cabin", str(mic))], sinks=sinks, config=OFFLINE,
                          batched=batched, max_wait=0.05)
    return multi.run(), results


def test_two_cameras_one_mic_results_per_camera_and_batched_equals_per_camera(perception, clips, tmp_path):
    long_v, long_a, _ = clips
    cams = [("front", str(long_v)), ("rear", str(long_v))]
    summary, results = _run(perception, cams, long_a, tmp=tmp_path)
    assert summary["cameras"]["front"]["results"] == summary["cameras"]["rear"]["results"] == 40
    assert summary["dropped"] == 0 and summary["mean_batch"] > 1.0  # the cameras shared inferences
    assert {r.camera for r in results} == {"front", "rear"}
    assert all(r.result.missing == () for r in results if r.index >= 5)  # both heard the one microphone
    rows = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {r["camera"] for r in rows if r["type"] == "result"} == {"front", "rear"}
    # the same frames on both cameras: the batched rows equal each other and a per-camera run
    _, alone = _run(perception, cams, long_a, batched=False)
    by = lambda rs, cam: {r.index: r.result.scores for r in rs if r.camera == cam}
    for cam in ("front", "rear"):
        got, want = by(results, cam), by(alone, cam)
        assert got.keys() == want.keys()
        for k in got:
            assert np.allclose(list(got[k].values()), list(want[k].values()), atol=1e-5)


def test_a_camera_that_ends_early_does_not_stop_the_other(perception, clips):
    long_v, long_a, short_v = clips
    summary, results = _run(perception, [("front", str(long_v)), ("rear", str(short_v))], long_a)
    assert summary["cameras"]["front"]["results"] == 40
    assert summary["cameras"]["rear"]["frames_captured"] == 10
    assert summary["sensors"]["rear/video"]["state"] == "ended"  # reported, per camera
    assert max(r.t for r in results if r.camera == "front") > 1.5


def test_bad_input_is_one_typed_error_naming_it(perception, clips, bundle_dir):
    long_v = clips[0]
    with pytest.raises(InputError, match="'front' is given twice"):
        MultiPipeline(perception, cameras=[("front", str(long_v)), ("front", str(long_v))])
    with pytest.raises(InputError, match="unknown scheme 'ftp'"):
        parse_named_source("front=ftp://x/y", "video")
    with pytest.raises(InputError, match="NAME=URI"):
        parse_named_source(str(long_v), "video")
    hi = perception.backend.io.batch_max
    with pytest.raises(InputError, match=rf"{hi + 1} cameras, but bundle .* batch of 1 to {hi}"):
        MultiPipeline(perception, cameras=[(f"c{i}", str(long_v)) for i in range(hi + 1)])
    proc = subprocess.run([sys.executable, "-m", "fusionedge.cli.run", "--bundle", str(bundle_dir), "--source",
                           f"a={long_v}", "--source", f"a={long_v}", "--no-progress"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "given twice" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
