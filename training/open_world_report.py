"""The open-world report: bundles side by side on their own test split and on media they were not made for.

For each bundle (typically the old one and a calibrated or retrained one) it scores, through the
runtime, the closed-world numbers on the synthetic test split (event accuracy, macro-F1, audio-tag
mAP, detection mAP@0.5, event ECE) and the open-world ones on an outside set made by ``fusionedge
data outside`` (false siren tag, false alarm, silence heard as a tag, siren recall, event ECE, share
marked uncertain), plus the AUROC with which the bundle's OOD score tells outside clips from test
clips (only a calibrated bundle has one). It writes ``open_world.md`` (the tables),
``open_world.json`` (every number) and one reliability diagram per bundle, ``reliability-<name>.png``:
accuracy against confidence of the top event, on the test split and on the outside clips whose
event is defined. matplotlib (the ``train`` extra) is imported only to draw them; no torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.fileio import write_json_atomic, write_text_atomic
from fusionedge.sdk.outside_metrics import expected_calibration_error, ood_auroc, outside_label
from fusionedge.sdk.postprocess import softmax

__all__ = ["bundle_labels", "open_world_markdown", "open_world_report", "reliability_bins"]

_BINS = 15
#: (column, key, where) of the two tables: "test" keys from eval on the test split, "outside" from its block.
_TEST_COLUMNS = (("event acc.", "event_accuracy"), ("macro-F1", "event_macro_f1"), ("tag mAP", "audio_tag_map"),
                 ("det mAP@0.5", "detection_map50"), ("ECE", "event_ece"), ("uncertain", "uncertain_rate"))
_OUTSIDE_COLUMNS = (("false siren tag", "false_siren_tag_rate"), ("false alarm", "false_alarm_rate"),
                    ("silence→tag", "silence_any_tag_rate"), ("siren recall", "siren_recall"),
                    ("siren alarm recall", "siren_alarm_recall"), ("EV box, non-road", "nonroad_emergency_box_rate"),
                    ("lights event, non-road", "nonroad_lights_event_rate"), ("ECE", "event_ece"),
                    ("uncertain", "uncertain_rate"), ("OOD AUROC", "ood_auroc"))


def bundle_labels(bundles: Sequence[str | os.PathLike]) -> list[str]:
    """A short, unique, file-name-safe label per bundle: its folder name, with its parent's if needed."""
    paths = [Path(b).resolve() for b in bundles]
    labels = [p.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}-{p.name}" for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{i}-{label}" for i, label in enumerate(labels)]
    return [re.sub(r"[^A-Za-z0-9._-]+", "_", label) for label in labels]


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = _BINS) -> dict[str, list]:
    """Per confidence bin (the ECE's bins): mean confidence, accuracy and clip count of the top event.

    Returns:
        ``{"confidence", "accuracy", "count"}``, one entry per bin; an empty bin has None for both.
    """
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = bins == b
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
    return out


