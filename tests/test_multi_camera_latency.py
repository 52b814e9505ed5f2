"""Several live cameras within one frame period: every listener of a shared microphone gets each chunk as
it is captured (not one chunk late behind another listener's read), a live step's audio window ends at
most ``audio_lag`` before its frame and never after it, and a camera whose window is ready is inferred
at once rather than waiting for a slower camera."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from _toy_model import TOY_GEOMETRY, shared_toy_bundle
from fusionedge.sdk import Perception
from fusionedge.sdk.streaming import (
    AudioChunk,
    AudioSource,
    CallbackSink,
    Pipeline,
    PipelineConfig,
    SourceURI,
    StreamClock,
)
from fusionedge.sdk.streaming.multi import MicHub
from test_streaming_faults import FakeCamera

RATE = 16000
CHUNK = 0.02


class PacedMic(AudioSource):
    """A live microphone: 20 ms chunks released when their last sample is due on the clock; sample ``j``
    holds ``j / RATE`` (its own time), so a window shows where it was cut."""

    def __init__(self, clock: StreamClock, rate: int = RATE) -> None:
        super().__init__(SourceURI("paced-mic://0", "audio", "mic", "0"), clock)
        self.rate = rate
        self._closed = threading.Event()
        self._n = 0

    def open(self) -> None:
        self._closed.clear()

    def read(self) -> AudioChunk | None:
        size = int(CHUNK * self.rate)
        t_end = (self._n + 1) * CHUNK
        if not self.clock.sleep_until(t_end, self._closed):
            return None
        j = np.arange(self._n * size, (self._n + 1) * size)
        self._n += 1
        return AudioChunk(samples=(j / self.rate).astype(np.float32), rate=self.rate, t_end=t_end)

    def close(self) -> None:
        self._closed.set()


def test_each_listener_of_a_shared_microphone_gets_a_chunk_when_it_is_captured():
    clock = StreamClock()
    hub = MicHub(PacedMic(clock))
    listeners = [hub.listener(), hub.listener()]
    got: list[dict[float, float]] = [{}, {}]  # per listener: chunk end -> when it was handed over

    def read(k: int) -> None:
        listener = listeners[k]
        listener.open()
        for _ in range(50):  # 1 s
            chunk = listener.read()
            got[k][chunk.t_end] = clock.now()
        listener.close()

    threads = [threading.Thread(target=read, args=(k,)) for k in (0, 1)]
    clock.restart()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got[0].keys() == got[1].keys() and len(got[0]) == 50
    # the same chunk reaches the two listeners together: one blocked behind the other's read of the next
    # chunk gets it a chunk (20 ms) or more later
    skew = [abs(got[0][t] - got[1][t]) for t in got[0]]
    assert max(skew) < 0.01, sorted(np.round(np.array(skew) * 1e3, 1))[-5:]


def test_the_stage_breakdown_says_which_stage_the_slow_results_lost_their_time_in():
    from fusionedge.sdk.streaming.stages import MARKS, STAGES, StageTimes

    times = StageTimes(window=100)
    for k in range(100):
        marks = {name: 0.001 * i for i, name in enumerate(MARKS)}  # 1 ms per stage
        if k % 20 == 0:  # every 20th result waits 30 ms more for its audio
            marks = {name: t + (0.03 if i >= MARKS.index("audio_ready") else 0.0)
                     for i, (name, t) in enumerate(marks.items())}
        del marks["batch_start"]  # not passed: its span is 0 and the inference span starts at infer_start
        times.add(marks)
    s = times.summary(tail=0.05)
    assert s["n"] == 100 and set(s["stages"]) == set(STAGES)
    assert s["stages"]["preprocess"]["p50"] == 1.0 and s["stages"]["batch_wait"]["p99"] == 0.0
    assert s["stages"]["inference"]["p50"] == 2.0
    assert s["capture_to_result"]["p50"] == 9.0 and s["tail"]["n"] == 5
    assert s["tail"]["stages_ms"]["audio_wait"] == 31.0 and s["tail"]["capture_to_result_ms"] == 39.0


@pytest.fixture(scope="module")
def perception(tmp_path_factory):
    with Perception.load(shared_toy_bundle(tmp_path_factory),
                         backend_options={"onnxruntime": {"intra_op_threads": 1}}) as p:
        yield p


def _audio_ends(perception, lag: float) -> tuple[list[float], dict]:
    """Run a live camera and microphone for 1.2 s; per result with audio, its frame time minus the time
    just after the last sample of its audio window (the microphone's samples hold their own time)."""
    rate = TOY_GEOMETRY.sample_rate
    results: list = []
    pipe = Pipeline(perception, video=lambda clock: FakeCamera(clock), audio=lambda clock: PacedMic(clock, rate),
                    sinks=[CallbackSink(results.append)], config=PipelineConfig(policy="live", audio_lag=lag))
    threading.Timer(1.2, pipe._stop.set).start()
    summary = pipe.run()
    # from the 8th step (a full window of audio) until 0.2 s before the stop (the microphone may stop first)
    behind = [r.t - (float(r.audio[-1]) + 1 / rate) for r in results
              if r.audio is not None and r.index >= 8 and r.t < 1.0]
    return behind, summary


def test_a_live_step_closes_on_the_audio_that_has_arrived_at_most_audio_lag_before_its_frame(perception):
    behind, summary = _audio_ends(perception, 0.025)
    assert len(behind) >= 10
    # the window never ends after the frame, nor more than the bound (plus half a sample) before it
    assert min(behind) > -1e-3 and max(behind) <= 0.025 + 1e-3, (min(behind), max(behind))
    assert max(behind) > 1e-3  # frames fall between 20 ms chunks: some steps did go with older audio
    lag = summary["audio_lag_ms"]
    # the stats record every live step's lag: at least the largest one the audio shows, never past the bound
    assert lag["n"] >= len(behind) and 1e3 * max(behind) - 1.0 <= lag["max"] <= 25.0 + 1.0
    aligned, summary = _audio_ends(perception, 0.0)  # 0: every window ends at its frame, as offline
    assert len(aligned) >= 10 and max(abs(x) for x in aligned) < 1e-3 and summary["audio_lag_ms"] == {}


def test_a_ready_step_is_inferred_at_once_not_after_a_slower_camera(perception):
    from fusionedge.sdk.streaming.multi import BatchGate

    g = perception.geometry
    rng = np.random.default_rng(0)
    video = rng.standard_normal((1, g.clip_frames, 3, g.height, g.width)).astype(np.float32)
    audio = (0.1 * rng.standard_normal((1, g.audio_samples))).astype(np.float32)
    presence = np.ones((1, 2), np.float32)
    want, _ = perception.run_batch(video, audio, presence)
    for max_wait in (0.0, 0.3):
        gate = BatchGate(perception, waiting_for=lambda name: True, max_wait=max_wait)  # both cameras live
        gate.register("front")
        gate.register("rear")  # sends nothing: its frame is late
        t0 = time.monotonic()
        got, _ = gate.run("front", video, audio, presence)
        waited = time.monotonic() - t0
        assert all(np.allclose(got[k], want[k], atol=1e-6) for k in want)
        assert gate.batches == 1 and gate.rows == 1 and gate.started["front"] >= t0
        if max_wait == 0.0:
            assert waited < 0.25, waited  # went without the rear camera
        else:
            assert waited >= 0.3  # a synchronized rig's gate waits up to max_wait for the other camera
    from fusionedge.sdk.streaming import MultiPipeline

    multi = MultiPipeline(perception, cameras=[("front", lambda clock: FakeCamera(clock)),
                                               ("rear", lambda clock: FakeCamera(clock))])
    assert multi.gate.max_wait == 0.0  # the default: no camera waits for another's frame
