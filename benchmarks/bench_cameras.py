"""How many 30 FPS cameras one device sustains: batched inference against one inference per camera.

A camera counts as sustained when, over the run, nothing was dropped, every camera delivered at least
90 % of its frames as results and the worst camera's p99 capture->result latency stays under one frame
period (33.3 ms at 30 FPS). The cameras are synthetic live sensors (a moving 640x360 picture at the
frame rate, on the pipeline's clock), so the number measures the pipeline and the model, not a camera
driver. For each camera count both modes run one after the other in the same process, batched first::

    python benchmarks/bench_cameras.py --bundle bundle/ --seconds 5 --max-cameras 8 --out cameras.json
    python benchmarks/bench_cameras.py --bundle bundle/ --cameras 2 --spinning both   # ORT spin on vs off

It is a script, not a pytest-benchmark suite: each point is a multi-second real-time run.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
from fusionedge.sdk import Perception
from fusionedge.sdk.streaming import Frame, MultiPipeline, PipelineConfig, SourceURI, VideoSource
from fusionedge.sdk.streaming.threads import streaming_backend_options

FPS = 30.0


class SyntheticCamera(VideoSource):
    """A live camera giving a moving 640x360 picture at ``fps`` on the stream clock."""

    def __init__(self, clock, index: int, fps: float = FPS) -> None:
        super().__init__(SourceURI(f"synthetic://{index}", "video", "v4l2", str(index)), clock)
        self.fps = fps
        rng = np.random.default_rng(index)
        self._base = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
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


def run_point(perception: Perception, cameras: int, *, batched: bool, seconds: float) -> dict:
    """Run ``cameras`` synthetic cameras live for ``seconds``; the summary numbers that decide a point."""
    cams = [(f"cam{i}", (lambda clock, i=i: SyntheticCamera(clock, i))) for i in range(cameras)]
    multi = MultiPipeline(perception, cameras=cams, config=PipelineConfig(policy="live"), batched=batched,
                          max_wait=0.25 / FPS)
    timer = threading.Timer(seconds, multi.request_stop)
    timer.start()
    try:
        s = multi.run()
    finally:
        timer.cancel()
    per = s["cameras"].values()
    frames_min = min(c["results"] for c in per)
    expected = seconds * FPS
    p99 = s["latency_ms"]["capture_to_result"].get("p99", float("inf"))
    ok = s["dropped"] == 0 and frames_min >= 0.9 * expected and p99 < 1e3 / FPS
    return {"cameras": cameras, "batched": batched, "sustained": bool(ok), "dropped": s["dropped"],
            "min_results_per_camera": frames_min, "expected_per_camera": round(expected),
            "p50_ms": s["latency_ms"]["capture_to_result"].get("p50"), "p99_ms": p99,
            "mean_batch": s["mean_batch"], "fps_total": s["fps"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--max-cameras", type=int, default=8)
    ap.add_argument("--cameras", type=int, default=None, help="one camera count only")
    ap.add_argument("--spinning", choices=("off", "on", "both"), default="off",
                    help="ONNX Runtime workers spin-wait (on) or sleep (off); both: measure each")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: the cores "
                                                               "left after capture)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    points = []
    counts = [args.cameras] if args.cameras else list(range(1, args.max_cameras + 1))
    for spin in (("off", "on") if args.spinning == "both" else (args.spinning,)):
        opts = streaming_backend_options(max(counts), threads=args.threads, spinning=spin == "on")
        with Perception.load(args.bundle, backend_options=opts) as p:
            best = {True: 0, False: 0}
            for n in counts:
                for batched in (True, False):
                    if args.cameras is None and best[batched] < n - 1:
                        continue  # this mode already failed at a smaller count
                    pt = {**run_point(p, n, batched=batched, seconds=args.seconds), "spinning": spin,
                          "intra_op_threads": opts["onnxruntime"]["intra_op_threads"]}
                    points.append(pt)
                    print(json.dumps(pt), file=sys.stderr, flush=True)
                    if pt["sustained"]:
                        best[batched] = n
            points.append({"spinning": spin, "max_sustained_batched": best[True],
                           "max_sustained_per_camera": best[False]})
    text = json.dumps(points, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
