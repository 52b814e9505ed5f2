"""Tests of the generator's moving pitches that are not sirens: intonated voices, gusts, tyre hum.

A siren is a continuous tone whose pitch moves periodically at siren rates
(``training/synth/README.md``). The voices glide over a phrase by up to an octave, yet their voicing
breaks and their pitch has no period; a wind whistle follows the gusts and a tyre hum the car's
speed, both irregular bands of noise. These tests measure that on the waveforms and on the contours
the renderers draw.
"""

from __future__ import annotations

import numpy as np
from fusionedge.training.synth import make_sample, rules, sample_flags
from fusionedge.training.synth.clutter_sound import clutter_sound, gust, narrowband
from fusionedge.training.synth.sound import _siren_sweep, synthesize_audio
from fusionedge.training.synth.voice import MAX_VOICED_S, PHRASE_RANGE_ST, VOICE_F0_HZ, talker

SR = 16000
HOP = 160  # 10 ms


def _autocorr_pitch(x: np.ndarray, lo: float, hi: float, frame: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """Per 10 ms hop: the autocorrelation pitch (Hz) between ``lo`` and ``hi`` and its peak (0..1).

    The normalized cross-correlation of each 40 ms frame with the signal ``k`` samples later, for
    every lag ``k`` of a period between ``lo`` and ``hi``.
    """
    lags = np.arange(int(SR / hi), int(SR / lo) + 1)
    span = frame + lags[-1]
    starts = np.arange(0, x.size - span, HOP)
    segs = np.lib.stride_tricks.sliding_window_view(x, span)[starts]
    nfft = 1 << int(np.ceil(np.log2(2 * span)))
    cross = np.fft.irfft(np.conj(np.fft.rfft(segs[:, :frame], nfft)) * np.fft.rfft(segs, nfft), nfft)[:, lags]
    sq = np.concatenate([np.zeros((starts.size, 1)), np.cumsum(segs**2, axis=1)], axis=1)
    energy = sq[:, lags + frame] - sq[:, lags]  # of each lagged window
    r = cross / np.sqrt(sq[:, frame : frame + 1] * energy + 1e-12)
    k = np.argmax(r, axis=1)
    return SR / lags[k], r[np.arange(starts.size), k]


def _periodicity(track: np.ndarray, max_lag: int) -> float:
    """The highest autocorrelation of a contour after its first zero crossing: ~1 for a periodic one."""
    x = track - track.mean()
    a = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * x.size)) ** 2)[:max_lag]
    a = a / a[0]
    below = np.flatnonzero(a < 0)
    return float(a[below[0] :].max()) if below.size else 0.0


