"""How many live cameras one device sustains: batched inference against one inference per camera.

A camera count counts as sustained in a run when nothing was dropped, every camera delivered at least
90 % of its frames as results and the worst camera's p99 capture->result latency stays under one frame
period (33.3 ms at 30 FPS); it counts as sustained overall when it was in most rounds. The cameras are
synthetic live sensors (a moving picture of the given size at the frame rate, on the pipeline's clock)
and, with ``audio``, one synthetic microphone that every camera hears (20 ms chunks at the bundle's
sample rate, as a sound card delivers them), so the number measures the pipeline and the model, not a
camera driver.

Every configuration (camera count x batched / one call per camera x ONNX Runtime intra-op threads x
spinning on / off x one core busy or not) is run once per round, the configurations shuffled within
each round, for ``repeats`` rounds: on a shared machine a burst of someone else's work then lands on
different configurations each round instead of on all runs of one of them. :func:`run_cameras` returns
per configuration the median and range of p99, of results per camera and of the process's CPU time per
result (all its threads, from ``getrusage``: on a busy machine latency measures the neighbours as much
as the pipeline, CPU time much less so), and the headline per setting: the most cameras sustained
batched and one call per camera, and the batched / per-camera CPU-time ratio from the same rounds.
Each run also records where the worst camera's latency went, stage by stage (capture queue,
preprocessing, waiting for audio, batch wait, inference, ...: :mod:`fusionedge.sdk.streaming.stages`),
and before the runs the model call alone is timed at batch N against N calls at batch 1, interleaved
(:mod:`fusionedge.benchmarks.cameras_inference`): the live runs' CPU time per result is mostly not
inference, so whether batching pays shows there. ``fusionedge bench cameras`` runs it; so does this file as a script::

    python benchmarks/bench_cameras.py --bundle bundle/ --cameras 1,2,3 --audio --spinning both \
        --busy both --threads auto,2 --repeats 3 --seconds 4 --out cameras.json

Each point is a multi-second real-time run, so this is no pytest-benchmark suite.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.benchmarks.cameras_inference import inference_alone
from fusionedge.benchmarks.cameras_options import (
    DEFAULT_CAMERAS,
    FPS,
    MAX_CAMERAS,
    MIN_DELIVERED,
    MIN_FRAMES,
    CamerasConfig,
    add_cameras_arguments,
    cameras_config,
    config_from_args,
)
from fusionedge.benchmarks.errors import BenchConfigError
from fusionedge.sdk import Perception
from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.fileio import dumps_json, write_json_atomic
from fusionedge.sdk.streaming import (
    AudioChunk,
    AudioSource,
    Frame,
    MultiPipeline,
    PipelineConfig,
    SourceURI,
    VideoSource,
)
from fusionedge.sdk.streaming.multi import batch_limits
from fusionedge.sdk.streaming.threads import streaming_backend_options

__all__ = ["DEFAULT_CAMERAS", "FPS", "MAX_CAMERAS", "MIN_DELIVERED", "MIN_FRAMES", "SCHEMA", "BusyCore",
           "CamerasConfig", "SyntheticCamera", "SyntheticMicrophone", "add_cameras_arguments", "cameras_config",
           "config_from_args", "headlines", "main", "run_cameras", "run_point", "stage_breakdown", "summarize"]

#: ``schema`` of the document :func:`run_cameras` returns.
SCHEMA = "fusionedge.bench.cameras/1"
#: The process that keeps one core busy: a pure-Python loop (one core, no I/O).
BUSY_LOOP = "while True:\n    pass\n"
#: Seconds of audio per synthetic microphone chunk (what a sound card delivers per callback).
CHUNK_SECONDS = 0.02

_MODE = {True: "batched", False: "per-camera"}


# ------------------------------------------------------------------------------------------ sensors


class SyntheticCamera(VideoSource):
    """A live camera giving a moving ``width`` x ``height`` picture at ``fps`` on the stream clock."""

    def __init__(self, clock: Any, index: int, fps: float = FPS, size: tuple[int, int] = (640, 360)) -> None:
        super().__init__(SourceURI(f"synthetic://{index}", "video", "v4l2", str(index)), clock)
        self.fps = fps
        rng = np.random.default_rng(index)
        self._base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        self._closed = threading.Event()
        self._n = 0
        self._t0 = 0.0

    def open(self) -> None:
        self._closed.clear()
        self._n, self._t0 = 0, self.clock.now()

    def read(self) -> Frame | None:
        if not self.clock.sleep_until(self._t0 + self._n / self.fps, self._closed):
            return None
        self._n += 1
        img = np.roll(self._base, 4 * self._n, axis=1)
        return Frame(image=img, t=self.clock.now(), index=self._n, captured=time.monotonic())

    def close(self) -> None:
        self._closed.set()


class SyntheticMicrophone(AudioSource):
    """A live microphone giving 20 ms chunks of a quiet tone in noise at ``rate`` Hz on the stream clock."""

    def __init__(self, clock: Any, rate: int) -> None:
        super().__init__(SourceURI("synthetic-mic://0", "audio", "mic", "0"), clock)
        self.rate = int(rate)
        self._size = max(1, round(CHUNK_SECONDS * self.rate))
        self._rng = np.random.default_rng(0)
        self._closed = threading.Event()
        self._n = 0
        self._t0 = 0.0

    def open(self) -> None:
        self._closed.clear()
        self._n, self._t0 = 0, self.clock.now()

    def read(self) -> AudioChunk | None:
        t_end = self._t0 + (self._n + 1) * self._size / self.rate
        if not self.clock.sleep_until(t_end, self._closed):
            return None
        j = np.arange(self._n * self._size, (self._n + 1) * self._size)
        tone = 0.1 * np.sin(2 * np.pi * 440.0 * j / self.rate)
        self._n += 1
        samples = (tone + 0.01 * self._rng.standard_normal(self._size)).astype(np.float32)
        return AudioChunk(samples=samples, rate=self.rate, t_end=t_end)

    def close(self) -> None:
        self._closed.set()


class BusyCore:
    """Keep one core busy with another process while the ``with`` block runs (``enabled=False``: no-op)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> None:
        if self.enabled:
            self._proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            time.sleep(0.2)  # let it reach the loop before the run starts

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
            self._proc = None


