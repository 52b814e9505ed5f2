"""Fine-tune the perception student's detection path for counting, as the copy a QA model carries.

The question reader counts objects from the student's stride-4 CenterNet heatmap, and a frozen
student over-counts or scatters some objects there. ``finetune_detection`` trains the student's
video encoder and detection head (or the head alone, ``scope="head"``) on the question data's
last-frame boxes with the detection loss the student was trained with (CenterNet focal loss on the
heatmap, L1 on log box size and on the centre offset), at a low learning rate, BatchNorm statistics
fixed, and keeps the epoch whose heatmap answers the most validation count questions (without any,
the most clips' true counts) by the decoder's own rule (stride-4 peaks above 0.3, clipped at 3). A
loss on the peaks themselves (:func:`peak_loss`) charges a stray peak, which the decoder counts, its
full cross-entropy instead of the focal loss's small share.

The result is an ordinary perception checkpoint (same model name, config, geometry and labels; the
audio encoder and the other heads unchanged) that ``fusionedge qa train --checkpoint`` takes, so the
QA checkpoint and ``qa.onnx`` carry the fine-tuned copy while the bundle's ``model.onnx`` keeps the
original. Decoded clips are kept under ``cache`` (half precision, with the digests of the manifest
and geometry they came from), so a second run costs no decoding.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fusionedge.sdk.bundle import sha256_file
from fusionedge.sdk.datamanifest import Sample, manifest_path, read_manifest
from fusionedge.sdk.errors import DataError, InputError
from fusionedge.sdk.fileio import read_json, write_json_atomic
from fusionedge.sdk.spec import InputGeometry
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..dataset import ClipCache, Labels, load_clips
from ..loop import seed_everything, warmup_cosine
from ..losses import multitask_terms
from ..models.multimodal import MultimodalModel
from ..synth.questions import count_subject
from .scene_features import MAX_COUNT, PEAK_THRESHOLD, peak_counts

__all__ = ["DETECTION_SCOPES", "DetectionClips", "DetectionFinetuneConfig", "count_accuracy", "detection_clips",
           "detection_heat", "finetune_detection", "peak_loss"]

#: What ``finetune_detection`` trains: the video encoder and the detection head, or the head alone.
DETECTION_SCOPES: tuple[str, ...] = ("video", "head")
_CACHE_ARRAYS = ("video", "heatmap", "size", "offset", "mask", "counts")


@dataclass(frozen=True)
class DetectionFinetuneConfig:
    """One fine-tuning run of the student's detection path."""

    checkpoint: str  # the perception student (RUN/best.pt)
    data: str  # training manifest (or folder): its samples' boxes and count questions
    val: str  # validation manifest (or folder): its count questions choose the epoch
    out: str  # run folder: best.pt, last.pt (perception checkpoints), metrics.json
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    scope: str = "video"
    size_weight: float = 0.5  # the student's LossWeights.size
    offset_weight: float = 1.0  # the student's LossWeights.offset
    # weight of the loss on the decoder's peaks (``peak_loss``; 0: the detection loss alone)
    peak_weight: float = 1.0
    hflip: bool = True  # mirror half of the training clips (boxes mirrored with them)
    seed: int = 0
    workers: int = 2
    threads: int | None = None
    cache: str | None = None  # folder for the decoded clips (default OUT/clips)
    max_train_samples: int | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`InputError` naming the first invalid value."""
        for name in ("epochs", "batch_size", "workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "weight_decay", "size_weight", "offset_weight", "peak_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InputError(f"{name} must be a non-negative number, got {v!r}")
        if self.lr <= 0:
            raise InputError(f"lr must be positive, got {self.lr!r}")
        if self.scope not in DETECTION_SCOPES:
            raise InputError(f"scope must be one of {DETECTION_SCOPES}, got {self.scope!r}")


@dataclass
class DetectionClips:
    """Decoded clips with their last-frame CenterNet targets and per-class box counts."""

    video: torch.Tensor  # (N, T, 3, H, W) float16, the runtime's preprocessing
    heatmap: torch.Tensor  # (N, C, h, w) float32
    size: torch.Tensor  # (N, 2, h, w)
    offset: torch.Tensor  # (N, 2, h, w)
    mask: torch.Tensor  # (N, h, w)
    counts: torch.Tensor  # (N, C) int64 boxes per class in the last frame
    count_questions: list[tuple[int, int, int]]  # (clip, class, answer) of each count question

    def __len__(self) -> int:
        return int(self.video.shape[0])


def _count_questions(samples: list[Sample], objects: tuple[str, ...]) -> list[tuple[int, int, int]]:
    out = []
    for i, s in enumerate(samples):
        for q in s.questions:
            subject = count_subject(q.question) if q.type == "count" else None
            if subject in objects and q.answer.isdigit():
                out.append((i, objects.index(subject), int(q.answer)))
    return out


def _from_cache(clips: ClipCache) -> dict[str, np.ndarray]:
    counts = np.zeros((len(clips), len(clips.labels.objects)), np.int64)
    for i, lab in enumerate(clips.box_labels):
        np.add.at(counts[i], lab, 1)
    return {"video": clips.video.numpy().astype(np.float16), "counts": counts,
            **{k: clips.targets[k].numpy() for k in ("heatmap", "size", "offset", "mask")}}


def detection_clips(path: str | os.PathLike, geometry: InputGeometry, labels: Labels, cache: Path, *,
                    workers: int = 2, max_samples: int | None = None, progress: bool = True,
                    desc: str = "decode") -> DetectionClips:
    """The clips of a manifest, decoded once and kept under ``cache`` (reused while the manifest,
    geometry and labels are those it was made from).

    Raises:
        DataError: the manifest has no sample, or a sample uses an unknown label.
        MediaError: a clip cannot be decoded.
    """
    samples = read_manifest(path)
    if max_samples is not None:
        samples = samples[:max_samples]
    if not samples:
        raise DataError(f"{path}: no samples")
    key = {"manifest": sha256_file(manifest_path(path)), "samples": len(samples), "geometry": geometry.to_dict(),
           "labels": labels.to_dict()}
    arrays: dict[str, np.ndarray] | None = None
    key_file = cache / "key.json"
    if key_file.is_file():
        try:
            same = read_json(key_file) == key
            if same:
                arrays = {k: np.load(cache / f"{k}.npy") for k in _CACHE_ARRAYS}
        except (OSError, ValueError, DataError, InputError):
            arrays = None
        if arrays is not None and any(len(a) != len(samples) for a in arrays.values()):
            arrays = None
    if arrays is None:
        arrays = _from_cache(load_clips(samples, geometry, labels, workers=workers, progress=progress, desc=desc))
        cache.mkdir(parents=True, exist_ok=True)
        key_file.unlink(missing_ok=True)  # the key is written last: it marks a complete cache
        for k in _CACHE_ARRAYS:
            np.save(cache / f"{k}.npy", arrays[k])
        write_json_atomic(key_file, key)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return DetectionClips(video=t["video"], heatmap=t["heatmap"], size=t["size"], offset=t["offset"], mask=t["mask"],
                          counts=t["counts"], count_questions=_count_questions(samples, labels.objects))


def detection_heat(student: MultimodalModel, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The student's detection outputs for a batch of clips: ``(heatmap logits, size, offset)``, exactly
    the path :meth:`~.model.QAModel.context` takes to its stride-4 heatmap."""
    _, _, last_s4, context = student.video_encoder(video)
    return student.det_head(last_s4, context)


