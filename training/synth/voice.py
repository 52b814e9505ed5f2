"""Voices for the synthetic scenes: a formant synthesizer whose formants glide from sound to sound.

In real speech the vocal tract never holds still: between a consonant and a vowel, and across a
diphthong, the second formant sweeps by several hundred hertz to over a kilohertz in 40-100 ms, and
a talker's pitch follows the intonation of the phrase. Those sweeps lie in a siren's band at a
yelp's speed, so a model that has heard formants only as steady vowels takes a sentence for a
siren. The talkers here are therefore rendered the way a cascade formant synthesizer (Klatt, 1980)
renders them:

* a glottal pulse train on one pitch contour per phrase (declination, pitch accents at irregular
  times and sizes, a statement's fall or a question's rise, a range of 2-12 semitones), with a
  source tilt from pressed to breathy and a little aspiration noise;
* a sequence of phones per word: vowels (some of them diphthongs), voiced sonorants (nasals,
  liquids, glides) that keep the voicing running, and unvoiced obstruents (fricatives, stops) that
  break it; each phone is a target for the first three formants, and the formant tracks move
  smoothly between targets over a transition time drawn per talker;
* the source filtered frame by frame (4 ms hop) by the cascade of five resonators at that frame's
  formants, the resonators' magnitude responses applied in the frequency domain and overlap-added.

What still tells a voice from a siren is the siren rule of ``training/synth/README.md``: a voice's
pitch and formant motion is not periodic, its voicing breaks at least every :data:`MAX_VOICED_S`
seconds, and its spectrum is shaped by formants over a harmonic source. Only numpy is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dsp import rms, shape_noise

__all__ = ["MAX_VOICED_S", "PHRASE_RANGE_ST", "VOICE_F0_HZ", "Voice", "babble", "cabin_voice", "talker"]

#: A talker's speaking pitch (the middle of its contour), Hz: deep voices to children's.
VOICE_F0_HZ: tuple[float, float] = (75.0, 320.0)
#: Pitch range of one phrase, semitones: a flat, read-out voice to a lively one (an octave).
PHRASE_RANGE_ST: tuple[float, float] = (2.0, 12.0)
#: The longest stretch of continuous voicing, seconds: an unvoiced consonant or a pause breaks it.
MAX_VOICED_S = 0.7
#: Width of the window the formant tracks are smoothed over, seconds, per talker (crisp to slurred
#: speech): a change between two phones takes about half of it from 10% to 90%, 25-60 ms.
TRANSITION_S: tuple[float, float] = (0.05, 0.12)
#: Frame hop of the formant filter, seconds.
HOP_S = 0.004

_PHRASE_S = (0.6, 2.2)
_PAUSE_S = (0.12, 0.45)
_ACCENT_GAP_S = (0.2, 0.7)
_INTONATIONS = ("statement", "question", "continuation")
_INTONATION_P = (0.45, 0.35, 0.2)

# Phone targets (F1, F2, F3) in Hz for an adult male tract (Peterson & Barney 1952; Klatt 1980).
_VOWELS = np.array(
    [[270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410], [730, 1090, 2440],
     [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240], [640, 1190, 2390], [490, 1350, 1690]],
    dtype=np.float64,
)
# Diphthongs as pairs of vowel rows: aI, eI, aU, oI, oU.
_DIPHTHONGS = ((4, 1), (2, 0), (4, 6), (5, 0), (5, 7))
# Voiced sonorants: (F1, F2, F3, relative amplitude): m, n, l, r, w, j.
_SONORANTS = np.array(
    [[280, 900, 2200, 0.25], [280, 1700, 2600, 0.25], [360, 1300, 2800, 0.5], [420, 1300, 1600, 0.5],
     [300, 700, 2200, 0.45], [280, 2200, 3000, 0.45]],
    dtype=np.float64,
)
_BANDWIDTHS = np.array([70.0, 100.0, 160.0, 250.0, 300.0])  # B1..B5, Hz
_HIGH_FORMANTS = np.array([3500.0, 4500.0])  # F4, F5 of the adult male tract, Hz


@dataclass
class Voice:
    """One rendered talker: the waveform and what it was made from (for tests and analysis)."""

    wave: np.ndarray  # float64 (n,), unit-free level
    f0_hz: np.ndarray  # float64 (n,), the pitch contour (defined everywhere, heard where voiced)
    voiced: np.ndarray  # bool (n,), where the glottal source sounds
    formants_hz: np.ndarray  # float64 (frames, 3): F1-F3 per frame of ``hop`` samples
    hop: int  # samples per formant frame


def _smooth_noise(rng: np.random.Generator, n: int, sr: int, cutoff_hz: float) -> np.ndarray:
    """Zero-mean noise low-passed below ``cutoff_hz``, scaled to unit peak (a slow random wobble)."""
    x = shape_noise(rng, n, sr, lambda f: np.exp(-((f / cutoff_hz) ** 2)))
    return x / (np.max(np.abs(x)) + 1e-12)


def _phrase_contour(rng: np.random.Generator, tp: np.ndarray, length: float) -> np.ndarray:
    """Semitones over phrase time ``tp`` (0..length): declination, accents and an ending, centred."""
    span = float(rng.uniform(*PHRASE_RANGE_ST))
    st = -rng.uniform(0.2, 0.6) * span * np.clip(tp / length, 0.0, 1.0)  # declination
    at = rng.uniform(0.05, 0.4)
    while at < length - 0.1:  # pitch accents on stressed syllables, at irregular times and sizes
        width = rng.uniform(0.05, 0.15)
        st = st + rng.uniform(0.2, 0.7) * span * np.exp(-0.5 * ((tp - at) / width) ** 2)
        at += rng.uniform(*_ACCENT_GAP_S)
    ending = _INTONATIONS[int(rng.choice(len(_INTONATIONS), p=_INTONATION_P))]
    tail = rng.uniform(0.2, 0.5)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip((tp - (length - tail)) / tail, 0.0, 1.0))
    size = {"statement": -rng.uniform(0.2, 0.5), "question": rng.uniform(0.5, 1.0),
            "continuation": rng.uniform(0.15, 0.4)}[ending]
    st = st + size * span * ramp
    spread = float(np.ptp(st))
    return (st - 0.5 * (st.max() + st.min())) * (min(1.0, span / spread) if spread > 0 else 1.0)


def _phrases(rng: np.random.Generator, n: int, sr: int,
             f0_hz: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The pitch over ``n`` samples (Hz, held through pauses) and the ``[start, end)`` phrase spans.

    The clip starts at a random point of a phrase; phrases are separated by pauses; a slow wobble of
    a fifth of a semitone is added.
    """
    st = np.zeros(n)
    spans: list[tuple[int, int]] = []
    start = -rng.uniform(0.0, 1.5) * sr
    while start < n:
        length = rng.uniform(*_PHRASE_S)
        end = start + length * sr
        a, b = max(int(start), 0), min(int(end), n)
        if b - a > int(0.05 * sr):
            st[a:b] = _phrase_contour(rng, (np.arange(a, b) - start) / sr, length)
            held = st[spans[-1][1] - 1] if spans else st[a]
            st[spans[-1][1] if spans else 0 : a] = held
            spans.append((a, b))
        start = end + rng.uniform(*_PAUSE_S) * sr
    if spans:
        st[spans[-1][1]:] = st[spans[-1][1] - 1]
    st = st + 0.2 * _smooth_noise(rng, n, sr, 6.0)
    return f0_hz * 2.0 ** (st / 12.0), spans


