"""Post-processing: stable softmax/sigmoid and the CenterNet encode/decode pair."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.postprocess import (
    Detection,
    decode_centernet,
    encode_centernet_targets,
    gaussian_radius,
    sigmoid,
    softmax,
)
from fusionedge.sdk.spec import OBJECTS

LABELS = list(OBJECTS)  # car, pedestrian, traffic_light, emergency_vehicle
STRIDE = 4
HM = (24, 40)  # heatmap (h, w) of a 96x160 input


def _encode(boxes: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    return encode_centernet_targets(boxes, labels, num_classes=4, heatmap_hw=HM, stride=STRIDE)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)).astype(np.float32)


# ------------------------------------------------------------------------------ softmax / sigmoid


def test_softmax_values_and_stability() -> None:
    # softmax([0, ln 2, ln 5]) = [1, 2, 5] / 8
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(2), math.log(5)])), [0.125, 0.25, 0.625])
    big = softmax(np.array([[1000.0, 1000.0], [-1000.0, 0.0]], np.float32), axis=1)
    assert np.all(np.isfinite(big)) and big.dtype == np.float32
    np.testing.assert_allclose(big, [[0.5, 0.5], [0.0, 1.0]], atol=1e-7)
    np.testing.assert_allclose(softmax(np.ones((3, 4)), axis=0).sum(axis=0), 1.0)


def test_sigmoid_values_and_stability() -> None:
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4
    np.testing.assert_allclose(sigmoid(np.array([0.0, math.log(3), -math.log(3)])), [0.5, 0.75, 0.25])
    with np.errstate(over="raise"):  # exp never overflows
        ext = sigmoid(np.array([-1000.0, 1000.0], np.float32))
    assert ext.dtype == np.float32 and ext.tolist() == [0.0, 1.0]
    assert sigmoid(np.array([3])).dtype == np.float64  # ints become float


# ------------------------------------------------------------------------------ radius / encode


def test_gaussian_radius_matches_centernet_formula() -> None:
    # 10x10 cells, overlap 0.7 (CenterNet utils/image.py):
    #   r1: b = 20, c = 100*0.3/1.7 = 17.647 -> (20 + sqrt(400 - 70.59)) / 2 = 19.075
    #   r2: a = 4, b = 40, c = 0.3*100 = 30 -> (40 + sqrt(1600 - 480)) / 2 = 36.733
    #   r3: a = 2.8, b = -2*0.7*20 = -28, c = -0.3*100 = -30 -> (-28 + sqrt(784 + 336)) / 2 = 2.733
    assert gaussian_radius(10, 10) == pytest.approx((-28 + math.sqrt(1120)) / 2)


def test_encode_targets_single_box() -> None:
    # box 40..72 x 20..44: centre (56, 32) px -> (14.0, 8.0) cells; size 32 x 24 px = 8 x 6 cells
    t = _encode(np.array([[40, 20, 72, 44]]), np.array([1]))
    assert set(t) == {"heatmap", "size", "offset", "mask"}
    assert t["heatmap"].shape == (4, *HM) and t["size"].shape == (2, *HM) and t["mask"].shape == HM
    assert all(v.dtype == np.float32 for v in t.values())
    assert t["heatmap"][1, 8, 14] == 1.0 and t["heatmap"][[0, 2, 3]].max() == 0.0
    assert t["mask"].sum() == 1.0 and t["mask"][8, 14] == 1.0
    assert t["size"][:, 8, 14].tolist() == [32.0, 24.0]
    assert t["offset"][:, 8, 14].tolist() == [0.0, 0.0]
    # h=6, w=8 cells: r3 = (-2*0.7*14 + sqrt(19.6^2 + 4*2.8*0.3*48)) / 2 = (-19.6 + sqrt(545.44)) / 2 = 1.877
    # -> radius 1, diameter 3, sigma 0.5; one cell away: exp(-1 / (2 * 0.25)) = exp(-2)
    assert int(gaussian_radius(6, 8)) == 1
    assert t["heatmap"][1, 8, 15] == pytest.approx(math.exp(-2), rel=1e-6)
    assert t["heatmap"][1, 9, 15] == pytest.approx(math.exp(-4), rel=1e-6)  # diagonal: d^2 = 2
    assert t["heatmap"][1, 8, 16] == 0.0  # outside the 3x3 splat


def test_encode_offset_convention() -> None:
    # centre cx = 13.0 px -> cell int(13/4) = 3, offset 13/4 - 3 = 0.25; cy = 6.8 -> cell 1, offset 0.7
    t = _encode(np.array([[9.0, 2.8, 17.0, 10.8]]), np.array([0]))
    assert t["mask"][1, 3] == 1.0
    np.testing.assert_allclose(t["offset"][:, 1, 3], [0.25, 0.7], atol=1e-6)


def test_encode_clips_and_skips_boxes() -> None:
    boxes = np.array([[-20, -10, 20, 10], [150, 90, 150, 95], [170, 0, 200, 10]], np.float64)
    t = _encode(boxes, np.array([0, 1, 2]))
    # first box clipped to 0..20 x 0..10: centre (10, 5) -> cell (1, 2), size 20 x 10
    assert t["mask"].sum() == 1.0 and t["mask"][1, 2] == 1.0
    assert t["size"][:, 1, 2].tolist() == [20.0, 10.0]
    # zero-width box and a box fully right of the 160 px input are skipped
    assert t["heatmap"][1].max() == 0.0 and t["heatmap"][2].max() == 0.0
    empty = _encode(np.zeros((0, 4)), np.zeros(0, np.int64))
    assert not empty["heatmap"].any() and not empty["mask"].any()


@pytest.mark.parametrize(
    "boxes, labels",
    [
        (np.array([[10, 10, 5, 20]]), np.array([0])),  # x2 < x1
        (np.array([[0, 0, np.nan, 5]]), np.array([0])),
        (np.array([[0, 0, 5, 5]]), np.array([4])),  # class out of range
        (np.array([[0, 0, 5, 5]]), np.array([0.5])),
        (np.array([[0, 0, 5]]), np.array([0])),
        (np.array([[0, 0, 5, 5]]), np.array([0, 1])),
    ],
)
def test_encode_rejects_bad_input(boxes, labels) -> None:
    with pytest.raises(InputError):
        encode_centernet_targets(boxes, labels, num_classes=4, heatmap_hw=HM, stride=STRIDE)


# ------------------------------------------------------------------------------ decode


def _random_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n boxes inside 160x96 whose centre cells are all distinct."""
    boxes, cells = [], set()
    while len(boxes) < n:
        w, h = rng.uniform(6, 60), rng.uniform(6, 40)
        cx, cy = rng.uniform(w / 2, 160 - w / 2), rng.uniform(h / 2, 96 - h / 2)
        cell = (int(cy / STRIDE), int(cx / STRIDE))
        if cell in cells:
            continue
        cells.add(cell)
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(boxes), rng.integers(0, len(LABELS), n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_inverts_encode(seed: int) -> None:
    rng = np.random.default_rng(seed)
    boxes, labels = _random_boxes(rng, 8)
    t = _encode(boxes, labels)
    dets = decode_centernet(
        _logit(t["heatmap"]), t["size"], t["offset"], stride=STRIDE, labels=LABELS, score_threshold=0.99
    )
    assert len(dets) == len(boxes)
    got = {(d.label, round(d.x1, 2), round(d.y1, 2)): d for d in dets}
    for b, k in zip(boxes, labels):
        d = got[(LABELS[k], round(b[0], 2), round(b[1], 2))]
        np.testing.assert_allclose([d.x1, d.y1, d.x2, d.y2], b, atol=1e-4)
        assert d.score == pytest.approx(1 - 1e-6, abs=1e-6)


def test_decode_keeps_only_local_maxima_above_threshold() -> None:
    hm = np.full((2, 5, 6), -10.0, np.float32)
    hm[0, 2, 2] = 2.0  # a peak (score 0.881)
    hm[0, 2, 3] = 1.0  # its neighbour: not a local max
    hm[0, 2, 5] = 0.5  # a separate peak two cells away (score 0.622)
    hm[1, 4, 0] = -1.0  # a peak below threshold (0.269)
    size = np.zeros((2, 5, 6), np.float32)
    size[:, 2, 2] = (8, 4)
    off = np.zeros((2, 5, 6), np.float32)
    off[:, 2, 2] = (0.5, 0.25)
    dets = decode_centernet(hm, size, off, stride=4, labels=["a", "b"], score_threshold=0.3)
    assert [d.label for d in dets] == ["a", "a"]
    assert dets[0].score == pytest.approx(1 / (1 + math.exp(-2)))
    # centre ((2 + 0.5) * 4, (2 + 0.25) * 4) = (10, 9), box 8 x 4 -> 6, 7, 14, 11
    assert (dets[0].x1, dets[0].y1, dets[0].x2, dets[0].y2) == pytest.approx((6, 7, 14, 11))
    assert dets[1].score == pytest.approx(1 / (1 + math.exp(-0.5)))
    # a zero-size box at cell (2, 5): centre (20, 8)
    assert (dets[1].x1, dets[1].y1) == pytest.approx((20, 8))
    assert len(decode_centernet(hm, size, off, stride=4, labels=["a", "b"], score_threshold=0.2)) == 3
    best = decode_centernet(hm, size, off, stride=4, labels=["a", "b"], score_threshold=0.2, top_k=1)
    assert [d.score for d in best] == [dets[0].score]
    # one threshold per class: "a" keeps only its 0.881 peak, "b" its 0.269 one
    per_class = decode_centernet(hm, size, off, stride=4, labels=["a", "b"], score_threshold=[0.7, 0.25])
    assert [(d.label, round(d.score, 3)) for d in per_class] == [("a", 0.881), ("b", 0.269)]


def test_decode_scales_to_original_image_and_clips() -> None:
    hm = np.full((1, 24, 40), -10.0, np.float32)
    hm[0, 12, 20] = 5.0
    hm[0, 0, 0] = 5.0
    size = np.zeros((2, 24, 40), np.float32)
    size[:, 12, 20] = (40, 20)
    size[:, 0, 0] = (16, 16)  # centre (0, 0): extends past the top-left corner
    off = np.zeros((2, 24, 40), np.float32)
    dets = decode_centernet(hm, size, off, stride=4, labels=["car"], out_wh=(640, 480), in_wh=(160, 96))
    by_x = sorted(dets, key=lambda d: d.x1)
    # corner box -8..8 clipped to 0..8 px, then x4 horizontally, x5 vertically -> 0, 0, 32, 40
    assert (by_x[0].x1, by_x[0].y1, by_x[0].x2, by_x[0].y2) == pytest.approx((0, 0, 32, 40))
    # centre (80, 48) px, 40 x 20 -> 60..100 x 38..58 -> x4, x5 = 240..400 x 190..290
    assert (by_x[1].x1, by_x[1].y1, by_x[1].x2, by_x[1].y2) == pytest.approx((240, 190, 400, 290))
    # in_wh defaults to heatmap * stride
    same = decode_centernet(hm, size, off, stride=4, labels=["car"], out_wh=(640, 480))
    assert same == dets
    assert all(isinstance(d, Detection) for d in dets)


def test_decode_plateau_keeps_ties_like_centernet() -> None:
    # two equal neighbouring maxima both survive the 3x3 max-pool (CenterNet behaviour)
    hm = np.full((1, 3, 3), -5.0, np.float32)
    hm[0, 1, 0] = hm[0, 1, 1] = 3.0
    dets = decode_centernet(hm, np.ones((2, 3, 3)), np.zeros((2, 3, 3)), stride=1, labels=["x"])
    assert len(dets) == 2 and dets[0].x1 < dets[1].x1  # ties keep (row, col) order


@pytest.mark.parametrize(
    "kw",
    [
        {"heatmap_logits": np.zeros((2, 4)), "match": r"\(C, h, w\)"},
        {"size": np.zeros((2, 4, 6)), "match": "size and offset"},
        {"labels": ["a"], "match": "labels"},
        {"heatmap_logits": np.full((2, 4, 5), np.nan), "match": "NaN"},
        {"stride": 0, "match": "stride"},
        {"top_k": 0, "match": "top_k"},
        {"score_threshold": 1.5, "match": "score_threshold"},
        {"score_threshold": [0.3], "match": "one per class"},
        {"score_threshold": [0.3, float("nan")], "match": "score_threshold"},
        {"out_wh": (0, 10), "match": "out_wh"},
    ],
)
def test_decode_rejects_bad_input(kw: dict) -> None:
    args = {
        "heatmap_logits": np.zeros((2, 4, 5)),
        "size": np.zeros((2, 4, 5)),
        "offset": np.zeros((2, 4, 5)),
        "stride": 4,
        "labels": ["a", "b"],
    }
    match = kw.pop("match")
    args.update(kw)
    hm, sz, off = args.pop("heatmap_logits"), args.pop("size"), args.pop("offset")
    with pytest.raises(InputError, match=match):
        decode_centernet(hm, sz, off, **args)
