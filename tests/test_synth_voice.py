"""Tests of the generator's voices (``training/synth/voice.py``): formants that glide, a pitch on the
phrase's intonation, voicing that breaks, and none of it a siren.

Measured on the waveforms and on the tracks the renderer draws: the formant tracks move between
phones without jumps, the waveform's spectral envelope follows them, the pitch a tracker hears is
the contour, and neither the pitch nor the formants move periodically the way a yelp, a phaser or
a hi-lo does.
"""

from __future__ import annotations

import numpy as np
import pytest
from fusionedge.training.synth import make_sample, sample_flags
from fusionedge.training.synth.sound import _siren_sweep
from fusionedge.training.synth.voice import MAX_VOICED_S, VOICE_F0_HZ, babble, cabin_voice, talker

SR = 16000
HOP = 160  # 10 ms


def _autocorr_pitch(x: np.ndarray, lo: float, hi: float, frame: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """Per 10 ms hop: the autocorrelation pitch (Hz) between ``lo`` and ``hi`` and its peak (0..1)."""
    lags = np.arange(int(SR / hi), int(SR / lo) + 1)
    span = frame + lags[-1]
    starts = np.arange(0, x.size - span, HOP)
    segs = np.lib.stride_tricks.sliding_window_view(x, span)[starts]
    nfft = 1 << int(np.ceil(np.log2(2 * span)))
    cross = np.fft.irfft(np.conj(np.fft.rfft(segs[:, :frame], nfft)) * np.fft.rfft(segs, nfft), nfft)[:, lags]
    sq = np.concatenate([np.zeros((starts.size, 1)), np.cumsum(segs**2, axis=1)], axis=1)
    energy = sq[:, lags + frame] - sq[:, lags]
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


def _voiced_frames(v) -> np.ndarray:
    """Formant frames whose centre sample is voiced."""
    centres = np.minimum(np.arange(v.formants_hz.shape[0]) * v.hop, v.voiced.size - 1)
    return v.voiced[centres]


def test_the_formants_glide_between_phones_and_never_jump():
    """Within a voiced stretch F2 moves by hundreds of hertz (consonant-vowel transitions, diphthongs),
    and it does so smoothly: the largest change between phones (/w/ to /i/ in a child's tract, about
    2 kHz) spread over the shortest transition moves by under 300 Hz per 4 ms frame, where a jump
    would move by all of it at once."""
    moved, steps = [], []
    for i in range(24):
        v = talker(np.random.default_rng([80, i]), SR, SR)
        on = _voiced_frames(v)
        f2 = v.formants_hz[:, 1]
        steps.append(np.abs(np.diff(f2)).max())
        moved.append(np.ptp(f2[on]) if on.any() else 0.0)
    assert max(steps) < 300.0, max(steps)
    assert np.median(moved) > 400.0, np.round(moved)


def test_the_waveform_follows_the_formant_tracks():
    """The spectral envelope of the sound has its second-formant peak where the track says: over the
    voiced frames, the power-weighted frequency of the 900-2600 Hz band rises and falls with F2."""
    corr = []
    for i in range(16):
        v = talker(np.random.default_rng([81, i]), SR, SR)
        n = 512
        freqs = np.fft.rfftfreq(n, 1.0 / SR)
        band = (freqs >= 900) & (freqs <= 2600)
        centres = np.arange(n // 2, SR - n // 2, 4 * v.hop)
        keep = v.voiced[centres]
        if keep.sum() < 20:
            continue
        frames = np.stack([v.wave[c - n // 2 : c + n // 2] for c in centres[keep]]) * np.hanning(n)
        spec = np.abs(np.fft.rfft(frames, axis=1))[:, band] ** 2
        centroid = (spec * freqs[band]).sum(1) / spec.sum(1)
        f2 = v.formants_hz[centres[keep] // v.hop, 1]
        if np.ptp(f2) > 300:
            corr.append(np.corrcoef(centroid, f2)[0, 1])
    assert len(corr) >= 8 and np.median(corr) > 0.5, np.round(corr, 2)


def test_the_heard_pitch_is_the_intonation_contour():
    agree = []
    for i in range(16):
        v = talker(np.random.default_rng([82, i]), SR, SR)
        assert VOICE_F0_HZ[0] * 2 ** -0.6 <= v.f0_hz.min() and v.f0_hz.max() <= VOICE_F0_HZ[1] * 2 ** 0.6
        pitch, peak = _autocorr_pitch(v.wave, 55.0, 550.0)
        centre = v.f0_hz[HOP * np.arange(pitch.size) + 320]
        held = v.voiced[HOP * np.arange(pitch.size) + 320] & (peak > 0.6)
        if held.sum() > 10:
            agree.append(np.mean(np.abs(12 * np.log2(pitch[held] / centre[held])) < 1.0))
    assert np.median(agree) > 0.8, np.round(agree, 2)


def test_a_voice_never_satisfies_the_siren_rule():
    """Its voicing breaks at least every MAX_VOICED_S (a siren's tone runs through the clip), and
    neither its pitch nor its second formant is periodic (a yelp's, phaser's or hi-lo's pitch is)."""
    for i in range(24):
        v = talker(np.random.default_rng([83, i]), 2 * SR, SR)
        assert _runs(v.voiced).max() <= MAX_VOICED_S * SR + 1
    pitch, formant = [], []
    for i in range(30):
        v = talker(np.random.default_rng([84, i]), 6 * SR, SR)
        pitch.append(_periodicity(12 * np.log2(v.f0_hz[::HOP]), 200))
        formant.append(_periodicity(np.log2(v.formants_hz[:: HOP // v.hop, 1]), 200))
    t = np.arange(6 * SR) / SR
    sirens = [_periodicity(12 * np.log2(_siren_sweep(np.random.default_rng([85, i]), t, p)[::HOP]), 200)
              for p in ("yelp", "phaser", "hilo") for i in range(10)]
    assert max(pitch) < 0.5 and min(sirens) > 0.7, (max(pitch), min(sirens))
    assert np.median(formant) < 0.5, np.round(formant, 2)


@pytest.mark.parametrize("sr", [8000, 16000, 22050])
def test_voices_render_at_any_rate_deterministically(sr):
    a, b = talker(np.random.default_rng([86, sr]), sr, sr), talker(np.random.default_rng([86, sr]), sr, sr)
    assert a.wave.shape == (sr,) and np.isfinite(a.wave).all() and np.abs(a.wave).max() > 0
    assert np.array_equal(a.wave, b.wave) and np.array_equal(a.formants_hz, b.formants_hz)
    assert not np.array_equal(a.wave, talker(np.random.default_rng([87, sr]), sr, sr).wave)
    many = babble(np.random.default_rng([88, sr]), sr, sr)
    cabin, kind = cabin_voice(np.random.default_rng([89, sr]), sr, sr)
    assert many.shape == cabin.shape == (sr,) and kind in ("radio", "passenger")
    assert np.isfinite(many).all() and np.isfinite(cabin).all()


def test_a_short_clip_and_a_sample_with_a_voice_are_repeatable():
    short = talker(np.random.default_rng(90), 100, SR)  # shorter than one phone
    assert short.wave.shape == (100,) and np.isfinite(short.wave).all()
    # make_sample draws its flags from the first of three streams spawned from [seed, index]
    flags = (sample_flags(np.random.default_rng([91, i]).spawn(3)[0]) for i in range(200))
    i = next(i for i, f in enumerate(flags) if f.speech or f.cabin_voice)
    s = make_sample(91, i)
    assert s.flags.speech or s.flags.cabin_voice
    assert np.array_equal(s.audio, make_sample(91, i).audio)
