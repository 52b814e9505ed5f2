"""Train a FusionEdge model on a data-set manifest: ``train(TrainConfig(data=..., out=...))``.

One loop, top to bottom: decode the data once (``dataset.load_clips``), build the model from the
registry, then per epoch — set the learning rate (warm-up, cosine), forward, multi-task loss,
backward, clip, step — validate, and write the run folder:

    out/best.pt        checkpoint of the epoch with the best validation event accuracy
    out/last.pt        checkpoint of the last epoch (with the optimizer state)
    out/metrics.json   per-epoch history and the best epoch
    out/config.json    the TrainConfig and the model config
    out/curves.png     loss and metric curves per epoch (``run_report.py``; skipped with a warning
    out/summary.md     when plotting fails) and a Markdown summary of the run

**Distillation** (``teacher=CKPT``, see ``distill.py``) and the **multi-task strategies**
(``task_weighting``, ``task_schedule``, see ``losses.py``) are options of this one loop. The learned
task log-variances and the distillation projector are trained by the same optimizer and saved in
``last.pt`` (``training_state["aux"]``); ``best.pt`` holds the student alone. ``init`` takes a full
checkpoint of the same architecture, or a self-supervised pretraining checkpoint
(``extra["kind"] == "pretrain"``, ``pretrain.load_pretrained_encoders``: the encoders, and a fusion
that pretraining trained). ``frozen_encoder_epochs`` holds the encoders still while the rest warms
up (linear probe, then fine-tune: Kumar et al. 2022) and ``encoder_lr_scale`` slows them after.
``audio_variants`` renders each generator clip's sound again that many times (same event and tags;
``audio_resynth.py``), and every draw of the clip hears one of its sounds. ``siren_swap`` hears a
clip's scene without its siren or with another clip's, its event and siren tag following the sound
(``siren_swap.py``); ``clutter_swap`` also gives such a draw another clip's untagged sound, or none,
in place of its own. ``sound_naming`` trains a head beside the model that names each clip's untagged
sound (``sound_naming.py``); it stays out of ``best.pt``.

**Labels.** The events, audio tags and object classes are the task's own (``task_labels.py``): a
``labels`` file, a ``labels.json`` beside the manifest, or the labels the training manifest uses;
the generator's when all of them are its. The heads are sized to them, the checkpoints and
``config.json`` record them, and ``metrics.json`` holds where they came from and the count of each
per split. A held-out label outside them refuses the run before anything is written.

**Task shape.** A vocabulary that is empty gives a model without that head (no output, loss term or
metric; the best epoch is chosen by event accuracy, else tag mAP, else detection mAP). The input
geometry is ``cfg.geometry`` (checked before anything is read) and the modalities the model's, or
the one the training manifest has when it has only video or only audio.

Validation uses a held-out manifest (``val_data``) or a deterministic 10% of the training manifest.
Seeds are fixed (python, numpy, torch); ``torch.set_num_threads`` is left to the caller. Everything
that can be refused (options, model overrides, the ``init`` / ``teacher`` / ``resume`` checkpoints)
is checked before the data is decoded, and the run folder is created only once the run is set up:
a refused run leaves nothing behind.

**Exact resume.** ``last.pt`` also holds the optimizer, the step, the history, the best epoch so
far and every random state (python, numpy, torch, the data generator). ``TrainConfig(resume=...)``
continues from it: training E epochs straight and training k epochs (``stop_after_epoch=k``, or a
kill after epoch k), then resuming to E give bit-identical weights on the CPU. The options that
shape the trajectory (epochs, batch size, lr, seed, model, ...) must be those of the first run
(``resume.py``).

**Several processes.** ``train(cfg, dist=DistContext(rank, world_size, local_rank))`` inside an
initialized process group (see ``distributed.py``; ``fusionedge train`` under ``torchrun`` does it)
wraps the model in ``DistributedDataParallel`` and gives each rank ``perm[rank::world]`` of each
epoch's permutation: ``batch_size`` is per process. Only rank 0 validates and writes the run
folder; the others wait. On CUDA the forward pass runs under autocast (bf16, or fp16 with a
``GradScaler`` where bf16 is not supported); on the CPU in float32.

The module is past 600 lines (about 780) because it is the loop and its phases, one helper each; the
building blocks it shares with pretraining are in ``loop.py``, ``run_config.py`` and ``resume.py``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from tqdm import tqdm

from fusionedge.sdk.datamanifest import Sample, read_manifest
from fusionedge.sdk.errors import DataError, FusionEdgeError, InputError
from fusionedge.sdk.fileio import json_safe, write_json_atomic

from .audio_resynth import audio_variants
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .dataset import Augment, ClipCache, Labels, iterate_batches, load_clips
from .distill import (
    DistillWeights,
    FeatureTap,
    TeacherCache,
    compute_teacher_cache,
    distill_terms,
    load_teacher,
)
from .distributed import DistContext, parameter_digest, resolve_device, shard_indices, take_clips
from .evaluation import evaluate_model
from .loop import (
    ENCODER_PREFIXES,
    check_finite_loss,
    lr_at,
    param_groups,
    read_split_samples,
    resolve_model_config,
    seed_everything,
)
from .losses import (
    TASK_SCHEDULES,
    TASK_WEIGHTINGS,
    LossWeights,
    UncertaintyWeighting,
    combine_task_losses,
    multitask_terms,
    named_outputs,
    output_groups,
    scheduled_groups,
)
from .models.multimodal import ModelConfig, MultimodalModel, count_flops, count_params
from .models.registry import model_config
from .resume import resume_state, rng_state, set_rng_state
from .run_config import RunConfig
from .siren_swap import SIREN_TAG, siren_swap_parts
from .sound_naming import sound_naming_head, sound_naming_loss, sound_names_of
from .task_labels import TaskLabels, format_label_counts, label_counts, resolve_labels

__all__ = ["TrainConfig", "train", "evaluate_model", "resolve_model_config", "ENCODER_PREFIXES"]


def _is_probability(value: object) -> bool:
    """A real number in 0..1 (a bool is not one)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value <= 1.0