def _heat_all(student: MultimodalModel, clips: DetectionClips, batch_size: int = 64) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(clips), batch_size):
            out.append(torch.sigmoid(detection_heat(student, clips.video[start:start + batch_size].float())[0]))
    return torch.cat(out)


def count_accuracy(heat: torch.Tensor, clips: DetectionClips, objects: tuple[str, ...]) -> dict:
    """How often the decoder's count (stride-4 peaks above 0.3, clipped at 3) is the right answer.

    Returns:
        ``{"questions": acc over the count questions, "per_class": {label: acc}, "n": questions,
        "clips": {label: acc over every clip's true count, clipped at 3}, "score": the first, or
        without count questions the mean of the clips' accuracies}`` (``score`` chooses the epoch).
    """
    pred = peak_counts(heat, PEAK_THRESHOLD, MAX_COUNT).long()  # (N, C)
    qs = clips.count_questions
    hits = [int(pred[i, c]) == a for i, c, a in qs]
    per: dict[str, list[bool]] = {}
    for (_, c, _), h in zip(qs, hits):
        per.setdefault(objects[c], []).append(h)
    truth = clips.counts.clamp(max=MAX_COUNT)
    clip_acc = {objects[c]: float((pred[:, c] == truth[:, c]).float().mean()) for c in range(len(objects))}
    return {"questions": float(np.mean(hits)) if hits else float("nan"), "n": len(hits),
            "per_class": {k: float(np.mean(v)) for k, v in sorted(per.items())}, "clips": clip_acc,
            "score": float(np.mean(hits)) if hits else float(np.mean(list(clip_acc.values())))}


