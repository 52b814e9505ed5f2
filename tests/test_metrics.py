"""Metrics against hand-computed cases (the arithmetic is in the comments) and brute-force oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.metrics import (
    audio_tag_map,
    average_precision,
    detection_ap_per_class,
    detection_map50,
    event_accuracy,
    event_macro_f1,
    iou_xyxy,
)
from fusionedge.sdk.postprocess import Detection

# ------------------------------------------------------------------------------ events


def test_event_accuracy_by_hand() -> None:
    # 4 of 5 agree (index 1 is wrong)
    assert event_accuracy(np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 2, 1])) == pytest.approx(0.8)


def test_event_macro_f1_by_hand() -> None:
    # true [0,1,2,2,1], pred [0,2,2,2,1], class 3 absent from both (not averaged):
    #   class 0: TP 1, FP 0, FN 0 -> F1 = 2/2 = 1
    #   class 1: TP 1, FP 0, FN 1 -> F1 = 2/(2+0+1) = 2/3
    #   class 2: TP 2, FP 1, FN 0 -> F1 = 4/(4+1+0) = 4/5
    #   mean = (1 + 2/3 + 4/5) / 3 = 0.82222
    f1 = event_macro_f1(np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 2, 1]), num_classes=4)
    assert f1 == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)
    # a class predicted but never true counts with F1 0: true [0,0], pred [0,3]
    #   class 0: TP 1, FN 1 -> 2/3; class 3: FP 1 -> 0; mean 1/3
    assert event_macro_f1(np.array([0, 0]), np.array([0, 3]), num_classes=4) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "t, p",
    [([0, 1], [0]), ([], []), ([[0, 1]], [[0, 1]]), ([0, 1.5], [0, 1]), (["a", "b"], ["a", "b"])],
)
def test_event_metrics_reject_bad_input(t, p) -> None:
    with pytest.raises(InputError):
        event_accuracy(np.array(t), np.array(p))


def test_macro_f1_rejects_out_of_range() -> None:
    with pytest.raises(InputError, match=r"\[0, 3\)"):
        event_macro_f1(np.array([0, 3]), np.array([0, 1]), num_classes=3)


# ------------------------------------------------------------------------------ average precision


def test_average_precision_by_hand() -> None:
    # labels [1,0,1,0], scores .9 .8 .7 .6:
    #   t=.9: P=1/1, R=1/2 | t=.8: P=1/2, R=1/2 | t=.7: P=2/3, R=1 | t=.6: P=2/4, R=1
    #   AP = (1/2)(1) + 0 + (1/2)(2/3) + 0 = 5/6
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(5 / 6)
    # perfect ranking -> 1; worst ranking of 1 positive among 4 -> precision 1/4 at recall 1
    assert average_precision([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert average_precision([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.25)


def test_average_precision_ties_form_one_threshold() -> None:
    # labels [1,0,1], scores .5 .5 .2: t=.5 takes both tied items: P=1/2, R=1/2; t=.2: P=2/3, R=1
    #   AP = (1/2)(1/2) + (1/2)(2/3) = 7/12 (the tie is not split in the positive's favour)
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(7 / 12)
    assert average_precision([0, 1, 1], [0.5, 0.5, 0.2]) == pytest.approx(7 / 12)  # input order is irrelevant


def test_average_precision_no_positive_is_nan() -> None:
    assert math.isnan(average_precision([0, 0, 0], [0.1, 0.5, 0.9]))


def _ap_brute_force(y: np.ndarray, s: np.ndarray) -> float:
    """Loop over every distinct threshold: sum (R - R_prev) * P, straight from the definition."""
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        sel = s >= t
        tp = float(np.sum(y[sel]))
        p, r = tp / sel.sum(), tp / y.sum()
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def _ap_mean_precision_at_hits(y: np.ndarray, s: np.ndarray) -> float:
    """Without ties AP is also the mean, over positives, of the precision at that positive's rank."""
    order = np.argsort(-s)
    hits = y[order]
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(int)
    y[0] = 1
    s = rng.random(n)
    assert average_precision(y, s) == pytest.approx(_ap_brute_force(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(_ap_mean_precision_at_hits(y, s), abs=1e-12)
    coarse = np.round(s, 1)  # many ties
    assert average_precision(y, coarse) == pytest.approx(_ap_brute_force(y, coarse), abs=1e-12)


def test_average_precision_matches_sklearn_when_installed() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(11)
    for _ in range(5):
        y = (rng.random(100) < 0.3).astype(int)
        y[0] = 1
        s = np.round(rng.random(100), 2)
        assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize(
    "y, s", [([1, 0], [0.1]), ([1, 2], [0.1, 0.2]), ([1, 0], [0.1, np.nan]), ([[1, 0]], [[0.1, 0.2]])]
)
def test_average_precision_rejects_bad_input(y, s) -> None:
    with pytest.raises(InputError):
        average_precision(y, s)


def test_audio_tag_map_by_hand() -> None:
    # tag 0: labels [1,0,1,0], scores .9 .8 .7 .6 -> AP 5/6 (as above)
    # tag 1: no positive -> skipped
    # tag 2: labels [0,1,0,0], the positive scores highest -> AP 1
    # mAP = (5/6 + 1) / 2 = 11/12
    y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]], np.float32)
    s = np.array([[0.9, 0.5, 0.1], [0.8, 0.5, 0.9], [0.7, 0.5, 0.3], [0.6, 0.5, 0.2]])
    assert audio_tag_map(y, s) == pytest.approx(11 / 12)
    assert math.isnan(audio_tag_map(np.zeros((3, 2)), np.ones((3, 2))))
    with pytest.raises(InputError):
        audio_tag_map(y, s[:, :2])


