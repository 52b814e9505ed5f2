"""Turn a trained checkpoint into a verified model bundle.

The chain, each step a small function you can also call alone::

    load_checkpoint(path)                      -> (model, info)         fusionedge.training.checkpoint
    export_onnx(model, geometry, onnx_path)    -> model.onnx            onnx_export
    check_onnx(onnx_path)                      -> None (or ExportError) onnx_export
    check_parity(model, onnx_path, geometry)   -> ParityReport          parity   (batch 1 and 3)
    make_golden(model, geometry)               -> (inputs, outputs)     parity
    write_bundle(out_dir, onnx_path, info, parity, inputs, outputs)     bundle_writer (atomic)

:func:`export_checkpoint` runs all of it from a checkpoint file; :func:`export_model` from an
in-memory model and its info dict (what distillation or quantization hand over).
"""

from __future__ import annotations

import importlib
from typing import Any

# Names load lazily (PEP 562): the fleet publisher and other torch-free tools in this package must
# import without pulling in torch, onnx and the exporter.
_LAZY = {
    "ExportError": "fusionedge.export.onnx_export",
    "export_onnx": "fusionedge.export.onnx_export",
    "check_onnx": "fusionedge.export.onnx_export",
    "example_inputs": "fusionedge.export.onnx_export",
    "ParityError": "fusionedge.export.parity",
    "ParityReport": "fusionedge.export.parity",
    "check_parity": "fusionedge.export.parity",
    "make_golden": "fusionedge.export.parity",
    "write_bundle": "fusionedge.export.bundle_writer",
    "build_manifest": "fusionedge.export.bundle_writer",
    "export_checkpoint": "fusionedge.export.pipeline",
    "export_model": "fusionedge.export.pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusionedge.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
