"""FusionEdge device runtime: load a verified model bundle and run it on camera frames and audio.

::

    from fusionedge.sdk import Perception

    with Perception.load("bundle/", backends=["onnxruntime"]) as p:
        result = p.infer(video_path="clip.mp4", audio_path="clip.wav")
        print(result.event, result.boxes, result.backend)

``import fusionedge.sdk`` is cheap: it imports the error types only. Everything else is imported on
first use (``fusionedge.sdk.Perception`` imports OpenCV and NumPy; backends import their inference
library only when a model is loaded). Nothing here ever imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fusionedge.sdk.errors import (
    BackendError,
    BundleError,
    DataError,
    DownloadError,
    FusionEdgeError,
    InputError,
    MediaError,
    SensorError,
    UpdateError,
    VerificationError,
)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from fusionedge.sdk.backends import Backend, available_backends, get_backend, register_backend
    from fusionedge.sdk.bundle import Bundle, load_bundle, update_bundle_metrics
    from fusionedge.sdk.media import read_audio, read_video
    from fusionedge.sdk.perception import Fallback, Perception, Result
    from fusionedge.sdk.postprocess import Detection
    from fusionedge.sdk.qa import Answer
    from fusionedge.sdk.qa_tokenizer import QuestionError
    from fusionedge.sdk.spec import InputGeometry

# name -> module that defines it, imported on first attribute access (PEP 562).
_LAZY: dict[str, str] = {
    "Perception": "fusionedge.sdk.perception",
    "Result": "fusionedge.sdk.perception",
    "Fallback": "fusionedge.sdk.perception",
    "Detection": "fusionedge.sdk.postprocess",
    "Answer": "fusionedge.sdk.qa",
    "QuestionError": "fusionedge.sdk.qa_tokenizer",
    "Bundle": "fusionedge.sdk.bundle",
    "load_bundle": "fusionedge.sdk.bundle",
    "update_bundle_metrics": "fusionedge.sdk.bundle",
    "Backend": "fusionedge.sdk.backends",
    "get_backend": "fusionedge.sdk.backends",
    "register_backend": "fusionedge.sdk.backends",
    "available_backends": "fusionedge.sdk.backends",
    "read_video": "fusionedge.sdk.media",
    "read_audio": "fusionedge.sdk.media",
    "InputGeometry": "fusionedge.sdk.spec",
}

__all__ = [
    *_LAZY,
    "__version__",
    "FusionEdgeError",
    "BundleError",
    "BackendError",
    "InputError",
    "MediaError",
    "DataError",
    "SensorError",
    "UpdateError",
    "DownloadError",
    "VerificationError",
]


def _installed_version() -> str:
    """The installed distribution's version; ``0+unknown`` where fusionedge runs without being installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fusionedge")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # looked up on first use: reading the package metadata costs an import
        globals()[name] = _installed_version()
        return globals()[name]
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusionedge.sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
