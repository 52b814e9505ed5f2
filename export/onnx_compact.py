"""Make an exported ONNX file small without changing what it computes.

Two things bloat the dynamo exporter's output for a device:

* **Per-node metadata**: every node carries ``doc_string`` / ``metadata_props`` with the PyTorch
  stack trace and module path (~2.5 KB per convolution, ~17% of the student's file). Useful while
  debugging an export, dead weight on a device; removed.
* **The audio front end's DFT kernels**: ``(2F, 1, n_fft)`` Hann-windowed cosines and sines, 643 KB
  for n_fft = 400 — a quarter of the FP32 student and, since the front end stays in float, most of an
  INT8 one. They are a pure function of ``n_fft``, so the initializer is replaced by a ~20-node
  subgraph that computes them from two small index vectors. ONNX Runtime (constant folding at
  session creation) and TensorRT (constant folding while building) compute it once, so inference does
  the same work as before.

The kernel subgraph reduces the angle index exactly before the trigonometry — ``m = k·n mod n_fft``
computed as ``k·n − n_fft·floor(k·n / n_fft)`` in float32, exact because every ``k·n < 2^24`` and the
division is at least ``1/n_fft`` away from an integer unless exact — so ``cos(2π m / n_fft)`` is
accurate to float32 rounding (≤ 5e-7 from the float64 reference), like the initializer it replaces.
It uses only Mul, Div, Floor, Sub, Cos, Sin, Neg, Concat and Unsqueeze on float32 (all supported by
TensorRT's ONNX parser; no ``Mod``). An initializer is replaced only when its values match the
formula, so a model with other kernels is left alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["compact_model", "inline_generated", "dft_reference"]


def dft_reference(n_fft: int) -> np.ndarray:
    """The front end's kernels in float64: ``(2F, 1, n_fft)``, cosines then negative sines, Hann-windowed.

    Must equal ``training.models.audio_frontend.dft_kernels`` (a test checks it; export does not import
    training code).
    """
    n = np.arange(n_fft, dtype=np.float64)
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / n_fft)
    angle = 2.0 * math.pi * np.outer(k, n) / n_fft
    return np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])[:, None, :]


def _is_dft(a: np.ndarray) -> bool:
    if a.dtype != np.float32 or a.ndim != 3 or a.shape[1] != 1:
        return False
    n_fft = a.shape[2]
    if n_fft < 2 or a.shape[0] != 2 * (n_fft // 2 + 1):
        return False
    return bool(np.allclose(a, dft_reference(n_fft), rtol=0.0, atol=1e-6))


def _dft_subgraph(name: str, n_fft: int) -> tuple[list[Any], list[Any]]:
    """Nodes and (tiny) initializers that compute the DFT kernel tensor ``name``."""
    from onnx import helper, numpy_helper

    p = f"{name}__gen"
    f32 = np.float32
    inits = [
        numpy_helper.from_array(np.arange(n_fft, dtype=f32)[None, :], f"{p}_n"),  # (1, N)
        numpy_helper.from_array(np.arange(n_fft // 2 + 1, dtype=f32)[:, None], f"{p}_k"),  # (F, 1)
        numpy_helper.from_array(np.array(n_fft, dtype=f32), f"{p}_N"),
        numpy_helper.from_array(np.array(2.0 * math.pi / n_fft, dtype=f32), f"{p}_step"),
        numpy_helper.from_array(np.array(0.5, dtype=f32), f"{p}_half"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}_axis1"),
    ]
    N = helper.make_node
    nodes = [
        N("Mul", [f"{p}_k", f"{p}_n"], [f"{p}_kn"]),  # (F, N) exact integers
        N("Div", [f"{p}_kn", f"{p}_N"], [f"{p}_q"]),
        N("Floor", [f"{p}_q"], [f"{p}_qf"]),
        N("Mul", [f"{p}_qf", f"{p}_N"], [f"{p}_qN"]),
        N("Sub", [f"{p}_kn", f"{p}_qN"], [f"{p}_m"]),  # k·n mod N, exact
        N("Mul", [f"{p}_m", f"{p}_step"], [f"{p}_angle"]),  # in [0, 2π)
        N("Mul", [f"{p}_n", f"{p}_step"], [f"{p}_wangle"]),
        N("Cos", [f"{p}_wangle"], [f"{p}_wcos"]),
        N("Mul", [f"{p}_wcos", f"{p}_half"], [f"{p}_whc"]),
        N("Sub", [f"{p}_half", f"{p}_whc"], [f"{p}_window"]),  # periodic Hann (1, N)
        N("Cos", [f"{p}_angle"], [f"{p}_cos"]),
        N("Sin", [f"{p}_angle"], [f"{p}_sin"]),
        N("Neg", [f"{p}_sin"], [f"{p}_nsin"]),
        N("Mul", [f"{p}_cos", f"{p}_window"], [f"{p}_re"]),
        N("Mul", [f"{p}_nsin", f"{p}_window"], [f"{p}_im"]),
        N("Concat", [f"{p}_re", f"{p}_im"], [f"{p}_cat"], axis=0),  # (2F, N)
        N("Unsqueeze", [f"{p}_cat", f"{p}_axis1"], [name]),  # (2F, 1, N)
    ]
    for i, node in enumerate(nodes):
        node.name = f"{p}_{i}_{node.op_type}"
    return nodes, inits


def compact_model(model: Any) -> dict:
    """Strip per-node metadata and replace DFT-kernel initializers by their generator, in place.

    Args:
        model: an ``onnx.ModelProto`` (modified).

    Returns:
        ``{"stripped_nodes": int, "generated": [initializer names], "bytes_before": int,
        "bytes_after": int}`` (serialized sizes).
    """
    from onnx import numpy_helper

    before = model.ByteSize()
    g = model.graph
    stripped = 0
    for node in g.node:
        if node.doc_string or len(node.metadata_props):
            stripped += 1
        node.doc_string = ""
        del node.metadata_props[:]
    generated = []
    for init in list(g.initializer):
        if init.data_type != 1 or len(init.dims) != 3 or init.dims[1] != 1:  # cheap filter: float (2F, 1, N)
            continue
        if not _is_dft(numpy_helper.to_array(init)):
            continue
        nodes, inits = _dft_subgraph(init.name, int(init.dims[2]))
        g.initializer.remove(init)
        g.initializer.extend(inits)
        old = list(g.node)
        del g.node[:]
        g.node.extend(nodes + old)  # before every consumer: the graph stays topologically sorted
        generated.append(init.name)
    if generated:  # a stale declared type (a converter may have recorded one) must not contradict the generator
        vi = [v for v in g.value_info if v.name not in generated]
        del g.value_info[:]
        g.value_info.extend(vi)
    return {"stripped_nodes": stripped, "generated": generated, "bytes_before": before,
            "bytes_after": model.ByteSize()}


def inline_generated(model: Any) -> list[str]:
    """Undo the kernel generation of ``compact_model``, in place: the generated tensors become float32
    initializers again.

    For converters that cannot keep a constant subgraph in float32 — ONNX Runtime's FP16 converter
    round-trips the tensors between blocked nodes through float16, and ``k·n`` (up to 79,800)
    overflows float16.

    Args:
        model: an ``onnx.ModelProto`` (modified).

    Returns:
        The names of the tensors made initializers again.
    """
    from onnx import numpy_helper

    g = model.graph
    names = [n.output[0] for n in g.node if n.name.endswith("_Unsqueeze") and n.output
             and n.name.startswith(f"{n.output[0]}__gen_")]
    for name in names:
        prefix = f"{name}__gen"
        n_fft = next(int(t.dims[-1]) for t in g.initializer if t.name == f"{prefix}_n")
        keep = [n for n in g.node if not n.name.startswith(prefix + "_")]
        del g.node[:]
        g.node.extend(keep)
        inits = [t for t in g.initializer if not t.name.startswith(prefix + "_")]
        del g.initializer[:]
        g.initializer.extend(inits)
        g.initializer.append(numpy_helper.from_array(dft_reference(n_fft).astype(np.float32), name))
    return names
