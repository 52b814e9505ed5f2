"""Waveform warping for training: each clip's sound resampled by its own factor, pitch and rate together.

A siren is defined by the kind of pitch motion and its rate (``training/synth/README.md``), not by
the exact frequencies and periods the generator happens to draw. Playing a clip back a few percent
faster or slower moves every pitch and every rate by the same factor, so a wail stays a wail, a
steady tone stays steady and a ringtone's steps stay steps, while the model sees each training clip
at a new pitch every epoch. ``warp_audio`` does the resampling (linear interpolation about the
window's centre, the edges reflected so no silence is added); ``dataset.Augment(audio_warp=w)``
draws the factors, log-uniform in ``[1/(1+w), 1+w]``.
"""

from __future__ import annotations

import torch

__all__ = ["warp_audio", "warp_factors"]


def warp_factors(u: torch.Tensor, max_warp: float) -> torch.Tensor:
    """Uniform draws ``u`` in [0, 1) → factors log-uniform in ``[1/(1+max_warp), 1+max_warp]``.

    Raises:
        ValueError: ``max_warp`` is negative or not below 1.
    """
    if not 0.0 <= max_warp < 1.0:
        raise ValueError(f"max_warp must be in [0, 1), got {max_warp}")
    return (1.0 + max_warp) ** (2.0 * u - 1.0)


def warp_audio(audio: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Resample waveforms ``(B, S)`` by ``factors`` ``(B,)``: output sample ``i`` is the input at
    ``c + (i - c) * factor``, ``c`` the window's centre, read by linear interpolation.

    A factor above 1 raises every frequency and rate by it (the clip played faster), below 1
    lowers them; the samples it reads beyond an edge are the waveform reflected there, so the
    window stays full of sound. A factor of exactly 1 returns the waveform unchanged.

    Args:
        audio: ``(B, S)`` float waveforms, ``S >= 2``.
        factors: ``(B,)`` positive factors.

    Raises:
        ValueError: the shapes do not match, ``S < 2`` or a factor is not positive and finite.

    Returns:
        ``(B, S)`` warped waveforms (a new tensor).
    """
    if audio.dim() != 2 or factors.shape != (audio.shape[0],) or audio.shape[1] < 2:
        raise ValueError(f"need audio (B, S >= 2) and factors (B,), got {tuple(audio.shape)} and "
                         f"{tuple(factors.shape)}")
    if not bool(torch.isfinite(factors).all() and (factors > 0).all()):
        raise ValueError("warp factors must be positive and finite")
    s = audio.shape[1]
    centre = (s - 1) / 2.0
    offsets = torch.arange(s, dtype=torch.float64) - centre  # (S,)
    pos = centre + offsets.unsqueeze(0) * factors.double().unsqueeze(1)  # (B, S)
    period = 2.0 * (s - 1)  # reflect at both edges
    pos = torch.remainder(pos, period)
    pos = torch.where(pos > s - 1, period - pos, pos)
    lo = pos.floor().long().clamp(0, s - 2)
    frac = (pos - lo).to(audio.dtype)
    return torch.lerp(audio.gather(1, lo), audio.gather(1, lo + 1), frac)