def _trainable(student: MultimodalModel, scope: str) -> list[torch.nn.Parameter]:
    for p in student.parameters():
        p.requires_grad_(False)
    modules = [student.det_head]
    if scope == "video":
        modules.append(student.video_encoder)
    params = []
    for m in modules:
        for name, p in m.named_parameters():
            if name.startswith("frame_proj"):  # the reader's per-frame tokens: no detection gradient reaches it
                continue
            p.requires_grad_(True)
            params.append(p)
    return params


def _flip(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
    """Mirror the clips of ``rows`` left-right, in place, with their targets (offsets mirrored within a cell)."""
    if not len(rows):
        return
    for k in ("video", "heatmap", "size", "mask"):
        batch[k][rows] = batch[k][rows].flip(-1)
    off = batch["offset"][rows].flip(-1)
    on = batch["mask"][rows].unsqueeze(1) > 0
    # a centre at cell x + o becomes cell (w - 1 - x) + (1 - o); clamp keeps it inside [0, 1)
    off[:, 0:1] = torch.where(on, (1.0 - off[:, 0:1]).clamp(0.0, 0.999), off[:, 0:1])
    batch["offset"][rows] = off


def peak_loss(logits: torch.Tensor, target: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """A loss on the heatmap's peaks as the decoder finds them (3x3 local maxima), normalised by the centres.

    The CenterNet focal loss weighs a wrong peak of heat ``p`` by ``p²`` and spreads over every
    pixel: a stray peak of 0.5, which the decoder counts as an object, costs a quarter of its
    cross-entropy there. Here only the decoder's peaks count: a peak above ``floor`` that is not
    within one cell of a true centre of its class is pushed toward 0 with the full cross-entropy, and
    the highest heat within one cell of each true centre toward 1 (focal-weighted, so a centre already
    found costs little).

    Args:
        logits: ``(B, C, h, w)`` heatmap logits.
        target: ``(B, C, h, w)`` the CenterNet targets (exactly 1 at the centres).
        floor: peaks at or below this heat are ignored (the background's many tiny maxima).
    """
    heat = torch.sigmoid(logits)
    centre = (target >= 1.0).float()
    near = F.max_pool2d(centre, 3, 1, 1)  # within one cell of a centre
    with torch.no_grad():
        peak = (heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > floor)
    stray = (peak & (near == 0)).float()
    neg = -(F.logsigmoid(-logits) * stray).sum()
    best = F.max_pool2d(heat, 3, 1, 1).clamp(1e-6, 1.0 - 1e-6)  # the highest heat around each cell
    pos = -(torch.log(best) * (1.0 - best) ** 2 * centre).sum()
    return (neg + pos) / centre.sum().clamp(min=1.0)


def finetune_detection(cfg: DetectionFinetuneConfig) -> dict:
    """Fine-tune the student's detection path (see the module docstring).

    Raises:
        InputError: a config value is invalid.
        DataError: a manifest is invalid or the loss is not finite.
        CheckpointError: the student checkpoint cannot be loaded or the result cannot be written.
        MediaError: a clip cannot be decoded.

    Returns:
        The summary written to ``metrics.json`` (per-epoch history with validation count accuracy,
        before and best).
    """
    cfg.check()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    gen = seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"qa_detection_finetune": asdict(cfg)})
    student, info = load_checkpoint(cfg.checkpoint)
    if student.video_encoder is None or student.det_head is None or not hasattr(student.det_head, "heatmap"):
        raise InputError(f"{cfg.checkpoint}: the student has no video encoder with a CenterNet detection head")
    geometry = InputGeometry.from_dict(info["geometry"])
    labels = Labels(**{k: tuple(v) for k, v in info["labels"].items()})
    cache = Path(cfg.cache) if cfg.cache is not None else out / "clips"
    train = detection_clips(cfg.data, geometry, labels, cache / "train", workers=cfg.workers,
                            max_samples=cfg.max_train_samples, progress=cfg.progress, desc="decode train")
    val = detection_clips(cfg.val, geometry, labels, cache / "val", workers=cfg.workers, progress=cfg.progress,
                          desc="decode val")
    student.eval()
    before = count_accuracy(_heat_all(student, val), val, labels.objects)
    params = _trainable(student, cfg.scope)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    common = {"model_name": info["model_name"], "model_config": info["model_config"], "geometry": geometry,
              "labels": info["labels"]}
    extra = {"qa_detection_finetune": asdict(cfg), "finetuned_from": sha256_file(cfg.checkpoint)}
    history, best = [], None
    t0, step = time.perf_counter(), 0
    bar = tqdm(range(1, cfg.epochs + 1), desc="detection finetune", unit="epoch", disable=not cfg.progress)
    for epoch in bar:
        student.eval()  # BatchNorm statistics and dropout stay as trained
        order = torch.randperm(len(train), generator=gen)
        sums: dict[str, float] = {"heatmap": 0.0, "size": 0.0, "offset": 0.0, "peaks": 0.0}
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            batch = {"video": train.video[idx].float(), "heatmap": train.heatmap[idx].clone(),
                     "size": train.size[idx].clone(), "offset": train.offset[idx].clone(),
                     "mask": train.mask[idx].clone()}
            if cfg.hflip:
                _flip(batch, torch.nonzero(torch.rand(len(idx), generator=gen) < 0.5).squeeze(1))
            for g in opt.param_groups:  # cosine to 5% of the peak, no warm-up
                g["lr"] = warmup_cosine(step, cfg.lr, 0, total, 0.05)
            logits, size, offset = detection_heat(student, batch["video"])
            batch["presence"] = torch.ones(len(idx), 2)  # every clip's frames are seen
            terms = multitask_terms({"det_heatmap": logits, "det_size": size, "det_offset": offset}, batch)
            loss = terms["heatmap"] + cfg.size_weight * terms["size"] + cfg.offset_weight * terms["offset"]
            if cfg.peak_weight > 0:
                terms["peaks"] = peak_loss(logits, batch["heatmap"])
                loss = loss + cfg.peak_weight * terms["peaks"]
            if not torch.isfinite(loss):
                raise DataError(f"epoch {epoch}: the detection loss is not finite ({loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            step += 1
            for k, v in terms.items():
                sums[k] += v.item() * len(idx) / len(train)
        acc = count_accuracy(_heat_all(student, val), val, labels.objects)
        row = {"epoch": epoch, "loss": sums, "val_count": acc, "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        bar.set_postfix(count=f"{acc['questions']:.3f}")
        metrics = {"val_count_accuracy": acc["score"], "val_count": acc}
        save_checkpoint(out / "last.pt", student, metrics=metrics, epoch=epoch, extra=extra, **common)
        if best is None or acc["score"] > best["val_count"]["score"]:
            best = row
            save_checkpoint(out / "best.pt", student, metrics=metrics, epoch=epoch, extra=extra, **common)
    summary = {"before": before, "best_epoch": best["epoch"] if best else None, "best": best, "history": history,
               "train_clips": len(train), "val_clips": len(val), "val_count_questions": len(val.count_questions),
               "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(out / "metrics.json", summary)
    return summary
