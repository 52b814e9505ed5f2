"""The ``bench`` verb of the ``fusionedge`` command line.

::

    fusionedge bench --bundle B --out DIR [--backends onnxruntime] [--precisions fp32]
                     [--scenarios SingleStream,MultiStream,Offline] [--modes engine,e2e]
                     [--duration S] [--data DIR [--accuracy]] [--json]
    fusionedge bench compare A.json B.json [--threshold 0.1] [--json]

The harness is :mod:`fusionedge.benchmarks`; this module parses the verb and prints the results.
Exit statuses: 0 done, 1 ``compare`` found a regression, 2 a user error (one line on stderr).
Running a benchmark needs the ``bench`` extra (MLPerf LoadGen), checked when it runs; ``compare``
only reads two results files and needs nothing more.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusionedge.benchmarks.results import MODES, SCENARIOS  # standard library only
from fusionedge.cli.extras import needs
from fusionedge.cli.options import add_backends_option, add_json_option
from fusionedge.cli.output import print_json
from fusionedge.cli.predict import format_metrics

__all__ = ["add_bench_parser"]


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _cmd_bench(args: argparse.Namespace) -> int:
    from fusionedge.benchmarks.errors import BenchConfigError
    from fusionedge.benchmarks.harness import BenchConfig, run_benchmark

    if args.bundle is None or args.out is None:
        raise BenchConfigError("fusionedge bench needs --bundle and --out (or: fusionedge bench compare A B)")
    cfg = BenchConfig(
        bundle=args.bundle,
        out=args.out,
        backends=args.backends,
        precisions=args.precisions,
        scenarios=tuple(args.scenarios),
        modes=tuple(args.modes),
        duration_s=args.duration,
        max_duration_s=args.max_duration,
        min_queries=args.min_queries,
        samples_per_query=args.samples_per_query,
        offline_batch=args.offline_batch,
        warmup_queries=args.warmup,
        data=args.data,
        accuracy=args.accuracy,
        accuracy_limit=args.accuracy_limit,
        eager=not args.no_eager,
        checkpoint=args.checkpoint,
        threads=args.threads,
        performance_samples=args.performance_samples,
        synthetic_clips=args.synthetic_clips,
        energy_interval_s=args.energy_interval,
        plots=not args.no_plots,
        progress=not args.json,
    )
    outcome = run_benchmark(cfg)
    doc = outcome.results
    if args.json:
        print_json(
            {
                "results_path": str(outcome.results_path),
                "report_path": str(outcome.report_path) if outcome.report_path else None,
                "plots": [str(p) for p in outcome.plots],
                "results": doc,
            }
        )
        return 0
    print(f"benchmark of {doc['bundle']['model_id']} finished in {doc['wall_seconds']:.0f} s")
    for r in doc["records"]:
        m = r["metric"]
        fig = (
            f"{m['value']:.1f} samples/s"
            if r["scenario"] == "Offline"
            else f"{m['name'][:3]} {m['value']:.2f} ms"
        )
        ratios = r["ratios"]
        extra = [
            f"e2e/engine {ratios['e2e_over_engine']:.2f}x" if ratios["e2e_over_engine"] else "",
            f"vs eager {ratios['over_eager']:.2f}x" if ratios["over_eager"] else "",
            _energy_text(r.get("energy")),
        ]
        print(f"  {r['id']:<42} {r['loadgen']['result']:<8} {fig:<22} {'  '.join(e for e in extra if e)}")
    unread = next((r["energy"]["unavailable"] for r in doc["records"] if r.get("energy")), {})
    if unread:
        print("  energy sources not read: " + "; ".join(f"{k}: {v}" for k, v in unread.items()))
    for a in doc["accuracy"]:  # each detection AP labelled with its definition (VOC all-point, COCO)
        print(f"  accuracy {a['backend']}/{a['precision']} on {a['samples']} samples:")
        print(format_metrics({k: v for k, v in a["metrics"].items() if v is not None}))
    reasons: dict[str, list[str]] = {}
    for s in doc["skipped"]:
        reasons.setdefault(s["reason"], []).append(s["config"])
    for reason, configs in reasons.items():
        print(f"  skipped {len(configs)} configuration(s) ({configs[0]}, ...): {reason}")
    print(f"results: {outcome.results_path}")
    if outcome.report_path:
        print(f"report:  {outcome.report_path}")
    return 0


def _energy_text(energy: dict | None) -> str:
    """``"0.812 J/inference"`` and ``"THROTTLED"`` for a record's energy, empty when none was measured."""
    if not energy:
        return ""
    parts = []
    if energy.get("joules_per_inference") is not None:
        parts.append(f"{energy['joules_per_inference']:.4g} J/inference")
    if energy.get("throttled"):
        parts.append("THROTTLED")
    return "  ".join(parts)


