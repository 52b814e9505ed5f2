"""The Markdown report and the plot of a cameras run (:func:`fusionedge.benchmarks.bench_cameras.run_cameras`).

:func:`write_cameras_report` writes ``FILE.md`` with the headline (the most cameras sustained batched
and one call per camera, the batched / per-camera CPU-time ratio), a table of every configuration with
its medians and ranges, where the worst camera's latency went stage by stage, the model call alone at
batch N against N calls, the settings and the load average; and, where matplotlib is installed,
``FILE.png`` beside it: camera count against the median p99 per mode and setting (the range as error
bars) with the one-frame-period line a sustained count must stay under. Like the ``bench`` report it
draws on matplotlib's Agg canvas directly (no pyplot, no global backend switch); without matplotlib the
report says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusionedge.sdk.fileio import write_text_atomic

__all__ = ["STAGE_COLUMNS", "format_headline", "plot_cameras", "render_cameras_markdown", "write_cameras_report"]

_MODE_COLORS = {"batched": "#4c72b0", "per-camera": "#dd8452"}


def _num(v: Any, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _span(r: list | None, digits: int = 1) -> str:
    return "" if not r else f" [{r[0]:.{digits}f}–{r[1]:.{digits}f}]"


def _setting_text(h: Mapping[str, Any]) -> str:
    text = f"threads {h['threads']} (= {h['intra_op_threads']}), spinning {h['spinning']}"
    return text + (", one core busy" if h["busy"] == "on" else "")


def format_headline(doc: Mapping[str, Any], h: Mapping[str, Any]) -> str:
    """One line: the most cameras sustained per mode and the CPU ratio, for one setting of ``doc``."""
    most = h["max_cameras_sustained"]
    parts = [f"{mode} {most[mode]}" for mode in ("batched", "per-camera") if most.get(mode) is not None]
    line = (f"most {doc['fps']:g} FPS cameras sustained ({_setting_text(h)}): " + ", ".join(parts))
    if h["cpu_ratio"] is not None:
        line += f"; CPU per result batched / per camera {h['cpu_ratio']:.2f}x at {h['cpu_ratio_cameras']} cameras"
    return line


def render_cameras_markdown(doc: Mapping[str, Any], plot: Path | None = None, note: str | None = None,
                            base: Path | None = None) -> str:
    """The report's Markdown text.

    Args:
        doc: the document of a cameras run.
        plot: the plot to link, if any.
        note: a line said instead of the plot (why there is none).
        base: the report's folder, to link the plot relative to it.
    """
    audio = "with one shared synthetic microphone" if doc["audio"] else "without audio"
    lines = [f"# Cameras sustained: {doc['model']}", "",
             (f"Synthetic live cameras of {doc['size']} at {doc['fps']:g} FPS, {audio}; {doc['repeats']} "
             f"round(s) of {doc['seconds']:g} s per configuration, shuffled within each round (seed "
             f"{doc['seed']}). A count is sustained in a run with 0 drops, at least "
             f"{doc['min_delivered']:.0%} of the frames as results per camera and the worst camera's p99 "
             f"capture→result under one frame period ({doc['frame_period_ms']:.1f} ms); sustained overall in "
             f"most rounds."), "", "## Headline", ""]
    for h in doc["headlines"]:
        lines.append(f"- {format_headline(doc, h)}")
        if len(h["cpu_ratio_by_cameras"]) > 1:
            by = ", ".join(f"{r['cameras']}: {r['ratio']:.2f}x" for r in h["cpu_ratio_by_cameras"])
            lines.append(f"  - CPU ratio by camera count: {by}")
    lines += ["", "## Configurations", "",
              "Medians over the rounds, range in brackets.", "",
              ("| cameras | mode | ORT threads | spinning | busy core | sustained rounds | p99 ms | "
              "results / expected | CPU ms / result | dropped |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["summary"]:
        share = f"{r['min_results_median'] / r['expected']:.0%}" if r["expected"] else "—"
        lines.append(
            f"| {r['cameras']} | {r['mode']} | {r['threads']} (= {r['intra_op_threads']}) | {r['spinning']} | "
            f"{r['busy']} | {r['sustained_rounds']} / {r['rounds']} | {_num(r['p99_ms_median'])}"
            f"{_span(r['p99_ms_range'])} | {share} | {_num(r['cpu_ms_per_result_median'], 2)}"
            f"{_span(r['cpu_ms_per_result_range'], 2)} | {', '.join(map(str, r['dropped']))} |")
    lines += [""]
    lines += _stages_markdown(doc)
    lines += _inference_markdown(doc)
    if plot is not None:
        rel = os.path.relpath(plot, base) if base is not None else str(plot)
        lines += [f"![p99 against cameras]({rel})", ""]
    elif note:
        lines += [note, ""]
    before, after = doc["loadavg_before"], doc["loadavg_after"]
    lines += ["## Machine", "",
              (f"{doc['cores']} cores; load average (1, 5, 15 min) before {before[0]:.2f} {before[1]:.2f} "
              f"{before[2]:.2f}, after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}. Bundle `{doc['bundle']}`."),
              ""]
    return "\n".join(lines)


#: The stage groups of the breakdown table: (column, stages of :mod:`fusionedge.sdk.streaming.stages`).
STAGE_COLUMNS = (("audio wait", ("audio_wait",)), ("batch wait", ("batch_wait",)), ("inference", ("inference",)),
                 ("queues", ("capture_queue", "infer_queue", "post_queue")),
                 ("pre/post", ("preprocess", "window", "postprocess")))


def _stage_cells(stages: Mapping[str, float] | None) -> list[str]:
    if not stages:
        return ["—"] * len(STAGE_COLUMNS)
    return [f"{sum(stages.get(k, 0.0) for k in keys):.1f}" for _, keys in STAGE_COLUMNS]


def _stages_markdown(doc: Mapping[str, Any]) -> list[str]:
    """Where the worst camera's capture→result time went, per configuration (median over rounds)."""
    rows = [r for r in doc["summary"] if r.get("stages_p50_ms")]
    if not rows:
        return []
    heads = " | ".join(c for c, _ in STAGE_COLUMNS)
    lines = ["## Where the time goes", "",
             ("The worst camera's capture→result by stage, ms: the median result (p50 of each stage) and the "
              "slowest 5 % of results (each stage's mean over them); medians over the rounds. Queues: "
              "capture→preprocess, preprocess→inference, inference→postprocess."), "",
             f"| cameras | mode | busy core | p50: {heads} | slowest 5 %: {heads} |",
             "|---|---|---|" + "---|" * (2 * len(STAGE_COLUMNS))]
    for r in rows:
        lines.append(f"| {r['cameras']} | {r['mode']} | {r['busy']} | "
                     + " | ".join(_stage_cells(r["stages_p50_ms"])) + " | "
                     + " | ".join(_stage_cells(r["stages_tail_ms"])) + " |")
    return lines + [""]


