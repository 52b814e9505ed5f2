"""``fusionedge bench``: every configuration of a bundle through MLPerf LoadGen, with baselines.

Use it in this order::

    cfg = BenchConfig(bundle="bundle/", out="bench/", data="data/test")   # what to run
    plan = plan_benchmark(cfg)        # checks everything cheap first: typed errors, nothing run yet
    outcome = run_benchmark(cfg)      # runs it: results.json, report.md, plots/*.png, loadgen/*/

A *configuration* is backend x precision x scenario x mode:

- backends: the SDK backends asked for (default: every one available here), plus the PyTorch eager
  baseline (``torch-eager``) when torch is installed and the bundle's checkpoint is found
  (:mod:`fusionedge.benchmarks.eager`);
- precisions: those the bundle holds (today its one ``precision``; asking for another is refused);
- scenarios: LoadGen's SingleStream (one sample per query, p90 latency), MultiStream
  (``samples_per_query`` samples per query, p99 latency) and Offline (samples per second);
- modes: ``engine`` (the raw engine call on preprocessed tensors) and ``e2e`` (decode + preprocess +
  infer + postprocess from the media files), see :mod:`fusionedge.benchmarks.stages`.

A bundle of an imported model (``fusionedge import``: a classifier, detector or audio classifier) runs
the same way through its declared input and decoders (:func:`bundle_model`); its accuracy is the
metrics its task has, as ``fusionedge eval`` computes them, and it has no eager baseline (no PyTorch
source travels with it).

Each configuration is warmed up (``warmup_queries`` calls, which also calibrate LoadGen's expected
latency), then run by LoadGen for at least ``duration_s`` and at least the early-stopping minimum of
queries (64 SingleStream, 662 MultiStream; ``min_queries`` lowers it for quick checks, at the price of
an INVALID verdict). With ``accuracy=True`` every backend x precision also runs LoadGen's AccuracyOnly
mode over the labelled ``data`` manifest end to end and computes the bundle's metrics (event accuracy
and macro-F1, audio-tag mAP, detection VOC mAP@0.5 and, with the ``metrics`` extra, COCO AP50 and
AP50:95, as ``fusionedge eval``). While LoadGen runs a configuration, :mod:`fusionedge.benchmarks.energy`
samples power, temperatures and clocks every ``energy_interval_s``: each record carries the energy per
inference and whether the run throttled.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.benchmarks.accuracy import run_accuracy
from fusionedge.benchmarks.eager import EAGER_NAME, EagerStatus, load_eager_baseline
from fusionedge.benchmarks.energy import EnergySampler
from fusionedge.benchmarks.errors import BenchConfigError
from fusionedge.benchmarks.fingerprint import collect_fingerprint
from fusionedge.benchmarks.loadgen import (
    EARLY_STOPPING_MIN_QUERIES,
    LoadGenSettings,
    import_loadgen,
    run_loadgen,
)
from fusionedge.benchmarks.memory import PeakRss
from fusionedge.benchmarks.record import loadgen_record
from fusionedge.benchmarks.results import (
    MODES,
    SCENARIOS,
    SCHEMA,
    SCHEMA_VERSION,
    add_ratios,
    record_id,
    write_results,
)
from fusionedge.benchmarks.stages import (
    E2EPipeline,
    EnginePipeline,
    TensorCache,
    load_clips,
    synthesize_clips,
)
from fusionedge.sdk.backends import ModelIO, available_backends, backend_class, get_backend
from fusionedge.sdk.bundle import Bundle, load_bundle, sha256_file
from fusionedge.sdk.datamanifest import Sample
from fusionedge.sdk.errors import BackendError
from fusionedge.sdk.generic import GenericModel
from fusionedge.sdk.spec import check_fusion_contract

__all__ = ["BenchConfig", "BenchOutcome", "BenchPlan", "plan_benchmark", "run_benchmark"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BenchConfig:
    """What ``fusionedge bench`` runs. Durations in seconds."""

    bundle: Path
    out: Path
    backends: tuple[str, ...] | None = None  # None: every registered backend available here
    precisions: tuple[str, ...] | None = None  # None: the bundle's own
    scenarios: tuple[str, ...] = SCENARIOS
    modes: tuple[str, ...] = MODES
    duration_s: float = 10.0  # LoadGen min_duration per configuration (MLPerf's own is 600 s)
    max_duration_s: float = 0.0  # LoadGen max_duration per configuration; 0: no cap
    min_queries: int | None = None  # None: LoadGen's early-stopping minimum (64 / 662)
    samples_per_query: int = 8  # MultiStream
    offline_batch: int = 8  # samples per engine call in Offline
    warmup_queries: int = 10  # per configuration, before LoadGen starts
    data: Path | None = None  # a data-set manifest; None: synthetic clips
    accuracy: bool = False  # also run AccuracyOnly over `data` (needs labels)
    accuracy_limit: int | None = None  # only the first N labelled samples
    eager: bool = True  # the PyTorch eager baseline, when it can be built
    checkpoint: Path | None = None  # the bundle's source checkpoint (for the eager baseline)
    threads: int | None = None  # intra-op threads for onnxruntime and torch; None: their defaults
    performance_samples: int = 64  # samples LoadGen keeps in memory
    synthetic_clips: int = 8  # clips written when no `data` is given
    energy_interval_s: float = 0.1  # power / temperature / clock sampling period during each configuration
    plots: bool = True
    progress: bool = True


@dataclass
class BenchPlan:
    """A checked configuration: the loaded bundle and the configurations that will run."""

    config: BenchConfig
    bundle: Bundle
    backends: list[str]
    precisions: list[str]
    configurations: list[tuple[str, str, str, str]]  # backend, precision, scenario, mode (SDK backends)
    samples: list[Sample] | None  # from `data`, None when synthetic clips will be written
    model: GenericModel | None = None  # an imported model's declared interface; None: the fused model


@dataclass
class BenchOutcome:
    """What a run produced."""

    results: dict[str, Any]
    results_path: Path
    report_path: Path | None
    plots: list[Path] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- plan


def _split(values: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = values.split(",")
    return tuple(v.strip() for v in values if v and v.strip())


def scenario_batch(cfg: BenchConfig, scenario: str) -> int:
    """Samples per engine call in ``scenario``."""
    return {"SingleStream": 1, "MultiStream": cfg.samples_per_query, "Offline": cfg.offline_batch}[scenario]


def _check_numbers(cfg: BenchConfig) -> None:
    checks = [
        ("--duration", cfg.duration_s, cfg.duration_s > 0, "> 0 seconds"),
        (
            "--max-duration",
            cfg.max_duration_s,
            cfg.max_duration_s == 0 or cfg.max_duration_s >= cfg.duration_s,
            "0 (no cap) or >= --duration",
        ),
        ("--min-queries", cfg.min_queries, cfg.min_queries is None or cfg.min_queries >= 1, ">= 1"),
        ("--samples-per-query", cfg.samples_per_query, cfg.samples_per_query >= 1, ">= 1"),
        ("--offline-batch", cfg.offline_batch, cfg.offline_batch >= 1, ">= 1"),
        ("--warmup", cfg.warmup_queries, cfg.warmup_queries >= 1, ">= 1"),
        ("--threads", cfg.threads, cfg.threads is None or cfg.threads >= 1, ">= 1"),
        ("--performance-samples", cfg.performance_samples, cfg.performance_samples >= 1, ">= 1"),
        ("--synthetic-clips", cfg.synthetic_clips, cfg.synthetic_clips >= 1, ">= 1"),
        ("--energy-interval", cfg.energy_interval_s, 0 < cfg.energy_interval_s <= 60, "in (0, 60] seconds"),
        (
            "--accuracy-limit",
            cfg.accuracy_limit,
            cfg.accuracy_limit is None or cfg.accuracy_limit >= 1,
            ">= 1",
        ),
    ]
    for option, value, ok, want in checks:
        if not ok:
            raise BenchConfigError(f"{option} must be {want}, got {value!r}")


def plan_benchmark(cfg: BenchConfig) -> BenchPlan:
    """Check a configuration without running anything heavy.

    Args:
        cfg: the benchmark configuration.

    Returns:
        The plan: the verified bundle and every SDK-backend configuration that will run.

    Raises:
        BundleError: the bundle is missing, invalid or altered, or lacks the model contract's outputs.
        BackendError: an unknown backend (the known ones are listed) or one that cannot run here (why).
        BenchConfigError: an unknown scenario or mode, a precision the bundle does not hold, a scenario
            whose batch the bundle cannot take, accuracy without data, or a bad number.
        DataError: the ``data`` manifest is missing or invalid.
        FusionEdgeError: MLPerf LoadGen is not installed.
    """
    _check_numbers(cfg)
    scenarios = _split(cfg.scenarios) or ()
    if not scenarios:
        raise BenchConfigError(f"--scenarios is empty; choose from {', '.join(SCENARIOS)}")
    for s in scenarios:
        if s not in SCENARIOS:
            raise BenchConfigError(
                f"unknown scenario {s!r}; fusionedge bench runs {', '.join(SCENARIOS)} "
                f"(LoadGen's Server scenario is not supported)"
            )
    modes = _split(cfg.modes) or ()
    if not modes:
        raise BenchConfigError(f"--modes is empty; choose from {', '.join(MODES)}")
    for m in modes:
        if m not in MODES:
            raise BenchConfigError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    if cfg.accuracy and cfg.data is None:
        raise BenchConfigError("accuracy mode needs a labelled data-set manifest: pass --data")
    bundle = load_bundle(cfg.bundle, verify=True)
    model = bundle_model(bundle)

    have = [bundle.precision]
    precisions = list(_split(cfg.precisions) or have)
    for p in precisions:
        if p not in have:
            raise BenchConfigError(
                f"bundle {bundle.model_id} holds precision {', '.join(have)} only, not {p!r}; make a {p} "
                f"bundle first (quantize the model and export it), then benchmark that bundle"
            )

    backends = list(_split(cfg.backends) or available_backends())
    if not backends:
        raise BackendError("no inference backend is available on this machine; install onnxruntime")
    for name in backends:
        if name == EAGER_NAME:
            raise BenchConfigError(f"{EAGER_NAME} is the baseline, not a backend: it runs unless --no-eager")
        reason = backend_class(name).unavailable_reason()  # BackendError for an unknown name
        if reason is not None:
            raise BackendError(f"backend {name!r} cannot run on this machine: {reason}")

    io = ModelIO.from_manifest(bundle.manifest)
    for s in scenarios:
        n = scenario_batch(cfg, s)
        if not io.batch_min <= n <= io.batch_max:
            option = "--samples-per-query" if s == "MultiStream" else "--offline-batch"
            raise BenchConfigError(
                f"backend {backends[0]!r} cannot run {s} on {bundle.model_id}: the scenario needs batches of "
                f"{n} and the bundle accepts batches of {io.batch_min} to {io.batch_max}; change {option} "
                f"or leave {s} out of --scenarios"
            )

    import_loadgen()
    samples = None
    if cfg.data is not None:
        samples = load_clips(cfg.data, bundle.labels, require_labels=cfg.accuracy, model=model)
    configurations = [(b, p, s, m) for b in backends for p in precisions for s in scenarios for m in modes]
    return BenchPlan(
        replace(cfg, scenarios=scenarios, modes=modes),
        bundle,
        backends,
        precisions,
        configurations,
        samples,
        model,
    )


def bundle_model(bundle: Bundle) -> GenericModel | None:
    """What the benchmark drives: an imported model's declared interface, or None for the fused model.

    Raises:
        BundleError: the manifest does not describe a model the runtime serves (the field is named):
            the fused model's inputs and five heads, or an imported model's one input and its decoders.
    """
    if bundle.task == "fusion":
        check_fusion_contract(bundle)
        return None
    return GenericModel.from_bundle(bundle)


# --------------------------------------------------------------------------------------------- run


def _load_engine(name: str, bundle: Bundle, threads: int | None) -> Any:
    options: dict[str, Any] = {}
    if threads is not None and name == "onnxruntime":
        options["intra_op_threads"] = threads
    backend = get_backend(name, **options)
    return backend.load(bundle.model_path, ModelIO.from_manifest(bundle.manifest))


def _warmup(runner: Any, n_calls: int, batch: int, pool: int, seed: int = 0) -> float:
    """Run ``n_calls`` batches; return the fastest call time in ms.

    The fastest, not the median: LoadGen is then told to expect at most this (it schedules more
    queries than needed and stops once its minimums are met), never more, which would let its
    schedule run out before the minimum duration.
    """
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(n_calls):
        idx = [int(i) for i in rng.integers(0, pool, batch)]
        t0 = time.perf_counter()
        runner(idx)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.min(times))


def _min_queries(cfg: BenchConfig, scenario: str) -> int:
    """LoadGen's min_query_count: the early-stopping minimum unless lowered (Offline runs one query)."""
    if cfg.min_queries is None or scenario == "Offline":
        return EARLY_STOPPING_MIN_QUERIES[scenario]
    return cfg.min_queries


