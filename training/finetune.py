"""Fine-tune a compressed model by distillation from the model it was made from.

Pruning channels, masking weights to a 2:4 pattern or simulating INT8 rounding all start from a
trained model and damage it a little; a short fine-tune repairs most of the damage. The best teacher
for that repair is the uncompressed model itself: it has the same outputs and the same label
vocabularies, so every distillation term of :mod:`fusionedge.training.distill` applies unchanged
(its outputs are cached once per training sample and view, ``compute_teacher_cache``). The loss is
``hard`` times the supervised multi-task loss plus the weighted distillation terms; the feature
terms, which need a learned projector, are not used here.

A compression method keeps its constraint through ``after_step``, called after every optimizer step
(the 2:4 masks re-zero pruned weights there).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from fusionedge.sdk.errors import FusionEdgeError, InputError
from fusionedge.sdk.spec import InputGeometry
from torch import nn

from .dataset import Augment, ClipCache, Labels, iterate_batches, load_clips
from .distill import DistillWeights, TeacherCache, compute_teacher_cache, distill_terms
from .losses import LossWeights, multitask_loss

__all__ = ["FinetuneConfig", "FinetuneError", "distill_finetune", "load_training_clips", "teacher_targets"]


def _default_weights() -> DistillWeights:
    # self-distillation: the teacher has the student's own heads, so its event and heatmap answers
    # are targets the student can match exactly (unlike a wider teacher's, see distill.py)
    return DistillWeights(event_kl=1.0, heatmap=1.0, det_feature=0.0)


@dataclass(frozen=True)
class FinetuneConfig:
    """How long and how a compressed model is fine-tuned.

    Attributes:
        epochs: passes over the training clips (0: no fine-tuning).
        lr: AdamW learning rate (small: this repairs a trained model).
        batch_size: samples per step.
        distill: distillation weights (``feature`` and ``det_feature`` must be 0: no projector here).
        augment: apply the training augmentation (flip, gain, modality dropout).
        seed: the run's seed.
    """

    epochs: float = 1.0
    lr: float = 5e-4
    batch_size: int = 32
    distill: DistillWeights = field(default_factory=_default_weights)
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, (int, float)) and 0 <= self.epochs <= 1000):
            raise InputError(f"fine-tune epochs must be in [0, 1000], got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise InputError(f"fine-tune lr must be in (0, 1), got {self.lr!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise InputError(f"fine-tune batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.distill.feature or self.distill.det_feature:
            raise InputError("fine-tune distillation cannot use the feature terms (feature, det_feature): "
                             "they need a learned projector; set them to 0")

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "distill": asdict(self.distill), "augment": self.augment, "seed": self.seed}


class FinetuneError(FusionEdgeError):
    """Fine-tuning a compressed model diverged (its loss became NaN or infinite)."""


def load_training_clips(info: dict, data: str | os.PathLike, *, limit: int | None = None,
                        progress: bool = True) -> ClipCache:
    """Decode a labelled data-set manifest for the model a checkpoint describes.

    Args:
        info: ``load_checkpoint``'s info (geometry and labels).
        data: a ``manifest.jsonl`` or its folder.
        limit: use only the first ``limit`` samples.
        progress: progress bar on stderr.

    Returns:
        The decoded clips.

    Raises:
        DataError: the manifest is invalid or empty. MediaError: a file cannot be decoded.
    """
    from fusionedge.sdk.datamanifest import read_manifest

    geometry = InputGeometry.from_dict(dict(info["geometry"]))
    labels = Labels(**{k: tuple(v) for k, v in info["labels"].items()})
    samples = read_manifest(data, require_labels=True, events=labels.events, audio_tags=labels.audio_tags,
                            objects=labels.objects)[:limit]
    return load_clips(samples, geometry, labels, workers=2, progress=progress, desc="decode fine-tune")


def teacher_targets(teacher: nn.Module, clips: ClipCache, *, batch_size: int = 32,
                    progress: bool = True) -> TeacherCache:
    """The teacher's outputs for every clip, un-flipped and flipped (see ``compute_teacher_cache``)."""
    teacher.eval()
    return compute_teacher_cache(teacher, clips, batch_size=batch_size, det_features=False, progress=progress)


def distill_finetune(
    student: nn.Module,
    cache: TeacherCache,
    clips: ClipCache,
    cfg: FinetuneConfig = FinetuneConfig(),
    *,
    params: list[nn.Parameter] | None = None,
    after_step: Callable[[], None] | None = None,
    max_steps: int | None = None,
    desc: str = "fine-tune",
    progress: bool = True,
) -> list[dict[str, float]]:
    """Fine-tune ``student`` in place towards the cached teacher outputs and the labels.

    Args:
        student: the compressed model (left in eval mode).
        cache: the teacher's outputs on ``clips`` (:func:`teacher_targets`).
        clips: the training clips.
        cfg: schedule and weights.
        params: the parameters to train (default: every parameter that requires a gradient).
        after_step: called after each optimizer step (e.g. to re-apply sparsity masks).
        max_steps: stop after this many steps (e.g. a short repair between pruning steps).
        desc: progress-bar title.
        progress: progress bar on stderr.

    Returns:
        Per epoch: ``{"epoch", "steps", "loss"}`` (mean loss).

    Raises:
        FinetuneError: the loss became NaN or infinite.
    """
    from tqdm import tqdm

    if len(cache) != len(clips):
        raise FinetuneError(f"teacher cache has {len(cache)} samples, the clips {len(clips)}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in student.parameters() if p.requires_grad] if params is None else params
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = max(1, -(-len(clips) // cfg.batch_size))
    total = round(cfg.epochs * steps_per_epoch)
    if max_steps is not None:
        total = min(total, max_steps)
    history: list[dict[str, float]] = []
    weights, dw = LossWeights(), cfg.distill
    term_weights = {k: v for k, v in dw.term_weights().items() if v > 0}
    step, epoch = 0, 0
    student.train()
    bar = tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, leave=False)
    try:
        while step < total:
            epoch += 1
            losses = []
            batches = iterate_batches(clips, cfg.batch_size, shuffle=True, generator=gen,
                                      augment=Augment() if cfg.augment else None)
            for batch in batches:
                if step >= total:
                    break
                out = student(batch["video"], batch["audio"], batch["presence"])
                hard, _ = multitask_loss(out, batch, weights)
                targets = cache.lookup(batch["index"], batch["flipped"])
                terms = distill_terms(out, None, targets, batch["presence"], dw.temperature)
                loss = dw.hard * hard + sum(w * terms[k] for k, w in term_weights.items())
                if not torch.isfinite(loss):
                    raise FinetuneError(f"{desc}: loss became {loss.item()} at step {step + 1}; lower the lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
                losses.append(float(loss.detach()))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            history.append({"epoch": epoch, "steps": len(losses),
                            "loss": sum(losses) / max(1, len(losses))})
    finally:
        bar.close()
        student.eval()
    return history
