"""Structured (channel) pruning of the registry's models, with distillation from the unpruned model.

Removing whole channels makes every later runtime faster (ONNX Runtime on a CPU as much as
TensorRT), unlike unstructured zeros. Channels are coupled: a convolution's output channel is also
its BatchNorm's, the next convolution's input channel, and — through a residual add or a
concatenation — other layers' channels. ``torch-pruning``'s dependency graph (DepGraph) finds these
groups by tracing the model and removes each group consistently.

What is pruned: the convolution stacks of the video and audio encoders and the detection head. What
is kept whole: the fusion (attention, whose widths are tied to head counts and learned tokens), the
event and audio-tag heads, the detection outputs (their channels are the contract's), the layers
that produce the token widths the fusion reads, and the audio encoder's last convolution (its
channels are folded with frequency into one axis by a reshape the dependency graph cannot follow).
With ``dense_detection`` the detection head (its stride-4 convolutions and the projection of the
upsampled context) and the stride-4 features it reads keep every channel too: pruned, they cost the
quickstart student 11 points of detection mAP that a short distillation did not recover, while its
events held, so the FLOPs are then taken from the rest of the encoders. With ``keep_narrow`` a convolution of at
most ``2 * round_to`` channels keeps them all: channel counts move in multiples of ``round_to``, so any
cut there removes half of its channels or more (the quickstart student's 16-channel RGB stem became 8
under a uniform 40% cut), for a small share of the FLOPs. ``ratio_scale`` makes named layers lose
channels faster than the rest (torch-pruning's per-layer ratios, scaled at every step), so the FLOPs
can be taken where a layer is wide for what it reads (the 64-channel stride-4 detection head over
32-channel features).

How much is pruned is asked as a fraction of the FLOPs to remove (``flops_ratio``). Pruning is
iterative: the channel ratio grows in small steps (``torch-pruning``'s iterative schedule) until
the FLOPs target of the current round is met; with ``rounds > 1`` the model is fine-tuned by
distillation (:mod:`fusionedge.training.finetune`) between rounds, so later cuts see a repaired
model. Channel importance is one of three criteria:

* ``magnitude``: the L2 norm of each channel's weights over its whole group;
* ``taylor``: ``|w · ∂L/∂w|``, the first-order loss change of removing the channel, with gradients
  of the training loss on a few batches;
* ``bn_scale``: the absolute BatchNorm scale ``|γ|`` of the channel (network slimming).

``global_pruning`` ranks channels across layers (layers whose channels matter less lose more);
without it every prunable layer loses the same fraction.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from fusionedge.sdk.errors import InputError
from torch import nn

from .finetune import FinetuneConfig, distill_finetune, load_training_clips, teacher_targets
from .models.multimodal import MultimodalModel, count_flops, count_params

__all__ = [
    "CRITERIA",
    "PruneConfig",
    "PruneError",
    "conv_widths",
    "protected_layers",
    "prune_checkpoint",
    "prune_model",
]

#: Channel-importance criteria.
CRITERIA = ("magnitude", "taylor", "bn_scale")


class PruneError(InputError):
    """A pruning setting is invalid, the model cannot be pruned that far, or torch-pruning is missing."""


@dataclass(frozen=True)
class PruneConfig:
    """What :func:`prune_model` removes and how.

    Attributes:
        flops_ratio: fraction of the model's FLOPs to remove, in (0, 1); pruning stops at the first step
            that reaches it (channel counts move in multiples of ``round_to``, so it may remove a little more).
        criterion: one of :data:`CRITERIA`.
        global_pruning: rank channels across layers (False: the same fraction in every layer).
        rounds: prune → fine-tune rounds (the FLOPs target is reached in equal steps).
        max_channel_ratio: most channels any one layer may lose.
        round_to: keep channel counts multiples of this (fast kernels want multiples of 4 or 8).
        dense_detection: keep the detection head and the stride-4 features it reads unpruned.
        keep_narrow: keep every channel of convolutions with at most ``2 * round_to`` of them.
        ratio_scale: ``(module-name prefix, factor)`` pairs: the convolutions under that prefix lose
            channels ``factor`` times as fast as the others (e.g. ``(("det_head", 1.5),)``).
        taylor_batches: batches whose loss gradients score channels for ``taylor``.
        finetune: the distillation fine-tune after each round (its epochs are per round).
    """

    flops_ratio: float = 0.4
    criterion: str = "magnitude"
    global_pruning: bool = False
    rounds: int = 1
    max_channel_ratio: float = 0.9
    round_to: int = 4
    dense_detection: bool = False
    keep_narrow: bool = False
    ratio_scale: tuple[tuple[str, float], ...] = ()
    taylor_batches: int = 4
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        r = self.flops_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0:
            raise PruneError(f"prune ratio must be in (0, 1) (the fraction of FLOPs to remove), got {r!r}")
        if self.criterion not in CRITERIA:
            raise PruneError(f"prune criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if not (isinstance(self.rounds, int) and 1 <= self.rounds <= 20):
            raise PruneError(f"prune rounds must be an integer in 1..20, got {self.rounds!r}")
        if not 0.0 < self.max_channel_ratio < 1.0:
            raise PruneError(f"max_channel_ratio must be in (0, 1), got {self.max_channel_ratio!r}")
        if not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise PruneError(f"round_to must be an integer >= 1, got {self.round_to!r}")
        for item in self.ratio_scale:
            ok = (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0]
                  and isinstance(item[1], (int, float)) and not isinstance(item[1], bool) and 0 < item[1] <= 10)
            if not ok:
                raise PruneError(f"ratio_scale entries must be (module prefix, factor in (0, 10]), got {item!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"flops_ratio": self.flops_ratio, "criterion": self.criterion,
                "global_pruning": self.global_pruning, "rounds": self.rounds,
                "max_channel_ratio": self.max_channel_ratio, "round_to": self.round_to,
                "dense_detection": self.dense_detection, "keep_narrow": self.keep_narrow,
                "ratio_scale": [list(x) for x in self.ratio_scale], "finetune": self.finetune.to_dict()}


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as e:
        raise PruneError(f"structured pruning needs torch-pruning ({e}): pip install 'fusionedge[compress]'") from e
    return torch_pruning


def protected_layers(model: MultimodalModel, dense_detection: bool = False,
                     narrow: int = 0) -> list[nn.Module]:
    """The modules whose output channels must not change (see the module docstring).

    Args:
        model: the model to prune.
        dense_detection: also every convolution of the detection head and the last convolution of
            the video encoder's stride-4 stage (the features the head reads).
        narrow: also every convolution with at most this many output channels (0: none).
    """
    keep: list[nn.Module] = [model.fusion, model.event_head, model.audio_tag_head]
    dh = model.det_head
    keep += [m for m in (getattr(dh, n, None) for n in ("heatmap", "size", "offset")) if m is not None]
    if not any(isinstance(m, nn.Conv2d) for m in dh.modules()):  # NoDetectionHead: nothing to prune
        keep.append(dh)
    ve, ae = model.video_encoder, model.audio_encoder
    if dense_detection:
        keep += [m for m in dh.modules() if isinstance(m, nn.Conv2d)]
        if ve is not None:
            keep.append([m for m in ve.s4.modules() if isinstance(m, nn.Conv2d)][-1])
    if ve is not None:
        keep.append(ve.merge[0])  # its channels are the video tokens' width
        if ve.frame_proj is not None:
            keep.append(ve.frame_proj)
    if ae is not None:
        keep.append(ae.proj[0])  # the audio tokens' width
        last_conv = [m for m in ae.cnn.modules() if isinstance(m, nn.Conv2d)][-1]
        keep.append(last_conv)  # folded with frequency by a reshape
    if narrow > 0:
        keep += [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)
                 and m.out_channels <= narrow and not any(m is k for k in keep)]
    return keep


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, by module name (what pruning changed)."""
    return {n: int(m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def _layer_flops(model: MultimodalModel) -> int:
    """FLOPs of the convolutions and linear layers at batch 1 (2 per multiply-add), from forward hooks.

    Cheap enough to call after every pruning step; the rest of ``count_flops`` (attention products)
    lies in the protected fusion and does not change.
    """
    total = 0

    def hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Linear):
            total += 2 * out.numel() * m.in_features
        else:
            k = int(torch.tensor(m.kernel_size).prod())
            total += 2 * out.numel() * (m.in_channels // m.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            model(*model.example_inputs(1))
    finally:
        for h in handles:
            h.remove()
    return total


def _ratio_dict(model: nn.Module, cfg: PruneConfig) -> dict[nn.Module, float]:
    """torch-pruning's per-layer channel ratios at its last step for ``cfg.ratio_scale`` (each step scales them).

    Raises:
        PruneError: a prefix names no convolution of the model.
    """
    ratios: dict[nn.Module, float] = {}
    for prefix, factor in cfg.ratio_scale:
        hit = [m for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)
               and (n == prefix or n.startswith(prefix + "."))]
        if not hit:
            raise PruneError(f"ratio_scale: {prefix!r} names no convolution of the model")
        for m in hit:
            ratios[m] = cfg.max_channel_ratio * factor  # the schedule scales it; max_pruning_ratio caps it
    return ratios


def _importance(tp: Any, criterion: str) -> Any:
    if criterion == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.BNScaleImportance()


def _taylor_gradients(model: nn.Module, clips: Any, batches: int, seed: int) -> None:
    """Accumulate the training loss's gradients on a few batches (for the Taylor criterion)."""
    from .dataset import iterate_batches
    from .losses import LossWeights, multitask_loss

    model.eval()  # BatchNorm statistics stay those of the trained model
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(seed)
    for i, batch in enumerate(iterate_batches(clips, 16, shuffle=True, generator=gen)):
        if i >= batches:
            break
        loss, _ = multitask_loss(model(batch["video"], batch["audio"], batch["presence"]), batch, LossWeights())
        loss.backward()


def prune_model(
    model: MultimodalModel,
    cfg: PruneConfig,
    *,
    clips: Any = None,
    teacher_cache: Any = None,
    validate: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prune ``model``'s channels in place until ``cfg.flops_ratio`` of its FLOPs are gone.

    Args:
        model: a registry model (``MultimodalModel``), trained.
        cfg: see :class:`PruneConfig`.
        clips: training clips; needed for ``taylor`` and for fine-tuning between rounds.
        teacher_cache: the unpruned model's outputs on ``clips``; with ``clips``, each round is
            followed by a distillation fine-tune of ``cfg.finetune.epochs``.
        validate: ``model -> metrics``, run after every fine-tune epoch (see ``distill_finetune``).
        progress: progress bars on stderr.

    Returns:
        ``{"config", "flops_before", "flops_after", "params_before", "params_after", "widths", "rounds"}``
        (``rounds``: per round the FLOPs reached and the fine-tune history).

    Raises:
        PruneError: torch-pruning is missing, ``taylor`` without clips, or the target cannot be
            reached within ``max_channel_ratio``.
    """
    tp = _tp()
    if cfg.criterion == "taylor" and clips is None:
        raise PruneError("the taylor criterion needs training clips (its gradients come from the loss)")
    model.eval()
    flops0, params0 = count_flops(model), count_params(model)
    fixed = flops0 - _layer_flops(model)  # what pruning cannot change (attention products)
    example = model.example_inputs(2)
    steps = 60  # channel-ratio increments of max_channel_ratio / 60
    with warnings.catch_warnings():  # it notes the fusion's learned tokens, which are protected anyway
        warnings.simplefilter("ignore", UserWarning)
        pruner = tp.pruner.MetaPruner(
            model, example, importance=_importance(tp, cfg.criterion), global_pruning=cfg.global_pruning,
            pruning_ratio=cfg.max_channel_ratio, iterative_steps=steps, round_to=cfg.round_to,
            pruning_ratio_dict=_ratio_dict(model, cfg) or None, max_pruning_ratio=cfg.max_channel_ratio,
            ignored_layers=protected_layers(model, cfg.dense_detection, 2 * cfg.round_to if cfg.keep_narrow else 0),
        )
    rounds: list[dict[str, Any]] = []
    done = 0
    for r in range(1, cfg.rounds + 1):
        target = flops0 * (1.0 - cfg.flops_ratio * r / cfg.rounds)
        flops = fixed + _layer_flops(model)
        while flops > target:
            if done >= steps:
                raise PruneError(
                    f"cannot remove {cfg.flops_ratio:.0%} of the FLOPs with at most {cfg.max_channel_ratio:.0%} "
                    f"of any layer's channels (reached {1 - flops / flops0:.1%}); ask for a smaller ratio")
            if cfg.criterion == "taylor":
                _taylor_gradients(model, clips, cfg.taylor_batches, seed=cfg.finetune.seed + done)
            pruner.step()
            done += 1
            flops = fixed + _layer_flops(model)
        model.zero_grad(set_to_none=True)
        record: dict[str, Any] = {"round": r, "flops": flops, "flops_removed": round(1 - flops / flops0, 4)}
        if clips is not None and teacher_cache is not None and cfg.finetune.epochs > 0:
            record["finetune"] = distill_finetune(model, teacher_cache, clips, cfg.finetune, validate=validate,
                                                  desc=f"prune round {r}/{cfg.rounds}", progress=progress)
        rounds.append(record)
    model.eval()
    return {"config": cfg.to_dict(), "flops_before": flops0, "flops_after": count_flops(model),
            "params_before": params0, "params_after": count_params(model), "widths": conv_widths(model),
            "rounds": rounds}


def prune_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    cfg: PruneConfig = PruneConfig(),
    *,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[MultimodalModel, dict]:
    """Load a checkpoint, prune it with distillation fine-tuning from its unpruned self.

    Args:
        checkpoint: a training checkpoint.
        data: the labelled training data-set manifest (fine-tuning and Taylor scores).
        cfg: see :class:`PruneConfig`.
        limit: use only the first ``limit`` training samples.
        progress: progress bars on stderr.

    Returns:
        ``(pruned model in eval mode, info)``: ``info`` is the checkpoint's with ``extra.prune`` holding
        :func:`prune_model`'s report; pass both to ``fusionedge.export.pipeline.export_model``.

    Raises:
        CheckpointError: the checkpoint is invalid. DataError / MediaError: the data. PruneError: see
        :func:`prune_model`. FinetuneError: fine-tuning diverged.
    """
    from .checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint)
    clips = load_training_clips(info, data, limit=limit, progress=progress)
    cache = teacher_targets(copy.deepcopy(model), clips, batch_size=cfg.finetune.batch_size,
                            det_features=cfg.finetune.distill.det_feature > 0, progress=progress)
    report = prune_model(model, cfg, clips=clips, teacher_cache=cache, progress=progress)
    info = dict(info)
    info["extra"] = {**dict(info.get("extra") or {}), "prune": report}
    return model, info