# ------------------------------------------------------------------------------------------ measuring


def run_point(perception: Perception, cameras: int, *, batched: bool, seconds: float, fps: float = FPS,
              size: tuple[int, int] = (640, 360), audio: bool = False) -> dict:
    """Run ``cameras`` synthetic cameras (and a shared microphone) live for ``seconds``.

    Returns:
        The numbers that decide the point: ``sustained``, ``dropped``, ``min_results_per_camera``,
        ``expected_per_camera``, ``p50_ms`` / ``p99_ms`` (the worst camera's; None without results),
        ``mean_batch``, ``fps_total`` and ``cpu_ms_per_result``; and where the worst camera's latency
        went (:func:`stage_breakdown`): ``stages`` and ``audio_lag_ms`` (its window's lag behind the frame).
    """
    cams = [(f"cam{i}", (lambda clock, i=i: SyntheticCamera(clock, i, fps=fps, size=size)))
            for i in range(cameras)]
    rate = perception.geometry.sample_rate
    mics = [("mic", lambda clock: SyntheticMicrophone(clock, rate))] if audio else []
    multi = MultiPipeline(perception, cameras=cams, mics=mics, config=PipelineConfig(policy="live"),
                          batched=batched)
    timer = threading.Timer(seconds, multi.request_stop)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    timer.start()
    try:
        s = multi.run()
    finally:
        timer.cancel()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # every thread of this process
    frames_min = min(c["results"] for c in s["cameras"].values())
    expected = seconds * fps
    lat = s["latency_ms"]["capture_to_result"]
    p99 = lat.get("p99")
    ok = s["dropped"] == 0 and frames_min >= MIN_DELIVERED * expected and p99 is not None and p99 < 1e3 / fps
    worst = max(s["cameras"].values(), key=lambda c: c["latency_ms"].get("capture_to_result", {}).get("p99", -1.0))
    return {"cameras": cameras, "batched": batched, "sustained": bool(ok), "dropped": s["dropped"],
            "min_results_per_camera": frames_min, "expected_per_camera": round(expected),
            "p50_ms": lat.get("p50"), "p99_ms": p99, "mean_batch": s["mean_batch"], "fps_total": s["fps"],
            "cpu_ms_per_result": round(1e3 * cpu_s / s["results"], 3) if s["results"] else None,
            "stages": stage_breakdown(worst["stages_ms"]), "audio_lag_ms": worst["audio_lag_ms"] or None}


def stage_breakdown(stages_ms: dict) -> dict | None:
    """A camera's ``stats()["stages_ms"]`` in short: each stage's p50 and p99, and its mean over the
    slowest results (``tail``, with their mean capture->result as ``tail_ms``); None without results."""
    if not stages_ms.get("n"):
        return None
    per = stages_ms["stages"]
    return {"p50": {k: v["p50"] for k, v in per.items()}, "p99": {k: v["p99"] for k, v in per.items()},
            "tail": dict(stages_ms["tail"]["stages_ms"]), "tail_ms": stages_ms["tail"]["capture_to_result_ms"],
            "tail_share": stages_ms["tail"]["share"]}


def _median(values: Sequence[float | None], digits: int) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), digits) if known else None


