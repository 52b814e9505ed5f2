"""Models by name: ``create_model("fusion_student", fusion="concat")``.

A registered name maps to a function that returns a ``ModelConfig``; ``create_model`` applies the
keyword overrides to that config and builds a ``MultimodalModel``. The tests iterate over
``list_models()``, so a model is tested the day it is registered.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from .multimodal import ModelConfig, ModelConfigError, MultimodalModel

__all__ = ["register_model", "create_model", "model_config", "list_models"]

_REGISTRY: dict[str, Callable[[], ModelConfig]] = {}


def register_model(name: str) -> Callable[[Callable[[], ModelConfig]], Callable[[], ModelConfig]]:
    """Decorator: register a function returning the default ``ModelConfig`` of model ``name``.

    Raises:
        ModelConfigError: ``name`` is already registered.
    """

    def deco(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        if name in _REGISTRY:
            raise ModelConfigError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_config(name: str, **overrides) -> ModelConfig:
    """The configuration of model ``name`` with ``overrides`` applied.

    Args:
        name: a registered model name (see ``list_models()``).
        **overrides: ``ModelConfig`` fields to change (lists are accepted for tuple fields).

    Raises:
        ModelConfigError: unknown name, unknown field, or an invalid resulting config.

    Returns:
        The frozen config.
    """
    if name not in _REGISTRY:
        raise ModelConfigError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ModelConfigError(f"unknown ModelConfig field(s) for {name!r}: {', '.join(unknown)}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(_REGISTRY[name](), **overrides)


def create_model(name: str, **overrides) -> MultimodalModel:
    """Build model ``name`` (in training mode, freshly initialized).

    Args:
        name: a registered model name.
        **overrides: ``ModelConfig`` fields to change, e.g. ``fusion="concat"``.

    Raises:
        ModelConfigError: unknown name, unknown field or invalid value.

    Returns:
        The model; its config is ``model.config``.
    """
    return MultimodalModel(model_config(name, **overrides))


@register_model("fusion_student")
def fusion_student() -> ModelConfig:
    """The quickstart model, time-aligned fusion (``aligned_attention``): ~0.48 M parameters, ~0.39 GFLOPs
    (0.17 of ``fusion_teacher``).

    Each frame attends to the audio heard around its time, in addition to the clip-wide
    cross-attention, so that a sound is matched with what is seen when it is heard. The detection
    path (32 channels at stride 4, a 64-channel CenterNet head) is as wide as boxes need to reach
    the teacher's accuracy at under a fifth of its FLOPs. The comparisons behind both choices are in
    ``training/EXPERIMENTS.md``. With ``TrainConfig`` defaults it trains on 2,000 synthetic clips in
    a few minutes on 2 CPU cores.
    """
    return ModelConfig(fusion="aligned_attention")


@register_model("fusion_teacher")
def fusion_teacher() -> ModelConfig:
    """A wider, deeper model (distillation teacher): ~2.8 M parameters, ~2.2 GFLOPs (~8x the student)."""
    return ModelConfig(
        video_channels=(32, 64, 128, 192),
        video_depth=2,
        audio_channels=(32, 64, 128),
        audio_depth=2,
        audio_dim=128,
        fusion_dim=128,
        fusion_heads=4,
        fusion_layers=2,
        head_hidden=128,
        det_channels=64,
    )


# -- variants of the student for comparisons (same size class; see docs of ModelConfig.modalities)


@register_model("xattn_student")
def xattn_student() -> ModelConfig:
    """The student with clip-wide cross-attention only (no timestamps): ~0.39 M parameters, ~0.39 GFLOPs."""
    return ModelConfig(fusion="cross_attention")


@register_model("concat_student")
def concat_student() -> ModelConfig:
    """The student with late fusion: pooled video and audio embeddings concatenated (no attention)."""
    return ModelConfig(fusion="concat")


@register_model("vision_only_student")
def vision_only_student() -> ModelConfig:
    """The student without audio: the audio input is ignored, audio-tag logits are learned priors."""
    return ModelConfig(modalities=("video",))


@register_model("audio_only_student")
def audio_only_student() -> ModelConfig:
    """The student without video: the video input is ignored, the detection outputs say "no detection"."""
    return ModelConfig(modalities=("audio",))