#: A phone of :func:`_phones`: ``(start, end, kind, formants (3,) or None, amplitude)``.
_Phone = tuple[int, int, str, "np.ndarray | None", float]


def _phones(rng: np.random.Generator, a: int, b: int, sr: int) -> list[_Phone]:
    """Segments of a phrase ``[a, b)``: ``(start, end, kind, formants (3,), amplitude)``.

    ``kind`` is ``"voiced"`` (a vowel or sonorant: the glottal source sounds), ``"fricative"``,
    ``"stop"`` (closure, then a burst) or ``"gap"`` (silence between words). A voiced stretch longer
    than :data:`MAX_VOICED_S` is always broken by the next syllable's obstruent onset.
    """
    segs = []
    pos, run_start = a, a
    cap = int(MAX_VOICED_S * sr)
    while pos < b - int(0.05 * sr):
        onset = rng.choice(3, p=(0.2, 0.35, 0.45))  # none, sonorant, obstruent
        if onset == 2 or pos - run_start > cap - int(0.4 * sr):
            kind = "fricative" if rng.random() < 0.5 else "stop"
            d = int(rng.uniform(0.06, 0.14 if kind == "fricative" else 0.09) * sr)
            segs.append((pos, pos + d, kind, None, 1.0))
            pos += d
            run_start = pos
        elif onset == 1:
            s = _SONORANTS[rng.integers(len(_SONORANTS))]
            d = int(rng.uniform(0.04, 0.08) * sr)
            segs.append((pos, pos + d, "voiced", s[:3] * rng.uniform(0.93, 1.07, 3), float(s[3])))
            pos += d
        stress = rng.uniform(0.55, 1.0)
        if rng.random() < 0.25:  # a diphthong: two vowel targets in one nucleus
            v1, v2 = _DIPHTHONGS[rng.integers(len(_DIPHTHONGS))]
            for v in (v1, v2):
                d = int(rng.uniform(0.06, 0.12) * sr)
                segs.append((pos, pos + d, "voiced", _VOWELS[v] * rng.uniform(0.93, 1.07, 3), stress))
                pos += d
        else:
            d = int(rng.uniform(0.06, 0.22) * sr)
            vowel = _VOWELS[rng.integers(len(_VOWELS))]
            segs.append((pos, pos + d, "voiced", vowel * rng.uniform(0.93, 1.07, 3), stress))
            pos += d
        if rng.random() < 0.25:  # a sonorant coda
            s = _SONORANTS[rng.integers(len(_SONORANTS))]
            d = int(rng.uniform(0.03, 0.07) * sr)
            segs.append((pos, pos + d, "voiced", s[:3] * rng.uniform(0.93, 1.07, 3), float(s[3])))
            pos += d
        if rng.random() < 0.25:  # a word boundary with a short silence
            d = int(rng.uniform(0.02, 0.08) * sr)
            segs.append((pos, pos + d, "gap", None, 0.0))
            pos += d
            run_start = pos
    return [(s, min(e, b), k, f, g) for s, e, k, f, g in segs if s < b]


