"""``results.json``: the versioned record of one benchmark run, its validation, and the ratios.

Schema ``fusionedge.bench.results`` version 1 (every field is checked by :func:`validate_results`)::

    schema, schema_version, created (ISO time), wall_seconds
    bundle      {path, model_id, task, precision, onnx_sha256} (task: fusion, classify, detect, ...)
    settings    {scenarios, modes, durations, query counts, samples per query, data, ...}
    fingerprint the machine (see fusionedge.benchmarks.fingerprint), with "unavailable" reasons
    baselines   {"eager": {status: ran|skipped, reason, checkpoint, ...}}
    records     one per configuration (backend x precision x scenario x mode):
        id                 "<backend>/<precision>/<scenario>/<mode>"
        backend, precision, scenario (SingleStream|MultiStream|Offline), mode (engine|e2e), baseline
        samples_per_query, batch_size, queries, samples, duration_s
        metric             {name, value}: p90_latency_ms (SingleStream), p99_latency_ms (MultiStream),
                           samples_per_second (Offline) — LoadGen's figure of merit
        latency_ms         {p50, p90, p99, mean, min, max} per query, from LoadGen's summary
        throughput_sps     samples per second (LoadGen, without its own overhead)
        sut_latency_ms     {p50, p90, p99} per engine call, timed inside the system under test
        stages_ms          {stage: {mean, p50, p90, share}} per call (decode, preprocess, batch, infer,
                           postprocess)
        peak_rss_mb        peak resident memory while the configuration ran (null if unreadable)
        loadgen            {valid, result, min_duration_satisfied, min_queries_satisfied,
                           early_stopping_satisfied, notes, log_dir}
        ratios             {e2e_over_engine, over_eager}: time per query (Offline: per sample) of this
                           configuration over the engine-only one and over the eager baseline's
                           (same scenario and mode); > 1 means slower than the reference; null where
                           there is no reference
        energy             (optional: absent in files written before it was measured)
                           {window_s, interval_s, readings, joules, joules_per_inference, mean_watts,
                           total_of, sources, temperature_c, clocks_mhz, throttled, throttle_reasons,
                           unavailable}: what the machine drew while LoadGen ran the configuration
                           (see fusionedge.benchmarks.energy); joules fields are null when no power
                           source was readable, and ``unavailable`` says why
    accuracy    one per backend x precision: {backend, precision, mode, samples, metrics, bundle_metrics,
                loadgen}
    skipped     [{config, reason}] for configurations that were asked for but could not run

A document is written with :func:`write_results` only after it validates.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from fusionedge.benchmarks.errors import ResultsError

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "SCENARIOS",
    "MODES",
    "PRIMARY_METRIC",
    "record_id",
    "cost_ms",
    "add_ratios",
    "validate_results",
    "write_results",
    "load_results",
]

SCHEMA = "fusionedge.bench.results"
SCHEMA_VERSION = 1
SCENARIOS = ("SingleStream", "MultiStream", "Offline")
MODES = ("engine", "e2e")
#: scenario -> the name of its figure of merit in ``record["metric"]``.
PRIMARY_METRIC = {
    "SingleStream": "p90_latency_ms",
    "MultiStream": "p99_latency_ms",
    "Offline": "samples_per_second",
}
_LATENCY_KEYS = ("p50", "p90", "p99", "mean", "min", "max")
_STAGE_KEYS = ("mean", "p50", "p90", "share")
_STAGES = ("decode", "preprocess", "batch", "infer", "postprocess")


def record_id(backend: str, precision: str, scenario: str, mode: str) -> str:
    """The id of a configuration: ``"<backend>/<precision>/<scenario>/<mode>"``."""
    return f"{backend}/{precision}/{scenario}/{mode}"


def cost_ms(record: Mapping[str, Any]) -> float | None:
    """Time per query of a record in ms (Offline: time per sample); lower is better.

    Returns:
        The cost, or None when the metric is missing or not positive.
    """
    value = record.get("metric", {}).get("value")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return 1000.0 / value if record["scenario"] == "Offline" else float(value)


def add_ratios(records: list[dict[str, Any]], eager_backend: str) -> None:
    """Fill every record's ``ratios`` in place.

    ``e2e_over_engine`` (end-to-end records): cost over the engine-only record of the same backend,
    precision and scenario. ``over_eager`` (all but the eager records): cost over the eager baseline's
    record of the same scenario and mode (the eager baseline runs at the bundle's float precision).

    Args:
        records: result records (each with ``backend``, ``precision``, ``scenario``, ``mode``, ``metric``).
        eager_backend: the baseline's backend name.
    """
    by_key = {(r["backend"], r["precision"], r["scenario"], r["mode"]): r for r in records}
    eager = {(r["scenario"], r["mode"]): r for r in records if r["backend"] == eager_backend}
    for r in records:
        ratios: dict[str, float | None] = {"e2e_over_engine": None, "over_eager": None}
        c = cost_ms(r)
        if r["mode"] == "e2e":
            ref = by_key.get((r["backend"], r["precision"], r["scenario"], "engine"))
            rc = cost_ms(ref) if ref else None
            if c is not None and rc:
                ratios["e2e_over_engine"] = round(c / rc, 4)
        if r["backend"] != eager_backend:
            ref = eager.get((r["scenario"], r["mode"]))
            rc = cost_ms(ref) if ref else None
            if c is not None and rc:
                ratios["over_eager"] = round(c / rc, 4)
        r["ratios"] = ratios


# ---------------------------------------------------------------------------------------- validation


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ResultsError:
        return ResultsError(f"{self.source}: field '{where}': {message}")

    def get(self, obj: Mapping, key: str, where: str, kind: str, *, nullable: bool = False) -> Any:
        path = f"{where}.{key}" if where else key
        if not isinstance(obj, Mapping):
            raise self.fail(where, f"expected an object, got {_type(obj)}")
        if key not in obj:
            raise self.fail(path, "missing")
        value = obj[key]
        if value is None and nullable:
            return None
        ok, what = {
            "str": (isinstance(value, str) and value != "", "a non-empty string"),
            "int": (isinstance(value, int) and not isinstance(value, bool) and value >= 0, "an integer >= 0"),
            "number": (_is_number(value) and value >= 0, "a finite number >= 0"),
            "bool": (isinstance(value, bool), "true or false"),
            "list": (isinstance(value, list), "a list"),
            "dict": (isinstance(value, dict), "an object"),
        }[kind]
        if not ok:
            raise self.fail(path, f"expected {what}, got {_show(value)}")
        return value

    def choice(self, obj: Mapping, key: str, where: str, choices: tuple[str, ...]) -> str:
        value = self.get(obj, key, where, "str")
        if value not in choices:
            raise self.fail(f"{where}.{key}", f"expected one of {', '.join(choices)}, got {value!r}")
        return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _show(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (str, int, float, bool, type(None))) else _type(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_record(c: _Checker, r: Any, where: str) -> None:
    if not isinstance(r, dict):
        raise c.fail(where, f"expected an object, got {_type(r)}")
    backend = c.get(r, "backend", where, "str")
    precision = c.get(r, "precision", where, "str")
    scenario = c.choice(r, "scenario", where, SCENARIOS)
    mode = c.choice(r, "mode", where, MODES)
    rid = c.get(r, "id", where, "str")
    if rid != record_id(backend, precision, scenario, mode):
        raise c.fail(
            f"{where}.id", f"expected {record_id(backend, precision, scenario, mode)!r}, got {rid!r}"
        )
    c.get(r, "baseline", where, "bool")
    for key in ("samples_per_query", "batch_size", "queries", "samples"):
        c.get(r, key, where, "int")
    c.get(r, "duration_s", where, "number")
    metric = c.get(r, "metric", where, "dict")
    name = c.get(metric, "name", f"{where}.metric", "str")
    if name != PRIMARY_METRIC[scenario]:
        raise c.fail(
            f"{where}.metric.name", f"expected {PRIMARY_METRIC[scenario]!r} for {scenario}, got {name!r}"
        )
    c.get(metric, "value", f"{where}.metric", "number")
    lat = c.get(r, "latency_ms", where, "dict")
    for key in _LATENCY_KEYS:
        c.get(lat, key, f"{where}.latency_ms", "number")
    c.get(r, "throughput_sps", where, "number")
    sut = c.get(r, "sut_latency_ms", where, "dict")
    for key in ("p50", "p90", "p99"):
        c.get(sut, key, f"{where}.sut_latency_ms", "number")
    stages = c.get(r, "stages_ms", where, "dict")
    if not stages:
        raise c.fail(f"{where}.stages_ms", "expected at least one stage")
    for stage, values in stages.items():
        if stage not in _STAGES:
            raise c.fail(f"{where}.stages_ms", f"unknown stage {stage!r} (stages: {', '.join(_STAGES)})")
        for key in _STAGE_KEYS:
            c.get(values, key, f"{where}.stages_ms.{stage}", "number")
    if mode == "e2e":
        missing = [s for s in ("decode", "preprocess", "infer", "postprocess") if s not in stages]
        if missing:
            raise c.fail(f"{where}.stages_ms", f"an e2e record must time {', '.join(missing)}")
    c.get(r, "peak_rss_mb", where, "number", nullable=True)
    lg = c.get(r, "loadgen", where, "dict")
    valid = c.get(lg, "valid", f"{where}.loadgen", "bool")
    result = c.choice(lg, "result", f"{where}.loadgen", ("VALID", "INVALID"))
    if valid != (result == "VALID"):
        raise c.fail(f"{where}.loadgen.valid", f"is {valid} but result is {result}")
    for key in ("min_duration_satisfied", "min_queries_satisfied", "early_stopping_satisfied"):
        c.get(lg, key, f"{where}.loadgen", "bool", nullable=True)
    notes = c.get(lg, "notes", f"{where}.loadgen", "list")
    if not all(isinstance(n, str) for n in notes):
        raise c.fail(f"{where}.loadgen.notes", "expected a list of strings")
    c.get(lg, "log_dir", f"{where}.loadgen", "str")
    ratios = c.get(r, "ratios", where, "dict")
    for key in ("e2e_over_engine", "over_eager"):
        c.get(ratios, key, f"{where}.ratios", "number", nullable=True)
    if "energy" in r:
        _check_energy(c, r["energy"], f"{where}.energy")


def _check_energy(c: _Checker, e: Any, where: str) -> None:
    if not isinstance(e, dict):
        raise c.fail(where, f"expected an object, got {_type(e)}")
    for key in ("window_s", "interval_s"):
        c.get(e, key, where, "number")
    c.get(e, "readings", where, "int")
    for key in ("joules", "joules_per_inference", "mean_watts"):
        c.get(e, key, where, "number", nullable=True)
    for key in ("sources", "temperature_c", "clocks_mhz"):
        c.get(e, key, where, "dict")
    c.get(e, "throttled", where, "bool")
    for key in ("total_of", "throttle_reasons"):
        if not all(isinstance(x, str) for x in c.get(e, key, where, "list")):
            raise c.fail(f"{where}.{key}", "expected a list of strings")
    unavailable = c.get(e, "unavailable", where, "dict")
    if not all(isinstance(v, str) for v in unavailable.values()):
        raise c.fail(f"{where}.unavailable", "expected reasons as strings")
    if bool(e["throttle_reasons"]) != e["throttled"]:
        raise c.fail(f"{where}.throttled", f"is {e['throttled']} but throttle_reasons is {e['throttle_reasons']}")


def validate_results(doc: Any, source: str = "results.json") -> None:
    """Check a results document against schema version 1, field by field.

    Args:
        doc: the parsed JSON document.
        source: how messages name the document (a file name).

    Raises:
        ResultsError: naming the first field that is missing or wrong, e.g.
            ``results.json: field 'records[2].latency_ms.p90': expected a finite number >= 0, got "x"``;
            or an unknown schema / schema version; or duplicate record ids.
    """
    c = _Checker(source)
    if not isinstance(doc, dict):
        raise ResultsError(f"{source}: expected a JSON object at the top, got {_type(doc)}")
    if doc.get("schema") != SCHEMA:
        raise c.fail(
            "schema", f"expected {SCHEMA!r}, got {_show(doc.get('schema'))}: not a benchmark results file"
        )
    version = c.get(doc, "schema_version", "", "int")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{source}: schema_version {version} is not supported (this version reads "
            f"{SCHEMA_VERSION}); upgrade fusionedge"
        )
    created = c.get(doc, "created", "", "str")
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError as e:
        raise c.fail("created", f"expected an ISO-8601 time, got {created!r}") from e
    c.get(doc, "wall_seconds", "", "number")
    bundle = c.get(doc, "bundle", "", "dict")
    for key in ("path", "model_id", "precision"):
        c.get(bundle, key, "bundle", "str")
    c.get(doc, "settings", "", "dict")
    fp = c.get(doc, "fingerprint", "", "dict")
    for key in ("cpu", "memory", "gpu", "software"):
        c.get(fp, key, "fingerprint", "dict")
    unavailable = c.get(fp, "unavailable", "fingerprint", "dict")
    if not all(isinstance(v, str) for v in unavailable.values()):
        raise c.fail("fingerprint.unavailable", "expected reasons as strings")
    baselines = c.get(doc, "baselines", "", "dict")
    for name, b in baselines.items():
        c.choice(b, "status", f"baselines.{name}", ("ran", "skipped"))
        if b["status"] == "skipped":
            c.get(b, "reason", f"baselines.{name}", "str")
    records = c.get(doc, "records", "", "list")
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        _check_record(c, r, f"records[{i}]")
        if r["id"] in seen:
            raise c.fail(f"records[{i}].id", f"duplicate id {r['id']!r} (first at records[{seen[r['id']]}])")
        seen[r["id"]] = i
    for i, a in enumerate(c.get(doc, "accuracy", "", "list")):
        where = f"accuracy[{i}]"
        c.get(a, "backend", where, "str")
        c.get(a, "precision", where, "str")
        c.get(a, "samples", where, "int")
        metrics = c.get(a, "metrics", where, "dict")
        for k, v in metrics.items():
            if v is not None and not _is_number(v):
                raise c.fail(f"{where}.metrics.{k}", f"expected a number or null, got {_show(v)}")
    for i, s in enumerate(c.get(doc, "skipped", "", "list")):
        c.get(s, "config", f"skipped[{i}]", "str")
        c.get(s, "reason", f"skipped[{i}]", "str")


# ------------------------------------------------------------------------------------------- files


def write_results(doc: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Validate ``doc`` and write it as JSON atomically.

    Args:
        doc: the results document.
        path: the file to write.

    Returns:
        The path written.

    Raises:
        ResultsError: the document does not validate (nothing is written).
    """
    from fusionedge.sdk.bundle import json_safe, write_json_atomic  # numpy: only when writing

    path = Path(path)
    safe = _finite(json_safe(dict(doc)))
    validate_results(safe, path.name)
    write_json_atomic(path, safe)
    return path


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a ``results.json``.

    Args:
        path: the file.

    Returns:
        The document.

    Raises:
        ResultsError: missing or unreadable file, invalid JSON, or a schema violation (named).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ResultsError(f"{path}: no such results file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot be read: {e}") from e
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    validate_results(doc, str(path))
    return doc


def _finite(v: Any) -> Any:
    """NaN/Inf become null: strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v
