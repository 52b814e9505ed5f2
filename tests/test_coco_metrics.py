"""COCO AP50 / AP50:95 through pycocotools: hand cases, an independent NumPy oracle, the missing extra."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.metrics import detection_map50, iou_xyxy
from fusionedge.sdk.postprocess import Detection

pytest.importorskip("pycocotools")
from fusionedge.sdk.coco import coco_metrics_available, detection_coco_ap


def _det(label: str, score: float, box: tuple) -> Detection:
    return Detection(label, score, *map(float, box))


def _coco_ap_oracle(preds, gt, labels, iou_thr: float, max_dets: int = 100) -> float:
    """COCO's bbox AP written from its definition, independent of pycocotools.

    Per image and class, predictions sorted by score (stable) and cut to ``max_dets`` are matched in
    turn to the unmatched ground-truth box with the highest IoU >= the threshold (a later box wins a
    tie, as in COCOeval). Over the whole set (images in order, then a stable sort by score) the
    precision is made monotone from the right and read at recall 0, 0.01, ... 1 (the first point
    whose recall reaches it; 0 if none); AP is the mean of those 101 values, averaged over the
    classes that have ground truth.
    """
    rec_thrs = np.linspace(0.0, 1.0, 101)
    aps = []
    for lab in labels:
        scores, hits, n_gt = [], [], 0
        for dets, gts in zip(preds, gt):
            g = np.array([b[1:] for b in gts if b[0] == lab], np.float64).reshape(-1, 4)
            n_gt += len(g)
            d = [x for x in dets if x.label == lab]
            d = [d[j] for j in np.argsort([-x.score for x in d], kind="mergesort")][:max_dets]
            taken = np.zeros(len(g), bool)
            for x in d:
                ious = iou_xyxy(np.array([x.x1, x.y1, x.x2, x.y2]), g)[0] if len(g) else np.zeros(0)
                best, best_iou = -1, min(iou_thr, 1 - 1e-10)
                for j in range(len(g)):
                    if not taken[j] and ious[j] >= best_iou:
                        best, best_iou = j, ious[j]
                if best >= 0:
                    taken[best] = True
                scores.append(x.score)
                hits.append(best >= 0)
        if n_gt == 0:
            continue
        order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
        tp = np.cumsum(np.asarray(hits, np.float64)[order]) if scores else np.zeros(0)
        fp = np.arange(1, len(tp) + 1) - tp
        rc, pr = tp / n_gt, tp / np.maximum(tp + fp, np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
        q = [pr[k] if k < len(pr) else 0.0 for k in np.searchsorted(rc, rec_thrs, side="left")]
        aps.append(float(np.mean(q)))
    return float(np.mean(aps)) if aps else float("nan")


def _random_set(seed: int, labels: list[str]):
    """Images with jittered, missed and spurious boxes, so precision and recall both vary."""
    rng = np.random.default_rng(seed)
    preds, gt = [], []
    for _ in range(int(rng.integers(5, 25))):
        g, p = [], []
        for _ in range(int(rng.integers(0, 6))):
            lab = labels[int(rng.integers(len(labels)))]
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(5, 60, 2)
            g.append((lab, x, y, x + w, y + h))
            if rng.random() < 0.8:  # found, with a position error that spans the IoU thresholds
                jx, jy = rng.normal(0, 0.15, 2) * (w, h)
                p.append(_det(lab, float(rng.random()), (x + jx, y + jy, x + w + jx, y + h + jy)))
        for _ in range(int(rng.integers(0, 4))):  # false alarms
            x, y = rng.uniform(0, 200, 2)
            p.append(_det(labels[int(rng.integers(len(labels)))], float(rng.random()) * 0.7,
                          (x, y, x + rng.uniform(5, 60), y + rng.uniform(5, 60))))
        gt.append(g)
        preds.append(p)
    return preds, gt


def test_coco_is_available_with_the_extra() -> None:
    assert coco_metrics_available()


@pytest.mark.parametrize("seed", range(6))
def test_coco_ap_matches_an_independent_oracle(seed: int) -> None:
    labels = ["car", "person", "bike"]
    preds, gt = _random_set(seed, labels)
    got = detection_coco_ap(preds, gt, labels)
    assert got["ap50"] == pytest.approx(_coco_ap_oracle(preds, gt, labels, 0.5), abs=1e-3)
    thr = np.linspace(0.5, 0.95, 10)
    ap50_95 = float(np.mean([_coco_ap_oracle(preds, gt, labels, t) for t in thr]))
    assert got["ap50_95"] == pytest.approx(ap50_95, abs=1e-3)
    assert 0.0 <= got["ap50_95"] <= got["ap50"] <= 1.0


def test_coco_ap50_differs_from_voc_all_point_by_hand() -> None:
    # 1 class, 3 GT boxes in one image; predictions by score: TP, FP, TP (third GT missed).
    #   recall 1/3 1/3 2/3, precision 1 1/2 2/3 -> envelope 1 2/3 2/3
    #   VOC all-point: (1/3)(1) + (1/3)(2/3) = 5/9 = 0.5556
    #   COCO 101-point: recall points 0..0.33 (34 points) read 1, 0.34..0.66 (33 points) read 2/3,
    #   0.67..1 (34 points) read 0 -> (34 + 22) / 101 = 0.5545
    gt = [[("car", 0, 0, 10, 10), ("car", 20, 0, 30, 10), ("car", 40, 0, 50, 10)]]
    preds = [[_det("car", 0.9, (0, 0, 10, 10)), _det("car", 0.8, (100, 100, 110, 110)),
              _det("car", 0.7, (20, 0, 30, 10))]]
    assert detection_map50(preds, gt, ["car"]) == pytest.approx(5 / 9)
    got = detection_coco_ap(preds, gt, ["car"])
    assert got["ap50"] == pytest.approx((34 + 33 * 2 / 3) / 101)
    # both TPs are exact, so every IoU threshold gives the same AP
    assert got["ap50_95"] == pytest.approx(got["ap50"])


def test_coco_ap50_95_drops_with_loose_boxes() -> None:
    # one GT (0,0,10,10), one prediction (0,0,10,8): IoU 0.8 -> a TP at thresholds .50 ... .80
    # (7 of 10), a miss at .85 ... .95 -> AP50 1, AP50:95 0.7
    got = detection_coco_ap([[_det("car", 0.9, (0, 0, 10, 8))]], [[("car", 0, 0, 10, 10)]], ["car"])
    assert got["ap50"] == pytest.approx(1.0)
    assert got["ap50_95"] == pytest.approx(0.7)


def test_coco_edge_cases() -> None:
    # no ground truth at all: undefined; ground truth but no prediction: 0
    assert all(math.isnan(v) for v in detection_coco_ap([[_det("car", 0.5, (0, 0, 1, 1))]], [[]],
                                                        ["car"]).values())
    assert detection_coco_ap([[], []], [[("car", 0, 0, 1, 1)], []], ["car"]) == {"ap50": 0.0, "ap50_95": 0.0}
    # a prediction on an image without ground truth is a false positive that ranks first
    gt = [[("car", 0, 0, 10, 10)], []]
    preds = [[_det("car", 0.5, (0, 0, 10, 10))], [_det("car", 0.9, (0, 0, 10, 10))]]
    # recall reaches 1 at precision 1/2 -> every recall point reads 1/2
    assert detection_coco_ap(preds, gt, ["car"])["ap50"] == pytest.approx(0.5)
    # a class with predictions but no ground truth is not averaged
    preds[0].append(_det("bike", 0.99, (0, 0, 5, 5)))
    assert detection_coco_ap(preds, gt, ["car", "bike"])["ap50"] == pytest.approx(0.5)


def test_coco_keeps_100_predictions_per_image_and_class() -> None:
    # 100 false alarms outscore the one exact box: it is the 101st and is cut, so AP 0;
    # with 99 false alarms it is kept at precision 1/100 -> 0.01 at every recall point
    gt = [[("car", 0, 0, 10, 10)]]
    far = [_det("car", 0.9, (100 + 20 * k, 100, 110 + 20 * k, 110)) for k in range(100)]
    assert detection_coco_ap([far + [_det("car", 0.5, (0, 0, 10, 10))]], gt, ["car"])["ap50"] == 0.0
    got = detection_coco_ap([far[:99] + [_det("car", 0.5, (0, 0, 10, 10))]], gt, ["car"])["ap50"]
    assert got == pytest.approx(0.01)


@pytest.mark.parametrize(
    "preds, gt",
    [
        ([[]], []),
        ([[_det("truck", 0.5, (0, 0, 1, 1))]], [[]]),
        ([[]], [[("truck", 0, 0, 1, 1)]]),
        ([[]], [[("car", 0, 0, 1)]]),
        ([[]], [[("car", 0, 0, float("nan"), 1)]]),
        ([[_det("car", float("nan"), (0, 0, 1, 1))]], [[("car", 0, 0, 1, 1)]]),
    ],
)
def test_coco_rejects_bad_input(preds, gt) -> None:
    with pytest.raises(InputError):
        detection_coco_ap(preds, gt, ["car"])


def test_runtime_imports_without_pycocotools_and_says_which_extra() -> None:
    """With pycocotools unimportable, the sdk still imports, and the COCO call names the extra."""
    code = (
        "import sys; sys.modules['pycocotools'] = None\n"
        "import fusionedge.sdk.coco as c, fusionedge.sdk.evaluate\n"
        "from fusionedge.sdk.errors import InputError\n"
        "assert not c.coco_metrics_available()\n"
        "try:\n"
        "    c.detection_coco_ap([[]], [[('car', 0, 0, 1, 1)]], ['car'])\n"
        "except InputError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "fusionedge[metrics]" in out.stdout


def test_importing_the_sdk_does_not_load_pycocotools() -> None:
    code = ("import sys, fusionedge.sdk.coco, fusionedge.sdk.evaluate, fusionedge.sdk.metrics\n"
            "print('pycocotools' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_eval_prints_voc_and_coco_ap_each_labelled(tmp_path_factory, tmp_path, capsys) -> None:
    """``fusionedge eval`` on a real bundle: VOC mAP50 kept, COCO AP50 and AP50:95 added, each labelled."""
    import json

    from _toy_model import shared_toy_bundle
    from fusionedge.cli.main import main

    bundle = shared_toy_bundle(tmp_path_factory)
    data = tmp_path / "data"
    assert main(["data", "synth", "--out", str(data), "--samples", "4", "--workers", "1", "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", "--bundle", str(bundle), "--data", str(data), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    for key in ("detection_map50", "detection_ap50_coco", "detection_ap50_95_coco"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["detection_ap50_95_coco"] <= m["detection_ap50_coco"] + 1e-12
    assert main(["eval", "--bundle", str(bundle), "--data", str(data)]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    assert lines["detection_map50"].endswith("(VOC all-point AP@0.5)")
    assert lines["detection_ap50_coco"].endswith("(COCO 101-point AP@0.5)")
    assert lines["detection_ap50_95_coco"].endswith("(COCO 101-point AP@0.5:0.95)")
