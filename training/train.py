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

Validation uses a held-out manifest (``val_data``) or a deterministic 10% of the training manifest.
Seeds are fixed (python, numpy, torch); ``torch.set_num_threads`` is left to the caller.

**Exact resume.** ``last.pt`` also holds the optimizer, the step, the history, the best epoch so
far and every random state (python, numpy, torch, the data generator). ``TrainConfig(resume=...)``
continues from it: training E epochs straight and training k epochs (``stop_after_epoch=k``, or a
kill after epoch k), then resuming to E give bit-identical weights on the CPU. The options that
shape the trajectory (epochs, batch size, lr, seed, model, ...) must be those of the first run.

**Several processes.** ``train(cfg, dist=DistContext(rank, world_size, local_rank))`` inside an
initialized process group (see ``distributed.py``; ``fusionedge train`` under ``torchrun`` does it)
wraps the model in ``DistributedDataParallel`` and gives each rank ``perm[rank::world]`` of each
epoch's permutation: ``batch_size`` is per process. Only rank 0 validates and writes the run
folder; the others wait. On CUDA the forward pass runs under autocast (bf16, or fp16 with a
``GradScaler`` where bf16 is not supported); on the CPU in float32.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fusionedge.sdk import metrics as M
from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import DataError, FusionEdgeError
from fusionedge.sdk.postprocess import decode_centernet
from fusionedge.sdk.spec import InputGeometry

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .dataset import Augment, ClipCache, Labels, iterate_batches, load_clips, split_for_validation
from .distributed import DistContext, parameter_digest, resolve_device, shard_indices, take_clips
from .distill import DistillWeights, FeatureTap, compute_teacher_cache, distill_terms, load_teacher
from .losses import (
    IGNORE_INDEX,
    TASK_SCHEDULES,
    TASK_WEIGHTINGS,
    LossWeights,
    UncertaintyWeighting,
    combine_task_losses,
    multitask_loss,
    multitask_terms,
    scheduled_groups,
)
from .models import model_config
from .models.multimodal import ModelConfig, MultimodalModel, count_flops, count_params

__all__ = ["TrainConfig", "train", "evaluate_model", "resolve_model_config", "ENCODER_PREFIXES"]

#: State-dict prefixes of the two encoders: what pretraining learns and ``encoder_lr_scale`` scales.
ENCODER_PREFIXES: tuple[str, str] = ("video_encoder.", "audio_encoder.")


