"""Question-answering accuracy: overall, per question type, per sensor set, and a question-only baseline.

The ablations run one trained reader with the presence mask set to what each sensor set leaves:
question only (0, 0), question + video (1, 0), question + audio (0, 1) and all three (1, 1). The
reader is trained with modality dropout, so each setting is a model that has learnt to answer
without the missing sensor, not one surprised by it. A masked modality's tokens are masked out of
attention, so this is exactly what the device computes when that sensor is missing.

The question-only baseline is independent of the model: for each test question, the answer given
most often to the same question text in the training set (or, for a text never seen, to its type).
It measures how much the words alone give away; balanced questions keep it near chance.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from .data import QAExamples
from .model import QuestionReader

__all__ = [
    "ABLATIONS",
    "SOUND_TYPES",
    "accuracy_table",
    "evaluate_reader",
    "question_only_baseline",
    "reader_logits",
]

#: The sensor sets of the ablation: name -> presence (video, audio).
ABLATIONS: dict[str, tuple[float, float]] = {
    "question_only": (0.0, 0.0), "question_video": (1.0, 0.0), "question_audio": (0.0, 1.0), "all": (1.0, 1.0)}
#: Question types whose answer is in the sound (what "questions that need sound" are scored on).
SOUND_TYPES: tuple[str, ...] = ("hear", "source")


def reader_logits(reader: QuestionReader, ex: QAExamples, presence: tuple[float, float] | None = None,
                  *, batch_size: int = 512) -> torch.Tensor:
    """Logits (Q, K) of every question; ``presence`` replaces the clips' own when given."""
    reader.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(ex), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(ex)))
            pres = None if presence is None else torch.tensor([presence], dtype=torch.float32).expand(len(rows), 2)
            out.append(reader(*ex.batch(rows, pres)))
    return torch.cat(out)


def accuracy_table(predicted: Sequence[str], truth: Sequence[str], types: Sequence[str]) -> dict:
    """``{"overall": acc, "count": n, "per_type": {type: {"accuracy", "count"}}}``."""
    hit = np.array([p == t for p, t in zip(predicted, truth)], dtype=bool)
    per: dict[str, list[bool]] = defaultdict(list)
    for h, k in zip(hit, types):
        per[k].append(bool(h))
    return {"overall": float(hit.mean()) if len(hit) else float("nan"), "count": len(hit),
            "per_type": {k: {"accuracy": float(np.mean(v)), "count": len(v)} for k, v in sorted(per.items())}}


def question_only_baseline(train: QAExamples, test: QAExamples) -> dict:
    """The most frequent training answer per question text (per type for an unseen text), scored on ``test``."""
    by_text: dict[str, Counter] = defaultdict(Counter)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for q, a, k in zip(train.questions, train.answers, train.types):
        by_text[q][a] += 1
        by_type[k][a] += 1
    pred = []
    for q, k in zip(test.questions, test.types):
        votes = by_text.get(q) or by_type.get(k)
        pred.append(votes.most_common(1)[0][0] if votes else "")
    return accuracy_table(pred, test.answers, test.types)


def _subset(table_pred: Sequence[str], ex: QAExamples, types: Sequence[str]) -> float:
    rows = [i for i, k in enumerate(ex.types) if k in types]
    if not rows:
        return float("nan")
    return float(np.mean([table_pred[i] == ex.answers[i] for i in rows]))


def evaluate_reader(reader: QuestionReader, ex: QAExamples, answers: Sequence[str],
                    train: QAExamples | None = None) -> dict:
    """Accuracy with the clips' own sensors, the four ablations and (given ``train``) the baseline.

    Returns:
        ``{"accuracy": accuracy_table, "ablations": {name: accuracy_table + "sound": acc on
        SOUND_TYPES}, "sound_gain_over_video": all - question_video on sound questions,
        "question_only_baseline": accuracy_table}``.
    """
    out: dict = {}
    pred = [answers[i] for i in reader_logits(reader, ex).argmax(1).tolist()]
    out["accuracy"] = accuracy_table(pred, ex.answers, ex.types)
    out["ablations"] = {}
    for name, pres in ABLATIONS.items():
        p = [answers[i] for i in reader_logits(reader, ex, pres).argmax(1).tolist()]
        table = accuracy_table(p, ex.answers, ex.types)
        table["sound"] = _subset(p, ex, SOUND_TYPES)
        out["ablations"][name] = table
    ab = out["ablations"]
    out["sound_gain_over_video"] = ab["all"]["sound"] - ab["question_video"]["sound"]
    if train is not None:
        out["question_only_baseline"] = question_only_baseline(train, ex)
    return out
