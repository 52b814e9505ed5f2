"""MLPerf LoadGen, driven from Python: one system under test (SUT) per configuration, and its logs parsed.

:func:`run_loadgen` runs one scenario of LoadGen (``mlperf_loadgen``, from ``mlcommons-loadgen``) on a
*runner* — a callable that processes a batch of sample indices — and returns LoadGen's verdict parsed
from ``mlperf_log_summary.txt`` ("Result is : VALID", the percentiles) and ``mlperf_log_detail.txt``
(the ``result_*`` keys). LoadGen decides when a run is long enough: it stops once both
``min_duration_ms`` and ``min_query_count`` are met, and its early-stopping rule wants at least 64
queries for a SingleStream p90 and 662 for a MultiStream p99 (:data:`EARLY_STOPPING_MIN_QUERIES`).

LoadGen pre-generates its query schedule from the expected latency (SingleStream, MultiStream) or
the expected throughput (Offline); if the system is faster than expected, the schedule runs out
before ``min_duration_ms`` and the run is INVALID. :func:`run_loadgen` therefore takes the fastest
call seen in warm-up and tells LoadGen to expect half of it (SingleStream, MultiStream: LoadGen then
schedules more queries than it needs and stops once its minimums are met), or 1.25x its throughput
(Offline, whose one query is sized ``1.1 x expected qps x min duration``).

``mlperf_loadgen`` is imported when a test runs, not when this module is imported.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from fusionedge.sdk.errors import BackendError, FusionEdgeError

__all__ = [
    "EARLY_STOPPING_MIN_QUERIES",
    "LoadGenSettings",
    "LoadGenOutcome",
    "import_loadgen",
    "run_loadgen",
    "parse_summary",
    "parse_detail",
]

#: The fewest queries LoadGen's early-stopping rule accepts, per scenario (Offline runs one query).
EARLY_STOPPING_MIN_QUERIES = {"SingleStream": 64, "MultiStream": 662, "Offline": 1}


def import_loadgen() -> Any:
    """Import ``mlperf_loadgen``.

    Raises:
        FusionEdgeError: it is not installed (the message says how to install it).
    """
    try:
        import mlperf_loadgen
    except ImportError as e:
        raise FusionEdgeError(
            "MLPerf LoadGen is not installed: pip install 'fusionedge[bench]' (or mlcommons-loadgen)"
        ) from e
    return mlperf_loadgen


@dataclass(frozen=True)
class LoadGenSettings:
    """What one LoadGen test is asked to do. Times in the units their names say."""

    scenario: str  # SingleStream | MultiStream | Offline
    min_duration_ms: int
    min_query_count: int
    expected_latency_ms: float  # per query (per batch for Offline), measured in warm-up
    batch: int  # samples per runner call (Offline: per chunk of its one query)
    samples_per_query: int = 8  # MultiStream
    max_duration_ms: int = 0  # 0: no cap
    accuracy: bool = False  # AccuracyOnly: every sample once, no timing verdict
    total_samples: int = 1  # in the query sample library
    performance_samples: int = 1  # held in memory at once

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LoadGenOutcome:
    """LoadGen's verdict on one test, parsed from its logs."""

    summary: dict[str, Any]  # parse_summary of mlperf_log_summary.txt
    detail: dict[str, Any]  # parse_detail of mlperf_log_detail.txt (result_* and effective_* keys)
    log_dir: Path
    wall_s: float  # how long LoadGen ran
    requested: dict[str, Any] = field(default_factory=dict)  # the TestSettings that were set


def run_loadgen(
    runner: Callable[[Sequence[int]], Any],
    settings: LoadGenSettings,
    log_dir: Path,
    *,
    load: Callable[[Sequence[int]], None] | None = None,
) -> LoadGenOutcome:
    """Run one LoadGen test on ``runner`` and parse its verdict.

    Args:
        runner: processes one batch of sample indices (its return value is ignored).
        settings: the scenario and its limits.
        log_dir: where LoadGen writes its logs (created).
        load: called with the sample indices LoadGen wants in memory before timing starts.

    Returns:
        The parsed outcome.

    Raises:
        FusionEdgeError: LoadGen is missing, or did not write its summary.
        BackendError (or the runner's own FusionEdgeError): the runner failed during the test; the
            first failure is re-raised after LoadGen has been let finish.
    """
    lg = import_loadgen()
    log_dir.mkdir(parents=True, exist_ok=True)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def issue(query_samples: list[Any]) -> None:
        for i in range(0, len(query_samples), settings.batch):
            chunk = query_samples[i : i + settings.batch]
            if not errors:
                try:
                    runner([q.index for q in chunk])
                except BaseException as e:  # keep LoadGen's thread alive; re-raised below
                    with lock:
                        errors.append(e)
            lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in chunk])

    def flush() -> None:
        pass

    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, settings.scenario)
    ts.mode = lg.TestMode.AccuracyOnly if settings.accuracy else lg.TestMode.PerformanceOnly
    ts.min_duration_ms = int(settings.min_duration_ms)
    ts.max_duration_ms = int(settings.max_duration_ms)
    ts.min_query_count = int(settings.min_query_count)
    ts.performance_sample_count_override = int(settings.performance_samples)
    # Ask for less latency than measured (more throughput for Offline), so LoadGen's pre-generated
    # schedule cannot run out before min_duration; it stops by itself once both minimums are met.
    expected_ns = max(1000, int(settings.expected_latency_ms * 1e6 * 0.5))
    requested: dict[str, Any] = {
        "min_duration_ms": ts.min_duration_ms,
        "min_query_count": ts.min_query_count,
        "max_duration_ms": ts.max_duration_ms,
        "performance_sample_count": settings.performance_samples,
    }
    if settings.scenario == "SingleStream":
        ts.single_stream_expected_latency_ns = expected_ns
        requested["single_stream_expected_latency_ns"] = expected_ns
    elif settings.scenario == "MultiStream":
        ts.multi_stream_samples_per_query = int(settings.samples_per_query)
        ts.multi_stream_expected_latency_ns = expected_ns
        requested.update(
            multi_stream_samples_per_query=settings.samples_per_query,
            multi_stream_expected_latency_ns=expected_ns,
        )
    else:
        per_sample_s = max(settings.expected_latency_ms, 1e-3) / 1e3 / max(settings.batch, 1)
        ts.offline_expected_qps = 1.25 / per_sample_s
        requested["offline_expected_qps"] = round(ts.offline_expected_qps, 3)
    log = lg.LogSettings()
    log.log_output.outdir = str(log_dir)
    log.log_output.copy_summary_to_stdout = False
    log.log_output.copy_detail_to_stdout = False
    log.enable_trace = False  # the trace is large and not needed

    sut = lg.ConstructSUT(issue, flush)
    qsl = lg.ConstructQSL(
        int(settings.total_samples),
        int(settings.performance_samples),
        load or (lambda indices: None),
        lambda indices: None,
    )
    t0 = time.perf_counter()
    try:
        lg.StartTestWithLogSettings(sut, qsl, ts, log)
    finally:
        wall = time.perf_counter() - t0
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    if errors:
        e = errors[0]
        if isinstance(e, FusionEdgeError):
            raise e
        raise BackendError(
            f"the system under test failed during LoadGen's {settings.scenario} test: {type(e).__name__}: {e}"
        ) from e
    summary_path = log_dir / "mlperf_log_summary.txt"
    if not summary_path.is_file():
        raise FusionEdgeError(f"LoadGen wrote no {summary_path}; see {log_dir / 'mlperf_log_detail.txt'}")
    summary = parse_summary(summary_path.read_text(encoding="utf-8", errors="replace"))
    detail_path = log_dir / "mlperf_log_detail.txt"
    detail = (
        parse_detail(detail_path.read_text(encoding="utf-8", errors="replace"))
        if detail_path.is_file()
        else {}
    )
    return LoadGenOutcome(summary, detail, log_dir, wall, requested)


