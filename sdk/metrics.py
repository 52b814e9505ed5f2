"""Evaluation metrics in NumPy: event accuracy and macro-F1, audio-tag mAP, detection VOC mAP@0.5.

Definitions follow the usual references so numbers compare with published ones:
:func:`average_precision` is scikit-learn's ``average_precision_score`` (step-wise area under the
precision-recall curve, tied scores form one threshold); :func:`detection_map50` is PASCAL VOC's
all-point interpolated AP with continuous IoU (no ``+1`` pixel), matching each prediction greedily
(by descending score over the whole set) to the best still-unmatched ground-truth box of its class.
An undefined metric (no positives, no ground truth) is ``nan``, never a made-up 0. COCO's AP50 and
AP50:95 (101-point, what COCO tools print as mAP50 and mAP50-95) are in :mod:`fusionedge.sdk.coco`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.postprocess import Detection

__all__ = [
    "event_accuracy",
    "event_macro_f1",
    "average_precision",
    "audio_tag_map",
    "detection_map50",
    "detection_ap_per_class",
    "match_detections",
    "ClassMatches",
    "iou_xyxy",
]


def event_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples whose predicted class equals the true one.

    Args:
        y_true: ``(N,)`` integer class indices.
        y_pred: ``(N,)`` integer class indices.

    Returns:
        Accuracy in [0, 1].

    Raises:
        InputError: shapes differ, N = 0, or the labels are not integers.
    """
    t, p = _labels_pair(y_true, y_pred)
    return float(np.mean(t == p))


