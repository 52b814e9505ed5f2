"""Per-modality encoders: a clip (video) encoder and an audio encoder.

Both turn one modality into *tokens* (for fusion) and feature maps (for the heads). Shapes are noted
inline; ``B`` batch, ``T`` frames, ``N`` tokens. Nothing here branches on tensor values, so the
modules export to ONNX with a dynamic batch.
"""

from __future__ import annotations

import torch
from torch import nn

from .audio_frontend import LogMelFrontend

__all__ = ["ConvBNReLU", "ClipEncoder", "AudioEncoder", "conv_out_len"]


def conv_out_len(n: int, stride: int = 2, kernel: int = 3, padding: int = 1) -> int:
    """Output length of a convolution along one axis."""
    return (n + 2 * padding - kernel) // stride + 1


class ConvBNReLU(nn.Sequential):
    """3×3 (by default) convolution → BatchNorm → ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def _stage(cin: int, cout: int, depth: int) -> nn.Sequential:
    """A stride-2 convolution followed by ``depth`` stride-1 convolutions."""
    return nn.Sequential(ConvBNReLU(cin, cout, stride=2), *[ConvBNReLU(cout, cout) for _ in range(depth)])


class ClipEncoder(nn.Module):
    """Video clip ``(B, T, 3, H, W)`` → tokens, a pooled embedding and detection features.

    A per-frame 2-D CNN (weights shared over the T frames) goes down to stride 4 (kept for the
    detection head) and on to stride 16. At stride 16 a temporal convolution mixes each location
    over the T frames (so a light that flashes between frames shows up as a feature), then mean and
    max over time are merged into one map whose cells are the video tokens.

    Args:
        channels: widths at stride 2, 4, 8 and 16.
        depth: extra stride-1 convolutions per stage after the stem.
        clip_frames: T.
        temporal_kernel: frames the temporal convolution spans (odd).

    ``forward`` returns ``(tokens (B, N, C16), pooled (B, C16), last_s4 (B, C4, H/4, W/4),
    context (B, C16, H/16, W/16))``; boxes refer to the last frame, hence ``last_s4``.
    """

    def __init__(self, channels: tuple[int, int, int, int], depth: int, clip_frames: int,
                 temporal_kernel: int = 3) -> None:
        super().__init__()
        c2, c4, c8, c16 = channels
        self.clip_frames = clip_frames
        self.stem = ConvBNReLU(3, c2, stride=2)
        self.s4 = _stage(c2, c4, depth)
        self.s8 = _stage(c4, c8, depth)
        self.s16 = _stage(c8, c16, depth)
        k = min(temporal_kernel, 2 * (clip_frames // 2) + 1)
        self.temporal = nn.Sequential(
            nn.Conv3d(c16, c16, (k, 1, 1), padding=(k // 2, 0, 0), bias=False),
            nn.BatchNorm3d(c16),
            nn.ReLU(inplace=True),
        )
        self.merge = nn.Sequential(nn.Conv2d(2 * c16, c16, 1, bias=False), nn.BatchNorm2d(c16),
                                   nn.ReLU(inplace=True))
        self.out_channels = c16
        self.s4_channels = c4

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.clip_frames
        frames = video.flatten(0, 1)  # (B*T, 3, H, W)
        f4 = self.s4(self.stem(frames))  # (B*T, C4, H/4, W/4)
        f16 = self.s16(self.s8(f4))  # (B*T, C16, H/16, W/16)
        c4, h4, w4 = f4.shape[1:]
        c16, h16, w16 = f16.shape[1:]
        last_s4 = f4.reshape(-1, t, c4, h4, w4)[:, -1]  # (B, C4, H/4, W/4)
        x = f16.reshape(-1, t, c16, h16, w16).transpose(1, 2)  # (B, C16, T, h, w)
        x = x + self.temporal(x)  # residual temporal mixing
        context = self.merge(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))  # (B, C16, h, w)
        tokens = context.flatten(2).transpose(1, 2)  # (B, h*w, C16)
        return tokens, tokens.mean(dim=1), last_s4, context


class AudioEncoder(nn.Module):
    """Waveform ``(B, S)`` → per-time-step tokens and a pooled embedding.

    Log-mel front end (inside the graph, see ``audio_frontend``) → per-mel-bin BatchNorm → a small
    2-D CNN over (mel × time), three stride-2 stages → frequency and channels folded into each time
    step → 1×1 projection.

    Args:
        channels: widths of the three stages.
        depth: extra stride-1 convolutions in the last stage.
        out_dim: token width.
        sample_rate, n_fft, hop_length, n_mels, f_min, f_max: front-end settings (Hz, samples).

    ``forward`` returns ``(tokens (B, N, out_dim), pooled (B, out_dim))``.
    """

    def __init__(self, channels: tuple[int, int, int], depth: int, out_dim: int, sample_rate: int,
                 n_fft: int, hop_length: int, n_mels: int, f_min: float, f_max: float) -> None:
        super().__init__()
        a1, a2, a3 = channels
        self.frontend = LogMelFrontend(sample_rate, n_fft, hop_length, n_mels, f_min, f_max)
        self.norm = nn.BatchNorm1d(n_mels)
        self.cnn = nn.Sequential(
            ConvBNReLU(1, a1, stride=2),
            ConvBNReLU(a1, a2, stride=2),
            _stage(a2, a3, depth),
        )
        mel_out = conv_out_len(conv_out_len(conv_out_len(n_mels)))
        self.proj = nn.Sequential(nn.Conv1d(a3 * mel_out, out_dim, 1, bias=False), nn.BatchNorm1d(out_dim),
                                  nn.ReLU(inplace=True))
        self.out_channels = out_dim

    def num_tokens(self, num_samples: int) -> int:
        """Tokens produced for a waveform of ``num_samples`` samples."""
        return conv_out_len(conv_out_len(conv_out_len(self.frontend.num_frames(num_samples))))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mel = self.norm(self.frontend(audio))  # (B, M, F)
        x = self.cnn(mel.unsqueeze(1))  # (B, C, M/8, F/8)
        x = self.proj(x.flatten(1, 2))  # (B, D, F/8): each time step sees every mel band
        tokens = x.transpose(1, 2)  # (B, N, D)
        return tokens, tokens.mean(dim=1)