def _score_bundle(bundle: Path, test: Path, outside: Path, backends: Sequence[str], progress: bool) -> dict:
    """Every number of one bundle, and the per-clip arrays its diagram is drawn from."""
    from fusionedge.sdk.evaluate import evaluate
    from fusionedge.sdk.perception import Perception

    with Perception.load(bundle, backends=backends) as p:
        events = list(p.labels["events"])
        per_clip = {"test": {}, "outside": {}}  # filled by the same pass that computes the metrics
        test_metrics = evaluate(p, test, progress=progress, clip_logits=per_clip["test"])
        outside_metrics = evaluate(p, outside, progress=progress, clip_logits=per_clip["outside"]).get("outside")
        if outside_metrics is None:
            raise InputError(f"{outside}: no sample has an 'outside' block; make the set with fusionedge data outside")
        cal = p.calibration
        arrays: dict[str, Any] = {}
        ood: dict[str, np.ndarray] = {}
        for name, logits in per_clip.items():
            samples = logits["samples"]
            ev = logits["event_logits"]
            probs = softmax(ev) if cal is None else cal.event_probs(ev)
            y = np.array([events.index(s.event) for s in samples])
            keep = np.ones(len(samples), bool)
            if name == "outside":  # only clips whose event holds by construction count for calibration
                keep = np.array([(lab := outside_label(s)) is not None and lab.event_defined for s in samples])
            arrays[name] = (probs[keep], y[keep])
            if cal is not None:
                audio = logits["has_audio"]
                scores = np.empty(len(samples))
                scores[audio] = cal.ood_scores(ev[audio], logits["tag_logits"][audio])
                if (~audio).any():
                    scores[~audio] = cal.ood_scores(ev[~audio], None)
                ood[name] = scores
    outside_metrics["ood_auroc"] = ood_auroc(ood["test"], ood["outside"]) if ood else None
    reliability = {name: reliability_bins(pr, y) for name, (pr, y) in arrays.items() if len(y)}
    return {"bundle": str(bundle), "model": p.model, "calibrated": cal is not None, "test": test_metrics,
            "outside": outside_metrics, "reliability": reliability,
            "ece_check": {name: expected_calibration_error(pr, y, _BINS) for name, (pr, y) in arrays.items()
                          if len(y)}}


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def open_world_markdown(report: dict) -> str:
    """The report's two Markdown tables (test split, outside set), one row per bundle."""
    rows = report["bundles"]
    lines = ["# Open-world report", "", f"Test split: `{report['test']}`; outside set: `{report['outside']}`.", "",
             "## Synthetic test split", "",
             "| bundle | calibrated | " + " | ".join(c for c, _ in _TEST_COLUMNS) + " |",
             "|---|---|" + "---:|" * len(_TEST_COLUMNS)]
    for label, r in rows.items():
        lines.append(f"| {label} | {'yes' if r['calibrated'] else 'no'} | "
                     + " | ".join(_fmt(r["test"].get(k)) for _, k in _TEST_COLUMNS) + " |")
    lines += ["", "## Outside set", "", "| bundle | " + " | ".join(c for c, _ in _OUTSIDE_COLUMNS) + " |",
              "|---|" + "---:|" * len(_OUTSIDE_COLUMNS)]
    for label, r in rows.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(r["outside"].get(k)) for _, k in _OUTSIDE_COLUMNS) + " |")
    lines += ["", ("False alarm counts an `uncertain` result as no alarm; ECE is the top-event ECE "
                   f"({_BINS} bins) of the probabilities the bundle gives (tempered when calibrated), on the "
                   "outside clips whose event is defined; OOD AUROC: outside clips against test clips "
                   "(a bundle without calibration has no OOD score)."), ""]
    lines += [f"![reliability of {label}]({r['diagram']})" for label, r in rows.items()]
    return "\n".join(lines) + "\n"


def _draw(label: str, reliability: dict, ece: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [n for n in ("test", "outside") if n in reliability]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    width = 1.0 / _BINS
    centres = (np.arange(_BINS) + 0.5) * width
    for ax, name in zip(axes[0], panels):
        r = reliability[name]
        acc = np.array([a if a is not None else 0.0 for a in r["accuracy"]])
        used = np.array(r["count"]) > 0
        ax.bar(centres[used], acc[used], width=width, edgecolor="black", color="tab:blue", label="accuracy")
        conf = np.array([c if c is not None else 0.0 for c in r["confidence"]])
        ax.bar(centres[used], conf[used], width=width, fill=False, edgecolor="tab:red", hatch="//",
               label="mean confidence")
        for x, n, top in zip(centres[used], np.array(r["count"])[used], np.maximum(acc, conf)[used]):
            ax.text(x, min(top + 0.02, 0.95), str(n), ha="center", fontsize=7)
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence of the top event", ylabel="accuracy",
               title=f"{name}: ECE {ece[name]:.3f}, {sum(r['count'])} clips")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"reliability of {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def open_world_report(
    bundles: Sequence[str | os.PathLike],
    test: str | os.PathLike,
    outside: str | os.PathLike,
    out: str | os.PathLike,
    *,
    backends: Sequence[str] = ("onnxruntime",),
    progress: bool = False,
) -> dict:
    """Score each bundle on the test split and the outside set; write the tables and the diagrams.

    Args:
        bundles: the bundle folders (fused-model bundles), in table order.
        test: the labelled synthetic test manifest or its folder.
        outside: a manifest from ``fusionedge data outside`` (samples with ``outside`` blocks).
        out: the folder to write ``open_world.md``, ``open_world.json`` and the PNGs into.
        backends: runtime backends, in order of preference.
        progress: progress bars on stderr.

    Returns:
        ``{"test", "outside", "bundles": {label: {...}}, "markdown": path}``.

    Raises:
        InputError: no bundle, or an outside set without ``outside`` blocks.
        BundleError, DataError, MediaError: a bad bundle, manifest or media file.
    """
    if not bundles:
        raise InputError("give at least one bundle")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    for label, bundle in zip(bundle_labels(bundles), bundles):
        r = _score_bundle(Path(bundle), Path(test), Path(outside), backends, progress)
        r["diagram"] = f"reliability-{label}.png"
        _draw(label, r["reliability"], r["ece_check"], folder / r["diagram"])
        rows[label] = r
    report = {"test": str(test), "outside": str(outside), "bundles": rows}
    write_text_atomic(folder / "open_world.md", open_world_markdown(report))
    report["markdown"] = str(folder / "open_world.md")
    write_json_atomic(folder / "open_world.json", report)
    return report