def _run_configuration(
    engine: Any,
    config: tuple[str, str, str, str],
    cfg: BenchConfig,
    bundle: Bundle,
    samples: list[Sample],
    cache: TensorCache,
    rss: PeakRss,
    out: Path,
    model: GenericModel | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Warm up one configuration, run it under LoadGen; return its record and per-call times (ms)."""
    _, _, scenario, mode = config
    rid = record_id(*config)
    pipeline: EnginePipeline | E2EPipeline
    if mode == "engine":
        pipeline = EnginePipeline(engine, cache)
    else:
        pipeline = E2EPipeline(engine, samples, bundle.geometry, bundle.labels, model=model)
    batch = scenario_batch(cfg, scenario)
    pool = min(len(samples), cfg.performance_samples)
    if mode == "engine":
        cache.load(range(pool))  # what LoadGen will ask to hold in memory; not timed
    rss.reset()
    expected_ms = _warmup(pipeline, cfg.warmup_queries, batch, pool)
    pipeline.log.clear()
    settings = LoadGenSettings(
        scenario,
        min_duration_ms=int(cfg.duration_s * 1000),
        max_duration_ms=int(cfg.max_duration_s * 1000),
        min_query_count=_min_queries(cfg, scenario),
        expected_latency_ms=expected_ms,
        batch=batch,
        samples_per_query=cfg.samples_per_query,
        total_samples=len(samples),
        performance_samples=pool,
    )
    try:
        with EnergySampler(interval_s=cfg.energy_interval_s) as sampler:
            outcome = run_loadgen(
                pipeline,
                settings,
                out / "loadgen" / rid.replace("/", "_"),
                load=cache.load if mode == "engine" else None,
            )
    except BackendError as e:
        raise BackendError(f"{rid}: {e}") from e
    record = loadgen_record(
        config, scenario_batch(cfg, scenario), cfg.samples_per_query, outcome, pipeline, rss.peak_mb(), out
    )
    record["energy"] = sampler.summary(inferences=record["samples"])
    return record, pipeline.log.totals_ms()


def run_benchmark(cfg: BenchConfig, plan: BenchPlan | None = None) -> BenchOutcome:
    """Run every configuration and write ``results.json``, ``report.md`` and plots into ``cfg.out``.

    Args:
        cfg: the benchmark configuration.
        plan: a plan from :func:`plan_benchmark` (made here when None).

    Returns:
        The results document and the paths written.

    Raises:
        everything :func:`plan_benchmark` raises, before any configuration runs;
        BackendError: a backend failed to load or run (the configuration is named);
        MediaError: a clip cannot be decoded.
    """
    t_start = time.perf_counter()
    plan = plan or plan_benchmark(cfg)
    cfg = plan.config
    bundle = plan.bundle
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lg_dir = out / "loadgen"
    if lg_dir.exists():
        shutil.rmtree(lg_dir)  # logs of an earlier run here would be mistaken for this one's
    fingerprint = collect_fingerprint()
    rss = PeakRss()
    loadgen_version = fingerprint.get("software", {}).get("mlcommons_loadgen")

    tmp = None
    if plan.samples is not None:
        samples, data_desc = plan.samples, str(cfg.data)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="fusionedge-bench-"))
        samples = synthesize_clips(tmp / "media", bundle.geometry, count=cfg.synthetic_clips)
        data_desc = f"synthetic: {cfg.synthetic_clips} clips, 320x192 at 12 fps, 16 kHz mono"
    cache = TensorCache(samples, bundle.geometry, plan.model)
    pool = min(len(samples), cfg.performance_samples)

    engines: dict[tuple[str, str], Any] = {}
    eager_status = EagerStatus(False, "disabled (--no-eager)")
    records: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    latencies: dict[str, np.ndarray] = {}
    try:
        for b in plan.backends:
            for p in plan.precisions:
                engines[(b, p)] = _load_engine(b, bundle, cfg.threads)
        configurations = list(plan.configurations)
        if cfg.eager:
            eager, eager_status = load_eager_baseline(bundle, cfg.checkpoint, threads=cfg.threads)
            if eager is not None:
                engines[(EAGER_NAME, bundle.precision)] = eager
                configurations += [
                    (EAGER_NAME, bundle.precision, s, m) for s in cfg.scenarios for m in cfg.modes
                ]
            else:
                log.warning("eager baseline skipped: %s", eager_status.reason)
                skipped += [
                    {"config": record_id(EAGER_NAME, bundle.precision, s, m), "reason": eager_status.reason}
                    for s in cfg.scenarios
                    for m in cfg.modes
                ]

        bar = _bar(cfg.progress, len(configurations))
        for backend, precision, scenario, mode in configurations:
            rid = record_id(backend, precision, scenario, mode)
            if bar is not None:
                bar.set_postfix_str(rid)
            record, calls = _run_configuration(
                engines[(backend, precision)],
                (backend, precision, scenario, mode),
                cfg,
                bundle,
                samples,
                cache,
                rss,
                out,
                plan.model,
            )
            records.append(record)
            latencies[rid] = calls
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

        if cfg.accuracy:
            labelled = samples[: cfg.accuracy_limit] if cfg.accuracy_limit else samples
            for (b, p), engine in engines.items():
                if b != EAGER_NAME:
                    accuracy.append(run_accuracy(engine, b, p, bundle, labelled, out,
                                                 offline_batch=cfg.offline_batch,
                                                 performance_samples=cfg.performance_samples,
                                                 model=plan.model))
    finally:
        for engine in engines.values():
            engine.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    add_ratios(records, EAGER_NAME)
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_seconds": round(time.perf_counter() - t_start, 2),
        "bundle": {
            "path": str(bundle.path),
            "model_id": bundle.model_id,
            "task": bundle.task,
            "precision": bundle.precision,
            "onnx_sha256": sha256_file(bundle.model_path),
        },
        "settings": {
            "scenarios": list(cfg.scenarios),
            "modes": list(cfg.modes),
            "backends": plan.backends,
            "precisions": plan.precisions,
            "duration_s": cfg.duration_s,
            "max_duration_s": cfg.max_duration_s,
            "min_queries": {s: _min_queries(cfg, s) for s in cfg.scenarios},
            "samples_per_query": cfg.samples_per_query,
            "offline_batch": cfg.offline_batch,
            "warmup_queries": cfg.warmup_queries,
            "performance_samples": pool,
            "data": data_desc,
            "clips": len(samples),
            "threads": cfg.threads,
            "energy_interval_s": cfg.energy_interval_s,
            "peak_rss_method": rss.method,
            "loadgen_version": loadgen_version,
            "python": sys.version.split()[0],
            "loadavg_end": _loadavg(),
        },
        "fingerprint": fingerprint,
        "baselines": {"eager": eager_status.to_dict()},
        "records": records,
        "accuracy": accuracy,
        "skipped": skipped,
    }
    results_path = write_results(doc, out / "results.json")
    np.savez(out / "latencies.npz", **{k.replace("/", "__"): v for k, v in latencies.items()})
    from fusionedge.benchmarks.report import write_report

    report_path, plots = write_report(doc, out, latencies=latencies, plots=cfg.plots)
    return BenchOutcome(doc, results_path, report_path, plots)


def _loadavg() -> list[float] | None:
    """The 1/5/15-minute load average (other work on the machine skews every figure)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _bar(progress: bool, total: int) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="bench", unit="config", file=sys.stderr, leave=False)
