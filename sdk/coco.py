"""COCO detection AP (AP50 and AP50:95) computed by pycocotools, the reference implementation.

:func:`fusionedge.sdk.metrics.detection_map50` is PASCAL VOC's all-point AP; the numbers COCO tools
and most detector libraries print as "mAP50" and "mAP50-95" are COCO's: per image and class the
predictions are matched greedily by score, precision is read at 101 recall points (0, 0.01, ... 1)
and averaged, and AP50:95 averages that over the IoU thresholds 0.50, 0.55, ... 0.95. The two AP50s
differ on the same predictions (101 points against every recall step), usually by less than 0.01,
so both are reported under their own names. The evaluation is delegated to ``pycocotools`` (the
``metrics`` extra) so the numbers are COCO's by construction; it is imported only when called, so
the runtime install does not need it. Only COCO's ``all`` area range is used, with at most 100 predictions per image and class.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import numpy as np
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.metrics import _boxes
from fusionedge.sdk.postprocess import Detection

__all__ = [
    "INSTALL_HINT",
    "MAX_DETECTIONS",
    "coco_detection_metrics",
    "coco_metrics_available",
    "detection_coco_ap",
]

MAX_DETECTIONS = 100  # COCO's maxDets for the headline AP: per image and class
INSTALL_HINT = "pip install 'fusionedge[metrics]'"


def coco_metrics_available() -> bool:
    """Whether :func:`detection_coco_ap` can run here (``pycocotools`` imports)."""
    try:
        _import_cocoeval()
    except InputError:
        return False
    return True


def _import_cocoeval():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise InputError(f"COCO AP needs pycocotools, which is not installed ({e}); {INSTALL_HINT}") from e
    return COCO, COCOeval


def _xywh(box: Sequence[float], where: str) -> list[float]:
    b = _boxes(np.asarray(box, dtype=np.float64), where)[0]
    if not np.all(np.isfinite(b)):
        raise InputError(f"{where}: box {b.tolist()} is not finite")
    return [float(b[0]), float(b[1]), max(float(b[2] - b[0]), 0.0), max(float(b[3] - b[1]), 0.0)]


def _coco_datasets(
    predictions: list[list[Detection]],
    ground_truth: list[list[tuple[str, float, float, float, float]]],
    labels: Sequence[str],
) -> tuple[dict, list[dict]]:
    """The ground truth as a COCO data set and the predictions as COCO results (ids are 1-based)."""
    if len(predictions) != len(ground_truth):
        raise InputError(f"{len(predictions)} prediction lists for {len(ground_truth)} ground-truth lists")
    cat_id = {lab: k + 1 for k, lab in enumerate(labels)}
    if len(cat_id) != len(labels):
        raise InputError(f"labels must be distinct, got {list(labels)!r}")
    anns: list[dict] = []
    for i, gts in enumerate(ground_truth):
        for g in gts:
            if len(g) != 5 or g[0] not in cat_id:
                raise InputError(
                    f"ground truth of image {i}: {g!r} is not (label, x1, y1, x2, y2) with a known label"
                )
            xywh = _xywh(g[1:], f"ground truth of image {i}")
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat_id[g[0]], "bbox": xywh,
                         "area": xywh[2] * xywh[3], "iscrowd": 0})
    results: list[dict] = []
    for i, dets in enumerate(predictions):
        for d in dets:
            if d.label not in cat_id:
                raise InputError(f"prediction in image {i} has unknown label {d.label!r}")
            score = float(d.score)
            if not math.isfinite(score):
                raise InputError(f"prediction in image {i} has a non-finite score {d.score!r}")
            xywh = _xywh((d.x1, d.y1, d.x2, d.y2), f"prediction in image {i}")
            results.append({"id": len(results) + 1, "image_id": i + 1, "category_id": cat_id[d.label],
                            "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0, "score": score})
    dataset = {
        "images": [{"id": i + 1} for i in range(len(ground_truth))],
        "categories": [{"id": k, "name": lab} for lab, k in cat_id.items()],
        "annotations": anns,
    }
    return dataset, results


def detection_coco_ap(
    predictions: list[list[Detection]],
    ground_truth: list[list[tuple[str, float, float, float, float]]],
    labels: Sequence[str],
) -> dict[str, float]:
    """COCO box AP at IoU 0.5 and averaged over IoU 0.50:0.05:0.95, by ``pycocotools``.

    Same inputs as :func:`fusionedge.sdk.metrics.detection_map50`. Classes without a ground-truth box
    are left out of the mean (a prediction of such a class counts nowhere), as COCO does.

    Args:
        predictions: per image, its :class:`~fusionedge.sdk.postprocess.Detection` list.
        ground_truth: per image, ``(label, x1, y1, x2, y2)`` tuples.
        labels: the class names; every label used must be among them.

    Returns:
        ``{"ap50": ..., "ap50_95": ...}``, each in [0, 1]; ``nan`` when there is no ground-truth box.

    Raises:
        InputError: the lists differ in length, an unknown label / bad box / non-finite score appears,
            or pycocotools is not installed (the message says which extra to install).
    """
    coco_cls, eval_cls = _import_cocoeval()
    dataset, results = _coco_datasets(predictions, ground_truth, labels)
    if not dataset["annotations"]:
        return {"ap50": float("nan"), "ap50_95": float("nan")}
    if not results:  # pycocotools cannot load an empty result list; nothing found is AP 0
        return {"ap50": 0.0, "ap50_95": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports its progress on stdout
        gt = coco_cls()
        gt.dataset = dataset
        gt.createIndex()
        dt = coco_cls()
        dt.dataset = {"images": dataset["images"], "categories": dataset["categories"],
                      "annotations": results}
        dt.createIndex()
        ev = eval_cls(gt, dt, iouType="bbox")
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [MAX_DETECTIONS]
        ev.evaluate()
        ev.accumulate()
    precision = np.asarray(ev.eval["precision"])[:, :, :, 0, 0]  # (IoU thresholds, recall points, classes)
    iou_thrs = np.asarray(ev.params.iouThrs)
    at50 = precision[int(np.argmin(np.abs(iou_thrs - 0.5)))]
    return {"ap50": _mean_valid(at50), "ap50_95": _mean_valid(precision)}


def _mean_valid(precision: np.ndarray) -> float:
    """Mean over the entries of classes with ground truth (COCO marks the others -1)."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def coco_detection_metrics(
    predictions: list[list[Detection]],
    ground_truth: list[list[tuple[str, float, float, float, float]]],
    labels: Sequence[str],
) -> dict[str, float]:
    """The COCO keys an evaluation reports next to ``detection_map50`` (VOC all-point AP@0.5).

    Returns:
        ``{"detection_ap50_coco", "detection_ap50_95_coco"}`` when pycocotools is installed, else
        ``{}`` (the evaluation then reports the VOC number alone).

    Raises:
        InputError: as :func:`detection_coco_ap` for bad inputs.
    """
    if not coco_metrics_available():
        return {}
    ap = detection_coco_ap(predictions, ground_truth, labels)
    return {"detection_ap50_coco": ap["ap50"], "detection_ap50_95_coco": ap["ap50_95"]}
