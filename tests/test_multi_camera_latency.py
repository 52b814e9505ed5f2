"""Several live cameras within one frame period: every listener of a shared microphone gets each chunk as
it is captured (not one chunk late behind another listener's read), a live step's audio window ends at
most ``audio_lag`` before its frame and never after it, and a camera whose window is ready is inferred
at once rather than waiting for a slower camera."""

from __future__ import annotations

import threading

import numpy as np
from fusionedge.sdk.streaming import AudioChunk, AudioSource, SourceURI, StreamClock
from fusionedge.sdk.streaming.multi import MicHub

RATE = 16000
CHUNK = 0.02


class PacedMic(AudioSource):
    """A live microphone: 20 ms chunks released when their last sample is due on the clock; sample ``j``
    holds ``j / RATE`` (its own time), so a window shows where it was cut."""

    def __init__(self, clock: StreamClock) -> None:
        super().__init__(SourceURI("paced-mic://0", "audio", "mic", "0"), clock)
        self.rate = RATE
        self._closed = threading.Event()
        self._n = 0

    def open(self) -> None:
        self._closed.clear()

    def read(self) -> AudioChunk | None:
        size = int(CHUNK * RATE)
        t_end = (self._n + 1) * CHUNK
        if not self.clock.sleep_until(t_end, self._closed):
            return None
        j = np.arange(self._n * size, (self._n + 1) * size)
        self._n += 1
        return AudioChunk(samples=(j / RATE).astype(np.float32), rate=RATE, t_end=t_end)

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
