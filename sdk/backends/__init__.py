"""Inference backends, registered by name.

``get_backend("onnxruntime")`` returns a fresh, unloaded :class:`Backend`; ``available_backends()``
lists the registered ones whose libraries import on this machine. A backend is registered as a class
or as ``"module:Class"`` (imported only when first used), so registering TensorRT costs nothing on a
machine without it::

    register_backend("tensorrt", "fusionedge.sdk.backends.tensorrt:TensorRTBackend")
"""

from __future__ import annotations

import importlib
from typing import Any

from fusionedge.sdk.backends.base import Backend, ModelIO, TensorSpec, check_feeds, check_outputs
from fusionedge.sdk.errors import BackendError

__all__ = [
    "Backend",
    "ModelIO",
    "TensorSpec",
    "check_feeds",
    "check_outputs",
    "register_backend",
    "get_backend",
    "backend_class",
    "registered_backends",
    "available_backends",
]

_REGISTRY: dict[str, type[Backend] | str] = {
    "onnxruntime": "fusionedge.sdk.backends.onnxruntime:OnnxRuntimeBackend",
    "onnxruntime-cuda": "fusionedge.sdk.backends.onnxruntime_gpu:OnnxRuntimeCudaBackend",
    "onnxruntime-trt": "fusionedge.sdk.backends.onnxruntime_gpu:OnnxRuntimeTensorRTBackend",
    "tensorrt": "fusionedge.sdk.backends.tensorrt:TensorRTBackend",
}


def register_backend(name: str, cls: type[Backend] | str) -> None:
    """Register a backend under ``name`` (replacing any earlier one of that name).

    Args:
        name: the registry key, e.g. ``"tensorrt"``.
        cls: a :class:`Backend` subclass, or ``"package.module:ClassName"`` to import lazily.

    Raises:
        BackendError: ``name`` is empty, or ``cls`` is neither a Backend subclass nor a
            ``"module:Class"`` string.
    """
    if not isinstance(name, str) or not name:
        raise BackendError(f"backend name must be a non-empty string, got {name!r}")
    if isinstance(cls, str):
        if cls.count(":") != 1:
            raise BackendError(f"backend {name!r}: expected 'module:Class', got {cls!r}")
    elif not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend {name!r}: expected a Backend subclass, got {cls!r}")
    _REGISTRY[name] = cls


def registered_backends() -> list[str]:
    """Names of every registered backend, available here or not."""
    return list(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    """Resolve a registered name to its class (importing its module if registered lazily).

    Raises:
        BackendError: the name is unknown (the message lists the known ones) or its module does not import.
    """
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module_name, attr = entry.split(":")
        try:
            entry = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise BackendError(f"backend {name!r}: cannot import {module_name}:{attr} ({e})") from e
        if not (isinstance(entry, type) and issubclass(entry, Backend)):
            raise BackendError(f"backend {name!r}: {module_name}:{attr} is not a Backend subclass")
        _REGISTRY[name] = entry
    return entry


def get_backend(name: str, **options: Any) -> Backend:
    """Create an unloaded backend by name.

    Args:
        name: a registered name (see :func:`registered_backends`).
        **options: passed to the backend's constructor (e.g. ``intra_op_threads=2`` for onnxruntime).

    Returns:
        A new :class:`Backend`; call ``load`` next.

    Raises:
        BackendError: unknown name (listing the known ones) or bad options.
    """
    cls = backend_class(name)
    try:
        return cls(**options)
    except TypeError as e:
        raise BackendError(f"backend {name!r}: bad options {sorted(options)}: {e}") from e


def available_backends() -> list[str]:
    """Registered backends whose required libraries import on this machine, in registration order."""
    names = []
    for name in _REGISTRY:
        try:
            if backend_class(name).is_available():
                names.append(name)
        except BackendError:
            continue
    return names
