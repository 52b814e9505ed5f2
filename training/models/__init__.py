"""FusionEdge models: a registry of multimodal (video + audio) models with one contract.

``create_model(name, **overrides)`` builds a ``MultimodalModel`` whose ``forward(video, audio,
presence)`` returns the outputs of ``fusionedge.sdk.spec.OUTPUT_NAMES`` as a tuple.
"""

from .multimodal import ModelConfig, ModelConfigError, MultimodalModel, count_flops, count_params
from .registry import create_model, list_models, model_config, register_model

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "MultimodalModel",
    "count_flops",
    "count_params",
    "create_model",
    "list_models",
    "model_config",
    "register_model",
]
