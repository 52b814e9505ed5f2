"""Multi-task loss: event cross-entropy, audio-tag BCE, CenterNet focal + L1 (size, offset).

The terms fall into three task groups (``TASK_GROUPS``): ``event``, ``audio_tags`` and ``detection``
(heatmap + size + offset). How the groups are combined is a training option:

- weighting ``"fixed"``: the ``LossWeights``-weighted sum; ``"uncertainty"``: Kendall, Gal & Cipolla
  (2018) homoscedastic-uncertainty weighting with one learned log-variance ``s_i`` per group,
  ``L = sum_i exp(-s_i) * L_i + s_i`` (``UncertaintyWeighting``), where ``L_i`` is the group's
  ``LossWeights``-weighted sum (so the size/offset balance inside detection stays fixed);
- schedule ``"joint"``: every group every step; ``"alternating"``: one group per step, round-robin
  (``scheduled_groups``); the encoders are shared, so each step still updates them.

Each term honours the presence mask: the audio-tag loss counts only samples whose audio is present,
the detection losses only samples whose video is present (a model cannot see boxes in a zero clip),
and the event loss skips unlabelled samples (event index ``IGNORE_INDEX``). The auxiliary
``sound_naming`` term (``sound_naming.py``) counts in the ``audio_tags`` group.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusionedge.sdk.spec import OUTPUT_NAMES

__all__ = ["LossWeights", "IGNORE_INDEX", "centernet_focal_loss", "masked_l1", "multitask_loss", "multitask_terms",
           "named_outputs", "output_groups",
           "TASK_GROUPS", "TERM_GROUPS", "TASK_WEIGHTINGS", "TASK_SCHEDULES", "UncertaintyWeighting",
           "scheduled_groups", "combine_task_losses"]

#: Event target of a sample without an event label.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (dimensionless).

    The box terms weigh more than CenterNet's (size 0.1 on pixels, offset 1): at the student's 160x96
    input a pedestrian is 2-4 px wide and a traffic light 2 px, so a box is right at IoU 0.5 only when
    its centre is within about a pixel. Size 1.0 and offset 2.5 (from 0.5 and 1.0) raised the
    quickstart recipe's detection mAP@0.5 by 2.6-3.6 points on three seeds, tag mAP unchanged
    (``training/EXPERIMENTS.md``, "heavier box terms").
    """

    event: float = 1.0
    audio_tags: float = 1.0
    heatmap: float = 1.0
    size: float = 1.0  # L1 on log(width), log(height)
    offset: float = 2.5  # L1 on the sub-cell offset (cells)


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


def named_outputs(outputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                  names: Sequence[str] = OUTPUT_NAMES) -> dict[str, torch.Tensor]:
    """A model's outputs by name: a mapping as it is, a tuple zipped with ``names`` (the model's ``output_names``).

    Raises:
        ValueError: a tuple of another length than ``names``.
    """
    if isinstance(outputs, Mapping):
        return dict(outputs)
    if len(outputs) != len(names):
        raise ValueError(f"expected {len(names)} outputs {list(names)}, got {len(outputs)}")
    return dict(zip(names, outputs))


