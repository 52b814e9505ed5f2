"""Checkpoints: one file that rebuilds a trained model without the code that trained it.

A checkpoint is a ``torch.save`` dict of plain data and tensors (loadable with
``weights_only=True``, so opening one never runs code)::

    format "fusionedge-checkpoint", format_version 1,
    model_name, model_config (ModelConfig.to_dict()), geometry (InputGeometry.to_dict()),
    labels {"events", "audio_tags", "objects"}, metrics, epoch,
    state_dict, optimizer (optional), extra (optional), training_state (optional: what exact
    resume needs — step, epoch, history, best, random states; see ``train.py``)

Files are written atomically (``sdk.fileio.write_bytes_atomic``: temp file in the same folder,
fsync, ``os.replace``, fsync of the folder): a crash while saving leaves the previous checkpoint intact.
A file that ``weights_only`` loading refuses is refused in one line that names it and says why.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.fileio import write_bytes_atomic
from fusionedge.sdk.spec import InputGeometry

from .models.multimodal import ModelConfig, ModelConfigError, MultimodalModel

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "fusionedge-checkpoint"
_FORMAT_VERSION = 1
_REQUIRED = ("model_name", "model_config", "geometry", "labels", "metrics", "epoch", "state_dict")
_LABEL_KEYS = ("events", "audio_tags", "objects")


class CheckpointError(FusionEdgeError):
    """A checkpoint file is missing, corrupt, not a FusionEdge checkpoint, or does not fit its model."""


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, model_name: str, model_config: dict,
                    geometry: InputGeometry, labels: dict, metrics: dict, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None,
                    training_state: dict | None = None) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: destination file (its folder is created).
        model: the model whose ``state_dict`` is saved.
        model_name: registry name it was created from.
        model_config: ``ModelConfig.to_dict()`` of the model.
        geometry: the input geometry it was trained with.
        labels: ``{"events": [...], "audio_tags": [...], "objects": [...]}``.
        metrics: JSON-ready metrics (e.g. of the epoch saved).
        epoch: epochs completed (1-based).
        optimizer: saved too when given (to continue training).
        extra: any further JSON-ready data (e.g. the training config).
        training_state: plain data and tensors to continue training exactly (see ``train.py``).

    Raises:
        CheckpointError: the labels lack a key, or the file cannot be written.

    Returns:
        The path written.
    """
    missing = [k for k in _LABEL_KEYS if k not in labels]
    if missing:
        raise CheckpointError(f"labels must have keys {_LABEL_KEYS}; missing {missing}")
    state = {
        "format": CHECKPOINT_FORMAT,
        "format_version": _FORMAT_VERSION,
        "model_name": str(model_name),
        "model_config": dict(model_config),
        "geometry": geometry.to_dict(),
        "labels": {k: list(labels[k]) for k in _LABEL_KEYS},
        "metrics": metrics,
        "epoch": int(epoch),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if extra is not None:
        state["extra"] = extra
    if training_state is not None:
        state["training_state"] = training_state
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write checkpoint ({e})") from e
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint's dict without building the model.

    Args:
        path: a file written by ``save_checkpoint``.

    Raises:
        CheckpointError: missing file, unreadable/corrupt data, or not a FusionEdge checkpoint.

    Returns:
        The raw dict (see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        raise CheckpointError(_load_refusal(path, e)) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a FusionEdge checkpoint (no format={CHECKPOINT_FORMAT!r} field)")
    if state.get("format_version") != _FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {state.get('format_version')!r} is not "
                              f"supported (expected {_FORMAT_VERSION})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks field(s) {', '.join(missing)}")
    return state


def _load_refusal(path: Path, e: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused ``path``.

    Torch's own message spans several lines and advises loading with ``weights_only=False``, which
    would run whatever code the file holds: a checkpoint never needs that, so the advice is dropped
    and only the cause is kept (the Python type the file holds, or the first line of the error).
    """
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"{path}: refused: it holds a Python object ({found.group(1)}), and a checkpoint holds only "
                f"tensors and plain data (it is read without running code)")
    detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
    lines = [line.strip() for line in detail.splitlines() if line.strip() and "weights_only" not in line]
    reason = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return f"{path}: not a readable checkpoint (corrupt or truncated?): {reason}"


def load_checkpoint(path: str | os.PathLike) -> tuple[MultimodalModel, dict[str, Any]]:
    """Rebuild the model of a checkpoint, in eval mode.

    Args:
        path: a file written by ``save_checkpoint``.

    Raises:
        CheckpointError: missing or corrupt file, not a checkpoint, an invalid model config, or
            weights that do not fit the model.

    Returns:
        ``(model, info)``; ``info`` has ``model_name``, ``model_config`` (dict), ``geometry`` (dict),
        ``labels`` {"events","audio_tags","objects"}, ``metrics``, ``epoch`` (and ``extra`` if saved).
    """
    state = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(state["model_config"])
    except (ModelConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model_config: {e}") from e
    model = MultimodalModel(config)
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit model {state['model_name']!r}: {e}") from e
    model.eval()
    info = {k: state[k] for k in ("model_name", "model_config", "geometry", "labels", "metrics", "epoch")}
    if "extra" in state:
        info["extra"] = state["extra"]
    return model, info