@dataclass
class TrainConfig(RunConfig):
    """One training run. Defaults are the quickstart's (``fusion_student``, ~2,000 synthetic clips, 2 CPU cores).

    The data, model, optimisation and housekeeping options are ``RunConfig``'s (``epochs`` = 10 is
    ~175 s of training for 2,000 clips on 2 cores with the student); these are supervised training's own.
    """

    init: Path | None = None  # checkpoint to initialize the weights from (same architecture, or a pretraining)
    encoder_lr_scale: float = 1.0  # the video and audio encoders' learning rate, as a fraction of lr
    frozen_encoder_epochs: int = 0  # first epochs with the encoders' learning rate at 0 (heads warm up first)
    resume: Path | None = None  # a run's last.pt: continue that run exactly (same options)
    stop_after_epoch: int | None = None  # end after this epoch, keeping the schedule of `epochs` (resumable)
    amp: bool = True  # mixed precision on CUDA (bf16, else fp16 + GradScaler); no effect on the CPU
    loss_weights: LossWeights = field(default_factory=LossWeights)
    modality_dropout: float = 0.1  # per-sample probability of dropping video or audio (never both)
    teacher: Path | None = None  # a `fusionedge train` checkpoint to distill from (see distill.py)
    distill: DistillWeights = field(default_factory=DistillWeights)  # used only with a teacher
    task_weighting: str = "fixed"  # "fixed": loss_weights; "uncertainty": learned per-group log-variances
    task_schedule: str = "joint"  # "joint": all task groups every step; "alternating": one group per step
    report: bool = True  # write curves.png and summary.md at the end (rank 0)
    labels: Path | None = None  # labels file; None: labels.json beside the manifest, else the data's (task_labels.py)
    # per-sample probability of adding the sound of a training clip without a siren tag (dataset.Augment):
    # needs a "siren" audio tag, and no teacher (its outputs are cached for the clips as they are)
    background_mix: float = 0.0
    # each clip's sound resampled by a factor log-uniform in [1/(1+w), 1+w], pitch and rates together
    # (audio_warp.py): no teacher (its outputs are cached for the clips as they are)
    audio_warp: float = 0.0
    # more renderings of each generator clip's sound (same event and tags), one heard per draw
    # (audio_resynth.py): no teacher (its outputs are cached for the clips' own sounds)
    audio_variants: int = 0
    # per-sample probability of hearing the clip's scene without its siren or with another clip's, the
    # event and siren tag following (siren_swap.py): the generator's rows only, no teacher
    siren_swap: float = 0.0
    # per swapped sample, the probability of hearing another clip's untagged sound (a tone, a ringtone,
    # music ...) or none in place of its own, no label following (siren_swap.py); needs siren_swap
    clutter_swap: float = 0.0
    # weight of an auxiliary loss naming each generator row's untagged sound from the audio tokens
    # (sound_naming.py): a head that trains with the model and is not exported; the generator's rows only
    sound_naming: float = 0.0

    KEY_ORDER: ClassVar[tuple[str, ...]] = (
        "data", "out", "val_data", "model", "model_overrides", "init", "encoder_lr_scale", "frozen_encoder_epochs",
        "resume", "stop_after_epoch", "device", "amp", "geometry", "epochs", "batch_size", "lr", "min_lr_ratio",
        "warmup_epochs", "weight_decay", "grad_clip", "seed", "loss_weights", "modality_dropout", "hflip",
        "audio_gain_db", "num_workers", "max_train_samples", "max_val_samples", "teacher", "distill",
        "task_weighting", "task_schedule", "report", "progress", "labels")
    PATH_FIELDS: ClassVar[tuple[str, ...]] = (*RunConfig.PATH_FIELDS, "init", "resume", "teacher", "labels")

    def _convert(self) -> None:
        super()._convert()
        if isinstance(self.distill, dict):
            self.distill = DistillWeights(**self.distill)
        if isinstance(self.loss_weights, dict):
            self.loss_weights = LossWeights(**self.loss_weights)

    def _problems(self) -> list[str]:
        bad = super()._problems()
        if not (0.0 <= self.encoder_lr_scale and math.isfinite(self.encoder_lr_scale)):
            bad.append(f"encoder_lr_scale={self.encoder_lr_scale} (need >= 0)")
        if not 0 <= self.frozen_encoder_epochs <= self.epochs:
            bad.append(f"frozen_encoder_epochs={self.frozen_encoder_epochs} (need 0..epochs)")
        if not 0.0 <= self.modality_dropout <= 1.0:
            bad.append(f"modality_dropout={self.modality_dropout} (need 0..1)")
        if self.stop_after_epoch is not None and not 1 <= self.stop_after_epoch <= self.epochs:
            bad.append(f"stop_after_epoch={self.stop_after_epoch} (need 1..epochs or None)")
        if self.init is not None and self.resume is not None:
            bad.append("init and resume together (resume restores the weights)")
        if self.task_weighting not in TASK_WEIGHTINGS:
            bad.append(f"task_weighting={self.task_weighting!r} (need one of {', '.join(TASK_WEIGHTINGS)})")
        if not 0.0 <= self.background_mix <= 1.0:
            bad.append(f"background_mix={self.background_mix} (need 0..1)")
        if self.background_mix > 0 and self.teacher is not None:
            bad.append("background_mix with a teacher (its outputs are cached for the unmixed clips)")
        if not 0.0 <= self.audio_warp < 0.5:
            bad.append(f"audio_warp={self.audio_warp} (need 0..0.5)")
        if self.audio_warp > 0 and self.teacher is not None:
            bad.append("audio_warp with a teacher (its outputs are cached for the unwarped clips)")
        if isinstance(self.audio_variants, bool) or not isinstance(self.audio_variants, int) \
                or self.audio_variants < 0:
            bad.append(f"audio_variants={self.audio_variants!r} (need an integer >= 0)")
        elif self.audio_variants > 0 and self.teacher is not None:
            bad.append("audio_variants with a teacher (its outputs are cached for the clips' own sounds)")
        if not _is_probability(self.siren_swap):
            bad.append(f"siren_swap={self.siren_swap!r} (need a number in 0..1)")
        elif self.siren_swap > 0 and self.teacher is not None:
            bad.append("siren_swap with a teacher (its outputs are cached for the clips as they are)")
        if not _is_probability(self.clutter_swap):
            bad.append(f"clutter_swap={self.clutter_swap!r} (need a number in 0..1)")
        elif self.clutter_swap > 0 and not self.siren_swap:
            bad.append(f"clutter_swap={self.clutter_swap!r} without siren_swap (it redraws the untagged sound of "
                       "the draws a siren swap hears)")
        if isinstance(self.sound_naming, bool) or not isinstance(self.sound_naming, (int, float)) \
                or not (0.0 <= self.sound_naming and math.isfinite(self.sound_naming)):
            bad.append(f"sound_naming={self.sound_naming!r} (need a loss weight >= 0)")
        if self.task_schedule not in TASK_SCHEDULES:
            bad.append(f"task_schedule={self.task_schedule!r} (need one of {', '.join(TASK_SCHEDULES)})")
        return bad

    def to_dict(self) -> dict:
        """The options as JSON-ready data, as ``config.json`` and the checkpoints record them."""
        d = super().to_dict()
        d.update(loss_weights=asdict(self.loss_weights), distill=asdict(self.distill))
        return d


