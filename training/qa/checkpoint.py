"""QA checkpoints: one file that rebuilds the question-answering model without the code that trained it.

A ``torch.save`` dict of plain data and tensors (read with ``weights_only=True``)::

    format "fusionedge-qa-checkpoint", format_version 1,
    student {model_name, model_config, geometry, labels, state_dict}   # the frozen perception student
    reader_config (QAConfig.to_dict()), reader_state,
    tokenizer (the tokenizer.json text), max_tokens, answers, question_types,
    metrics, epoch, extra (the training config)

The student is stored whole, so an export needs only this file (and the bundle it extends).
Written atomically (``sdk.fileio.write_bytes_atomic``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from fusionedge.sdk.fileio import write_bytes_atomic
from fusionedge.sdk.qa_tokenizer import QuestionTokenizer

from ..checkpoint import CheckpointError
from ..models.multimodal import ModelConfig, ModelConfigError, MultimodalModel
from .model import QAConfig, QAModel, QuestionReader

__all__ = ["QA_CHECKPOINT_FORMAT", "QACheckpoint", "load_qa_checkpoint", "save_qa_checkpoint"]

QA_CHECKPOINT_FORMAT = "fusionedge-qa-checkpoint"
_VERSION = 1
_REQUIRED = ("student", "reader_config", "reader_state", "tokenizer", "max_tokens", "answers", "question_types",
             "metrics", "epoch")


class QACheckpoint:
    """A loaded QA checkpoint: the model (eval mode), its tokenizer and its vocabularies."""

    def __init__(self, model: QAModel, tokenizer_json: str, tokenizer: QuestionTokenizer, answers: tuple[str, ...],
                 question_types: tuple[str, ...], student: dict, metrics: dict, epoch: int) -> None:
        self.model = model
        self.tokenizer_json = tokenizer_json
        self.tokenizer = tokenizer
        self.answers = answers
        self.question_types = question_types
        self.student = student  # model_name, model_config, geometry, labels (no weights)
        self.metrics = metrics
        self.epoch = epoch


def save_qa_checkpoint(path: str | os.PathLike, model: QAModel, *, student_info: dict, tokenizer_json: str,
                       max_tokens: int, answers: tuple[str, ...], question_types: tuple[str, ...], metrics: dict,
                       epoch: int, extra: dict | None = None) -> Path:
    """Write a QA checkpoint atomically (see the module docstring).

    Args:
        student_info: the student checkpoint's ``model_name``, ``model_config``, ``geometry``, ``labels``.

    Raises:
        CheckpointError: the file cannot be written.
    """
    state = {
        "format": QA_CHECKPOINT_FORMAT, "format_version": _VERSION,
        "student": {**{k: student_info[k] for k in ("model_name", "model_config", "geometry", "labels")},
                    "state_dict": {k: v.detach().cpu() for k, v in model.student.state_dict().items()}},
        "reader_config": model.reader.config.to_dict(),
        "reader_state": {k: v.detach().cpu() for k, v in model.reader.state_dict().items()},
        "tokenizer": tokenizer_json, "max_tokens": int(max_tokens), "answers": list(answers),
        "question_types": list(question_types), "metrics": metrics, "epoch": int(epoch), "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write the QA checkpoint ({e})") from e
    return path


def load_qa_checkpoint(path: str | os.PathLike) -> QACheckpoint:
    """Rebuild the QA model of a checkpoint, in eval mode.

    Raises:
        CheckpointError: missing, corrupt or not a QA checkpoint, or weights that do not fit.
        BundleError: the stored tokenizer is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such QA checkpoint file")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable QA checkpoint: {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != QA_CHECKPOINT_FORMAT:
        hint = " (a perception checkpoint: train a QA model on it with `fusionedge qa train`)" \
            if isinstance(state, dict) and state.get("format") == "fusionedge-checkpoint" else ""
        raise CheckpointError(f"{path}: not a FusionEdge QA checkpoint{hint}")
    if state.get("format_version") != _VERSION:
        raise CheckpointError(f"{path}: QA checkpoint format_version {state.get('format_version')!r} is not supported")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: QA checkpoint lacks field(s) {', '.join(missing)}")
    s = state["student"]
    try:
        student = MultimodalModel(ModelConfig.from_dict(s["model_config"]))
        student.load_state_dict(s["state_dict"], strict=True)
        reader = QuestionReader(QAConfig.from_dict(state["reader_config"]))
        reader.load_state_dict(state["reader_state"], strict=True)
    except (ModelConfigError, RuntimeError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: weights do not fit the QA model: {e}") from e
    model = QAModel(student, reader).eval()
    tokenizer = QuestionTokenizer.from_str(state["tokenizer"], int(state["max_tokens"]), source=f"{path}: tokenizer")
    return QACheckpoint(model, state["tokenizer"], tokenizer, tuple(state["answers"]), tuple(state["question_types"]),
                        {k: s[k] for k in ("model_name", "model_config", "geometry", "labels")},
                        state["metrics"], int(state["epoch"]))
