"""Voices for the synthetic scenes: talkers whose pitch follows a phrase's intonation.

A real voice's pitch glides continuously across the words of a phrase: it declines from the start
of a phrase to its end, rises and falls on stressed syllables, rises at the end of a question and
falls at the end of a statement, over a range from a semitone (a flat, read-out voice) to an octave
(a lively one). A model that has heard moving pitches only from sirens takes such a voice for one,
so the talkers here speak with that intonation, and what tells them from a siren is what the
siren rule in ``training/synth/README.md`` says: a voice's pitch motion is not periodic (accents
fall at irregular times, each of its own size), its voicing breaks at least every
:data:`MAX_VOICED_S` seconds (unvoiced consonants, pauses), and it is shaped by vowel formants.

A talker is a glottal pulse train driven by one pitch contour for the whole clip (so the pitch is
continuous across syllables and words), cut into words of one to three syllables, each syllable
filtered by its vowel's formants and cross-faded into the next, with fricatives and stops in the
breaks between words and pauses between phrases. Only numpy is used; filtering is done in the
frequency domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dsp import rms, shape_noise

__all__ = [
    "INTONATIONS",
    "MAX_VOICED_S",
    "PHRASE_RANGE_ST",
    "VOICE_F0_HZ",
    "Voice",
    "babble",
    "cabin_voice",
    "intonation_contour",
    "talker",
]

#: A talker's speaking pitch (the middle of its contour), Hz: deep voices to children's.
VOICE_F0_HZ: tuple[float, float] = (75.0, 320.0)
#: Pitch range of one phrase, semitones: a flat, synthetic-sounding voice to a lively one (an octave).
PHRASE_RANGE_ST: tuple[float, float] = (2.0, 12.0)
#: How a phrase ends: a fall (statement), a rise (question) or a small rise (a list, more to come).
INTONATIONS: tuple[str, ...] = ("statement", "question", "continuation")
_INTONATION_P = (0.45, 0.35, 0.2)
#: The longest stretch of continuous voicing, seconds: an unvoiced consonant or a pause breaks it.
MAX_VOICED_S = 0.7
_PHRASE_S = (0.6, 2.0)  # phrase length
_PAUSE_S = (0.15, 0.45)  # pause between phrases
_ACCENT_GAP_S = (0.2, 0.7)  # time between pitch accents, each drawn on its own (not a rhythm)
_SYLLABLE_S = (0.08, 0.25)
_BREAK_S = (0.03, 0.1)  # an unvoiced consonant between words
_P_BREAK = 0.5  # a word boundary breaks the voicing (else the voice runs on into the next word)
_XFADE_S = 0.02  # cross-fade between syllables of one voiced run
_EDGE_S = 0.012  # fade in/out at the ends of a voiced run

# Vowel formants (F1, F2, F3) in Hz, adult average.
_VOWELS = np.array(
    [[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240],
     [660, 1720, 2410], [490, 1350, 1690]],
    dtype=np.float64,
)


@dataclass
class Voice:
    """One rendered talker: the waveform and what it was made from (for tests and analysis)."""

    wave: np.ndarray  # float64 (n,), unit-free level
    f0_hz: np.ndarray  # float64 (n,), the pitch contour (defined everywhere, heard where voiced)
    voiced: np.ndarray  # bool (n,), where the glottal source sounds
    intonations: tuple[str, ...]  # how each phrase that reaches into the clip ends


def _smooth_noise(rng: np.random.Generator, n: int, sr: int, cutoff_hz: float) -> np.ndarray:
    """Zero-mean noise low-passed below ``cutoff_hz``, scaled to unit peak (a slow random wobble)."""
    x = shape_noise(rng, n, sr, lambda f: np.exp(-((f / cutoff_hz) ** 2)))
    return x / (np.max(np.abs(x)) + 1e-12)


def _phrase_contour(rng: np.random.Generator, tp: np.ndarray, length: float) -> tuple[np.ndarray, str]:
    """Semitones over phrase time ``tp`` (0..length): declination, accents and an ending, range <= drawn."""
    span = float(rng.uniform(*PHRASE_RANGE_ST))
    x = np.clip(tp / length, 0.0, 1.0)
    st = -rng.uniform(0.2, 0.6) * span * x  # declination: the pitch drifts down over the phrase
    at = rng.uniform(0.05, 0.4)
    while at < length - 0.1:  # pitch accents on stressed syllables, at irregular times and sizes
        width = rng.uniform(0.05, 0.15)
        st = st + rng.uniform(0.2, 0.7) * span * np.exp(-0.5 * ((tp - at) / width) ** 2)
        at += rng.uniform(*_ACCENT_GAP_S)
    ending = INTONATIONS[int(rng.choice(len(INTONATIONS), p=_INTONATION_P))]
    tail = rng.uniform(0.2, 0.5)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip((tp - (length - tail)) / tail, 0.0, 1.0))
    size = {"statement": -rng.uniform(0.2, 0.5), "question": rng.uniform(0.5, 1.0),
            "continuation": rng.uniform(0.15, 0.4)}[ending]
    st = st + size * span * ramp
    mid = 0.5 * (st.max() + st.min())
    spread = float(np.ptp(st))
    return (st - mid) * (min(1.0, span / spread) if spread > 0 else 1.0), ending


def intonation_contour(
    rng: np.random.Generator, n: int, sr: int, f0_hz: float
) -> tuple[np.ndarray, list[tuple[int, int]], tuple[str, ...]]:
    """A talker's pitch over ``n`` samples: phrases of continuous intonation separated by pauses.

    The clip starts at a random point of a phrase. Each phrase's contour (in semitones about
    ``f0_hz``) is a declination, Gaussian pitch accents at irregular times, and a final fall, rise or
    small rise (:data:`INTONATIONS`), scaled to a range drawn from :data:`PHRASE_RANGE_ST` and
    centred, so the whole contour stays within half an octave of ``f0_hz``; a slow wobble of a
    fifth of a semitone is added.

    Args:
        rng: consumed.
        n: samples.
        sr: sample rate, Hz.
        f0_hz: the talker's speaking pitch.

    Returns:
        ``(f0, phrases, intonations)``: the pitch in Hz per sample (held through the pauses), the
        ``[start, end)`` sample spans of the phrases within the clip, and how each of them ends.
    """
    st = np.zeros(n)
    phrases: list[tuple[int, int]] = []
    endings: list[str] = []
    start = -rng.uniform(0.0, 1.5) * sr
    while start < n:
        length = rng.uniform(*_PHRASE_S)
        end = start + length * sr
        a, b = max(int(start), 0), min(int(end), n)
        if b - a > int(0.05 * sr):
            tp = (np.arange(a, b) - start) / sr
            st[a:b], ending = _phrase_contour(rng, tp, length)
            if phrases:  # hold the last pitch through the pause before this phrase
                st[phrases[-1][1]:a] = st[phrases[-1][1] - 1]
            elif a > 0:
                st[:a] = st[a]
            phrases.append((a, b))
            endings.append(ending)
        start = end + rng.uniform(*_PAUSE_S) * sr
    if phrases and phrases[-1][1] < n:
        st[phrases[-1][1]:] = st[phrases[-1][1] - 1]
    st = st + 0.2 * _smooth_noise(rng, n, sr, 6.0)
    return f0_hz * 2.0 ** (st / 12.0), phrases, tuple(endings)


def _words(rng: np.random.Generator, a: int, b: int, sr: int) -> list[list[tuple[int, int]]]:
    """The voiced runs of a phrase ``[a, b)``: lists of syllable spans, broken between some words.

    A run never lasts longer than :data:`MAX_VOICED_S`; a break (an unvoiced consonant) follows
    with probability :data:`_P_BREAK` after every word, and always before a run would grow too long.
    """
    runs: list[list[tuple[int, int]]] = []
    run: list[tuple[int, int]] = []
    pos, cap = a, int(MAX_VOICED_S * sr)
    while pos < b - int(0.04 * sr):
        sylls = [int(rng.uniform(*_SYLLABLE_S) * sr) for _ in range(int(rng.integers(1, 4)))]
        while sum(sylls) > cap:
            sylls.pop()
        run_len = run[-1][1] - run[0][0] if run else 0
        if run and (run_len + sum(sylls) > cap or rng.random() < _P_BREAK):
            runs.append(run)
            run = []
            pos += int(rng.uniform(*_BREAK_S) * sr)
        for d in sylls:
            s, e = pos, min(pos + d, b)
            if e - s > int(0.03 * sr):
                run.append((s, e))
            pos = e
    if run:
        runs.append(run)
    return runs


def _formant_gain(freqs: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Vowel resonances on a glottal source that falls by about 6 dB an octave above 400 Hz."""
    g = np.zeros_like(freqs)
    for i, fc in enumerate(formants):
        bw = 60.0 + 0.06 * fc
        g += (0.9**i) / (1.0 + ((freqs - fc) / bw) ** 2)
    return g * np.exp(-freqs / 6000.0) / (1.0 + freqs / 400.0)


