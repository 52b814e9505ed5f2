"""A bundle's calibration, applied at run time: tempered event scores, per-tag thresholds, an OOD score.

A network trained with cross-entropy is over-confident, and a closed-set model gives some answer to
every input, however foreign. ``fusionedge calibrate`` (:mod:`fusionedge.export.calibrate`) fits
its corrections on a labelled validation set through the runtime and stores them in the manifest's
``calibration`` block; this module reads that block and applies it to the raw model outputs:

* **Temperature scaling** (Guo et al., 2017): event probabilities are ``softmax(logits / T)`` with
  the one ``T`` that minimises the validation negative log-likelihood. The top event never changes;
  its probability becomes an honest frequency.
* **Per-tag thresholds**: an audio tag is on when its sigmoid score reaches its own threshold, the one
  that maximises F1 on validation (precision and recall weigh the same; a fixed precision target
  would need an application's cost of a false tag, which a bundle does not know), bagged over
  bootstrap resamples of the validation set because F1 is flat near its maximum.
* **An out-of-distribution score**: the class-conditional Mahalanobis distance (Lee et al., 2018)
  of the logit vector — event logits and audio-tag logits together — to the nearest event class's
  validation mean, under one shared covariance. The bundle exposes no embedding, so the logits are
  the feature space. The energy score (Liu et al., 2020) needs nothing stored, but a clip the model
  was not made for can have low energy exactly because it is confidently wrong (a pure tone heard as
  a siren at 1.00), and the tag logits' joint energy makes that worse; the distance to the class
  means sees that a tone's logit vector looks like no validation class, and it separates outside
  media from the test split better (the comparison is in ``training/EXPERIMENTS.md``). The
  threshold is set so that a target share (default 5 %) of validation clips lies above it; a result
  above it is ``uncertain``. Without audio, the score uses the event logits' part of the Gaussians
  and its own threshold.
* **Per-class detection thresholds**: a box is shown when its score reaches its class's threshold,
  the one that maximises F1 at IoU 0.5 on validation (boxes found against boxes shown that are not
  there), bagged over bootstrap resamples of the validation images like the tag thresholds. A
  CenterNet heatmap's peak heights differ by class (a car's centre is surer than a 3-pixel
  pedestrian's), so one threshold for all classes is too low for some and too high for others. A
  caller's explicit ``score_threshold`` still applies to every class.
* **What a missing sensor leaves undecided**: the validation clips are run again with each modality
  removed (its input zeroed, its presence 0, as a dead sensor looks at run time), and the alarm
  decision (top event in ``ALARM_EVENTS`` or not) is scored against the truth. A modality without
  which that accuracy is not above the majority rate by three standard errors is needed for the
  alarm: without it the model can only guess (in the fused task a siren is heard, never seen), so a
  result that lacks it is ``uncertain`` and raises no alarm, whatever its top event. A camera that fails
  while the siren is heard still alarms, because the alarm does not need the camera.

A bundle without the block gives exactly the outputs it always did: plain softmax, tags on at 0.5,
boxes from a score of 0.3, no OOD score, never uncertain. NumPy only: this module is part of the device runtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.postprocess import softmax
from fusionedge.sdk.spec import MODALITIES

__all__ = [
    "ALARM_EVENTS",
    "CALIBRATION_KEY",
    "DEFAULT_SCORE_THRESHOLD",
    "DEFAULT_TAG_THRESHOLD",
    "DETECTION_RULE",
    "METHOD",
    "MISSING_RULE",
    "OOD_SCORE",
    "TAG_RULE",
    "TAG_RULES",
    "Calibration",
    "mahalanobis_min",
]

#: Predicted events that raise an emergency alarm (unless the result is uncertain).
ALARM_EVENTS: tuple[str, ...] = ("emergency_ahead", "emergency_behind")
#: The manifest field holding the block.
CALIBRATION_KEY = "calibration"
METHOD = "temperature"
#: How the tag thresholds are fit: the median max-F1 threshold of bootstrap resamples of the
#: validation set. Bundles calibrated before it hold "max-f1" (the arg-max on the set itself); the
#: runtime reads both, since it only applies the thresholds.
TAG_RULE = "max-f1-bagged"
TAG_RULES: tuple[str, ...] = (TAG_RULE, "max-f1")
OOD_SCORE = "mahalanobis-logits"
#: Where an uncalibrated bundle (or a tag the validation set could not fit) turns a tag on.
DEFAULT_TAG_THRESHOLD = 0.5
#: The lowest detection score kept by an uncalibrated bundle (or for a class the validation set
#: could not fit), unless the caller asks for another.
DEFAULT_SCORE_THRESHOLD = 0.3
#: How the per-class detection thresholds are fit: the median over bootstrap resamples of the
#: validation images of the score cut that maximises F1 at IoU 0.5.
DETECTION_RULE = "max-f1-iou50-bagged"
#: How the missing-modality block decides that a modality is needed for the alarm.
MISSING_RULE = "alarm-accuracy-3se-above-majority"


def mahalanobis_min(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``x`` to the nearest of ``means``.

    Args:
        x: ``(N, D)`` feature rows.
        means: ``(K, D)`` class means.
        precision: ``(D, D)`` inverse of the shared covariance.

    Returns:
        ``(N,)`` ``min_k (x - mu_k)^T P (x - mu_k)``, float64.
    """
    d = np.asarray(x, np.float64)[:, None, :] - np.asarray(means, np.float64)[None]  # (N, K, D)
    return np.einsum("nkd,de,nke->nk", d, np.asarray(precision, np.float64), d).min(axis=1)


