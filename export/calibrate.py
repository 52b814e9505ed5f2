"""Fit a bundle's calibration on validation data and write it into the bundle (``fusionedge calibrate``).

The validation clips go through the runtime — decode, preprocess with the bundle's geometry, ONNX
Runtime (or the backends asked for) — so the corrections fit the deployed model's own logits, and
only NumPy does the fitting (no torch, no SciPy). Five things are fit
(:mod:`fusionedge.sdk.calibration` says what each is and why it was chosen):

* :func:`fit_temperature`: the event temperature minimising validation NLL (a golden-section search
  over ``log T``; the NLL is convex in ``1/T``, so the search finds its one minimum);
* :func:`fit_tag_thresholds`: each audio tag's max-F1 threshold, bagged: the median of the max-F1
  thresholds of bootstrap resamples of the validation clips. F1 is flat near its maximum, so the
  arg-max of one validation set lands anywhere on that plateau (a siren threshold anywhere from 0.16
  to 0.56 between resamples of the same 300 clips); the median over resamples sits in its middle (a
  tag with no positive or no negative clip keeps 0.5 and is not listed as fitted);
* :func:`fit_ood`: the class means and shared covariance of the logit vector, and the threshold that
  a target share of validation clips exceeds. The threshold is set on cross-fitted scores (each fold
  scored by Gaussians fit without it), so that unseen in-distribution clips exceed it about as often
  as the target says rather than more.
* :func:`fit_detection_thresholds`: each object class's max-F1 score threshold at IoU 0.5, bagged
  over bootstrap resamples of the validation images as the tag thresholds are;
* :func:`fit_missing_modality`: for each modality the model reads, whether the alarm decision is
  still better than the majority guess with that modality removed (the validation clips run again
  with it zeroed); a result without a modality the alarm needs is then ``uncertain``.

:func:`calibrate_bundle` stores the result as the manifest's ``calibration`` block, rewriting
``manifest.json`` atomically; no other file changes. The block is part of the bundle's digest — it
changes what the bundle answers — so a signed bundle's ``manifest.sig`` would no longer verify:
calibrating one is refused unless it is re-signed (``sign_key``) or the stale signature is removed
(``drop_signature``). Nothing is written when any step fails.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.bundle import MANIFEST_NAME, load_bundle, manifest_digest, validate_manifest
from fusionedge.sdk.bundle_signature import renew_signature, signing_for_change
from fusionedge.sdk.calibration import (
    ALARM_EVENTS,
    CALIBRATION_KEY,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_TAG_THRESHOLD,
    Calibration,
    mahalanobis_min,
)
from fusionedge.sdk.datamanifest import Sample, manifest_path, read_manifest
from fusionedge.sdk.errors import BundleError, DataError, InputError
from fusionedge.sdk.evaluate import sample_logits
from fusionedge.sdk.fileio import write_json_atomic
from fusionedge.sdk.metrics import ClassMatches, match_detections
from fusionedge.sdk.outside_metrics import expected_calibration_error
from fusionedge.sdk.postprocess import Detection, sigmoid, softmax

__all__ = [
    "DEFAULT_TARGET_OOD_RATE",
    "calibrate_bundle",
    "detection_f1",
    "fit_detection_thresholds",
    "fit_calibration",
    "fit_missing_modality",
    "fit_ood",
    "fit_tag_thresholds",
    "fit_temperature",
    "negative_log_likelihood",
]

#: Share of validation clips above the OOD threshold, unless asked otherwise.
DEFAULT_TARGET_OOD_RATE = 0.05
_T_RANGE = (1e-2, 1e2)
_FOLDS = 5
_RIDGE = 1e-3  # added to the covariance's diagonal, relative to its mean variance


def _check_logits(logits: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(logits, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{what} must be a non-empty (N, C) array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} contain NaN or Inf; the model's outputs cannot be calibrated")
    return a


def _check_labels(y: np.ndarray, n: int, classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes:
        raise InputError(f"labels must be ({n},) class indices in [0, {classes})")
    return y.astype(np.int64)


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of the true classes under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al., 2017).

    Args:
        logits: ``(N, C)`` event logits of validation clips.
        y: ``(N,)`` their true classes; at least two different ones.

    Returns:
        ``T`` in [0.01, 100] (to 1e-6 relative).

    Raises:
        InputError: NaN/Inf logits, or shapes that disagree.
        DataError: the labels hold a single class (every ``T`` below the fit's range would do).
    """
    z = _check_logits(logits, "event logits")
    y = _check_labels(y, z.shape[0], z.shape[1])
    if np.unique(y).size < 2:
        raise DataError("the validation set holds a single event class; a temperature needs at least two")
    lo, hi = math.log(_T_RANGE[0]), math.log(_T_RANGE[1])
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = negative_log_likelihood(z, y, math.exp(a)), negative_log_likelihood(z, y, math.exp(b))
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = negative_log_likelihood(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = negative_log_likelihood(z, y, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def _max_f1_cut(scores: np.ndarray, tp: np.ndarray, weight: np.ndarray, positives: float) -> float:
    """The cut between distinct scores that maximises F1 (ties: the higher cut).

    ``scores`` sorted descending; ``tp`` 1 for a true positive; ``weight`` how often each item counts
    (a bootstrap resample's multiplicity); ``positives`` the weighted number of true items, found or not.
    """
    tp_sum = np.cumsum(tp * weight)
    kept = np.cumsum(weight)
    last = np.r_[scores[1:] != scores[:-1], True]  # the last position of each run of equal scores
    k = np.flatnonzero(last)  # kept: score >= scores[k], i.e. the first k+1 items
    f1 = 2 * tp_sum[k] / (kept[k] + positives)
    best = int(k[int(np.argmax(f1))])
    below = scores[best + 1] if best + 1 < len(scores) else None
    return float(scores[best] if below is None else (scores[best] + below) / 2)


def _max_f1_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The cut between distinct scores that maximises F1 (ties: the higher cut)."""
    order = np.argsort(-scores, kind="stable")
    t = truth[order]
    return _max_f1_cut(scores[order], t, np.ones_like(t), float(t.sum()))


#: Bootstrap resamples of the validation clips whose max-F1 thresholds are bagged.
TAG_RESAMPLES = 200


def _bagged_max_f1_threshold(scores: np.ndarray, truth: np.ndarray, resamples: int, seed: int) -> float:
    """The median of the max-F1 thresholds of ``resamples`` bootstrap resamples (seeded), skipping a
    resample without a positive or a negative clip; the plain max-F1 threshold if all are skipped."""
    rng = np.random.default_rng(seed)
    n, found = len(scores), []
    for _ in range(resamples):
        i = rng.integers(0, n, n)
        t = truth[i]
        if 0 < t.sum() < n:
            found.append(_max_f1_threshold(scores[i], t))
    return float(np.median(found)) if found else _max_f1_threshold(scores, truth)


def fit_tag_thresholds(
    tag_scores: np.ndarray, tag_true: np.ndarray, tags: Sequence[str], *, resamples: int = TAG_RESAMPLES,
    seed: int = 0,
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Each audio tag's bagged max-F1 threshold on validation scores.

    Args:
        tag_scores: ``(N, T)`` sigmoid scores.
        tag_true: ``(N, T)`` 0/1 truth.
        tags: the T tag names.
        resamples: bootstrap resamples whose max-F1 thresholds are bagged (0: the plain max-F1
            threshold of the whole set).
        seed: of the resampling (the same scores always give the same thresholds).

    Returns:
        ``({tag: threshold}, fitted tags)``; a tag with no positive or no negative clip keeps 0.5.

    Raises:
        InputError: NaN/Inf scores or shapes that disagree.
    """
    s = _check_logits(tag_scores, "tag scores")
    t = np.asarray(tag_true, dtype=np.float64)
    if t.shape != s.shape or s.shape[1] != len(tags):
        raise InputError(f"tag scores {s.shape} and truth {t.shape} must both be (N, {len(tags)})")
    thresholds, fitted = {}, []
    for j, tag in enumerate(tags):
        pos = t[:, j] > 0.5
        if pos.all() or not pos.any():
            thresholds[tag] = DEFAULT_TAG_THRESHOLD
            continue
        truth = pos.astype(np.float64)
        thresholds[tag] = (_bagged_max_f1_threshold(s[:, j], truth, resamples, seed + j) if resamples > 0
                           else _max_f1_threshold(s[:, j], truth))
        fitted.append(tag)
    return thresholds, tuple(fitted)


def fit_detection_thresholds(
    predictions: list[list[Detection]],
    ground_truth: list[list[tuple[str, float, float, float, float]]],
    objects: Sequence[str],
    *,
    resamples: int = TAG_RESAMPLES,
    seed: int = 0,
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Each object class's bagged max-F1 score threshold on validation detections.

    A box counts as found when it matches a true box of its class at IoU >= 0.5
    (:func:`~fusionedge.sdk.metrics.match_detections`); F1 weighs boxes found against boxes shown
    that are not there. As for the tags, the threshold is the median of the max-F1 thresholds of
    bootstrap resamples, here of the validation images (a resample keeps each image's boxes together).

    Args:
        predictions: per image, its detections decoded at a low score (so every cut can be tried).
        ground_truth: per image, ``(label, x1, y1, x2, y2)`` in the same pixels.
        objects: the class names.
        resamples: bootstrap resamples whose thresholds are bagged (0: the plain max-F1 threshold).
        seed: of the resampling.

    Returns:
        ``({class: threshold}, fitted classes)``; a class without a true box or without a detection
        keeps the default threshold (``DEFAULT_SCORE_THRESHOLD``) and is not listed as fitted.

    Raises:
        InputError: the lists differ in length, or an unknown label or bad box appears.
    """
    return _fit_detection_thresholds(match_detections(predictions, ground_truth, objects), resamples, seed)


def _fit_detection_thresholds(matches: Mapping[str, ClassMatches], resamples: int = TAG_RESAMPLES,
                              seed: int = 0) -> tuple[dict[str, float], tuple[str, ...]]:
    """:func:`fit_detection_thresholds` on already matched detections (one class per key)."""
    thresholds, fitted = {}, []
    for j, (lab, m) in enumerate(matches.items()):
        if m.n_gt == 0 or len(m.scores) == 0:
            thresholds[lab] = DEFAULT_SCORE_THRESHOLD
            continue
        rng = np.random.default_rng([seed, j])
        n, found = len(m.gt_per_image), []
        for _ in range(resamples):
            w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
            positives = float(w @ m.gt_per_image)
            if positives > 0:
                found.append(_max_f1_cut(m.scores, m.tp, w[m.image], positives))
        thresholds[lab] = (float(np.median(found)) if found
                           else _max_f1_cut(m.scores, m.tp, np.ones(len(m.tp)), float(m.n_gt)))
        fitted.append(lab)
    return thresholds, tuple(fitted)


def detection_f1(
    predictions: list[list[Detection]],
    ground_truth: list[list[tuple[str, float, float, float, float]]],
    objects: Sequence[str],
    thresholds: dict[str, float],
) -> dict[str, float]:
    """F1 at IoU 0.5 of each class with a true box, keeping its boxes scoring >= its threshold."""
    return _detection_f1(match_detections(predictions, ground_truth, objects), thresholds)


def _detection_f1(matches: Mapping[str, ClassMatches], thresholds: Mapping[str, float]) -> dict[str, float]:
    """:func:`detection_f1` on already matched detections."""
    out = {}
    for lab, m in matches.items():
        if m.n_gt:
            keep = m.scores >= thresholds[lab]
            out[lab] = float(2 * m.tp[keep].sum() / (keep.sum() + m.n_gt))
    return out


def _gaussians(x: np.ndarray, y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(means of the present classes, which classes, shared covariance + ridge)``."""
    present = np.unique(y)
    means = np.stack([x[y == k].mean(axis=0) for k in present])
    centred = x - means[np.searchsorted(present, y)]
    cov = centred.T @ centred / len(x)
    cov = (cov + cov.T) / 2 + np.eye(x.shape[1]) * (_RIDGE * max(float(np.trace(cov)) / x.shape[1], 1e-12))
    return means, present, cov


def _cross_fit_scores(x: np.ndarray, y: np.ndarray, classes: int, k_events: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's score (full vector, event part) under Gaussians fit on the other folds."""
    n = len(x)
    folds = np.arange(n) % min(_FOLDS, n)
    full, events = np.empty(n), np.empty(n)
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        if not train.any():  # a single clip: score it against itself
            train = test
        means, _, cov = _gaussians(x[train], y[train], classes)
        full[test] = mahalanobis_min(x[test], means, np.linalg.inv(cov))
        events[test] = mahalanobis_min(x[test, :k_events], means[:, :k_events],
                                       np.linalg.inv(cov[:k_events, :k_events]))
    return full, events


def fit_ood(
    event_logits: np.ndarray, tag_logits: np.ndarray, y: np.ndarray, target_rate: float
) -> dict[str, Any]:
    """Class means, shared covariance and thresholds of the logit-space Mahalanobis score.

    Args:
        event_logits: ``(N, K)`` validation event logits (clips with audio).
        tag_logits: ``(N, T)`` their audio-tag logits.
        y: ``(N,)`` true event classes; every one of the K must occur.
        target_rate: share of validation clips the threshold leaves above it, in (0, 1).

    Returns:
        ``{"class_means" (K, K+T), "covariance" (K+T, K+T), "threshold", "threshold_events_only",
        "validation_scores" (N,)}`` — the scores cross-fitted as the threshold was.

    Raises:
        InputError: NaN/Inf logits, shapes that disagree, or a rate outside (0, 1).
        DataError: an event class has no validation clip.
    """
    ev = _check_logits(event_logits, "event logits")
    tg = _check_logits(tag_logits, "tag logits")
    if tg.shape[0] != ev.shape[0]:
        raise InputError(f"event logits {ev.shape} and tag logits {tg.shape} have different N")
    k = ev.shape[1]
    y = _check_labels(y, ev.shape[0], k)
    if not 0.0 < float(target_rate) < 1.0:
        raise InputError(f"target OOD rate must be in (0, 1), got {target_rate!r}")
    if np.unique(y).size < k:
        raise DataError(f"the validation set has no clip of {k - np.unique(y).size} of the {k} event classes; "
                        f"the OOD score needs every class")
    x = np.concatenate([ev, tg], axis=1)
    means, _, cov = _gaussians(x, y, k)
    full, events = _cross_fit_scores(x, y, k, k)
    q = 1.0 - float(target_rate)
    return {"class_means": means, "covariance": cov, "threshold": float(np.quantile(full, q)),
            "threshold_events_only": float(np.quantile(events, q)), "validation_scores": full}


def fit_missing_modality(
    event_logits_without: dict[str, np.ndarray], y: np.ndarray, events: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Whether the alarm decision survives each modality's removal.

    The alarm decision is "the top event is one of ``ALARM_EVENTS``". Without a modality it counts as
    decided when its validation accuracy exceeds the majority rate (always saying the more common
    answer) by three binomial standard errors; otherwise the model only guesses without it.

    Args:
        event_logits_without: per removed modality (``"audio"``, ``"video"``), the ``(N, K)`` event logits
            of the validation clips run without it.
        y: ``(N,)`` true event classes.
        events: the K event names.

    Returns:
        Per modality ``{"samples", "alarm_accuracy", "majority", "alarm_decided"}``; ``{}`` when no
        event of the task raises an alarm.

    Raises:
        InputError: NaN/Inf logits or shapes that disagree.
    """
    alarm = np.array([e in ALARM_EVENTS for e in events])
    if not alarm.any():
        return {}
    y = np.asarray(y)
    truth = alarm[y]
    majority = float(max(truth.mean(), 1.0 - truth.mean()))
    out = {}
    for m, logits in event_logits_without.items():
        ev = _check_logits(logits, f"event logits without {m}")
        if ev.shape != (len(y), len(events)):
            raise InputError(f"event logits without {m} must be ({len(y)}, {len(events)}), got {ev.shape}")
        accuracy = float(np.mean(alarm[np.argmax(ev, axis=1)] == truth))
        margin = 3.0 * math.sqrt(majority * (1.0 - majority) / len(y))
        out[m] = {"samples": int(len(y)), "alarm_accuracy": accuracy, "majority": majority,
                  "alarm_decided": bool(accuracy > majority + margin)}
    return out


def fit_calibration(
    event_logits: np.ndarray,
    tag_logits: np.ndarray,
    y: np.ndarray,
    tag_true: np.ndarray,
    tags: Sequence[str],
    *,
    has_audio: np.ndarray | None = None,
    target_ood_rate: float = DEFAULT_TARGET_OOD_RATE,
    validation: dict[str, Any] | None = None,
    events: Sequence[str] | None = None,
    event_logits_without: dict[str, np.ndarray] | None = None,
    detection_matches: Mapping[str, ClassMatches] | None = None,
) -> Calibration:
    """Fit temperature, tag thresholds, the OOD score and detection thresholds on validation outputs.

    Args:
        event_logits: ``(N, K)``.
        tag_logits: ``(N, T)``.
        y: ``(N,)`` true event classes.
        tag_true: ``(N, T)`` 0/1 tag truth.
        tags: the T tag names.
        has_audio: ``(N,)`` which clips had audio (default: all); tags and the OOD Gaussians are fit on
            those, the temperature on all.
        target_ood_rate: share of validation clips above the OOD threshold.
        validation: what to record about the set (``samples``, ``sha256``).
        events: the K event names (needed with ``event_logits_without``).
        event_logits_without: per removed modality, the validation event logits without it
            (:func:`fit_missing_modality`); None fits no missing-modality rule.
        detection_matches: per object class, the validation boxes (decoded at a low score) matched
            to the true ones (:func:`~fusionedge.sdk.metrics.match_detections`); with them the
            per-class detection thresholds are fit (:func:`fit_detection_thresholds`).

    Returns:
        The :class:`~fusionedge.sdk.calibration.Calibration`.

    Raises:
        InputError: NaN/Inf logits, shapes that disagree, a bad rate.
        DataError: a single event class, a class without clips, or no clip with audio.
    """
    ev = _check_logits(event_logits, "event logits")
    tg = _check_logits(tag_logits, "tag logits")
    audio = np.ones(len(ev), bool) if has_audio is None else np.asarray(has_audio, bool)
    if audio.shape != (len(ev),) or tg.shape[0] != len(ev):
        raise InputError("event logits, tag logits and has_audio must have the same N")
    temperature = fit_temperature(ev, y)
    if not audio.any():
        raise DataError("no validation clip has audio; tag thresholds and the OOD score need some")
    y = np.asarray(y)
    thresholds, fitted = fit_tag_thresholds(sigmoid(tg[audio]), np.asarray(tag_true)[audio], tags)
    ood = fit_ood(ev[audio], tg[audio], y[audio], target_ood_rate)
    return Calibration(
        temperature=temperature, tag_thresholds=thresholds, class_means=ood["class_means"],
        covariance=ood["covariance"], threshold=ood["threshold"],
        threshold_events_only=ood["threshold_events_only"], target_rate=float(target_ood_rate),
        validation=dict(validation or {"samples": len(ev)}), fitted_tags=fitted,
        missing_modality=fit_missing_modality(event_logits_without, y, list(events or []))
        if event_logits_without else {},
        **_detection_fields(detection_matches),
    )


def _detection_fields(matches: Mapping[str, ClassMatches] | None) -> dict[str, Any]:
    """``Calibration``'s detection fields: none without matched detections, or when no class fits."""
    if not matches:
        return {}
    thresholds, fitted = _fit_detection_thresholds(matches)
    return {"detection_thresholds": thresholds, "fitted_objects": fitted} if fitted else {}


def _detection_summary(matches: Mapping[str, ClassMatches] | None, cal: Calibration) -> dict[str, Any]:
    """Each class's validation F1 at IoU 0.5 with one threshold of 0.3 for all and with its fitted one."""
    if not cal.detection_thresholds or not matches:
        return {}
    return {"detection_f1_before": _detection_f1(matches, {c: DEFAULT_SCORE_THRESHOLD for c in matches}),
            "detection_f1_after": _detection_f1(matches, cal.detection_thresholds)}


def _set_digest(file: Path, samples: Sequence[Sample]) -> str:
    """SHA-256 over the manifest file and every media file it names, in order."""
    h = hashlib.sha256(file.read_bytes())
    for s in samples:
        for path in (s.video, s.audio):
            if path is None:
                continue
            if path.is_dir():  # a folder of frames
                for p in sorted(path.iterdir()):
                    h.update(p.name.encode() + b"\0" + p.read_bytes())
            else:
                h.update(path.read_bytes())
    return h.hexdigest()


def calibrate_bundle(
    bundle: str | os.PathLike,
    data: str | os.PathLike,
    *,
    target_ood_rate: float = DEFAULT_TARGET_OOD_RATE,
    backends: Sequence[str] = ("onnxruntime",),
    batch_size: int = 16,
    progress: bool = False,
    sign_key: Any = None,
    drop_signature: bool = False,
) -> dict[str, Any]:
    """Fit the calibration of a fused-model bundle on a labelled validation set and store it.

    Args:
        bundle: the bundle folder (verified first; rewritten in place).
        data: the validation ``manifest.jsonl`` or its folder; every clip needs an event label.
        target_ood_rate: share of validation clips left above the OOD threshold, in (0, 1).
        backends: the runtime backends to run the clips on, in order.
        batch_size: clips per backend call.
        progress: a progress bar on stderr.
        sign_key: an ed25519 private key to re-sign a signed bundle with (its old signature stops
            verifying once the manifest changes).
        drop_signature: remove a signed bundle's ``manifest.sig`` instead of re-signing it.

    Returns:
        A summary: ``bundle``, ``calibration`` (the stored block without its matrices),
        ``validation`` (samples, NLL and ECE before/after on the validation set itself, share
        uncertain), ``digest`` (before, after) and ``signature`` ("none", "signed" or "removed").

    Raises:
        InputError: a rate outside (0, 1), a non-positive batch size, or NaN/Inf logits.
        BundleError: an invalid bundle, a bundle that is not the fused model, or a signed one
            without ``sign_key`` or ``drop_signature``.
        DataError: an empty or invalid validation set, a single event class, a class without clips.
        MediaError: a media file cannot be decoded.
    """
    from fusionedge.sdk.perception import Perception

    if not 0.0 < float(target_ood_rate) < 1.0:
        raise InputError(f"target OOD rate must be in (0, 1), got {target_ood_rate!r}")
    if int(batch_size) < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size!r}")
    root = Path(bundle)
    signed, key = signing_for_change(root, "calibrating", sign_key, drop_signature)
    t0 = time.perf_counter()
    with Perception.load(root, backends=backends) as p:
        if p.generic is not None:
            raise BundleError(f"{p.model} is an imported {p.bundle.task} model; calibration fits the fused "
                              f"camera + audio model")
        labels = p.labels
        events, tags = list(labels["events"]), list(labels["audio_tags"])
        if not (events and tags):
            raise BundleError(f"{p.model} has no {'event' if not events else 'audio-tag'} head; calibration fits "
                              f"the event and audio-tag heads together")
        samples = read_manifest(data, require_labels=True, events=events, audio_tags=tags,
                                objects=list(labels["objects"]))
        if not samples:
            raise DataError(f"{data}: no validation samples")
        if len({s.event for s in samples}) < 2:  # before running anything: no temperature can be fit
            raise DataError(f"{data}: the validation set holds a single event class; a temperature needs at "
                            f"least two")
        # what a dead sensor leaves: the fused model's clips run again with each modality zeroed
        dead = p.modalities if len(p.modalities) == 2 and any(e in ALARM_EVENTS for e in events) else ()
        objects = list(labels["objects"])
        out = sample_logits(p, samples, batch_size=int(batch_size), progress=progress, desc="calibrate",
                            without=dead, detections=bool(objects))
        old_manifest = p.bundle.manifest
    y = np.array([events.index(s.event) for s in samples])
    tag_true = np.array([[t in s.audio_tags for t in tags] for s in samples], np.float64)
    validation = {"samples": len(samples), "sha256": _set_digest(manifest_path(data), samples)}
    # the validation boxes matched to the true ones once, for the fit and for the summary
    matches = match_detections(out["detections"], [[(b.label, b.x1, b.y1, b.x2, b.y2) for b in s.boxes]
                                                   for s in samples], objects) if objects else None
    cal = fit_calibration(out["event_logits"], out["tag_logits"], y, tag_true, tags, has_audio=out["has_audio"],
                          target_ood_rate=target_ood_rate, validation=validation, events=events,
                          event_logits_without=out.get("event_logits_without"), detection_matches=matches)
    manifest = {k: v for k, v in old_manifest.items()}
    manifest[CALIBRATION_KEY] = cal.to_manifest()
    validate_manifest(manifest)
    Calibration.from_manifest(manifest)  # the block reads back as written
    before = manifest_digest(old_manifest)
    write_json_atomic(root / MANIFEST_NAME, manifest)
    signature = renew_signature(root, signed, key)
    after = load_bundle(root).digest

    ev = out["event_logits"]
    audio = out["has_audio"]
    scores = cal.ood_scores(ev[audio], out["tag_logits"][audio])
    block = {k: v for k, v in cal.to_manifest().items() if k != "ood"}
    block["ood"] = {k: v for k, v in cal.to_manifest()["ood"].items() if k not in ("class_means", "covariance")}
    return {
        "bundle": str(root),
        "calibration": block,
        "validation": {
            "samples": len(samples),
            "nll_before": negative_log_likelihood(ev, y),
            "nll_after": negative_log_likelihood(ev, y, cal.temperature),
            "ece_before": expected_calibration_error(softmax(ev), y),
            "ece_after": expected_calibration_error(cal.event_probs(ev), y),
            "uncertain_rate": float(np.mean(scores > cal.threshold)),
            **_detection_summary(matches, cal),
        },
        "digest": {"before": before, "after": after},
        "signature": signature,
        "seconds": round(time.perf_counter() - t0, 3),
    }
