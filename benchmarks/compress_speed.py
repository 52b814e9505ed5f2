"""Speed-up of compressed bundles over their FP32 parent on ONNX Runtime CPU, as ratios measured interleaved.

A compressed model's worth is a ratio (how much faster than the FP32 model, on the same machine at the
same moment), and a shared or throttling machine moves absolute latencies by more than the ratio
being measured. So every model is timed in turn within one run (``interleaved_latency``: one call of
each, repeated), the ratio to the first model is taken per repeat, and the repeats give its median
and spread. On a loaded machine those medians move by more than a few percent, and the slower model
of a pair is hit harder; the ratio of the fastest runs (each model's fastest over all repeats: the runs
no other process disturbed) is then the steadier estimate, so it is reported too. Batch 1, each
intra-op thread count asked; the input is the bundle geometry's example batch. The machine's load
average before and after the timing goes with the result, so a ratio can be read against how busy
the machine was. Run it as::

    python -m fusionedge.benchmarks.compress_speed FP32_BUNDLE OTHER_BUNDLE... --threads 1,2 --repeats 7

It prints a table and, with ``--json``, writes every repeat's medians.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.errors import InputError

__all__ = ["main", "measure_speedups"]


def measure_speedups(bundles: list[str | os.PathLike], *, threads: tuple[int, ...] = (1,), repeats: int = 5,
                     runs: int = 50, warmup: int = 5) -> dict[str, Any]:
    """Batch-1 latency of each bundle's model and its speed-up over the first, interleaved, repeated.

    Args:
        bundles: bundle folders; the first is the reference (FP32).
        threads: ONNX Runtime intra-op thread counts to measure.
        repeats: independent interleaved measurements per thread count.
        runs: timed runs per model in each repeat (median taken).
        warmup: untimed runs per model first.

    Returns:
        ``{"models": [{"bundle", "size", "size_ratio"}], "load_average": {"before", "after"} (1-minute load
        averages; None where the system has none), "threads": {n: [{"median_ms", "fastest_ms",
        "speedup_median", "speedup_min", "speedup_max", "speedup_p10", "speedup_fastest", "repeats_ms"}]
        per model}}`` (``speedup_min``/``max``: the spread of the per-repeat ratios; ``speedup_fastest``:
        the first model's fastest run over this model's, across all repeats).

    Raises:
        InputError: fewer than two bundles, or a count < 1.
        BundleError: a bundle is invalid.
    """
    from fusionedge.export.compress_report import interleaved_latency
    from fusionedge.export.onnx_export import example_inputs
    from fusionedge.sdk.bundle import load_bundle

    if len(bundles) < 2:
        raise InputError(f"compress speed: give the FP32 bundle and at least one other, got {len(bundles)}")
    if min(repeats, runs, *threads) < 1 or warmup < 0:
        raise InputError(f"compress speed: repeats, runs and threads must be >= 1, got {repeats}, {runs}, {threads}")
    loaded = [load_bundle(b) for b in bundles]
    feeds = example_inputs(loaded[0].geometry, 1, seed=0)
    sizes = [b.model_path.stat().st_size for b in loaded]
    result: dict[str, Any] = {
        "models": [{"bundle": str(b.path), "size": s, "size_ratio": s / sizes[0]} for b, s in zip(loaded, sizes)],
        "threads": {}, "repeats": repeats, "runs": runs, "load_average": {"before": _load_average()}}
    for n in threads:
        lat = [interleaved_latency([b.model_path for b in loaded], feeds, runs=runs, warmup=warmup, threads=n)
               for _ in range(repeats)]
        ms = np.array([[m["median_ms"] for m in rep] for rep in lat])  # (repeats, models)
        p10 = np.array([[m["p10_ms"] for m in rep] for rep in lat])
        fastest = np.array([[m["fastest_ms"] for m in rep] for rep in lat]).min(axis=0)  # (models,)
        ratio, ratio_p10 = ms[:, :1] / ms, p10[:, :1] / p10
        result["threads"][n] = [
            {"median_ms": float(np.median(ms[:, i])), "fastest_ms": float(fastest[i]),
             "speedup_median": float(np.median(ratio[:, i])), "speedup_fastest": float(fastest[0] / fastest[i]),
             "speedup_min": float(ratio[:, i].min()), "speedup_max": float(ratio[:, i].max()),
             "speedup_p10": float(np.median(ratio_p10[:, i])), "repeats_ms": [float(x) for x in ms[:, i]]}
            for i in range(len(loaded))]
    result["load_average"]["after"] = _load_average()
    return result


def _load_average() -> float | None:
    """The 1-minute load average (None where the system does not report one)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _table(result: dict[str, Any]) -> str:
    lines = [("| bundle | size vs first | threads | median ms | speed-up (median) | spread (min-max) | speed-up (p10) | "
              "fastest ms | speed-up (fastest) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for n, rows in result["threads"].items():
        for m, r in zip(result["models"], rows):
            lines.append(f"| {Path(m['bundle']).name} | {m['size_ratio']:.3f} | {n} | {r['median_ms']:.2f} | "
                         f"{r['speedup_median']:.2f}x | {r['speedup_min']:.2f}-{r['speedup_max']:.2f} | "
                         f"{r['speedup_p10']:.2f}x | {r['fastest_ms']:.2f} | {r['speedup_fastest']:.2f}x |")
    load = result.get("load_average") or {}
    lines.append(f"\nload average (1 min): {load.get('before')} before, {load.get('after')} after")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: time the bundles, print the table, optionally write JSON."""
    p = argparse.ArgumentParser(prog="python -m fusionedge.benchmarks.compress_speed", description=__doc__.split("\n")[0])
    p.add_argument("bundles", nargs="+", type=Path, help="the FP32 bundle first, then the compressed ones")
    p.add_argument("--threads", default="1,2", help="intra-op thread counts, comma-separated")
    p.add_argument("--repeats", type=int, default=5, help="interleaved measurements per thread count")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model per repeat")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    from fusionedge.sdk.errors import FusionEdgeError
    from fusionedge.sdk.fileio import write_json_atomic

    try:
        threads = tuple(int(x) for x in args.threads.split(",") if x.strip())
        result = measure_speedups(args.bundles, threads=threads, repeats=args.repeats, runs=args.runs)
    except (FusionEdgeError, ValueError) as e:
        print(f"compress speed: {e}", file=sys.stderr)
        return 2
    print(_table(result))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