@dataclass
class TrainConfig:
    """One training run. Defaults are the quickstart's (``fusion_student``, ~2,000 synthetic clips, 2 CPU cores)."""

    data: Path  # training manifest.jsonl, or the folder holding it
    out: Path  # run folder (created)
    val_data: Path | None = None  # validation manifest; None: a deterministic 10% of `data`
    model: str = "fusion_student"  # registry name
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields to change
    init: Path | None = None  # checkpoint to initialize the weights from (same architecture)
    encoder_lr_scale: float = 1.0  # the video and audio encoders' learning rate, as a fraction of lr
    frozen_encoder_epochs: int = 0  # first epochs with the encoders' learning rate at 0 (heads warm up first)
    resume: Path | None = None  # a run's last.pt: continue that run exactly (same options)
    stop_after_epoch: int | None = None  # end after this epoch, keeping the schedule of `epochs` (resumable)
    device: str = "auto"  # "auto": cuda:LOCAL_RANK when CUDA is available, else cpu; or e.g. "cpu"
    amp: bool = True  # mixed precision on CUDA (bf16, else fp16 + GradScaler); no effect on the CPU
    geometry: InputGeometry = field(default_factory=InputGeometry)
    epochs: int = 10  # ~175 s of training for 2,000 clips on 2 cores (student)
    batch_size: int = 32
    lr: float = 3e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.02  # cosine floor, as a fraction of lr
    warmup_epochs: float = 0.5  # linear warm-up
    weight_decay: float = 0.05  # on weight matrices/kernels only (not norms, biases, embeddings)
    grad_clip: float = 2.0  # max global gradient norm
    seed: int = 0
    loss_weights: LossWeights = field(default_factory=LossWeights)
    modality_dropout: float = 0.1  # per-sample probability of dropping video or audio (never both)
    hflip: float = 0.5  # per-sample horizontal flip probability
    audio_gain_db: float = 6.0  # random gain range, ± dB
    num_workers: int = 2  # threads decoding media into the cache
    max_train_samples: int | None = None  # use only the first N training samples
    max_val_samples: int | None = None
    teacher: Path | None = None  # a `fusionedge train` checkpoint to distill from (see distill.py)
    distill: DistillWeights = field(default_factory=DistillWeights)  # used only with a teacher
    task_weighting: str = "fixed"  # "fixed": loss_weights; "uncertainty": learned per-group log-variances
    task_schedule: str = "joint"  # "joint": all task groups every step; "alternating": one group per step
    report: bool = True  # write curves.png and summary.md at the end (rank 0)
    progress: bool = True  # tqdm bars on stderr

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        self.val_data = None if self.val_data is None else Path(self.val_data)
        self.init = None if self.init is None else Path(self.init)
        self.resume = None if self.resume is None else Path(self.resume)
        self.teacher = None if self.teacher is None else Path(self.teacher)
        if isinstance(self.distill, dict):
            self.distill = DistillWeights(**self.distill)
        if isinstance(self.loss_weights, dict):
            self.loss_weights = LossWeights(**self.loss_weights)
        if isinstance(self.geometry, dict):
            self.geometry = InputGeometry.from_dict(self.geometry)
        bad = []
        if self.epochs < 1:
            bad.append(f"epochs={self.epochs} (need >= 1)")
        if self.batch_size < 1:
            bad.append(f"batch_size={self.batch_size} (need >= 1)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad.append(f"lr={self.lr} (need > 0)")
        if not (0.0 <= self.encoder_lr_scale and math.isfinite(self.encoder_lr_scale)):
            bad.append(f"encoder_lr_scale={self.encoder_lr_scale} (need >= 0)")
        if not 0 <= self.frozen_encoder_epochs <= self.epochs:
            bad.append(f"frozen_encoder_epochs={self.frozen_encoder_epochs} (need 0..epochs)")
        if not 0.0 <= self.modality_dropout <= 1.0:
            bad.append(f"modality_dropout={self.modality_dropout} (need 0..1)")
        if not 0.0 <= self.hflip <= 1.0:
            bad.append(f"hflip={self.hflip} (need 0..1)")
        if self.stop_after_epoch is not None and not 1 <= self.stop_after_epoch <= self.epochs:
            bad.append(f"stop_after_epoch={self.stop_after_epoch} (need 1..epochs or None)")
        if self.init is not None and self.resume is not None:
            bad.append("init and resume together (resume restores the weights)")
        if self.task_weighting not in TASK_WEIGHTINGS:
            bad.append(f"task_weighting={self.task_weighting!r} (need one of {', '.join(TASK_WEIGHTINGS)})")
        if self.task_schedule not in TASK_SCHEDULES:
            bad.append(f"task_schedule={self.task_schedule!r} (need one of {', '.join(TASK_SCHEDULES)})")
        for name in ("max_train_samples", "max_val_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad.append(f"{name}={v} (need >= 1 or None)")
        if bad:
            raise FusionEdgeError("invalid TrainConfig: " + ", ".join(bad))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(data=str(self.data), out=str(self.out), val_data=None if self.val_data is None else str(self.val_data),
                 init=None if self.init is None else str(self.init),
                 resume=None if self.resume is None else str(self.resume), geometry=self.geometry.to_dict(),
                 loss_weights=asdict(self.loss_weights), teacher=None if self.teacher is None else str(self.teacher),
                 distill=asdict(self.distill))
        return d


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _json_safe(x):
    """NaN/Inf → None (JSON has neither), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _write_json(path: Path, obj) -> None:
    """Atomic JSON write (temp file + os.replace)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(_json_safe(obj), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _load_splits(cfg: TrainConfig, labels: Labels) -> tuple[ClipCache, ClipCache]:
    vocab = dict(require_labels=False, events=labels.events, audio_tags=labels.audio_tags, objects=labels.objects)
    train_samples = read_manifest(cfg.data, **vocab)
    if cfg.val_data is not None:
        val_samples = read_manifest(cfg.val_data, **vocab)
    else:
        train_samples, val_samples = split_for_validation(train_samples)
    train_samples = train_samples[: cfg.max_train_samples]
    val_samples = val_samples[: cfg.max_val_samples]
    if not train_samples or not val_samples:
        raise DataError(f"{cfg.data}: need at least one training and one validation sample "
                        f"(got {len(train_samples)} and {len(val_samples)})")
    kw = dict(workers=cfg.num_workers, progress=cfg.progress)
    return (load_clips(train_samples, cfg.geometry, labels, desc="decode train", **kw),
            load_clips(val_samples, cfg.geometry, labels, desc="decode val", **kw))


def _param_groups(model: torch.nn.Module, weight_decay: float, *extra: torch.nn.Module,
                  scaled: tuple[str, ...] = ()) -> list[dict]:
    """Weight decay on ≥2-D weights (kernels, matrices); none on norms, biases and embeddings.

    ``extra`` modules (the distillation projector, the task log-variances) follow the model's
    parameters in the same groups. The model's parameters whose names start with one of ``scaled``
    get groups of their own, marked ``"scaled": True``, so the training loop can give them another
    learning rate (``encoder_lr_scale``, ``frozen_encoder_epochs``).
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


def _lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine down to ``cfg.lr * min_lr_ratio``."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate_model(model: MultimodalModel, clips: ClipCache, *, batch_size: int = 64,
                   loss_weights: LossWeights = LossWeights(), score_threshold: float = 0.05,
                   device: torch.device | str = "cpu") -> dict:
    """Validation metrics of a model on a decoded split (boxes in model-input pixels).

    Args:
        model: the model (put in eval mode for the call, then restored).
        clips: the split.
        batch_size: samples per forward pass.
        loss_weights: for the reported validation loss.
        score_threshold: lowest detection score decoded for mAP.
        device: where the model lives (batches are moved there).

    Returns:
        ``loss``, ``event_accuracy``, ``event_macro_f1``, ``audio_tag_map``, ``detection_map50``
        (``nan`` where undefined), ``samples``.
    """
    was_training = model.training
    model.eval()
    labels, g = clips.labels, clips.geometry
    losses, y_true, y_pred, tag_true, tag_score, det_pred, det_true = [], [], [], [], [], [], []
    for batch in iterate_batches(clips, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs = tuple(o.float() for o in model(batch["video"], batch["audio"], batch["presence"]))
        loss, _ = multitask_loss(outputs, batch, loss_weights)
        losses.append(float(loss) * len(batch["index"]))
        event_logits, tag_logits, heatmap, size, offset = (o.cpu().numpy() for o in outputs)
        for j, i in enumerate(batch["index"].tolist()):
            if int(clips.event[i]) != IGNORE_INDEX:
                y_true.append(int(clips.event[i]))
                y_pred.append(int(np.argmax(event_logits[j])))
            if bool(clips.has_audio[i]):
                tag_true.append(clips.audio_tags[i].numpy())
                tag_score.append(tag_logits[j])
            det_pred.append(decode_centernet(heatmap[j], size[j], offset[j], stride=g.output_stride,
                                             labels=labels.objects, score_threshold=score_threshold, top_k=100))
            det_true.append([(labels.objects[k], *map(float, box))
                             for box, k in zip(clips.boxes[i], clips.box_labels[i])])
    model.train(was_training)
    nan = float("nan")
    yt, yp = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    return {
        "loss": sum(losses) / len(clips),
        "event_accuracy": M.event_accuracy(yt, yp) if len(yt) else nan,
        "event_macro_f1": M.event_macro_f1(yt, yp, len(labels.events)) if len(yt) else nan,
        "audio_tag_map": M.audio_tag_map(np.stack(tag_true), np.stack(tag_score)) if tag_true else nan,
        "detection_map50": M.detection_map50(det_pred, det_true, labels.objects),
        "samples": len(clips),
    }


def _better(a: dict, b: dict | None) -> bool:
    """Model selection: higher event accuracy, then lower validation loss."""
    if b is None:
        return True
    acc_a = a["event_accuracy"] if math.isfinite(a["event_accuracy"]) else -1.0
    acc_b = b["event_accuracy"] if math.isfinite(b["event_accuracy"]) else -1.0
    return (acc_a, -a["loss"]) > (acc_b, -b["loss"])


#: TrainConfig fields that shape a run's trajectory: a resumed run must keep them to be exact.
_TRAJECTORY_FIELDS = ("model", "model_overrides", "geometry", "epochs", "batch_size", "lr", "min_lr_ratio",
                      "warmup_epochs", "weight_decay", "grad_clip", "seed", "loss_weights", "modality_dropout",
                      "hflip", "audio_gain_db", "max_train_samples", "amp", "teacher", "distill",
                      "task_weighting", "task_schedule", "encoder_lr_scale", "frozen_encoder_epochs")


def _rng_state(gen: torch.Generator) -> dict:
    """Every random state a run draws from (as tensors and plain data, loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": gen.get_state(),
    }


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["data"])


def _resume_state(cfg: TrainConfig, mcfg_dict: dict, world_size: int) -> dict:
    """Read ``cfg.resume`` and check that it continues this run; returns the raw checkpoint dict."""
    state = read_checkpoint(cfg.resume)
    if "training_state" not in state or "optimizer" not in state:
        raise CheckpointError(f"{cfg.resume}: no training state to resume from (use a run's last.pt)")
    if state["model_config"] != mcfg_dict:
        raise CheckpointError(f"{cfg.resume}: model {state['model_name']!r} as saved differs from {cfg.model!r} "
                              "as configured")
    saved = state.get("extra", {}).get("train_config", {})
    now = _json_safe(cfg.to_dict())
    changed = [k for k in _TRAJECTORY_FIELDS if k in saved and saved[k] != now[k]]
    if changed:
        raise CheckpointError(f"{cfg.resume}: resuming needs the options of the first run; changed: "
                              + ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in changed))
    if state["training_state"]["world_size"] != world_size:
        raise CheckpointError(f"{cfg.resume}: saved by {state['training_state']['world_size']} process(es), "
                              f"resumed by {world_size}: the data shards would differ")
    return state


def resolve_model_config(model: str, geometry: InputGeometry, labels: Labels,
                         overrides: dict | None = None) -> ModelConfig:
    """The architecture a run builds: registered model ``model`` fitted to the data's shapes and labels.

    Args:
        model: a registry name.
        geometry: the input geometry (clip frames, image size, audio samples, output stride).
        labels: the label vocabularies (their sizes fix the heads).
        overrides: the run's ``ModelConfig`` overrides, applied last.

    Raises:
        ModelConfigError: unknown model, unknown field or invalid value.

    Returns:
        The frozen config (what ``config.json``'s ``model_config`` records).
    """
    fitted = dict(num_events=len(labels.events), num_audio_tags=len(labels.audio_tags),
                  num_objects=len(labels.objects), clip_frames=geometry.clip_frames, height=geometry.height,
                  width=geometry.width, audio_samples=geometry.audio_samples, sample_rate=geometry.sample_rate,
                  output_stride=geometry.output_stride)
    fitted.update(overrides or {})
    return model_config(model, **fitted)


def _term_weights(cfg: TrainConfig) -> dict[str, float]:
    """The fixed weight of every loss term of this run (supervised terms scaled by ``distill.hard``)."""
    w = cfg.loss_weights
    hard = cfg.distill.hard if cfg.teacher is not None else 1.0
    weights = {"event": w.event, "audio_tags": w.audio_tags, "heatmap": w.heatmap, "size": w.size, "offset": w.offset}
    if hard != 1.0:
        weights = {k: hard * v for k, v in weights.items()}
    if cfg.teacher is not None:
        weights.update(cfg.distill.term_weights())
    return weights


def _initialize(model: MultimodalModel, cfg: TrainConfig) -> dict:
    """Load ``cfg.init`` into ``model``: a whole checkpoint, or the encoders of a pretraining checkpoint."""
    state = read_checkpoint(cfg.init)
    if state.get("extra", {}).get("kind") == "pretrain":
        try:
            from .pretrain import load_pretrained_encoders
        except ImportError as e:
            raise CheckpointError(f"{cfg.init}: a self-supervised pretraining checkpoint, but "
                                  f"fusionedge.training.pretrain cannot be imported ({e})") from e
        loaded = load_pretrained_encoders(model, cfg.init)
        return {"path": str(cfg.init), "kind": "pretrain", "loaded_keys": len(loaded)}
    init_model, _ = load_checkpoint(cfg.init)
    try:
        model.load_state_dict(init_model.state_dict())
    except RuntimeError as e:
        raise CheckpointError(f"{cfg.init}: weights do not fit {cfg.model!r} as configured: {e}") from e
    return {"path": str(cfg.init), "kind": "checkpoint", "loaded_keys": len(init_model.state_dict())}


def _report(cfg: TrainConfig) -> None:
    """Write curves.png and summary.md; a failure warns and keeps the run (metrics.json is written)."""
    if not cfg.report:
        return
    try:
        from .run_report import write_run_report

        write_run_report(cfg.out)
    except Exception as e:  # plotting is a convenience: never lose a finished run to it
        warnings.warn(f"{cfg.out}: could not write the run report ({type(e).__name__}: {e})", stacklevel=2)


def train(cfg: TrainConfig, dist: DistContext = DistContext()) -> dict:
    """Train, validate every epoch, and write the run folder (see the module docstring).

    Args:
        cfg: the run's configuration.
        dist: this process's place in a data-parallel job; with ``world_size > 1`` the default
            process group must be initialized (``distributed.process_group``).

    Raises:
        DataError: the manifests are missing, invalid or empty.
        MediaError: a media file cannot be decoded.
        ModelConfigError: unknown model name or override.
        CheckpointError: ``cfg.init`` is not a usable checkpoint (or pretraining checkpoint),
            ``cfg.teacher`` is unreadable or has another geometry or label set than the student, or
            ``cfg.resume`` does not continue this run.
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

    if dist.distributed and not tdist.is_initialized():
        raise FusionEdgeError(f"world_size={dist.world_size} needs an initialized process group "
                              "(run under torchrun through `fusionedge train`, or use distributed.process_group)")
    t_start = time.perf_counter()
    gen = _seed_everything(cfg.seed)
    labels = Labels()
    g = cfg.geometry
    device = resolve_device(cfg.device, dist)
    main, show = dist.is_main, cfg.progress and dist.is_main
    if main:
        cfg.out.mkdir(parents=True, exist_ok=True)

    mcfg = resolve_model_config(cfg.model, g, labels, cfg.model_overrides)
    resume = None if cfg.resume is None else _resume_state(cfg, mcfg.to_dict(), dist.world_size)  # fail early

    # -- data: decode once, keep in memory (every rank holds the whole training split)
    train_clips, val_clips = _load_splits(dataclasses.replace(cfg, progress=show), labels)
    t_data = time.perf_counter() - t_start

    # -- teacher (distillation): its outputs per training sample, un-flipped and flipped, computed once
    teacher_cache, distillation = None, None
    if cfg.teacher is not None:
        t_teacher = time.perf_counter()
        teacher, tinfo = load_teacher(cfg.teacher, geometry=g, labels=labels, device="cpu")
        teacher_flops, teacher_params = count_flops(teacher), sum(p.numel() for p in teacher.parameters())
        teacher.to(device)
        det_kd = cfg.distill.det_feature > 0 and "video" in mcfg.modalities and "video" in teacher.config.modalities
        teacher_cache = compute_teacher_cache(teacher, train_clips, batch_size=cfg.batch_size, device=device,
                                              dist=dist, det_features=det_kd, progress=show)
        teacher_dim = teacher.fusion.out_dim
        teacher_det_dim = teacher.config.det_channels
        del teacher
        distillation = {"teacher": str(cfg.teacher), "teacher_model": tinfo["model_name"],
                        "teacher_flops": teacher_flops, "teacher_params": teacher_params,
                        "weights": asdict(cfg.distill), "cache_seconds": round(time.perf_counter() - t_teacher, 2),
                        "cache": "each rank computes its share of the training samples (2 forwards each: "
                                 "un-flipped and flipped); the shares are all-gathered"}

    # -- model
    torch.manual_seed(cfg.seed)  # weights depend only on the seed, not on what decoding consumed
    model = MultimodalModel(mcfg)
    init_info = None
    if cfg.init is not None:
        init_info = _initialize(model, cfg)
    # the extra trained modules, created in a fixed order after the model (their init draws from torch's RNG)
    projector = tap = det_adapter = det_tap = uncertainty = None
    if teacher_cache is not None:
        distillation.update(student_flops=count_flops(model), student_params=count_params(model))
        projector = torch.nn.Linear(model.fusion.out_dim, teacher_dim).to(device)
        tap = FeatureTap(model)  # the student's fused embedding, for the feature term
        distillation.update(flops_ratio=round(distillation["teacher_flops"] / max(1, distillation["student_flops"]), 3),
                            params_ratio=round(distillation["teacher_params"] / max(1, distillation["student_params"]),
                                               3), projector=[model.fusion.out_dim, teacher_dim])
        if teacher_cache.det_feature is not None:  # detection-feature imitation through a 1x1 adapter
            det_adapter = torch.nn.Conv2d(mcfg.det_channels, teacher_det_dim, 1).to(device)
            det_tap = FeatureTap(model, "detection")
            distillation.update(det_adapter=[mcfg.det_channels, teacher_det_dim])
    if cfg.task_weighting == "uncertainty":
        uncertainty = UncertaintyWeighting().to(device)
    aux = {k: m for k, m in (("projector", projector), ("det_adapter", det_adapter), ("uncertainty", uncertainty))
           if m is not None}
    aux_params = [p for m in aux.values() for p in m.parameters()]
    term_weights = _term_weights(cfg)
    model.to(device)
    separate_encoders = cfg.encoder_lr_scale != 1.0 or cfg.frozen_encoder_epochs > 0
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay, *aux.values(),
                                                scaled=ENCODER_PREFIXES if separate_encoders else ()),
                                  lr=cfg.lr, betas=(0.9, 0.99))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    net: torch.nn.Module = model
    if dist.distributed:  # gradients are averaged over ranks in backward(); rank 0's buffers are broadcast
        # alternating: a step back-propagates one task group, so the other heads get no gradient
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None,
                                                        find_unused_parameters=cfg.task_schedule == "alternating")
    if main:
        _write_json(cfg.out / "config.json", {"train": cfg.to_dict(), "model_name": cfg.model,
                                              "model_config": mcfg.to_dict(), "labels": labels.to_dict(),
                                              "world_size": dist.world_size})

    shard_size = -(-len(train_clips) // dist.world_size)
    steps_per_epoch = math.ceil(shard_size / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    augment = Augment(cfg.modality_dropout, cfg.hflip, cfg.audio_gain_db)
    ckpt_meta = dict(model_name=cfg.model, model_config=mcfg.to_dict(), geometry=g, labels=labels.to_dict(),
                     extra={"train_config": _json_safe(cfg.to_dict())})

    history: list[dict] = []
    best: dict | None = None
    step, start_epoch = 0, 1
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(resume["optimizer"])
        ts = resume["training_state"]
        if ts["scaler"]:
            scaler.load_state_dict(ts["scaler"])
        for name, module in aux.items():
            if name not in ts.get("aux", {}):
                raise CheckpointError(f"{cfg.resume}: no saved {name} state to resume from")
            module.load_state_dict(ts["aux"][name])
        step, start_epoch, history, best = ts["step"], ts["epoch"] + 1, list(ts["history"]), ts["best"]
        _set_rng_state(ts["rng"], gen)  # last: everything above may have drawn random numbers

    def summary() -> dict:
        final = {"epoch": history[-1]["epoch"], **history[-1]["val"]} if history else None
        return {"best": best, "final": final, "history": history, "run_dir": str(cfg.out),
                "data_seconds": round(t_data, 2), "seconds": round(time.perf_counter() - t_start, 2),
                "train_samples": len(train_clips), "val_samples": len(val_clips),
                "task_weighting": cfg.task_weighting, "task_schedule": cfg.task_schedule,
                **({"distillation": distillation} if distillation is not None else {}),
                **({"init": init_info} if init_info is not None else {})}

    last_epoch = cfg.stop_after_epoch or cfg.epochs
    for epoch in range(start_epoch, last_epoch + 1):
        t_epoch = time.perf_counter()
        net.train()
        sums: dict[str, float] = {}
        seen = 0
        shard_idx = None  # batch["index"] -> position in train_clips (identity without sharding)
        if dist.distributed:  # this rank's share of the epoch's permutation (the same on every rank)
            perm = torch.randperm(len(train_clips), generator=gen)  # (N,)
            shard_idx = shard_indices(perm, dist.rank, dist.world_size)
            shard = take_clips(train_clips, shard_idx)  # a copy, N/world
            batches = iterate_batches(shard, cfg.batch_size, generator=gen, augment=augment)
        else:  # the same draws from `gen`, without copying the cache
            batches = iterate_batches(train_clips, cfg.batch_size, shuffle=True, generator=gen, augment=augment)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not show, leave=False)
        for batch in bar:
            lr = _lr_at(step, total_steps, warmup, cfg)
            encoder_scale = 0.0 if epoch <= cfg.frozen_encoder_epochs else cfg.encoder_lr_scale
            for group in optimizer.param_groups:
                group["lr"] = lr * encoder_scale if group.get("scaled") else lr
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                outputs = net(batch["video"], batch["audio"], batch["presence"])
            outputs = tuple(o.float() for o in outputs)  # the losses in float32
            terms = multitask_terms(outputs, batch)
            if teacher_cache is not None:
                index = batch["index"].cpu() if shard_idx is None else shard_idx[batch["index"].cpu()]
                targets = teacher_cache.lookup(index, batch["flipped"], device)
                adapted = None if det_tap is None else det_adapter(det_tap.take().float())
                terms.update(distill_terms(outputs, projector(tap.take().float()), targets, batch["presence"],
                                           cfg.distill.temperature, adapted))
            loss = combine_task_losses(terms, term_weights, scheduled_groups(cfg.task_schedule, step), uncertainty)
            parts = {k: float(v.detach()) for k, v in terms.items()}
            if not torch.isfinite(loss):  # a CPU sync point, but one float per step is cheap
                raise FusionEdgeError(f"loss became {float(loss.detach())} at epoch {epoch}, step {step}; "
                                      f"lower lr (now {cfg.lr}) or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if dist.distributed:  # DDP averages the model's gradients; the extra modules' are averaged here
                for p in aux_params:
                    if p.grad is not None:
                        tdist.all_reduce(p.grad)
                        p.grad /= dist.world_size
            scaler.unscale_(optimizer)  # clip the true gradients (a no-op without fp16 scaling)
            torch.nn.utils.clip_grad_norm_([*model.parameters(), *aux_params], cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            b = len(batch["index"])
            seen += b
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * b
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", lr=f"{lr:.1e}")
        bar.close()
        if dist.distributed:  # the epoch's training means over all ranks
            keys = sorted(sums)
            t = torch.tensor([seen] + [sums[k] for k in keys], dtype=torch.float64, device=device)
            tdist.all_reduce(t)
            seen, sums = int(t[0]), dict(zip(keys, t[1:].tolist()))
        train_seconds = time.perf_counter() - t_epoch

        if main:
            val = evaluate_model(model, val_clips, loss_weights=cfg.loss_weights, device=device)
            for t in (tap, det_tap):
                if t is not None:
                    t.output = None  # validation's features are not needed
            record = {"epoch": epoch, "lr": lr, "train": {k: v / seen for k, v in sums.items()}, "val": val,
                      "train_seconds": round(train_seconds, 2),
                      "seconds": round(time.perf_counter() - t_epoch, 2)}
            if uncertainty is not None:
                record["task_weights"] = uncertainty.weights()
            history.append(record)
            if cfg.progress:
                print(f"epoch {epoch}/{cfg.epochs}  loss {record['train']['loss']:.3f}  "
                      f"val loss {val['loss']:.3f}  event acc {val['event_accuracy']:.3f}  "
                      f"tag mAP {val['audio_tag_map']:.3f}  det mAP50 {val['detection_map50']:.3f}  "
                      f"({record['seconds']:.0f} s)", file=sys.stderr, flush=True)
            metrics = {"epoch": epoch, **val}
            if _better(val, best):
                best = metrics
                save_checkpoint(cfg.out / "best.pt", model, metrics=_json_safe(metrics), epoch=epoch, **ckpt_meta)
            training_state = {"step": step, "epoch": epoch, "history": history, "best": best,
                              "world_size": dist.world_size, "scaler": scaler.state_dict(),
                              "rng": _rng_state(gen),  # validation drew no random numbers
                              "aux": {k: m.state_dict() for k, m in aux.items()}}
            save_checkpoint(cfg.out / "last.pt", model, metrics=_json_safe(metrics), epoch=epoch, **ckpt_meta,
                            optimizer=optimizer, training_state=training_state)
            _write_json(cfg.out / "metrics.json", summary())
        if dist.distributed:
            tdist.barrier()  # the others wait while rank 0 validates and saves

    for t in (tap, det_tap):
        if t is not None:
            t.close()
    if not dist.distributed:
        if main and start_epoch > last_epoch:  # resumed a finished run: nothing to train
            _write_json(cfg.out / "metrics.json", summary())
        if main:
            _report(cfg)
        return _json_safe(summary())
    # DDP keeps the replicas identical; prove it (one all_gather of 64-character digests)
    digests: list = [None] * dist.world_size
    tdist.all_gather_object(digests, parameter_digest(model))
    if not main:
        return {"rank": dist.rank, "parameter_digest": digests[dist.rank]}
    result = {**summary(), "distributed": {"world_size": dist.world_size, "parameter_digests": digests}}
    _write_json(cfg.out / "metrics.json", result)
    _report(cfg)
    return _json_safe(result)