def _load_splits(cfg: TrainConfig, labels: Labels) -> tuple[ClipCache, ClipCache, list[Sample]]:
    """The decoded training and validation splits, and the training rows."""
    train_samples, val_samples = read_split_samples(cfg, labels)
    train_samples = train_samples[: cfg.max_train_samples]
    val_samples = val_samples[: cfg.max_val_samples]
    if not train_samples or not val_samples:
        raise DataError(f"{cfg.data}: need at least one training and one validation sample "
                        f"(got {len(train_samples)} and {len(val_samples)})")
    kw = dict(workers=cfg.num_workers, progress=cfg.progress)
    return (load_clips(train_samples, cfg.geometry, labels, desc="decode train", **kw),
            load_clips(val_samples, cfg.geometry, labels, desc="decode val", **kw),
            train_samples)


#: The metric that selects the best epoch, by the first head the task has.
_SELECTION_METRICS = ("event_accuracy", "audio_tag_map", "detection_map50")


def _better(a: dict, b: dict | None) -> bool:
    """Model selection: the higher headline metric (event accuracy; a task without events: tag mAP,
    else detection mAP), then the lower validation loss."""
    if b is None:
        return True
    key = next((k for k in _SELECTION_METRICS if k in a), None)

    def score(m: dict) -> float:
        v = m.get(key, float("nan")) if key is not None else float("nan")
        return v if math.isfinite(v) else -1.0

    return (score(a), -a["loss"]) > (score(b), -b["loss"])


def _term_weights(cfg: TrainConfig) -> dict[str, float]:
    """The fixed weight of every loss term of this run (supervised terms scaled by ``distill.hard``)."""
    w = cfg.loss_weights
    hard = cfg.distill.hard if cfg.teacher is not None else 1.0
    weights = {"event": w.event, "audio_tags": w.audio_tags, "heatmap": w.heatmap, "size": w.size, "offset": w.offset}
    if hard != 1.0:
        weights = {k: hard * v for k, v in weights.items()}
    if cfg.teacher is not None:
        weights.update(cfg.distill.term_weights())
    if cfg.sound_naming > 0:
        weights["sound_naming"] = cfg.sound_naming
    return weights


