"""Teacher → student distillation inside ``train()``: ``TrainConfig(teacher=CKPT)``.

There is no second training loop: a distillation run is an ordinary ``train()`` run whose loss
adds, to ``hard`` times the supervised multi-task loss, six terms that pull the student towards a
frozen teacher (a checkpoint of ``fusionedge train``, typically ``fusion_teacher``):

    kd_event    T² · KL(softmax(t/T) ‖ softmax(s/T)) on the event logits       samples with both modalities
    kd_tags     Bernoulli KL(σ(t) ‖ σ(s)) per audio tag (= BCE to σ(t) minus    samples with audio
                the teacher's entropy, so it is 0 at a perfect match)
    kd_heatmap  Σ (σ(s) − σ(t))² over the heatmap / Σ σ(t) (≥ 1)                samples with video
    kd_feature  1 − cos(P·f_s, f_t) between the fused embeddings                samples with both modalities
                (``model.fusion``'s output), P a learned linear projector
    kd_box      L1 between log box sizes and between centre offsets, weighted   samples with video
                per cell by the teacher's objectness max_c σ(t_c)
    kd_det_feature  squared error between A·d_s and d_t, the detection heads'   samples with video
                feature maps (``det_head.shared``'s output), A a learned 1×1
                convolution, weighted per cell by the teacher's objectness

The two objectness-weighted terms are for localization. mAP@0.5 needs boxes, not just peaks: the
supervised size and offset losses train only the exact centre cell of each object, so wherever
the student's peak lands one cell off, its box there was never trained. The teacher's size and
offset maps are dense around every object it sees, and its detection features carry what made
them (fine-grained feature imitation, Wang et al., CVPR 2019, with the teacher's objectness as the
"near an object" mask instead of anchor overlaps). Neither adapter is exported.

**Default weights, and why the event KL is off.** Every term is computed and logged each epoch
(``kd_*`` in the history), but only the terms that help are weighted by default: box,
detection-feature and tags. The event KL reshapes the shared video encoder towards the event early
on and costs detection in proportion to its weight, while the student learns the event as well
without it; the heatmap term costs detection too (the measurements: ``training/EXPERIMENTS.md``).
Turn any term on with its weight (``fusionedge distill --w-event-kl 1 ...``).

The event and feature terms need both modalities: the teacher saw both, so a student missing one
(modality dropout) cannot match it. The heatmap term is a mass-normalized MSE on probabilities, not
the CenterNet focal loss: the focal loss needs exact-1 centre pixels to tell positives from
negatives, and a teacher's soft heatmap has none (it would push every teacher peak towards 0).
Normalizing by the teacher's heatmap mass plays the part of the focal loss's "number of centres".

**Teacher targets are cached.** The teacher (~2.2 GFLOPs) costs ~8 student forwards, so it runs
ONCE per training sample on the un-augmented clip and once on its horizontally flipped clip
(``compute_teacher_cache``), and each batch looks its targets up by (sample index, flipped)
(``TeacherCache.lookup``; ``iterate_batches`` reports ``flipped``). Audio gain and modality dropout
are not replayed for the teacher: it gives the clean clip's answer, which is what the student
should learn to give from a degraded input. Under several processes each rank computes the targets
of its share (``shard_indices`` of the identity order) and the shares are all-gathered, so every
rank holds the whole cache (each epoch's shard is a fresh draw from the whole set).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.spec import InputGeometry

from .checkpoint import CheckpointError, load_checkpoint
from .dataset import ClipCache, Labels
from .distributed import DistContext, shard_indices
from .losses import named_outputs
from .models.multimodal import MultimodalModel

__all__ = ["DistillWeights", "TeacherCache", "FeatureTap", "load_teacher", "compute_teacher_cache",
           "event_kl_loss", "tag_distill_loss", "heatmap_distill_loss", "feature_distill_loss", "objectness",
           "box_distill_loss", "det_feature_distill_loss", "distill_terms"]


@dataclass(frozen=True)
class DistillWeights:
    """Distillation temperature and term weights (dimensionless)."""

    temperature: float = 4.0  # softens the event distributions; the KL is scaled by T²
    event_kl: float = 0.0  # off by default: it costs detection (module docstring)
    tags: float = 0.5
    heatmap: float = 0.0  # off by default (module docstring)
    feature: float = 0.0  # off by default (module docstring)
    box: float = 1.0  # size and offset at the teacher's objects
    det_feature: float = 1.0  # detection-feature imitation (0: not cached, no adapter)
    hard: float = 1.0  # weight of the ordinary supervised loss

    def __post_init__(self) -> None:
        bad = [f"{k}={v}" for k, v in asdict(self).items()
               if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)]
        if not bad and self.temperature <= 0:
            bad.append(f"temperature={self.temperature} (need > 0)")
        if bad:
            raise FusionEdgeError("invalid DistillWeights: " + ", ".join(bad) + " (need finite, >= 0)")

    def term_weights(self) -> dict[str, float]:
        """The weight of each distillation term, by the term names of ``losses.TERM_GROUPS``."""
        return {"kd_event": self.event_kl, "kd_tags": self.tags, "kd_heatmap": self.heatmap,
                "kd_feature": self.feature, "kd_box": self.box, "kd_det_feature": self.det_feature}


# ------------------------------------------------------------------------------------------ losses


def _masked_mean(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_sample * mask).sum() / mask.sum().clamp(min=1.0)


def event_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                  mask: torch.Tensor) -> torch.Tensor:
    """Hinton's distillation loss ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, mean over masked samples.

    Args:
        student_logits, teacher_logits: ``(B, E)``.
        temperature: ``T > 0``.
        mask: ``(B,)`` 1 for samples that count.

    Returns:
        Scalar (0 when the logits are equal).
    """
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # (B,)
    return _masked_mean(kl, mask) * temperature ** 2


def tag_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-tag Bernoulli KL from the teacher's to the student's probabilities, mean over tags and samples.

    Equals the BCE against ``sigmoid(teacher)`` minus the teacher's entropy (same gradient, 0 at a match).

    Args:
        student_logits, teacher_logits: ``(B, A)``.
        mask: ``(B,)`` 1 for samples with audio.

    Returns:
        Scalar.
    """
    p = torch.sigmoid(teacher_logits)
    bce = F.binary_cross_entropy_with_logits(student_logits, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher_logits, p, reduction="none")
    return _masked_mean((bce - entropy).mean(dim=1), mask)


