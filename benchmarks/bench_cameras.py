"""How many 30 FPS cameras one device sustains: batched inference against one inference per camera.

A camera count counts as sustained when, over the run, nothing was dropped, every camera delivered at
least 90 % of its frames as results and the worst camera's p99 capture->result latency stays under one
frame period (33.3 ms at 30 FPS). The cameras are synthetic live sensors (a moving picture of
``--size`` at the frame rate, on the pipeline's clock), so the number measures the pipeline and the
model, not a camera driver.

Every configuration (camera count x batched / one call per camera x ONNX Runtime spinning on / off x
one core busy or not) is run once per round, the configurations shuffled within each round, for
``--repeats`` rounds: on a shared machine a burst of someone else's work then lands on different
configurations each round instead of on all runs of one of them. The summary gives per configuration
the median and the range of p99 and of results per camera, how many rounds sustained it, and the load
average before and after. ``--busy on|both`` starts a process that keeps one core busy (a Python busy
loop) for the runs that ask for it, and stops it after each::

    python benchmarks/bench_cameras.py --bundle bundle/ --cameras 1,2,3 --spinning both --busy both \
        --threads auto,2 --repeats 3 --seconds 4 --out cameras.json

Each point also records the process's CPU time per result (all its threads, from ``getrusage``): on a
busy machine latency measures the neighbours as much as the pipeline, CPU time much less so.

It is a script, not a pytest-benchmark suite: each point is a multi-second real-time run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from fusionedge.sdk import Perception
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.streaming import Frame, MultiPipeline, PipelineConfig, SourceURI, VideoSource
from fusionedge.sdk.streaming.threads import streaming_backend_options

FPS = 30.0

#: The process that keeps one core busy: a pure-Python loop (one core, no I/O).
BUSY_LOOP = "while True:\n    pass\n"


class SyntheticCamera(VideoSource):
    """A live camera giving a moving ``width`` x ``height`` picture at ``fps`` on the stream clock."""

    def __init__(self, clock, index: int, fps: float = FPS, size: tuple[int, int] = (640, 360)) -> None:
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


def run_point(perception: Perception, cameras: int, *, batched: bool, seconds: float,
              size: tuple[int, int] = (640, 360)) -> dict:
    """Run ``cameras`` synthetic cameras live for ``seconds``; the summary numbers that decide a point."""
    cams = [(f"cam{i}", (lambda clock, i=i: SyntheticCamera(clock, i, size=size))) for i in range(cameras)]
    multi = MultiPipeline(perception, cameras=cams, config=PipelineConfig(policy="live"), batched=batched,
                          max_wait=0.25 / FPS)
    timer = threading.Timer(seconds, multi.request_stop)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    timer.start()
    try:
        s = multi.run()
    finally:
        timer.cancel()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # every thread of this process
    per = s["cameras"].values()
    frames_min = min(c["results"] for c in per)
    expected = seconds * FPS
    p99 = s["latency_ms"]["capture_to_result"].get("p99", float("inf"))
    ok = s["dropped"] == 0 and frames_min >= 0.9 * expected and p99 < 1e3 / FPS
    return {"cameras": cameras, "batched": batched, "sustained": bool(ok), "dropped": s["dropped"],
            "min_results_per_camera": frames_min, "expected_per_camera": round(expected),
            "p50_ms": s["latency_ms"]["capture_to_result"].get("p50"), "p99_ms": p99,
            "mean_batch": s["mean_batch"], "fps_total": s["fps"],
            "cpu_ms_per_result": round(1e3 * cpu_s / max(1, s["results"]), 3)}


def _choices(text: str) -> tuple[str, ...]:
    return ("off", "on") if text == "both" else (text,)


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as e:
        raise InputError(f"--cameras takes counts like 1,2,3, got {text!r}") from e
    if not counts or counts[0] < 1:
        raise InputError(f"--cameras takes counts >= 1, got {text!r}")
    return counts


def summarize(points: list[dict]) -> list[dict]:
    """Per configuration: rounds sustained, median and range of p99 and of results per camera, drops."""
    key = lambda p: (p["cameras"], p["batched"], p["intra_op_threads"], p["spinning"], p["busy"])
    rows = []
    for k, group in itertools.groupby(sorted(points, key=key), key=key):
        group = list(group)
        p99 = [g["p99_ms"] for g in group]
        res = [g["min_results_per_camera"] for g in group]
        cpu = [g["cpu_ms_per_result"] for g in group]
        rows.append({"cameras": k[0], "batched": k[1], "intra_op_threads": k[2], "spinning": k[3], "busy": k[4],
                     "rounds": len(group), "cpu_ms_per_result_median": round(statistics.median(cpu), 3),
                     "cpu_ms_per_result_range": [min(cpu), max(cpu)],
                     "sustained_rounds": sum(g["sustained"] for g in group),
                     "p99_ms_median": round(statistics.median(p99), 2),
                     "p99_ms_range": [round(min(p99), 2), round(max(p99), 2)],
                     "min_results_median": statistics.median(res), "expected": group[0]["expected_per_camera"],
                     "dropped": [g["dropped"] for g in group]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--cameras", default="1,2,3", help="camera counts, e.g. 1,2,3")
    ap.add_argument("--size", default="640x360", help="each synthetic camera's frame size WxH")
    ap.add_argument("--spinning", choices=("off", "on", "both"), default="off",
                    help="ONNX Runtime workers spin-wait (on) or sleep (off); both: measure each")
    ap.add_argument("--busy", choices=("off", "on", "both"), default="off",
                    help="one core kept busy by another process during the run (on), or not; both: each")
    ap.add_argument("--modes", choices=("batched", "per-camera", "both"), default="both")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each runs every configuration once")
    ap.add_argument("--threads", default="auto", help="ONNX Runtime intra-op threads, comma-separated to measure "
                                                       "each (auto: the cores left after capture), e.g. auto,2")
    ap.add_argument("--seed", type=int, default=0, help="the order of configurations within the rounds")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    counts = _counts(args.cameras)
    w, _, h = args.size.partition("x")
    size = (int(w), int(h))
    modes = {"batched": (True,), "per-camera": (False,), "both": (True, False)}[args.modes]
    threads = [None if t.strip() == "auto" else int(t) for t in args.threads.split(",") if t.strip()]
    configs = list(itertools.product(counts, modes, [(t, s) for t in threads for s in _choices(args.spinning)],
                                     _choices(args.busy)))
    perceptions = {}
    for session in {c[2] for c in configs}:  # one session per threads x spinning setting, loaded once
        opts = streaming_backend_options(max(counts), threads=session[0], spinning=session[1] == "on")
        perceptions[session] = (Perception.load(args.bundle, backend_options=opts),
                                opts["onnxruntime"]["intra_op_threads"])
    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    points = []
    try:
        for rnd in range(args.repeats):
            order = configs[:]
            rng.shuffle(order)
            for n, batched, session, busy in order:
                p, n_threads = perceptions[session]
                with BusyCore(busy == "on"):
                    pt = run_point(p, n, batched=batched, seconds=args.seconds, size=size)
                pt.update(spinning=session[1], busy=busy, round=rnd, intra_op_threads=n_threads,
                          loadavg_1m=round(os.getloadavg()[0], 2))
                points.append(pt)
                print(json.dumps(pt), file=sys.stderr, flush=True)
    finally:
        for p, _ in perceptions.values():
            p.close()
    out = {"size": args.size, "seconds": args.seconds, "repeats": args.repeats, "cores": os.cpu_count(),
           "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()],
           "summary": summarize(points), "points": points}
    text = json.dumps(out, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
