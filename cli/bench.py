"""The ``bench`` verb of the ``fusionedge`` command line.

::

    fusionedge bench --bundle B --out DIR [--backends onnxruntime] [--precisions fp32]
                     [--scenarios SingleStream,MultiStream,Offline] [--modes engine,e2e]
                     [--duration S] [--data DIR [--accuracy]] [--json]
    fusionedge bench compare A.json B.json [--threshold 0.1] [--json]
    fusionedge bench cameras --bundle B [--cameras 1,2,3 | --max-cameras N] [--fps 30] [--size 640x360]
                     [--audio] [--batched both] [--spinning off] [--busy off] [--threads auto]
                     [--repeats 3] [--seconds 5] [--out FILE.json] [--report FILE.md] [--json]

The harness is :mod:`fusionedge.benchmarks`; this module parses the verb and prints the results.
Exit statuses: 0 done, 1 ``compare`` found a regression, 2 a user error (one line on stderr).
Running a benchmark needs the ``bench`` extra (MLPerf LoadGen), checked when it runs; ``compare``
only reads two results files and needs nothing more. ``cameras`` (the most live cameras sustained,
batched against one inference per camera: :mod:`fusionedge.benchmarks.bench_cameras`) needs no extra;
its report's plot needs matplotlib.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fusionedge.benchmarks.cameras_options import add_cameras_arguments  # standard library only
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


def _cmd_cameras(args: argparse.Namespace) -> int:
    from fusionedge.benchmarks.bench_cameras import config_from_args, run_cameras
    from fusionedge.benchmarks.cameras_report import format_headline, write_cameras_report
    from fusionedge.benchmarks.errors import BenchConfigError
    from fusionedge.sdk.fileio import write_json_atomic

    config = config_from_args(args)
    for option, path in (("--out", args.out), ("--report", args.report)):
        if path is not None and not path.resolve().parent.is_dir():
            raise BenchConfigError(f"{option} {path}: the folder {path.resolve().parent} does not exist")
    progress = None if args.json else lambda pt: print(
        f"  round {pt['round']}: {_point_text(pt)}", file=sys.stderr, flush=True)
    doc = run_cameras(config, progress=progress)
    report = plot = None
    if args.out is not None:
        write_json_atomic(args.out, doc)
    if args.report is not None:
        report, plot = write_cameras_report(doc, args.report, plot=not args.no_plots)
    if args.json:
        print_json({"results_path": str(args.out) if args.out else None,
                    "report_path": str(report) if report else None,
                    "plots": [str(plot)] if plot else [], "results": doc})
        return 0
    print(f"cameras of {doc['size']} at {doc['fps']:g} FPS{' with audio' if doc['audio'] else ''} on "
          f"{doc['model']}: {doc['repeats']} round(s) of {doc['seconds']:g} s, load average "
          f"{doc['loadavg_before'][0]:.2f} before, {doc['loadavg_after'][0]:.2f} after")
    for r in doc["summary"]:
        share = f"{r['min_results_median'] / r['expected']:.0%}" if r["expected"] else "-"
        print(f"  {r['cameras']:>2} {r['mode']:<10} threads {r['threads']}(={r['intra_op_threads']}) "
              f"spin {r['spinning']:<3} busy {r['busy']:<3} sustained {r['sustained_rounds']}/{r['rounds']}  "
              f"p99 {_ms(r['p99_ms_median'])}{_span(r['p99_ms_range'])} ms  results {share}  "
              f"CPU {_ms(r['cpu_ms_per_result_median'], 2)}{_span(r['cpu_ms_per_result_range'], 2)} ms/result  "
              f"drops {','.join(map(str, r['dropped']))}")
    for r in doc.get("inference", []):
        print(f"  inference alone, {r['cameras']} cameras, threads {r['threads']}(={r['intra_op_threads']}) spin "
              f"{r['spinning']}: batch {r['cameras']} {_ms(r['batched_ms_per_frame'], 2)} ms/frame, {r['cameras']} "
              f"calls {_ms(r['separate_ms_per_frame'], 2)} ms/frame ({_ms(r['ratio'], 2)}x)")
    for h in doc["headlines"]:
        print(format_headline(doc, h))
    if args.out is not None:
        print(f"results: {args.out}")
    if report is not None:
        print(f"report:  {report}" + (f" (plot {plot})" if plot else ""))
    return 0


def _ms(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _span(r: list | None, digits: int = 1) -> str:
    return "" if not r else f" [{r[0]:.{digits}f}-{r[1]:.{digits}f}]"


def _point_text(pt: dict) -> str:
    """One measured point as a progress line."""
    return (f"{pt['cameras']} cameras {pt['mode']}, threads {pt['threads']}, spin {pt['spinning']}, busy "
            f"{pt['busy']}: {'sustained' if pt['sustained'] else 'not sustained'}, p99 {_ms(pt['p99_ms'])} ms, "
            f"{pt['min_results_per_camera']}/{pt['expected_per_camera']} results, {pt['dropped']} dropped")


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

    sub = p.add_subparsers(dest="bench_verb", metavar="{compare,cameras}")
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

    khelp = ("the most live cameras sustained at a frame rate (0 drops, p99 under one frame period), "
             "batched against one inference per camera")
    k = sub.add_parser("cameras", help=khelp, description=khelp)
    add_cameras_arguments(k)
    k.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    k.add_argument("--report", type=Path, default=None,
                   help="write a Markdown report here, and its plot beside it as .png (needs matplotlib)")
    k.add_argument("--no-plots", action="store_true", help="write the report without its plot")
    add_json_option(k)
    k.set_defaults(func=_cmd_cameras)
    return p