def _runs(mask: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True in a boolean array."""
    d = np.diff(np.r_[0, mask.astype(int), 0])
    return np.flatnonzero(d == -1) - np.flatnonzero(d == 1)


def test_a_voice_glides_over_its_phrase_and_the_waveform_follows_the_contour():
    """The pitch moves continuously across words, by a few semitones to an octave within a second,
    and what is heard is that pitch (an autocorrelation tracker on the waveform agrees with it)."""
    ranges, agree, steps = [], [], []
    for i in range(24):
        v = talker(np.random.default_rng([60, i]), SR, SR)
        st = 12 * np.log2(v.f0_hz[v.voiced])
        ranges.append(np.ptp(st))
        assert VOICE_F0_HZ[0] * 2 ** -0.6 <= v.f0_hz.min() and v.f0_hz.max() <= VOICE_F0_HZ[1] * 2 ** 0.6
        pitch, peak = _autocorr_pitch(v.wave, 55.0, 550.0)
        centre = v.f0_hz[HOP * np.arange(pitch.size) + 320]
        held = v.voiced[HOP * np.arange(pitch.size) + 320] & (peak > 0.6)
        err = np.abs(12 * np.log2(pitch[held] / centre[held]))
        agree.append(np.mean(err < 1.0))
        both = v.voiced[HOP * np.arange(pitch.size) + 320]
        steps.append(np.abs(np.diff(12 * np.log2(centre)))[both[1:] & both[:-1]].max())  # per 10 ms, voiced
    ranges = np.array(ranges)
    assert np.median(agree) > 0.8, agree
    assert max(steps) < 1.0, max(steps)  # a glide, never a step
    assert ranges.max() <= PHRASE_RANGE_ST[1] + 0.5 and np.median(ranges) >= 3.0, ranges
    assert np.mean(ranges >= 6.0) >= 0.15, ranges  # lively voices move by half an octave or more


def test_a_voice_never_satisfies_the_siren_rule():
    """Its voicing breaks at least every MAX_VOICED_S (a siren's tone runs through the clip) and its
    pitch has no period (a yelp's, a phaser's and a hi-lo's contours are periodic over seconds)."""
    for i in range(24):
        v = talker(np.random.default_rng([61, i]), 2 * SR, SR)
        assert _runs(v.voiced).max() <= MAX_VOICED_S * SR + 1
        _, peak = _autocorr_pitch(v.wave, 55.0, 550.0)  # what a listener hears as voiced
        assert _runs(peak > 0.6).max() * HOP <= (MAX_VOICED_S + 0.1) * SR
    voices = [_periodicity(12 * np.log2(talker(np.random.default_rng([62, i]), 6 * SR, SR).f0_hz[::HOP]), 200)
              for i in range(30)]
    t = np.arange(6 * SR) / SR
    sirens = [_periodicity(12 * np.log2(_siren_sweep(np.random.default_rng([63, i]), t, p)[::HOP]), 200)
              for p in ("yelp", "phaser", "hilo") for i in range(10)]
    assert max(voices) < 0.5 and min(sirens) > 0.7, (max(voices), min(sirens))


def test_a_siren_tone_runs_through_the_clip_unbroken():
    """The other half of the rule: a siren alone never stops sounding within a clip (its loudness
    follows the source's motion, down to -25 dB at the far end of an approach, but never breaks)."""
    flags = [f for f in (sample_flags(np.random.default_rng([64, i])) for i in range(200)) if f.siren][:12]
    for i, f in enumerate(flags):
        f = rules.SceneFlags(**{**f.__dict__, "horn": False, "engine": False, "speech": False, "near_car_m": None,
                                "near_pedestrian_m": None, "cabin_voice": False, "clutter_sound": None,
                                "ambience": "quiet"})
        wave, info = synthesize_audio(f, np.random.default_rng([65, i]), sample_rate=SR)
        level = np.sqrt(np.mean(wave[: wave.size // HOP * HOP].astype(np.float64).reshape(-1, HOP) ** 2, axis=1))
        assert level.min() > level.max() * 10 ** (-30 / 20), (info.siren_pattern, info.siren_envelope)


def _peak_track(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Frequency (Hz) of the strongest spectral peak between lo and hi per 64 ms frame, 32 ms apart."""
    n, pad = 1024, 8192
    freqs = np.fft.rfftfreq(pad, 1.0 / SR)
    band = (freqs >= lo) & (freqs <= hi)
    return np.array([freqs[band][np.argmax(np.abs(np.fft.rfft(x[a : a + n] * np.hanning(n), pad))[band])]
                     for a in range(0, x.size - n, 512)])


def test_a_narrow_band_follows_its_moving_centre():
    t = np.arange(SR) / SR
    centre = 800.0 * 2 ** (4 * t / 12)  # up four semitones over the second
    x = narrowband(np.random.default_rng(66), centre, 20.0, SR)
    track = _peak_track(x, 300.0, 3000.0)
    frames = centre[512 * np.arange(track.size) + 512]
    assert np.abs(12 * np.log2(track / frames)).max() < 0.7
    assert abs(np.sqrt(np.mean(x**2)) - 1.0) < 1e-6


def test_gusts_and_their_whistles_move_without_a_period():
    gusts = [_periodicity(np.log(gust(np.random.default_rng([67, i]), 6 * SR, SR)[::HOP]), 200) for i in range(30)]
    assert max(gusts) < 0.5, max(gusts)
    moved = []
    for i in range(30):
        track = _peak_track(clutter_sound("wind", np.random.default_rng([68, i]), SR, SR), 350.0, 6000.0)
        moved.append(np.ptp(12 * np.log2(np.convolve(track, np.ones(3) / 3, mode="valid"))))
    assert np.mean(np.array(moved) >= 1.0) >= 0.5, np.round(moved, 1)  # most winds whistle, and it moves


def test_tyre_hum_sweeps_with_the_speed_and_rain_rings_at_a_drifting_resonance():
    hum = []
    for i in range(20):
        track = _peak_track(clutter_sound("tyre_hum", np.random.default_rng([69, i]), SR, SR), 180.0, 1700.0)
        st = 12 * np.log2(track)
        smooth = np.array([np.median(st[max(0, j - 2) : j + 3]) for j in range(st.size)])  # past a stray frame
        hum.append(np.percentile(smooth, 90) - np.percentile(smooth, 10))
    # the speed changes by 5-30% over the clip (up to 4.5 semitones), the band is a few per cent wide
    assert np.median(hum) >= 1.0 and max(hum) <= 6.0, np.round(hum, 1)
    for i in range(5):
        x = clutter_sound("rain", np.random.default_rng([70, i]), SR, SR)
        assert x.shape == (SR,) and np.isfinite(x).all()


def test_the_new_sounds_are_drawn_and_rendered_deterministically():
    assert "tyre_hum" in rules.CLUTTER_SOUNDS
    for kind in ("wind", "rain", "tyre_hum"):
        a = clutter_sound(kind, np.random.default_rng([71, 1]), SR, SR)
        assert np.array_equal(a, clutter_sound(kind, np.random.default_rng([71, 1]), SR, SR))
        assert not np.array_equal(a, clutter_sound(kind, np.random.default_rng([71, 2]), SR, SR))
    v1, v2 = talker(np.random.default_rng(72), SR, SR), talker(np.random.default_rng(72), SR, SR)
    assert np.array_equal(v1.wave, v2.wave) and np.array_equal(v1.f0_hz, v2.f0_hz)
    # a whole sample with a voice: the same seed and index give the same bytes
    voiced = (sample_flags(np.random.default_rng([73, i]).spawn(3)[0]) for i in range(200))  # make_sample's flags
    i = next(i for i, f in enumerate(voiced) if f.speech or f.cabin_voice)
    assert make_sample(73, i).flags.speech or make_sample(73, i).flags.cabin_voice
    assert np.array_equal(make_sample(73, i).audio, make_sample(73, i).audio)
