"""The streaming runtime under bad configuration, silent networks, signals and full disks, with real
things: `fusionedge run` in a subprocess, a TCP server on 127.0.0.1 that never answers, SIGTERM, and
/dev/full as an output file."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _toy_model import shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk.errors import InputError, MediaError
from fusionedge.sdk.media import read_video
from fusionedge.sdk.streaming import CallbackSink, JsonlEventSink, Pipeline, PipelineConfig
from fusionedge.sdk.streaming.signals import StopSignals
from fusionedge.sdk.streaming.sources import gstreamer_available
from test_streaming_pipeline import write_clip

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def perception(bundle_dir):
    with Perception.load(bundle_dir, backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
        yield p


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    return write_clip(tmp_path_factory.mktemp("robust"), 3.0)


def _run_cli(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusionedge.cli.run", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, check=False)


# ------------------------------------------------------------------ permanent configuration errors


@pytest.mark.parametrize("flag, name", [("--video", "missing.mp4"), ("--audio", "missing.wav")])
def test_run_on_a_missing_file_exits_2_at_once_with_one_line(bundle_dir, tmp_path, flag, name):
    t0 = time.monotonic()
    try:
        out = _run_cli(["--bundle", str(bundle_dir), flag, str(tmp_path / name), "--no-progress"], timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`fusionedge run {flag} {name}` still running after 60 s (it retries a missing file)")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and name in lines[0] and "no such file" in lines[0], out.stderr
    assert time.monotonic() - t0 < 30


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer: gst:// is supported here")
def test_run_on_gst_without_gstreamer_exits_2_with_one_line(bundle_dir):
    try:
        out = _run_cli(["--bundle", str(bundle_dir), "--video", "gst://videotestsrc ! appsink",
                        "--no-progress"])
    except subprocess.TimeoutExpired:
        pytest.fail("`fusionedge run --video gst://...` still running after 60 s")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "GStreamer" in lines[0], out.stderr


def test_a_pipeline_on_a_missing_file_raises_and_reports_failed(perception, tmp_path):
    pipe = Pipeline(perception, video=str(tmp_path / "gone.mp4"), config=PipelineConfig(policy="offline"))
    t0 = time.monotonic()
    with pytest.raises(MediaError, match="no such file"):
        pipe.run()
    assert time.monotonic() - t0 < 5
    assert [e.state for e in pipe.health_events] == ["failed"]


def test_a_fifo_as_video_source_is_refused_not_read(perception, tmp_path):
    fifo = tmp_path / "cam.mp4"
    os.mkfifo(fifo)
    pipe = Pipeline(perception, video=str(fifo), config=PipelineConfig(policy="offline"))
    with pytest.raises(MediaError, match="not a regular file"):
        pipe.run()


# ------------------------------------------------------------------ a stream that never answers


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                held.append(srv.accept()[0])
            except (TimeoutError, OSError):
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], held
    done.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


def test_a_silent_rtsp_server_is_reported_within_the_stall_timeout(perception, silent_server):
    port, held = silent_server
    config = PipelineConfig(policy="live", stall_timeout=0.5, backoff_initial=0.1, backoff_max=0.2)
    events: list = []
    pipe = Pipeline(perception, video=f"rtsp://127.0.0.1:{port}/cam", config=config,
                    sinks=[CallbackSink(lambda r: None, events.append)])
    t0 = time.monotonic()
    pipe.start()
    try:
        deadline = t0 + 5.0
        while time.monotonic() < deadline and not any(e.state == "open_timeout" for e in pipe.health_events):
            time.sleep(0.02)
        found = [e for e in pipe.health_events if e.state == "open_timeout"]
        assert found, f"no open_timeout event within 5 s: {[e.state for e in pipe.health_events]}"
        assert found[0].t - t0 < 0.5 + 0.5, "reported later than the stall timeout (0.5 s) allows"
        assert held, "the stream was never contacted"
        assert "0.5 s" in found[0].reason
    finally:
        t_stop = time.monotonic()
        pipe.stop(timeout=5.0)
    assert time.monotonic() - t_stop < 3.0
    assert pipe.stats()["stuck_threads"] == 0


def test_a_slow_opening_camera_is_reported_on_time_and_then_used(perception):
    from test_streaming_faults import FakeCamera

    class SlowCamera(FakeCamera):  # a CSI camera whose driver needs a while to start
        def open(self):
            time.sleep(1.0)
            super().open()

    results: list = []
    config = PipelineConfig(policy="live", stall_timeout=0.3, backoff_initial=0.05)
    pipe = Pipeline(perception, video=lambda c: SlowCamera(c), sinks=[CallbackSink(results.append)],
                    config=config)
    pipe.start()
    time.sleep(2.0)
    pipe.stop()
    states = [e.state for e in pipe.health_events]
    assert states[:2] == ["open_timeout", "ok"], states  # reported on time, and the late open counts
    assert results and results[-1].result.missing == ("audio",)


# ------------------------------------------------------------------ SIGTERM


def test_stop_signals_turn_sigterm_into_a_request():
    with StopSignals() as s:
        os.kill(os.getpid(), signal.SIGTERM)
        assert s.event.wait(2.0)
        assert (s.requested, s.name, s.exit_status) == (True, "SIGTERM", 143)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the previous handler is back


@pytest.mark.slow
def test_sigterm_stops_run_cleanly_with_a_playable_mp4_and_a_summary(bundle_dir, tmp_path):
    video, audio = write_clip(tmp_path, 20.0, seed=2)
    out, events = tmp_path / "o.mp4", tmp_path / "e.jsonl"
    cmd = [sys.executable, "-m", "fusionedge.cli.run", "--bundle", str(bundle_dir), "--video", str(video),
           "--audio", str(audio), "--out", str(out), "--events", str(events), "--realtime", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not events.exists() or events.read_text().count('"result"') < 30):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr  # 128 + SIGTERM, as a service manager expects
    summary = json.loads(stdout)
    assert summary["interrupted"] and summary["signal"] == "SIGTERM" and summary["stuck_threads"] == 0
    assert summary["frames_captured"] < 400  # it really stopped early
    lines = [json.loads(line) for line in events.read_text().splitlines()]  # every line whole
    n_video = sum(1 for x in lines if x["type"] == "result" and "video" not in x["missing"])
    assert n_video == summary["results_with_video"] >= 30
    assert read_video(out).frames.shape[0] == n_video  # the mp4 index was written: it plays


# ------------------------------------------------------------------ a full disk


def test_a_sink_on_a_full_disk_is_reported_once_and_perception_goes_on(perception, clip, caplog):
    got: list = []
    health: list = []
    full = JsonlEventSink("/dev/full")
    pipe = Pipeline(perception, video=str(clip[0]), audio=str(clip[1]),
                    sinks=[full, CallbackSink(got.append, health.append)],
                    config=PipelineConfig(policy="offline", realtime=False))
    with caplog.at_level(logging.ERROR, logger="fusionedge.sdk.streaming"):
        summary = pipe.run()
    assert summary["results"] == len(got) == 60  # every step still ran and reached the working sink
    assert summary["sinks_failed"] == ["/dev/full"]
    failed = [e for e in health if e.modality == "sink"]
    assert len(failed) == 1 and failed[0].state == "failed" and "No space left" in failed[0].reason
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "/dev/full" in errors[0].getMessage()


@pytest.mark.slow
def test_run_with_events_on_a_full_disk_still_writes_the_video(bundle_dir, clip, tmp_path):
    out = tmp_path / "o.mp4"
    res = _run_cli(["--bundle", str(bundle_dir), "--video", str(clip[0]), "--events", "/dev/full",
                    "--out", str(out), "--fast", "--json", "--no-progress"], timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    summary = json.loads(res.stdout)
    assert summary["results"] == 60 and summary["sinks_failed"] == ["/dev/full"]
    assert read_video(out).frames.shape[0] == 60


def test_stop_signals_is_inert_off_the_main_thread():
    box: dict = {}

    def work() -> None:
        with StopSignals() as s:
            box["requested"] = s.requested
        box["handler"] = signal.getsignal(signal.SIGTERM)

    t = threading.Thread(target=work)
    t.start()
    t.join(5)
    assert box == {"requested": False, "handler": signal.SIG_DFL}


def test_bad_uri_is_still_an_input_error(perception):
    with pytest.raises(InputError, match="device number"):
        Pipeline(perception, video="v4l2://front")


# ------------------------------------------------------------------ strict JSON lines


def test_event_lines_are_strict_json_even_with_nan_scores(tmp_path):
    from fusionedge.sdk.perception import Result
    from fusionedge.sdk.streaming.pipeline import StreamResult

    sink = JsonlEventSink(tmp_path / "e.jsonl")
    result = Result(event="siren", scores={"siren": float("nan"), "none": float("inf")}, audio_tags={},
                    boxes=[], backend="onnxruntime", model="toy@1")
    sink.write(StreamResult(index=0, t=0.0, frame=None, result=result, health={}, latency_ms=1.0))
    sink.close()

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    line = json.loads((tmp_path / "e.jsonl").read_text(), parse_constant=refuse)
    assert line["scores"] == {"siren": None, "none": None}
