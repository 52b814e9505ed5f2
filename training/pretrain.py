"""Self-supervised audio-visual pretraining: ``pretrain(PretrainConfig(data=..., out=...))``.

No labels are read: a clip's own audio is the supervision. The encoders of a ``MultimodalModel``
are trained with the objectives of ``contrastive.py`` — a symmetric InfoNCE between a video tower
and an audio tower (the towers keep the clips' order in time), with the clip's own audio
time-shifted as hard negatives, so that the encoders learn *when* a sound goes with what is seen
and not only *which* sound; with ``match_weight > 0`` a correspondence loss through the model's own
fusion, which pretrains the fusion too; and with ``view_weight > 0`` a video-only contrast between two
views of each clip (``view_still``: with the clip frozen in time as a hard negative), which teaches
the video encoder what no sound goes with, such as whether an emergency vehicle's light bar is on.
Why each term is there, and what was tried and measured, is in ``training/EXPERIMENTS.md``.

One loop, like ``train.py``, from the building blocks of ``loop.py``: decode once, per epoch set
the learning rate (warm-up, cosine), forward, losses, backward, clip, step, clamp the temperature;
then measure on the held-out split and write the run folder:

    out/pretrain.pt     checkpoint of the epoch ``better_pretrain_epoch`` picks (with the view term the best
                        held-out view top-1, else audio→video top-1; ties: lower loss): the full
                        MultimodalModel (its encoders are trained, and its fusion with
                        ``match_weight``; the task heads keep their random initialization), with
                        ``extra = {"kind": "pretrain", "pretrain_config": {...}, "pretrained": [the
                        state-dict prefixes trained], "projections": <state dict of the projection
                        heads, the match head and the logit scale>}`` (tensors: a checkpoint is a
                        ``torch.save`` dict that ``weights_only`` loading reads back)
    out/metrics.json    per-epoch history, the best epoch, chance levels, seconds
    out/config.json     the PretrainConfig and the model config

Held-out metrics (labels ignored): audio→video retrieval top-1/top-5 over the whole split (each
audio ranks all N videos; chance 1/N and 5/N), video→audio top-1, and shift discrimination — the
fraction of clips whose true audio scores above every one of its time-shifted copies (chance
``1/(1 + hard_negatives)``), and with the view term view top-1 (each clip's second view ranks all N
clips; chance 1/N) and, with ``view_still``, still discrimination (the fraction of clips that score
their moving second view above its still copy; chance 1/2). Ties count against the model, so a
collapsed embedding scores 0.

``load_pretrained_encoders(model, "RUN/pretrain.pt")`` copies the encoder weights (and a pretrained
fusion, where the model's is built the same) into a model about to be trained with labels
(``fusionedge train --init``; ``--frozen-encoder-epochs`` / ``--encoder-lr-scale`` fine-tune gently).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from tqdm import tqdm

from fusionedge.sdk.datamanifest import Sample
from fusionedge.sdk.errors import DataError
from fusionedge.sdk.fileio import json_safe, write_json_atomic

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .contrastive import (
    MAX_LOGIT_SCALE,
    ContrastiveHeads,
    contrastive_loss,
    evaluate_pretrain,
    match_loss,
    retrieval_metrics,
    shifted_audio,
    still_copy,
    video_view,
    view_loss,
)
from .dataset import Augment, ClipCache, Labels, iterate_batches, load_clips
from .distributed import DistContext, resolve_device
from .loop import (
    ENCODER_PREFIXES,
    check_finite_loss,
    lr_at,
    param_groups,
    read_split_samples,
    resolve_model_config,
    seed_everything,
)
from .models.multimodal import ModelConfigError, MultimodalModel
from .run_config import RunConfig

__all__ = [
    "ENCODER_PREFIXES",
    "ContrastiveHeads",
    "PretrainConfig",
    "better_pretrain_epoch",
    "contrastive_loss",
    "evaluate_pretrain",
    "load_pretrained_encoders",
    "match_loss",
    "pretrain",
    "retrieval_metrics",
    "shifted_audio",
    "still_copy",
    "video_view",
    "view_loss",
]

#: ModelConfig fields that define the audio front end's fixed (non-learned) buffers.
_FRONTEND_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max")


@dataclass
class PretrainConfig(RunConfig):
    """One pretraining run. Defaults suit ~2,000 synthetic clips on 2 CPU cores.

    The data, model, optimisation and housekeeping options are ``RunConfig``'s (labels in the data
    are not used; the model needs both video and audio); these are pretraining's own.
    """

    batch_size: int = 64  # clips per step: each row's negatives are the other B-1 audios (+ hard ones)
    lr: float = 2e-3  # peak AdamW learning rate
    embed_dim: int = 128  # width of the shared embedding space
    proj_hidden: int = 256  # hidden width of each projection MLP
    temperature: float = 0.07  # initial softmax temperature (learned as a logit scale <= 100)
    hard_negatives: int = 2  # time-shifted copies of the clip's own audio per row (0: none)
    match_weight: float = 1.0  # correspondence loss through the model's fusion (0: the fusion is not pretrained)
    view_weight: float = 1.0  # video-video InfoNCE between two views of each clip (0: off)
    view_min_scale: float = 0.7  # the second view is a random crop of at least this fraction of each side
    view_temperature: float = 0.1  # fixed softmax temperature of the view loss (SimCLR's 0.1)
    view_still: bool = True  # with the view loss: each clip's still copy (a frame repeated) is a hard negative
    min_shift_seconds: float = 0.25  # shifts lie in [min, clip_seconds - min]

    KEY_ORDER: ClassVar[tuple[str, ...]] = (
        "data", "out", "val_data", "model", "model_overrides", "device", "geometry", "epochs", "batch_size",
        "lr", "min_lr_ratio", "warmup_epochs", "weight_decay", "grad_clip", "embed_dim", "proj_hidden",
        "temperature", "hard_negatives", "match_weight", "view_weight", "view_min_scale", "view_temperature",
        "view_still",
        "min_shift_seconds", "hflip", "audio_gain_db", "seed", "num_workers", "max_train_samples",
        "max_val_samples", "progress")

    def _problems(self) -> list[str]:
        bad = super()._problems()
        for name in ("embed_dim", "proj_hidden"):
            if getattr(self, name) < 1:
                bad.append(f"{name}={getattr(self, name)} (need >= 1)")
        if not (0.0 < self.temperature and 1.0 / self.temperature <= MAX_LOGIT_SCALE):
            bad.append(f"temperature={self.temperature} (need {1 / MAX_LOGIT_SCALE} .. inf)")
        for name in ("match_weight", "view_weight"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                bad.append(f"{name}={v} (need >= 0)")
        if not 0.0 < self.view_min_scale <= 1.0:
            bad.append(f"view_min_scale={self.view_min_scale} (need 0 < s <= 1)")
        if not (self.view_temperature > 0 and math.isfinite(self.view_temperature)):
            bad.append(f"view_temperature={self.view_temperature} (need > 0)")
        if self.hard_negatives < 0:
            bad.append(f"hard_negatives={self.hard_negatives} (need >= 0)")
        clip = self.geometry.clip_seconds
        if not 0.0 < self.min_shift_seconds <= clip / 2:
            bad.append(f"min_shift_seconds={self.min_shift_seconds} (need 0 < s <= clip_seconds/2 = {clip / 2})")
        return bad


# ---------------------------------------------------------------------------------------- the loop


def _unlabelled(sample: Sample) -> Sample:
    """The sample without its event, audio tags and boxes (pretraining learns from the clip alone)."""
    return replace(sample, event=None, audio_tags=(), boxes=())


def _load_splits(cfg: PretrainConfig) -> tuple[ClipCache, ClipCache]:
    """Decode both splits (labels not required), keeping the clips with audio."""
    labels = Labels()
    # no label is read: any vocabulary is accepted, and the labels are dropped before decoding
    train_samples, val_samples = read_split_samples(cfg, None)
    train_samples = [_unlabelled(s) for s in train_samples if s.audio is not None][: cfg.max_train_samples]
    val_samples = [_unlabelled(s) for s in val_samples if s.audio is not None][: cfg.max_val_samples]
    if len(train_samples) < 2 or len(val_samples) < 2:
        raise DataError(f"{cfg.data}: pretraining needs at least two training and two held-out clips with audio "
                        f"(got {len(train_samples)} and {len(val_samples)})")
    kw = dict(workers=cfg.num_workers, progress=cfg.progress)
    train = load_clips(train_samples, cfg.geometry, labels, desc="decode train", **kw)
    val = load_clips(val_samples, cfg.geometry, labels, desc="decode val", **kw)
    return train, val


def better_pretrain_epoch(a: dict, b: dict | None) -> bool:
    """Checkpoint selection: is held-out result ``a`` better than the best so far ``b`` (None: none yet)?

    Higher view top-1 (audio→video top-1 without the view term), then lower loss. View top-1 is the
    measure of the video encoder that a few-label fine-tuning starts from; audio→video top-1 stays
    near chance on scenes whose sounds are alike, and would pick among the epochs almost at random.
    """
    key = "view_top1" if "view_top1" in a else "a2v_top1"
    return b is None or (a[key], -a["loss"]) > (b[key], -b["loss"])


def _batch_loss(model: MultimodalModel, heads: ContrastiveHeads, video: torch.Tensor, audio: torch.Tensor,
                cfg: PretrainConfig, min_shift: int,
                gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The pretraining loss of one batch: the towers' contrast, plus the match and view terms when on.

    Draws from ``gen`` in a fixed order (shifts, then views, then stills), so a run is reproducible.

    Returns:
        ``(loss, {term name: value})`` for the epoch's training means.
    """
    b, k = len(audio), cfg.hard_negatives
    hard, _ = shifted_audio(audio, k, min_shift, gen)  # (B, K, S)
    v_tokens, per_frame = model.video_encoder.frame_features(video)
    a_tokens = model.audio_encoder(torch.cat([audio, hard.flatten(0, 1)]))[0]  # (B(1+K), Na, Ca)
    v, emb = heads.project_video(v_tokens, per_frame), heads.project_audio(a_tokens)  # (B, D), (B(1+K), D)
    hard_emb = emb[b:].reshape(b, k, emb.shape[1]) if k else None  # (B, K, D)
    loss, parts = contrastive_loss(v, emb[:b], hard_emb, heads.logit_scale)
    if heads.match is not None:  # the fusion in the loop; the first shifted copy is its hard negative
        first_hard = a_tokens[b:].unflatten(0, (b, k))[:, 0] if k else None  # (B, Na, Ca)
        m_loss, parts["match_accuracy"] = match_loss(model, heads, v_tokens, per_frame, a_tokens[:b],
                                                     first_hard)
        parts["loss_match"] = float(m_loss.detach())
        loss = loss + cfg.match_weight * m_loss
    if heads.view_proj is not None:  # the same clips seen again: cropped, flipped, re-exposed
        second = video_view(video, cfg.view_min_scale, gen)
        if cfg.view_still:  # and that view frozen in time, in the same forward pass
            second = torch.cat([second, still_copy(second, gen)])
        z2 = heads.project_view(*model.video_encoder.frame_features(second))
        v_loss = view_loss(heads.project_view(v_tokens, per_frame), z2[:b], cfg.view_temperature,
                           z2[b:] if cfg.view_still else None)
        parts["loss_view"] = float(v_loss.detach())
        loss = loss + cfg.view_weight * v_loss
    return loss, parts


