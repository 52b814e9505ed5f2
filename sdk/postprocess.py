"""Turn model outputs into answers: stable softmax/sigmoid, the CenterNet box codec, YOLO boxes + NMS.

**CenterNet cell convention** (one definition for training targets and runtime decoding). With
output stride ``s``, heatmap cell ``(row, col)`` covers model-input pixels
``[col*s, (col+1)*s) x [row*s, (row+1)*s)``; its reference point is its corner ``(col*s, row*s)``
("cell centres are at integer * stride"). A box centre ``cx`` maps to column ``int(cx / s)`` with
offset ``cx / s - int(cx / s)`` in ``[0, 1)`` (same for ``cy`` and rows), and decodes back as
``cx = (col + off_x) * s``. ``size`` holds the box width and height in model-input pixels.
:func:`encode_centernet_targets` writes that encoding (training uses it) and
:func:`decode_centernet` reads it, so the two cannot drift apart.

**YOLO-style boxes** (:func:`decode_yolo`) are the single output of an Ultralytics export:
``(4 + C, N)`` per image — N candidate boxes as centre x, centre y, width, height in model-input
pixels followed by C class scores — or ``(N, 5 + C)`` with an objectness column (YOLOv5). Candidates
are thresholded and reduced with class-aware greedy non-maximum suppression (:func:`nms`) in NumPy,
the same rules the exporting frameworks apply after their model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from fusionedge.sdk.errors import InputError

__all__ = [
    "Detection",
    "box_iou",
    "decode_centernet",
    "decode_yolo",
    "encode_centernet_targets",
    "gaussian_radius",
    "nms",
    "sigmoid",
    "softmax",
]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, stable for large logits (the max is subtracted first).

    Args:
        x: logits, any shape; float arrays keep their dtype, others become float64.
        axis: the class axis.

    Returns:
        Probabilities of ``x``'s shape, summing to 1 along ``axis``.
    """
    a = _float_array(x)
    z = a - np.max(a, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, stable for large ``|x|`` (never overflows ``exp``).

    Args:
        x: logits, any shape; float arrays keep their dtype, others become float64.

    Returns:
        ``1 / (1 + exp(-x))`` elementwise, same shape.
    """
    a = _float_array(x)
    e = np.exp(-np.abs(a))  # in (0, 1]: no overflow on either side
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


@dataclass(frozen=True)
class Detection:
    """One detected object; the box is ``x1, y1, x2, y2`` in pixels of the image it refers to."""

    label: str
    score: float  # sigmoid of the heatmap peak, in [0, 1]
    x1: float
    y1: float
    x2: float
    y2: float


def decode_centernet(
    heatmap_logits: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    *,
    stride: int,
    labels: Sequence[str],
    score_threshold: float | Sequence[float] = 0.3,
    top_k: int = 50,
    out_wh: tuple[int, int] | None = None,
    in_wh: tuple[int, int] | None = None,
) -> list[Detection]:
    """Decode one sample's CenterNet heads into boxes (no NMS: peaks are local maxima).

    A peak is a cell whose logit equals the maximum of its 3x3 neighbourhood (CenterNet's max-pool
    decode, done on logits, which orders like ``sigmoid`` but does not saturate) and whose
    ``sigmoid`` score is at least ``score_threshold`` (one for all classes, or each class its own). The
    ``top_k`` best become boxes centred at
    ``((col + off_x) * stride, (row + off_y) * stride)`` with width, height from ``size``
    (negative sizes count as 0). See the module docstring for the cell convention.

    Args:
        heatmap_logits: ``(C, h, w)`` class-centre logits.
        size: ``(2, h, w)`` box width, height in model-input pixels.
        offset: ``(2, h, w)`` sub-cell centre offset x, y in cells.
        stride: model-input pixels per heatmap cell.
        labels: ``C`` class names.
        score_threshold: lowest score kept, in [0, 1]; or ``C`` of them, one per class (a bundle's
            calibrated per-class thresholds).
        top_k: most detections returned, >= 1.
        out_wh: ``(width, height)`` of the original image; boxes are scaled to it and clipped.
        in_wh: ``(width, height)`` of the model input; defaults to ``(w * stride, h * stride)``.
            Given alone, boxes are clipped to it.

    Returns:
        Detections, best score first.

    Raises:
        InputError: shapes that do not agree, non-finite outputs, or bad parameters.
    """
    hm = _float_array(heatmap_logits)
    sz, off = _float_array(size), _float_array(offset)
    if hm.ndim != 3:
        raise InputError(f"heatmap_logits must be (C, h, w), got shape {hm.shape}")
    c, h, w = hm.shape
    if sz.shape != (2, h, w) or off.shape != (2, h, w):
        raise InputError(
            f"size and offset must be (2, {h}, {w}) like the heatmap, got {sz.shape} and {off.shape}"
        )
    if len(labels) != c:
        raise InputError(f"{len(labels)} labels given for a heatmap of {c} classes")
    if not (np.all(np.isfinite(hm)) and np.all(np.isfinite(sz)) and np.all(np.isfinite(off))):
        raise InputError("detection outputs contain NaN or Inf; check the model and its input")
    stride = _positive_int(stride, "stride")
    top_k = _positive_int(top_k, "top_k")
    threshold = _score_thresholds(score_threshold, c)
    if in_wh is None:
        in_wh = (w * stride, h * stride)
    iw, ih = _wh(in_wh, "in_wh")

    # 3x3 max-pool (pad with -inf), vectorized as the max of 9 shifted views.
    padded = np.pad(hm, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    pooled = hm.copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(pooled, padded[:, dy : dy + h, dx : dx + w], out=pooled)
    scores = sigmoid(hm).astype(np.float64)
    keep = (hm == pooled) & (scores >= threshold[:, None, None])
    cls, rows, cols = np.nonzero(keep)  # (K,) each
    if cls.size == 0:
        return []
    s = scores[cls, rows, cols]
    order = np.argsort(-s, kind="stable")[:top_k]  # ties: lower (class, row, col) first
    cls, rows, cols, s = cls[order], rows[order], cols[order], s[order]

    cx = (cols + off[0, rows, cols].astype(np.float64)) * stride
    cy = (rows + off[1, rows, cols].astype(np.float64)) * stride
    bw = np.maximum(sz[0, rows, cols].astype(np.float64), 0.0)
    bh = np.maximum(sz[1, rows, cols].astype(np.float64), 0.0)
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)  # (K, 4) input px
    if out_wh is not None:
        ow, oh = _wh(out_wh, "out_wh")
        boxes *= np.array([ow / iw, oh / ih, ow / iw, oh / ih])
        lim_w, lim_h = ow, oh
    else:
        lim_w, lim_h = iw, ih
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, lim_w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, lim_h)
    return [
        Detection(str(labels[k]), float(sc), float(b[0]), float(b[1]), float(b[2]), float(b[3]))
        for k, sc, b in zip(cls, s, boxes)
    ]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``x1, y1, x2, y2`` box with each of ``boxes`` ``(K, 4)``; 0 where both are empty."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0.0, None) * np.clip(iy2 - iy1, 0.0, None)
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, top_k: int | None = None
) -> np.ndarray:
    """Greedy non-maximum suppression: keep the best box, drop those overlapping it, repeat.

    Args:
        boxes: ``(K, 4)`` boxes ``x1, y1, x2, y2``.
        scores: ``(K,)`` scores.
        iou_threshold: a box whose IoU with a kept, better box is above this is dropped, in [0, 1].
        top_k: stop after this many kept boxes (None: all).

    Returns:
        Indices into ``boxes`` of the kept boxes, best score first (ties: lower index first).

    Raises:
        InputError: shapes that do not agree, or ``iou_threshold`` outside [0, 1].
    """
    b, s = _float_array(boxes).astype(np.float64), _float_array(scores).astype(np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (b.shape[0],):
        raise InputError(f"nms needs boxes (K, 4) and scores (K,), got {b.shape} and {s.shape}")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise InputError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    order = np.argsort(-s, kind="stable")
    keep: list[int] = []
    limit = len(order) if top_k is None else _positive_int(top_k, "top_k")
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    areas = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    threshold = float(iou_threshold)
    while order.size and len(keep) < limit:  # the IoU of box_iou, on columns gathered once per round
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        w = np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])
        h = np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])
        inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_yolo(
    output: np.ndarray,
    *,
    num_classes: int,
    layout: str = "channels-first",
    objectness: bool = False,
    class_scores: str = "probabilities",
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    top_k: int = 300,
    class_agnostic: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image's YOLO-style output into boxes in model-input pixels, after NMS.

    Args:
        output: ``(4 + [1] + C, N)`` for ``layout="channels-first"`` (Ultralytics YOLOv8 / YOLO11),
            ``(N, 4 + [1] + C)`` for ``"anchors-first"`` (YOLOv5); the ``[1]`` is the objectness
            column, present when ``objectness``. Boxes are centre x, centre y, width, height.
        num_classes: C.
        layout: ``"channels-first"`` or ``"anchors-first"``.
        objectness: a box's score is objectness x class score (YOLOv5) instead of the class score.
        class_scores: ``"probabilities"`` (already in [0, 1], as exported) or ``"logits"`` (sigmoid applied).
        score_threshold: lowest score kept, in [0, 1].
        iou_threshold: NMS overlap above which the worse box of the same class is dropped, in [0, 1].
        top_k: most boxes returned, >= 1.
        class_agnostic: suppress overlapping boxes across classes too.

    Returns:
        ``(boxes (K, 4) x1, y1, x2, y2 in model-input pixels, scores (K,), classes (K,))``, best first.

    Raises:
        InputError: a shape that does not fit ``num_classes`` and ``layout``, non-finite values or bad
            parameters.
    """
    a = _float_array(output).astype(np.float64)
    width = 4 + int(bool(objectness)) + _positive_int(num_classes, "num_classes")
    if layout not in ("channels-first", "anchors-first"):
        raise InputError(f"layout must be 'channels-first' or 'anchors-first', got {layout!r}")
    if class_scores not in ("probabilities", "logits"):
        raise InputError(f"class_scores must be 'probabilities' or 'logits', got {class_scores!r}")
    if a.ndim != 2 or a.shape[0 if layout == "channels-first" else 1] != width:
        want = f"({width}, N)" if layout == "channels-first" else f"(N, {width})"
        raise InputError(f"a YOLO output for {num_classes} classes ({layout}) must be {want}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError("detection outputs contain NaN or Inf; check the model and its input")
    if not 0.0 <= float(score_threshold) <= 1.0:
        raise InputError(f"score_threshold must be in [0, 1], got {score_threshold!r}")
    rows = a.T if layout == "channels-first" else a  # (N, width)
    cls = rows[:, 4 + int(bool(objectness)):]
    obj = rows[:, 4:5] if objectness else None
    if class_scores == "logits":
        cls = sigmoid(cls)
        obj = None if obj is None else sigmoid(obj)
    if obj is not None:
        cls = cls * obj
    classes = np.argmax(cls, axis=1)
    scores = cls[np.arange(len(cls)), classes]
    keep = scores >= float(score_threshold)
    xy, wh = rows[keep, 0:2], np.maximum(rows[keep, 2:4], 0.0)
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    scores, classes = scores[keep], classes[keep]
    # Class-aware NMS in one pass: shift each class's boxes apart so boxes of different classes never overlap.
    shift = 0.0 if class_agnostic or boxes.size == 0 else float(np.abs(boxes).max() + 1.0) * 2.0
    kept = nms(boxes + (classes * shift)[:, None], scores, iou_threshold, top_k=top_k)
    return boxes[kept], scores[kept], classes[kept].astype(np.int64)


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's Gaussian radius for a box of ``height x width`` (in heatmap cells).

    The smallest of the three corner-shift radii at which a box displaced by the radius still has
    IoU ``min_overlap`` with the true box, written exactly as the CenterNet reference code does
    (``utils/image.py``, including its ``/ 2`` denominators), so targets match published models.
    """
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def encode_centernet_targets(
    boxes_xyxy: np.ndarray,
    labels_idx: np.ndarray,
    *,
    num_classes: int,
    heatmap_hw: tuple[int, int],
    stride: int,
) -> dict[str, np.ndarray]:
    """Training targets for the CenterNet heads of one sample (the inverse of :func:`decode_centernet`).

    Boxes are clipped to the model input (``heatmap_hw * stride``); boxes with no area left are
    skipped. Each box splats a Gaussian (peak exactly 1 at its centre cell, radius by
    :func:`gaussian_radius` on the box size in cells, sigma = diameter / 6) into its class channel,
    merged by maximum; the centre cell gets the box size, the sub-cell offset and ``mask = 1``.
    Where two boxes share a centre cell, the later one's size and offset win (as in CenterNet).

    Args:
        boxes_xyxy: ``(K, 4)`` x1, y1, x2, y2 in model-input pixels (K may be 0).
        labels_idx: ``(K,)`` class indices in ``[0, num_classes)``.
        num_classes: C.
        heatmap_hw: ``(h, w)`` of the heatmap.
        stride: model-input pixels per heatmap cell.

    Returns:
        ``{"heatmap": (C, h, w), "size": (2, h, w), "offset": (2, h, w), "mask": (h, w)}``, float32.

    Raises:
        InputError: wrong shapes, NaN coordinates, inverted boxes, or class indices out of range.
    """
    num_classes = _positive_int(num_classes, "num_classes")
    stride = _positive_int(stride, "stride")
    try:
        h, w = (int(v) for v in heatmap_hw)
    except (TypeError, ValueError) as e:
        raise InputError(f"heatmap_hw must be (h, w), got {heatmap_hw!r}") from e
    if h < 1 or w < 1:
        raise InputError(f"heatmap_hw must be positive, got {heatmap_hw!r}")
    try:
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        lab = np.asarray(labels_idx)
    except (TypeError, ValueError) as e:
        raise InputError("boxes_xyxy and labels_idx must be numeric arrays") from e
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or lab.ndim != 1 or boxes.shape[0] != lab.shape[0]:
        raise InputError(f"boxes_xyxy must be (K, 4) with (K,) labels_idx, got {boxes.shape} and {lab.shape}")
    if lab.size and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0 or lab.max() >= num_classes):
        raise InputError(f"labels_idx must be integers in [0, {num_classes}), got {lab.tolist()}")
    if not np.all(np.isfinite(boxes)):
        raise InputError("boxes_xyxy contains NaN or Inf")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise InputError("boxes_xyxy must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")

    heatmap = np.zeros((num_classes, h, w), np.float32)
    size = np.zeros((2, h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    in_w, in_h = w * stride, h * stride
    for (x1, y1, x2, y2), k in zip(boxes, lab):
        x1, x2 = np.clip([x1, x2], 0.0, in_w)
        y1, y2 = np.clip([y1, y2], 0.0, in_h)
        bw, bh = x2 - x1, y2 - y1
        if bw <= 0 or bh <= 0:
            continue
        fx, fy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride  # centre in cells
        col, row = min(int(fx), w - 1), min(int(fy), h - 1)  # a centre on the far edge stays inside
        radius = max(0, int(gaussian_radius(bh / stride, bw / stride)))
        _draw_gaussian(heatmap[int(k)], row, col, radius)
        size[:, row, col] = (bw, bh)
        offset[:, row, col] = (fx - col, fy - row)
        mask[row, col] = 1.0
    return {"heatmap": heatmap, "size": size, "offset": offset, "mask": mask}


def _draw_gaussian(plane: np.ndarray, row: int, col: int, radius: int) -> None:
    """Max-merge a (2r+1)^2 Gaussian, sigma (2r+1)/6, at (row, col) (CenterNet's draw_umich_gaussian)."""
    d = 2 * radius + 1
    sigma = d / 6.0
    yy, xx = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    g = np.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    h, w = plane.shape
    left, right = min(col, radius), min(w - col, radius + 1)
    top, bottom = min(row, radius), min(h - row, radius + 1)
    region = plane[row - top : row + bottom, col - left : col + right]
    patch = g[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(region, patch.astype(np.float32), out=region)


def _float_array(x: object) -> np.ndarray:
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"expected a numeric array, got {type(x).__name__}") from e
    if np.issubdtype(a.dtype, np.floating):
        return a
    if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
        raise InputError(f"expected a numeric array, got dtype {a.dtype}")
    return a.astype(np.float64)


def _score_thresholds(value: object, classes: int) -> np.ndarray:
    """``(classes,)`` score thresholds from one number or one per class, each in [0, 1]."""
    try:
        t = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"score_threshold must be a number or one per class, got {value!r}") from e
    if t.ndim == 0:
        t = np.full(classes, float(t))
    elif t.shape != (classes,):
        raise InputError(f"score_threshold must be one number or {classes} (one per class), got {t.size}")
    if not np.all((t >= 0.0) & (t <= 1.0)):  # NaN fails too
        raise InputError(f"score_threshold must be in [0, 1], got {value!r}")
    return t


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _wh(value: object, what: str) -> tuple[float, float]:
    try:
        w, h = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be (width, height), got {value!r}") from e
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise InputError(f"{what} must be two positive numbers (width, height), got {value!r}")
    return w, h