def _range(values: Sequence[float | None], digits: int) -> list[float] | None:
    known = [v for v in values if v is not None]
    return [round(min(known), digits), round(max(known), digits)] if known else None


def _stage_medians(group: list[dict], which: str) -> dict | None:
    """Per stage, the median over the runs of ``stages[which]`` (None when no run has results)."""
    known = [g["stages"][which] for g in group if g.get("stages")]
    if not known:
        return None
    return {k: round(statistics.median(s[k] for s in known), 3) for k in known[0]}


def _setting(p: dict) -> tuple:
    return (p["threads"], p["intra_op_threads"], p["spinning"], p["busy"])


def summarize(points: list[dict]) -> list[dict]:
    """Per configuration: rounds sustained, median and range of p99, results per camera and CPU time.

    A configuration is ``sustained`` when it was in more than half of its rounds. A run without
    results has no p99 and no CPU time per result; the medians are over the runs that have them.
    ``stages_p50_ms`` / ``stages_tail_ms``: per stage, the median over the rounds of the worst camera's
    p50 and of its mean over the slowest results (:func:`stage_breakdown`).
    """
    def key(p: dict) -> tuple:
        return (p["cameras"], not p["batched"], *_setting(p))

    rows = []
    for _, group in itertools.groupby(sorted(points, key=key), key=key):
        group = list(group)
        g0 = group[0]
        sustained = sum(g["sustained"] for g in group)
        rows.append({"cameras": g0["cameras"], "batched": g0["batched"], "mode": _MODE[g0["batched"]],
                     "threads": g0["threads"], "intra_op_threads": g0["intra_op_threads"],
                     "spinning": g0["spinning"], "busy": g0["busy"], "rounds": len(group),
                     "sustained_rounds": sustained, "sustained": 2 * sustained > len(group),
                     "cpu_ms_per_result_median": _median([g["cpu_ms_per_result"] for g in group], 3),
                     "cpu_ms_per_result_range": _range([g["cpu_ms_per_result"] for g in group], 3),
                     "p99_ms_median": _median([g["p99_ms"] for g in group], 2),
                     "p99_ms_range": _range([g["p99_ms"] for g in group], 2),
                     "min_results_median": statistics.median(g["min_results_per_camera"] for g in group),
                     "expected": g0["expected_per_camera"], "dropped": [g["dropped"] for g in group],
                     "stages_p50_ms": _stage_medians(group, "p50"), "stages_tail_ms": _stage_medians(group, "tail")})
    return rows


def headlines(rows: list[dict]) -> list[dict]:
    """Per setting (threads x spinning x busy): the most cameras sustained in each mode and the CPU ratio.

    ``max_cameras_sustained[mode]`` is the largest camera count that was sustained with every smaller
    count measured sustained too (0: not even the smallest; None: the mode was not measured).
    ``cpu_ratio`` is batched over per-camera CPU time per result at the most cameras measured in both
    modes (below 1: batching is cheaper), ``cpu_ratio_by_cameras`` the same at every count.
    """
    out = []
    order = lambda r: (r["busy"] != "off", r["spinning"] != "off", r["threads"] != "auto", r["threads"])
    for _, group in itertools.groupby(sorted(rows, key=lambda r: (order(r), _setting(r))), key=_setting):
        group = list(group)
        g0 = group[0]
        by = {(r["cameras"], r["batched"]): r for r in group}
        counts = sorted({r["cameras"] for r in group})
        most: dict[str, int | None] = {}
        for batched, mode in _MODE.items():
            if not any(b == batched for _, b in by):
                most[mode] = None
                continue
            n = 0
            for c in counts:
                r = by.get((c, batched))
                if r is None:
                    continue
                if not r["sustained"]:
                    break
                n = c
            most[mode] = n
        ratios = []
        for c in counts:
            b, p = by.get((c, True)), by.get((c, False))
            if b and p and b["cpu_ms_per_result_median"] and p["cpu_ms_per_result_median"]:
                ratios.append({"cameras": c,
                               "ratio": round(b["cpu_ms_per_result_median"] / p["cpu_ms_per_result_median"], 3)})
        out.append({"threads": g0["threads"], "intra_op_threads": g0["intra_op_threads"],
                    "spinning": g0["spinning"], "busy": g0["busy"], "max_cameras_sustained": most,
                    "cpu_ratio": ratios[-1]["ratio"] if ratios else None,
                    "cpu_ratio_cameras": ratios[-1]["cameras"] if ratios else None,
                    "cpu_ratio_by_cameras": ratios})
    return out


