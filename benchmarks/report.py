"""``report.md`` and PNG plots from a benchmark results document.

:func:`write_report` writes, into the run's folder::

    report.md                          tables: every configuration with its LoadGen verdict, its
                                       figure of merit and the ratios (end-to-end / engine-only,
                                       backend / eager), the stage breakdown, energy per inference
                                       and throttling, accuracy, settings
    plots/latency_distribution.png     per configuration, the distribution of call times
    plots/stage_breakdown.png          mean time per sample in each stage, per configuration
    plots/backend_precision_matrix.png per scenario and mode, backend x precision, with the
                                       figure of merit and the ratio to the eager baseline

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch); without matplotlib
the report is written without them and says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fusionedge.benchmarks.fingerprint import fingerprint_summary
from fusionedge.benchmarks.results import PRIMARY_METRIC, SCENARIOS
from fusionedge.sdk.fileio import write_text_atomic

__all__ = [
    "write_report",
    "render_markdown",
    "plot_latency_distribution",
    "plot_stage_breakdown",
    "plot_backend_precision_matrix",
]

_STAGES = ("decode", "preprocess", "batch", "infer", "postprocess")
_STAGE_COLORS = {
    "decode": "#4c72b0",
    "preprocess": "#55a868",
    "batch": "#8172b2",
    "infer": "#c44e52",
    "postprocess": "#ccb974",
}
_MODE_COLORS = {"engine": "#4c72b0", "e2e": "#dd8452"}


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def _metric_text(r: Mapping[str, Any]) -> str:
    m = r["metric"]
    return (
        f"{m['value']:.1f} samples/s"
        if r["scenario"] == "Offline"
        else f"p{m['name'][1:3]} {m['value']:.2f} ms"
    )


def render_markdown(
    doc: Mapping[str, Any],
    plots: list[Path] | None = None,
    plots_note: str | None = None,
    base: Path | None = None,
) -> str:
    """The markdown report of a results document.

    Args:
        doc: a validated results document.
        plots: PNG files to embed.
        plots_note: why there are no plots, if there are none.
        base: the folder the report is written to (plot links are made relative to it).

    Returns:
        The markdown text.
    """
    b, st, fp = doc["bundle"], doc["settings"], doc["fingerprint"]
    eager = doc["baselines"].get("eager", {})
    lines = [f"# Benchmark: {b['model_id']}", ""]
    lines += [
        f"- run: {doc['created']}, {doc['wall_seconds']:.0f} s in all; MLPerf LoadGen "
        f"{st.get('loadgen_version') or '?'}",
        f"- bundle: `{b['path']}` ({b['precision']}, model.onnx sha256 {b.get('onnx_sha256', '?')[:12]}…)",
        f"- machine: {fingerprint_summary(fp)}",
        f"- load average (1/5/15 min) at start {fp.get('host', {}).get('loadavg', '—')}, at end "
        f"{st.get('loadavg_end') or '—'} (other work on the machine skews every figure)",
        f"- data: {st.get('data')}",
        f"- LoadGen minimums per configuration: {st['duration_s']:g} s and "
        + ", ".join(f"{k} {v} queries" for k, v in st.get("min_queries", {}).items()),
    ]
    if eager.get("status") == "ran":
        diff = eager.get("golden_max_abs_diff")
        lines.append(
            f"- eager baseline: PyTorch {eager.get('torch_version')} ({eager.get('threads')} threads), "
            f"checkpoint {eager.get('checkpoint')}; largest |eager - golden output| "
            f"{'—' if diff is None else format(diff, '.2e')}"
        )
    else:
        lines.append(f"- eager baseline: skipped — {eager.get('reason')}")
    lines += [
        "",
        "## Results",
        "",
        "Figure of merit per LoadGen scenario: SingleStream p90 latency, MultiStream p99 latency (per "
        "query of "
        f"{st['samples_per_query']} samples), Offline samples per second. Ratios compare time per query "
        "(Offline: per sample): **e2e/engine** is end-to-end over engine-only for the same backend; "
        "**vs eager** is this configuration over the PyTorch eager baseline in the same scenario and "
        "mode (< 1 means faster than eager).",
        "",
        "| configuration | LoadGen | figure of merit | p50 ms | p90 ms | p99 ms | samples/s | e2e/engine "
        "| vs eager | peak RSS MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["records"]:
        lat = r["latency_ms"]
        offline = r["scenario"] == "Offline"
        lines.append(
            f"| `{r['id']}` | {r['loadgen']['result']} | {_metric_text(r)} | "
            f"{'—' if offline else _fmt(lat['p50'])} | {'—' if offline else _fmt(lat['p90'])} | "
            f"{'—' if offline else _fmt(lat['p99'])} | {r['throughput_sps']:.1f} | "
            f"{_ratio(r['ratios']['e2e_over_engine'])} | {_ratio(r['ratios']['over_eager'])} | "
            f"{_fmt(r['peak_rss_mb'], 0)} |"
        )
    if not doc["records"]:
        lines.append("| (no configuration ran) | | | | | | | | | |")

    lines += [
        "",
        "## Stage breakdown",
        "",
        "Mean milliseconds per engine call (one query; Offline: one batch), timed inside the system "
        "under test. *batch* gathers the samples into one array.",
        "",
        "| configuration | samples/call | " + " | ".join(_STAGES) + " | total | infer share |",
        "|---|---:|" + "---:|" * (len(_STAGES) + 2),
    ]
    for r in doc["records"]:
        s = r["stages_ms"]
        total = sum(v["mean"] for v in s.values())
        share = s.get("infer", {}).get("share")
        lines.append(
            f"| `{r['id']}` | {r['batch_size']} | "
            + " | ".join(_fmt(s[k]["mean"], 3) if k in s else "—" for k in _STAGES)
            + f" | {total:.3f} | {'—' if share is None else f'{share:.0%}'} |"
        )

    lines += _energy_lines(doc["records"])

    if doc["accuracy"]:
        lines += [
            "",
            "## Accuracy (LoadGen AccuracyOnly, end to end)",
            "",
            "Detection: VOC all-point AP@0.5 (`detection_map50`); COCO's 101-point AP@0.5 and "
            "AP@0.5:0.95 where the `metrics` extra is installed.",
            "",
            "| backend | precision | samples | event accuracy | event macro-F1 | audio-tag mAP | "
            "detection VOC AP@0.5 | COCO AP@0.5 | COCO AP@0.5:0.95 | recorded in the bundle |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for a in doc["accuracy"]:
            m = a["metrics"]
            rec = _recorded(a.get("bundle_metrics") or {})
            lines.append(
                f"| {a['backend']} | {a['precision']} | {a['samples']} | "
                f"{_fmt(m.get('event_accuracy'), 4)} | "
                f"{_fmt(m.get('event_macro_f1'), 4)} | {_fmt(m.get('audio_tag_map'), 4)} | "
                f"{_fmt(m.get('detection_map50'), 4)} | {_fmt(m.get('detection_ap50_coco'), 4)} | "
                f"{_fmt(m.get('detection_ap50_95_coco'), 4)} | {rec} |"
            )

    invalid = [r for r in doc["records"] if not r["loadgen"]["valid"]]
    lines += ["", "## LoadGen verdicts", ""]
    if invalid:
        for r in invalid:
            lines.append(
                f"- `{r['id']}` INVALID: "
                + ("; ".join(r["loadgen"]["notes"]) or "no reason given")
                + f" (log: `{r['loadgen']['log_dir']}`)"
            )
    else:
        lines.append(
            f"All {len(doc['records'])} configurations VALID. Logs: `loadgen/<configuration>/"
            f"mlperf_log_summary.txt`."
        )
    if doc["skipped"]:
        by_reason: dict[str, list[str]] = {}
        for s in doc["skipped"]:
            by_reason.setdefault(s["reason"], []).append(s["config"])
        lines += ["", "## Skipped", ""]
        lines += [
            f"- {', '.join(f'`{c}`' for c in configs)}: {reason}" for reason, configs in by_reason.items()
        ]

    lines += ["", "## Plots", ""]
    if plots:
        for p in plots:
            rel = os.path.relpath(p, base) if base is not None else str(p)
            lines.append(f"![{p.stem}]({rel})")
            lines.append("")
    else:
        lines.append(plots_note or "No plots.")
    unavailable = fp.get("unavailable", {})
    lines += ["", "## Machine", "", "```", _short_fp(fp), "```"]
    if unavailable:
        lines += ["", "Not recorded:", ""] + [f"- {k}: {v}" for k, v in unavailable.items()]
    lines.append("")
    return "\n".join(lines)


def _energy_lines(records: list[Mapping[str, Any]]) -> list[str]:
    """The energy section: joules per inference, mean power, hottest sensor, throttling, what was unread."""
    measured = [r for r in records if r.get("energy")]
    if not measured:
        return []
    first = measured[0]["energy"]
    summed = ", ".join(f"`{n}`" for n in first["total_of"])
    how = (f"energy sums {summed} (idle draw included) and is divided by the samples inferred"
           if summed else "no power source was readable, so there is no energy figure (reasons below)")
    lines = [
        "",
        "## Energy",
        "",
        f"Power, temperatures and clocks sampled every {first['interval_s']:g} s while LoadGen ran each "
        f"configuration; {how}.",
        "",
        "| configuration | J/inference | mean W | window s | readings | hottest °C (limit) | throttled |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in measured:
        e = r["energy"]
        hot = max(e["temperature_c"].items(), key=lambda kv: kv[1]["max"], default=None)
        hot_text = f"{hot[1]['max']:.0f} ({hot[1]['limit']:.0f}) {hot[0]}" if hot else "—"
        throttled = "yes: " + "; ".join(e["throttle_reasons"]) if e["throttled"] else "no"
        lines.append(
            f"| `{r['id']}` | {_fmt(e['joules_per_inference'], 4)} | {_fmt(e['mean_watts'], 1)} | "
            f"{e['window_s']:.2f} | {e['readings']} | {hot_text} | {throttled} |"
        )
    if first["unavailable"]:
        lines += ["", "Not read:", ""] + [f"- {k}: {v}" for k, v in first["unavailable"].items()]
    return lines


def _recorded(metrics: Mapping[str, Any]) -> str:
    """The bundle's recorded event accuracy, if ``fusionedge eval --record`` / quickstart stored one."""
    for scope in (metrics, metrics.get("test") if isinstance(metrics.get("test"), dict) else None):
        if scope and isinstance(scope.get("event_accuracy"), (int, float)):
            extra = f" on {scope['samples']} samples" if isinstance(scope.get("samples"), int) else ""
            return f"event accuracy {scope['event_accuracy']:.4f}{extra}"
    return "—"


