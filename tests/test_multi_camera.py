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


def test_track_sink_writes_entry_motion_exit_with_one_stable_id(tmp_path):
    from fusionedge.sdk.perception import Result
    from fusionedge.sdk.postprocess import Detection
    from fusionedge.sdk.streaming import StreamResult
    from fusionedge.sdk.streaming.tracks import TrackSink

    events = JsonlEventSink(tmp_path / "events.jsonl")
    sink = TrackSink(events, 20.0, 8000, camera="front")
    frame = np.zeros((240, 320, 3), np.uint8)
    rng = np.random.default_rng(0)
    for i in range(60):  # an emergency vehicle growing for 2 s (approaching), then gone
        h = 40.0 * (1.0 + 0.02 * i)
        boxes = [Detection("emergency_vehicle", 0.9, 100.0, 100.0, 100.0 + h, 100.0 + h)] if i < 40 else []
        res = Result(event=None, scores={}, audio_tags={}, boxes=boxes, backend="onnxruntime", model="toy")
        audio = (0.01 * (1 + i) * np.sin(2 * np.pi * 1000 * np.arange(2000) / 8000)
                 + 1e-3 * rng.standard_normal(2000)).astype(np.float32)  # a siren getting louder
        sink.write(StreamResult(index=i, t=i / 20.0, frame=frame, result=res, health={}, latency_ms=1.0,
                                audio=audio))
    events.close()
    rows = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows] == ["track_entry", "track_motion", "track_exit"]
    assert {r["track_id"] for r in rows} == {1} and {r["camera"] for r in rows} == {"front"}
    assert rows[1]["motion"] == "approaching" and rows[1]["ttc_s"] > 0 and rows[1]["siren_db_per_s"] > 0


def test_cli_two_cameras_with_tracks_writes_events_and_one_video_per_camera(bundle_dir, clips, tmp_path):
    long_v, long_a, short_v = clips
    out, events = tmp_path / "annotated", tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "-m", "fusionedge.cli.run", "--bundle", str(bundle_dir),
                           "--source", f"front={long_v}", "--source", f"rear={short_v}", "--mic", f"cabin={long_a}",
                           "--hears", "front,rear", "--fast", "--track", "--events", str(events), "--out", str(out),
                           "--json", "--no-progress"], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["cameras"]["front"]["results"] == 40 and summary["cameras"]["rear"]["results"] == 10
    assert summary["hears"] == {"front": "cabin", "rear": "cabin"}
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    assert {r["camera"] for r in rows if r["type"] == "result"} == {"front", "rear"}
    assert all(r["camera"] in ("front", "rear") for r in rows if r["type"] == "track")
    assert (out / "front.mp4").stat().st_size > 0 and (out / "rear.mp4").stat().st_size > 0


def test_stream_threads_leave_cores_to_capture_and_turn_spinning_off(bundle_dir):
    from fusionedge.sdk.streaming.threads import streaming_backend_options

    opts = streaming_backend_options(3, 2, cores=6)  # 3 sensors ~ 2 cores, 2 encoders
    assert opts == {"onnxruntime": {"intra_op_threads": 2, "allow_spinning": False}}
    assert streaming_backend_options(8, 4, cores=2)["onnxruntime"]["intra_op_threads"] == 1
    assert streaming_backend_options(1, threads=3, spinning=True, cores=2)["onnxruntime"] == {
        "intra_op_threads": 3, "allow_spinning": True}
    with Perception.load(bundle_dir, backend_options=streaming_backend_options(2, cores=4)) as p:
        so = p.backend._session.get_session_options()
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert so.intra_op_num_threads == 3


def test_a_failing_live_camera_is_reported_and_retried_while_the_other_goes_on(perception, tmp_path):
    import threading

    from test_streaming_faults import CONFIG, FakeCamera, FakeMic

    rear: list = []
    events = JsonlEventSink(tmp_path / "events.jsonl")
    multi = MultiPipeline(
        perception, cameras=[("front", lambda clock: FakeCamera(clock)),
                             ("rear", lambda clock: rear.append(FakeCamera(clock, "error", 10, 1000)) or rear[0])],
        mics=[("cabin", lambda clock: FakeMic(clock))], sinks=[events], config=CONFIG)
    threading.Timer(2.5, multi.request_stop).start()
    summary = multi.run()
    front = summary["cameras"]["front"]
    assert front["results"] >= 30 and front["results_with_video"] >= 30 and front["results_with_audio"] >= 25
    assert summary["sensors"]["rear/video"]["state"] != "ok" and summary["sensors"]["rear/video"]["failures"] >= 1
    assert rear[0].opens >= 2  # retried
    assert summary["sensors"]["front/video"]["state"] == "ok" and summary["sensors"]["front/audio"]["state"] == "ok"
    rows = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(r["type"] == "health" and r.get("camera") == "rear" and r["state"] != "ok" for r in rows)


def test_a_shared_microphone_gives_each_camera_each_chunk_once(clips):
    from fusionedge.sdk.streaming import StreamClock, open_audio_source
    from fusionedge.sdk.streaming.multi import MicHub

    hub = MicHub(open_audio_source(str(clips[1]), StreamClock(), realtime=False, rate=8000))
    front, rear = hub.listener(), hub.listener()

    def read_all(listener):
        listener.open()
        chunks = []
        while (chunk := listener.read()) is not None:
            chunks.append(chunk.t_end)
        listener.close()
        return chunks

    first = read_all(front)  # the front camera's pipeline reads the file to its end and closes
    second = read_all(rear)  # the rear camera's pipeline starts later: the same chunks, not a replay
    assert len(first) == 100 and second == first
