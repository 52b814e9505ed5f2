"""One configuration's record in ``results.json``, from its LoadGen outcome and its pipeline's stage log.

LoadGen's summary gives the verdict, the query count and the latency percentiles; the pipeline's own
log gives the time the system under test spent per call and per stage. :func:`loadgen_record` puts
them together in the shape :mod:`fusionedge.benchmarks.results` validates: the scenario's primary
metric (p90 / p99 latency, or samples per second), latency and stage breakdowns, peak memory, and why
a run is INVALID when it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.benchmarks.eager import EAGER_NAME
from fusionedge.benchmarks.loadgen import LoadGenOutcome
from fusionedge.benchmarks.results import PRIMARY_METRIC, record_id

__all__ = ["loadgen_record"]


def loadgen_record(
    config: tuple[str, str, str, str],
    batch: int,
    samples_per_query: int,
    outcome: LoadGenOutcome,
    pipeline: Any,
    peak_mb: float | None,
    out_dir: Path,
) -> dict[str, Any]:
    """The ``results.json`` record of one configuration.

    Args:
        config: ``(backend, precision, scenario, mode)``.
        batch: samples per engine call in this scenario.
        samples_per_query: MultiStream's samples per query (the setting).
        outcome: what LoadGen reported.
        pipeline: the pipeline that ran (its ``log`` holds the per-call stage times).
        peak_mb: peak resident memory during the run, MB (None where it cannot be read).
        out_dir: the run's folder (the LoadGen log folder is recorded relative to it).

    Returns:
        The record (``ratios`` still empty: :func:`~fusionedge.benchmarks.results.add_ratios` fills them).
    """
    backend, precision, scenario, mode = config
    s, d = outcome.summary, outcome.detail
    per_query = 1 if scenario == "SingleStream" else (samples_per_query if scenario == "MultiStream" else None)
    queries = int(d.get("result_query_count") or 0)
    if scenario == "Offline":
        samples = (
            int(d.get("effective_samples_per_query") or d.get("generated_samples_per_query") or 0) * queries
        )
        per_record = samples
        throughput = float(s["samples_per_second"] or 0.0)
    else:
        per_record = int(per_query or 1)
        samples = queries * per_record
        mean_ns = s["mean_ns"] or d.get("result_mean_latency_ns") or 0
        # Queries run back to back in both scenarios: samples per second is samples per query / mean latency.
        throughput = per_record * 1e9 / mean_ns if mean_ns else 0.0
    pct = s["percentiles_ns"]
    latency = {
        "p50": pct.get(50.0),
        "p90": pct.get(90.0),
        "p99": pct.get(99.0),
        "mean": s["mean_ns"],
        "min": s["min_ns"],
        "max": s["max_ns"],
    }
    latency = {k: round((v or 0.0) / 1e6, 4) for k, v in latency.items()}
    metric_name = PRIMARY_METRIC[scenario]
    value = throughput if scenario == "Offline" else latency["p90" if scenario == "SingleStream" else "p99"]
    sut = pipeline.log.totals_ms()
    notes = list(s["notes"])
    if not s["valid"]:
        failed = [
            k.replace("_", " ")
            for k in ("min_duration_satisfied", "min_queries_satisfied", "early_stopping_satisfied")
            if s[k] is False
        ]
        if failed:
            notes.insert(0, "not satisfied: " + ", ".join(failed))
    return {
        "id": record_id(backend, precision, scenario, mode),
        "backend": backend,
        "precision": precision,
        "scenario": scenario,
        "mode": mode,
        "baseline": backend == EAGER_NAME,
        "samples_per_query": per_record,
        "batch_size": batch,
        "queries": queries,
        "samples": samples,
        "duration_s": round(outcome.wall_s, 3),
        "metric": {"name": metric_name, "value": round(float(value), 4)},
        "latency_ms": latency,
        "throughput_sps": round(float(throughput), 4),  # same rounding as metric.value (Offline reports it)
        "sut_latency_ms": {
            k: round(float(np.percentile(sut, q)), 4) if sut.size else 0.0
            for k, q in (("p50", 50), ("p90", 90), ("p99", 99))
        },
        "stages_ms": pipeline.log.summary(),
        "peak_rss_mb": peak_mb,
        "loadgen": {
            "valid": bool(s["valid"]),
            "result": s["result"] or "INVALID",
            "min_duration_satisfied": s["min_duration_satisfied"],
            "min_queries_satisfied": s["min_queries_satisfied"],
            "early_stopping_satisfied": s["early_stopping_satisfied"],
            "notes": notes,
            "log_dir": os.path.relpath(outcome.log_dir, out_dir),
            "settings": outcome.requested,
        },
        "ratios": {"e2e_over_engine": None, "over_eager": None},
    }
