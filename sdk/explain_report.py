"""Check a bundle's explanations against a data set: does the evidence come from the sense that decides?

``fusionedge explain --bundle B --data DIR --out REPORT`` runs every clip of a manifest through
:func:`~fusionedge.sdk.explain.explain_inputs` (which includes the modality attribution) and
:func:`~fusionedge.sdk.explain.deletion_test`, and writes ``report.md``, ``report.json`` and
``report.png``. Two questions are answered:

* **Attribution against the generator's rules.** In the synthetic data an event is set apart from
  ``none`` by one cue or two: a siren for ``emergency_behind`` (sound), a lights-on emergency vehicle
  in view for ``lights_no_siren`` (sight), both for ``emergency_ahead`` (:data:`DECIDING_SENSE`, the
  table in ``training/synth/README.md``). On the correctly classified clips of the two one-cue
  events, the deciding sense should carry the larger contribution (the check: on at least 90%).
* **Faithfulness.** Masking the most-attributed cells (or audio segments) must lower the decided
  event's probability more than masking as many random ones (the check: at least twice as much,
  averaged over the clips).

Clips of any manifest can be reported on; the rule check applies to the events the table names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import DataError, InputError
from fusionedge.sdk.evaluate import load_sample_inputs
from fusionedge.sdk.explain import deletion_test, explain_inputs
from fusionedge.sdk.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from fusionedge.sdk.perception import Perception

__all__ = ["ATTRIBUTION_TARGET", "DECIDING_SENSE", "DELETION_TARGET", "explain_report", "report_markdown"]

#: Which sense sets each event apart from ``none`` by the generator's rules ("both": siren and lights).
DECIDING_SENSE: dict[str, str] = {"emergency_behind": "audio", "lights_no_siren": "video",
                                  "emergency_ahead": "both"}
#: Share of correctly classified one-cue clips on which the deciding sense must carry more.
ATTRIBUTION_TARGET = 0.9
#: How many times larger the drop from the most-attributed regions must be than from random ones.
DELETION_TARGET = 2.0


def explain_report(
    perception: Perception, data: str | Path, out_dir: str | Path, *, limit: int | None = None, cell: int = 32,
    audio_segments: int = 10, fraction: float = 0.2, trials: int = 8, seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Explain every clip of a manifest and write the report (see the module docstring).

    Args:
        perception: a loaded fused model.
        data: a manifest or its folder (labelled with events).
        out_dir: where ``report.md``, ``report.json`` and ``report.png`` go (created).
        limit: only the first N clips.
        cell: spatial cell size in model-input pixels (see :func:`explain_inputs`).
        audio_segments: audio slices (see :func:`explain_inputs`).
        fraction: share of regions masked in the deletion test.
        trials: random draws per clip in the deletion test.
        seed: of the random draws (clip ``i`` uses ``seed + i``).
        progress: called with ``(done, total)`` after each clip.

    Returns:
        The summary that ``report.json`` holds.

    Raises:
        DataError: the manifest is invalid, or has no clip with an event label.
        InputError: bad parameters or a non-fused model.
        MediaError: a clip cannot be decoded.
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1, got {limit!r}")
    samples = [s for s in read_manifest(data) if s.event is not None][:limit]
    if not samples:
        raise DataError(f"{data}: no clip with an event label to report on")
    events = tuple(perception.labels["events"])
    clips: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, sample in enumerate(samples):
        video, audio, presence, _ = load_sample_inputs(sample, perception.geometry)
        emap = explain_inputs(perception, video, audio, presence, cell=cell, audio_segments=audio_segments)
        deletion = deletion_test(perception, video, audio, presence, emap, fraction=fraction, trials=trials,
                                 seed=seed + i)
        clips.append({"id": sample.id, "truth": sample.event, "decided": emap.event, "score": emap.score,
                      "contribution": emap.attribution.contribution,
                      "deletion": {m: d.to_dict() for m, d in deletion.items()}})
        if progress is not None:
            progress(i + 1, len(samples))
    seconds = time.perf_counter() - t0
    summary = _summarise(clips, events)
    summary.update({"bundle": perception.model, "backend": perception.backend_name, "data": str(data),
                    "clips": len(clips), "seconds": round(seconds, 2),
                    "settings": {"cell": cell, "audio_segments": audio_segments, "fraction": fraction,
                                 "trials": trials, "seed": seed},
                    "per_clip": clips})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", summary)
    write_text_atomic(out / "report.md", report_markdown(summary))
    _write_plot(summary, out / "report.png")
    return summary


def _summarise(clips: list[dict[str, Any]], events: tuple[str, ...]) -> dict[str, Any]:
    per_event: dict[str, Any] = {}
    for event in events:
        mine = [c for c in clips if c["truth"] == event]
        right = [c for c in mine if c["decided"] == event]
        row: dict[str, Any] = {"clips": len(mine), "correct": len(right), "deciding_sense": DECIDING_SENSE.get(event)}
        if right:
            row["mean_contribution"] = {m: float(np.mean([c["contribution"][m] for c in right]))
                                        for m in ("video", "audio")}
        sense = DECIDING_SENSE.get(event)
        if sense in ("video", "audio") and right:
            other = "audio" if sense == "video" else "video"
            agree = sum(c["contribution"][sense] > c["contribution"][other] for c in right)
            row["deciding_sense_larger"] = agree / len(right)
            row["passes"] = agree / len(right) >= ATTRIBUTION_TARGET
        per_event[event] = row
    deletion: dict[str, Any] = {}
    for m in ("video", "audio"):
        rows = [c["deletion"][m] for c in clips if m in c["deletion"]]
        if not rows:
            continue
        top = float(np.mean([r["top_drop"] for r in rows]))
        rnd = float(np.mean([r["random_drop"] for r in rows]))
        deletion[m] = {"clips": len(rows), "k": rows[0]["k"], "of": rows[0]["of"], "top_drop": top,
                       "random_drop": rnd, "ratio": top / rnd if rnd > 0 else None,
                       "passes": top >= DELETION_TARGET * max(rnd, 0.0) and top > 0}
    return {"accuracy": float(np.mean([c["truth"] == c["decided"] for c in clips])), "per_event": per_event,
            "deletion": deletion}


def report_markdown(summary: dict[str, Any]) -> str:
    """The report as Markdown: the attribution table per event and the deletion test."""
    s = summary["settings"]
    lines = [
        f"# Explanation report: {summary['bundle']} on {summary['data']}",
        "",
        (f"{summary['clips']} clips, event accuracy {summary['accuracy']:.3f}, backend {summary['backend']}, "
        f"{summary['seconds']:.1f} s ({summary['seconds'] / max(summary['clips'], 1):.2f} s per clip: the clip, "
        f"each sense withheld, every cell, frame and audio slice masked, and the deletion test)."),
        "",
        "## Which sense decided (correctly classified clips)",
        "",
        ("Contribution: the share of the decision's margin over `none` lost when the sense is withheld "
        "(`fusionedge.sdk.attribution`). The rule column is the generator's: the cue that sets the event "
        f"apart from `none`. Target: the deciding sense carries more on at least {ATTRIBUTION_TARGET:.0%} "
        "of the clips."),
        "",
        "| event | clips | correct | rule | mean seen | mean heard | deciding sense larger | target met |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for event, row in summary["per_event"].items():
        mean = row.get("mean_contribution")
        seen, heard = (f"{mean['video']:.3f}", f"{mean['audio']:.3f}") if mean else ("-", "-")
        share = f"{row['deciding_sense_larger']:.1%}" if "deciding_sense_larger" in row else "-"
        met = ("yes" if row["passes"] else "**no**") if "passes" in row else "-"
        rule = {"audio": "sound", "video": "sight", "both": "both"}.get(row["deciding_sense"] or "", "-")
        lines.append(f"| {event} | {row['clips']} | {row['correct']} | {rule} | {seen} | {heard} | {share} | {met} |")
    lines += [
        "",
        "## Deletion test (all clips)",
        "",
        (f"The {s['fraction']:.0%} most-attributed regions masked together vs as many random ones "
        f"({s['trials']} draws per clip); the drop of the decided event's probability, averaged over the "
        f"clips. Target: at least {DELETION_TARGET:g} times the random drop. Cells are {s['cell']} "
        f"model-input pixels, masked in every frame; audio slices are 1/{s['audio_segments']} of the window."),
        "",
        "| regions | clips | masked | most-attributed drop | random drop | ratio | target met |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for m, row in summary["deletion"].items():
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}x"
        name = "video cells" if m == "video" else "audio slices"
        lines.append(f"| {name} | {row['clips']} | {row['k']} of {row['of']} | {row['top_drop']:.4f} | "
                     f"{row['random_drop']:.4f} | {ratio} | {'yes' if row['passes'] else '**no**'} |")
    lines += ["", "![contributions and deletion test](report.png)", ""]
    return "\n".join(lines)


def _write_plot(summary: dict[str, Any], path: Path) -> None:
    """Two bar charts: mean seen/heard share per event, and the deletion drops (OpenCV, no matplotlib)."""
    import cv2
    from fusionedge.sdk.annotate import HEARD_COLOUR, SEEN_COLOUR

    w, h = 980, 400
    img = np.full((h, w, 3), 255, np.uint8)
    ink, grey = (30, 30, 30), (150, 150, 150)
    font = cv2.FONT_HERSHEY_SIMPLEX

    def axes(x0: int, x1: int, title: str, top: float, ticks: int = 4) -> tuple[int, int, float]:
        y0, y1 = 60, h - 70
        cv2.putText(img, title, (x0, 30), font, 0.55, ink, 1, cv2.LINE_AA)
        for k in range(ticks + 1):
            y = int(y1 - (y1 - y0) * k / ticks)
            cv2.line(img, (x0, y), (x1, y), (225, 225, 225), 1)
            cv2.putText(img, f"{top * k / ticks:.2g}", (x0 - 36, y + 4), font, 0.4, grey, 1, cv2.LINE_AA)
        cv2.line(img, (x0, y1), (x1, y1), ink, 1)
        return y0, y1, top

    def bar(x: int, width: int, value: float, y0: int, y1: int, top: float, colour: tuple) -> None:
        y = int(y1 - (y1 - y0) * min(max(value, 0.0), top) / top)
        cv2.rectangle(img, (x, y), (x + width, y1), colour, -1)

    per_event = [(e, r) for e, r in summary["per_event"].items() if r.get("mean_contribution")]
    x0, x1 = 60, 560
    y0, y1, top = axes(x0, x1, "mean share of the decision (correct clips)", 1.0)
    slot = (x1 - x0) / max(len(per_event), 1)
    for i, (event, row) in enumerate(per_event):
        x = int(x0 + slot * i + slot * 0.15)
        bw = int(slot * 0.33)
        bar(x, bw, row["mean_contribution"]["video"], y0, y1, top, SEEN_COLOUR)
        bar(x + bw + 2, bw, row["mean_contribution"]["audio"], y0, y1, top, HEARD_COLOUR)
        cv2.putText(img, event.replace("emergency_", "emerg. "), (x - 4, y1 + 18), font, 0.4, ink, 1, cv2.LINE_AA)
        rule = row.get("deciding_sense") or "-"
        cv2.putText(img, f"rule: {rule}", (x, y1 + 36), font, 0.4, grey, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, h - 22), (x0 + 14, h - 10), SEEN_COLOUR, -1)
    cv2.putText(img, "seen (video)", (x0 + 20, h - 11), font, 0.45, ink, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0 + 140, h - 22), (x0 + 154, h - 10), HEARD_COLOUR, -1)
    cv2.putText(img, "heard (audio)", (x0 + 160, h - 11), font, 0.45, ink, 1, cv2.LINE_AA)

    deletion = summary["deletion"]
    peak = max([max(r["top_drop"], r["random_drop"]) for r in deletion.values()] + [1e-6])
    x0, x1 = 660, 950
    y0, y1, top = axes(x0, x1, "deletion: drop of the decided event", peak * 1.1)
    slot = (x1 - x0) / max(len(deletion), 1)
    for i, (m, row) in enumerate(deletion.items()):
        x = int(x0 + slot * i + slot * 0.15)
        bw = int(slot * 0.33)
        bar(x, bw, row["top_drop"], y0, y1, top, (40, 40, 200))
        bar(x + bw + 2, bw, row["random_drop"], y0, y1, top, (170, 170, 170))
        cv2.putText(img, "video cells" if m == "video" else "audio slices", (x, y1 + 18), font, 0.4, ink, 1,
                    cv2.LINE_AA)
    cv2.rectangle(img, (x0, h - 22), (x0 + 14, h - 10), (40, 40, 200), -1)
    cv2.putText(img, "most attributed", (x0 + 20, h - 11), font, 0.45, ink, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0 + 160, h - 22), (x0 + 174, h - 10), (170, 170, 170), -1)
    cv2.putText(img, "random", (x0 + 180, h - 11), font, 0.45, ink, 1, cv2.LINE_AA)
    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise InputError(f"{path}: the plot could not be encoded")
    write_bytes_atomic(path, data.tobytes())
