"""Question accuracy in ``fusionedge eval``: overall and per question type, from the evaluation's own pass.

When the evaluated bundle answers questions (a ``qa`` block) and the data set's samples carry
``questions`` (question, answer, type), every clip's questions are asked of the bundle's
question-answering model on the very tensors the evaluation decoded and preprocessed for the main
model — the device path, once per clip — and scored by exact match with the expected answer. Per
type matters because the types differ in what they need (counting, colours, what is heard), and a
model that answers one type from the question alone hides behind an overall number. An expected
answer the bundle cannot give (not in its ``answers``) counts as wrong and is counted separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from fusionedge.sdk.datamanifest import Sample

if TYPE_CHECKING:
    from fusionedge.sdk.perception import Perception
    from fusionedge.sdk.qa import QaModel

__all__ = ["QuestionScorer", "question_lines", "question_scorer"]


@dataclass
class QuestionScorer:
    """Asks each evaluated clip's questions and keeps score; :meth:`metrics` gives the numbers."""

    qa: QaModel
    types: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    confident: list[bool] = field(default_factory=list)
    unanswerable: int = 0  # expected answers the bundle cannot give

    def add(self, sample: Sample, video: np.ndarray, audio: np.ndarray, presence: np.ndarray) -> None:
        """Ask one clip's questions (in one batch) on its preprocessed ``(T,3,H,W)``, ``(S,)``, ``(2,)`` tensors."""
        if not sample.questions:
            return
        answers = self.qa.answer([q.question for q in sample.questions], video, audio, presence, top_k=1)
        known = set(self.qa.answers)
        for q, a in zip(sample.questions, answers):
            self.types.append(q.type)
            self.correct.append(a.answer == q.answer)
            self.confident.append(a.confident)
            self.unanswerable += int(q.answer not in known)

    def add_batch(self, samples: Sequence[Sample], loaded: Sequence[tuple[Any, ...]]) -> None:
        """:meth:`add` for a batch, ``loaded`` as :func:`fusionedge.sdk.evaluate.load_sample_inputs` gives."""
        for s, (video, audio, presence, *_) in zip(samples, loaded):
            self.add(s, video, audio, presence)

    def metrics(self) -> dict[str, Any]:
        """``question_accuracy`` (overall), ``question_accuracy_per_type``, ``questions``,
        ``questions_per_type``, ``question_confident_rate`` (share answered above the confidence floor),
        ``question_accuracy_confident`` (accuracy on those; None if none) and ``questions_unanswerable``."""
        correct, confident = np.asarray(self.correct, bool), np.asarray(self.confident, bool)
        types = np.asarray(self.types, object)
        if correct.size == 0:
            return {}
        per_type = {t: float(correct[types == t].mean()) for t in sorted(set(self.types))}
        return {
            "question_accuracy": float(correct.mean()),
            "question_accuracy_per_type": per_type,
            "questions": int(correct.size),
            "questions_per_type": {t: int((types == t).sum()) for t in per_type},
            "question_confident_rate": float(confident.mean()),
            "question_accuracy_confident": float(correct[confident].mean()) if confident.any() else None,
            "questions_unanswerable": int(self.unanswerable),
        }


def question_scorer(perception: Perception, samples: Sequence[Sample]) -> QuestionScorer | None:
    """A scorer when the bundle answers questions and some sample carries them, else None.

    Raises:
        BundleError, BackendError: the bundle's question-answering model cannot be loaded.
    """
    from fusionedge.sdk.qa import QaSpec

    if perception.generic is not None or QaSpec.from_manifest(perception.bundle.manifest) is None:
        return None
    if not any(s.questions for s in samples):
        return None
    return QuestionScorer(perception.qa)


def question_lines(metrics: dict[str, Any]) -> str:
    """The question accuracy of an evaluation as text lines (empty when it has none)."""
    if "question_accuracy" not in metrics:
        return ""
    rows = [(f"question answering: {metrics['question_accuracy']:.4f} of {metrics['questions']} questions "
             f"({metrics['question_confident_rate']:.0%} answered confidently)")]
    for t, acc in metrics["question_accuracy_per_type"].items():
        rows.append(f"  {t:<20} {acc:.4f}   ({metrics['questions_per_type'][t]} questions)")
    if metrics["questions_unanswerable"]:
        rows.append(f"  {metrics['questions_unanswerable']} expected answers are not among the bundle's answers")
    return "\n".join(rows)
