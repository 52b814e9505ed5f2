"""Tests of the audio-visual correspondences of the synthetic generator (training/synth).

Sounds follow what is seen (siren level and envelope <-> the lights-ON vehicle's distance and motion,
engine <-> a near car, speech <-> a near pedestrian), and none of it tells the event to one modality.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import numpy as np
import pytest

from fusionedge.sdk.errors import InputError
from fusionedge.sdk.spec import EVENTS
from fusionedge.training.synth import make_sample, rules, sample_flags
from fusionedge.training.synth.sound import (
    ENGINE_SNR_DB,
    SIREN_SNR_DB,
    SPEECH_SNR_DB,
    level_at_distance,
    synthesize_audio,
)

SR = 16000


def _spearman(a, b) -> float:
    ra = np.argsort(np.argsort(np.asarray(a, dtype=float)))
    rb = np.argsort(np.argsort(np.asarray(b, dtype=float)))
    return float(np.corrcoef(ra, rb)[0, 1])


def _ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (largest gap between the empirical CDFs)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, "right") / a.size
    cdf_b = np.searchsorted(b, grid, "right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _h(box) -> int:
    return box[3] - box[1]


def _area(box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


@pytest.fixture(scope="module")
def flags():
    return [sample_flags(np.random.default_rng([31, i])) for i in range(3000)]


@pytest.fixture(scope="module")
def scenes():
    return [make_sample(21, i) for i in range(160)]


# --- the latent decisions ----------------------------------------------------------------------------


def test_latents_are_set_exactly_where_they_apply(flags):
    for f in flags:
        has_ev = f.event != "none"
        assert (f.ev_distance_m is not None) == has_ev == (f.ev_motion is not None)
        assert (f.ev_depth_change_m is not None) == has_ev
        assert (f.near_car_m is not None) == f.engine
        assert (f.near_pedestrian_m is not None) == f.speech
        if has_ev:
            d, dz = f.ev_distance_m, f.ev_depth_change_m
            assert rules.EV_DISTANCE_M[0] <= d <= rules.EV_DISTANCE_M[1]
            assert 9.0 <= d - abs(dz) / 2 and d + abs(dz) / 2 <= 24.0  # the vehicle stays within 9-24 m
            if f.ev_motion == "approach":
                assert -3.0 <= dz <= -1.0
            elif f.ev_motion == "recede":
                assert 1.0 <= dz <= 3.0
            else:
                assert abs(dz) < rules.EV_STEADY_CHANGE_M
        if f.engine:
            assert 5.0 <= f.near_car_m <= 12.0
        if f.speech:
            assert rules.NEAR_PEDESTRIAN_M[0] <= f.near_pedestrian_m <= rules.NEAR_PEDESTRIAN_M[1]


def test_source_draws_have_one_distribution_for_every_event(flags):
    by_event = defaultdict(list)
    for f in flags:
        if f.event != "none":
            by_event[f.event].append(f)
    ahead = by_event["emergency_ahead"]
    for other in ("emergency_behind", "lights_no_siren"):  # siren-side and lights-side twins of "ahead"
        fs = by_event[other]
        da = np.array([f.ev_distance_m for f in ahead])
        db = np.array([f.ev_distance_m for f in fs])
        assert abs(da.mean() - db.mean()) < 0.6 and _ks(da, db) < 0.1, other
        ma, mb = Counter(f.ev_motion for f in ahead), Counter(f.ev_motion for f in fs)
        for m in rules.EV_MOTIONS:
            assert abs(ma[m] / len(ahead) - mb[m] / len(fs)) < 0.07, (other, m)
    for tag, dist in (("engine", "near_car_m"), ("speech", "near_pedestrian_m")):
        rates = [np.mean([getattr(f, tag) for f in flags if f.event == e]) for e in EVENTS]
        assert max(rates) - min(rates) < 0.1, (tag, rates)
        means = [np.mean([getattr(f, dist) for f in flags if f.event == e and getattr(f, tag)])
                 for e in EVENTS]
        assert max(means) - min(means) < 0.8, (dist, means)


def _bayes_accuracy(features, events, fit: slice, test: slice) -> float:
    table: dict[tuple, Counter] = defaultdict(Counter)
    for x, e in zip(features[fit], events[fit]):
        table[x][e] += 1
    overall = Counter(events[fit]).most_common(1)[0][0]
    guess = [table[x].most_common(1)[0][0] if x in table else overall for x in features[test]]
    return float(np.mean([g == e for g, e in zip(guess, events[test])]))


def test_no_modality_alone_learns_the_event_from_the_new_latents(flags):
    """What each modality can perceive of the new latents (binned) still leaves it at chance."""

    def b(v, lo, hi, n=3):
        return None if v is None else int(np.clip((v - lo) / (hi - lo) * n, 0, n - 1))

    events = [f.event for f in flags]
    audio = [(f.siren, f.horn, f.engine, f.speech, f.ev_motion if f.siren else None,
              b(f.ev_distance_m, 10.5, 22.5) if f.siren else None, b(f.near_car_m, 5, 12),
              b(f.near_pedestrian_m, 6, 15)) for f in flags]
    vision = [(f.lights_on_ev, f.lights_off_ev, f.cars, f.pedestrians,
               f.ev_motion if f.lights_on_ev else None,
               b(f.ev_distance_m, 10.5, 22.5) if f.lights_on_ev else None, b(f.near_car_m, 5, 12),
               b(f.near_pedestrian_m, 6, 15)) for f in flags]
    fit, test = slice(0, 1500), slice(1500, 3000)
    assert _bayes_accuracy(audio, events, fit, test) <= 0.62
    assert _bayes_accuracy(vision, events, fit, test) <= 0.62
    fused = [(f.siren, f.lights_on_ev) for f in flags]
    assert _bayes_accuracy(fused, events, fit, test) == 1.0


# --- audio levels and envelopes --------------------------------------------------------------------------


def test_levels_fall_with_distance_and_siren_level_does_not_leak(flags):
    levels = defaultdict(list)
    for i, f in enumerate(flags[:900]):
        _, info = synthesize_audio(f, np.random.default_rng([32, i]), sample_rate=8000)
        if f.siren:
            levels["siren"].append((f.event, f.ev_distance_m, info.levels_db["siren"]))
        if f.engine:
            levels["engine"].append((None, f.near_car_m, info.levels_db["engine"]))
        if f.speech:
            levels["speech"].append((None, f.near_pedestrian_m, info.levels_db["speech"]))
    ranges = (("siren", SIREN_SNR_DB), ("engine", ENGINE_SNR_DB), ("speech", SPEECH_SNR_DB))
    for source, (lo, hi) in ranges:
        d = np.array([x[1] for x in levels[source]])
        lv = np.array([x[2] for x in levels[source]])
        assert lo <= lv.min() and lv.max() <= hi, source
        assert _spearman(d, lv) < -0.5, (source, _spearman(d, lv))  # nearer is louder
    ahead = np.array([x[2] for x in levels["siren"] if x[0] == "emergency_ahead"])
    behind = np.array([x[2] for x in levels["siren"] if x[0] == "emergency_behind"])
    assert len(ahead) > 150 and len(behind) > 150
    assert abs(ahead.mean() - behind.mean()) < 0.8 and _ks(ahead, behind) < 0.15


def _band_rms(x: np.ndarray, sr: int, lo: float, hi: float) -> float:
    spec = np.fft.rfft(x * np.hanning(x.size))
    f = np.fft.rfftfreq(x.size, 1.0 / sr)
    return float(np.sqrt(np.sum(np.abs(spec[(f >= lo) & (f <= hi)]) ** 2)))


def test_siren_envelope_follows_the_motion_in_the_waveform(flags):
    """Siren-only clips: the siren band gets louder over an approach and quieter over a recede."""
    ratios = defaultdict(list)
    siren_flags = [f for f in flags if f.siren][:150]
    for i, f in enumerate(siren_flags):
        f = dataclasses.replace(
            f, horn=False, engine=False, speech=False, near_car_m=None, near_pedestrian_m=None,
            cabin_voice=False, clutter_sound=None, ambience="road",
        )
        wave, _ = synthesize_audio(f, np.random.default_rng([33, i]), sample_rate=SR)
        x = wave.astype(np.float64)
        q = x.size // 4
        first, last = _band_rms(x[:q], SR, 500, 6000), _band_rms(x[-q:], SR, 500, 6000)
        ratios[f.ev_motion].append(20 * np.log10(last / first))
    approach, recede, steady = (np.array(ratios[m]) for m in ("approach", "recede", "steady"))
    assert np.mean(approach > 0) >= 0.9 and np.mean(recede < 0) >= 0.9, (approach, recede)
    assert np.median(approach) > 3.0 and np.median(recede) < -3.0
    assert abs(np.median(steady)) < 2.0


# --- rendered video -------------------------------------------------------------------------------------


def test_siren_level_follows_the_vehicle_size_in_view(scenes):
    ahead = [s for s in scenes if s.event == "emergency_ahead"]
    assert len(ahead) >= 30
    level = [s.info["levels_db"]["siren"] for s in ahead]
    height = [_h(s.info["lights_on_ev_box"]) for s in ahead]
    assert _spearman(level, height) > 0.5  # nearer (bigger) vehicle, louder siren


def test_vehicle_motion_in_view_matches_the_envelope(scenes):
    n = Counter()
    for s in scenes:
        if not s.flags.lights_on_ev:
            continue
        first, last = s.info["lights_on_ev_box_first"], s.info["lights_on_ev_box"]
        growth = _area(last) / _area(first)
        motion = s.info["ev_motion"]
        n[motion] += 1
        if s.flags.siren:
            assert s.info["siren_envelope"] == motion
        if motion == "approach":
            assert growth > 1.03, (s.index, growth)
        elif motion == "recede":
            assert growth < 0.97, (s.index, growth)
        else:
            assert 0.85 < growth < 1.15, (s.index, growth)
    assert min(n.values()) >= 15, n


def test_engine_iff_a_near_car_in_view(scenes):
    # a car 1.35-1.6 m tall seen with a focal of 0.85-1.05 x 320 px: at <= 12.25 m it is at least 29 px
    # tall (its box may lose a few px to the image border), at >= 14 m at most 39 px
    for s in scenes:
        car_h = [_h(b) for label, b in s.boxes if label == "car"]
        if s.flags.engine:
            near = s.info["near_car_box"]
            assert near is not None and ("car", near) in s.boxes, s.index
            assert _h(near) >= 26, (s.index, near)
            others = [_h(b) for label, b in s.boxes if label == "car" and b != near]
            assert all(h <= 39 for h in others), (s.index, others)
        else:
            assert s.info["near_car_box"] is None and all(h <= 39 for h in car_h), (s.index, car_h)
    eng = [s for s in scenes if s.flags.engine]
    level, height = [s.info["levels_db"]["engine"] for s in eng], [_h(s.info["near_car_box"]) for s in eng]
    assert _spearman(level, height) > 0.4


def test_speech_iff_a_near_pedestrian_in_view(scenes):
    # a pedestrian 1.5-1.9 m tall: at <= 15 m at least 27 px tall, at >= 18 m at most 36 px
    for s in scenes:
        if s.flags.speech:
            near = s.info["near_pedestrian_box"]
            assert near is not None and ("pedestrian", near) in s.boxes, s.index
            assert _h(near) >= 24, (s.index, near)
        else:
            ped_h = [_h(b) for label, b in s.boxes if label == "pedestrian"]
            assert s.info["near_pedestrian_box"] is None and all(h <= 37 for h in ped_h), (s.index, ped_h)
    sp = [s for s in scenes if s.flags.speech]
    assert len(sp) >= 30
    level = [s.info["levels_db"]["speech"] for s in sp]
    height = [_h(s.info["near_pedestrian_box"]) for s in sp]
    assert _spearman(level, height) > 0.4


def test_meta_records_the_latents(scenes):
    for s in scenes[:20]:
        f, info = s.flags, s.info
        for key, v in (("ev_distance_m", f.ev_distance_m), ("ev_depth_change_m", f.ev_depth_change_m),
                       ("near_car_m", f.near_car_m), ("near_pedestrian_m", f.near_pedestrian_m)):
            assert (info[key] is None) == (v is None) and (v is None or abs(info[key] - v) <= 0.005), key
        assert info["ev_motion"] == f.ev_motion


def test_missing_latents_are_refused(flags):
    f = next(f for f in flags if f.engine and f.siren)
    with pytest.raises(InputError, match="near_car_m"):
        synthesize_audio(dataclasses.replace(f, near_car_m=None), np.random.default_rng(0))
    with pytest.raises(InputError, match="ev_distance_m"):
        synthesize_audio(dataclasses.replace(f, ev_distance_m=None), np.random.default_rng(0))
    with pytest.raises(InputError, match="distances must be positive"):
        level_at_distance(0.0, 5.0, 12.0, 7.0, np.random.default_rng(0))
