"""Check 2:4 sparsity in an ONNX model's weights, and record it in a bundle's manifest.

A bundle that says its weights are 2:4 sparse makes ``engine build`` ask TensorRT for sparse kernels
(``BuilderFlag.SPARSE_WEIGHTS``); a claim that is wrong for one weight would only cost speed there,
but it would be a false statement in the manifest. So the claim is a list of initializer names, and
:func:`check_2to4` verifies every one: in each group of 4 consecutive values along the weight's
input (reduction) dimension at most 2 are non-zero.

The input dimension depends on the operator that consumes the weight: ``Conv`` weight ``(O, I, k...)``
axis 1; ``Gemm`` input B axis 1 with ``transB=1`` (``(N, K)``), else 0; ``MatMul`` input B ``(K, N)``
axis 0. A weight reached through ``DequantizeLinear`` (an INT8 bundle) or a ``Transpose`` of an
initializer is followed back to its initializer (symmetric INT8 keeps every zero a zero).

The manifest's top-level ``sparsity`` section is ``{"pattern": "2:4", "weights": [names],
"checked": true}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.export.onnx_export import ExportError

__all__ = [
    "SparsityCheckError",
    "check_2to4",
    "find_2to4",
    "group_violations",
    "record_sparsity",
    "sparsity_section",
    "weight_axes",
]


class SparsityCheckError(ExportError):
    """A weight claimed to be 2:4 sparse is not (or is not a weight of the model)."""


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(str(model))
    return model


def weight_axes(model: Any) -> dict[str, int]:
    """The initializers that are weights of Conv / Gemm / MatMul, with their input (reduction) axis.

    Args:
        model: an ``onnx.ModelProto`` or the path of one.

    Returns:
        ``{initializer name: axis}``.
    """
    model = _load(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def source(name: str, axis: int) -> tuple[str, int] | None:
        for _ in range(4):  # through DequantizeLinear / Transpose chains
            if name in inits:
                return name, axis
            node = producer.get(name)
            if node is None:
                return None
            if node.op_type == "DequantizeLinear":
                name = node.input[0]
            elif node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                if perm is None or axis >= len(perm):
                    return None
                axis, name = perm[axis], node.input[0]
            else:
                return None
        return None

    axes: dict[str, int] = {}
    for n in g.node:
        found = None
        if n.op_type == "Conv" and len(n.input) > 1:
            found = source(n.input[1], 1)
        elif n.op_type == "Gemm" and len(n.input) > 1:
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            found = source(n.input[1], 1 if trans_b else 0)
        elif n.op_type == "MatMul" and len(n.input) > 1:
            found = source(n.input[1], 0)
        if found is not None and len(inits[found[0]].dims) >= 2:
            axes[found[0]] = found[1]
    return axes


def group_violations(weight: np.ndarray, axis: int) -> tuple[int, int]:
    """``(groups with more than 2 non-zeros, groups)`` along ``axis`` in groups of 4.

    Raises:
        SparsityCheckError: the axis length is not a multiple of 4.
    """
    if weight.shape[axis] % 4:
        raise SparsityCheckError(f"input dimension {weight.shape[axis]} (axis {axis} of {weight.shape}) is not a "
                                 f"multiple of 4")
    w = np.moveaxis(np.asarray(weight), axis, -1)
    nz = (w.reshape(*w.shape[:-1], w.shape[-1] // 4, 4) != 0).sum(-1)
    return int((nz > 2).sum()), int(nz.size)


def find_2to4(model: Any) -> list[str]:
    """The weights that have the 2:4 pattern along their input axis (and at least one zero).

    Args:
        model: an ``onnx.ModelProto`` or the path of one.

    Returns:
        Initializer names, in graph order of their first consumer.
    """
    from onnx import numpy_helper

    model = _load(model)
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for name, axis in weight_axes(model).items():
        w = numpy_helper.to_array(inits[name])
        if w.shape[axis] % 4 or not np.any(w == 0):
            continue
        if group_violations(w, axis)[0] == 0:
            found.append(name)
    return found


def check_2to4(model: Any, names: list[str]) -> None:
    """Verify that every weight in ``names`` is 2:4 sparse along its input axis.

    Args:
        model: an ``onnx.ModelProto`` or the path of one.
        names: the initializers claimed.

    Raises:
        SparsityCheckError: naming the first claimed weight that is not a Conv/Gemm/MatMul weight, whose
            input dimension is not a multiple of 4, or that has a group of 4 with more than 2 non-zeros
            (how many such groups).
    """
    from onnx import numpy_helper

    model = _load(model)
    if not names:
        raise SparsityCheckError("a 2:4 claim must name at least one weight")
    inits = {t.name: t for t in model.graph.initializer}
    axes = weight_axes(model)
    for name in names:
        if name not in axes:
            raise SparsityCheckError(f"2:4 check: {name!r} is not a Conv/Gemm/MatMul weight of the model")
        w = numpy_helper.to_array(inits[name])
        try:
            bad, total = group_violations(w, axes[name])
        except SparsityCheckError as e:
            raise SparsityCheckError(f"2:4 check: weight {name!r}: {e}") from None
        if bad:
            raise SparsityCheckError(f"2:4 check: weight {name!r} {tuple(w.shape)} has {bad} of {total} groups of 4 "
                                     f"(along axis {axes[name]}) with more than 2 non-zeros")


def sparsity_section(model: Any, pattern: str = "2:4") -> dict[str, Any]:
    """Find the 2:4 weights of a model, check them, and return the manifest's ``sparsity`` section.

    Raises:
        SparsityCheckError: an unknown pattern, or no weight has it.
    """
    if pattern != "2:4":
        raise SparsityCheckError(f"sparsity pattern must be 2:4, got {pattern!r}")
    names = find_2to4(model)
    if not names:
        raise SparsityCheckError("no weight of the model is 2:4 sparse")
    check_2to4(model, names)
    return {"pattern": pattern, "weights": names, "checked": True}


def record_sparsity(bundle_dir: str | os.PathLike, pattern: str = "2:4") -> dict[str, Any]:
    """Check a bundle's model and write its ``sparsity`` section into the manifest (before publishing).

    Meant for a bundle still being assembled in a work folder: the manifest is rewritten atomically and
    the bundle verified again.

    Returns:
        The section written.

    Raises:
        SparsityCheckError: see :func:`sparsity_section`. BundleError: the bundle is invalid.
    """
    from fusionedge.sdk.bundle import MANIFEST_NAME, load_bundle
    from fusionedge.sdk.fileio import write_json_atomic

    bundle = load_bundle(bundle_dir)
    section = sparsity_section(bundle.model_path, pattern)
    manifest = dict(bundle.manifest)
    manifest["sparsity"] = section
    write_json_atomic(Path(bundle_dir) / MANIFEST_NAME, manifest)
    load_bundle(bundle_dir)
    return section
