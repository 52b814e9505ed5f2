"""Task heads: clip events, audio tags and CenterNet detection on the last frame."""

from __future__ import annotations

import torch
from torch import nn

from .encoders import ConvBNReLU
from .gelu import Gelu

__all__ = ["EventHead", "AudioTagHead", "CenterNetHead", "AudioTagPrior", "NoDetectionHead", "HEATMAP_BIAS_INIT",
           "NO_DETECTION_LOGIT"]

#: CenterNet's heatmap bias: sigmoid(-2.19) ≈ 0.1, so the focal loss starts stable.
HEATMAP_BIAS_INIT = -2.19

#: Heatmap logit of a model without video: sigmoid(-20) ≈ 2e-9, below any score threshold.
NO_DETECTION_LOGIT = -20.0


class EventHead(nn.Module):
    """Fused clip embedding + presence mask → ``(B, E)`` event logits (a small MLP).

    The presence mask is an input as well, so the head knows when a missing modality's evidence is
    absent rather than negative.
    """

    def __init__(self, in_dim: int, hidden: int, num_events: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim + 2, hidden), Gelu(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_events))

    def forward(self, fused: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([fused, presence], dim=1))  # (B, E)


class AudioTagHead(nn.Module):
    """Pooled audio embedding (mean and max over time) → ``(B, A)`` multi-label tag logits."""

    def __init__(self, in_dim: int, hidden: int, num_tags: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * in_dim, hidden), Gelu(), nn.Linear(hidden, num_tags))

    def forward(self, audio_tokens: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([audio_tokens.mean(dim=1), audio_tokens.amax(dim=1)], dim=1)  # (B, 2D)
        return self.mlp(pooled)  # (B, A)


class CenterNetHead(nn.Module):
    """CenterNet at stride 4: last-frame stride-4 features + upsampled stride-16 clip context.

    The context (temporally mixed over the clip) is what tells a flashing emergency vehicle from a
    parked car; it is projected and upsampled ×4 (nearest) onto the stride-4 map before the shared
    3×3 convolution and three 1×1 outputs.

    Outputs: heatmap logits ``(B, C, h, w)``; box size ``(B, 2, h, w)`` in model-input pixels,
    ``size_scale_px * exp(clamp(raw, -4, 4))`` (positive, bounded, exportable); centre offset
    ``(B, 2, h, w)`` in cells, ``sigmoid`` → [0, 1).
    """

    def __init__(self, s4_channels: int, context_channels: int, channels: int, num_classes: int,
                 size_scale_px: float = 16.0) -> None:
        super().__init__()
        self.lateral = ConvBNReLU(s4_channels, channels)
        self.context = nn.Conv2d(context_channels, channels, 1)
        self.up = nn.Upsample(scale_factor=4, mode="nearest")
        self.shared = ConvBNReLU(channels, channels)
        self.heatmap = nn.Conv2d(channels, num_classes, 1)
        self.size = nn.Conv2d(channels, 2, 1)
        self.offset = nn.Conv2d(channels, 2, 1)
        self.size_scale_px = float(size_scale_px)
        nn.init.constant_(self.heatmap.bias, HEATMAP_BIAS_INIT)
        nn.init.zeros_(self.size.bias)
        nn.init.zeros_(self.offset.bias)

    def forward(self, last_s4: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.lateral(last_s4) + self.up(self.context(context))  # (B, ch, h, w)
        x = self.shared(x)
        heatmap = self.heatmap(x)  # (B, C, h, w) logits
        size = torch.exp(torch.clamp(self.size(x), -4.0, 4.0)) * self.size_scale_px  # (B, 2, h, w) px
        offset = torch.sigmoid(self.offset(x))  # (B, 2, h, w) cells
        return heatmap, size, offset


class AudioTagPrior(nn.Module):
    """Audio-tag logits of a model without audio: learned per-tag biases (zero features → bias).

    The logits are the same for every sample: the tag frequencies of the training data.
    """

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_tags))

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        return self.bias.unsqueeze(0).expand(like.shape[0], -1).clone()  # (B, A), B from any input


class NoDetectionHead(nn.Module):
    """Detection outputs of a model without video: a constant "no detection".

    The heatmap logits are ``NO_DETECTION_LOGIT`` everywhere (no score passes a threshold), the
    sizes ``size_scale_px`` and the offsets 0.5; all are fixed buffers, nothing is trained. The
    shapes are those of ``CenterNetHead``, so the model keeps the I/O contract.
    """

    def __init__(self, num_classes: int, heatmap_hw: tuple[int, int], size_scale_px: float = 16.0) -> None:
        super().__init__()
        h, w = heatmap_hw
        self.register_buffer("heatmap", torch.full((1, num_classes, h, w), NO_DETECTION_LOGIT), persistent=False)
        self.register_buffer("size", torch.full((1, 2, h, w), float(size_scale_px)), persistent=False)
        self.register_buffer("offset", torch.full((1, 2, h, w), 0.5), persistent=False)

    def forward(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = like.shape[0]
        return tuple(t.expand(b, -1, -1, -1).clone() for t in (self.heatmap, self.size, self.offset))