def _cascade_gain(freqs: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Magnitude response of a cascade of resonators, ``(frames, bins)``: ``formants`` is ``(frames, k)``.

    Each resonator is ``F^2 / sqrt((F^2 - f^2)^2 + (B f)^2)``: 1 at 0 Hz, ``F/B`` at its peak.
    """
    f2 = freqs[None, :] ** 2
    out = np.ones((formants.shape[0], freqs.size))
    for k in range(formants.shape[1]):
        fc2 = formants[:, k : k + 1] ** 2
        out *= fc2 / np.sqrt((fc2 - f2) ** 2 + bandwidths[k] ** 2 * f2)
    return out


def _filter_frames(src: np.ndarray, sr: int, tracks: np.ndarray, high: np.ndarray, amp: np.ndarray, hop: int,
                   tilt: float) -> np.ndarray:
    """``src`` filtered frame by frame by the cascade, scaled by ``amp`` per frame.

    ``tracks`` holds F1-F3 per frame ``(frames, 3)``, ``high`` the fixed F4 and F5. Hann analysis
    windows of four hops, zero-padded so the resonators' ringing does not wrap, are multiplied in the
    frequency domain and overlap-added (the windows sum to 2 at this overlap); silent frames are
    skipped.
    """
    n, win = src.size, 4 * hop
    nfft = 3 * win  # the ringing of the narrowest resonance (70 Hz: 4.5 ms) has died within a window
    off = (nfft - win) // 2
    pad = nfft
    x = np.concatenate([np.zeros(pad), src, np.zeros(pad)])  # the last frame ends half a window past n
    live = np.flatnonzero(amp > 1e-4)
    out = np.zeros(x.size + nfft)
    if live.size == 0:
        return out[pad : pad + n]
    starts = pad + live * hop - win // 2
    buf = np.zeros((live.size, nfft))
    buf[:, off : off + win] = x[starts[:, None] + np.arange(win)[None, :]] * np.hanning(win + 1)[:win]
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
    tilted = (1.0 + (freqs / 300.0) ** 2) ** (-tilt / 2)  # the glottal source's fall with frequency
    fixed = _cascade_gain(freqs, high[None, :], _BANDWIDTHS[3:])[0] * tilted
    gain = _cascade_gain(freqs, tracks[live], _BANDWIDTHS[:3]) * fixed[None, :]
    y = np.fft.irfft(np.fft.rfft(buf, axis=1) * gain * amp[live, None], nfft, axis=1)
    for j, s in enumerate(starts - off):
        out[s : s + nfft] += y[j]
    return out[pad : pad + n] / 2.0


def _noise_burst(rng: np.random.Generator, k: int, sr: int, stop: bool) -> np.ndarray:
    """A fricative (s, sh, f) or a stop's release: high-passed noise under its envelope."""
    fc = rng.uniform(1800.0, 5500.0)
    x = shape_noise(rng, k, sr, lambda f: 1.0 / (1.0 + np.exp(-(f - fc) / 300.0)))
    env = np.exp(-np.arange(k) / (0.008 * sr)) if stop else np.hanning(k)
    return x / (rms(x) + 1e-9) * env


def talker(rng: np.random.Generator, n: int, sr: int) -> Voice:
    """One talker over ``n`` samples: phrases of words whose formants glide between phones.

    Args:
        rng: consumed.
        n: samples (> 0).
        sr: sample rate, Hz.

    Returns:
        The :class:`Voice`; its waveform is at an arbitrary level (the caller sets it).
    """
    f0_base = float(np.exp(rng.uniform(*np.log(VOICE_F0_HZ))))
    # A higher voice comes with a shorter vocal tract: formants scaled up to 1.3x (a child's).
    tract = (1.0 + 0.3 * float(np.clip(np.log(f0_base / 110.0) / np.log(280.0 / 110.0), 0.0, 1.0))) \
        * rng.uniform(0.95, 1.05)
    f0, spans = _phrases(rng, n, sr, f0_base)
    hop = max(1, int(round(HOP_S * sr)))
    frames = n // hop + 1
    target = np.tile(_VOWELS[8] * tract, (frames, 1))  # a neutral tract where nothing is said
    amp = np.zeros(frames)
    voiced = np.zeros(n, dtype=bool)
    noise = np.zeros(n)
    for a, b in spans:
        for s, e, kind, formants, gain in _phones(rng, a, b, sr):
            fa, fb = s // hop, max(s // hop + 1, e // hop)
            if kind == "voiced":
                target[fa:fb] = formants * tract
                amp[fa:fb] = gain
                voiced[s:e] = True
            elif kind in ("fricative", "stop") and e - s > 16:
                k = e - s if kind == "fricative" else min(e - s, int(rng.uniform(0.008, 0.02) * sr))
                at = s if kind == "fricative" else e - k
                noise[at : at + k] += rng.uniform(0.15, 0.5) * _noise_burst(rng, k, sr, kind == "stop")
    # Formants glide between targets: a moving average over the transition time.
    width = max(1, int(rng.uniform(*TRANSITION_S) / HOP_S))
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    padded = np.pad(target, ((width, width), (0, 0)), mode="edge")
    tracks3 = np.stack([np.convolve(padded[:, i], kernel, mode="same")[width:-width] for i in range(3)],
                       axis=1)
    short = np.hanning(5)[1:-1]
    amp = np.convolve(amp, short / short.sum(), mode="same")  # ~8 ms onsets and offsets
    phase = np.cumsum(f0) / sr + rng.random()
    pulses = np.diff(np.floor(phase), prepend=np.floor(phase[0]))  # 1 where a glottal period starts
    breath = rng.uniform(0.02, 0.15)
    src = (pulses + breath * rng.standard_normal(n) * np.sqrt(f0 / sr)) * voiced
    wave = _filter_frames(src, sr, tracks3, _HIGH_FORMANTS * tract, amp, hop, tilt=rng.uniform(0.4, 1.2))
    wave = wave / (rms(wave[voiced]) if voiced.any() else 1.0) + noise
    return Voice(wave=wave, f0_hz=f0, voiced=voiced, formants_hz=tracks3, hop=hop)


def babble(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Speech nearby: one to three talkers at falling levels, each with its own voice."""
    out = np.zeros(n)
    for i in range(int(rng.integers(1, 4))):
        out += talker(rng, n, sr).wave * (0.75**i)
    return out


def cabin_voice(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, str]:
    """A voice in the car: one talker, from the radio or a phone (band-limited to about 300-3400 Hz,
    as a loudspeaker or a phone line passes it) or a passenger (full band); returns the kind too."""
    voice = talker(rng, n, sr).wave
    if rng.random() < 0.5:
        return voice, "passenger"
    lo, hi = rng.uniform(200.0, 400.0), rng.uniform(3000.0, 5000.0)
    spec = np.fft.rfft(voice)
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec *= 1.0 / (1.0 + (lo / np.maximum(f, 1.0)) ** 4) / (1.0 + (f / hi) ** 4)
    return np.fft.irfft(spec, n), "radio"
