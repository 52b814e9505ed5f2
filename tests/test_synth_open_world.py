"""Tests of the synthetic generator's open world: untagged sounds, silence, decoy lights, non-road frames.

The negatives must not give the event away to one modality (the fusion property), a siren must be
what the README defines (a sound whose pitch moves periodically) and a tone must not be one, and a
silent or non-road clip must carry no tag and no box.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.spec import EVENTS
from fusionedge.training.synth import make_sample, rules, sample_flags
from fusionedge.training.synth.clutter_sound import clutter_sound
from fusionedge.training.synth.sound import SIREN_PATTERNS, synthesize_audio

SR = 16000


@pytest.fixture(scope="module")
def flags():
    return [sample_flags(np.random.default_rng([41, i])) for i in range(4000)]


def _rate(flags, event, key) -> float:
    return float(np.mean([key(f) for f in flags if f.event == event]))


def test_silence_and_non_road_are_drawn_only_where_they_keep_the_fusion_property(flags):
    for f in flags:
        if f.ambience == "silent":  # nothing at all is heard
            assert not (f.siren or f.horn or f.speech or f.engine or f.cabin_voice or f.clutter_sound)
        if f.non_road:  # nothing must be seen
            assert not (f.lights_on_ev or f.engine or f.speech) and not f.decoy_lights
    silent = {e: _rate(flags, e, lambda f: f.ambience == "silent") for e in EVENTS}
    assert silent["emergency_ahead"] == silent["emergency_behind"] == 0.0
    assert silent["none"] > 0.04 and abs(silent["none"] - silent["lights_no_siren"]) < 0.03, silent
    non_road = {e: _rate(flags, e, lambda f: f.non_road) for e in EVENTS}
    assert non_road["emergency_ahead"] == non_road["lights_no_siren"] == 0.0
    assert non_road["none"] > 0.08 and abs(non_road["none"] - non_road["emergency_behind"]) < 0.03, non_road
    for key in (lambda f: f.clutter_sound is not None, lambda f: f.cabin_voice, lambda f: f.ambience == "quiet"):
        rates = [_rate(flags, e, key) for e in EVENTS]
        assert max(rates) - min(rates) < 0.08, rates  # independent of the event (4 x ~1,000 draws)
    assert set(Counter(f.clutter_sound for f in flags)) == {None, *rules.CLUTTER_SOUNDS}


def _pitch_track(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Dominant frequency (Hz) of each 64 ms frame that holds sound, searched between lo and hi."""
    n, hop, pad = 1024, 512, 8192
    freqs = np.fft.rfftfreq(pad, 1.0 / SR)
    band = (freqs >= lo) & (freqs <= hi)
    loud = np.sqrt(np.mean(x**2))
    track = []
    for a in range(0, x.size - n, hop):
        seg = x[a : a + n]
        if np.sqrt(np.mean(seg**2)) < 0.3 * loud:
            continue
        spec = np.abs(np.fft.rfft(seg * np.hanning(n), pad))
        track.append(freqs[band][np.argmax(spec[band])])
    return np.array(track)


def test_a_siren_moves_its_pitch_and_a_steady_tone_does_not(flags):
    """The README's definition: a siren sweeps or alternates within every clip; a tone holds its pitch."""
    sirens = [f for f in flags if f.siren][:60]
    seen = Counter()
    for i, f in enumerate(sirens):
        f = dataclasses.replace(f, horn=False, engine=False, speech=False, near_car_m=None, near_pedestrian_m=None,
                                cabin_voice=False, clutter_sound=None, ambience="quiet")
        wave, info = synthesize_audio(f, np.random.default_rng([42, i]), sample_rate=SR)
        seen[info.siren_pattern] += 1
        track = _pitch_track(wave.astype(np.float64), 150.0, 2500.0)
        assert np.ptp(track) >= 20.0, (info.siren_pattern, info.siren_timbre, np.ptp(track))
    assert set(seen) == set(SIREN_PATTERNS), seen
    for i in range(20):
        tone = clutter_sound("tone", np.random.default_rng([43, i]), SR, SR)
        track = _pitch_track(tone, 100.0, 5000.0)
        assert track.size and np.ptp(track) <= 6.0, np.ptp(track)


