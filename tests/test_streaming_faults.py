"""Sensor failure handling with FAKE sensors at the source seam: a camera / microphone that stalls,
stops, errors or refuses to open is detected within a bounded time, reported on results and in the
log, retried with backoff, the model keeps running on the other sensor, and fusion resumes."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from _toy_model import shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk.errors import SensorError
from fusionedge.sdk.streaming import AudioChunk, AudioSource, CallbackSink, Frame, Pipeline, PipelineConfig, VideoSource
from fusionedge.sdk.streaming.uri import SourceURI

FPS = 20.0
RATE = 8000


class FakeCamera(VideoSource):
    """A fake live camera: frames at FPS; ``fault`` in ("stall", "stop", "error") after ``fail_after``
    frames on its first opening, and ``refuse_opens`` failed opens after that before it comes back."""

    def __init__(self, clock, fault: str | None = None, fail_after: int = 10, refuse_opens: int = 0):
        super().__init__(SourceURI("fake-camera://0", "video", "v4l2", "0"), clock)
        self.fps = FPS
        self.fault, self.fail_after, self.refuse_opens = fault, fail_after, refuse_opens
        self.opens = 0
        self._closed = threading.Event()
        self._n = 0

    def open(self):
        self.opens += 1
        if 1 < self.opens <= 1 + self.refuse_opens:
            raise SensorError("fake-camera://0 cannot be opened (fake: unplugged)")
        self._closed.clear()
        self._n = 0

    def read(self):
        if self.opens == 1 and self.fault and self._n >= self.fail_after:
            if self.fault == "stall":
                self._closed.wait(30)  # blocks like a wedged driver until closed
                return None
            if self.fault == "stop":
                return None
            raise SensorError("fake-camera://0 read failed (fake)")
        if self._closed.wait(1 / FPS):
            return None
        self._n += 1
        img = np.full((32, 48, 3), (self._n * 7) % 256, np.uint8)
        return Frame(image=img, t=self.clock.now(), index=self._n, captured=time.monotonic())

    def close(self):
        self._closed.set()


class FakeMic(AudioSource):
    """A fake live microphone: 20 ms chunks; ``fault`` after ``fail_after`` chunks on its first opening."""

    def __init__(self, clock, fault: str | None = None, fail_after: int = 25, refuse_opens: int = 0):
        super().__init__(SourceURI("fake-mic://0", "audio", "mic", "0"), clock)
        self.rate = RATE
        self.fault, self.fail_after, self.refuse_opens = fault, fail_after, refuse_opens
        self.opens = 0
        self._closed = threading.Event()
        self._n = 0
        self._rng = np.random.default_rng(0)

    def open(self):
        self.opens += 1
        if 1 < self.opens <= 1 + self.refuse_opens:
            raise SensorError("fake-mic://0 cannot be opened (fake)")
        self._closed.clear()
        self._n = 0

    def read(self):
        if self.opens == 1 and self.fault and self._n >= self.fail_after:
            if self.fault == "stall":
                self._closed.wait(30)
                return None
            if self.fault == "stop":
                return None
            raise SensorError("fake-mic://0 read failed (fake)")
        if self._closed.wait(0.02):
            return None
        self._n += 1
        x = (0.1 * self._rng.uniform(-1, 1, int(0.02 * RATE))).astype(np.float32)
        return AudioChunk(samples=x, rate=RATE, t_end=self.clock.now())

    def close(self):
        self._closed.set()


@pytest.fixture(scope="module")
def perception(tmp_path_factory):
    with Perception.load(shared_toy_bundle(tmp_path_factory),
                         backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
        yield p


CONFIG = PipelineConfig(policy="live", stall_timeout=0.5, backoff_initial=0.05, backoff_max=0.2, audio_wait=0.05)


def run_for(perception, seconds: float, until=None, **sources):
    """Run a pipeline for ``seconds``; with ``until(pipe, results)``, stop as soon as it holds (then
    ``seconds`` is only the limit), so a busy machine gets the time the story needs."""
    results: list = []
    pipe = Pipeline(perception, sinks=[CallbackSink(results.append)], config=CONFIG, **sources)
    pipe.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if until is not None and until(pipe, list(results)):
            break
    pipe.stop()
    return pipe, results


def _states(pipe, modality):
    return [e.state for e in pipe.health_events if e.modality == modality]


@pytest.mark.parametrize("fault", ["stall", "stop", "error"])
def test_video_failure_is_detected_audio_keeps_running_and_fusion_resumes(perception, fault, caplog):
    cams = []

    def camera(clock):
        cams.append(FakeCamera(clock, fault=fault, fail_after=10, refuse_opens=2))
        return cams[-1]

    def fused_again(pipe, results) -> bool:
        missing = [r.result.missing for r in results]
        return ("video",) in missing and () in missing[missing.index(("video",)):] \
            and _states(pipe, "video")[-1:] == ["ok"] and "error" in _states(pipe, "video")[2:]

    # the camera fails 10 frames in, refuses two re-opens (0.05 + 0.1 s backoff), then works: about 1.5 s
    # idle; a busy machine may need longer (the run stops as soon as fusion is back)
    with caplog.at_level(logging.WARNING, logger="fusionedge.sdk.streaming"):
        pipe, results = run_for(perception, 20.0, until=fused_again, video=camera, audio=lambda c: FakeMic(c))
    states = _states(pipe, "video")
    assert states[:2] == ["ok", {"stall": "stalled", "stop": "stopped", "error": "error"}[fault]]
    assert "error" in states[2:] and states[-1] == "ok"  # refused re-opens, then back
    assert cams[0].opens == 4  # 1 good + 2 refused + 1 that works: retried with backoff
    assert pipe.stats()["sensors"]["video"]["recoveries"] == 1
    missing = [r.result.missing for r in results]
    first_gap = missing.index(("video",))  # audio-only steps while the camera was down
    assert () in missing[:first_gap] and () in missing[first_gap:]  # fused before and after
    down = [r for r in results if r.result.missing == ("video",)]
    assert all(r.health["video"] != "ok" for r in down) and all(r.result.audio_tags for r in down)
    assert any("video sensor fake-camera://0" in m for m in caplog.messages)
    if fault == "stall":  # found by the watchdog (no timing assertion: the reason states the limit)
        stall = next(e for e in pipe.health_events if e.state == "stalled")
        assert f"limit {CONFIG.stall_timeout} s" in stall.reason


@pytest.mark.parametrize("fault", ["stall", "stop", "error"])
def test_audio_failure_runs_on_video_alone_then_fuses_again(perception, fault):
    def video_only_steps(results) -> list[int]:
        return [i for i, r in enumerate(results) if r.result.missing == ("audio",) and i > 10]

    def fused_again(pipe, results) -> bool:
        gap = video_only_steps(results)
        return bool(gap) and any(r.result.missing == () for r in results[gap[-1]:]) \
            and len(_states(pipe, "audio")) >= 3 and _states(pipe, "audio")[-1] == "ok"

    # the microphone fails 0.8 s in, refuses one re-open, then works: about 1.5 s of story; a busy
    # machine may need longer (the run stops as soon as fusion is back)
    pipe, results = run_for(perception, 20.0, until=fused_again, video=lambda c: FakeCamera(c),
                            audio=lambda c: FakeMic(c, fault=fault, fail_after=40, refuse_opens=1))
    states = _states(pipe, "audio")
    assert states[0] == "ok" and states[1] == {"stall": "stalled", "stop": "stopped", "error": "error"}[fault]
    assert states[-1] == "ok"
    missing = [r.result.missing for r in results]
    gap = video_only_steps(results)
    assert gap, "no video-only steps while the microphone was down"
    assert () in missing[gap[-1]:]  # fused again once it came back
    assert all(results[i].frame is not None and not results[i].result.audio_tags for i in gap)


def test_a_sensor_that_never_opens_is_retried_and_the_other_runs(perception):
    class DeadCamera(FakeCamera):
        def open(self):
            self.opens += 1
            raise SensorError("fake-camera://0 cannot be opened (fake: never there)")

    cams = []
    pipe, results = run_for(perception, 1.2, video=lambda c: cams.append(DeadCamera(c)) or cams[-1],
                            audio=lambda c: FakeMic(c))
    assert cams[0].opens >= 3  # 0.05, 0.1, 0.2, 0.2 s backoff
    assert set(_states(pipe, "video")) == {"error"}
    assert results and all("video" in r.result.missing for r in results)
    assert ("video",) in [r.result.missing for r in results]  # audio alone ran


def test_audio_only_steps_keep_the_health_that_found_video_down(perception):
    """Audio-only steps are made because video was down; a camera that is back before the backlog of
    audio becomes steps must not make those steps read video "ok" (it did, with the cores busy)."""
    from fusionedge.sdk.streaming.clock import AudioRing, Synchronizer
    from fusionedge.sdk.streaming.health import OK

    pipe = Pipeline(perception, sinks=[], config=CONFIG, video=lambda c: FakeCamera(c), audio=lambda c: FakeMic(c))
    ring = AudioRing(RATE, 4.0)
    ring.write(np.full(2 * RATE, 0.05, np.float32), t_end=2.0)  # two seconds of audio waiting
    pipe._ring = ring
    pipe._sup["video"]._set("error", "read failed (test)")
    health = pipe._health()  # what the preprocessing loop decided on
    pipe._sup["video"]._set(OK, "recovered")  # the camera comes back before the steps are made
    sync = Synchronizer(pipe.geometry, 10.0, min_coverage=CONFIG.min_audio_coverage)
    pipe._audio_only_steps(sync, 0, None, health)
    steps = []
    while (step := pipe._q_steps.get(timeout=0.01)) is not None:
        steps.append(step)
    assert steps and all(not s.presence[0] for s in steps)
    assert {s.health["video"] for s in steps} == {"error"}