def _report(cfg: TrainConfig) -> None:
    """Write curves.png and summary.md; a failure warns and keeps the run (metrics.json is written)."""
    if not cfg.report:
        return
    try:
        from .run_report import write_run_report

        write_run_report(cfg.out)
    except Exception as e:  # plotting is a convenience: never lose a finished run to it
        warnings.warn(f"{cfg.out}: could not write the run report ({type(e).__name__}: {e})", stacklevel=2)


def _initialize(model: MultimodalModel, cfg: TrainConfig) -> dict:
    """Load ``cfg.init`` into ``model``: a whole checkpoint, or the encoders of a pretraining checkpoint."""
    state = read_checkpoint(cfg.init)
    if state.get("extra", {}).get("kind") == "pretrain":
        from .pretrain import load_pretrained_encoders

        loaded = load_pretrained_encoders(model, cfg.init)
        return {"path": str(cfg.init), "kind": "pretrain", "loaded_keys": len(loaded)}
    init_model, _ = load_checkpoint(cfg.init)
    try:
        model.load_state_dict(init_model.state_dict())
    except RuntimeError as e:
        raise CheckpointError(f"{cfg.init}: weights do not fit {cfg.model!r} as configured: {e}") from e
    return {"path": str(cfg.init), "kind": "checkpoint", "loaded_keys": len(init_model.state_dict())}


# ----------------------------------------------------------------------------- the phases of a run


@dataclass
class _Teacher:
    """What distillation needs from the teacher once it is gone: its outputs per sample and its widths."""

    cache: TeacherCache
    dim: int  # the teacher's fused width (the projector's output)
    det_dim: int  # the teacher's detection feature width (the adapter's output)
    record: dict  # what the summary reports under "distillation"