@dataclass(frozen=True, eq=False)
class Calibration:
    """The fitted corrections of one bundle (see the module docstring).

    ``class_means`` and ``covariance`` live in the space of ``[event logits, audio-tag logits]``;
    ``threshold`` applies to the full vector, ``threshold_events_only`` to the event part when audio
    is missing.
    """

    temperature: float
    tag_thresholds: dict[str, float]
    class_means: np.ndarray  # (K events, D)
    covariance: np.ndarray  # (D, D), positive definite
    threshold: float
    threshold_events_only: float
    target_rate: float
    validation: dict[str, Any]  # {"samples": int, "sha256": hex of the set}
    fitted_tags: tuple[str, ...] = ()  # tags whose threshold was fit (the others keep 0.5)
    # per removed modality: {"samples", "alarm_accuracy", "majority", "alarm_decided"}: whether the alarm
    # is still decided without it; {} when not fit
    missing_modality: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tag_rule: str = TAG_RULE  # how the tag thresholds were fit (TAG_RULES)
    # per object class, the lowest score of a box shown; {} when not fit (bundles calibrated before it)
    detection_thresholds: Mapping[str, float] = field(default_factory=dict)
    fitted_objects: tuple[str, ...] = ()  # classes whose threshold was fit (the others keep 0.3)

    def __post_init__(self) -> None:
        k = self.class_means.shape[0]
        cov = self.covariance
        object.__setattr__(self, "_precision", np.linalg.inv(cov))
        object.__setattr__(self, "_precision_events", np.linalg.inv(cov[:k, :k]))

    # ------------------------------------------------------------------------------ the manifest

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Calibration | None:
        """The block of a schema-checked manifest, or None when the bundle has none.

        Raises:
            BundleError: the block is malformed or does not fit the bundle's labels (the field named).
        """
        block = manifest.get(CALIBRATION_KEY)
        if block is None:
            return None
        events = list(manifest["labels"]["events"])
        tags = list(manifest["labels"]["audio_tags"])
        where = CALIBRATION_KEY
        if not (events and tags):
            raise _fail(where, "a calibration needs the event and audio-tag heads; this bundle lacks one")
        if not isinstance(block, dict):
            raise _fail(where, "expected an object")
        if block.get("method") != METHOD:
            raise _fail(f"{where}.method", f"expected {METHOD!r}, got {block.get('method')!r}")
        temperature = _number(block, "temperature", where)
        if temperature <= 0:
            raise _fail(f"{where}.temperature", f"expected a value > 0, got {temperature}")
        tag_rule = block.get("tag_threshold_rule")
        if tag_rule not in TAG_RULES:
            raise _fail(f"{where}.tag_threshold_rule", f"expected one of {', '.join(map(repr, TAG_RULES))}")
        raw = block.get("tag_thresholds")
        if not isinstance(raw, dict) or set(raw) != set(tags):
            raise _fail(f"{where}.tag_thresholds", f"expected one threshold per audio tag ({', '.join(tags)})")
        thresholds = {t: _number(raw, t, f"{where}.tag_thresholds") for t in tags}
        if any(not 0.0 <= v <= 1.0 for v in thresholds.values()):
            raise _fail(f"{where}.tag_thresholds", "expected thresholds in [0, 1]")
        fitted = block.get("fitted_tags", [])
        if not isinstance(fitted, list) or not set(fitted) <= set(tags):
            raise _fail(f"{where}.fitted_tags", "expected a list of the bundle's audio tags")
        ood = block.get("ood")
        if not isinstance(ood, dict):
            raise _fail(f"{where}.ood", "expected an object")
        if ood.get("score") != OOD_SCORE:
            raise _fail(f"{where}.ood.score", f"expected {OOD_SCORE!r}, got {ood.get('score')!r}")
        dim = len(events) + len(tags)
        means = _matrix(ood, "class_means", f"{where}.ood", (len(events), dim))
        cov = _matrix(ood, "covariance", f"{where}.ood", (dim, dim))
        if not np.allclose(cov, cov.T) or np.any(np.linalg.eigvalsh(cov) <= 0):
            raise _fail(f"{where}.ood.covariance", "expected a symmetric positive definite matrix")
        rate = _number(ood, "target_rate", f"{where}.ood")
        if not 0.0 < rate < 1.0:
            raise _fail(f"{where}.ood.target_rate", f"expected a rate in (0, 1), got {rate}")
        validation = block.get("validation")
        if not isinstance(validation, dict) or not isinstance(validation.get("samples"), int):
            raise _fail(f"{where}.validation", "expected an object with 'samples' and 'sha256'")
        return cls(
            temperature=temperature, tag_thresholds=thresholds, class_means=means, covariance=cov,
            threshold=_number(ood, "threshold", f"{where}.ood"),
            threshold_events_only=_number(ood, "threshold_events_only", f"{where}.ood"),
            target_rate=rate, validation=dict(validation), fitted_tags=tuple(fitted),
            missing_modality=_missing_block(block.get("missing_modality"), f"{where}.missing_modality"),
            tag_rule=str(tag_rule),
            **_detection_block(block.get("detection_thresholds"), list(manifest["labels"].get("objects", ())),
                               f"{where}.detection_thresholds"),
        )

    def to_manifest(self) -> dict[str, Any]:
        """The ``calibration`` block as the manifest stores it (plain JSON types)."""
        return {
            "method": METHOD,
            "temperature": float(self.temperature),
            "tag_threshold_rule": self.tag_rule,
            "tag_thresholds": {t: float(v) for t, v in self.tag_thresholds.items()},
            "fitted_tags": list(self.fitted_tags),
            "ood": {
                "score": OOD_SCORE,
                "threshold": float(self.threshold),
                "threshold_events_only": float(self.threshold_events_only),
                "target_rate": float(self.target_rate),
                "class_means": self.class_means.astype(float).tolist(),
                "covariance": self.covariance.astype(float).tolist(),
            },
            "validation": dict(self.validation),
            **self._missing_manifest(),
            **self._detection_manifest(),
        }

    def _detection_manifest(self) -> dict[str, Any]:
        if not self.detection_thresholds:
            return {}
        return {"detection_thresholds": {"rule": DETECTION_RULE,
                                         "thresholds": {c: float(v) for c, v in self.detection_thresholds.items()},
                                         "fitted": list(self.fitted_objects)}}

    def _missing_manifest(self) -> dict[str, Any]:
        if not self.missing_modality:
            return {}
        block = {m: dict(v) for m, v in self.missing_modality.items()}
        return {"missing_modality": {"rule": MISSING_RULE, **block}}

    # ----------------------------------------------------------------------------- applying it

    def event_probs(self, event_logits: np.ndarray) -> np.ndarray:
        """``softmax(logits / T)`` along the last axis (float64)."""
        return softmax(np.asarray(event_logits, np.float64) / self.temperature)

    def tags_on(self, tag_scores: Mapping[str, float]) -> tuple[str, ...]:
        """The tags whose sigmoid score reaches their threshold, in the given order."""
        return tuple(t for t, s in tag_scores.items() if s >= self.tag_thresholds[t])

    def ood_scores(self, event_logits: np.ndarray, tag_logits: np.ndarray | None) -> np.ndarray:
        """The OOD score of each row: over event and tag logits, or the event logits alone (no audio).

        Args:
            event_logits: ``(N, K)``.
            tag_logits: ``(N, T)``, or None when audio was missing.

        Returns:
            ``(N,)`` squared Mahalanobis distances; higher is farther from the validation data.

        Raises:
            InputError: the logits are not finite or not of the fitted sizes.
        """
        ev = np.asarray(event_logits, np.float64)
        k = self.class_means.shape[0]
        if ev.ndim != 2 or ev.shape[1] != k:
            raise InputError(f"event logits must be (N, {k}), got {ev.shape}")
        if tag_logits is None:
            x, means, prec = ev, self.class_means[:, :k], self._precision_events
        else:
            x = np.concatenate([ev, np.asarray(tag_logits, np.float64)], axis=1)
            if x.shape[1] != self.class_means.shape[1]:
                raise InputError(f"tag logits must be (N, {self.class_means.shape[1] - k}), got "
                                 f"{np.shape(tag_logits)}")
            means, prec = self.class_means, self._precision
        if not np.all(np.isfinite(x)):
            raise InputError("event or tag logits contain NaN or Inf; check the model and its input")
        return mahalanobis_min(x, means, prec)

    def is_uncertain(self, score: float | np.ndarray, *, has_audio: bool = True,
                     has_video: bool = True) -> bool | np.ndarray:
        """Whether a result is uncertain: its OOD score lies above the threshold of its kind (with or
        without audio), or it lacks a modality without which the alarm could not be decided."""
        limit = self.threshold if has_audio else self.threshold_events_only
        out = np.asarray(score) > limit
        if any(m in self.alarm_needs for m, present in (("audio", has_audio), ("video", has_video)) if not present):
            out = np.ones_like(out, dtype=bool)
        return bool(out) if out.ndim == 0 else out

    @property
    def alarm_needs(self) -> tuple[str, ...]:
        """The modalities without which validation showed the alarm cannot be decided."""
        return tuple(m for m, v in self.missing_modality.items() if not v["alarm_decided"])