def _short_fp(fp: Mapping[str, Any]) -> str:
    keep = ("host", "cpu", "memory", "gpu", "cuda", "software", "jetson", "thermal", "power")
    out = []
    for k in keep:
        v = fp.get(k)
        if v:
            out.append(f"{k}: " + ", ".join(f"{kk}={vv}" for kk, vv in v.items()))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float, layout: str | None = None) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def plot_latency_distribution(
    doc: Mapping[str, Any], latencies: Mapping[str, np.ndarray], path: Path
) -> Path | None:
    """Box plots (1st-99th percentile whiskers) of per-call times, one row per configuration.

    Returns:
        The PNG path, or None when there are no latencies.
    """
    rows = [(r, np.asarray(latencies.get(r["id"], []), dtype=float)) for r in doc["records"]]
    rows = [(r, v) for r, v in rows if v.size]
    if not rows:
        return None
    fig, _ = _figure(9.0, 0.42 * len(rows) + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    labels = [f"{r['id']} (batch {r['batch_size']})" for r, _ in rows]
    bp = ax.boxplot(
        [v for _, v in rows],
        orientation="horizontal",
        whis=(1, 99),
        showfliers=False,
        patch_artist=True,
        widths=0.6,
        medianprops={"color": "black", "linewidth": 1.5},
    )
    for patch, (r, _) in zip(bp["boxes"], rows, strict=True):
        patch.set_facecolor(_MODE_COLORS.get(r["mode"], "#999999"))
        patch.set_alpha(0.75)
    for i, (_, v) in enumerate(rows, start=1):
        p99 = float(np.percentile(v, 99))
        ax.annotate(
            f"p50 {np.median(v):.2f} · p99 {p99:.2f}",
            (p99, i),
            xytext=(6, -3),
            textcoords="offset points",
            fontsize=7,
            color="#333333",
        )
    ax.set_yticks(range(1, len(rows) + 1), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(
        "milliseconds per call (query; Offline: one batch), log scale — box: p25-p75, whiskers: p1-p99"
    )
    ax.set_title(f"Latency distribution — {doc['bundle']['model_id']}", fontsize=11, loc="left")
    ax.grid(axis="x", which="both", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=c, alpha=0.75, label=m) for m, c in _MODE_COLORS.items()],
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncols=2,
        fontsize=8,
        frameon=False,
    )
    xmax = max(float(np.percentile(v, 99)) for _, v in rows)
    ax.set_xlim(right=xmax * 4)
    return _save(fig, path)