def event_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean of the per-class F1 over the classes that occur in ``y_true`` or ``y_pred``.

    Per class ``F1 = 2 TP / (2 TP + FP + FN)`` (a class predicted but never true has F1 0).

    Args:
        y_true: ``(N,)`` integer class indices in ``[0, num_classes)``.
        y_pred: ``(N,)`` integer class indices in ``[0, num_classes)``.
        num_classes: number of classes.

    Returns:
        Macro-F1 in [0, 1].

    Raises:
        InputError: shapes differ, N = 0, or labels out of range.
    """
    t, p = _labels_pair(y_true, y_pred)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    if min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes:
        raise InputError(f"class indices must be in [0, {num_classes})")
    conf = np.zeros((num_classes, num_classes), np.int64)  # conf[true, pred]
    np.add.at(conf, (t, p), 1)
    tp = np.diag(conf)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    present = (conf.sum(axis=0) + conf.sum(axis=1)) > 0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(np.mean(f1))


def average_precision(y_true_binary: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve, step-wise: ``sum_n (R_n - R_{n-1}) P_n``.

    Thresholds are the distinct scores, highest first; tied scores enter together. This is
    scikit-learn's ``average_precision_score`` (no interpolation).

    Args:
        y_true_binary: ``(N,)`` 0/1 (or bool) ground truth.
        scores: ``(N,)`` finite scores, higher = more likely positive.

    Returns:
        AP in [0, 1]; ``nan`` when ``y_true_binary`` has no positive.

    Raises:
        InputError: shapes differ, values not 0/1, or scores not finite.
    """
    y = _binary(y_true_binary, "y_true_binary")
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise InputError(f"y_true_binary and scores must be (N,) of one length, got {y.shape} and {s.shape}")
    if not np.all(np.isfinite(s)):
        raise InputError("scores contain NaN or Inf")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # last index of each group of tied scores: the points where the threshold changes
    ends = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def audio_tag_map(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean :func:`average_precision` over the tags (columns) that have at least one positive.

    Args:
        y_true: ``(N, A)`` 0/1 multi-label ground truth.
        scores: ``(N, A)`` scores (logits or probabilities; only their order matters).

    Returns:
        mAP in [0, 1]; ``nan`` when no tag has a positive.

    Raises:
        InputError: shapes differ or are not 2-D, values not 0/1, scores not finite.
    """
    y = _binary(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or s.shape != y.shape:
        raise InputError(f"y_true and scores must be (N, A) of one shape, got {y.shape} and {s.shape}")
    aps = [average_precision(y[:, a], s[:, a]) for a in range(y.shape[1]) if y[:, a].any()]
    return float(np.mean(aps)) if aps else float("nan")


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of ``x1y1x2y2`` boxes (continuous coordinates, no ``+1``).

    Args:
        a: ``(N, 4)`` or ``(4,)`` boxes.
        b: ``(M, 4)`` or ``(4,)`` boxes.

    Returns:
        ``(N, M)`` IoU in [0, 1]; 0 where the union is empty (degenerate boxes).

    Raises:
        InputError: not ``(N, 4)`` numeric arrays.
    """
    a2, b2 = _boxes(a, "a"), _boxes(b, "b")
    ix1 = np.maximum(a2[:, None, 0], b2[None, :, 0])
    iy1 = np.maximum(a2[:, None, 1], b2[None, :, 1])
    ix2 = np.minimum(a2[:, None, 2], b2[None, :, 2])
    iy2 = np.minimum(a2[:, None, 3], b2[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a2[:, 2] - a2[:, 0], 0, None) * np.clip(a2[:, 3] - a2[:, 1], 0, None)
    area_b = np.clip(b2[:, 2] - b2[:, 0], 0, None) * np.clip(b2[:, 3] - b2[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def detection_map50(
    predictions: list[list[Detection]],
    ground_truth: list[list[tuple[str, float, float, float, float]]],
    labels: Sequence[str],
    iou_threshold: float = 0.5,
) -> float:
    """PASCAL VOC all-point mean average precision of box detections at one IoU threshold.

    The mean of :func:`detection_ap_per_class` over the classes with at least one ground-truth box
    (see there for the matching rule and the errors raised); ``nan`` when there is no ground-truth
    box at all.
    """
    aps = detection_ap_per_class(predictions, ground_truth, labels, iou_threshold)
    return float(np.mean(list(aps.values()))) if aps else float("nan")


def detection_ap_per_class(
    predictions: list[list[Detection]],
    ground_truth: list[list[tuple[str, float, float, float, float]]],
    labels: Sequence[str],
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """PASCAL VOC all-point average precision of box detections at one IoU threshold, per class.

    Predictions are matched by :func:`match_detections`; AP is the all-point interpolated area
    (precision made monotone from the right, summed over recall steps). Classes without a
    ground-truth box have no AP and are left out; their predictions do not count. The arguments and
    errors are :func:`match_detections`'.

    Returns:
        ``{label: AP in [0, 1]}`` in the order of ``labels``, for the classes with ground truth.
    """
    matches = match_detections(predictions, ground_truth, labels, iou_threshold)
    return {lab: _voc_ap(m.tp, m.n_gt) for lab, m in matches.items() if m.n_gt > 0}


@dataclass(frozen=True)
class ClassMatches:
    """One class's predictions over a set of images, by descending score, after matching.

    ``scores``, ``tp`` (1.0 for a true positive) and ``image`` (the image index) have one entry per
    prediction; ``gt_per_image`` counts the class's ground-truth boxes in each image.
    """

    scores: np.ndarray
    tp: np.ndarray
    image: np.ndarray
    gt_per_image: np.ndarray

    @property
    def n_gt(self) -> int:
        """The class's ground-truth boxes over the set."""
        return int(self.gt_per_image.sum())


def match_detections(
    predictions: list[list[Detection]],
    ground_truth: list[list[tuple[str, float, float, float, float]]],
    labels: Sequence[str],
    iou_threshold: float = 0.5,
) -> dict[str, ClassMatches]:
    """Match predictions to ground truth per class, as PASCAL VOC does.

    Per class: all predictions of the class over the whole set, by descending score (ties keep input
    order), are matched in turn to the still-unmatched ground-truth box of that class in the same
    image with the highest IoU; a match with IoU >= ``iou_threshold`` is a true positive, anything else
    a false positive. A prediction's flag does not depend on any lower-scored one, so the true
    positives kept at a score threshold ``t`` are exactly the flags of the predictions scoring >= ``t``.

    Args:
        predictions: per image, its :class:`~fusionedge.sdk.postprocess.Detection` list.
        ground_truth: per image, ``(label, x1, y1, x2, y2)`` tuples.
        labels: the class names; every label used must be among them.
        iou_threshold: IoU needed for a match, in (0, 1].

    Returns:
        ``{label: ClassMatches}`` for every label, in the order of ``labels``.

    Raises:
        InputError: the two lists differ in length, or an unknown label / bad box appears.
    """
    if len(predictions) != len(ground_truth):
        raise InputError(f"{len(predictions)} prediction lists for {len(ground_truth)} ground-truth lists")
    if not (0.0 < float(iou_threshold) <= 1.0):
        raise InputError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    known = set(labels)
    gt_by: dict[tuple[str, int], np.ndarray] = {}  # (label, image) -> (G, 4)
    gt_count: dict[str, np.ndarray] = {lab: np.zeros(len(ground_truth), np.int64) for lab in labels}
    for i, gts in enumerate(ground_truth):
        per: dict[str, list] = {}
        for g in gts:
            if len(g) != 5 or g[0] not in known:
                raise InputError(
                    f"ground truth of image {i}: {g!r} is not (label, x1, y1, x2, y2) with a known label"
                )
            per.setdefault(g[0], []).append(g[1:])
        for lab, bs in per.items():
            gt_by[(lab, i)] = _boxes(np.asarray(bs, dtype=np.float64), f"ground truth of image {i}")
            gt_count[lab][i] = len(bs)
    preds: dict[str, list[tuple[float, int, tuple]]] = {lab: [] for lab in labels}
    for i, dets in enumerate(predictions):
        for d in dets:
            if d.label not in known:
                raise InputError(f"prediction in image {i} has unknown label {d.label!r}")
            preds[d.label].append((float(d.score), i, (d.x1, d.y1, d.x2, d.y2)))

    out: dict[str, ClassMatches] = {}
    for lab in labels:
        ps = preds[lab]
        order = np.argsort([-sc for sc, _, _ in ps], kind="stable")
        matched = {key: np.zeros(len(b), bool) for key, b in gt_by.items() if key[0] == lab}
        tp = np.zeros(len(ps))
        for rank, j in enumerate(order):
            _, img, box = ps[j]
            gts = gt_by.get((lab, img))
            if gts is None:
                continue
            ious = iou_xyxy(np.asarray(box, np.float64), gts)[0]
            ious[matched[(lab, img)]] = -1.0  # already taken
            best = int(np.argmax(ious))
            if ious[best] >= iou_threshold:
                tp[rank] = 1.0
                matched[(lab, img)][best] = True
        out[lab] = ClassMatches(scores=np.array([ps[j][0] for j in order], np.float64), tp=tp,
                                image=np.array([ps[j][1] for j in order], np.int64), gt_per_image=gt_count[lab])
    return out


def _voc_ap(tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP from the TP flags of score-sorted predictions."""
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1.0 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    mrec = np.r_[0.0, recall, 1.0]
    mpre = np.r_[0.0, precision, 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, monotone from the right
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _labels_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or t.shape != p.shape or t.size == 0:
        raise InputError(
            f"y_true and y_pred must be non-empty (N,) arrays of one length, got {t.shape} and {p.shape}"
        )
    for a, name in ((t, "y_true"), (p, "y_pred")):
        if not np.issubdtype(a.dtype, np.integer):
            if not np.issubdtype(a.dtype, np.floating) or not np.all(a == np.round(a)):
                raise InputError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    return t.astype(np.int64), p.astype(np.int64)


def _binary(y: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if not np.issubdtype(a.dtype, np.number) or not np.all((a == 0) | (a == 1)):
        raise InputError(f"{name} must hold 0/1 labels")
    return a.astype(np.float64)


def _boxes(x: np.ndarray, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: boxes must be numeric (N, 4) arrays") from e
    if a.ndim == 1 and a.shape[0] == 4:
        a = a[None, :]
    if a.size == 0:
        a = a.reshape(0, 4)
    if a.ndim != 2 or a.shape[1] != 4:
        raise InputError(f"{name}: boxes must be (N, 4) x1, y1, x2, y2, got shape {a.shape}")
    return a
