"""FP16 variant of a bundle: weights and activations in float16, float32 inputs and outputs at the boundary.

The conversion uses ONNX Runtime's own converter, ``onnxruntime.transformers.float16``
(``convert_float_to_float16(keep_io_types=True)``), which ships in the ``onnxruntime`` wheel; the
separate ``onnxconverter-common`` package is not needed (it is not installed here). Because the model's
inputs and outputs stay float32, the manifest's tensor specs, the golden inputs and every backend's
feeds are unchanged: ``Perception.load(fp16_bundle)`` works as for the FP32 bundle.

The audio front end's log (of a power spectrum that can be ~1e-10) and the DFT convolution stay in
float32 (``op_block_list`` / ``node_block_list``), as FP16 underflows there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from fusionedge.export.onnx_export import ExportError
from fusionedge.export.quantize import frontend_nodes, write_variant_bundle
from fusionedge.sdk.bundle import load_bundle

__all__ = ["FP16_GOLDEN_TOL", "convert_fp16", "fp16_bundle"]

#: Golden tolerances of an FP16 bundle's self-test.
FP16_GOLDEN_TOL = {"rtol": 0.02, "atol": 0.02}


def convert_fp16(
    model_in: str | os.PathLike,
    model_out: str | os.PathLike,
    *,
    keep_frontend_fp32: bool = True,
    extra_block: Sequence[str] = (),
) -> list[str]:
    """Convert an FP32 ONNX model to FP16 with float32 inputs/outputs.

    Args:
        model_in: the FP32 model.
        model_out: where to write the FP16 model.
        keep_frontend_fp32: keep the audio front-end nodes in float32.
        extra_block: more node names to keep in float32.

    Returns:
        The node names kept in float32.

    Raises:
        ExportError: the model cannot be read or converted (the cause is chained).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = onnx.load(str(model_in))
    except Exception as e:
        raise ExportError(f"{model_in}: cannot be read as ONNX: {e}") from e
    from fusionedge.export.onnx_compact import compact_model, inline_generated

    inline_generated(model)  # the converter would round-trip the kernel generator through float16
    blocked = (frontend_nodes(model) if keep_frontend_fp32 else []) + list(extra_block)
    try:
        converted = convert_float_to_float16(
            model, keep_io_types=True, node_block_list=blocked or None, disable_shape_infer=False
        )
        compact_model(converted)  # the front end is float32 again: generate its kernels in-graph as before
        _topological_sort(converted.graph)
        onnx.save(converted, str(model_out))
        onnx.checker.check_model(str(model_out))
    except Exception as e:
        raise ExportError(f"fp16: conversion failed: {type(e).__name__}: {e}") from e
    return blocked


def _topological_sort(graph: object) -> None:
    """Reorder ``graph.node`` topologically (the converter appends its input casts at the end)."""
    nodes = list(graph.node)  # type: ignore[attr-defined]
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}  # type: ignore[attr-defined]
    ordered, pending = [], nodes
    while pending:
        rest = []
        for n in pending:
            if all(x in ready for x in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ExportError(f"fp16: the converted graph has a cycle or a dangling input at {rest[0].name!r}")
        pending = rest
    del graph.node[:]  # type: ignore[attr-defined]
    graph.node.extend(ordered)  # type: ignore[attr-defined]


def fp16_bundle(
    bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, *, keep_frontend_fp32: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the FP16 variant of an FP32 bundle as a sibling bundle (``precision: fp16``).

    Args:
        bundle_dir: the FP32 bundle.
        out_dir: the FP16 bundle folder to create.
        keep_frontend_fp32: keep the audio front end in float32.
        overwrite: replace an existing folder.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ExportError: the source is not fp32, conversion failed, or the result does not verify.
        BundleError: the source bundle is invalid.
    """
    source = load_bundle(bundle_dir)
    if source.precision != "fp32":
        raise ExportError(f"{bundle_dir}: convert an fp32 bundle, this one is {source.precision}")
    with tempfile.TemporaryDirectory(prefix="fusionedge-fp16-") as work:
        path = Path(work) / "model.fp16.onnx"
        blocked = convert_fp16(source.model_path, path, keep_frontend_fp32=keep_frontend_fp32)
        variant = {"kind": "fp16", "method": "cast", "converter": "onnxruntime.transformers.float16",
                   "keep_io_types": True, "kept_fp32": blocked}
        return write_variant_bundle(source, path, out_dir, precision="fp16", variant=variant,
                                    golden_tol=FP16_GOLDEN_TOL, overwrite=overwrite)