@dataclass
class _Run:
    """Everything the epoch loop reads and updates; built phase by phase in ``train``."""

    cfg: TrainConfig
    dist: DistContext
    device: torch.device
    gen: torch.Generator
    task: TaskLabels
    mcfg: ModelConfig
    t_start: float
    train_clips: ClipCache | None = None
    val_clips: ClipCache | None = None
    t_data: float = 0.0
    teacher: _Teacher | None = None
    model: MultimodalModel | None = None
    net: torch.nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
    # projector, det_adapter (distillation), uncertainty, sound_naming
    aux: dict[str, torch.nn.Module] = field(default_factory=dict)
    taps: dict[str, FeatureTap] = field(default_factory=dict)  # "fusion", "detection" (distillation), "audio"
    init_info: dict | None = None
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    amp_dtype: torch.dtype | None = None  # None: float32
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    label_counts: dict = field(default_factory=dict)  # {"train"|"val": {kind: {label: count}}}

    @property
    def labels(self) -> Labels:
        return self.task.labels

    @property
    def show(self) -> bool:
        return self.cfg.progress and self.dist.is_main

    @property
    def aux_params(self) -> list[torch.nn.Parameter]:
        return [p for m in self.aux.values() for p in m.parameters()]

    def steps_per_epoch(self) -> int:
        shard_size = -(-len(self.train_clips) // self.dist.world_size)
        return math.ceil(shard_size / self.cfg.batch_size)


def _check_inputs(cfg: TrainConfig, dist: DistContext, labels: Labels) -> tuple[ModelConfig, dict | None]:
    """Everything that can be refused without decoding data: the model and the three checkpoints.

    Returns:
        ``(model config, the resume checkpoint or None)``.
    """
    import torch.distributed as tdist

    if dist.distributed and not tdist.is_initialized():
        raise FusionEdgeError(f"world_size={dist.world_size} needs an initialized process group "
                              "(run under torchrun through `fusionedge train`, or use distributed.process_group)")
    mcfg = resolve_model_config(cfg.model, cfg.geometry, labels, _with_data_modalities(cfg))
    exclude = Augment.mix_exclude_tags
    if cfg.background_mix > 0 and not set(exclude) & set(labels.audio_tags):
        raise InputError(f"background_mix needs an audio tag that marks an event's sound ({', '.join(exclude)}); "
                         f"this task's audio tags are {list(labels.audio_tags)}")
    if cfg.siren_swap > 0:
        from .synth.rules import EVENTS

        lacking = [e for e in EVENTS if e not in labels.events]
        lacking += [] if SIREN_TAG in labels.audio_tags else [SIREN_TAG]
        if lacking:
            raise InputError(f"siren_swap needs the generator's events and a {SIREN_TAG!r} audio tag; this task "
                             f"lacks {', '.join(lacking)}")
    if cfg.sound_naming > 0 and "audio" not in mcfg.modalities:
        raise InputError(f"sound_naming={cfg.sound_naming} needs a model that hears (its head reads the audio "
                         f"tokens); this one reads {', '.join(mcfg.modalities)}")
    if cfg.teacher is not None and "event_logits" not in mcfg.output_names:
        raise InputError("distillation needs an event head (its feature term distils the fused clip "
                         "embedding that feeds it); this task has no events: train it without a teacher")
    resume = None
    if cfg.resume is not None:
        resume = resume_state(cfg.resume, cfg.to_dict(), mcfg.to_dict(), dist.world_size)
        if resume["labels"] != labels.to_dict():
            raise CheckpointError(f"{cfg.resume}: saved with labels {resume['labels']}, "
                                  f"the run now has {labels.to_dict()}")
    for path in (cfg.init, cfg.teacher):  # read again where they are used; refused here, before the data
        if path is not None:
            read_checkpoint(path)
    return mcfg, resume


def _with_data_modalities(cfg: TrainConfig) -> dict:
    """The run's model overrides, with ``modalities`` set to the one the training data has.

    No training sample with audio: video alone; none with video: audio alone.

    An explicit ``modalities`` override (``--modalities``) is kept as given; so is a registered
    model that reads one modality already.

    Raises:
        DataError: the training manifest is missing or invalid.
    """
    overrides = dict(cfg.model_overrides)
    if "modalities" in overrides or len(model_config(cfg.model).modalities) < 2:
        return overrides
    # files checked: a row without 'audio' then hears its video's own sound track, where it has one
    samples = read_manifest(cfg.data, require_labels=False, events=None, audio_tags=None, objects=None)
    if samples and all(s.audio is None for s in samples):
        overrides["modalities"] = ["video"]
    elif samples and all(s.video is None for s in samples):
        overrides["modalities"] = ["audio"]
    return overrides


def _prepare_teacher(run: _Run) -> _Teacher:
    """Load the teacher, cache its outputs per training sample (un-flipped and flipped), let it go."""
    cfg, mcfg = run.cfg, run.mcfg
    t_teacher = time.perf_counter()
    teacher, tinfo = load_teacher(cfg.teacher, geometry=cfg.geometry, labels=run.labels, device="cpu")
    teacher_flops, teacher_params = count_flops(teacher), sum(p.numel() for p in teacher.parameters())
    teacher.to(run.device)
    det_kd = (cfg.distill.det_feature > 0 and mcfg.num_objects > 0 and "video" in mcfg.modalities
              and "video" in teacher.config.modalities)  # the detection features of both CenterNet heads
    cache = compute_teacher_cache(teacher, run.train_clips, batch_size=cfg.batch_size, device=run.device,
                                  dist=run.dist, det_features=det_kd, progress=run.show)
    record = {"teacher": str(cfg.teacher), "teacher_model": tinfo["model_name"],
              "teacher_flops": teacher_flops, "teacher_params": teacher_params,
              "weights": asdict(cfg.distill), "cache_seconds": round(time.perf_counter() - t_teacher, 2),
              "cache": "each rank computes its share of the training samples (2 forwards each: "
                       "un-flipped and flipped); the shares are all-gathered"}
    return _Teacher(cache, teacher.fusion.out_dim, teacher.config.det_channels, record)


def _build_model(run: _Run) -> None:
    """The model (initialized from ``cfg.init``), the extra trained modules, the optimizer and the scaler.

    The extra modules are created in a fixed order after the model: their initialization draws
    from torch's generator, and an exact resume needs the same draws.
    """
    cfg, mcfg, device = run.cfg, run.mcfg, run.device
    torch.manual_seed(cfg.seed)  # weights depend only on the seed, not on what decoding consumed
    model = MultimodalModel(mcfg)
    if cfg.init is not None:
        run.init_info = _initialize(model, cfg)
    if run.teacher is not None:
        t, rec = run.teacher, run.teacher.record
        rec.update(student_flops=count_flops(model), student_params=count_params(model))
        run.aux["projector"] = torch.nn.Linear(model.fusion.out_dim, t.dim).to(device)
        run.taps["fusion"] = FeatureTap(model)  # the student's fused embedding, for the feature term
        rec.update(flops_ratio=round(rec["teacher_flops"] / max(1, rec["student_flops"]), 3),
                   params_ratio=round(rec["teacher_params"] / max(1, rec["student_params"]), 3),
                   projector=[model.fusion.out_dim, t.dim])
        if t.cache.det_feature is not None:  # detection-feature imitation through a 1x1 adapter
            run.aux["det_adapter"] = torch.nn.Conv2d(mcfg.det_channels, t.det_dim, 1).to(device)
            run.taps["detection"] = FeatureTap(model, "detection")
            rec.update(det_adapter=[mcfg.det_channels, t.det_dim])
    if cfg.task_weighting == "uncertainty":
        run.aux["uncertainty"] = UncertaintyWeighting(output_groups(mcfg.output_names)).to(device)
    if cfg.sound_naming > 0:
        run.aux["sound_naming"] = sound_naming_head(mcfg.audio_dim, mcfg.head_hidden).to(device)
        run.taps["audio"] = FeatureTap(model, "audio")
    model.to(device)
    separate_encoders = cfg.encoder_lr_scale != 1.0 or cfg.frozen_encoder_epochs > 0
    groups = param_groups(model, cfg.weight_decay, *run.aux.values(),
                          scaled=ENCODER_PREFIXES if separate_encoders else ())
    run.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))
    use_amp = cfg.amp and device.type == "cuda"
    if use_amp:
        run.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    run.scaler = torch.amp.GradScaler(device.type, enabled=run.amp_dtype == torch.float16)
    run.model = run.net = model
    if run.dist.distributed:  # gradients are averaged over ranks in backward(); rank 0's buffers are broadcast
        # alternating: a step back-propagates one task group, so the other heads get no gradient
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.task_schedule == "alternating")