# ------------------------------------------------------------------------------ IoU and detection mAP


def test_iou_by_hand() -> None:
    # (0,0,10,10) vs (5,5,15,15): intersection 5x5 = 25, union 100 + 100 - 25 = 175 -> 1/7
    # vs itself: 1; vs a disjoint box: 0; a zero-area box against a zero-area box: 0 (no NaN)
    a = np.array([[0, 0, 10, 10], [3, 3, 3, 3]])
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [3, 3, 3, 3]])
    iou = iou_xyxy(a, b)
    assert iou.shape == (2, 4)
    np.testing.assert_allclose(iou[0], [1 / 7, 1, 0, 0])
    np.testing.assert_allclose(iou[1], [0, 0, 0, 0])
    assert iou_xyxy([0, 0, 2, 2], [1, 0, 3, 2]).tolist() == [[pytest.approx(1 / 3)]]  # 2 / (4 + 4 - 2)
    assert iou_xyxy(np.zeros((0, 4)), b).shape == (0, 4)
    with pytest.raises(InputError):
        iou_xyxy(np.zeros((2, 3)), b)


def _det(label: str, score: float, box: tuple) -> Detection:
    return Detection(label, score, *map(float, box))


def test_detection_map50_by_hand() -> None:
    # image 0 GT: car A (0,0,10,10), car B (20,20,30,30)
    # image 1 GT: car C (0,0,10,10), person D (50,50,60,60)
    # car predictions over the whole set, by score:
    #   .9 img0 (0,0,10,10)   -> A, IoU 1            TP
    #   .8 img0 (1,1,11,11)   -> A taken (IoU 81/119 = .68), B IoU 0   FP
    #   .7 img1 (40,40,50,50) -> C IoU 0             FP
    #   .6 img0 (20,20,30,30) -> B, IoU 1            TP
    #   3 car GT: recall 1/3 1/3 1/3 2/3, precision 1 1/2 1/3 1/2
    #   envelope from the right: 1 1/2 1/2 1/2 -> AP = (1/3)(1) + (1/3)(1/2) + (1/3)(0) = 1/2
    # person: one TP for one GT -> AP 1;  mAP = (1/2 + 1) / 2 = 3/4
    gt = [
        [("car", 0, 0, 10, 10), ("car", 20, 20, 30, 30)],
        [("car", 0, 0, 10, 10), ("person", 50, 50, 60, 60)],
    ]
    preds = [
        [
            _det("car", 0.9, (0, 0, 10, 10)),
            _det("car", 0.8, (1, 1, 11, 11)),
            _det("car", 0.6, (20, 20, 30, 30)),
        ],
        [_det("car", 0.7, (40, 40, 50, 50)), _det("person", 0.5, (50, 50, 60, 60))],
    ]
    assert detection_map50(preds, gt, ["car", "person"]) == pytest.approx(0.75)
    assert detection_ap_per_class(preds, gt, ["car", "person"]) == pytest.approx({"car": 0.5, "person": 1.0})
    # a class with no GT is not averaged, even with predictions; adding one changes nothing
    preds[1].append(_det("bike", 0.99, (0, 0, 5, 5)))
    assert detection_map50(preds, gt, ["car", "person", "bike"]) == pytest.approx(0.75)
    assert list(detection_ap_per_class(preds, gt, ["person", "bike", "car"])) == ["person", "car"]


def test_detection_matches_best_unmatched_gt() -> None:
    # GT A (0,0,10,10), B (0,5,10,15). Prediction .9 (0,0,10,10) takes A. Prediction .8 (0,2,10,12):
    # IoU with A = 80/120 = .667 (taken), with B = 70/130 = .538 >= .5 and free -> TP. AP = 1.
    gt = [[("car", 0, 0, 10, 10), ("car", 0, 5, 10, 15)]]
    preds = [[_det("car", 0.9, (0, 0, 10, 10)), _det("car", 0.8, (0, 2, 10, 12))]]
    assert detection_map50(preds, gt, ["car"]) == pytest.approx(1.0)
    # at IoU 0.6 the second prediction has no free match: recall 1/2 at precision 1 -> AP 1/2
    assert detection_map50(preds, gt, ["car"], iou_threshold=0.6) == pytest.approx(0.5)


def test_detection_map_edge_cases() -> None:
    # no predictions: AP 0 for the class; no GT at all: nan
    assert detection_map50([[]], [[("car", 0, 0, 1, 1)]], ["car"]) == 0.0
    assert math.isnan(detection_map50([[_det("car", 0.5, (0, 0, 1, 1))]], [[]], ["car"]))
    # a missed GT halves recall: one TP for two GT -> AP 1/2
    gt = [[("car", 0, 0, 10, 10)], [("car", 0, 0, 10, 10)]]
    assert detection_map50([[_det("car", 0.5, (0, 0, 10, 10))], []], gt, ["car"]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "preds, gt",
    [
        ([[]], []),
        ([[_det("truck", 0.5, (0, 0, 1, 1))]], [[]]),
        ([[]], [[("truck", 0, 0, 1, 1)]]),
        ([[]], [[("car", 0, 0, 1)]]),
    ],
)
def test_detection_map_rejects_bad_input(preds, gt) -> None:
    with pytest.raises(InputError):
        detection_map50(preds, gt, ["car"])