# ------------------------------------------------------------------------------------------ parsing

_YES_NO = {"yes": True, "no": False}


def parse_summary(text: str) -> dict[str, Any]:
    """Parse ``mlperf_log_summary.txt``.

    Args:
        text: the file's contents.

    Returns:
        ``{"scenario", "mode", "result" ("VALID"|"INVALID"|None), "valid" (bool),
        "min_duration_satisfied", "min_queries_satisfied", "early_stopping_satisfied" (bool or None),
        "percentiles_ns" {50.0: ns, 90.0: ..., 99.0: ...}, "min_ns", "max_ns", "mean_ns",
        "samples_per_second", "qps_with_overhead", "qps_without_overhead", "notes" [str]}``; a field
        the summary does not have is None (accuracy runs have no "Result is" line).
    """
    out: dict[str, Any] = {
        "scenario": None,
        "mode": None,
        "result": None,
        "valid": False,
        "min_duration_satisfied": None,
        "min_queries_satisfied": None,
        "early_stopping_satisfied": None,
        "percentiles_ns": {},
        "min_ns": None,
        "max_ns": None,
        "mean_ns": None,
        "samples_per_second": None,
        "qps_with_overhead": None,
        "qps_without_overhead": None,
        "notes": [],
    }
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("="):
            continue
        if line in ("Recommendations:", "Early Stopping Result:"):
            section = line
            continue
        if line.startswith("*") and section:
            out["notes"].append(line.lstrip("* ").strip())
            continue
        m = re.match(r"^(.+?)\s*:\s*(.*)$", line)
        if not m:
            continue
        key, value = m.group(1).strip(), m.group(2).strip()
        low = key.lower()
        if low == "scenario":
            out["scenario"] = value
        elif low == "mode":
            out["mode"] = value
        elif low == "result is":
            out["result"] = value.upper()
            out["valid"] = value.upper() == "VALID"
        elif low in ("min duration satisfied", "min queries satisfied", "early stopping satisfied"):
            out[low.replace(" ", "_")] = _YES_NO.get(value.lower())
        elif pm := re.match(r"^([\d.]+)(?:th)? percentile latency \(ns\)$", key):
            out["percentiles_ns"].setdefault(float(pm.group(1)), _num(value))
        elif low in ("min latency (ns)", "max latency (ns)", "mean latency (ns)"):
            out[low.split()[0] + "_ns"] = _num(value)
        elif low == "samples per second":
            out["samples_per_second"] = _num(value)
        elif low == "qps w/ loadgen overhead":
            out["qps_with_overhead"] = _num(value)
        elif low == "qps w/o loadgen overhead":
            out["qps_without_overhead"] = _num(value)
    return out


def parse_detail(text: str) -> dict[str, Any]:
    """Parse the ``:::MLLOG {json}`` lines of ``mlperf_log_detail.txt`` into ``{key: value}``.

    Keys that repeat keep their last value; errors and warnings are collected under ``"errors"`` and
    ``"warnings"`` (lists of messages).
    """
    out: dict[str, Any] = {"errors": [], "warnings": []}
    for line in text.splitlines():
        if not line.startswith(":::MLLOG"):
            continue
        try:
            entry = json.loads(line[len(":::MLLOG") :].strip())
        except json.JSONDecodeError:
            continue
        key, value = entry.get("key"), entry.get("value")
        meta = entry.get("metadata") or {}
        if meta.get("is_error"):
            out["errors"].append(str(value))
        elif meta.get("is_warning"):
            out["warnings"].append(str(value))
        if isinstance(key, str):
            out[key] = value
    return out


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None
