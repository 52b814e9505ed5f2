"""The band-limited resampler behind :func:`fusionedge.sdk.preprocess.preprocess_audio`.

A Kaiser-windowed sinc (32 zero crossings, beta 8.6, cut-off at 95% of the lower Nyquist frequency)
evaluated at the exact rational input positions of each output sample, with one cached phase table
per rate ratio and taps normalised to unit DC gain. It is written here in NumPy, not taken from
soxr, because training and the device must compute bit-for-bit the same features from the same
samples, and because a window of a long file can be resampled alone (:func:`resample_window` reads
only the input samples the filter needs). The public entry points, with input checks, are
``preprocess_audio``, ``resample_audio`` and ``resample_context`` in :mod:`fusionedge.sdk.preprocess`.

NumPy only — never torch.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np

__all__ = ["resample_window", "filter_half_length"]

_ZERO_CROSSINGS = 32  # of the (possibly stretched) sinc on each side
_KAISER_BETA = 8.6
_ROLLOFF = 0.95  # cut-off as a fraction of the lower Nyquist frequency
_MAX_CACHED_PHASES = 2048
_CHUNK = 8192  # outputs per vectorized block (bounds memory to ~ _CHUNK * taps floats)


def resample_window(x: np.ndarray, sr_in: int, sr_out: int, s0: int, n_out: int) -> np.ndarray:
    """``n_out`` samples at ``sr_out`` of mono ``x`` (float64), starting at input sample ``s0``.

    Output ``j`` is the band-limited interpolation of ``x`` at input position ``s0 + j * sr_in/sr_out``;
    outputs at or past the end of ``x`` are exactly 0 (zero padding, not filter ringing).
    """
    n_in = x.shape[0]
    y = np.zeros(n_out, dtype=np.float64)
    ratio = Fraction(sr_in, sr_out)
    down, up = ratio.numerator, ratio.denominator  # input position of output j: s0 + j*down/up
    # outputs whose position lies inside the signal: s0*up + j*down < n_in*up
    n_valid = 0 if s0 >= n_in else min(n_out, -(-((n_in - s0) * up) // down))
    if n_valid == 0:
        return y
    if down == up:  # same rate: a plain crop
        y[:n_valid] = x[s0 : s0 + n_valid]
        return y
    half = filter_half_length(down, up)
    # input context the filter needs, zero outside the signal
    lo = s0 - half + 1
    hi = s0 + (((n_valid - 1) * down) // up) + half + 1
    buf = np.zeros(hi - lo, dtype=np.float64)
    a, b = max(lo, 0), min(hi, n_in)
    buf[a - lo : b - lo] = x[a:b]
    j = np.arange(n_valid, dtype=np.int64)
    num = j * down  # exact integer positions * up
    base = num // up  # floor(position) - s0
    phase = num % up
    if up <= _MAX_CACHED_PHASES:  # the usual rates (44.1k -> 16k: 160 phases): one cached table
        taps, inv = _phase_table(down, up), phase
    else:  # odd rates: only the phases this window uses
        uniq, inv = np.unique(phase, return_inverse=True)
        taps = _phase_rows(uniq, down, up)
    offs = np.arange(0, 2 * half, dtype=np.int64)  # buffer index of tap k=-half+1 is base+offs
    for c0 in range(0, n_valid, _CHUNK):
        c1 = min(c0 + _CHUNK, n_valid)
        win = buf[base[c0:c1, None] + offs[None, :]]  # (chunk, L)
        y[c0:c1] = np.einsum("ij,ij->i", win, taps[inv[c0:c1]])
    return y


def _filter_shape(down: int, up: int) -> tuple[float, int]:
    """Cut-off (fraction of the input Nyquist frequency) and taps per side (input samples)."""
    cutoff = _ROLLOFF * min(1.0, up / down)
    return cutoff, int(math.ceil(_ZERO_CROSSINGS / cutoff))


@functools.lru_cache(maxsize=8)
def _phase_table(down: int, up: int) -> np.ndarray:
    """``(up, L)`` taps for every phase of the ratio ``down/up`` (read-only, cached)."""
    table = _phase_rows(np.arange(up), down, up)
    table.flags.writeable = False
    return table


def _phase_rows(phases: np.ndarray, down: int, up: int) -> np.ndarray:
    """Taps ``(P, L)`` for fractional input positions ``phases / up``, each row summing to 1."""
    cutoff, half = _filter_shape(down, up)
    k = np.arange(-half + 1, half + 1, dtype=np.float64)  # tap offsets from floor(position)
    taps = _sinc_taps(k[None, :] - (np.asarray(phases)[:, None] / up), cutoff, half)
    taps /= taps.sum(axis=1, keepdims=True)  # unit DC gain for every phase
    return taps


def _sinc_taps(t: np.ndarray, cutoff: float, half: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass (cut-off in units of the input Nyquist) at offsets ``t``."""
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (t / half) ** 2, 0.0, 1.0))) / np.i0(_KAISER_BETA)
    return cutoff * np.sinc(cutoff * t) * window


def filter_half_length(down: int, up: int) -> int:
    """Taps on each side of an output sample (in input samples) for the rate ratio ``down/up``."""
    return _filter_shape(down, up)[1]
