"""Fine-tune a compressed model by distillation from the model it was made from.

Pruning channels, masking weights to a 2:4 pattern or simulating INT8 rounding all start from a
trained model and damage it a little; a short fine-tune repairs most of the damage. The best teacher
for that repair is the uncompressed model itself: it has the same outputs and the same label
vocabularies, so every distillation term of :mod:`fusionedge.training.distill` applies unchanged
(its outputs are cached once per training sample and view, ``compute_teacher_cache``). The loss is
``hard`` times the supervised multi-task loss plus the weighted distillation terms. The fused-embedding
term is not used here; the detection-feature term (``det_feature``) is: a pruned detection head has
fewer channels than its teacher's, so a 1x1 adapter from the student's detection features to the
teacher's is trained with the student and then discarded (it is not part of the exported model).

The learning rate warms up linearly and then follows a cosine down to a floor, as in training: a
long repair of a heavily pruned model needs its early large steps and its late small ones, and a
constant rate leaves the last epochs as noisy as the first. Gradients are clipped by norm. With
``validate``, every epoch ends with validation numbers in the history and one progress line on
stderr, so a fine-tune of hours can be followed while it runs.

A compression method keeps its constraint through ``after_step``, called after every optimizer step
(the 2:4 masks re-zero pruned weights there).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from fusionedge.sdk.errors import FusionEdgeError, InputError
from fusionedge.sdk.spec import InputGeometry
from torch import nn

from .dataset import Augment, ClipCache, Labels, iterate_batches, load_clips
from .distill import DistillWeights, TeacherCache, compute_teacher_cache, distill_terms
from .loop import warmup_cosine
from .losses import LossWeights, multitask_loss

__all__ = ["SCHEDULES", "FinetuneConfig", "FinetuneError", "distill_finetune", "finetune_lr", "load_training_clips",
           "teacher_targets"]

#: Learning-rate schedules of the fine-tune.
SCHEDULES = ("cosine", "constant")


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
        distill: distillation weights (``feature`` must be 0: the fused embedding has no adapter here;
            ``det_feature`` > 0 trains a detection-feature adapter and needs a teacher cache made with
            ``teacher_targets(..., det_features=True)``).
        augment: apply the training augmentation (flip, gain, modality dropout).
        seed: the run's seed.
        schedule: ``cosine`` (linear warm-up, then cosine down to ``min_lr_ratio`` of ``lr``) or
            ``constant``.
        warmup: warm-up length as a fraction of all steps (cosine only).
        min_lr_ratio: the cosine's floor as a fraction of ``lr``.
        grad_clip: largest gradient norm (0: no clipping).
    """

    epochs: float = 1.0
    lr: float = 5e-4
    batch_size: int = 32
    distill: DistillWeights = field(default_factory=_default_weights)
    augment: bool = True
    seed: int = 0
    schedule: str = "cosine"
    warmup: float = 0.05
    min_lr_ratio: float = 0.02
    grad_clip: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, (int, float)) and 0 <= self.epochs <= 1000):
            raise InputError(f"fine-tune epochs must be in [0, 1000], got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise InputError(f"fine-tune lr must be in (0, 1), got {self.lr!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise InputError(f"fine-tune batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.distill.feature:
            raise InputError("fine-tune distillation cannot use the fused-embedding feature term (feature): "
                             "it needs a learned projector; set it to 0")
        if self.schedule not in SCHEDULES:
            raise InputError(f"fine-tune schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (isinstance(self.warmup, (int, float)) and 0 <= self.warmup < 1):
            raise InputError(f"fine-tune warmup must be a fraction in [0, 1), got {self.warmup!r}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1):
            raise InputError(f"fine-tune min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not (isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0):
            raise InputError(f"fine-tune grad_clip must be >= 0, got {self.grad_clip!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "distill": asdict(self.distill), "augment": self.augment, "seed": self.seed,
                "schedule": self.schedule, "warmup": self.warmup, "min_lr_ratio": self.min_lr_ratio,
                "grad_clip": self.grad_clip}


def finetune_lr(cfg: FinetuneConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a ``total``-step fine-tune.

    ``constant``: ``cfg.lr`` throughout. ``cosine``: linear warm-up over ``cfg.warmup`` of the steps
    (reaching ``cfg.lr`` at the warm-up's last step), then a cosine from ``cfg.lr`` down to
    ``cfg.min_lr_ratio * cfg.lr`` at the last step.
    """
    if cfg.schedule == "constant":
        return cfg.lr
    warm = int(cfg.warmup * total)
    return warmup_cosine(step, cfg.lr, warm, total - warm - 1, cfg.min_lr_ratio)


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


def teacher_targets(teacher: nn.Module, clips: ClipCache, *, batch_size: int = 32, det_features: bool = False,
                    progress: bool = True) -> TeacherCache:
    """The teacher's outputs for every clip, un-flipped and flipped (see ``compute_teacher_cache``).

    Args:
        teacher: the uncompressed model.
        clips: the training clips.
        batch_size: clips per forward pass.
        det_features: also cache the detection feature maps (for the ``det_feature`` term).
        progress: progress bar on stderr.
    """
    teacher.eval()
    return compute_teacher_cache(teacher, clips, batch_size=batch_size, det_features=det_features,
                                 progress=progress)


def _det_adapter(student: nn.Module, cache: TeacherCache) -> nn.Conv2d:
    """A 1x1 convolution from the student's detection features to the teacher's (not exported)."""
    if cache.det_feature is None:
        raise FinetuneError("the det_feature distillation term needs a teacher cache with detection features "
                            "(teacher_targets(..., det_features=True))")
    shared = getattr(getattr(student, "det_head", None), "shared", None)
    convs = [m for m in shared.modules() if isinstance(m, nn.Conv2d)] if shared is not None else []
    if not convs:
        raise FinetuneError(f"{type(student).__name__} has no detection features for the det_feature term")
    return nn.Conv2d(convs[-1].out_channels, int(cache.det_feature.shape[2]), 1)


def distill_finetune(
    student: nn.Module,
    cache: TeacherCache,
    clips: ClipCache,
    cfg: FinetuneConfig = FinetuneConfig(),
    *,
    params: list[nn.Parameter] | None = None,
    after_step: Callable[[], None] | None = None,
    max_steps: int | None = None,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
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
        validate: called with the student (in eval mode) after every epoch; its numbers go into that
            epoch's history entry as ``val_<name>``.
        desc: progress-bar title.
        progress: progress bar and one line per epoch on stderr.

    Returns:
        Per epoch: ``{"epoch", "steps", "loss", "lr", "seconds"}`` (mean loss, the rate of the epoch's
        last step, wall time of its steps), plus ``val_*`` with ``validate``.

    Raises:
        FinetuneError: the loss became NaN or infinite; ``det_feature`` without cached detection features.
    """
    from tqdm import tqdm

    if len(cache) != len(clips):
        raise FinetuneError(f"teacher cache has {len(cache)} samples, the clips {len(clips)}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in student.parameters() if p.requires_grad] if params is None else list(params)
    weights, dw = LossWeights(), cfg.distill
    tap = adapter = None
    if dw.det_feature > 0:
        from .distill import FeatureTap

        adapter = _det_adapter(student, cache)
        params += list(adapter.parameters())
        tap = FeatureTap(student, "detection")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = max(1, -(-len(clips) // cfg.batch_size))
    total = round(cfg.epochs * steps_per_epoch)
    if max_steps is not None:
        total = min(total, max_steps)
    history: list[dict[str, float]] = []
    term_weights = {k: v for k, v in dw.term_weights().items() if v > 0}
    step, epoch, lr = 0, 0, cfg.lr
    student.train()
    bar = tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, leave=False)
    try:
        while step < total:
            epoch += 1
            losses: list[float] = []
            started = time.perf_counter()
            batches = iterate_batches(clips, cfg.batch_size, shuffle=True, generator=gen,
                                      augment=Augment() if cfg.augment else None)
            for batch in batches:
                if step >= total:
                    break
                lr = finetune_lr(cfg, step, total)
                for group in opt.param_groups:
                    group["lr"] = lr
                out = student(batch["video"], batch["audio"], batch["presence"])
                hard, _ = multitask_loss(out, batch, weights)
                targets = cache.lookup(batch["index"], batch["flipped"])
                adapted = adapter(tap.take()) if tap is not None else None
                terms = distill_terms(out, None, targets, batch["presence"], dw.temperature, adapted)
                loss = dw.hard * hard + sum(w * terms[k] for k, w in term_weights.items())
                if not torch.isfinite(loss):
                    raise FinetuneError(f"{desc}: loss became {loss.item()} at step {step + 1}; lower the lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                if after_step is not None:
                    after_step()
                losses.append(float(loss.detach()))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            record = {"epoch": epoch, "steps": len(losses), "loss": sum(losses) / max(1, len(losses)),
                      "lr": lr, "seconds": round(time.perf_counter() - started, 2)}
            if validate is not None:
                student.eval()
                record.update({f"val_{k}": float(v) for k, v in validate(student).items()})
                student.train()
            history.append(record)
            if progress:
                vals = ", ".join(f"{k[4:]} {v:.4f}" for k, v in record.items() if k.startswith("val_"))
                bar.write(f"{desc}: epoch {epoch} ({step}/{total} steps, {record['seconds']:.0f} s): "
                          f"loss {record['loss']:.4f}, lr {lr:.2e}" + (f"; val {vals}" if vals else ""),
                          file=sys.stderr)
    finally:
        bar.close()
        if tap is not None:
            tap.close()
        student.eval()
    return history
