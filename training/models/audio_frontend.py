"""Log-mel audio features computed inside the model graph, as a convolution.

The short-time Fourier transform is a 1-D convolution with fixed kernels: one Hann-windowed cosine
and one sine per frequency bin, stride = hop length. Squaring and adding the two gives the power
spectrum, a matrix product with a fixed mel filterbank gives mel power, and ``log(x + eps)`` the
log-mel map. Every step is a plain ONNX operator (Conv, Mul, Add, MatMul, Log), so the front end
exports with the rest of the model and runs on TensorRT, which has no ``STFT``/``DFT`` operator.
Training and serving therefore share one definition of the audio features.

The result equals ``torch.stft(x, n_fft, hop, window=hann, center=True, pad_mode="constant")``
followed by the same power/mel/log steps (checked in ``tests/test_models.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LogMelFrontend", "dft_kernels", "mel_filterbank"]


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)  # HTK mel scale


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular HTK mel filterbank (no area normalization), float64.

    Args:
        n_freqs: number of STFT bins, ``n_fft // 2 + 1``.
        n_mels: number of mel bands.
        sample_rate: Hz.
        f_min: lowest band edge, Hz.
        f_max: highest band edge, Hz (at most ``sample_rate / 2``).

    Raises:
        ValueError: a band edge or count is out of range.

    Returns:
        ``(n_freqs, n_mels)`` weights: ``mel_power = power @ fb``.
    """
    if not (0.0 <= f_min < f_max <= sample_rate / 2):
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}, "
                         f"sample_rate={sample_rate}")
    if n_mels < 1 or n_freqs < 2:
        raise ValueError(f"need n_mels >= 1 and n_freqs >= 2, got {n_mels}, {n_freqs}")
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (F,) bin centres, Hz
    m_pts = torch.linspace(float(_hz_to_mel(torch.tensor(f_min))), float(_hz_to_mel(torch.tensor(f_max))),
                           n_mels + 2, dtype=torch.float64)
    f_pts = _mel_to_hz(m_pts)  # (M+2,) band edges, Hz
    f_diff = f_pts[1:] - f_pts[:-1]  # (M+1,)
    slopes = f_pts.unsqueeze(0) - freqs.unsqueeze(1)  # (F, M+2)
    down = -slopes[:, :-2] / f_diff[:-1]  # rising edge
    up = slopes[:, 2:] / f_diff[1:]  # falling edge
    return torch.clamp(torch.minimum(down, up), min=0.0)  # (F, M)


def dft_kernels(n_fft: int) -> torch.Tensor:
    """Hann-windowed real-DFT kernels for ``conv1d``, float64.

    Args:
        n_fft: window length in samples.

    Returns:
        ``(2 * (n_fft // 2 + 1), 1, n_fft)``: the cosine (real part) kernels of bins ``0..n_fft/2``,
        then the negative sine (imaginary part) kernels, in the sign convention of ``torch.stft``.
    """
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2.0 * math.pi * n / n_fft)  # periodic Hann, as torch.hann_window
    angle = 2.0 * math.pi * k.unsqueeze(1) * n.unsqueeze(0) / n_fft  # (F, n_fft)
    real = torch.cos(angle) * window
    imag = -torch.sin(angle) * window
    return torch.cat([real, imag], dim=0).unsqueeze(1)


class LogMelFrontend(nn.Module):
    """Waveform ``(B, S)`` → log-mel map ``(B, n_mels, frames)``, frames = ``1 + S // hop``.

    All kernels are buffers (saved with the model, never trained).
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 64,
                 f_min: float = 0.0, f_max: float | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        if n_fft < 2 or hop_length < 1:
            raise ValueError(f"need n_fft >= 2 and hop_length >= 1, got {n_fft}, {hop_length}")
        self.n_fft, self.hop_length, self.n_mels, self.eps = n_fft, hop_length, n_mels, eps
        self.n_freqs = n_fft // 2 + 1
        f_max = sample_rate / 2 if f_max is None else f_max
        self.register_buffer("dft", dft_kernels(n_fft).float())  # (2F, 1, n_fft)
        self.register_buffer("mel_fb", mel_filterbank(self.n_freqs, n_mels, sample_rate, f_min, f_max).float())

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of ``num_samples`` samples (centre padding, as torch.stft)."""
        return 1 + num_samples // self.hop_length

    def power(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveform ``(B, S)`` → STFT power ``(B, n_fft // 2 + 1, frames)`` (bin ``k`` at ``k * sr / n_fft`` Hz)."""
        x = audio.unsqueeze(1)  # (B, 1, S)
        # centre=True with zero padding: n_fft // 2 zeros at both ends, as torch.stft(pad_mode="constant")
        spec = nn.functional.conv1d(x, self.dft, stride=self.hop_length, padding=self.n_fft // 2)  # (B, 2F, N)
        real, imag = spec[:, : self.n_freqs], spec[:, self.n_freqs:]
        return real * real + imag * imag  # (B, F, N)

    def log_mel(self, power: torch.Tensor) -> torch.Tensor:
        """STFT power ``(B, F, N)`` (from ``power``) → log-mel map ``(B, n_mels, N)``."""
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb)  # (B, N, M)
        return torch.log(mel + self.eps).transpose(1, 2)  # (B, M, N)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.log_mel(self.power(audio))
