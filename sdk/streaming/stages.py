"""Where a stream's capture->result latency goes: one timestamp per stage boundary of every result.

A result passes twelve marks (:data:`MARKS`, ``time.monotonic()`` seconds): the frame captured, taken
off the capture queue, preprocessed, its audio in, the step assembled, taken by the inference stage,
its batch started (after waiting for the other cameras in a multi-camera pipeline), the model done,
taken by the postprocess stage, the result ready, taken by the sink stage, written. The eleven spans
between consecutive marks are the stages (:data:`STAGES`); ``capture_to_result`` is the sum of the
first nine. :class:`StageTimes` keeps the last ``window`` results' spans and summarizes them as each
stage's median and p99 and, for the slowest results, each stage's mean share: a p99 is rarely the sum
of the stages' p99s, so the tail breakdown says which stage the slow results lost their time in.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping

import numpy as np

__all__ = ["MARKS", "STAGES", "TAIL_SHARE", "StageTimes"]

#: The marks a result passes, in order (``time.monotonic()`` seconds each).
MARKS: tuple[str, ...] = ("captured", "dequeued", "prepared", "audio_ready", "step_ready", "infer_start",
                          "batch_start", "infer_end", "post_start", "result", "sink_start", "sink_end")
#: The spans between consecutive marks.
STAGES: tuple[str, ...] = ("capture_queue", "preprocess", "audio_wait", "window", "infer_queue", "batch_wait",
                           "inference", "post_queue", "postprocess", "sink_queue", "sinks")
#: Share of the slowest results (by capture->result) whose stages the tail breakdown averages.
TAIL_SHARE = 0.05

_RESULT = MARKS.index("result")


class StageTimes:
    """The stage spans of the last ``window`` results (thread-safe).

    Args:
        window: results kept.
    """

    def __init__(self, window: int = 4096) -> None:
        self._rows: collections.deque = collections.deque(maxlen=int(window))
        self._lock = threading.Lock()

    def add(self, marks: Mapping[str, float]) -> None:
        """Record one result's marks. A mark it did not pass (an audio-only step has no frame to
        preprocess) counts as reached with the mark before it, so that stage's span is 0."""
        t = np.empty(len(MARKS))
        last = float(marks["captured"])
        for i, name in enumerate(MARKS):
            last = float(marks.get(name, last))
            t[i] = last
        row = np.maximum(np.diff(t), 0.0) * 1e3  # ms; a clock read across threads never goes back
        with self._lock:
            self._rows.append(row)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def summary(self, tail: float = TAIL_SHARE) -> dict:
        """Each stage's p50 / p99 / mean (ms) and the slowest ``tail`` share's mean per stage.

        Returns:
            ``{"n", "stages": {stage: {"p50", "p99", "mean"}}, "capture_to_result": {"p50", "p99"},
            "tail": {"share", "n", "capture_to_result_ms", "stages_ms": {stage: mean}}}``; ``{"n": 0}``
            before any result.
        """
        with self._lock:
            if not self._rows:
                return {"n": 0}
            rows = np.stack(self._rows)
        total = rows[:, :_RESULT].sum(axis=1)
        k = max(1, int(np.ceil(tail * len(rows))))
        slow = rows[np.argsort(total)[-k:]]
        r = lambda x: round(float(x), 3)
        return {
            "n": len(rows),
            "stages": {name: {"p50": r(np.percentile(rows[:, i], 50)), "p99": r(np.percentile(rows[:, i], 99)),
                              "mean": r(rows[:, i].mean())} for i, name in enumerate(STAGES)},
            "capture_to_result": {"p50": r(np.percentile(total, 50)), "p99": r(np.percentile(total, 99))},
            "tail": {"share": tail, "n": k, "capture_to_result_ms": r(slow[:, :_RESULT].sum(axis=1).mean()),
                     "stages_ms": {name: r(slow[:, i].mean()) for i, name in enumerate(STAGES)}},
        }