def heatmap_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """Squared error between sigmoid heatmaps, normalized by the teacher's heatmap mass.

    Args:
        student_logits, teacher_logits: ``(B, C, h, w)``.
        mask: ``(B,)`` 1 for samples with video.

    Returns:
        Scalar: ``Σ_masked (σ(s) − σ(t))² / max(1, Σ_masked σ(t))``.
    """
    p_t = torch.sigmoid(teacher_logits)
    w = mask.reshape(-1, 1, 1, 1)
    sq = (torch.sigmoid(student_logits) - p_t) ** 2
    return (sq * w).sum() / (p_t * w).sum().clamp(min=1.0)


def feature_distill_loss(projected: torch.Tensor, teacher_feature: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 − cos`` between the projected student embedding and the teacher's, mean over masked samples.

    Args:
        projected: ``(B, F_t)`` the student's fused embedding through the projector.
        teacher_feature: ``(B, F_t)``.
        mask: ``(B,)`` 1 for samples with both modalities.

    Returns:
        Scalar in [0, 2].
    """
    return _masked_mean(1.0 - F.cosine_similarity(projected, teacher_feature, dim=1, eps=1e-8), mask)


def objectness(teacher_heatmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The teacher's per-cell objectness ``max_c σ(t_c)``, zeroed for samples outside ``mask``.

    Args:
        teacher_heatmap: ``(B, C, h, w)`` heatmap logits.
        mask: ``(B,)`` 1 for samples that count.

    Returns:
        ``(B, h, w)`` in [0, 1].
    """
    return torch.sigmoid(teacher_heatmap).amax(dim=1) * mask.reshape(-1, 1, 1)


def box_distill_loss(student_size: torch.Tensor, student_offset: torch.Tensor, teacher_size: torch.Tensor,
                     teacher_offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Objectness-weighted L1 between log box sizes plus L1 between centre offsets.

    Args:
        student_size, teacher_size: ``(B, 2, h, w)`` box sizes in pixels (positive).
        student_offset, teacher_offset: ``(B, 2, h, w)`` centre offsets in cells.
        weight: ``(B, h, w)`` per-cell weights (``objectness``).

    Returns:
        Scalar: ``Σ w·(mean_ch |log s − log t| + mean_ch |o_s − o_t|) / max(1, Σ w)``.
    """
    log_err = (torch.log(student_size.clamp(min=1e-3)) - torch.log(teacher_size.clamp(min=1e-3))).abs().mean(dim=1)
    off_err = (student_offset - teacher_offset).abs().mean(dim=1)
    return ((log_err + off_err) * weight).sum() / weight.sum().clamp(min=1.0)


def det_feature_distill_loss(adapted: torch.Tensor, teacher_feature: torch.Tensor,
                             weight: torch.Tensor) -> torch.Tensor:
    """Objectness-weighted squared error between detection feature maps, mean over channels.

    Args:
        adapted: ``(B, D_t, h, w)`` the student's detection features through the 1×1 adapter.
        teacher_feature: ``(B, D_t, h, w)`` (any float dtype; compared in float32).
        weight: ``(B, h, w)`` per-cell weights (``objectness``).

    Returns:
        Scalar: ``Σ w·mean_ch (a − t)² / max(1, Σ w)``.
    """
    sq = (adapted - teacher_feature.float()).pow(2).mean(dim=1)  # (B, h, w)
    return (sq * weight).sum() / weight.sum().clamp(min=1.0)


def distill_terms(student_outputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                  projected_feature: torch.Tensor | None,
                  targets: dict[str, torch.Tensor], presence: torch.Tensor, temperature: float,
                  adapted_det_feature: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The (unweighted) distillation terms of one batch.

    Args:
        student_outputs: the student's outputs by name (or the five of ``OUTPUT_NAMES`` as a tuple).
        projected_feature: ``(B, F_t)`` the student's fused embedding through the projector, or
            ``None`` to skip the feature term.
        targets: ``TeacherCache.lookup``'s dict (``event``, ``audio_tags``, ``heatmap``, ``size``,
            ``offset``, ``feature``[, ``det_feature``]).
        presence: ``(B, 2)`` the student batch's presence mask.
        temperature: for the event KL.
        adapted_det_feature: ``(B, D_t, h, w)`` the student's detection features through the
            adapter, or ``None`` to skip the detection-feature term.

    Returns:
        ``{"kd_event", "kd_tags", "kd_heatmap", "kd_box"[, "kd_feature"][, "kd_det_feature"]}``
        scalar tensors, less the terms of the heads the student lacks.
    """
    out = named_outputs(student_outputs)
    video_on, audio_on = presence[:, 0], presence[:, 1]
    both = video_on * audio_on
    terms = {}
    if "event_logits" in out:
        terms["kd_event"] = event_kl_loss(out["event_logits"], targets["event"], temperature, both)
    if "audio_tag_logits" in out:
        terms["kd_tags"] = tag_distill_loss(out["audio_tag_logits"], targets["audio_tags"], audio_on)
    weight = None
    if "det_heatmap" in out:
        weight = objectness(targets["heatmap"], video_on)  # (B, h, w)
        terms["kd_heatmap"] = heatmap_distill_loss(out["det_heatmap"], targets["heatmap"], video_on)
        terms["kd_box"] = box_distill_loss(out["det_size"], out["det_offset"], targets["size"], targets["offset"],
                                           weight)
    if projected_feature is not None:
        terms["kd_feature"] = feature_distill_loss(projected_feature, targets["feature"], both)
    if adapted_det_feature is not None:
        if "det_feature" not in targets or weight is None:
            raise FusionEdgeError("detection-feature distillation needs a teacher cache with det_feature "
                                  "(compute_teacher_cache(..., det_features=True))")
        terms["kd_det_feature"] = det_feature_distill_loss(adapted_det_feature, targets["det_feature"], weight)
    return terms


# ------------------------------------------------------------------------------------------ teacher


class FeatureTap:
    """Keeps the latest output of one of a model's modules through a forward hook.

    Args:
        model: the model; works under DDP, whose forward runs the hook.
        where: ``"fusion"``: ``model.fusion`` (the fused clip embedding ``(B, F)``);
            ``"detection"``: ``model.det_head.shared`` (the detection feature map ``(B, D, h, w)``);
            ``"audio"``: ``model.audio_encoder``'s tokens ``(B, Na, Ca)``.

    Raises:
        FusionEdgeError: unknown ``where``, or a model without that module (no video, no detection head, no audio).
    """

    def __init__(self, model: MultimodalModel, where: str = "fusion") -> None:
        self.output: torch.Tensor | None = None
        if where == "fusion":
            module = model.fusion
            if module is None:
                raise FusionEdgeError("the model has no fused embedding to tap (a task without events)")
        elif where == "detection":
            module = getattr(model.det_head, "shared", None)
            if module is None:
                raise FusionEdgeError(f"{type(model.det_head).__name__} has no detection features to tap "
                                      "(a model without video)")
        elif where == "audio":
            module = model.audio_encoder
            if module is None:
                raise FusionEdgeError("the model has no audio tokens to tap (a model without audio)")
        else:
            raise FusionEdgeError(f"FeatureTap: where must be 'fusion', 'detection' or 'audio', got {where!r}")
        self._tuple = where == "audio"  # the audio encoder returns (tokens, pooled)
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs, output) -> None:
        self.output = output[0] if self._tuple else output

    def take(self) -> torch.Tensor:
        """The tapped output of the last forward pass, then forget it.

        Raises:
            FusionEdgeError: no forward pass since the last ``take``.
        """
        if self.output is None:
            raise FusionEdgeError("no feature captured: run a forward pass first")
        out, self.output = self.output, None
        return out

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()


def load_teacher(path: Path, *, geometry: InputGeometry, labels: Labels,
                 device: torch.device | str = "cpu") -> tuple[MultimodalModel, dict]:
    """Load a frozen teacher and check that it fits the student's data.

    Args:
        path: a checkpoint written by ``fusionedge train``.
        geometry: the student's input geometry.
        labels: the student's label vocabularies.
        device: where the teacher runs.

    Raises:
        CheckpointError: unreadable checkpoint, or a geometry or label set that differs from the
            student's (the message names the differing fields).

    Returns:
        ``(teacher, info)``: the model in eval mode with ``requires_grad`` off, and
        ``load_checkpoint``'s info.
    """
    teacher, info = load_checkpoint(path)
    want, got = geometry.to_dict(), dict(info["geometry"])
    diff = [f"{k} {got.get(k)!r} != {want[k]!r}" for k in want if got.get(k) != want[k]]
    if not teacher.config.matches(geometry):
        diff.append("model input shapes do not match the geometry")
    if diff:
        raise CheckpointError(f"{path}: teacher geometry differs from the student's: " + ", ".join(diff))
    heads = {"events": "an event", "audio_tags": "an audio-tag", "objects": "a detection"}
    for kind, head in heads.items():
        has_t, has_s = bool(info["labels"].get(kind)), bool(getattr(labels, kind))
        if has_t != has_s:
            raise CheckpointError(f"{path}: the {'teacher' if has_t else 'student'} has {head} head the "
                                  f"{'student' if has_t else 'teacher'} lacks; distil between models of the same task")
    ldiff = [k for k, v in labels.to_dict().items() if list(info["labels"].get(k, [])) != v]
    if ldiff:
        raise CheckpointError(f"{path}: teacher labels differ from the student's in: " + ", ".join(ldiff)
                              + "; " + "; ".join(f"{k}: teacher {info['labels'].get(k)} vs student "
                                                 f"{labels.to_dict()[k]}" for k in ldiff))
    teacher.eval().to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, info


@dataclass
class TeacherCache:
    """Teacher outputs per training sample, un-flipped (index 0) and flipped (index 1). CPU tensors."""

    event: torch.Tensor | None  # (N, 2, E) event logits (None: a task without events)
    audio_tags: torch.Tensor | None  # (N, 2, A) audio-tag logits (None: without audio tags)
    heatmap: torch.Tensor | None  # (N, 2, C, h, w) heatmap logits (None: without boxes, as size and offset)
    size: torch.Tensor | None  # (N, 2, 2, h, w) box sizes, pixels
    offset: torch.Tensor | None  # (N, 2, 2, h, w) centre offsets, cells
    feature: torch.Tensor  # (N, 2, F_t) fused embedding
    det_feature: torch.Tensor | None = None  # (N, 2, D_t, h, w) detection features, float16 (half the memory)

    def __len__(self) -> int:
        return self.feature.shape[0]

    def fields(self) -> tuple[str, ...]:
        """The names of the cached tensors (those of the teacher's heads; ``det_feature`` when computed)."""
        names = ("event", "audio_tags", "heatmap", "size", "offset", "feature", "det_feature")
        return tuple(n for n in names if getattr(self, n) is not None)

    def lookup(self, index: torch.Tensor, flipped: torch.Tensor,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The teacher's targets of a batch.

        Args:
            index: ``(B,)`` positions in the cached split (the full training split, not a shard).
            flipped: ``(B,)`` bool, the samples the augmentation mirrored.
            device: where to put the result.

        Returns:
            ``{"event" (B,E), "audio_tags" (B,A), "heatmap" (B,C,h,w), "size" (B,2,h,w),
            "offset" (B,2,h,w), "feature" (B,F_t)[, "det_feature" (B,D_t,h,w)]}``.
        """
        i, f = index.cpu().long(), flipped.cpu().long()
        return {k: getattr(self, k)[i, f].to(device) for k in self.fields()}


@torch.no_grad()
def _teacher_forward(teacher: MultimodalModel, taps: list[FeatureTap], clips: ClipCache, idx: torch.Tensor,
                     flip: bool, device: torch.device) -> list[torch.Tensor]:
    video = clips.video[idx]
    if flip:
        video = video.flip(4)
    presence = torch.stack([torch.ones(len(idx)), clips.has_audio[idx].float()], dim=1)
    audio = clips.audio[idx] * presence[:, 1:]
    out = named_outputs(teacher(video.to(device), audio.to(device), presence.to(device)), teacher.output_names)
    fused = taps[0].take().float().cpu()
    det = [t.take().half().cpu() for t in taps[1:]]  # the detection feature map, float16 to halve the cache
    return [out[n].float().cpu() for n in teacher.output_names] + [fused] + det


def compute_teacher_cache(teacher: MultimodalModel, clips: ClipCache, *, batch_size: int = 16,
                          device: torch.device | str = "cpu", dist: DistContext = DistContext(),
                          det_features: bool = False, progress: bool = True) -> TeacherCache:
    """Run the teacher on every clip, un-flipped and flipped (2 forwards per sample).

    Args:
        teacher: the frozen teacher (``load_teacher``).
        clips: the training split (un-augmented; both modalities where the sample has them).
        batch_size: clips per teacher forward.
        device: where the teacher runs.
        dist: with several processes (process group initialized), each rank computes its share and
            the shares are all-gathered, so every rank returns the whole cache.
        det_features: also keep the detection feature maps (``D_t·h·w`` float16 values per sample
            and view: 245 KB for ``fusion_teacher``), for the detection-feature term.
        progress: tqdm bar on stderr.

    Raises:
        FusionEdgeError: ``det_features`` with a teacher that has no detection head.

    Returns:
        The cache.
    """
    device = torch.device(device)
    n = len(clips)
    mine = shard_indices(torch.arange(n), dist.rank, dist.world_size) if dist.distributed else torch.arange(n)
    taps = [FeatureTap(teacher)]
    chunks: list[list[torch.Tensor]] = []
    try:
        if det_features:
            taps.append(FeatureTap(teacher, "detection"))
        starts = range(0, len(mine), batch_size)
        bar = tqdm(total=2 * len(mine), desc="teacher targets", unit="fwd", disable=not progress, leave=False)
        for s in starts:
            idx = mine[s:s + batch_size]
            plain = _teacher_forward(teacher, taps, clips, idx, False, device)
            flipped = _teacher_forward(teacher, taps, clips, idx, True, device)
            chunks.append([torch.stack([a, b], dim=1) for a, b in zip(plain, flipped)])  # (b, 2, ...)
            bar.update(2 * len(idx))
        bar.close()
    finally:
        for t in taps:
            t.close()
    local = [torch.cat([c[k] for c in chunks]) for k in range(len(chunks[0]))]  # this rank's share
    if dist.distributed:
        import torch.distributed as tdist

        full = []
        comm = device if tdist.get_backend() == "nccl" else torch.device("cpu")
        for t in local:
            t = t.to(comm).contiguous()
            parts = [torch.empty_like(t) for _ in range(dist.world_size)]
            tdist.all_gather(parts, t)
            out = torch.empty((n, *t.shape[1:]), dtype=t.dtype)
            for r, part in enumerate(parts):
                out[shard_indices(torch.arange(n), r, dist.world_size)] = part.cpu()
            full.append(out)
        local = full
    named = dict(zip((*teacher.output_names, "feature"), local))
    det = local[len(teacher.output_names) + 1:]
    return TeacherCache(named.get("event_logits"), named.get("audio_tag_logits"), named.get("det_heatmap"),
                        named.get("det_size"), named.get("det_offset"), named["feature"], det[0] if det else None)