def test_every_clutter_sound_is_heard_and_an_unknown_one_is_refused():
    for k, kind in enumerate(rules.CLUTTER_SOUNDS):
        for i in range(3):
            x = clutter_sound(kind, np.random.default_rng([44, k, i]), SR, SR)
            assert x.shape == (SR,) and np.isfinite(x).all() and np.sqrt(np.mean(x**2)) > 1e-3, kind
    with pytest.raises(InputError, match="siren"):
        clutter_sound("siren", np.random.default_rng(0), SR, SR)


def _pulse_peak(x: np.ndarray) -> float:
    """How far the loudness envelope's strongest rate at 4-25 Hz stands above its typical one there
    (20 ms frames over the clip): a few for noise, far more for a periodic flutter."""
    frames = np.sqrt(np.mean(x[: x.size // 320 * 320].reshape(-1, 320) ** 2, axis=1))
    spec = np.abs(np.fft.rfft(frames - frames.mean())) ** 2
    f = np.fft.rfftfreq(frames.size, 0.02)
    band = spec[(f >= 4) & (f <= 25)]
    return float(band.max() / np.median(band))


def test_some_noises_pulse_fast_in_loudness():
    """About 40% of the wind and rain noises flutter at 4-25 Hz (buffeting, a rotor): their loudness then
    has one strong rate in that range (peak over median above 40; 4-11 without). A rough road pulses
    too, but its axle thumps already give its loudness rates of their own, so it is not counted."""
    for k, kind in enumerate(("wind", "rain")):
        peaks = np.array([_pulse_peak(clutter_sound(kind, np.random.default_rng([47, k, i]), 4 * SR, SR))
                          for i in range(40)])
        assert 0.2 <= np.mean(peaks > 40) <= 0.6 and np.mean(peaks < 15) >= 0.4, (kind, np.round(peaks))


def test_silent_and_quiet_clips(flags):
    silent = [f for f in flags if f.ambience == "silent"][:40]
    peaks = [np.abs(synthesize_audio(f, np.random.default_rng([45, i]))[0]).max() for i, f in enumerate(silent)]
    assert max(peaks) <= 32767 * 10 ** (-45 / 20) + 1 and min(peaks) == 0  # a hiss far below, or all zeros
    assert all(rules.audio_tags_for(f) == () for f in silent)
    # a quiet ambience with nothing else in it is a near-silent clip; the same scene on a road is loud
    bare = dataclasses.replace(silent[0], ambience="quiet")
    quiet = np.abs(synthesize_audio(bare, np.random.default_rng(46))[0]).max()
    road = np.abs(synthesize_audio(dataclasses.replace(bare, ambience="road"), np.random.default_rng(46))[0]).max()
    assert road > 0.2 * 32767 and quiet < road * 10 ** (-19 / 20)
    with pytest.raises(InputError, match="silent"):
        synthesize_audio(dataclasses.replace(bare, ambience="silent", horn=True), np.random.default_rng(0))


def test_non_road_and_decoy_scenes_render_with_the_right_boxes():
    scenes = [make_sample(47, i) for i in range(70)]
    non_road = [s for s in scenes if s.flags.non_road]
    decoy = [s for s in scenes if s.info["decoys"]]
    assert non_road and decoy
    for s in non_road:
        assert s.boxes == [] and s.event in ("none", "emergency_behind") and s.info["view"] != "road"
        assert s.frames.shape == (12, 192, 320, 3)
    for s in decoy:  # decoy lights add no box, and the lights-ON vehicle keeps its box
        if s.flags.lights_on_ev:
            assert ("emergency_vehicle", s.info["lights_on_ev_box"]) in s.boxes
        assert all(label in ("car", "pedestrian", "traffic_light", "emergency_vehicle") for label, _ in s.boxes)


def test_sun_glare_never_hides_which_light_bar_lamp_is_lit():
    """A lit lamp outshines the glare around it: once the glare washed the light bar out to white, so
    about half of the glare clips with a lights-ON vehicle showed no lights cue under a lights label."""
    from fusionedge.training.synth.scene import render_video

    spans, i = [], 0
    while len(spans) < 5 and i < 400:
        rng_flags, rng_video, _ = np.random.default_rng([48, i]).spawn(3)
        i += 1
        f = sample_flags(rng_flags)
        if not f.lights_on_ev:
            continue
        frames, _, info = render_video(f, rng_video)
        if info.weather != "glare":
            continue
        x1, y1, x2, y2 = info.lights_on_ev_box
        bar = frames[:, max(0, y1 - 4) : y1 + round(0.12 * (y2 - y1)) + 4, max(0, x1 - 4) : x2 + 4].astype(float)
        rb = bar[..., 0] - bar[..., 2]
        spans.append(float(np.ptp(rb.max(axis=(1, 2)) + rb.min(axis=(1, 2)))))  # red lit > 0, blue lit < 0
    assert len(spans) == 5 and min(spans) > 80, spans


def test_a_band_limited_recording_has_nothing_above_its_band_edge(flags):
    """One clip in five passes only up to 3.4-11 kHz, like the 8 and 22 kHz recordings of the world."""
    limited, full = [], []
    for i, f in enumerate([f for f in flags if f.ambience == "road"][:40]):
        wave, info = synthesize_audio(f, np.random.default_rng([49, i]), sample_rate=48000)
        spec = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
        freqs = np.fft.rfftfreq(wave.size, 1.0 / 48000)
        edge = info.band_limit_hz or 11000.0
        share = spec[freqs > 2 * edge].sum() / spec.sum()  # the power an octave above the band edge
        (limited if info.band_limit_hz else full).append(share)
    assert 2 <= len(limited) <= 20 and full
    assert max(limited) < 1e-5 and 10 * max(limited) < np.median(full), (max(limited), np.median(full))


def test_a_wet_road_hisses_and_changes_nothing_else(flags, monkeypatch):
    """A quarter of the clips with sound carry a wet road's spray: much more of their power lies above
    3 kHz than a dry road's. The spray is drawn on its own stream, so a clip's every other source,
    level and pattern is the same wet or dry."""
    from fusionedge.training.synth import sound

    quiet = [dataclasses.replace(f, siren=False, horn=False, speech=False, engine=False, near_car_m=None,
                                 near_pedestrian_m=None, cabin_voice=False, clutter_sound=None)
             for f in flags if f.ambience == "road"][:120]
    share = {True: [], False: []}
    for i, f in enumerate(quiet):
        wave, info = synthesize_audio(f, np.random.default_rng([50, i]))
        spec = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
        share[info.wet_road].append(spec[np.fft.rfftfreq(wave.size, 1 / SR) > 3000].sum() / spec.sum())
    assert 0.15 <= len(share[True]) / len(quiet) <= 0.35, len(share[True])
    assert np.median(share[True]) > 5 * np.median(share[False]), (np.median(share[True]), np.median(share[False]))
    busy = [f for f in flags if f.siren and f.clutter_sound and f.ambience == "road"][:6]
    for i, f in enumerate(busy):
        monkeypatch.setattr(sound, "P_WET_ROAD", 0.0)
        _, dry = synthesize_audio(f, np.random.default_rng([51, i]))
        monkeypatch.setattr(sound, "P_WET_ROAD", 1.0)
        _, wet = synthesize_audio(f, np.random.default_rng([51, i]))
        assert wet.wet_road and not dry.wet_road
        assert dataclasses.replace(wet, wet_road=False) == dry
