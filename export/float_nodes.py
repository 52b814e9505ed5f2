"""Which nodes of an ONNX graph INT8 quantization leaves in float, and which it is meant for.

Quantizing every operator of a model is rarely what keeps its accuracy. Four kinds of node are found
here by reading the graph: the audio front end (:func:`frontend_nodes`: from the waveform input to the
first ``Log``, whose input spans many decades), numerically sensitive operators
(:func:`sensitive_nodes`), the post-processing an exporter left at the end of the graph
(:func:`output_tail_nodes`: e.g. one ``Concat`` of pixel boxes and [0, 1] scores that a single scale
would ruin), and the weight-carrying nodes quantization is for (:func:`weight_nodes`, the ones the
precision gate ranks). :mod:`fusionedge.export.quantize` passes the first three as ``nodes_to_exclude``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "SENSITIVE_OPS",
    "WEIGHT_OPS",
    "frontend_nodes",
    "output_tail_nodes",
    "sensitive_nodes",
    "weight_nodes",
]

#: Operators whose output range is wide or whose error is amplified; kept in float.
SENSITIVE_OPS = ("Log", "Exp", "Softmax", "LayerNormalization", "Erf", "Div", "Sigmoid", "Sqrt", "Pow")
#: Operators that carry weights (the ones quantization shrinks and speeds up).
WEIGHT_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")


def _waveform_input(model: Any) -> str | None:
    """The graph's waveform input: ``audio`` (the fused model's), else the one input of an imported
    model when it is a ``(batch, samples)`` waveform; None when there is none."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if any(i.name == "audio" for i in inputs):
        return "audio"
    if len(inputs) == 1 and len(inputs[0].type.tensor_type.shape.dim) == 2:
        return inputs[0].name
    return None


def frontend_nodes(model: Any) -> list[str]:
    """Names of the audio front-end nodes: every node between the waveform input and the first ``Log``.

    Args:
        model: an ``onnx.ModelProto``: the FusionEdge contract (its ``audio`` input) or an imported
            model whose one input is a ``(batch, samples)`` waveform.

    Returns:
        Node names (the DFT or filterbank convolution, power, mel matmul, log and the shape plumbing
        between them, plus the constant subgraph that generates the DFT kernels, see ``onnx_compact``);
        empty when the graph has no waveform input or no ``Log`` fed from it.
    """
    nodes = list(model.graph.node)
    wave_input = _waveform_input(model)
    if wave_input is None:
        return []
    from_audio: set[str] = {wave_input}
    constant: set[str] = {t.name for t in model.graph.initializer}
    downstream: set[int] = set()
    constant_nodes: set[int] = set()
    for i, n in enumerate(nodes):  # ONNX graphs are topologically sorted
        if any(x in from_audio for x in n.input):
            downstream.add(i)
            from_audio.update(n.output)
        elif all(x in constant for x in n.input if x):  # computed from constants only (e.g. DFT kernels)
            constant.update(n.output)
            constant_nodes.add(i)
    logs = [i for i in sorted(downstream) if nodes[i].op_type == "Log"]
    if not logs:
        return []
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    keep: set[int] = set()
    stack = [logs[0]]
    while stack:
        i = stack.pop()
        if i in keep or (i not in downstream and i not in constant_nodes):
            continue
        keep.add(i)
        stack.extend(producer[x] for x in nodes[i].input if x in producer)
    return [nodes[i].name for i in sorted(keep)]


def sensitive_nodes(model: Any, ops: Iterable[str] = SENSITIVE_OPS) -> list[str]:
    """Names of nodes whose operator is in ``ops``."""
    ops = set(ops)
    return [n.name for n in model.graph.node if n.op_type in ops]


def output_tail_nodes(model: Any) -> list[str]:
    """Names of the nodes that compute the graph's outputs from the last weight-carrying nodes.

    Walking back from every graph output through the nodes that produce it, stopping at (and leaving
    out) Conv / MatMul / Gemm / ConvTranspose: the post-processing an exporter put in the graph, e.g.
    Ultralytics' box decode and the ``Concat`` of boxes and sigmoid scores. Empty when every output
    comes straight from a weight-carrying node (a classifier's logits).
    """
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    keep: set[int] = set()
    stack = [producer[o.name] for o in model.graph.output if o.name in producer]
    while stack:
        i = stack.pop()
        if i in keep or nodes[i].op_type in WEIGHT_OPS:
            continue
        keep.add(i)
        stack.extend(producer[x] for x in nodes[i].input if x in producer)
    return [nodes[i].name for i in sorted(keep)]


def weight_nodes(model: Any) -> list[str]:
    """Names of the weight-carrying nodes (Conv, MatMul, Gemm, ConvTranspose) in graph order."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHT_OPS]