def multitask_terms(outputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                    batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unweighted task losses of one batch, as scalar tensors (see ``multitask_loss``).

    Args:
        outputs: the model's outputs by name, or the five of ``OUTPUT_NAMES`` as a tuple.
        batch: see ``multitask_loss``.

    Returns:
        ``{"event", "audio_tags", "heatmap", "size", "offset"}`` in that order, less the terms of
        the heads the model lacks (no ``event_logits``: no ``event`` term, and so on).
    """
    out = named_outputs(outputs)
    video_on, audio_on = batch["presence"][:, 0], batch["presence"][:, 1]  # (B,)
    terms: dict[str, torch.Tensor] = {}
    if "event_logits" in out:
        labelled = (batch["event"] != IGNORE_INDEX).float()
        ce = F.cross_entropy(out["event_logits"], batch["event"].clamp(min=0), reduction="none")  # (B,)
        terms["event"] = (ce * labelled).sum() / labelled.sum().clamp(min=1.0)
    if "audio_tag_logits" in out:
        bce = F.binary_cross_entropy_with_logits(out["audio_tag_logits"], batch["audio_tags"],
                                                 reduction="none").mean(dim=1)
        terms["audio_tags"] = (bce * audio_on).sum() / audio_on.sum().clamp(min=1.0)
    if "det_heatmap" in out:
        terms["heatmap"] = centernet_focal_loss(out["det_heatmap"], batch["heatmap"], video_on)
        mask = batch["mask"] * video_on.reshape(-1, 1, 1)  # (B, h, w)
        # size in log space: a 4-pixel error matters on a pedestrian, not on a bus
        log_size = torch.log(out["det_size"].clamp(min=1e-3))
        terms["size"] = masked_l1(log_size, torch.log(batch["size"].clamp(min=1e-3)), mask)
        terms["offset"] = masked_l1(out["det_offset"], batch["offset"], mask)
    return terms


def multitask_loss(outputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], batch: dict[str, torch.Tensor],
                   weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the task losses for one batch.

    Args:
        outputs: the model's outputs by name, or the five of ``OUTPUT_NAMES`` as a tuple.
        batch: ``presence`` (B, 2), ``event`` (B,) int64 (``IGNORE_INDEX`` = unlabelled),
            ``audio_tags`` (B, A) {0,1}, ``heatmap`` (B, C, h, w), ``size`` (B, 2, h, w) pixels,
            ``offset`` (B, 2, h, w) cells, ``mask`` (B, h, w).
        weights: per-task weights.

    Returns:
        ``(total, parts)``: the scalar to back-propagate, and each unweighted term as a float.
    """
    parts = multitask_terms(outputs, batch)
    total = sum((getattr(weights, k) * v for k, v in parts.items()), torch.zeros(()).to(next(iter(parts.values()))))
    return total, {k: float(v.detach()) for k, v in parts.items()}


#: The task groups a multi-task strategy weights or schedules (one learned weight / one turn each).
TASK_GROUPS: tuple[str, ...] = ("event", "audio_tags", "detection")
#: The group of each loss term (the supervised terms, and the distillation terms of ``distill.py``).
TERM_GROUPS: dict[str, str] = {"event": "event", "audio_tags": "audio_tags", "heatmap": "detection",
                               "size": "detection", "offset": "detection", "kd_event": "event",
                               "kd_feature": "event", "kd_tags": "audio_tags", "kd_heatmap": "detection",
                               "kd_box": "detection", "kd_det_feature": "detection", "sound_naming": "audio_tags"}
TASK_WEIGHTINGS: tuple[str, ...] = ("fixed", "uncertainty")
#: The task group of each head's outputs.
_OUTPUT_GROUPS: dict[str, str] = {"event_logits": "event", "audio_tag_logits": "audio_tags",
                                  "det_heatmap": "detection"}


def output_groups(output_names: Sequence[str]) -> tuple[str, ...]:
    """The task groups of a model with these outputs, in ``TASK_GROUPS`` order (a head-less task has fewer)."""
    have = {_OUTPUT_GROUPS[n] for n in output_names if n in _OUTPUT_GROUPS}
    return tuple(g for g in TASK_GROUPS if g in have)
TASK_SCHEDULES: tuple[str, ...] = ("joint", "alternating")


class UncertaintyWeighting(nn.Module):
    """Learned task weights (Kendall et al. 2018): ``L = sum_i exp(-s_i) * L_i + s_i``.

    One log-variance ``s_i`` per group, initialized to 0 (weight 1). The ``+ s_i`` term keeps the
    weights from collapsing to 0; at the optimum ``exp(-s_i) = 1 / L_i``.

    Args:
        groups: the group names, in a fixed order (the order of ``log_vars``).
    """

    def __init__(self, groups: Sequence[str] = TASK_GROUPS) -> None:
        super().__init__()
        self.groups = tuple(groups)
        self.log_vars = nn.Parameter(torch.zeros(len(self.groups)))  # (G,)

    def forward(self, group_losses: Mapping[str, torch.Tensor], active: Sequence[str] | None = None) -> torch.Tensor:
        """The weighted total of the ``active`` groups (default: all groups).

        Raises:
            KeyError: an active group has no loss or is not one of ``groups``.
        """
        total = torch.zeros((), device=self.log_vars.device)
        for name in self.groups if active is None else active:
            s = self.log_vars[self.groups.index(name)]
            total = total + torch.exp(-s) * group_losses[name] + s
        return total

    def weights(self) -> dict[str, float]:
        """The current weight ``exp(-s_i)`` of each group."""
        return {g: float(w) for g, w in zip(self.groups, torch.exp(-self.log_vars.detach()).tolist())}


def scheduled_groups(schedule: str, step: int, groups: Sequence[str] = TASK_GROUPS) -> tuple[str, ...]:
    """The task groups whose loss is back-propagated at optimizer step ``step`` (0-based).

    Args:
        schedule: ``"joint"`` (every group) or ``"alternating"`` (``groups[step % len(groups)]``).
        step: the global step (so a resumed run continues the round-robin where it stopped).
        groups: the groups in turn order.

    Raises:
        ValueError: an unknown schedule.

    Returns:
        The active groups.
    """
    if schedule == "joint":
        return tuple(groups)
    if schedule == "alternating":
        return (groups[step % len(groups)],)
    raise ValueError(f"unknown task schedule {schedule!r}; expected one of {TASK_SCHEDULES}")


def combine_task_losses(terms: Mapping[str, torch.Tensor], term_weights: Mapping[str, float],
                        active: Sequence[str] = TASK_GROUPS,
                        uncertainty: UncertaintyWeighting | None = None) -> torch.Tensor:
    """The scalar to back-propagate from weighted loss terms.

    Args:
        terms: scalar loss tensors by name (names in ``TERM_GROUPS``).
        term_weights: the fixed weight of each term (a term without a weight is left out).
        active: the groups that count this step (``scheduled_groups``).
        uncertainty: learned group weighting, or ``None`` for the fixed weighted sum.

    Raises:
        KeyError: a term of unknown group.

    Returns:
        Scalar: the fixed weighted sum of the active groups' terms (in ``terms`` order), or the
        uncertainty-weighted sum of the active groups' weighted sums.
    """
    chosen = [(k, v) for k, v in terms.items() if k in term_weights and TERM_GROUPS[k] in active]
    if uncertainty is None:
        return sum((term_weights[k] * v for k, v in chosen), torch.zeros(()).to(next(iter(terms.values()))))
    per_group: dict[str, torch.Tensor] = {}
    for k, v in chosen:
        g = TERM_GROUPS[k]
        per_group[g] = per_group[g] + term_weights[k] * v if g in per_group else term_weights[k] * v
    return uncertainty(per_group, [g for g in active if g in per_group])
