"""Train scene question answering on top of a trained perception student.

``train_qa(QATrainConfig(checkpoint=..., data=..., val=..., out=...))``:

1. reads the train and validation manifests (their samples' ``questions``), learns the WordPiece
   question vocabulary over the training questions and the answer vocabulary (:mod:`.vocab`);
2. loads the student from its checkpoint, freezes it, and computes each clip's context once
   (:mod:`.data`);
3. trains the :class:`~.model.QuestionReader` with AdamW under a warm-up and cosine schedule
   (``training.loop.warmup_cosine``), cross-entropy on the answer, and **modality dropout**: per question,
   the video, the audio or both are masked out of attention (``modality_dropout`` = probabilities
   of the three), with the answer unchanged, so the reader learns what each sensor set can answer
   and, with none, the answer prior (which is what makes a question it cannot answer come out
   unsure); and ``unanswerable`` of the rows get garbled words and a uniform target, so that a question
   it cannot read comes out unsure as well;
   The contexts are kept in ``OUT/context.pt`` with the digests of the checkpoint and the
   manifests they came from, so a second run on the same inputs (another seed, learning rate or
   reader size) skips the decoding;
4. after every epoch scores validation accuracy with the clips' own sensors and keeps
   ``best.pt`` (highest) and ``last.pt``; writes ``metrics.json`` (per-epoch history, the best
   epoch's full validation evaluation with ablations and the question-only baseline) and
   ``config.json``.

The student is frozen rather than fine-tuned: its context is computed once, so an epoch costs a
fraction of a second of reader work instead of a pass of the convolutional encoders over every clip
(training/EXPERIMENTS.md has the comparison that was affordable).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from fusionedge.sdk.bundle import sha256_file
from fusionedge.sdk.datamanifest import manifest_path, read_manifest
from fusionedge.sdk.errors import DataError, InputError
from fusionedge.sdk.fileio import write_json_atomic, write_text_atomic
from fusionedge.sdk.spec import InputGeometry
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..loop import seed_everything, warmup_cosine
from .checkpoint import save_qa_checkpoint
from .data import CONTEXT_CACHE, build_examples, encode_questions, load_cached_examples, save_cached_examples
from .evaluate import evaluate_reader, reader_logits
from .model import CONTEXT_KEYS, QAModel, QuestionReader, reader_config_for
from .scene_features import SCENE_FEATURES_VERSION
from .vocab import DEFAULT_MAX_TOKENS, DEFAULT_VOCAB_SIZE, answer_vocabulary, train_tokenizer

__all__ = ["QATrainConfig", "train_qa"]


@dataclass(frozen=True)
class QATrainConfig:
    """One QA training run."""

    checkpoint: str  # the trained perception student (RUN/best.pt)
    data: str  # training manifest (or folder) with questions
    val: str  # validation manifest (or folder) with questions
    out: str  # run folder
    epochs: int = 12
    batch_size: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_epochs: float = 1.0
    weight_decay: float = 0.01
    # per question: P(video masked), P(audio masked), P(both masked); the rest keeps the clip's own
    modality_dropout: tuple[float, float, float] = (0.2, 0.2, 0.1)
    dim: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    vocab_size: int = DEFAULT_VOCAB_SIZE
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int = 0
    workers: int = 2  # decoding threads
    threads: int | None = None  # torch intra-op threads for the reader (None: torch's default)
    # share of training rows whose question words are garbled (each word piece replaced by a random one
    # with probability 1/2) and whose target is the uniform distribution over the answers: a question the
    # reader cannot read should come out unsure, not as a confident guess (0: off)
    unanswerable: float = 0.1
    max_train_samples: int | None = None
    # the reader also reads the scene features (stride-4 peak counts, lamp colour, motion; .scene_features)
    scene_features: bool = True
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`InputError` naming the first invalid value."""
        for name in ("epochs", "batch_size", "dim", "layers", "heads", "vocab_size", "max_tokens", "workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.dim % self.heads:
            raise InputError(f"dim must be a multiple of heads ({self.heads}), got {self.dim}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        p = self.modality_dropout
        if len(p) != 3 or any(not 0.0 <= v <= 1.0 for v in p) or sum(p) > 1.0:
            raise InputError(f"modality_dropout must be 3 probabilities summing to at most 1, got {p!r}")
        if not 0.0 <= self.unanswerable <= 0.5:
            raise InputError(f"unanswerable must be a share in [0, 0.5], got {self.unanswerable!r}")


def _dropped_presence(own: torch.Tensor, probs: tuple[float, float, float], gen: torch.Generator) -> torch.Tensor:
    """The clips' presence with video, audio or both masked per row at the given rates."""
    u = torch.rand(own.shape[0], generator=gen)
    pv, pa, pb = probs
    video_off = (u < pv) | ((u >= pv + pa) & (u < pv + pa + pb))
    audio_off = ((u >= pv) & (u < pv + pa + pb))
    keep = torch.stack([~video_off, ~audio_off], dim=1).float()
    return own * keep


def _garble(ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, vocab_size: int,
            gen: torch.Generator) -> torch.Tensor:
    """``ids`` with, in the selected ``rows``, each word piece replaced by a random one with probability 1/2."""
    noise = torch.randint(3, vocab_size, ids.shape, generator=gen)  # ids 0-2 are [PAD], [UNK], [CLS]
    swap = (torch.rand(ids.shape, generator=gen) < 0.5) & (mask > 0) & rows[:, None]
    swap[:, 0] = False  # keep [CLS]
    return torch.where(swap, noise, ids)


def train_qa(cfg: QATrainConfig) -> dict:
    """Run QA training (see the module docstring).

    Raises:
        InputError: a config value is invalid.
        DataError: a manifest is invalid or carries no questions.
        CheckpointError: the student checkpoint cannot be loaded.
        MediaError: a clip cannot be decoded.

    Returns:
        The summary written to ``metrics.json``.
    """
    cfg.check()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    gen = seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"qa_train": asdict(cfg)})
    train_samples = read_manifest(cfg.data)
    if cfg.max_train_samples is not None:
        train_samples = train_samples[:cfg.max_train_samples]
    val_samples = read_manifest(cfg.val)
    train_q = [q for s in train_samples for q in s.questions]
    if not train_q:
        raise DataError(f"{cfg.data}: no sample carries 'questions'")
    tokenizer_json, tokenizer = train_tokenizer((q.question for q in train_q), vocab_size=cfg.vocab_size,
                                                max_tokens=cfg.max_tokens)
    write_text_atomic(out / "qa_tokenizer.json", tokenizer_json)
    answers = answer_vocabulary(q.answer for q in train_q)
    types = tuple(sorted({q.type for q in train_q}))

    student, info = load_checkpoint(cfg.checkpoint)
    geometry = InputGeometry.from_dict(info["geometry"])
    rc = reader_config_for(student, vocab_size=tokenizer.vocab_size, max_tokens=cfg.max_tokens,
                           num_answers=len(answers), dim=cfg.dim, heads=cfg.heads, layers=cfg.layers,
                           dropout=cfg.dropout, scene=cfg.scene_features)
    model = QAModel(student, QuestionReader(rc))
    key = {"checkpoint": sha256_file(cfg.checkpoint), "max_train_samples": cfg.max_train_samples,
           "data": sha256_file(manifest_path(cfg.data)), "val": sha256_file(manifest_path(cfg.val)),
           "vocab_size": cfg.vocab_size, "max_tokens": cfg.max_tokens,
           "context_keys": list(CONTEXT_KEYS), "scene_features_version": SCENE_FEATURES_VERSION}
    cached = load_cached_examples(out / CONTEXT_CACHE, key)
    if cached is None:
        train_ex = build_examples(model, train_samples, geometry, tokenizer, answers, workers=cfg.workers,
                                  progress=cfg.progress, desc="context train")
        val_ex = build_examples(model, val_samples, geometry, tokenizer, answers, workers=cfg.workers,
                                progress=cfg.progress, desc="context val")
        save_cached_examples(out / CONTEXT_CACHE, key, train_ex, val_ex)
    else:  # the contexts are reused; the questions are encoded with this run's tokenizer
        train_ex, val_ex = (encode_questions(ex, tokenizer, answers) for ex in cached)
    reader = model.reader
    decay = [p for n, p in reader.named_parameters() if p.ndim >= 2 and not n.startswith(("token", "position"))]
    other = [p for n, p in reader.named_parameters() if not (p.ndim >= 2 and not n.startswith(("token", "position")))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr)
    rows_ok = torch.nonzero(train_ex.answer >= 0).squeeze(1)
    steps_per_epoch = max(1, math.ceil(len(rows_ok) / cfg.batch_size))
    total, warmup = cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_epochs * steps_per_epoch))
    student_info = {k: info[k] for k in ("model_name", "model_config", "geometry", "labels")}
    history, best, best_eval, step = [], None, None, 0
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc="qa train", unit="epoch", disable=not cfg.progress)
    for epoch in bar:
        reader.train()
        order = rows_ok[torch.randperm(len(rows_ok), generator=gen)]
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            own = train_ex.presence[train_ex.clip[rows]]
            batch = train_ex.batch(rows, _dropped_presence(own, cfg.modality_dropout, gen))
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, cfg.lr, warmup, total - warmup, cfg.min_lr_ratio)
            *context, presence, ids, mask = batch
            target = F.one_hot(train_ex.answer[rows], len(answers)).float()
            if cfg.unanswerable > 0:
                garbled = torch.rand(len(rows), generator=gen) < cfg.unanswerable
                ids = _garble(ids, mask, garbled, tokenizer.vocab_size, gen)
                target[garbled] = 1.0 / len(answers)
            loss = F.cross_entropy(reader(*context, presence, ids, mask), target)
            if not torch.isfinite(loss):
                raise DataError(f"epoch {epoch}: the QA loss is not finite ({loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reader.parameters(), 2.0)
            opt.step()
            step += 1
            losses.append(loss.item())
        logits = reader_logits(reader, val_ex)
        ok = val_ex.answer >= 0
        val_acc = float((logits.argmax(1)[ok] == val_ex.answer[ok]).float().mean()) if ok.any() else float("nan")
        val_loss = float(F.cross_entropy(logits[ok], val_ex.answer[ok])) if ok.any() else float("nan")
        row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "val_loss": val_loss, "val_accuracy": val_acc,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{val_acc:.3f}")
        common = {"student_info": student_info, "tokenizer_json": tokenizer_json, "max_tokens": cfg.max_tokens,
                  "answers": answers, "question_types": types, "epoch": epoch, "extra": {"qa_train": asdict(cfg)}}
        save_qa_checkpoint(out / "last.pt", model, metrics=row, **common)
        if best is None or val_acc > best["val_accuracy"]:
            best = row
            best_eval = evaluate_reader(reader, val_ex, answers, train_ex)
            save_qa_checkpoint(out / "best.pt", model, metrics={**row, "val": best_eval}, **common)
    summary = {"best_epoch": best["epoch"] if best else None, "best": best, "val": best_eval, "history": history,
               "answers": list(answers), "question_types": list(types), "vocab_size": tokenizer.vocab_size,
               "train_questions": len(train_ex), "val_questions": len(val_ex), "train_clips": len(train_ex.clip_ids),
               "reader_params": sum(p.numel() for p in reader.parameters()), "seconds": time.perf_counter() - t0}
    write_json_atomic(out / "metrics.json", summary)
    return summary
