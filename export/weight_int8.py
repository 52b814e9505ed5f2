"""Weight-only INT8: the float weights an INT8 model keeps, stored as int8 with a DequantizeLinear.

An INT8 model for a CPU quantizes only the operators whose integer kernels pay (the convolutions,
:mod:`fusionedge.export.int8_cpu`); the fusion's projections, the heads' linear layers and the
log-mel filterbank stay float because their Q/DQ pairs would cost more than their arithmetic saves.
Their weights are still most of the file. :func:`int8_weights` stores each such weight as a
symmetric int8 initializer (zero-point 0, one scale per row of a ``MatMul`` weight, per output
channel of a ``Gemm`` weight, else one per tensor) followed by a ``DequantizeLinear`` whose float output feeds
the same node as before, so the computation stays float, the file shrinks by about 4x for those
tensors, and the graph keeps the explicit Q/DQ form that TensorRT parses (a weight-only
``DequantizeLinear`` directly on a ``MatMul``/``Gemm`` weight). Where the other input of a ``MatMul``
already comes out of a ``DequantizeLinear`` (a quantized convolution's output), ONNX Runtime may run
the pair as one integer product (``MatMulIntegerToFloat``); that is the same arithmetic up to rounding.

Only initializers with at least :data:`MIN_ELEMENTS` values whose every reader is a ``MatMul``, a
``Gemm`` or (for a learned embedding of rank >= 2, one scale per tensor) an ``Add`` are converted; a
weight read any other way (a bias, a LayerNorm scale, a shape) is left alone. The zero-point input is
left out (it is 0 by default). The exporter splits an attention's packed projection weight and transposes the pieces
inside the graph (``Split``/``Transpose`` of an initializer); those nodes are folded into
initializers first (:func:`fold_weight_layout`), as TensorRT and ONNX Runtime would fold them, so
each piece is a plain weight of its ``MatMul``. The model's ``value_info`` (intermediate shapes the
exporter recorded, which every runtime infers again) is dropped as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIN_ELEMENTS", "WEIGHT_READERS", "fold_weight_layout", "int8_weights"]

#: Smaller float initializers stay float (their scales would cost about as much as they save).
MIN_ELEMENTS = 256
#: The operators whose first or second input may be a weight-only INT8 tensor; an ``Add`` only for a
#: tensor of rank >= 2 (a learned embedding added to tokens, not a bias).
WEIGHT_READERS = ("MatMul", "Gemm", "Add")


def _axis(uses: list[tuple[Any, int]], ndim: int) -> int | None:
    """The output-channel axis of a 2-D weight for all of its ``(reader, input index)``, or None (per-tensor)."""
    if ndim != 2 or any(n.op_type == "Add" for n, _ in uses):
        return None
    axes = set()
    for n, i in uses:
        if n.op_type == "MatMul":
            # one scale per row: per output row of W (M, K) @ x, per input row of x @ W (K, N). ONNX
            # Runtime folds a DequantizeLinear with per-column or per-tensor scales on a MatMul weight
            # into MatMulNBits, which quantizes the activations to 8 bits on the fly (the log-mel
            # filterbank's power spectrum then turns negative and its log NaN); per-row scales keep
            # the product float
            axes.add(0)
            continue
        trans = next((a.i for a in n.attribute if a.name == ("transB" if i == 1 else "transA")), 0)
        if i == 1:
            axes.add(0 if trans else 1)  # x (M, K) @ W (K, N): one scale per output column N
        else:
            axes.add(1 if trans else 0)  # W (M, K) @ x (K, N): one scale per output row M
    return axes.pop() if len(axes) == 1 else None


def fold_weight_layout(model: Any) -> list[str]:
    """Fold every ``Split`` and ``Transpose`` whose inputs are all initializers into initializers, in place.

    Returns:
        The names of the folded nodes.
    """
    from onnx import numpy_helper

    g = model.graph
    folded = []
    changed = True
    while changed:
        changed = False
        init = {t.name: t for t in g.initializer}
        for node in list(g.node):
            if node.op_type not in ("Split", "Transpose") or not all(x in init for x in node.input if x):
                continue
            x = numpy_helper.to_array(init[node.input[0]])
            attrs = {a.name: a for a in node.attribute}
            if node.op_type == "Transpose":
                perm = list(attrs["perm"].ints) if "perm" in attrs else None
                outs = [np.transpose(x, perm)]
            else:
                axis = attrs["axis"].i if "axis" in attrs else 0
                if len(node.input) > 1 and node.input[1]:
                    sizes = numpy_helper.to_array(init[node.input[1]]).tolist()
                elif "split" in attrs:
                    sizes = list(attrs["split"].ints)
                else:
                    sizes = [x.shape[axis] // len(node.output)] * len(node.output)
                outs = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
            g.node.remove(node)
            g.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(o), name)
                                 for o, name in zip(outs, node.output) if name)
            folded.append(node.name)
            changed = True
        if changed:  # drop what no node reads any more
            read = {x for n in g.node for x in n.input} | {o.name for o in g.output}
            keep = [t for t in g.initializer if t.name in read]
            del g.initializer[:]
            g.initializer.extend(keep)
    return folded


def int8_weights(model: Any, *, keep: tuple[str, ...] = (), min_elements: int = MIN_ELEMENTS) -> dict[str, Any]:
    """Store the large float ``MatMul``/``Gemm`` weights of ``model`` as weight-only INT8, in place.

    Args:
        model: an ``onnx.ModelProto`` (opset >= 13; typically a Q/DQ model from ``quantize_onnx``).
        keep: initializer names to leave in float.
        min_elements: smallest weight converted.

    Returns:
        ``{"weights": [names converted], "folded": [layout nodes folded], "bytes_before": int, "bytes_after": int, "max_rel_error": float}``
        (``max_rel_error``: the largest rounding error over all converted weights, relative to the
        largest magnitude in its channel).
    """
    from onnx import TensorProto, helper, numpy_helper

    before = model.ByteSize()
    folded = fold_weight_layout(model)
    g = model.graph
    readers: dict[str, list[tuple[Any, int]]] = {}
    for n in g.node:
        for i, x in enumerate(n.input):
            readers.setdefault(x, []).append((n, i))
    graph_outputs = {o.name for o in g.output}
    done: list[str] = []
    worst = 0.0
    new_nodes = []
    for init in list(g.initializer):
        if init.data_type != TensorProto.FLOAT or init.name in keep or init.name in graph_outputs:
            continue
        uses = readers.get(init.name, [])
        if not uses or any(n.op_type not in WEIGHT_READERS or i > 1 for n, i in uses):
            continue
        w = numpy_helper.to_array(init).astype(np.float32)
        if w.size < min_elements or (w.ndim < 2 and any(n.op_type == "Add" for n, _ in uses)):
            continue
        axis = _axis(uses, w.ndim)
        if axis is None:
            amax = np.full((), np.abs(w).max(), dtype=np.float64)
            shape = ()
        else:
            other = 1 - axis
            amax = np.abs(w).max(axis=other).astype(np.float64)
            shape = [1, 1]
            shape[axis] = -1
        scale = np.maximum(amax / 127.0, 1e-12).astype(np.float32)
        s = scale.reshape(shape) if axis is not None else scale
        q = np.clip(np.round(w / s), -127, 127).astype(np.int8)
        err = np.abs(q.astype(np.float32) * s - w) / np.maximum(np.where(s > 0, s * 127.0, 1.0), 1e-12)
        worst = max(worst, float(err.max()))
        q_name, s_name = f"{init.name}_int8", f"{init.name}_int8_scale"
        g.initializer.remove(init)
        g.initializer.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name)])
        attrs = {"axis": axis} if axis is not None else {}
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name], [init.name],
                                          name=f"{init.name}_dq", **attrs))
        done.append(init.name)
    if new_nodes:
        old = list(g.node)
        del g.node[:]
        g.node.extend(new_nodes + old)  # before every reader: the graph stays topologically sorted
    del g.value_info[:]
    return {"weights": done, "folded": folded, "bytes_before": before, "bytes_after": model.ByteSize(),
            "max_rel_error": worst}
