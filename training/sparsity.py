"""2:4 semi-structured sparsity: in every group of 4 consecutive input weights, at most 2 are non-zero.

NVIDIA's sparse tensor cores (Ampere and later, Jetson Orin included) skip the zeros of this pattern
and TensorRT uses them for a layer when its weights have it and the engine is built with the
sparse-weights flag. The groups run along the **input** dimension: for a convolution weight
``(O, I, k...)`` the 4 consecutive input channels at one output channel and kernel position; for a
linear weight ``(O, I)`` 4 consecutive input features. A layer takes part only when its input
width is a multiple of 4 and it is not grouped.

The masks are chosen by magnitude (the 2 largest of each group stay) once, then held fixed while
the model is fine-tuned by distillation (:mod:`fusionedge.training.finetune`): after every
optimizer step the masked weights are set to zero again, so the exported ONNX weights keep the
pattern exactly (``fusionedge.export.sparsity`` checks it). CPU runtimes gain no speed from it.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from fusionedge.sdk.errors import InputError
from torch import nn

from .finetune import FinetuneConfig, distill_finetune, load_training_clips, teacher_targets

__all__ = [
    "PATTERNS",
    "SparsityError",
    "apply_masks",
    "check_pattern",
    "eligible_layers",
    "mask_2to4",
    "sparsify_checkpoint",
    "sparsify_model",
]

#: The semi-structured patterns this module makes.
PATTERNS = ("2:4",)


class SparsityError(InputError):
    """An unknown sparsity pattern, or a model with no layer that can take the pattern."""


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is one of :data:`PATTERNS`.

    Raises:
        SparsityError: naming the pattern asked for.
    """
    if pattern not in PATTERNS:
        raise SparsityError(f"sparsity pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    return pattern


def mask_2to4(weight: torch.Tensor) -> torch.Tensor:
    """The magnitude 2:4 mask of a weight, groups of 4 along dim 1 (the input dimension).

    Args:
        weight: ``(O, I, ...)`` with ``I % 4 == 0``.

    Returns:
        A bool tensor of ``weight``'s shape, True for the 2 largest ``|w|`` of each group (ties: the
        earlier index).

    Raises:
        SparsityError: the input dimension is not a multiple of 4.
    """
    if weight.dim() < 2 or weight.shape[1] % 4:
        raise SparsityError(f"a 2:4 mask needs an input dimension that is a multiple of 4, got shape "
                            f"{tuple(weight.shape)}")
    w = weight.detach().abs().movedim(1, -1)  # (O, ..., I)
    groups = w.reshape(*w.shape[:-1], w.shape[-1] // 4, 4)
    top = groups.topk(2, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(w.shape).movedim(-1, 1).contiguous()


def eligible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The convolutions and linear layers that can take 2:4 (input width a multiple of 4, ungrouped).

    Returns:
        ``{module name: module}`` in model order.
    """
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.in_features % 4 == 0 or isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1 and m.in_channels % 4 == 0 \
                and not m.transposed:
            out[name] = m
    return out


@torch.no_grad()
def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights of ``layers`` in place (``masks`` by the same names)."""
    for name, mask in masks.items():
        layers[name].weight.mul_(mask)


def sparsify_model(
    model: nn.Module,
    pattern: str = "2:4",
    *,
    clips: Any = None,
    teacher_cache: Any = None,
    finetune: FinetuneConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Give every eligible layer of ``model`` the 2:4 pattern, then fine-tune with the masks held fixed.

    Args:
        model: the model (modified in place).
        pattern: ``"2:4"``.
        clips: training clips; with ``teacher_cache``, the model is fine-tuned by distillation.
        teacher_cache: the dense model's outputs on ``clips``.
        finetune: the fine-tune schedule (default ``FinetuneConfig()``).
        progress: progress bars on stderr.

    Returns:
        ``{"pattern", "layers": [module names], "weights": int (masked weights), "zeros": int,
        "finetune": history}``.

    Raises:
        SparsityError: an unknown pattern, or no eligible layer.
        FinetuneError: fine-tuning diverged.
    """
    check_pattern(pattern)
    finetune = FinetuneConfig() if finetune is None else finetune
    layers = eligible_layers(model)
    if not layers:
        raise SparsityError(f"{type(model).__name__} has no layer whose input width is a multiple of 4")
    masks = {n: mask_2to4(m.weight) for n, m in layers.items()}
    apply_masks(layers, masks)
    history: list = []
    if clips is not None and teacher_cache is not None and finetune.epochs > 0:
        history = distill_finetune(model, teacher_cache, clips, finetune, after_step=lambda: apply_masks(layers, masks),
                                   desc=f"{pattern} fine-tune", progress=progress)
    model.eval()
    return {"pattern": pattern, "layers": list(layers), "weights": int(sum(m.numel() for m in masks.values())),
            "zeros": int(sum((~m).sum() for m in masks.values())), "finetune": history}


def sparsify_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    pattern: str = "2:4",
    *,
    finetune: FinetuneConfig | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Load a checkpoint and make it 2:4 sparse, fine-tuned by distillation from its dense self.

    Returns:
        ``(model in eval mode, info)``; ``info["extra"]["sparsity"]`` holds :func:`sparsify_model`'s
        report. Pass both to ``fusionedge.export.pipeline.export_model``.

    Raises:
        CheckpointError: the checkpoint is invalid. SparsityError / FinetuneError: see
        :func:`sparsify_model`. DataError / MediaError: the data.
    """
    from .checkpoint import load_checkpoint

    check_pattern(pattern)
    finetune = FinetuneConfig() if finetune is None else finetune
    model, info = load_checkpoint(checkpoint)
    clips = load_training_clips(info, data, limit=limit, progress=progress)
    cache = teacher_targets(copy.deepcopy(model), clips, batch_size=finetune.batch_size, progress=progress)
    report = sparsify_model(model, pattern, clips=clips, teacher_cache=cache, finetune=finetune, progress=progress)
    info = dict(info)
    info["extra"] = {**dict(info.get("extra") or {}), "sparsity": report}
    return model, info
