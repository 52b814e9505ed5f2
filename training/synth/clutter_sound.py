"""Untagged sounds of the open world: what a car's microphone hears that is neither a siren nor a tag.

A model that has only ever heard sirens as tonal sounds calls every beep a siren. These sound
models give it the rest of the world to compare against, each one kind of
:data:`~.rules.CLUTTER_SOUNDS`, and none of them carries a tag:

* steady **tones** (any pitch, a few timbres, the whole clip or a stretch of it): a tone whose pitch
  does not move is not a siren;
* signals with **gaps**: beeps, a reversing alarm (one tone on and off at about 1 Hz), seat-belt and
  door chimes (decaying bell partials), turn-signal ticks, alarm-clock beep groups, notification
  jingles and phone ringtones (a fast trill of two tones, two-tone beeps, or a short tune);
* **music**: melodies from a scale, sustained chords, drum patterns (kick, snare, hi-hat);
* **noise**: wind gusts, rain with drops, and the harsh roar and thumps of a rough road; any of
  them may pulse in loudness at 4-25 Hz (an open window's buffeting, a helicopter's rotor).

What makes a siren a siren is written in ``training/synth/README.md`` and drawn in :mod:`.sound`:
a periodic sweep or a two-tone alternation of continuous sound at the rates real sirens use. The
pitched sounds here either hold their pitch, or change it in steps with gaps or at rates and
intervals sirens do not use. Only numpy is used.
"""

from __future__ import annotations

import numpy as np
from fusionedge.sdk.errors import InputError

from .dsp import harmonic, rms, shape_noise, timbre_amps
from .rules import CLUTTER_SOUNDS

__all__ = ["clutter_sound"]

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)


def _note(n: int, sr: int, freq: float, amps, attack: float, decay: float | None) -> np.ndarray:
    """One pitched note of ``n`` samples: harmonics, a short attack and an exponential decay (None: held)."""
    t = np.arange(n) / sr
    x = harmonic(2 * np.pi * freq * t, amps, freq, sr)
    env = np.minimum(1.0, t / max(attack, 1e-4))
    if decay is not None:
        env = env * np.exp(-t / decay)
    ramp = min(n, max(2, int(0.004 * sr)))  # no click at the end
    env[-ramp:] *= np.linspace(1.0, 0.0, ramp)
    return x * env


def _place(out: np.ndarray, seg: np.ndarray, start: int, gain: float = 1.0) -> None:
    """Add ``seg`` into ``out`` from sample ``start`` (either may reach past the other's end)."""
    a, b = max(start, 0), min(start + seg.size, out.size)
    if b > a:
        out[a:b] += gain * seg[a - start : b - start]


def _sequence(rng: np.random.Generator, n: int, sr: int, notes, amps, attack: float, decay: float | None):
    """Notes ``(start_s, dur_s, freq_hz, gain)`` summed into ``n`` samples."""
    out = np.zeros(n)
    for start, dur, freq, gain in notes:
        m = max(8, int(dur * sr))
        _place(out, _note(m, sr, freq, amps, attack, decay), int(start * sr), gain)
    return out


