"""Question-answering examples: each clip decoded and run through the frozen student once, its
questions encoded with the shipped tokenizer.

A clip's context (the student's tokens, :meth:`QAModel.context`) does not depend on the question,
and the student is frozen, so a data set is turned into one context per clip plus one row per
question (clip index, token ids, mask, answer index, type): epochs of the reader then cost no
decoding and no convolution. Clips are decoded with the runtime's own preprocessing
(:func:`fusionedge.sdk.evaluate.load_sample_inputs`), so the context is what the device computes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from fusionedge.sdk.datamanifest import Sample
from fusionedge.sdk.errors import DataError
from fusionedge.sdk.evaluate import load_sample_inputs
from fusionedge.sdk.fileio import write_bytes_atomic
from fusionedge.sdk.qa_tokenizer import QuestionTokenizer
from fusionedge.sdk.spec import InputGeometry
from tqdm import tqdm

from .model import CONTEXT_KEYS, QAModel

__all__ = ["CONTEXT_CACHE", "QAExamples", "build_examples", "encode_questions", "load_cached_examples",
           "save_cached_examples"]

#: The file in a run folder that keeps the train and validation contexts.
CONTEXT_CACHE = "context.pt"


@dataclass
class QAExamples:
    """Contexts per clip and questions per row (see the module docstring)."""

    context: dict[str, torch.Tensor]  # CONTEXT_KEYS -> (N_clips, ...)
    presence: torch.Tensor  # (N_clips, 2) the clips' own presence
    clip: torch.Tensor  # (Q,) int64 clip index of each question
    ids: torch.Tensor  # (Q, L) int64
    mask: torch.Tensor  # (Q, L) float32
    answer: torch.Tensor  # (Q,) int64, -1 for an answer outside the vocabulary
    types: tuple[str, ...]  # (Q,)
    questions: tuple[str, ...]  # (Q,)
    answers: tuple[str, ...]  # (Q,) the answers as words
    clip_ids: tuple[str, ...]  # (N_clips,)

    def __len__(self) -> int:
        return len(self.types)

    def batch(self, rows: torch.Tensor, presence: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Reader inputs for question ``rows``: ``(*context, presence, ids, mask)``; ``presence``
        (len(rows), 2) replaces the clips' own (for modality dropout and ablations)."""
        clips = self.clip[rows]
        pres = self.presence[clips] if presence is None else presence
        return (*(self.context[k][clips] for k in CONTEXT_KEYS), pres, self.ids[rows], self.mask[rows])


def build_examples(model: QAModel, samples: Sequence[Sample], geometry: InputGeometry, tokenizer: QuestionTokenizer,
                   answers: Sequence[str], *, batch_size: int = 32, workers: int = 2, progress: bool = True,
                   desc: str = "context") -> QAExamples:
    """Decode ``samples`` that carry questions, compute their contexts and encode their questions.

    Raises:
        DataError: no sample carries a question.
        MediaError: a media file cannot be decoded.
    """
    samples = [s for s in samples if s.questions]
    if not samples:
        raise DataError("no sample carries 'questions': generate the data with this version of "
                        "`fusionedge data synth`, or add questions to the manifest")
    index = {a: i for i, a in enumerate(answers)}
    chunks: dict[str, list[torch.Tensor]] = {k: [] for k in CONTEXT_KEYS}
    presence = []
    model.eval()
    bar = tqdm(total=len(samples), desc=desc, unit="clip", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(samples), batch_size):
            part = samples[start:start + batch_size]
            decoded = list(pool.map(lambda s: load_sample_inputs(s, geometry), part))
            video = torch.from_numpy(np.stack([d[0] for d in decoded]))
            audio = torch.from_numpy(np.stack([d[1] for d in decoded]))
            with torch.no_grad():
                ctx = model.context(video, audio)
            for k in CONTEXT_KEYS:
                chunks[k].append(ctx[k])
            presence.append(torch.from_numpy(np.stack([d[2] for d in decoded])))
            bar.update(len(part))
    bar.close()
    rows = [(c, q) for c, s in enumerate(samples) for q in s.questions]
    ids, mask = tokenizer.encode_batch([q.question for _, q in rows])
    return QAExamples(
        context={k: torch.cat(v) for k, v in chunks.items()},
        presence=torch.cat(presence),
        clip=torch.tensor([c for c, _ in rows], dtype=torch.int64),
        ids=torch.from_numpy(ids),
        mask=torch.from_numpy(mask),
        answer=torch.tensor([index.get(q.answer, -1) for _, q in rows], dtype=torch.int64),
        types=tuple(q.type for _, q in rows),
        questions=tuple(q.question for _, q in rows),
        answers=tuple(q.answer for _, q in rows),
        clip_ids=tuple(s.id for s in samples),
    )


def save_cached_examples(path: Path, key: dict, train: QAExamples, val: QAExamples) -> None:
    """Keep the examples of a run under ``key`` (what they were computed from), atomically."""
    buffer = io.BytesIO()
    torch.save({"key": key, "train": asdict(train), "val": asdict(val)}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_cached_examples(path: Path, key: dict) -> tuple[QAExamples, QAExamples] | None:
    """The examples kept at ``path`` if they were computed from ``key``; None otherwise (or unreadable)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a stale or broken cache is recomputed, never trusted
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        return None
    try:
        return QAExamples(**state["train"]), QAExamples(**state["val"])
    except (KeyError, TypeError):
        return None


def encode_questions(ex: QAExamples, tokenizer: QuestionTokenizer, answers: Sequence[str]) -> QAExamples:
    """``ex`` with its questions encoded by ``tokenizer`` and its answers indexed in ``answers``.

    Kept contexts are reused by later runs, and each run learns its own vocabulary (the WordPiece
    trainer does not promise the same ids twice), so the ids are never taken from the cache.
    """
    ids, mask = tokenizer.encode_batch(list(ex.questions))
    index = {a: i for i, a in enumerate(answers)}
    return replace(ex, ids=torch.from_numpy(ids), mask=torch.from_numpy(mask),
                   answer=torch.tensor([index.get(a, -1) for a in ex.answers], dtype=torch.int64))