def _print_epoch(record: dict, chance: dict, epochs: int) -> None:
    """One line per epoch on stderr: training loss, temperature, held-out metrics against chance."""
    val = record["val"]
    print(f"pretrain {record['epoch']}/{epochs}  loss {record['train']['loss']:.3f}  "
          f"T {record['temperature']:.3f}  "
          f"val loss {val['loss']:.3f}  a->v top1 {val['a2v_top1']:.3f} (chance {chance['a2v_top1']:.3f})  "
          f"top5 {val['a2v_top5']:.3f}  v->a top1 {val['v2a_top1']:.3f}  "
          f"shift {val['shift_discrimination']:.3f} (chance {chance['shift_discrimination']:.3f})  "
          + (f"view top1 {val['view_top1']:.3f}  " if "view_top1" in val else "")
          + (f"still {val['still_discrimination']:.3f}  " if "still_discrimination" in val else "")
          + f"({record['seconds']:.0f} s)", file=sys.stderr, flush=True)


def pretrain(cfg: PretrainConfig) -> dict:
    """Pretrain the encoders of ``cfg.model`` on unlabelled clips and write the run folder.

    Args:
        cfg: the run's configuration (see the module docstring for what is learned and written).

    Raises:
        ModelConfigError: unknown model or override, or a model without both video and audio.
        DataError: missing/invalid manifests, or fewer than two clips with audio in a split.
        MediaError: a media file cannot be decoded.
        CheckpointError: the checkpoint cannot be written.
        FusionEdgeError: the loss became NaN/Inf.

    Returns:
        ``{"best": {epoch, held-out metrics}, "final": {...}, "history": [...], "chance": {...},
        "checkpoint", "run_dir", "seconds", "data_seconds", "train_samples", "val_samples"}``.
    """
    t_start = time.perf_counter()
    g = cfg.geometry
    labels = Labels()
    mcfg = resolve_model_config(cfg.model, g, labels, cfg.model_overrides)
    if set(mcfg.modalities) != {"video", "audio"}:  # fail before decoding anything
        raise ModelConfigError(f"pretraining matches video with audio: model {cfg.model!r} has only "
                               f"{', '.join(mcfg.modalities)}; use a model with both (e.g. fusion_student)")
    gen = seed_everything(cfg.seed)
    device = resolve_device(cfg.device, DistContext())

    # -- data: decode once, keep in memory; labels are never read
    train_clips, val_clips = _load_splits(cfg)
    t_data = time.perf_counter() - t_start

    # -- model: the encoders of a MultimodalModel + the two projection towers
    torch.manual_seed(cfg.seed)  # weights depend only on the seed, not on what decoding consumed
    model = MultimodalModel(mcfg)
    with_fusion = cfg.match_weight > 0
    heads = ContrastiveHeads(model.video_encoder.out_channels, mcfg.audio_dim, cfg.embed_dim, cfg.proj_hidden,
                             cfg.temperature, time_steps=mcfg.clip_frames,
                             fusion_dim=model.fusion.out_dim if with_fusion else None, view=cfg.view_weight > 0)
    model.to(device)
    heads.to(device)
    # what the optimizer sees: the encoders (and, with match_weight, the fusion); the task heads stay untouched
    trained = nn.ModuleDict({"video_encoder": model.video_encoder, "audio_encoder": model.audio_encoder,
                             **({"fusion": model.fusion} if with_fusion else {}), "heads": heads})
    pretrained_prefixes = [*ENCODER_PREFIXES, *(["fusion."] if with_fusion else [])]
    optimizer = torch.optim.AdamW(param_groups(trained, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))
    cfg.out.mkdir(parents=True, exist_ok=True)  # set up: from here on the run writes its folder
    write_json_atomic(cfg.out / "config.json", {"pretrain": cfg.to_dict(), "model_name": cfg.model,
                                                "model_config": mcfg.to_dict(), "labels": labels.to_dict()})

    steps_per_epoch = math.ceil(len(train_clips) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    augment = Augment(modality_dropout=0.0, hflip=cfg.hflip, audio_gain_db=cfg.audio_gain_db)
    min_shift = int(round(cfg.min_shift_seconds * g.sample_rate))
    path = cfg.out / "pretrain.pt"
    eval_kw = dict(hard_negatives=cfg.hard_negatives, min_shift_seconds=cfg.min_shift_seconds,
                   view_min_scale=cfg.view_min_scale, view_still=cfg.view_still, seed=cfg.seed,
                   batch_size=cfg.batch_size, device=device)

    history: list[dict] = []
    best: dict | None = None
    chance: dict = {}
    step = 0

    def summary() -> dict:
        final = {"epoch": history[-1]["epoch"], **history[-1]["val"]} if history else None
        return {"best": best, "final": final, "history": history, "chance": chance, "checkpoint": str(path),
                "run_dir": str(cfg.out), "data_seconds": round(t_data, 2),
                "seconds": round(time.perf_counter() - t_start, 2), "train_samples": len(train_clips),
                "val_samples": len(val_clips)}

    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        trained.train()
        sums: dict[str, float] = {}
        seen = 0
        batches = iterate_batches(train_clips, cfg.batch_size, shuffle=True, generator=gen, augment=augment)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"pretrain {epoch}/{cfg.epochs}", unit="batch",
                   disable=not cfg.progress, leave=False)
        for batch in bar:
            lr = lr_at(step, total_steps, warmup, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # on the device first: the shifts, views and stills are made there (random draws stay on
            # the CPU generator, so a run's numbers do not depend on where they are made)
            audio = batch["audio"].to(device, non_blocking=True)  # (B, S), gain applied: shifted copies share it
            video = batch["video"].to(device, non_blocking=True)  # (B, T, C, H, W)
            b = len(audio)
            loss, parts = _batch_loss(model, heads, video, audio, cfg, min_shift, gen)
            check_finite_loss(loss, epoch, step, cfg.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.grad_clip)
            optimizer.step()
            heads.clamp_()
            step += 1
            seen += b
            for name, val in {"loss": float(loss.detach()), **parts}.items():
                sums[name] = sums.get(name, 0.0) + val * b
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", T=f"{heads.temperature:.3f}", lr=f"{lr:.1e}")
        bar.close()
        train_seconds = time.perf_counter() - t_epoch

        val = evaluate_pretrain(model, heads, val_clips, **eval_kw)
        chance = val.pop("chance")
        record = {"epoch": epoch, "lr": lr, "temperature": heads.temperature,
                  "train": {name: s / seen for name, s in sums.items()}, "val": val,
                  "train_seconds": round(train_seconds, 2), "seconds": round(time.perf_counter() - t_epoch, 2)}
        history.append(record)
        if cfg.progress:
            _print_epoch(record, chance, cfg.epochs)
        if better_pretrain_epoch(val, best):
            best = {"epoch": epoch, **val}
            extra = {"kind": "pretrain", "pretrain_config": json_safe(cfg.to_dict()),
                     "pretrained": pretrained_prefixes,
                     "projections": {n: t.detach().cpu() for n, t in heads.state_dict().items()}}
            save_checkpoint(path, model, model_name=cfg.model, model_config=mcfg.to_dict(), geometry=g,
                            labels=labels.to_dict(), metrics=json_safe(best), epoch=epoch, extra=extra)
        write_json_atomic(cfg.out / "metrics.json", summary())
    return json_safe(summary())


# ------------------------------------------------------------------------------- using the encoders


def load_pretrained_encoders(model: MultimodalModel, path: str | Path) -> list[str]:
    """Copy the encoder weights of a checkpoint (a pretrain run's ``pretrain.pt``, or any) into ``model``.

    Only keys under ``ENCODER_PREFIXES`` are copied, and only for encoders that both the model and
    the checkpoint have (an audio-only checkpoint initializes only the audio encoder). An encoder
    that is copied must match exactly: the same keys and shapes, and the same audio front end.
    Nothing is copied unless everything fits. A fusion that pretraining trained (``match_weight``,
    listed in ``extra["pretrained"]``) is copied as well when the model's fusion has exactly its keys
    and shapes; a model fused otherwise keeps its own fusion and still gets the encoders.

    Args:
        model: the model to initialize (in place).
        path: the checkpoint file.

    Raises:
        CheckpointError: the file is missing or not a checkpoint, it has no encoder weights this
            model has, or an encoder differs in architecture (keys, shapes, front end).

    Returns:
        The state-dict keys that were loaded, sorted.
    """
    state = read_checkpoint(path)
    saved, own = state["state_dict"], model.state_dict()
    chosen: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for prefix in ENCODER_PREFIXES:
        mine = {k for k in own if k.startswith(prefix)}
        theirs = {k for k in saved if k.startswith(prefix)}
        if not mine or not theirs:
            continue
        missing, unexpected = sorted(mine - theirs), sorted(theirs - mine)
        if missing or unexpected:
            problems.append(f"{prefix[:-1]} has other layers (missing {_few(missing)}, unexpected {_few(unexpected)})")
            continue
        shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(mine)
                  if saved[k].shape != own[k].shape]
        if shapes:
            problems.append(f"{prefix[:-1]} shapes differ: {_few(shapes)}")
            continue
        chosen.update({k: saved[k] for k in mine})
    if any(k.startswith("audio_encoder.") for k in chosen):
        cfg = state["model_config"]
        differ = [f"{f} {cfg.get(f)!r} vs {getattr(model.config, f)!r}" for f in _FRONTEND_FIELDS
                  if cfg.get(f) != getattr(model.config, f)]
        if differ:
            problems.append(f"audio front end differs: {', '.join(differ)}")
    # a fusion trained by pretraining (match_weight > 0) comes along when this model's fusion is built the same
    if "fusion." in state.get("extra", {}).get("pretrained", ()) and chosen and not problems:
        mine = {k for k in own if k.startswith("fusion.")}
        theirs = {k for k in saved if k.startswith("fusion.")}
        if mine and mine == theirs and all(saved[k].shape == own[k].shape for k in mine):
            chosen.update({k: saved[k] for k in mine})
    if problems:
        raise CheckpointError(f"{path}: encoder weights of model {state['model_name']!r} do not fit this model "
                              f"(different architecture): " + "; ".join(problems))
    if not chosen:
        raise CheckpointError(f"{path}: no encoder weights ({', '.join(p + '*' for p in ENCODER_PREFIXES)}) "
                              f"that this model has")
    model.load_state_dict(chosen, strict=False)
    return sorted(chosen)


def _few(items: list[str], n: int = 3) -> str:
    if not items:
        return "none"
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
