"""Building blocks of the training loops: seeding, data splits, parameter groups, the LR schedule.

Supervised training (``train.py``) and self-supervised pretraining (``pretrain.py``) run the same
kind of loop — decode a manifest once, build a registered model, AdamW with decoupled weight decay
under a linear warm-up and a cosine decay, clip, step — and share these pieces through this
public module rather than through each other's private helpers. JSON files of a run are written
with ``fusionedge.sdk.fileio.write_json_atomic`` (atomic, NaN/Inf as ``null``).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from fusionedge.sdk.datamanifest import Sample, read_manifest
from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.spec import InputGeometry

from .dataset import Labels, split_for_validation
from .models import model_config
from .models.multimodal import ModelConfig
from .run_config import RunConfig

__all__ = [
    "ENCODER_PREFIXES",
    "check_finite_loss",
    "lr_at",
    "param_groups",
    "read_split_samples",
    "resolve_model_config",
    "seed_everything",
    "warmup_cosine",
]

#: State-dict prefixes of the two encoders: what pretraining learns and ``encoder_lr_scale`` scales.
ENCODER_PREFIXES: tuple[str, str] = ("video_encoder.", "audio_encoder.")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a CPU generator for the data order.

    Args:
        seed: the run's seed.

    Returns:
        A ``torch.Generator`` seeded with ``seed`` (shuffling, augmentation and other per-run draws).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def warmup_cosine(step: int, lr: float, warmup: int, decay_steps: int, min_lr_ratio: float) -> float:
    """The one learning-rate schedule of every training loop: linear warm-up, then a cosine to a floor.

    Args:
        step: the optimizer step about to be taken (0-based).
        lr: the peak rate, reached at step ``warmup - 1`` (at step 0 without a warm-up).
        warmup: warm-up steps (0: none).
        decay_steps: steps from the end of the warm-up to the floor (>= 1 is used); the rate stays at
            the floor after them.
        min_lr_ratio: the floor, as a fraction of ``lr``.

    Returns:
        The rate for this step.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, decay_steps)
    floor = lr * min_lr_ratio
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lr_at(step: int, total: int, warmup: int, cfg: RunConfig) -> float:
    """The learning rate of optimizer step ``step`` of a ``total``-step run (:func:`warmup_cosine`).

    Args:
        step: the step about to be taken (0-based).
        total: the run's number of steps.
        warmup: warm-up steps (>= 1); the rate reaches ``cfg.lr`` at step ``warmup - 1``.
        cfg: the run's ``lr`` and ``min_lr_ratio`` (the floor, as a fraction of ``lr``).

    Returns:
        The rate for this step.
    """
    return warmup_cosine(step, cfg.lr, warmup, total - warmup, cfg.min_lr_ratio)


def param_groups(model: torch.nn.Module, weight_decay: float, *extra: torch.nn.Module,
                 scaled: tuple[str, ...] = ()) -> list[dict]:
    """AdamW parameter groups: weight decay on ≥2-D weights (kernels, matrices); none on norms, biases, embeddings.

    Args:
        model: the model whose trainable parameters are grouped.
        weight_decay: the decay of the decayed groups.
        *extra: further trained modules (a distillation projector, task log-variances); their
            parameters follow the model's in the same groups.
        scaled: state-dict prefixes of the model's parameters that get groups of their own, marked
            ``"scaled": True``, so the loop can give them another learning rate.

    Returns:
        Groups ``{"params", "weight_decay", "scaled"}``; empty scaled groups are left out.
    """
    groups = {(s, d): [] for s in (False, True) for d in (True, False)}  # (scaled?, decay?) -> params
    for module, prefixes in ((model, scaled), *((m, ()) for m in extra)):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            is_embedding = name.split(".")[-1].startswith(("pos_", "missing_", "null_"))
            groups[(name.startswith(prefixes), p.ndim >= 2 and not is_embedding)].append(p)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "scaled": s}
            for (s, decay), params in groups.items() if params or not s]


def resolve_model_config(model: str, geometry: InputGeometry, labels: Labels,
                         overrides: dict | None = None) -> ModelConfig:
    """The architecture a run builds: registered model ``model`` fitted to the data's shapes and labels.

    Args:
        model: a registry name.
        geometry: the input geometry (clip frames, image size, audio samples, output stride).
        labels: the label vocabularies (their sizes fix the heads).
        overrides: the run's ``ModelConfig`` overrides, applied last.

    Raises:
        ModelConfigError: unknown model, unknown field, or a value of the wrong type or range (an
            ``InputError``; the message names the field and what it expects).

    Returns:
        The frozen config (what ``config.json``'s ``model_config`` records).
    """
    fitted = dict(num_events=len(labels.events), num_audio_tags=len(labels.audio_tags),
                  num_objects=len(labels.objects), clip_frames=geometry.clip_frames, height=geometry.height,
                  width=geometry.width, audio_samples=geometry.audio_samples, sample_rate=geometry.sample_rate,
                  output_stride=geometry.output_stride)
    if geometry.sample_rate / 2 < model_config(model).f_max:  # the mel bank stops at the Nyquist frequency
        fitted["f_max"] = geometry.sample_rate / 2
    fitted.update(overrides or {})
    return model_config(model, **fitted)


def read_split_samples(cfg: RunConfig, labels: Labels | None) -> tuple[list[Sample], list[Sample]]:
    """The training and held-out samples of a run (labels not required; nothing decoded yet).

    The held-out split is ``cfg.val_data``, or a deterministic 10% of ``cfg.data``. ``labels`` are
    the vocabularies every label must belong to; None accepts any label (a run that reads none).

    Raises:
        DataError: a manifest is missing or invalid, or uses a label outside ``labels``.
    """
    if labels is None:
        vocab = {"require_labels": False, "events": None, "audio_tags": None, "objects": None}
    else:
        vocab = {"require_labels": False, "events": labels.events, "audio_tags": labels.audio_tags,
                 "objects": labels.objects}
    train_samples = read_manifest(cfg.data, **vocab)
    if cfg.val_data is not None:
        val_samples = read_manifest(cfg.val_data, **vocab)
    else:
        train_samples, val_samples = split_for_validation(train_samples)
    return train_samples, val_samples


def check_finite_loss(loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    """Stop a run whose loss became NaN/Inf (one CPU sync per step; one float is cheap).

    Raises:
        FusionEdgeError: the loss is not finite; the message names the epoch, the step and the peak lr.
    """
    if not torch.isfinite(loss):
        raise FusionEdgeError(f"loss became {float(loss.detach())} at epoch {epoch}, step {step}; "
                              f"lower lr (now {lr}) or check the data")