def run_cameras(config: CamerasConfig, *, progress: Callable[[dict], None] | None = None) -> dict:
    """Measure every configuration of ``config`` for ``config.repeats`` shuffled rounds.

    Args:
        config: what to measure (:func:`cameras_config`).
        progress: called with each point as it is measured.

    Returns:
        ``schema`` (:data:`SCHEMA`), the settings, ``frame_period_ms``, the machine's cores and load
        average before and after, ``headline`` (the stream's default setting where it was measured,
        else the first), ``headlines`` (:func:`headlines`), ``summary`` (:func:`summarize`), ``points``
        (each run) and ``inference`` (the model call alone per setting and camera count, batch N
        against N calls at batch 1: :func:`~fusionedge.benchmarks.cameras_inference.inference_alone`).

    Raises:
        BundleError: the bundle cannot be loaded.
        BenchConfigError: batched runs of more cameras than the bundle's batch range takes.
    """
    counts = config.cameras
    sessions = [(t, s) for t in config.threads for s in config.spinning]
    configs = list(itertools.product(counts, config.batched, sessions, config.busy))
    perceptions: dict[tuple, tuple[Perception, int]] = {}
    capture = max(counts) + (1 if config.audio else 0)
    points: list[dict] = []
    try:
        for session in sessions:  # one session per threads x spinning setting, loaded once
            opts = streaming_backend_options(capture, threads=session[0], spinning=session[1] == "on")
            p = Perception.load(config.bundle, backend_options=opts)
            perceptions[session] = (p, int(opts["onnxruntime"]["intra_op_threads"]))
            lo, hi = batch_limits(p)
            too_many = [c for c in counts if not lo <= c <= hi]
            if True in config.batched and too_many:
                raise BenchConfigError(f"batched runs of {','.join(map(str, too_many))} cameras: bundle "
                                       f"{p.model!r} takes a batch of {lo} to {hi}; measure at most {hi} "
                                       f"cameras, --batched off, or re-export with a larger batch")
        load_before = os.getloadavg()
        inference = []  # the model call alone, batch N against N calls, before the live runs
        for session, (p, n_threads) in perceptions.items():
            for row in inference_alone(p, [c for c in counts if c > 1] or counts, seed=config.seed):
                row.update(threads="auto" if session[0] is None else str(session[0]), intra_op_threads=n_threads,
                           spinning=session[1])
                inference.append(row)
        rng = random.Random(config.seed)
        for rnd in range(config.repeats):
            order = configs[:]
            rng.shuffle(order)
            for n, batched, session, busy in order:
                p, n_threads = perceptions[session]
                with BusyCore(busy == "on"):
                    pt = run_point(p, n, batched=batched, seconds=config.seconds, fps=config.fps,
                                   size=config.size, audio=config.audio)
                pt.update(mode=_MODE[batched], threads="auto" if session[0] is None else str(session[0]),
                          intra_op_threads=n_threads, spinning=session[1], busy=busy, round=rnd,
                          loadavg_1m=round(os.getloadavg()[0], 2))
                points.append(pt)
                if progress is not None:
                    progress(pt)
        model = next(iter(perceptions.values()))[0].model
    finally:
        for p, _ in perceptions.values():
            p.close()
    rows = summarize(points)
    heads = headlines(rows)
    return {"schema": SCHEMA, "bundle": str(config.bundle), "model": model, "fps": config.fps,
            "frame_period_ms": round(1e3 / config.fps, 3), "size": f"{config.size[0]}x{config.size[1]}",
            "audio": config.audio, "seconds": config.seconds, "repeats": config.repeats, "seed": config.seed,
            "min_delivered": MIN_DELIVERED, "cores": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "headline": heads[0] if heads else None, "headlines": heads, "summary": rows, "points": points,
            "inference": inference}


def main(argv: list[str] | None = None) -> int:
    """The script: measure, print the document as JSON on stdout (each point on stderr), ``--out`` it.

    Returns:
        0 done; 2 a bad value, bundle or output (one line on stderr).
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cameras_arguments(ap)
    ap.add_argument("--modes", choices=("batched", "per-camera", "both"), default=None,
                    help="the same as --batched on, off and both")
    ap.add_argument("--out", type=Path, default=None, help="write the document here as JSON")
    args = ap.parse_args(argv)
    if args.modes is not None:
        args.batched = {"batched": "on", "per-camera": "off", "both": "both"}[args.modes]
    try:
        doc = run_cameras(config_from_args(args), progress=lambda pt: print(dumps_json(pt, indent=None),
                                                                            file=sys.stderr, flush=True))
        if args.out is not None:
            write_json_atomic(args.out, doc)
    except (FusionEdgeError, OSError) as e:  # a bad value, bundle or output path: one line, as the CLI says it
        print(f"bench_cameras.py: error: {e}", file=sys.stderr)
        return 2
    print(dumps_json(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
