"""Several cameras in one annotated video: the grid, tiles labelled and annotated with track ids, a camera
that is down shown as "no signal", a writer that never holds a live camera up, and the ``run`` flags
(``--out FILE.mp4`` one mosaic, ``--out-dir DIR`` one file per camera), on real small video files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from _toy_model import shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk.annotate import NO_SIGNAL_COLOUR, draw_result, draw_tile, no_signal_tile
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.perception import Result
from fusionedge.sdk.postprocess import Detection
from fusionedge.sdk.streaming import MosaicSink, MultiPipeline, PipelineConfig, StreamResult
from fusionedge.sdk.streaming.mosaic import grid_shape
from test_streaming_pipeline import write_clip

TILE = (96, 64)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mosaic")
    return write_clip(folder, 2.0, seed=1)[0], write_clip(folder, 0.5, seed=2)[0]  # 20 FPS, 96x64


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def test_grid_is_the_smallest_square_or_the_columns_given():
    assert [grid_shape(n) for n in (1, 2, 3, 4, 5, 9, 10)] == [(1, 1), (1, 2), (2, 2), (2, 2), (2, 3), (3, 3),
                                                               (3, 4)]
    assert grid_shape(3, columns=1) == (3, 1) and grid_shape(2, columns=5) == (1, 2)
    for bad in ((0, None), (2, 0)):
        with pytest.raises(InputError):
            grid_shape(*bad)
    with pytest.raises(InputError, match="unique"):
        MosaicSink("m.mp4", ["a", "a"], 30.0)
    with pytest.raises(InputError, match="tile"):
        MosaicSink("m.mp4", ["a"], 30.0, tile=(15, 64))


def test_tiles_scale_boxes_and_draw_track_ids_and_the_camera_name():
    frame = np.full((360, 640, 3), 90, np.uint8)
    box = Detection("car", 0.9, 320.0, 180.0, 480.0, 300.0)
    res = Result(event=None, scores={}, audio_tags={}, boxes=[box], backend="onnxruntime", model="toy")
    tile = draw_tile(frame, res, (320, 180), "front")
    assert tile.shape == (180, 320, 3)
    # the car's box (cyan-blue, BGR (255, 200, 0)) lands at half the coordinates: its left edge at x = 160
    assert np.abs(tile[100, 159:162].astype(int) - (255, 200, 0)).sum(axis=1).min() < 60
    assert tile[100, 100].tolist() == [90, 90, 90]  # untouched inside the frame, away from the drawing
    assert tile[-3:, 100:].max() < 255 and tile[-3:, 100:].mean() < 5  # the name strip along the bottom
    with_ids = draw_result(frame, res, [(7, "car", (320.0, 180.0, 480.0, 300.0))])
    without = draw_result(frame, res)
    assert not np.array_equal(with_ids, without)  # "#7 car" instead of "car 0.90" above the same box
    assert np.array_equal(with_ids[185:295, 330:470], without[185:295, 330:470])  # the same box inside
    down = no_signal_tile((320, 180), "rear")
    assert down[5, 5].tolist() == list(NO_SIGNAL_COLOUR) and down[90].max() > 200  # grey, with the words


def test_two_cameras_one_ending_early_give_one_mosaic_with_a_no_signal_tile(bundle_dir, clips, tmp_path):
    long_v, short_v = clips
    out = tmp_path / "mosaic.mp4"
    with Perception.load(bundle_dir, backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
        multi = MultiPipeline(p, cameras=[("front", str(long_v)), ("rear", str(short_v))],
                              config=PipelineConfig(policy="offline", realtime=False), max_wait=0.05)
        mosaic = MosaicSink(out, ["front", "rear"], lambda: multi.pipelines["front"].video_fps, tile=TILE,
                            policy="offline")
        multi.add_sink(mosaic)
        summary = multi.run()
    assert summary["cameras"]["front"]["results"] == 40 and mosaic.dropped == 0
    frames = _frames(out)
    assert abs(len(frames) - 40) <= 1 and len(frames) == mosaic.frames_written
    assert frames[0].shape == (64, 192, 3)  # one row of two 96x64 tiles
    left, right = (lambda f: f[:40, :96]), (lambda f: f[:40, 96:])  # above the name strip
    early, late = frames[4], frames[-4]
    assert left(early).std() > 30 and right(early).std() > 30  # both cameras' moving noise
    assert left(late).std() > 30  # the front camera goes on
    corner = late[2:12, 98:110].astype(int)  # the rear camera ended at 0.5 s: no signal
    assert np.abs(corner - NO_SIGNAL_COLOUR[0]).max() < 12
    assert mosaic.no_signal_tiles >= 25


def test_a_live_mosaic_never_makes_a_camera_wait_and_stays_bounded(tmp_path):
    sink = MosaicSink(tmp_path / "m.mp4", ["a", "b"], 30.0, tile=(640, 360), policy="live", queue_size=3)
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    res = Result(event=None, scores={}, audio_tags={}, boxes=[], backend="onnxruntime", model="toy")
    peak = 0
    for i in range(200):  # results far faster than a 1280x720 mosaic frame is drawn and encoded
        sink.write(StreamResult(index=i, t=i / 30.0, frame=frame, result=res, health={}, latency_ms=1.0,
                                camera="ab"[i % 2]))
        peak = max(peak, len(sink._queue))
    sink.close()
    assert peak <= 3 and sink.dropped > 0  # the oldest went, nothing waited
    assert 0 < sink.frames_written <= 200 and len(_frames(tmp_path / "m.mp4")) == sink.frames_written
    with pytest.raises(InputError, match="camera 'c', not one of a, b"):
        MosaicSink(tmp_path / "n.mp4", ["a", "b"], 30.0).write(
            StreamResult(index=0, t=0.0, frame=frame, result=res, health={}, latency_ms=1.0, camera="c"))


def test_cli_out_file_is_one_mosaic_and_out_dir_one_video_per_camera(bundle_dir, clips, tmp_path):
    long_v, short_v = clips
    base = [sys.executable, "-m", "fusionedge.cli.run", "--bundle", str(bundle_dir), "--source", f"front={long_v}",
            "--source", f"rear={short_v}", "--fast", "--json", "--no-progress"]
    proc = subprocess.run([*base, "--out", str(tmp_path / "all.mp4")], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    frames = _frames(tmp_path / "all.mp4")
    assert frames[0].shape == (270, 960, 3) and abs(len(frames) - 40) <= 1  # two 480x270 tiles side by side
    proc = subprocess.run([*base, "--out-dir", str(tmp_path / "each")], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cameras"]["rear"]["results"] == 10
    assert len(_frames(tmp_path / "each" / "front.mp4")) == 40 and len(_frames(tmp_path / "each" / "rear.mp4")) == 10
    proc = subprocess.run([*base, "--out", str(tmp_path / "x.mp4"), "--out-dir", str(tmp_path / "y")], check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not both" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
