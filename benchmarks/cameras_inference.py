"""Inference alone, for the cameras benchmark: the bundle at batch N against N calls at batch 1.

The cameras scenario's CPU time per result measures the whole pipeline (capture, preprocessing, window
assembly, inference, decoding), in which a small model's inference is a minor part; whether batching
the cameras' steps pays off is a question about the model call alone. :func:`inference_alone` times
``Perception.run_batch`` on N cameras' worth of inputs as one batch and as N single calls, interleaved
(the two alternate within every round, each going first in every other round) so that a burst of
someone else's work on a shared machine lands on both, and reports per camera count the median wall
time and process CPU time per frame of each and their ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

__all__ = ["INFERENCE_ROUNDS", "inference_alone"]

#: Rounds per camera count (each: one call at batch N and N calls at batch 1).
INFERENCE_ROUNDS = 40


def _one_by_one(perception: Any, video: np.ndarray, audio: np.ndarray, presence: np.ndarray) -> None:
    for i in range(len(video)):
        perception.run_batch(video[i:i + 1], audio[i:i + 1], presence[i:i + 1])


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def inference_alone(perception: Any, cameras: Sequence[int], *, rounds: int = INFERENCE_ROUNDS,
                    seed: int = 0) -> list[dict]:
    """Time the bundle at batch N against N calls at batch 1 for each N in ``cameras``, interleaved.

    Args:
        perception: a loaded Perception (its ``geometry`` and ``run_batch``).
        cameras: camera counts N; a count beyond the bundle's batch range is chunked by ``run_batch``
            as in a stream.
        rounds: rounds per count, >= 1.
        seed: the random inputs.

    Returns:
        Per count: ``cameras``, ``rounds``, ``batched_ms_per_frame`` / ``separate_ms_per_frame`` (median
        wall time per frame), their ``_range``, ``batched_cpu_ms_per_frame`` / ``separate_cpu_ms_per_frame``
        (median process CPU time per frame, every thread), and ``ratio`` / ``cpu_ratio`` (batched over
        separate; below 1: the batch is cheaper per frame).
    """
    g = perception.geometry
    rng = np.random.default_rng(seed)
    out = []
    for n in cameras:
        video = rng.standard_normal((n, g.clip_frames, 3, g.height, g.width)).astype(np.float32)
        audio = (0.1 * rng.standard_normal((n, g.audio_samples))).astype(np.float32)
        presence = np.ones((n, 2), np.float32)
        batched = partial(perception.run_batch, video, audio, presence)
        separate = partial(_one_by_one, perception, video, audio, presence)
        batched()  # the first call at a batch size allocates; neither way pays for it in the timings
        separate()
        wall: dict[str, list[float]] = {"batched": [], "separate": []}
        cpu: dict[str, list[float]] = {"batched": [], "separate": []}
        for r in range(max(1, int(rounds))):
            order = (("batched", batched), ("separate", separate))
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[name].append((time.perf_counter() - t0) * 1e3 / n)
                cpu[name].append((time.process_time() - c0) * 1e3 / n)
        b, s = _median(wall["batched"]), _median(wall["separate"])
        bc, sc = _median(cpu["batched"]), _median(cpu["separate"])
        out.append({"cameras": int(n), "rounds": max(1, int(rounds)),
                    "batched_ms_per_frame": b, "separate_ms_per_frame": s,
                    "batched_ms_range": [round(min(wall["batched"]), 3), round(max(wall["batched"]), 3)],
                    "separate_ms_range": [round(min(wall["separate"]), 3), round(max(wall["separate"]), 3)],
                    "batched_cpu_ms_per_frame": bc, "separate_cpu_ms_per_frame": sc,
                    "ratio": round(b / s, 3) if s > 0 else None, "cpu_ratio": round(bc / sc, 3) if sc > 0 else None})
    return out
