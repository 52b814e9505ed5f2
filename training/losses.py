"""Multi-task loss: event cross-entropy, audio-tag BCE, CenterNet focal + L1 (size, offset).

Each term honours the presence mask: the audio-tag loss counts only samples whose audio is present,
the detection losses only samples whose video is present (a model cannot see boxes in a zero clip),
and the event loss skips unlabelled samples (event index ``IGNORE_INDEX``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossWeights", "IGNORE_INDEX", "centernet_focal_loss", "masked_l1", "multitask_loss"]

#: Event target of a sample without an event label.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (dimensionless)."""

    event: float = 1.0
    audio_tags: float = 1.0
    heatmap: float = 1.0
    size: float = 0.5  # L1 on log(width), log(height)
    offset: float = 1.0  # L1 on the sub-cell offset (cells)


def centernet_focal_loss(logits: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor,
                         alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, normalized by the number of centres.

    Args:
        logits: ``(B, C, h, w)`` heatmap logits.
        target: ``(B, C, h, w)`` Gaussian-splatted targets in [0, 1], exactly 1 at centres.
        sample_weight: ``(B,)`` 1 for samples that count, 0 for samples to ignore.
        alpha, beta: the focal exponents of the paper (2 and 4).

    Returns:
        Scalar loss.
    """
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)  # stable log(p), log(1-p)
    p = torch.sigmoid(logits)
    pos = (target >= 1.0).float()
    pos_term = log_p * (1.0 - p) ** alpha * pos
    neg_term = log_1mp * p ** alpha * (1.0 - target) ** beta * (1.0 - pos)
    w = sample_weight.reshape(-1, 1, 1, 1)
    num_pos = (pos * w).sum().clamp(min=1.0)
    return -((pos_term + neg_term) * w).sum() / num_pos


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 over the cells where ``mask`` is 1.

    Args:
        pred, target: ``(B, 2, h, w)``.
        mask: ``(B, h, w)`` in {0, 1}.

    Returns:
        Scalar: sum of ``|pred - target|`` at masked cells (both channels) / (2 * masked cells).
    """
    m = mask.unsqueeze(1)  # (B, 1, h, w)
    return ((pred - target).abs() * m).sum() / (2.0 * m.sum()).clamp(min=1.0)


def multitask_loss(outputs: tuple[torch.Tensor, ...], batch: dict[str, torch.Tensor],
                   weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of all task losses for one batch.

    Args:
        outputs: the model's outputs in ``OUTPUT_NAMES`` order.
        batch: ``presence`` (B, 2), ``event`` (B,) int64 (``IGNORE_INDEX`` = unlabelled),
            ``audio_tags`` (B, A) {0,1}, ``heatmap`` (B, C, h, w), ``size`` (B, 2, h, w) pixels,
            ``offset`` (B, 2, h, w) cells, ``mask`` (B, h, w).
        weights: per-task weights.

    Returns:
        ``(total, parts)``: the scalar to back-propagate, and each unweighted term as a float.
    """
    event_logits, tag_logits, heatmap, size, offset = outputs
    video_on, audio_on = batch["presence"][:, 0], batch["presence"][:, 1]  # (B,)

    labelled = (batch["event"] != IGNORE_INDEX).float()
    ce = F.cross_entropy(event_logits, batch["event"].clamp(min=0), reduction="none")  # (B,)
    event = (ce * labelled).sum() / labelled.sum().clamp(min=1.0)

    bce = F.binary_cross_entropy_with_logits(tag_logits, batch["audio_tags"], reduction="none").mean(dim=1)
    tags = (bce * audio_on).sum() / audio_on.sum().clamp(min=1.0)

    hm = centernet_focal_loss(heatmap, batch["heatmap"], video_on)
    mask = batch["mask"] * video_on.reshape(-1, 1, 1)  # (B, h, w)
    # size in log space: a 4-pixel error matters on a pedestrian, not on a bus
    log_size = torch.log(size.clamp(min=1e-3))
    size_l1 = masked_l1(log_size, torch.log(batch["size"].clamp(min=1e-3)), mask)
    off_l1 = masked_l1(offset, batch["offset"], mask)

    total = (weights.event * event + weights.audio_tags * tags + weights.heatmap * hm
             + weights.size * size_l1 + weights.offset * off_l1)
    parts = {"event": event, "audio_tags": tags, "heatmap": hm, "size": size_l1, "offset": off_l1}
    return total, {k: float(v.detach()) for k, v in parts.items()}