def _missing_block(block: Any, where: str) -> dict[str, dict[str, Any]]:
    """The ``missing_modality`` block (absent in bundles calibrated before it existed: no rule)."""
    if block is None:
        return {}
    if not isinstance(block, dict) or block.get("rule") != MISSING_RULE:
        raise _fail(where, f"expected an object with rule {MISSING_RULE!r}")
    out = {}
    for m, v in block.items():
        if m == "rule":
            continue
        if m not in MODALITIES or not isinstance(v, dict) or not isinstance(v.get("alarm_decided"), bool):
            raise _fail(f"{where}.{m}", f"expected one of {', '.join(MODALITIES)} with a boolean 'alarm_decided'")
        out[m] = dict(v)
    return out


def _detection_block(block: Any, objects: list[str], where: str) -> dict[str, Any]:
    """The ``detection_thresholds`` block as ``Calibration`` fields (absent: none, as before it existed)."""
    if block is None:
        return {}
    if not objects:
        raise _fail(where, "the bundle has no object classes, so no detection thresholds")
    if not isinstance(block, dict) or block.get("rule") != DETECTION_RULE:
        raise _fail(where, f"expected an object with rule {DETECTION_RULE!r}")
    raw = block.get("thresholds")
    if not isinstance(raw, dict) or set(raw) != set(objects):
        raise _fail(f"{where}.thresholds", f"expected one threshold per object class ({', '.join(objects)})")
    thresholds = {c: _number(raw, c, f"{where}.thresholds") for c in objects}
    if any(not 0.0 <= v <= 1.0 for v in thresholds.values()):
        raise _fail(f"{where}.thresholds", "expected thresholds in [0, 1]")
    fitted = block.get("fitted", [])
    if not isinstance(fitted, list) or not set(fitted) <= set(objects):
        raise _fail(f"{where}.fitted", "expected a list of the bundle's object classes")
    return {"detection_thresholds": thresholds, "fitted_objects": tuple(fitted)}


def _fail(where: str, message: str) -> BundleError:
    return BundleError(f"manifest.json: field '{where}': {message}")


def _number(obj: Mapping[str, Any], key: str, where: str) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(f"{where}.{key}", f"expected a finite number, got {v!r}")
    return float(v)


def _matrix(obj: Mapping[str, Any], key: str, where: str, shape: Sequence[int]) -> np.ndarray:
    try:
        a = np.asarray(obj.get(key), dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise _fail(f"{where}.{key}", f"expected a {shape[0]}x{shape[1]} matrix of numbers") from e
    if a.shape != tuple(shape) or not np.all(np.isfinite(a)):
        raise _fail(f"{where}.{key}", f"expected a {shape[0]}x{shape[1]} matrix of finite numbers, got "
                                      f"shape {a.shape}")
    return a
