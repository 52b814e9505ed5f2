"""Pitch-motion features of the audio, computed inside the model graph.

A siren is defined by how its pitch moves: a periodic sweep (wail, yelp, phaser, rumbler) or a
regular two-tone alternation (hi-lo). A steady tone's pitch does not move; a ringtone's or a
melody's jumps in steps at other rates. A CNN over the log-mel map can learn this from examples,
but it is as ready to learn "a tonal sound in the siren's band", which the generator's tones and
ringtones also are. ``PitchMotion`` hands the audio encoder the motion itself: per STFT frame,
the soft-argmax pitch over the 150-2200 Hz band (where every siren's fundamental or its first
harmonics lie), its first and second time derivatives, and how far the peak stands above the
band (salience). It does so for two views of the band: the spectrum as it is (the loudest sound)
and the spectrum less each bin's mean over the clip window, which removes what holds still, so a
quiet siren moving under a louder steady tone is still tracked.

Every step is a plain ONNX operator (Slice, Log, Softmax, Mul, ReduceSum, ReduceMean, Concat, Conv),
so the features export with the model and run on TensorRT; the kernels are fixed buffers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PITCH_BAND_HZ", "PITCH_MOTION_CHANNELS", "PitchMotion"]

#: Frequencies the pitch is tracked over, Hz: a rumbler's fundamental (180 Hz and up) to a wail's top
#: (1800 Hz) with room for Doppler.
PITCH_BAND_HZ: tuple[float, float] = (150.0, 2200.0)

#: Features per frame: (pitch, its first and second derivative, salience) for each of the two views.
PITCH_MOTION_CHANNELS = 8


def _delta_kernel() -> torch.Tensor:
    """Regression derivative over +-2 frames (as HTK's delta features), per frame: ``(5,)``."""
    n = torch.arange(-2, 3, dtype=torch.float64)
    return n / (2.0 * float((n[3:] ** 2).sum()))


class PitchMotion(nn.Module):
    """STFT power ``(B, F, N)`` → pitch-motion features ``(B, 8, N)``, one column per frame.

    Channels, for the band as heard and then for the band less its mean over the window:
    ``pitch`` (log2 of the soft-argmax frequency over 1 kHz, i.e. octaves), its derivative and
    second derivative per frame (regression over +-2 frames, edges repeated), and ``salience``
    (the softmax-weighted log power minus the band's mean log power: 0 for a flat spectrum, large
    for a tone). Silence gives finite values (a flat band).

    Args:
        sample_rate: Hz.
        n_fft: STFT window of the power it is given, samples.
        band_hz: ``(low, high)`` frequencies tracked, Hz; cut at the Nyquist frequency.
        sharpness: the softmax's inverse temperature on natural-log power (2: weights ∝ power²).
        eps: added to the power before the log (as the log-mel front end).

    Raises:
        ValueError: the band holds fewer than two STFT bins.
    """

    def __init__(self, sample_rate: int, n_fft: int, band_hz: tuple[float, float] = PITCH_BAND_HZ,
                 sharpness: float = 2.0, eps: float = 1e-6) -> None:
        super().__init__()
        lo_hz, hi_hz = float(band_hz[0]), min(float(band_hz[1]), sample_rate / 2)
        bin_hz = sample_rate / n_fft
        self.lo, self.hi = math.ceil(lo_hz / bin_hz), math.floor(hi_hz / bin_hz) + 1  # bins [lo, hi)
        if self.lo < 1 or self.hi - self.lo < 2:
            raise ValueError(f"pitch band {lo_hz:g}-{hi_hz:g} Hz holds {max(self.hi - self.lo, 0)} STFT bins "
                             f"of {bin_hz:g} Hz (need >= 2, above 0 Hz)")
        self.sharpness, self.eps = float(sharpness), float(eps)
        freqs = torch.arange(self.lo, self.hi, dtype=torch.float64) * bin_hz
        self.register_buffer("octaves", torch.log2(freqs / 1000.0).float().view(1, -1, 1))  # (1, K, 1)
        self.register_buffer("delta", _delta_kernel().float().view(1, 1, 5).repeat(2, 1, 1))  # (2, 1, 5)

    def _track(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Band log power ``(B, K, N)`` → ``(pitch (B, N), salience (B, N))``."""
        w = torch.softmax(self.sharpness * x, dim=1)  # (B, K, N)
        pitch = (w * self.octaves).sum(dim=1)
        salience = (w * x).sum(dim=1) - x.mean(dim=1)
        return pitch, salience

    def _derivative(self, p: torch.Tensor) -> torch.Tensor:
        """``(B, 2, N)`` → its regression derivative per frame, ``(B, 2, N)`` (edges repeated)."""
        first, last = p[:, :, :1], p[:, :, -1:]
        padded = torch.cat([first, first, p, last, last], dim=2)  # (B, 2, N + 4)
        return nn.functional.conv1d(padded, self.delta, groups=2)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        x = torch.log(power[:, self.lo:self.hi] + self.eps)  # (B, K, N)
        loud_pitch, loud_sal = self._track(x)
        move_pitch, move_sal = self._track(x - x.mean(dim=2, keepdim=True))
        pitch = torch.stack([loud_pitch, move_pitch], dim=1)  # (B, 2, N)
        d1 = self._derivative(pitch)
        d2 = self._derivative(d1)
        return torch.stack([pitch[:, 0], d1[:, 0], d2[:, 0], loud_sal,
                            pitch[:, 1], d1[:, 1], d2[:, 1], move_sal], dim=1)  # (B, 8, N)