def _cmd_compare(args: argparse.Namespace) -> int:
    from fusionedge.benchmarks.compare import compare_results, format_comparison
    from fusionedge.benchmarks.results import load_results

    cmp = compare_results(
        load_results(args.a),
        load_results(args.b),
        threshold=args.threshold,
        accuracy_tolerance=args.accuracy_tolerance,
    )
    if args.json:
        print_json(cmp.to_dict())
    else:
        print(format_comparison(cmp))
    return cmp.exit_code


def add_bench_parser(verbs: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` verb (and its ``compare`` sub-verb) to the top-level verb subparsers.

    Args:
        verbs: the object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``bench`` parser (its ``func`` default runs the benchmark).
    """
    help = "benchmark a bundle with MLPerf LoadGen (engine-only and end-to-end, with baselines)"
    p = verbs.add_parser("bench", help=help, description=help)
    add_json_option(p)
    p.add_argument("--bundle", type=Path, default=None, help="the bundle folder to benchmark")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder: results.json, report.md, plots/, loadgen/ logs"
    )
    add_backends_option(p, default=None, help="comma-separated SDK backends (default: every one available here)")
    p.add_argument(
        "--precisions", type=_csv, default=None, help="comma-separated (default: the bundle's own)"
    )
    p.add_argument("--scenarios", type=_csv, default=list(SCENARIOS), help=f"default: {','.join(SCENARIOS)}")
    p.add_argument(
        "--modes",
        type=_csv,
        default=list(MODES),
        help="engine (raw backend call), e2e (decode + preprocess + infer + postprocess); default both",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="LoadGen min duration per configuration, seconds (default 10; MLPerf's own is 600)",
    )
    p.add_argument("--max-duration", type=float, default=0.0, help="cap per configuration, seconds (0: none)")
    p.add_argument(
        "--min-queries",
        type=int,
        default=None,
        help="LoadGen min query count for SingleStream/MultiStream (default: the early-stopping "
        "minimum, 64 / 662; fewer gives quick but INVALID runs)",
    )
    p.add_argument(
        "--samples-per-query", type=int, default=8, help="MultiStream samples per query (default 8)"
    )
    p.add_argument("--offline-batch", type=int, default=8, help="Offline samples per engine call (default 8)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up calls per configuration (default 10)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data-set manifest (or its folder) to take clips from (default: synthetic clips)",
    )
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="also run LoadGen AccuracyOnly over --data and compute the bundle's metrics",
    )
    p.add_argument("--accuracy-limit", type=int, default=None, help="accuracy on the first N samples only")
    p.add_argument("--no-eager", action="store_true", help="skip the PyTorch eager baseline")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="the checkpoint the bundle was exported from, for the eager baseline "
        "(default: found by its sha256 beside the bundle)",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for onnxruntime and torch")
    p.add_argument("--performance-samples", type=int, default=64, help="samples LoadGen keeps in memory")
    p.add_argument(
        "--synthetic-clips", type=int, default=8, help="clips to synthesize when --data is not given"
    )
    p.add_argument(
        "--energy-interval", type=float, default=0.1,
        help="seconds between power / temperature / clock readings during each configuration (default 0.1)",
    )
    p.add_argument("--no-plots", action="store_true", help="write report.md without PNG plots")
    p.set_defaults(func=needs("bench", _cmd_bench))

    sub = p.add_subparsers(dest="bench_verb", metavar="compare")
    chelp = "compare two results.json files; exit 1 on a regression beyond the threshold"
    c = sub.add_parser("compare", help=chelp, description=chelp)
    c.add_argument("a", type=Path, help="the reference results.json")
    c.add_argument("b", type=Path, help="the new results.json")
    c.add_argument(
        "--threshold",
        type=float,
        default=0.1,
        help="relative slow-down counted as a regression (default 0.1 = 10%%)",
    )
    c.add_argument(
        "--accuracy-tolerance",
        type=float,
        default=0.01,
        help="absolute accuracy drop counted as a regression (default 0.01)",
    )
    add_json_option(c)
    c.set_defaults(func=_cmd_compare)
    return p
