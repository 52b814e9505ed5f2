"""The runtime tracker and its track events on synthetic box streams with known identities.

Identity quality is scored by py-motmetrics (through :mod:`fusionedge.training.track_eval`), the
same evaluator the tracking report uses, so "IDF1 above x" means what it means on MOTChallenge.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.postprocess import Detection
from fusionedge.sdk.track_events import (
    DB_PER_LOG_DISTANCE,
    SirenLevels,
    TrackEventMonitor,
    estimate_motion,
    scale_rate,
    siren_band_level_db,
    time_to_contact,
)
from fusionedge.sdk.tracking import Track, Tracker
from fusionedge.training.track_eval import mot_metrics

pytest.importorskip("scipy")
pytest.importorskip("motmetrics")

FPS = 10.0


def _det(label, box, score=0.9):
    return Detection(label, score, *box)


def _run(stream, tracker=None):
    """Feed ``stream`` (per frame: list of (true id, label, box, score)) and return truth and hypothesis rows."""
    tracker = tracker or Tracker(FPS)
    truth, hyp = [], []
    for k, objs in enumerate(stream):
        for tid, label, box, _ in objs:
            truth.append((k + 1, tid, label, list(box)))
        visible = [_det(label, box, score) for _, label, box, score in objs if score > 0]
        for tr in tracker.update(visible, k / FPS):
            hyp.append((k + 1, tr.track_id, tr.label, list(tr.box)))
    return truth, hyp


def _crossing(frames=40, occlude=range(0), miss_every=0, rng=None):
    """Two cars crossing left-right and one pedestrian; the first car hidden in ``occlude`` frames."""
    rng = rng or np.random.default_rng(0)
    stream = []
    for k in range(frames):
        a = (10 + 4 * k, 60, 50 + 4 * k, 90)
        b = (170 - 4 * k, 62, 210 - 4 * k, 92)
        p = (120, 40 + k * 0.5, 132, 70 + k * 0.5)
        jit = rng.normal(0, 0.7, size=(3, 4))
        objs = [(1, "car", tuple(np.add(a, jit[0])), 0.0 if k in occlude else 0.9),
                (2, "car", tuple(np.add(b, jit[1])), 0.85),
                (3, "pedestrian", tuple(np.add(p, jit[2])), 0.8)]
        if miss_every and k % miss_every == miss_every - 1:
            objs[1] = (2, "car", objs[1][2], 0.0)  # a detector miss
        stream.append(objs)
    return stream


def test_crossing_objects_a_five_frame_occlusion_and_misses_keep_their_ids():
    truth, hyp = _run(_crossing(occlude=range(12, 17), miss_every=7))
    m = mot_metrics([("s", truth, hyp, 40)])
    assert m["car"]["num_switches"] == 0
    assert m["car"]["idf1"] >= 0.9
    assert m["pedestrian"]["idf1"] >= 0.95
    # the occluded car comes back as the same track
    ids_car1 = {h[1] for h in hyp if h[2] == "car" and h[3][0] < 100 and h[0] < 12}
    ids_after = {h[1] for h in hyp if h[2] == "car" and h[0] in (18, 19) and abs(h[3][0] - (10 + 4 * 17)) < 8}
    assert ids_car1 == ids_after and len(ids_car1) == 1


def test_a_forced_id_swap_is_counted_as_switches():
    truth, hyp = _run(_crossing())
    good = mot_metrics([("s", truth, hyp, 40)])["car"]
    swapped = [(f, {1: 2, 2: 1}.get(i, i) if f > 20 and lab == "car" else i, lab, b) for f, i, lab, b in hyp]
    bad = mot_metrics([("s", truth, swapped, 40)])["car"]
    assert good["num_switches"] == 0 and bad["num_switches"] == 2
    assert bad["idf1"] < good["idf1"] - 0.3


def test_classes_never_share_a_track_and_a_low_score_keeps_a_track_alive():
    tracker = Tracker(FPS)
    box = (50, 50, 80, 90)
    first = tracker.update([_det("car", box)], 0.0)
    # same place, other class: the pedestrian starts its own track; the car's only detection is
    # low-score (blurred, half hidden) and still matches it in the second association
    tracker.update([_det("pedestrian", box), _det("car", (51, 50, 81, 90), 0.3)], 0.1)
    back = tracker.update([_det("pedestrian", box), _det("car", (52, 50, 82, 90), 0.3)], 0.2)
    car = [t for t in back if t.label == "car"]
    assert [t.track_id for t in car] == [first[0].track_id] and car[0].score == pytest.approx(0.3)
    assert {t.track_id for t in back if t.label == "pedestrian"} == {2}
    # a lost track is not revived by a low-score detection alone (ByteTrack's rule): no new id either
    tracker.update([], 0.3)
    assert tracker.update([_det("car", (52, 50, 82, 90), 0.3)], 0.4) == []


def test_a_lost_track_ends_after_the_buffer_and_is_reported_ended():
    tracker = Tracker(FPS, buffer_seconds=0.5)
    tracker.update([_det("car", (10, 10, 40, 40))], 0.0)
    tracker.update([_det("car", (11, 10, 41, 40))], 0.1)
    ended = []
    for k in range(2, 10):
        tracker.update([], k / FPS)
        ended += tracker.ended
    assert [t.track_id for t in ended] == [1] and not tracker.tracks


def test_uneven_frame_gaps_move_the_prediction_by_the_true_time():
    tracker = Tracker(FPS)
    for k in range(6):  # 2 px per frame to the right
        tracker.update([_det("car", (10 + 2 * k, 10, 40 + 2 * k, 40))], k / FPS)
    tracker.update([], 1.0)  # 5 frames later, missed: predicted ~10 px further
    x1 = tracker.tracks[0].predicted_box()[0]
    assert 26 < x1 < 34


@pytest.mark.parametrize("bad", [
    Detection("car", 0.9, float("nan"), 0, 10, 10),
    Detection("car", 0.9, 10, 10, 5, 20),  # negative width
    Detection("car", float("inf"), 0, 0, 10, 10),
    Detection("car", 1.5, 0, 0, 10, 10),
])
def test_bad_boxes_are_an_input_error(bad):
    with pytest.raises(InputError):
        Tracker(FPS).update([bad], 0.0)


def test_a_box_clipped_to_zero_size_is_skipped_not_an_error():
    # the decoder clips boxes to the frame: one at the edge can come out with no width
    tracker = Tracker(FPS)
    assert tracker.update([Detection("car", 0.9, 32.4, 77.6, 32.4, 80.1), _det("car", (5, 5, 20, 20))], 0.0)
    assert [t.box[0] for t in tracker.tracks] == [5.0]


def test_time_must_increase_and_parameters_must_be_sane():
    tracker = Tracker(FPS)
    tracker.update([], 1.0)
    for t in (1.0, 0.5, float("nan")):
        with pytest.raises(InputError):
            tracker.update([], t)
    for kw in ({"fps": 0}, {"fps": float("nan")}, {"fps": 10, "match_iou": 2.0},
               {"fps": 10, "low_threshold": 0.7, "high_threshold": 0.5}):
        with pytest.raises(InputError):
            Tracker(**kw)


def _track_of(heights, fps=FPS, label="car"):
    tr = Track(1, label, 0.9, (0, 0, 1, 1), 0.0, 0.0)
    for k, h in enumerate(heights):
        tr.history.append((k / fps, (100.0, 100.0 - h, 100.0 + h / 2, 100.0)))
    tr.t_last = (len(heights) - 1) / fps
    return tr


def test_growing_boxes_approach_shrinking_recede_and_steady_ones_are_stationary():
    t = np.arange(30) / FPS
    grow = _track_of(20 * np.exp(0.2 * t))
    shrink = _track_of(40 * np.exp(-0.2 * t))
    rng = np.random.default_rng(1)
    steady = _track_of(30 + rng.normal(0, 0.3, size=30))
    assert estimate_motion(grow).motion == "approaching"
    assert estimate_motion(shrink).motion == "receding"
    assert estimate_motion(steady).motion == "stationary"
    rate, _se, n = scale_rate(grow.history)
    assert rate == pytest.approx(0.2, rel=1e-6) and n == 30


def test_time_to_contact_from_a_known_scale_rate():
    # a box whose height doubles every ~3.47 s (ln 2 / 0.2): TTC = 1 / 0.2 = 5 s
    t = np.arange(20) / FPS
    est = estimate_motion(_track_of(25 * np.exp(0.2 * t)))
    assert est.ttc_s == pytest.approx(5.0, rel=1e-3)
    # h / (dh/dt): 50 px growing 10 px/s -> 5 s; not growing -> no contact
    assert time_to_contact(50.0, 10.0) == pytest.approx(5.0)
    assert time_to_contact(50.0, -1.0) is None
    with pytest.raises(InputError):
        time_to_contact(0.0, 1.0)
    with pytest.raises(InputError):
        scale_rate([(0.0, (0, 10, 5, 5)), (0.1, (0, 0, 5, 5))])


def _siren(seconds, sr, gain_fn, rng):
    t = np.arange(int(seconds * sr)) / sr
    f = 900 + 400 * np.sin(2 * np.pi * 0.3 * t)
    tone = np.sin(2 * np.pi * np.cumsum(f) / sr) * gain_fn(t)
    return 0.3 * tone + 0.02 * rng.normal(size=t.size)


def test_the_siren_level_trend_decides_when_the_box_barely_moves():
    sr, rng = 8000, np.random.default_rng(2)
    # the siren's distance halves over 4 s (+6 dB): a closing rate of ln 2 / 4 = 0.17/s
    audio = _siren(4.0, sr, lambda t: 1.0 / (1.0 - t / 8.0), rng)
    levels = SirenLevels(sr)
    for k in range(1, 33):
        end = int(k / 8 * sr)
        levels.add(audio[max(0, end - sr // 4):end], k / 8)
    slope, _, n = levels.trend(4.0)
    assert n >= 20 and slope / DB_PER_LOG_DISTANCE == pytest.approx(math.log(2) / 4, rel=0.2)
    # a noisy, flat box: alone it says stationary; with the siren, approaching
    flicker = 30 + 1.5 * (-1.0) ** np.arange(30)  # a box whose height only flickers
    noisy = _track_of(flicker, fps=8.0, label="emergency_vehicle")
    noisy.history = type(noisy.history)((t + 0.375, b) for t, b in noisy.history)
    assert estimate_motion(noisy).motion == "stationary"
    assert estimate_motion(noisy, siren=levels).motion == "approaching"
    # a car never reads the siren
    car = _track_of(30 + rng.normal(0, 1.5, size=30), fps=8.0, label="car")
    assert estimate_motion(car, siren=levels).siren_db_per_s is None
    with pytest.raises(InputError):
        siren_band_level_db(np.array([0.1, np.nan, 0.2]), sr)
    with pytest.raises(InputError):
        levels.add(audio[:100], 1.0)  # not after the last window


def test_monitor_reports_entry_motion_and_exit_as_json_lines():
    tracker, monitor = Tracker(FPS, buffer_seconds=0.3), TrackEventMonitor(min_seconds=1.0)
    events = []
    for k in range(40):
        h = 20 * math.exp(0.25 * k / FPS)
        dets = [_det("car", (100, 100 - h, 100 + h, 100))] if k < 30 else []
        tracks = tracker.update(dets, k / FPS)
        events += monitor.update(tracks, tracker.ended, k / FPS)
    kinds = [(e.kind, e.motion.motion if e.motion else None) for e in events]
    assert kinds[0] == ("entry", None)
    assert ("motion", "approaching") in kinds
    assert kinds[-1] == ("exit", "approaching")
    d = events[-1].to_dict()
    assert d["event"] == "track_exit" and d["track_id"] == 1 and 3.0 < d["ttc_s"] < 5.0