def plot_stage_breakdown(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Stacked bars: mean ms per sample in each stage, one bar per configuration.

    Returns:
        The PNG path, or None when there are no records.
    """
    rows = doc["records"]
    if not rows:
        return None
    fig, _ = _figure(9.0, 0.42 * len(rows) + 1.8, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for stage in _STAGES:
        vals = np.array(
            [r["stages_ms"].get(stage, {}).get("mean", 0.0) / max(r["batch_size"], 1) for r in rows]
        )
        if not vals.any():
            continue
        ax.barh(y, vals, left=left, color=_STAGE_COLORS[stage], label=stage, height=0.65)
        left += vals
    for i, total in enumerate(left):
        ax.annotate(f"{total:.2f} ms", (total, i), xytext=(4, -3), textcoords="offset points", fontsize=7)
    ax.set_yticks(y, [r["id"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(right=float(left.max()) * 1.18 if left.max() > 0 else 1)
    ax.set_xlabel("mean milliseconds per sample (call time / samples per call)")
    ax.set_title(f"Stage breakdown — {doc['bundle']['model_id']}", fontsize=11, loc="left")
    fig.legend(fontsize=8, loc="outside lower center", ncols=5, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_backend_precision_matrix(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Per scenario (rows) and mode (columns), a backend x precision grid of the figure of merit.

    Cells are coloured by time per query relative to the fastest backend in that panel and labelled
    with the figure of merit and the ratio to the eager baseline.

    Returns:
        The PNG path, or None when there are no records.
    """
    recs = doc["records"]
    if not recs:
        return None
    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in recs)]
    modes = [m for m in ("engine", "e2e") if any(r["mode"] == m for r in recs)]
    backends = list(dict.fromkeys(r["backend"] for r in recs))
    precisions = list(dict.fromkeys(r["precision"] for r in recs))
    fig, _ = _figure(
        3.2 * len(modes) + 1.2 * len(precisions), 1.0 + (0.5 * len(backends) + 0.9) * len(scenarios)
    )
    for i, s in enumerate(scenarios):
        for j, m in enumerate(modes):
            ax = fig.add_subplot(len(scenarios), len(modes), i * len(modes) + j + 1)
            grid = np.full((len(backends), len(precisions)), np.nan)
            text = [["n/a"] * len(precisions) for _ in backends]
            for r in recs:
                if r["scenario"] != s or r["mode"] != m:
                    continue
                bi, pi = backends.index(r["backend"]), precisions.index(r["precision"])
                v = r["metric"]["value"]
                grid[bi, pi] = (1000.0 / v if v > 0 else np.nan) if s == "Offline" else v
                ratio = r["ratios"]["over_eager"]
                unit = "sps" if s == "Offline" else "ms"
                text[bi][pi] = f"{v:.1f} {unit}" if s == "Offline" else f"{v:.2f} {unit}"
                if ratio is not None:
                    text[bi][pi] += f"\n{ratio:.2f}x eager"
                if not r["loadgen"]["valid"]:
                    text[bi][pi] += "\nINVALID"
            rel = grid / np.nanmin(grid) if np.isfinite(grid).any() else grid
            ax.imshow(
                np.ma.masked_invalid(rel),
                cmap="RdYlGn_r",
                alpha=0.55,
                vmin=1.0,
                vmax=max(2.0, float(np.nanmax(rel)) if np.isfinite(rel).any() else 2.0),
                aspect="auto",
            )
            for bi in range(len(backends)):
                for pi in range(len(precisions)):
                    ax.text(pi, bi, text[bi][pi], ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(precisions)), precisions, fontsize=8)
            ax.set_yticks(range(len(backends)), backends if j == 0 else [""] * len(backends), fontsize=8)
            metric = PRIMARY_METRIC[s].replace("_", " ")
            ax.set_title(f"{s} · {m} ({metric})", fontsize=8)
    fig.suptitle(f"Backend × precision — {doc['bundle']['model_id']} (green: fastest in panel)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_report(
    doc: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    latencies: Mapping[str, np.ndarray] | None = None,
    plots: bool = True,
) -> tuple[Path, list[Path]]:
    """Write ``report.md`` (and the plots) for a results document into ``out_dir``.

    Args:
        doc: a validated results document.
        out_dir: the run's folder.
        latencies: per-configuration call times in ms (for the distribution plot); read from
            ``latencies.npz`` in ``out_dir`` when None and the file exists.
        plots: draw the PNG plots.

    Returns:
        ``(report path, plot paths)``.
    """
    out = Path(out_dir)
    if latencies is None and (out / "latencies.npz").is_file():
        with np.load(out / "latencies.npz") as z:
            latencies = {k.replace("__", "/"): z[k] for k in z.files}
    written: list[Path] = []
    note = None
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            note = "No plots: matplotlib is not installed (pip install 'fusionedge[bench]')."
        else:
            for p in (
                plot_latency_distribution(doc, latencies or {}, out / "plots" / "latency_distribution.png"),
                plot_stage_breakdown(doc, out / "plots" / "stage_breakdown.png"),
                plot_backend_precision_matrix(doc, out / "plots" / "backend_precision_matrix.png"),
            ):
                if p is not None:
                    written.append(p)
    else:
        note = "Plots were not requested."
    path = out / "report.md"
    write_text_atomic(path, render_markdown(doc, written, note, base=out))
    return path, written