def _noise_burst(rng: np.random.Generator, k: int, sr: int) -> np.ndarray:
    """A fricative (s, sh, f) or a stop's burst: high-passed noise under a smooth envelope."""
    fc = rng.uniform(2000.0, 5500.0)
    x = shape_noise(rng, k, sr, lambda f: 1.0 / (1.0 + np.exp(-(f - fc) / 300.0)))
    env = np.hanning(k) if rng.random() < 0.6 else np.exp(-np.arange(k) / (0.01 * sr))  # fricative or stop
    return x / (rms(x) + 1e-9) * env


def talker(rng: np.random.Generator, n: int, sr: int) -> Voice:
    """One talker over ``n`` samples: phrase intonation, words, vowels, consonant breaks and pauses.

    Args:
        rng: consumed.
        n: samples (> 0).
        sr: sample rate, Hz.

    Returns:
        The :class:`Voice`; its waveform is at an arbitrary level (the caller sets it).
    """
    f0_base = float(np.exp(rng.uniform(*np.log(VOICE_F0_HZ))))
    f0, phrases, endings = intonation_contour(rng, n, sr, f0_base)
    phase = np.cumsum(f0) / sr + rng.random()
    pulses = np.diff(np.floor(phase), prepend=np.floor(phase[0]))  # 1 where a glottal period starts
    out = np.zeros(n)
    voiced = np.zeros(n, dtype=bool)
    xf, edge = int(_XFADE_S * sr), int(_EDGE_S * sr)
    for a, b in phrases:
        for run in _words(rng, a, b, sr):
            ra, rb = run[0][0], run[-1][1]
            amp = np.zeros(rb - ra)
            floor = rng.uniform(0.25, 0.6)  # how far the voice dips between syllables (m, l, n, r)
            for k, (s, e) in enumerate(run):
                lo, hi = max(ra, s - (xf if k else 0)), min(rb, e + (xf if k < len(run) - 1 else 0))
                m = hi - lo
                vowel = _VOWELS[rng.integers(len(_VOWELS))] * rng.uniform(0.9, 1.15)
                freqs = np.fft.rfftfreq(m, 1.0 / sr)
                seg = np.fft.irfft(np.fft.rfft(pulses[lo:hi]) * _formant_gain(freqs, vowel), m)
                w = np.ones(m)  # cross-fades that sum to one with the neighbours'
                if lo < s:
                    w[: s - lo + xf] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(s - lo + xf) / (s - lo + xf))
                if hi > e:
                    w[-(hi - e + xf):] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(hi - e + xf) / (hi - e + xf))
                out[lo:hi] += seg / (rms(seg) + 1e-9) * w
                shape = np.sin(np.pi * np.linspace(0.0, 1.0, e - s)) ** rng.uniform(0.6, 1.5)
                amp[s - ra : e - ra] = floor + (1.0 - floor) * shape
            ramp = min(edge, (rb - ra) // 4)
            if ramp > 1:
                amp[:ramp] *= np.linspace(0.0, 1.0, ramp)
                amp[-ramp:] *= np.linspace(1.0, 0.0, ramp)
            out[ra:rb] *= amp
            voiced[ra:rb] = True
            gap = int(rng.uniform(*_BREAK_S) * sr)  # the consonant that broke the voicing before this run
            if ra - gap >= a and gap > 16 and rng.random() < 0.8:
                out[ra - gap : ra] += rng.uniform(0.2, 0.6) * _noise_burst(rng, gap, sr)
    out += 0.03 * voiced * rng.standard_normal(n)  # breath in the voice
    return Voice(wave=out, f0_hz=f0, voiced=voiced, intonations=endings)


def babble(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Speech nearby: one to three talkers at falling levels, each with its own intonation."""
    talkers = int(rng.integers(1, 4))
    out = np.zeros(n)
    for i in range(talkers):
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
