"""Small signal helpers shared by the generator's sound models: level, shaped noise, harmonic tones.

The scene's sources (:mod:`.sound`) and the untagged sounds of the open world (:mod:`.clutter_sound`)
are built from the same three operations, with numpy only: the RMS level of a waveform, white noise
filtered in the frequency domain by a magnitude response, and a sum of harmonics of a running phase
that mutes every harmonic above 0.45 of the sample rate (so a sweep never aliases).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["TIMBRES", "harmonic", "rms", "shape_noise", "timbre_amps"]

#: Harmonic amplitudes of a few basic waveforms (fundamental first).
TIMBRES: dict[str, tuple[float, ...]] = {
    "sine": (1.0,),
    "triangle": (1.0, 0.0, 1 / 9, 0.0, 1 / 25, 0.0, 1 / 49),
    "square": (1.0, 0.0, 1 / 3, 0.0, 1 / 5, 0.0, 1 / 7, 0.0, 1 / 9, 0.0, 1 / 11),
    "sawtooth": tuple(1.0 / k for k in range(1, 13)),
}


def rms(x: np.ndarray) -> float:
    """Root-mean-square level of a waveform (never exactly 0, so it can divide)."""
    return float(np.sqrt(np.mean(np.square(x)) + 1e-20))


def shape_noise(rng: np.random.Generator, n: int, sr: int, gain_fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``n`` samples of white noise filtered by the magnitude response ``gain_fn(freqs_hz)`` (zero phase)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    return np.fft.irfft(spec * gain_fn(freqs), n)


def harmonic(phase: np.ndarray, amps, f_inst: np.ndarray | float, sr: int) -> np.ndarray:
    """Sum of harmonics ``amps[k-1] * sin(k * phase)``, each muted where ``k * f_inst`` is above 0.45 sr."""
    out = np.zeros_like(phase)
    nyq = 0.45 * sr
    f_inst = np.broadcast_to(np.asarray(f_inst, dtype=np.float64), phase.shape)
    for k, a in enumerate(amps, start=1):
        if a == 0:
            continue
        alive = (k * f_inst) < nyq
        if not alive.any():
            break
        out += a * np.sin(k * phase) * alive
    return out


def timbre_amps(name: str, rng: np.random.Generator) -> np.ndarray:
    """Harmonic amplitudes for a named timbre of :data:`TIMBRES`, or ``"organ"``: random, falling."""
    if name == "organ":
        k = np.arange(1, 9)
        return rng.uniform(0.2, 1.0, size=k.size) / k**rng.uniform(0.8, 1.6)
    return np.array(TIMBRES[name], dtype=np.float64)
