"""The band-limited resampler behind :func:`fusionedge.sdk.preprocess.preprocess_audio`.

Two implementations of one contract — output ``j`` is the band-limited signal at input position
``s0 + j * sr_in / sr_out``, the signal is zero outside its samples, outputs at or past its end are
exactly 0, and a window can be resampled alone from the input samples :func:`filter_half_length` says
it needs:

* the **reference**, :func:`resample_window_reference`, in NumPy: a Kaiser-windowed sinc (32 zero
  crossings, beta 8.6, cut-off at 95% of the lower Nyquist frequency) evaluated at the exact rational
  input positions, one cached phase table per rate ratio, taps normalised to unit DC gain. It needs
  nothing installed and is what every other path is measured against;
* **soxr** (libsoxr's high-quality linear-phase filter, ``pip install 'fusionedge[media]'``), used when
  installed: about a hundred times faster on long windows. The window is padded with whole periods of
  the rate ratio, so soxr's own output grid lands on the exact positions, and with zeros where the
  signal has none, so the edges follow the same convention. Up to 80% of the lower Nyquist frequency
  the two agree within about 3e-4 (sine sweeps); both are flat within 0.01 dB to 7 kHz and below -85 dB
  where a tone would alias (48 -> 16 kHz). They differ in the top of the band: soxr stays flat to
  7.3 kHz and is -3 dB at 7.6 kHz where the reference is -6 dB, so a sound with energy there (a square
  wave) gives slightly different features — a model scored near a decision threshold may flip.

:data:`RESAMPLER` names the one in use; ``FUSIONEDGE_RESAMPLER=numpy`` in the environment selects the
reference even where soxr is installed (to reproduce features bit for bit on a machine without it).
The public entry points, with input checks, are ``preprocess_audio``, ``resample_audio`` and
``resample_context`` in :mod:`fusionedge.sdk.preprocess`. Never torch.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["RESAMPLER", "filter_half_length", "resample_window", "resample_window_reference", "resample_window_soxr"]

log = logging.getLogger(__name__)

_ZERO_CROSSINGS = 32  # of the (possibly stretched) sinc on each side
_KAISER_BETA = 8.6
_ROLLOFF = 0.95  # cut-off as a fraction of the lower Nyquist frequency
_MAX_CACHED_PHASES = 2048
_CHUNK = 8192  # outputs per vectorized block (bounds memory to ~ _CHUNK * taps floats)
_SOXR_CONTEXT = 256  # input samples soxr's HQ filter reads either side, per unit of decimation (measured:
#                      below 1e-6 of the whole-signal result from about 100)


def _load_soxr() -> Any:
    if os.environ.get("FUSIONEDGE_RESAMPLER", "").strip().lower() == "numpy":
        return None
    try:
        return importlib.import_module("soxr")
    except ImportError:
        return None


_soxr = _load_soxr()
#: The resampler in use: ``"soxr"`` where it is installed (and not turned off), else ``"numpy"``.
RESAMPLER: str = "soxr" if _soxr is not None else "numpy"


def resample_window(x: np.ndarray, sr_in: int, sr_out: int, s0: int, n_out: int) -> np.ndarray:
    """``n_out`` samples at ``sr_out`` of mono ``x`` (float64), starting at input sample ``s0``.

    The resampler in use (:data:`RESAMPLER`): soxr where installed, else the NumPy reference.
    Output ``j`` is the band-limited interpolation of ``x`` at input position ``s0 + j * sr_in/sr_out``;
    outputs at or past the end of ``x`` are exactly 0 (zero padding, not filter ringing).
    """
    if _soxr is not None:
        return resample_window_soxr(x, sr_in, sr_out, s0, n_out)
    return resample_window_reference(x, sr_in, sr_out, s0, n_out)


def _valid_outputs(n_in: int, s0: int, n_out: int, down: int, up: int) -> int:
    """Outputs whose position lies inside the signal: ``s0*up + j*down < n_in*up``."""
    return 0 if s0 >= n_in else min(n_out, -(-((n_in - s0) * up) // down))


def resample_window_soxr(x: np.ndarray, sr_in: int, sr_out: int, s0: int, n_out: int) -> np.ndarray:
    """:func:`resample_window_reference`'s contract computed by soxr (HQ).

    The input handed to soxr starts a whole number of ratio periods (``down`` input samples, ``up``
    outputs) before ``s0``, so its output ``m * up + j`` is exactly output ``j`` of the window; it holds
    zeros where ``x`` has no samples, and it depends only on the positions, not on where ``x`` was cut,
    so a window read alone gives what the whole signal gives.

    Raises:
        ImportError: soxr is not installed.
    """
    sx = _soxr if _soxr is not None else importlib.import_module("soxr")
    n_in = x.shape[0]
    y = np.zeros(n_out, dtype=np.float64)
    ratio = Fraction(sr_in, sr_out)
    down, up = ratio.numerator, ratio.denominator
    n_valid = _valid_outputs(n_in, s0, n_out, down, up)
    if n_valid == 0:
        return y
    if down == up:
        y[:n_valid] = x[s0 : s0 + n_valid]
        return y
    m = _soxr_periods(down, up)
    lo = s0 - m * down
    hi = s0 + (-(-(n_valid * down) // up)) + m * down
    buf = np.zeros(hi - lo, dtype=np.float64)
    a, b = max(lo, 0), min(hi, n_in)
    if a < b:
        buf[a - lo : b - lo] = x[a:b]
    out = sx.resample(buf, sr_in, sr_out, quality="HQ")
    got = out[m * up : m * up + n_valid]
    y[: got.shape[0]] = got
    return y


def _soxr_periods(down: int, up: int) -> int:
    """Whole ratio periods of input context soxr is given on each side of a window."""
    context = _SOXR_CONTEXT * max(1, -(-down // up))
    return -(-context // down)


def resample_window_reference(x: np.ndarray, sr_in: int, sr_out: int, s0: int, n_out: int) -> np.ndarray:
    """``n_out`` samples at ``sr_out`` of mono ``x`` (float64), starting at input sample ``s0`` (NumPy).

    Output ``j`` is the band-limited interpolation of ``x`` at input position ``s0 + j * sr_in/sr_out``;
    outputs at or past the end of ``x`` are exactly 0 (zero padding, not filter ringing).
    """
    n_in = x.shape[0]
    y = np.zeros(n_out, dtype=np.float64)
    ratio = Fraction(sr_in, sr_out)
    down, up = ratio.numerator, ratio.denominator  # input position of output j: s0 + j*down/up
    n_valid = _valid_outputs(n_in, s0, n_out, down, up)
    if n_valid == 0:
        return y
    if down == up:  # same rate: a plain crop
        y[:n_valid] = x[s0 : s0 + n_valid]
        return y
    half = _filter_shape(down, up)[1]
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
    return cutoff, math.ceil(_ZERO_CROSSINGS / cutoff)


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
    """Input samples the resampler in use reads on each side of an output sample, for ``down/up``.

    The reference's taps per side, or where soxr is in use the whole periods of context it is given
    (plus one period and a sample of slack for the last output's position), whichever is larger: a
    window cut with this much context either side resamples exactly as the whole signal does.
    """
    half = _filter_shape(down, up)[1]
    if _soxr is None:
        return half
    return max(half, _soxr_periods(down, up) * down + -(-down // up) + 2)
