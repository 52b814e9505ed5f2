"""Exact resume: the random states a training run saves in ``last.pt``, and the check that a
checkpoint continues the run being configured.

A run killed after epoch k and resumed to epoch E gives bit-identical weights to one trained E
epochs straight (on the CPU) because ``last.pt`` holds, besides the weights and the optimizer,
every random state the loop draws from (Python, NumPy, torch, CUDA, the data generator), stored
as tensors and plain data so that ``weights_only`` loading reads them back. Resuming with options
that shape the trajectory changed would silently train another run, so those are compared first.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from fusionedge.sdk.fileio import json_safe

from .checkpoint import CheckpointError, read_checkpoint

__all__ = ["TRAJECTORY_FIELDS", "resume_state", "rng_state", "set_rng_state"]

#: TrainConfig fields that shape a run's trajectory: a resumed run must keep them to be exact.
TRAJECTORY_FIELDS = ("model", "model_overrides", "geometry", "epochs", "batch_size", "lr", "min_lr_ratio",
                     "warmup_epochs", "weight_decay", "grad_clip", "seed", "loss_weights", "modality_dropout",
                     "hflip", "audio_gain_db", "max_train_samples", "amp", "teacher", "distill",
                     "task_weighting", "task_schedule", "encoder_lr_scale", "frozen_encoder_epochs", "background_mix",
                     "audio_warp", "audio_variants", "siren_swap", "clutter_swap", "sound_naming")


def rng_state(gen: torch.Generator) -> dict:
    """Every random state a run draws from (as tensors and plain data, loadable with weights_only).

    Args:
        gen: the run's data generator.

    Returns:
        ``{"python", "numpy", "torch", "cuda", "data"}``, for :func:`set_rng_state`.
    """
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": gen.get_state(),
    }


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where CUDA is available).

    Args:
        state: a saved ``rng_state``.
        gen: the run's data generator, set in place.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["data"])


def resume_state(path, config: dict, model_config: dict, world_size: int) -> dict:
    """Read a run's ``last.pt`` and check that it continues the run configured now.

    Args:
        path: the checkpoint to resume from.
        config: ``TrainConfig.to_dict()`` of the run configured now.
        model_config: the ``ModelConfig.to_dict()`` it builds.
        world_size: processes of the run configured now.

    Raises:
        CheckpointError: unreadable, no training state, another model, a changed trajectory
            option (each one named, old -> new), or another number of processes.

    Returns:
        The raw checkpoint dict.
    """
    state = read_checkpoint(path)
    if "training_state" not in state or "optimizer" not in state:
        raise CheckpointError(f"{path}: no training state to resume from (use a run's last.pt)")
    if state["model_config"] != model_config:
        raise CheckpointError(f"{path}: model {state['model_name']!r} as saved differs from {config['model']!r} "
                              "as configured")
    saved = state.get("extra", {}).get("train_config", {})
    now = json_safe(config)
    changed = [k for k in TRAJECTORY_FIELDS if k in saved and saved[k] != now[k]]
    if changed:
        raise CheckpointError(f"{path}: resuming needs the options of the first run; changed: "
                              + ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in changed))
    if state["training_state"]["world_size"] != world_size:
        raise CheckpointError(f"{path}: saved by {state['training_state']['world_size']} process(es), "
                              f"resumed by {world_size}: the data shards would differ")
    return state