def _start_run_folder(run: _Run) -> None:
    """Create the run folder (rank 0) and write config.json: the run is set up and about to train."""
    cfg = run.cfg
    if run.dist.is_main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cfg.out / "config.json", {"train": cfg.to_dict(), "model_name": cfg.model,
                                                    "model_config": run.mcfg.to_dict(),
                                                    "labels": run.labels.to_dict(),
                                                    "world_size": run.dist.world_size})


def _restore(run: _Run, resume: dict) -> int:
    """Continue a saved run: weights, optimizer, scaler, extra modules, history and random states.

    Returns:
        The first epoch to train.
    """
    run.model.load_state_dict(resume["state_dict"])
    run.optimizer.load_state_dict(resume["optimizer"])
    ts = resume["training_state"]
    if ts["scaler"]:
        run.scaler.load_state_dict(ts["scaler"])
    for name, module in run.aux.items():
        if name not in ts.get("aux", {}):
            raise CheckpointError(f"{run.cfg.resume}: no saved {name} state to resume from")
        module.load_state_dict(ts["aux"][name])
    run.step, run.history, run.best = ts["step"], list(ts["history"]), ts["best"]
    set_rng_state(ts["rng"], run.gen)  # last: everything above may have drawn random numbers
    return ts["epoch"] + 1


def _epoch_batches(run: _Run, augment: Augment) -> tuple:
    """This rank's batches of one epoch, and the map from ``batch["index"]`` to the training split (or None)."""
    cfg, dist = run.cfg, run.dist
    if dist.distributed:  # this rank's share of the epoch's permutation (the same on every rank)
        perm = torch.randperm(len(run.train_clips), generator=run.gen)  # (N,)
        shard_idx = shard_indices(perm, dist.rank, dist.world_size)
        shard = take_clips(run.train_clips, shard_idx)  # a copy, N/world
        return iterate_batches(shard, cfg.batch_size, generator=run.gen, augment=augment), shard_idx
    # the same draws from `gen`, without copying the cache
    return iterate_batches(run.train_clips, cfg.batch_size, shuffle=True, generator=run.gen, augment=augment), None


