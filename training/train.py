"""Train a FusionEdge model on a data-set manifest: ``train(TrainConfig(data=..., out=...))``.

One loop, top to bottom: decode the data once (``dataset.load_clips``), build the model from the
registry, then per epoch — set the learning rate (warm-up, cosine), forward, multi-task loss,
backward, clip, step — validate, and write the run folder:

    out/best.pt        checkpoint of the epoch with the best validation event accuracy
    out/last.pt        checkpoint of the last epoch (with the optimizer state)
    out/metrics.json   per-epoch history and the best epoch
    out/config.json    the TrainConfig and the model config

Validation uses a held-out manifest (``val_data``) or a deterministic 10% of the training manifest.
Seeds are fixed (python, numpy, torch); ``torch.set_num_threads`` is left to the caller.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
import time
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

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .dataset import Augment, ClipCache, Labels, iterate_batches, load_clips, split_for_validation
from .losses import IGNORE_INDEX, LossWeights, multitask_loss
from .models import model_config
from .models.multimodal import MultimodalModel

__all__ = ["TrainConfig", "train", "evaluate_model"]


@dataclass
class TrainConfig:
    """One training run. Defaults are the quickstart's (``fusion_student``, ~2,000 synthetic clips, 2 CPU cores)."""

    data: Path  # training manifest.jsonl, or the folder holding it
    out: Path  # run folder (created)
    val_data: Path | None = None  # validation manifest; None: a deterministic 10% of `data`
    model: str = "fusion_student"  # registry name
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields to change
    init: Path | None = None  # checkpoint to initialize the weights from (same architecture)
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
    progress: bool = True  # tqdm bars on stderr

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        self.val_data = None if self.val_data is None else Path(self.val_data)
        self.init = None if self.init is None else Path(self.init)
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
        if not 0.0 <= self.modality_dropout <= 1.0:
            bad.append(f"modality_dropout={self.modality_dropout} (need 0..1)")
        if not 0.0 <= self.hflip <= 1.0:
            bad.append(f"hflip={self.hflip} (need 0..1)")
        for name in ("max_train_samples", "max_val_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad.append(f"{name}={v} (need >= 1 or None)")
        if bad:
            raise FusionEdgeError("invalid TrainConfig: " + ", ".join(bad))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(data=str(self.data), out=str(self.out), val_data=None if self.val_data is None else str(self.val_data),
                 init=None if self.init is None else str(self.init), geometry=self.geometry.to_dict(),
                 loss_weights=asdict(self.loss_weights))
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


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on ≥2-D weights (kernels, matrices); none on norms, biases and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.split(".")[-1].startswith(("pos_", "missing_", "null_"))
        (decay if p.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine down to ``cfg.lr * min_lr_ratio``."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate_model(model: MultimodalModel, clips: ClipCache, *, batch_size: int = 64,
                   loss_weights: LossWeights = LossWeights(), score_threshold: float = 0.05) -> dict:
    """Validation metrics of a model on a decoded split (boxes in model-input pixels).

    Args:
        model: the model (put in eval mode for the call, then restored).
        clips: the split.
        batch_size: samples per forward pass.
        loss_weights: for the reported validation loss.
        score_threshold: lowest detection score decoded for mAP.

    Returns:
        ``loss``, ``event_accuracy``, ``event_macro_f1``, ``audio_tag_map``, ``detection_map50``
        (``nan`` where undefined), ``samples``.
    """
    was_training = model.training
    model.eval()
    labels, g = clips.labels, clips.geometry
    losses, y_true, y_pred, tag_true, tag_score, det_pred, det_true = [], [], [], [], [], [], []
    for batch in iterate_batches(clips, batch_size):
        outputs = model(batch["video"], batch["audio"], batch["presence"])
        loss, _ = multitask_loss(outputs, batch, loss_weights)
        losses.append(float(loss) * len(batch["index"]))
        event_logits, tag_logits, heatmap, size, offset = (o.numpy() for o in outputs)
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


def train(cfg: TrainConfig) -> dict:
    """Train, validate every epoch, and write the run folder (see the module docstring).

    Args:
        cfg: the run's configuration.

    Raises:
        DataError: the manifests are missing, invalid or empty.
        MediaError: a media file cannot be decoded.
        ModelConfigError: unknown model name or override.
        CheckpointError: ``cfg.init`` is not a usable checkpoint.
        FusionEdgeError: the loss became NaN/Inf.

    Returns:
        ``{"best": {epoch, val metrics}, "final": {...}, "history": [...], "run_dir", "seconds"}``.
    """
    t_start = time.perf_counter()
    gen = _seed_everything(cfg.seed)
    labels = Labels()
    g = cfg.geometry
    cfg.out.mkdir(parents=True, exist_ok=True)

    # -- data: decode once, keep in memory
    train_clips, val_clips = _load_splits(cfg, labels)
    t_data = time.perf_counter() - t_start

    # -- model
    overrides = dict(num_events=len(labels.events), num_audio_tags=len(labels.audio_tags),
                     num_objects=len(labels.objects), clip_frames=g.clip_frames, height=g.height, width=g.width,
                     audio_samples=g.audio_samples, sample_rate=g.sample_rate, output_stride=g.output_stride)
    overrides.update(cfg.model_overrides)
    mcfg = model_config(cfg.model, **overrides)
    torch.manual_seed(cfg.seed)  # weights depend only on the seed, not on what decoding consumed
    model = MultimodalModel(mcfg)
    if cfg.init is not None:
        init_model, _ = load_checkpoint(cfg.init)
        try:
            model.load_state_dict(init_model.state_dict())
        except RuntimeError as e:
            raise CheckpointError(f"{cfg.init}: weights do not fit {cfg.model!r} as configured: {e}") from e
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))
    _write_json(cfg.out / "config.json", {"train": cfg.to_dict(), "model_name": cfg.model,
                                          "model_config": mcfg.to_dict(), "labels": labels.to_dict()})

    steps_per_epoch = math.ceil(len(train_clips) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    augment = Augment(cfg.modality_dropout, cfg.hflip, cfg.audio_gain_db)
    ckpt_meta = dict(model_name=cfg.model, model_config=mcfg.to_dict(), geometry=g, labels=labels.to_dict())

    history: list[dict] = []
    best: dict | None = None
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        seen = 0
        bar = tqdm(iterate_batches(train_clips, cfg.batch_size, shuffle=True, generator=gen, augment=augment),
                   total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not cfg.progress, leave=False)
        for batch in bar:
            lr = _lr_at(step, total_steps, warmup, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            outputs = model(batch["video"], batch["audio"], batch["presence"])
            loss, parts = multitask_loss(outputs, batch, cfg.loss_weights)
            if not torch.isfinite(loss):  # a CPU sync point, but one float per step is cheap
                raise FusionEdgeError(f"loss became {float(loss.detach())} at epoch {epoch}, step {step}; "
                                      f"lower lr (now {cfg.lr}) or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            b = len(batch["index"])
            seen += b
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * b
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", lr=f"{lr:.1e}")
        bar.close()
        train_seconds = time.perf_counter() - t_epoch

        val = evaluate_model(model, val_clips, loss_weights=cfg.loss_weights)
        record = {"epoch": epoch, "lr": lr, "train": {k: v / seen for k, v in sums.items()}, "val": val,
                  "train_seconds": round(train_seconds, 2),
                  "seconds": round(time.perf_counter() - t_epoch, 2)}
        history.append(record)
        if cfg.progress:
            print(f"epoch {epoch}/{cfg.epochs}  loss {record['train']['loss']:.3f}  "
                  f"val loss {val['loss']:.3f}  event acc {val['event_accuracy']:.3f}  "
                  f"tag mAP {val['audio_tag_map']:.3f}  det mAP50 {val['detection_map50']:.3f}  "
                  f"({record['seconds']:.0f} s)", file=sys.stderr, flush=True)

        metrics = {"epoch": epoch, **val}
        if _better(val, best):
            best = metrics
            save_checkpoint(cfg.out / "best.pt", model, metrics=_json_safe(metrics), epoch=epoch, **ckpt_meta,
                            extra={"train_config": _json_safe(cfg.to_dict())})
        save_checkpoint(cfg.out / "last.pt", model, metrics=_json_safe(metrics), epoch=epoch, **ckpt_meta,
                        optimizer=optimizer, extra={"train_config": _json_safe(cfg.to_dict())})
        summary = {"best": best, "final": metrics, "history": history, "run_dir": str(cfg.out),
                   "data_seconds": round(t_data, 2), "seconds": round(time.perf_counter() - t_start, 2),
                   "train_samples": len(train_clips), "val_samples": len(val_clips)}
        _write_json(cfg.out / "metrics.json", summary)
    return _json_safe(summary)
