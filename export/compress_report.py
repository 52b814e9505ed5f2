"""The Pareto report of a compress run: accuracy, latency, size and FLOPs of every stage.

Every stage's bundle is evaluated on the test split through the runtime, and timed at batch 1 on
ONNX Runtime's CPU provider with one thread. The stages are timed **interleaved** — one run of each
in turn, repeated — so a machine whose load changes during the measurement slows them all alike and
the ratios stay fair; the median is reported. The report is written three ways: ``report.json``
(everything), ``report.md`` (a table, the speed-up and size of each stage relative to ``fp32``) and
``pareto.png`` (event accuracy and detection mAP@0.5 against latency, marker area ∝ file size,
each point labelled with its stage and GFLOPs).
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.fileio import json_safe, write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["METRICS", "evaluate_bundle", "finish_report", "interleaved_latency", "markdown_report", "pareto_png"]

#: The metrics a compression budget is about.
METRICS = ("event_accuracy", "detection_map50")


def evaluate_bundle(bundle_dir: str | os.PathLike, data: str | os.PathLike, limit: int | None) -> dict[str, float]:
    """Event accuracy, detection mAP@0.5 and the sample count of a bundle on a labelled data set (ONNX Runtime).

    Raises:
        BundleError / DataError / MediaError: the bundle or the data is invalid.
    """
    from fusionedge.sdk.evaluate import evaluate
    from fusionedge.sdk.perception import Perception

    p = Perception.load(bundle_dir, ["onnxruntime"])
    try:
        m = evaluate(p, data, progress=False, limit=limit)
    finally:
        p.close()
    return {**{k: float(m[k]) for k in METRICS}, "samples": int(m["samples"])}


def interleaved_latency(models: list[str | os.PathLike], feeds: dict[str, np.ndarray], *, runs: int = 50,
                        warmup: int = 5, threads: int = 1) -> list[dict[str, float]]:
    """Batch-1 latency of several ONNX models on ONNX Runtime CPU, timed in turn.

    Args:
        models: ``.onnx`` paths.
        feeds: one input batch (the same for every model).
        runs: timed runs per model.
        warmup: untimed runs per model first.
        threads: ONNX Runtime intra-op threads.

    Returns:
        Per model ``{"median_ms", "p10_ms", "p90_ms", "fastest_ms", "runs"}``.
    """
    import onnxruntime as ort

    sessions = []
    for path in models:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sessions.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))
    for s in sessions:
        for _ in range(warmup):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[i].append(time.perf_counter() - t0)
    return [{"median_ms": float(np.median(t) * 1e3), "p10_ms": float(np.percentile(t, 10) * 1e3),
             "p90_ms": float(np.percentile(t, 90) * 1e3), "fastest_ms": float(np.min(t) * 1e3), "runs": runs}
            for t in times]


def markdown_report(report: dict[str, Any]) -> str:
    """The report as Markdown: one row per stage."""
    stages = report["stages"]
    base = stages[0]
    lines = [
        "# Compression report", "",
        (f"Chosen: **{report['chosen']}**. Accuracy on the test split ({report['test_samples']} samples); "
        f"latency: batch 1, ONNX Runtime CPU, 1 thread, median of {report['latency_runs']} interleaved runs. "
        "Drops are from `fp32` in points; the budget is checked on the validation split."), "",
        ("| stage | kind | event acc | det mAP@0.5 | Δ event (val) | Δ mAP (val) | GFLOPs | size (KB) | "
        "latency (ms) | speed-up | size vs fp32 |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        gf = f"{s['flops'] / 1e9:.3f}" if s.get("flops") else "-"
        lines.append(
            f"| {s['name']} | {s['kind']} | {s['test']['event_accuracy']:.4f} | {s['test']['detection_map50']:.4f} | "
            f"{-100 * s['val_drop']['event_accuracy']:+.2f} | {-100 * s['val_drop']['detection_map50']:+.2f} | {gf} | "
            f"{s['size'] / 1024:.0f} | {s['latency']['median_ms']:.2f} | "
            f"{base['latency']['median_ms'] / s['latency']['median_ms']:.2f}x | {s['size'] / base['size']:.2f} |")
    lines += ["", ("CPU runtimes gain no speed from 2:4 sparsity; TensorRT uses it on GPUs with sparse tensor "
              "cores when the engine is built from the sparse bundle (`fusionedge engine build`)."), "",
              "![Pareto](pareto.png)", ""]
    return "\n".join(lines)


def pareto_png(report: dict[str, Any]) -> bytes:
    """Accuracy (event, detection) against latency for every stage, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    base_size = stages[0]["size"]
    for ax, metric, title in ((axes[0], "event_accuracy", "event accuracy"),
                              (axes[1], "detection_map50", "detection mAP@0.5")):
        for s in stages:
            x, y = s["latency"]["median_ms"], s["test"][metric]
            ax.scatter([x], [y], s=60 + 400 * s["size"] / base_size, alpha=0.6)
            gf = f", {s['flops'] / 1e9:.2f} GF" if s.get("flops") else ""
            ax.annotate(f"{s['name']}{gf}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel("latency, batch 1, ORT CPU (ms)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    fig.suptitle("compression stages (marker area ∝ file size)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def finish_report(work: Path, stages: list[dict[str, Any]], *, chosen: str, config: dict[str, Any],
                  test_data: Path, test_limit: int | None, latency_runs: int,
                  progress: bool = True) -> dict[str, Any]:
    """Evaluate and time every stage, then write ``report.json``, ``report.md`` and ``pareto.png`` in ``work``.

    Args:
        work: the folder holding one sub-folder per stage (named by each stage's ``bundle``).
        stages: the stages measured so far (name, kind, bundle, flops, val, val_drop ...); completed here
            with ``test``, ``size`` and ``latency``.
        chosen: the stage the chain ended with.
        config: the run's settings, recorded as they are.
        test_data: the test split.
        test_limit: evaluate only the first N test samples.
        latency_runs: timed runs per stage.
        progress: progress on stderr.

    Returns:
        The report dict.
    """
    from fusionedge.export.onnx_export import example_inputs

    bundles = [load_bundle(work / s["bundle"]) for s in stages]
    for s, b in zip(stages, bundles):
        s["test"] = evaluate_bundle(b.path, test_data, test_limit)
        s["size"] = b.model_path.stat().st_size
        s["precision"] = b.precision
    if progress:
        print(f"compress: timing {len(stages)} stages interleaved ({latency_runs} runs each)", file=sys.stderr)
    feeds = example_inputs(bundles[0].geometry, 1, seed=0)
    for s, lat in zip(stages, interleaved_latency([b.model_path for b in bundles], feeds, runs=latency_runs)):
        s["latency"] = lat
    samples = stages[0]["test"]["samples"]
    report = json_safe({"chosen": chosen, "config": config, "stages": stages, "test_samples": samples,
                        "latency_runs": latency_runs})
    write_json_atomic(work / "report.json", report)
    write_text_atomic(work / "report.md", markdown_report(report))
    write_bytes_atomic(work / "pareto.png", pareto_png(report))
    return report