def _step_loss(run: _Run, batch: dict, term_weights: dict[str, float],
               shard_idx: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward one batch (under autocast on CUDA) and combine the loss terms of this step."""
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float16, enabled=run.amp_dtype is not None):
        outputs = run.net(batch["video"], batch["audio"], batch["presence"])
    outputs = named_outputs([o.float() for o in outputs], run.mcfg.output_names)  # the losses in float32
    terms = multitask_terms(outputs, batch)
    if run.teacher is not None:
        index = batch["index"].cpu() if shard_idx is None else shard_idx[batch["index"].cpu()]
        targets = run.teacher.cache.lookup(index, batch["flipped"], run.device)
        det_tap = run.taps.get("detection")
        adapted = None if det_tap is None else run.aux["det_adapter"](det_tap.take().float())
        projected = run.aux["projector"](run.taps["fusion"].take().float())
        terms.update(distill_terms(outputs, projected, targets, batch["presence"], run.cfg.distill.temperature,
                                   adapted))
    if "sound_naming" in run.aux:
        logits = run.aux["sound_naming"](run.taps["audio"].take().float())
        terms["sound_naming"] = sound_naming_loss(logits, batch["sound_name"])
    groups = scheduled_groups(run.cfg.task_schedule, run.step, output_groups(run.mcfg.output_names))
    loss = combine_task_losses(terms, term_weights, groups,
                               run.aux.get("uncertainty"))
    return loss, {k: float(v.detach()) for k, v in terms.items()}


def _backward_and_step(run: _Run, loss: torch.Tensor) -> None:
    """Backward, average the extra modules' gradients over ranks, clip, step."""
    import torch.distributed as tdist

    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    aux_params = run.aux_params
    if run.dist.distributed:  # DDP averages the model's gradients; the extra modules' are averaged here
        for p in aux_params:
            if p.grad is not None:
                tdist.all_reduce(p.grad)
                p.grad /= run.dist.world_size
    run.scaler.unscale_(run.optimizer)  # clip the true gradients (a no-op without fp16 scaling)
    torch.nn.utils.clip_grad_norm_([*run.model.parameters(), *aux_params], run.cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.step += 1


def _train_epoch(run: _Run, epoch: int, augment: Augment, term_weights: dict[str, float],
                 warmup: int) -> tuple[dict[str, float], float]:
    """One epoch of optimizer steps.

    Returns:
        ``(training means of the loss and of every term over all ranks, the last step's lr)``.
    """
    cfg = run.cfg
    steps_per_epoch = run.steps_per_epoch()
    total_steps = cfg.epochs * steps_per_epoch
    run.net.train()
    sums: dict[str, float] = {}
    seen = 0
    batches, shard_idx = _epoch_batches(run, augment)
    bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
               disable=not run.show, leave=False)
    lr = cfg.lr
    for batch in bar:
        lr = lr_at(run.step, total_steps, warmup, cfg)
        encoder_scale = 0.0 if epoch <= cfg.frozen_encoder_epochs else cfg.encoder_lr_scale
        for group in run.optimizer.param_groups:
            group["lr"] = lr * encoder_scale if group.get("scaled") else lr
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
        loss, parts = _step_loss(run, batch, term_weights, shard_idx)
        check_finite_loss(loss, epoch, run.step, cfg.lr)
        _backward_and_step(run, loss)
        b = len(batch["index"])
        seen += b
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v * b
        bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", lr=f"{lr:.1e}")
    bar.close()
    if run.dist.distributed:  # the epoch's training means over all ranks
        import torch.distributed as tdist

        keys = sorted(sums)
        t = torch.tensor([seen] + [sums[k] for k in keys], dtype=torch.float64, device=run.device)
        tdist.all_reduce(t)
        seen, sums = int(t[0]), dict(zip(keys, t[1:].tolist()))
    return {k: v / seen for k, v in sums.items()}, lr


def _close_epoch(run: _Run, epoch: int, train_means: dict[str, float], lr: float, t_epoch: float,
                 train_seconds: float, ckpt_meta: dict) -> None:
    """Rank 0: validate, record the epoch, save best.pt / last.pt and metrics.json."""
    cfg = run.cfg
    val = evaluate_model(run.model, run.val_clips, loss_weights=cfg.loss_weights, device=run.device)
    for tap in run.taps.values():
        tap.output = None  # validation's features are not needed
    record = {"epoch": epoch, "lr": lr, "train": train_means, "val": val, "train_seconds": round(train_seconds, 2),
              "seconds": round(time.perf_counter() - t_epoch, 2)}
    if "uncertainty" in run.aux:
        record["task_weights"] = run.aux["uncertainty"].weights()
    run.history.append(record)
    if cfg.progress:
        shown = "".join(f"  {label} {val[k]:.3f}" for k, label in (("event_accuracy", "event acc"),
                        ("audio_tag_map", "tag mAP"), ("detection_map50", "det mAP50")) if k in val)
        print(f"epoch {epoch}/{cfg.epochs}  loss {record['train']['loss']:.3f}  "
              f"val loss {val['loss']:.3f}{shown}  ({record['seconds']:.0f} s)", file=sys.stderr, flush=True)
    metrics = {"epoch": epoch, **val}
    if _better(val, run.best):
        run.best = metrics
        save_checkpoint(cfg.out / "best.pt", run.model, metrics=json_safe(metrics), epoch=epoch, **ckpt_meta)
    training_state = {"step": run.step, "epoch": epoch, "history": run.history, "best": run.best,
                      "world_size": run.dist.world_size, "scaler": run.scaler.state_dict(),
                      "rng": rng_state(run.gen),  # validation drew no random numbers
                      "aux": {k: m.state_dict() for k, m in run.aux.items()}}
    save_checkpoint(cfg.out / "last.pt", run.model, metrics=json_safe(metrics), epoch=epoch, **ckpt_meta,
                    optimizer=run.optimizer, training_state=training_state)
    write_json_atomic(cfg.out / "metrics.json", _summary(run))


def _summary(run: _Run) -> dict:
    """What metrics.json holds and ``train`` returns (before the distributed digests)."""
    history = run.history
    final = {"epoch": history[-1]["epoch"], **history[-1]["val"]} if history else None
    return {"best": run.best, "final": final, "history": history, "run_dir": str(run.cfg.out),
            "data_seconds": round(run.t_data, 2), "seconds": round(time.perf_counter() - run.t_start, 2),
            "train_samples": len(run.train_clips), "val_samples": len(run.val_clips),
            "task_weighting": run.cfg.task_weighting, "task_schedule": run.cfg.task_schedule,
            "labels": {**run.task.to_dict(), "counts": run.label_counts},
            **({"distillation": run.teacher.record} if run.teacher is not None else {}),
            **({"init": run.init_info} if run.init_info is not None else {})}


def _finish(run: _Run, trained_any: bool) -> dict:
    """Close the taps, write the final metrics.json and report (rank 0), and return the summary.

    With several processes the replicas are proven identical first: one all_gather of each
    rank's 64-character parameter digest.
    """
    for tap in run.taps.values():
        tap.close()
    main, cfg = run.dist.is_main, run.cfg
    if not run.dist.distributed:
        if main and not trained_any:  # resumed a finished run: nothing to train
            write_json_atomic(cfg.out / "metrics.json", _summary(run))
        if main:
            _report(cfg)
        return json_safe(_summary(run))
    import torch.distributed as tdist

    digests: list = [None] * run.dist.world_size
    tdist.all_gather_object(digests, parameter_digest(run.model))
    if not main:
        return {"rank": run.dist.rank, "parameter_digest": digests[run.dist.rank]}
    result = {**_summary(run), "distributed": {"world_size": run.dist.world_size, "parameter_digests": digests}}
    write_json_atomic(cfg.out / "metrics.json", result)
    _report(cfg)
    return json_safe(result)


def train(cfg: TrainConfig, dist: DistContext = DistContext()) -> dict:
    """Train, validate every epoch, and write the run folder (see the module docstring).

    Args:
        cfg: the run's configuration.
        dist: this process's place in a data-parallel job; with ``world_size > 1`` the default
            process group must be initialized (``distributed.process_group``).

    Raises:
        DataError: the manifests are missing, invalid or empty.
        MediaError: a media file cannot be decoded.
        ModelConfigError: unknown model name, or an override of an unknown field, the wrong type
            or out of range (an ``InputError`` naming the field).
        CheckpointError: ``cfg.init`` is not a usable checkpoint (or pretraining checkpoint),
            ``cfg.teacher`` is unreadable or has another geometry or label set than the student, or
            ``cfg.resume`` does not continue this run. Nothing is written then.
        FusionEdgeError: the loss became NaN/Inf, or no process group for several processes.

    Returns:
        On rank 0 ``{"best": {epoch, val metrics}, "final": {...}, "history": [...], "run_dir",
        "seconds", "task_weighting", "task_schedule", ...}`` (with ``"distillation"``: teacher and
        student FLOPs, parameters and their ratios, for a teacher run; ``"init"``: what ``cfg.init``
        loaded; ``"distributed": {"world_size", "parameter_digests"}`` for several processes); on
        other ranks ``{"rank", "parameter_digest"}``. Each epoch's history record holds the
        training means of every loss term (``kd_*`` for distillation) and, for uncertainty
        weighting, ``task_weights`` (``exp(-s)`` per task group).
    """
    import torch.distributed as tdist

    # -- setup: refuse what can be refused before decoding anything or creating the run folder
    t_start = time.perf_counter()
    gen = seed_everything(cfg.seed)
    task = resolve_labels(cfg.data, cfg.labels)
    labels = task.labels
    device = resolve_device(cfg.device, dist)
    mcfg, resume = _check_inputs(cfg, dist, labels)
    run = _Run(cfg=cfg, dist=dist, device=device, gen=gen, task=task, mcfg=mcfg, t_start=t_start)

    # -- data: decode once, keep in memory (every rank holds the whole training split)
    run.train_clips, run.val_clips, train_rows = _load_splits(dataclasses.replace(cfg, progress=run.show), labels)
    if cfg.audio_variants:
        variants = audio_variants(train_rows, cfg.audio_variants, cfg.geometry, workers=cfg.num_workers,
                                  progress=run.show)
        run.train_clips = dataclasses.replace(run.train_clips, audio_variants=torch.from_numpy(variants))
    if cfg.siren_swap:
        parts = siren_swap_parts(train_rows, labels.events, labels.audio_tags, cfg.geometry,
                                 workers=cfg.num_workers, progress=run.show, clutter=cfg.clutter_swap > 0)
        run.train_clips = dataclasses.replace(run.train_clips, siren_swap=parts)
    if cfg.sound_naming:
        run.train_clips = dataclasses.replace(run.train_clips, sound_names=sound_names_of(train_rows))
    run.t_data = time.perf_counter() - t_start
    run.label_counts = {"train": label_counts(run.train_clips), "val": label_counts(run.val_clips)}
    if run.show:
        print(format_label_counts(task, run.label_counts), file=sys.stderr, flush=True)

    # -- model: the teacher's outputs first (distillation), then the student and what trains with it
    if cfg.teacher is not None:
        run.teacher = _prepare_teacher(run)
    _build_model(run)
    _start_run_folder(run)
    start_epoch = 1 if resume is None else _restore(run, resume)

    # -- the epoch loop: train, then (rank 0) validate and save while the other ranks wait
    warmup = max(1, int(cfg.warmup_epochs * run.steps_per_epoch()))
    augment = Augment(cfg.modality_dropout, cfg.hflip, cfg.audio_gain_db, background_mix=cfg.background_mix,
                      audio_warp=cfg.audio_warp, audio_variants=cfg.audio_variants > 0, siren_swap=cfg.siren_swap,
                      clutter_swap=cfg.clutter_swap)
    term_weights = _term_weights(cfg)
    ckpt_meta = dict(model_name=cfg.model, model_config=mcfg.to_dict(), geometry=cfg.geometry,
                     labels=labels.to_dict(), extra={"train_config": json_safe(cfg.to_dict())})
    last_epoch = cfg.stop_after_epoch or cfg.epochs
    for epoch in range(start_epoch, last_epoch + 1):
        t_epoch = time.perf_counter()
        train_means, lr = _train_epoch(run, epoch, augment, term_weights, warmup)
        train_seconds = time.perf_counter() - t_epoch
        if dist.is_main:
            _close_epoch(run, epoch, train_means, lr, t_epoch, train_seconds, ckpt_meta)
        if dist.distributed:
            tdist.barrier()

    # -- summary
    return _finish(run, trained_any=start_epoch <= last_epoch)