def _inference_markdown(doc: Mapping[str, Any]) -> list[str]:
    """The model call alone: batch N against N calls at batch 1, interleaved."""
    rows = doc.get("inference") or []
    if not rows:
        return []
    lines = ["## Inference alone: batch N against N calls", "",
             ("`Perception.run_batch` on N cameras' inputs as one batch and as N calls at batch 1, alternating "
              "within every round; medians per frame (range in brackets)."), "",
             ("| cameras | ORT threads | spinning | rounds | batched ms / frame | separate ms / frame | ratio | "
              "CPU ratio |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cameras']} | {r['threads']} (= {r['intra_op_threads']}) | {r['spinning']} | {r['rounds']} | "
                     f"{_num(r['batched_ms_per_frame'], 2)}{_span(r['batched_ms_range'], 2)} | "
                     f"{_num(r['separate_ms_per_frame'], 2)}{_span(r['separate_ms_range'], 2)} | "
                     f"{_num(r['ratio'], 2)}x | {_num(r['cpu_ratio'], 2)}x |")
    return lines + [""]


def plot_cameras(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Camera count against median p99 per mode and setting, with the one-frame-period line.

    Returns:
        The PNG path, or None when no configuration has a p99.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in doc["summary"]:
        if r["p99_ms_median"] is not None:
            series.setdefault((r["mode"], r["threads"], r["spinning"], r["busy"]), []).append(r)
    if not series:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]
    settings = sorted({k[1:] for k in series})
    for (mode, *setting), rows in sorted(series.items()):
        rows = sorted(rows, key=lambda r: r["cameras"])
        x = [r["cameras"] for r in rows]
        y = [r["p99_ms_median"] for r in rows]
        err = [[r["p99_ms_median"] - r["p99_ms_range"][0] for r in rows],
               [r["p99_ms_range"][1] - r["p99_ms_median"] for r in rows]]
        label = mode if len(settings) == 1 else f"{mode}, threads {setting[0]}, spin {setting[1]}, busy {setting[2]}"
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=_MODE_COLORS[mode],
                    linestyle=styles[settings.index(tuple(setting)) % len(styles)], label=label)
    period = doc["frame_period_ms"]
    ax.axhline(period, color="#c44e52", linewidth=1, label=f"one frame period ({period:.1f} ms)")
    ax.set_xlabel("cameras")
    ax.set_ylabel("worst camera's p99 capture→result (ms)")
    ax.set_xticks(sorted({r["cameras"] for r in doc["summary"]}))
    ax.set_ylim(bottom=0)
    ax.set_title(f"{doc['model']}: {doc['size']} at {doc['fps']:g} FPS" + (" with audio" if doc["audio"] else ""),
                 fontsize=10)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def write_cameras_report(doc: Mapping[str, Any], path: str | os.PathLike, *,
                         plot: bool = True) -> tuple[Path, Path | None]:
    """Write the Markdown report to ``path`` and, with matplotlib, its plot beside it (``.png``).

    Returns:
        ``(report path, plot path or None)``.
    """
    path = Path(path)
    png, note = None, None
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            note = "No plot: matplotlib is not installed (pip install 'fusionedge[bench]')."
        else:
            png = plot_cameras(doc, path.with_suffix(".png"))
            if png is None:
                note = "No plot: no configuration delivered a result."
    write_text_atomic(path, render_cameras_markdown(doc, png, note, base=path.parent))
    return path, png
