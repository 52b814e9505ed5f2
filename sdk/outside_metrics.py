"""Open-world metrics: false alarms, siren recall and calibration on clips the model was not made for.

A model that scores well on its own generator's scenes can still be confidently wrong on anything
else: a beep heard as a siren, silence heard as a horn. These functions score that, on a manifest
whose samples carry an ``outside`` block (written by ``fusionedge data outside``)::

    "outside": {"kind": "tone", "expect": {"siren": false, "alarm": false, "silent": false,
                                          "event_defined": true}, ...}

``expect.siren`` says a siren is audible, ``expect.alarm`` that an emergency alarm (a predicted
``emergency_ahead`` or ``emergency_behind``) is right, ``expect.silent`` that the clip has no sound,
and ``expect.event_defined`` that the sample's ``event`` label holds by construction (only those
clips count for the event head's calibration). :func:`outside_metrics` turns the model's event
probabilities and tag scores into the rates, overall and per kind; :func:`expected_calibration_error`
is the usual top-label ECE. An audio tag counts as raised at a score of 0.5, like ``fusionedge
predict`` shows it, unless the caller passes the tag decisions of a calibrated bundle
(:mod:`fusionedge.sdk.calibration`); a result the bundle marks ``uncertain`` raises no alarm, and
:func:`ood_auroc` scores how well its OOD score tells outside clips from in-distribution ones. Every
outside video is a test pattern, a fractal, noise or a flat colour, never a road, so a shown
``emergency_vehicle`` box on one, or an event that needs a light bar seen, is wrong by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from fusionedge.sdk.calibration import ALARM_EVENTS, DEFAULT_TAG_THRESHOLD
from fusionedge.sdk.datamanifest import Sample
from fusionedge.sdk.errors import DataError, InputError

__all__ = [
    "ALARM_EVENTS",
    "EMERGENCY_OBJECT",
    "LIGHTS_EVENTS",
    "TAG_THRESHOLD",
    "OutsideLabel",
    "expected_calibration_error",
    "has_outside",
    "ood_auroc",
    "outside_label",
    "outside_markdown",
    "outside_metrics",
]

#: An audio tag counts as raised at this score.
TAG_THRESHOLD = DEFAULT_TAG_THRESHOLD
#: Predicted events that say an emergency vehicle's lights were seen.
LIGHTS_EVENTS: tuple[str, ...] = ("emergency_ahead", "lights_no_siren")
#: The object class whose box on a video without a road counts as a false emergency box.
EMERGENCY_OBJECT = "emergency_vehicle"
_EXPECT = ("siren", "alarm", "silent", "event_defined")


@dataclass(frozen=True)
class OutsideLabel:
    """The ``outside`` block of one sample: its kind and which metrics it counts for."""

    kind: str
    siren: bool
    alarm: bool
    silent: bool
    event_defined: bool


def outside_label(sample: Sample) -> OutsideLabel | None:
    """The sample's ``outside`` block, or None when it has none.

    Raises:
        DataError: the block is malformed (not an object, no ``kind`` string, an ``expect`` field
            missing or not a boolean).
    """
    block = sample.meta.get("outside")
    if block is None:
        return None
    where = f"sample {sample.id!r}: field 'outside'"
    if not isinstance(block, dict):
        raise DataError(f"{where}: must be an object, got {type(block).__name__}")
    kind = block.get("kind")
    if not isinstance(kind, str) or not kind:
        raise DataError(f"{where}.kind: must be a non-empty string, got {kind!r}")
    expect = block.get("expect")
    if not isinstance(expect, dict):
        raise DataError(f"{where}.expect: must be an object with {', '.join(_EXPECT)}")
    flags = {}
    for k in _EXPECT:
        v = expect.get(k)
        if not isinstance(v, bool):
            raise DataError(f"{where}.expect.{k}: must be true or false, got {v!r}")
        flags[k] = v
    return OutsideLabel(kind, **flags)


def has_outside(samples: Sequence[Sample]) -> bool:
    """Whether any sample carries an ``outside`` block."""
    return any("outside" in s.meta for s in samples)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error.

    The samples are binned by their top probability into ``n_bins`` equal-width bins over [0, 1]
    (a bin holds ``(lo, hi]``; the first also 0); ECE is the sample-weighted mean over the bins of
    ``|accuracy - mean confidence|``.

    Args:
        probs: ``(N, C)`` class probabilities, rows summing to 1.
        y_true: ``(N,)`` true class indices.
        n_bins: number of bins (>= 1).

    Returns:
        ECE in [0, 1].

    Raises:
        InputError: shapes disagree, N is 0, a probability is outside [0, 1] or not finite, a class
            index is out of range, or ``n_bins`` < 1.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    if p.ndim != 2 or p.shape[0] == 0 or y.shape != (p.shape[0],):
        raise InputError(f"probs must be (N, C) with N > 0 and y_true (N,), got {p.shape} and {y.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise InputError("probs must be finite and in [0, 1]")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise InputError(f"y_true must hold class indices in [0, {p.shape[1]})")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise InputError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def ood_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float | None:
    """Area under the ROC curve of an OOD score, outside clips the positives (higher score = outside).

    The probability that an outside clip scores above an in-distribution one, ties counting half
    (the Mann-Whitney statistic).

    Args:
        in_scores: ``(N,)`` scores of in-distribution clips.
        out_scores: ``(M,)`` scores of outside clips.

    Returns:
        AUROC in [0, 1], or None when either group is empty.

    Raises:
        InputError: a score is NaN or Inf.
    """
    a = np.asarray(in_scores, np.float64).ravel()
    b = np.asarray(out_scores, np.float64).ravel()
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("OOD scores must be finite")
    if a.size == 0 or b.size == 0:
        return None
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(both.size)
    ranks[order] = np.arange(1, both.size + 1)
    for v in np.unique(both):  # average rank of tied scores
        tied = both == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[a.size:].sum() - b.size * (b.size + 1) / 2) / (a.size * b.size))


def _rate(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if flags.size else None


def outside_metrics(
    samples: Sequence[Sample],
    event_probs: np.ndarray,
    tag_scores: np.ndarray,
    events: Sequence[str],
    tags: Sequence[str],
    *,
    n_bins: int = 15,
    tags_on: np.ndarray | None = None,
    uncertain: np.ndarray | None = None,
    ood_scores: np.ndarray | None = None,
    box_labels: Sequence[Sequence[str]] | None = None,
) -> dict:
    """Open-world rates of a model on the samples that carry an ``outside`` block.

    Args:
        samples: the evaluated samples, in the order of the rows below.
        event_probs: ``(N, len(events))`` event probabilities (softmax of the event head, tempered
            when the bundle is calibrated).
        tag_scores: ``(N, len(tags))`` audio-tag probabilities (sigmoid of the tag head).
        events, tags: the bundle's vocabularies.
        n_bins: bins of the ECE.
        tags_on: ``(N, len(tags))`` which tags are raised (a calibrated bundle's thresholds); default
            a score of at least 0.5.
        uncertain: ``(N,)`` results the bundle marks uncertain: they raise no alarm. Default none.
        ood_scores: ``(N,)`` the bundle's OOD scores; with them the block has ``ood_auroc``, outside
            clips against the samples without an ``outside`` block.
        box_labels: per sample, the labels of the boxes the runtime shows (at the bundle's score
            thresholds); with them the block has ``nonroad_emergency_box_rate``.

    Returns:
        ``{"outside": {...}}`` with ``samples``; ``false_siren_tag_rate`` and
        ``false_alarm_rate`` on clips without a siren, and ``false_event_rate`` (any event but
        ``none``, lights included) on those of them labelled ``none``; ``siren_recall`` (siren tag raised) and
        ``siren_alarm_recall`` (alarm raised) on sirens; ``silence_any_tag_rate`` on silent clips;
        ``event_ece`` (``n_bins`` bins) and ``event_accuracy`` on clips whose event is defined; and
        ``per_kind``: for each kind ``samples``, ``siren_tag_rate``, ``alarm_rate``,
        ``any_tag_rate``, ``event_accuracy``, ``mean_confidence`` and ``predicted`` (event counts).
        A rate over no clips is None. Empty when no sample has an ``outside`` block. On the clips
        with a video (none of which shows a road): ``nonroad_lights_event_rate`` (a predicted event
        in ``LIGHTS_EVENTS`` not marked uncertain) and, with ``box_labels``,
        ``nonroad_emergency_box_rate`` (an ``emergency_vehicle`` box shown, uncertain or not). With
        ``uncertain``: ``uncertain_rate`` overall and per kind; with ``ood_scores``: ``ood_auroc``.

    Raises:
        DataError: an ``outside`` block is malformed.
        InputError: array shapes do not match the samples and vocabularies.
    """
    probs = np.asarray(event_probs, dtype=np.float64)
    scores = np.asarray(tag_scores, dtype=np.float64)
    n = len(samples)
    if probs.shape != (n, len(events)) or scores.shape != (n, len(tags)):
        raise InputError(f"event_probs must be ({n}, {len(events)}) and tag_scores ({n}, {len(tags)}), "
                         f"got {probs.shape} and {scores.shape}")
    on = scores >= TAG_THRESHOLD if tags_on is None else np.asarray(tags_on, bool)
    unsure = np.zeros(n, bool) if uncertain is None else np.asarray(uncertain, bool)
    if on.shape != scores.shape or unsure.shape != (n,) or (ood_scores is not None and np.shape(ood_scores) != (n,)):
        raise InputError(f"tags_on must be ({n}, {len(tags)}), uncertain and ood_scores ({n},)")
    if box_labels is not None and len(box_labels) != n:
        raise InputError(f"box_labels must hold one list per sample ({n}), got {len(box_labels)}")
    rows = [(i, lab) for i, s in enumerate(samples) if (lab := outside_label(s)) is not None]
    if not rows:
        return {}
    idx = np.array([i for i, _ in rows])
    labs = [lab for _, lab in rows]
    pred = probs[idx].argmax(axis=1)
    alarm_ids = [events.index(e) for e in ALARM_EVENTS if e in events]
    alarm = np.isin(pred, alarm_ids) & ~unsure[idx]
    siren_col = list(tags).index("siren") if "siren" in tags else None
    siren_tag = on[idx, siren_col] if siren_col is not None else np.zeros(len(idx), bool)
    any_tag = on[idx].any(axis=1) if len(tags) else np.zeros(len(idx), bool)
    truth = np.array([events.index(samples[i].event) if samples[i].event in events else -1 for i in idx])
    correct = pred == truth
    none_id = list(events).index("none") if "none" in events else -1
    has_siren = np.array([lab.siren for lab in labs])
    silent = np.array([lab.silent for lab in labs])
    defined = np.array([lab.event_defined and t >= 0 for lab, t in zip(labs, truth)])
    out: dict = {
        "samples": len(idx),
        "false_siren_tag_rate": _rate(siren_tag[~has_siren]),
        "false_alarm_rate": _rate(alarm[~has_siren]),
        "false_event_rate": _rate((pred != none_id)[~has_siren & (truth == none_id)]) if none_id >= 0 else None,
        "siren_recall": _rate(siren_tag[has_siren]),
        "siren_alarm_recall": _rate(alarm[has_siren]),
        "silence_any_tag_rate": _rate(any_tag[silent]),
        "event_accuracy": _rate(correct[defined]),
        "event_ece": (expected_calibration_error(probs[idx][defined], truth[defined], n_bins)
                      if defined.any() else None),
    }
    video = np.array([samples[i].video is not None for i in idx])
    lights_ids = [events.index(e) for e in LIGHTS_EVENTS if e in events]
    out["nonroad_lights_event_rate"] = _rate((np.isin(pred, lights_ids) & ~unsure[idx])[video])
    if box_labels is not None:
        out["nonroad_emergency_box_rate"] = _rate(np.array([EMERGENCY_OBJECT in box_labels[i] for i in idx])[video])
    if uncertain is not None:
        out["uncertain_rate"] = float(unsure[idx].mean())
    if ood_scores is not None:
        inside = np.ones(n, bool)
        inside[idx] = False
        out["ood_auroc"] = ood_auroc(np.asarray(ood_scores)[inside], np.asarray(ood_scores)[idx])
    per_kind: dict[str, dict] = {}
    conf = probs[idx].max(axis=1)
    for kind in dict.fromkeys(lab.kind for lab in labs):
        m = np.array([lab.kind == kind for lab in labs])
        counts = {events[k]: int(c) for k, c in zip(*np.unique(pred[m], return_counts=True))}
        per_kind[kind] = {
            "samples": int(m.sum()),
            "siren_tag_rate": float(siren_tag[m].mean()),
            "alarm_rate": float(alarm[m].mean()),
            "any_tag_rate": float(any_tag[m].mean()),
            "event_accuracy": _rate(correct[m & defined]),
            "mean_confidence": float(conf[m].mean()),
            "predicted": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        }
        if uncertain is not None:
            per_kind[kind]["uncertain_rate"] = float(unsure[idx][m].mean())
    out["per_kind"] = per_kind
    return {"outside": out}


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def outside_markdown(metrics: dict) -> str:
    """A Markdown summary (headline rates, then one row per kind) of :func:`outside_metrics`' block.

    Args:
        metrics: the ``"outside"`` dict (or a dict holding it under ``"outside"``).

    Raises:
        InputError: the dict is not an outside-metrics block.
    """
    m = metrics.get("outside", metrics)
    if not isinstance(m, dict) or "per_kind" not in m:
        raise InputError("not an outside-metrics block (no 'per_kind')")
    head = ("false_siren_tag_rate", "false_alarm_rate", "false_event_rate", "siren_recall", "siren_alarm_recall",
            "silence_any_tag_rate", "event_accuracy", "event_ece", "nonroad_lights_event_rate")
    lines = [f"Outside-media clips: {m['samples']}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(m.get(k))} |" for k in head]
    lines += [f"| {k} | {_fmt(m[k])} |" for k in ("nonroad_emergency_box_rate", "uncertain_rate", "ood_auroc")
              if k in m]  # with boxes; calibrated bundles
    unsure = "uncertain_rate" in m
    lines += ["", "| kind | clips | siren tag | alarm | any tag | event acc. | mean conf. | "
                  + ("uncertain | " if unsure else "") + "predicted events |",
              "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if unsure else "") + "---|"]
    for kind, r in m["per_kind"].items():
        pred = ", ".join(f"{e} {c}" for e, c in r["predicted"].items())
        lines.append(f"| {kind} | {r['samples']} | {_fmt(r['siren_tag_rate'])} | {_fmt(r['alarm_rate'])} | "
                     f"{_fmt(r['any_tag_rate'])} | {_fmt(r['event_accuracy'])} | {_fmt(r['mean_confidence'])} | "
                     + (f"{_fmt(r.get('uncertain_rate'))} | " if unsure else "") + f"{pred} |")
    return "\n".join(lines) + "\n"
