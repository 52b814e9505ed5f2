"""Checkpoints: one file that rebuilds a trained model without the code that trained it.

A checkpoint is a ``torch.save`` dict of plain data and tensors (loadable with
``weights_only=True``, so opening one never runs code)::

    format "fusionedge-checkpoint", format_version 1,
    model_name, model_config (ModelConfig.to_dict()), geometry (InputGeometry.to_dict()),
    labels {"events", "audio_tags", "objects"}, metrics, epoch,
    state_dict, optimizer (optional), extra (optional), training_state (optional: what exact
    resume needs — step, epoch, history, best, random states; see ``train.py``)

Files are written atomically (temp file in the same folder, fsync, ``os.replace``): a crash while
saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionedge.sdk.errors import FusionEdgeError
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
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write checkpoint ({e})") from e
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
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
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): "
                              f"{type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a FusionEdge checkpoint (no format={CHECKPOINT_FORMAT!r} field)")
    if state.get("format_version") != _FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {state.get('format_version')!r} is not "
                              f"supported (expected {_FORMAT_VERSION})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks field(s) {', '.join(missing)}")
    return state


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