def _repeat(period: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Start times of a pattern repeated every ``period`` s, from a random phase, covering the clip."""
    first = -rng.uniform(0.0, period)
    return np.arange(first, seconds + period, period)


def _bell(n: int, sr: int, freq: float, decay: float) -> np.ndarray:
    """A struck bell or chime: inharmonic partials that decay, the upper ones faster."""
    t = np.arange(n) / sr
    out = np.zeros(n)
    for ratio, gain, d in ((1.0, 1.0, 1.0), (2.76, 0.5, 0.6), (5.40, 0.25, 0.35), (8.93, 0.1, 0.2)):
        if ratio * freq < 0.45 * sr:
            out += gain * np.sin(2 * np.pi * ratio * freq * t) * np.exp(-t / (decay * d))
    out *= np.minimum(1.0, t / 0.002)
    return out


def _tone(rng, n, sr, seconds):
    freq = float(np.exp(rng.uniform(np.log(150.0), np.log(4000.0))))
    amps = timbre_amps(str(rng.choice(["sine", "sine", "triangle", "square", "sawtooth", "organ"])), rng)
    if rng.random() < 0.6:  # the whole clip
        return _sequence(rng, n, sr, [(-0.01, seconds + 0.02, freq, 1.0)], amps, 0.005, None)
    dur = rng.uniform(0.3, 0.9) * seconds
    return _sequence(rng, n, sr, [(rng.uniform(0.0, seconds - dur), dur, freq, 1.0)], amps, 0.005, None)


def _beeps(rng, n, sr, seconds, lo=500.0, hi=3500.0, on=(0.04, 0.3), off=(0.04, 0.4)):
    freq = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    d_on, d_off = rng.uniform(*on), rng.uniform(*off)
    amps = timbre_amps(str(rng.choice(["sine", "sine", "square", "triangle"])), rng)
    notes = [(s, d_on, freq, 1.0) for s in _repeat(d_on + d_off, seconds, rng)]
    return _sequence(rng, n, sr, notes, amps, 0.004, None)


def _reversing_alarm(rng, n, sr, seconds):
    lo, hi = (900.0, 1300.0) if rng.random() < 0.7 else (1800.0, 3000.0)
    half = rng.uniform(0.3, 0.6)
    return _beeps(rng, n, sr, seconds, lo, hi, on=(half, half), off=(half * 0.8, half * 1.2))


def _seatbelt_chime(rng, n, sr, seconds):
    freq, decay = rng.uniform(600.0, 1500.0), rng.uniform(0.08, 0.35)
    out = np.zeros(n)
    bell = _bell(int(min(seconds, 5 * decay) * sr) + 8, sr, freq, decay)
    for s in _repeat(rng.uniform(0.3, 1.0), seconds, rng):
        _place(out, bell, int(s * sr))
    return out


def _turn_signal(rng, n, sr, seconds):
    out = np.zeros(n)
    period = rng.uniform(0.6, 0.9)  # about 1.1-1.7 ticks per second, tick and tock
    k = int(0.012 * sr)
    t = np.arange(k) / sr
    for s in _repeat(period, seconds, rng):
        for offset, f in ((0.0, rng.uniform(2000, 4000)), (period * rng.uniform(0.4, 0.55), rng.uniform(1200, 2500))):
            click = rng.standard_normal(k) * np.exp(-t / 0.0015) + np.sin(2 * np.pi * f * t) * np.exp(-t / 0.003)
            _place(out, click, int((s + offset) * sr))
    return out


def _ringtone(rng, n, sr, seconds):
    style = rng.integers(3)
    f1 = rng.uniform(350.0, 1200.0)
    if style == 0:  # an old phone bell: two tones trilling at 12-25 Hz, in rings
        f2 = f1 * rng.uniform(1.08, 1.3)
        t = np.arange(n) / sr
        trill = ((t * rng.uniform(12.0, 25.0) + rng.random()) % 1.0) < 0.5
        f = np.where(trill, f1, f2)
        x = harmonic(2 * np.pi * np.cumsum(f) / sr, timbre_amps("triangle", rng), f, sr)
        ring, gap = rng.uniform(0.4, 1.2), rng.uniform(0.2, 0.8)
        gate = np.zeros(n)
        for s in _repeat(ring + gap, seconds, rng):
            a, b = max(0, int(s * sr)), min(n, int((s + ring) * sr))
            gate[a:b] = 1.0
        return x * gate
    if style == 1:  # two-tone beeps with a gap
        f2 = f1 * rng.uniform(1.15, 1.5)
        on, gap = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.3)
        notes = []
        for s in _repeat(2 * on + gap, seconds, rng):
            notes += [(s, on, f1, 1.0), (s + on, on, f2, 1.0)]
        return _sequence(rng, n, sr, notes, timbre_amps("sine", rng), 0.004, None)
    return _melody(rng, n, sr, seconds, note_s=(0.07, 0.2), timbre="square")  # a polyphonic-ringtone tune


def _alarm_clock(rng, n, sr, seconds):
    freq, on = rng.uniform(1800.0, 4000.0), rng.uniform(0.03, 0.08)
    count, period = int(rng.integers(2, 5)), rng.uniform(0.5, 1.0)
    amps = timbre_amps(str(rng.choice(["square", "sine"])), rng)
    notes = [(s + i * 2 * on, on, freq, 1.0) for s in _repeat(period, seconds, rng) for i in range(count)]
    return _sequence(rng, n, sr, notes, amps, 0.002, None)


def _scale_freqs(rng, count: int) -> np.ndarray:
    root = 220.0 * 2 ** (rng.integers(-5, 14) / 12)
    steps = _MAJOR if rng.random() < 0.6 else _MINOR
    degrees = rng.integers(0, 10, size=count)
    semis = np.array([steps[d % 7] + 12 * (d // 7) for d in degrees])
    return root * 2 ** (semis / 12)


def _notification(rng, n, sr, seconds):
    count = int(rng.integers(2, 4))
    freqs = np.sort(_scale_freqs(rng, count) * 2)[:: 1 if rng.random() < 0.7 else -1]
    step, start = rng.uniform(0.06, 0.15), rng.uniform(0.0, 0.5) * seconds
    out = np.zeros(n)
    for i, f in enumerate(freqs):
        _place(out, _bell(int(0.5 * sr), sr, f, rng.uniform(0.1, 0.3)), int((start + i * step) * sr))
    return out


def _melody(rng, n, sr, seconds, note_s=(0.08, 0.5), timbre: str | None = None):
    timbre = timbre or str(rng.choice(["sine", "triangle", "square", "sawtooth", "organ", "pluck"]))
    pluck = timbre == "pluck"
    amps = timbre_amps("sawtooth" if pluck else timbre, rng)
    notes, t = [], -rng.uniform(0.0, 0.2)
    while t < seconds:
        dur = rng.uniform(*note_s)
        notes.append((t, dur * (1.6 if pluck else 0.95), float(_scale_freqs(rng, 1)[0]), rng.uniform(0.6, 1.0)))
        t += dur
    return _sequence(rng, n, sr, notes, amps, 0.008, rng.uniform(0.08, 0.3) if pluck else None)


def _chord(rng, n, sr, seconds):
    timbre = str(rng.choice(["sine", "triangle", "organ", "sawtooth", "pluck"]))
    amps = timbre_amps("sawtooth" if timbre == "pluck" else timbre, rng)
    decay = rng.uniform(0.3, 1.0) if timbre == "pluck" else None
    changes = 1 if rng.random() < 0.6 else 2
    notes = []
    for c in range(changes):
        root = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        third = 4 if rng.random() < 0.6 else 3
        chord = [0, third, 7] + ([12] if rng.random() < 0.5 else [])
        start, dur = c * seconds / changes, seconds / changes + 0.01
        notes += [(start, dur, root * 2 ** (s / 12), 0.8) for s in chord]
    return _sequence(rng, n, sr, notes, amps, 0.01, decay)


def _drums(rng, n, sr, seconds):
    out = np.zeros(n)
    beat = 60.0 / rng.uniform(80.0, 160.0) / 2  # eighth notes
    t_k = np.arange(int(0.25 * sr)) / sr
    f_k = rng.uniform(45.0, 60.0) + rng.uniform(60.0, 120.0) * np.exp(-t_k / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(f_k) / sr) * np.exp(-t_k / rng.uniform(0.06, 0.15))
    t_s = np.arange(int(0.18 * sr)) / sr
    snare = (rng.standard_normal(t_s.size) * 0.8 + np.sin(2 * np.pi * rng.uniform(160, 240) * t_s)) \
        * np.exp(-t_s / rng.uniform(0.03, 0.07))
    hat = shape_noise(rng, int(0.05 * sr), sr, lambda f: (f > 6000).astype(float)) \
        * np.exp(-np.arange(int(0.05 * sr)) / sr / 0.012)
    for i, s in enumerate(_repeat(beat, seconds, rng)):
        step = i % 8
        if step in (0, 4) or (step == 6 and rng.random() < 0.4):
            _place(out, kick, int(s * sr), 1.0)
        if step in (2, 6):
            _place(out, snare, int(s * sr), 0.6)
        _place(out, hat, int(s * sr), 0.25)
    if rng.random() < 0.4:  # with a bass line or a melody over it
        out = out / rms(out) + 0.8 * _melody(rng, n, sr, seconds) / (rms(_melody(rng, n, sr, seconds)) + 1e-9)
    return out


#: Chance that a noise (wind, rain, rough road) pulses in loudness at 4-25 Hz: the buffeting of an open
#: window or sunroof, a helicopter's rotor, a rattle. A fast flutter of noise is not a moving pitch.
P_PULSING = 0.4


def _pulsing(rng: np.random.Generator, x: np.ndarray, sr: int) -> np.ndarray:
    """``x`` with, with probability :data:`P_PULSING`, its loudness pulsing at 4-25 Hz (rate drifting
    by up to 10% over the clip, depth 30-90%)."""
    if rng.random() >= P_PULSING:
        return x
    t = np.arange(x.size) / sr
    rate = rng.uniform(4.0, 25.0) * (1.0 + rng.uniform(-0.1, 0.1) * t / max(t[-1], 1e-9))
    depth = rng.uniform(0.3, 0.9)
    return x * (1.0 + depth * np.sin(2 * np.pi * np.cumsum(rate) / sr + rng.uniform(0, 2 * np.pi)))


def _wind(rng, n, sr, seconds):
    cut = rng.uniform(150.0, 600.0)
    x = shape_noise(rng, n, sr, lambda f: 1.0 / (1.0 + (np.maximum(f, 1.0) / cut) ** 2))
    t = np.arange(n) / sr
    gust = 1.0 + rng.uniform(0.4, 0.9) * np.sin(2 * np.pi * rng.uniform(0.2, 1.2) * t + rng.uniform(0, 2 * np.pi))
    return _pulsing(rng, x * gust, sr)


def _rain(rng, n, sr, seconds):
    lo = rng.uniform(800.0, 3000.0)
    x = shape_noise(rng, n, sr, lambda f: 1.0 / (1.0 + np.exp(-(f - lo) / 300.0)))
    drops = np.zeros(n)
    count = int(rng.uniform(30, 400) * seconds)
    k = int(0.004 * sr)
    decay = np.exp(-np.arange(k) / (0.0008 * sr))
    for s in rng.integers(0, n, size=count):
        _place(drops, rng.standard_normal(k) * decay, int(s), rng.uniform(0.5, 3.0))
    return _pulsing(rng, x / rms(x) + rng.uniform(0.3, 1.5) * drops / (rms(drops) + 1e-9), sr)


def _rough_road(rng, n, sr, seconds):
    bump = rng.uniform(150.0, 1500.0)
    x = shape_noise(rng, n, sr, lambda f: (100.0 / np.maximum(f, 20.0)) ** 0.3
                    * (1.0 + 2.0 * np.exp(-(((f - bump) / rng.uniform(100, 800)) ** 2))))
    out = x / rms(x)
    k = int(0.15 * sr)
    t = np.arange(k) / sr
    for s in _repeat(rng.uniform(0.3, 1.2), seconds, rng):  # expansion joints: two thumps, front and rear axle
        for off in (0.0, rng.uniform(0.08, 0.2)):
            thump = np.sin(2 * np.pi * rng.uniform(40, 90) * t) * np.exp(-t / 0.03) * rng.uniform(2.0, 5.0)
            _place(out, thump, int((s + off) * sr))
    return _pulsing(rng, out, sr)


_MAKERS = {
    "tone": _tone, "beeps": _beeps, "reversing_alarm": _reversing_alarm, "seatbelt_chime": _seatbelt_chime,
    "turn_signal": _turn_signal, "ringtone": _ringtone, "alarm_clock": _alarm_clock,
    "notification": _notification, "melody": _melody, "chord": _chord, "drums": _drums, "wind": _wind,
    "rain": _rain, "rough_road": _rough_road,
}
assert set(_MAKERS) == set(CLUTTER_SOUNDS), "every clutter kind of rules.CLUTTER_SOUNDS needs a sound model"


def clutter_sound(kind: str, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Synthesize one untagged sound.

    Args:
        kind: one of :data:`~.rules.CLUTTER_SOUNDS`.
        rng: consumed.
        n: length in samples (> 0).
        sr: sample rate in Hz.

    Raises:
        InputError: an unknown kind or a non-positive length.

    Returns:
        float64 waveform of shape ``(n,)``, not silent, at an arbitrary level (the caller sets it).
    """
    if kind not in _MAKERS:
        raise InputError(f"unknown clutter sound {kind!r}; expected one of {', '.join(CLUTTER_SOUNDS)}")
    if n <= 0:
        raise InputError(f"a clutter sound needs a positive length, got {n} samples")
    x = _MAKERS[kind](rng, n, sr, n / sr)
    if rms(x) < 1e-6:  # a pattern whose only event fell outside a very short clip: hold a tone instead
        x = _tone(rng, n, sr, n / sr)
    return x
