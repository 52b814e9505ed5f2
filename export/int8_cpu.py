"""Which nodes an INT8 model for ONNX Runtime's CPU provider quantizes: the convolutions that gain.

At a fraction of a GFLOP per clip the student is not bound by arithmetic on a CPU: with every
operator quantized, the Q/DQ pairs around element-wise operators (residual adds, the fusion's
multiplies and concatenations, layer norms, attention products) cost ONNX Runtime more than the
INT8 arithmetic saves — each becomes a ``QLinearAdd``/``QLinearMul``/``QLinearMatMul`` with its own
requantization, plus layout transposes between NCHW and the NHWC that the integer convolution
kernels run in. What pays is the convolutions (most of the FLOPs), chained so that one Q/DQ pair
sits between consecutive convolutions and fuses into ``QLinearConv``. The ``Relu`` (or ``Clip``)
that follows a quantized convolution is quantized with it: the quantizer then gives the
convolution's output the activation's range and ONNX Runtime drops the activation, so one
quantization sits between two convolutions; kept in float, it would leave a
``DequantizeLinear → QuantizeLinear`` requantization (two passes over the feature map) after every
convolution.

:func:`conv_only_keep_float` therefore keeps in float every node but the convolutions and their
activations, and also the convolutions over fewer than :data:`MIN_INPUT_CHANNELS` input channels (the RGB stem): a
3-channel reduction fills no integer dot-product lane, so its integer kernel is slower than the
float one, and its input would need a full-resolution QuantizeLinear of the clip. The result still
has explicit, per-channel Q/DQ on every quantized convolution, which TensorRT parses as well.

Between integer convolutions the values may also pass through operators that only move them
(:data:`MOVES`: a reshape folding frames into the batch, the gather of the last frame, a transpose, a
nearest-neighbour upsampling) or add two integer feature maps that go on into a convolution (the
detection head's lateral features plus its upsampled context). In float, each would be a
``DequantizeLinear`` of a whole feature map, the float operator and a ``QuantizeLinear`` again; quantized
with the same scale as their input, ONNX Runtime drops that pair and moves the 8-bit values (and adds
them with ``QLinearAdd``), so they are quantized too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ACTIVATIONS", "MIN_INPUT_CHANNELS", "MOVES", "conv_only_keep_float"]

#: Convolutions with fewer input channels stay in float.
MIN_INPUT_CHANNELS = 4
#: Activations quantized together with the convolution they follow.
ACTIVATIONS = ("Relu", "Clip")
#: Operators that only move values; quantized when their data input is quantized.
MOVES = ("Reshape", "Gather", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Resize")


def conv_only_keep_float(model: Any) -> list[str]:
    """Names of the nodes to keep in float so that only the worthwhile convolutions are quantized.

    Args:
        model: an FP32 ``onnx.ModelProto``.

    Returns:
        Node names: every node that is neither a quantized ``Conv``, nor the ``Relu``/``Clip`` reading a
        quantized ``Conv``'s output (and no other node reads that output), nor one of :data:`MOVES`
        whose data input is quantized, nor an ``Add`` of quantized inputs read only by quantized
        convolutions; a ``Conv`` stays in float when its weight initializer has fewer than
        :data:`MIN_INPUT_CHANNELS` input channels (or is not an initializer).
    """
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    quantized: set[str] = set()  # outputs of quantized convolutions
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        w = dims.get(n.input[1]) if len(n.input) > 1 else None
        if w is not None and len(w) >= 2 and w[1] >= MIN_INPUT_CHANNELS:
            quantized.add(n.output[0])
    convs = set(quantized)
    done: set[str] = set()  # names of the quantized nodes
    for n in model.graph.node:
        if n.op_type == "Conv" and n.output[0] in convs:
            done.add(n.name)
        elif n.op_type in ACTIVATIONS and n.input and n.input[0] in convs and readers.get(n.input[0]) == 1:
            done.add(n.name)
            quantized.add(n.output[0])
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    changed = True
    while changed:  # moves and adds chain (reshape → gather → ...), so grow until nothing changes
        changed = False
        for n in model.graph.node:
            if n.name in done or not n.input:
                continue
            if n.op_type in MOVES:
                ok = n.input[0] in quantized
            elif n.op_type == "Add":
                outs = consumers.get(n.output[0], [])
                ok = (all(x in quantized for x in n.input) and bool(outs)
                      and all(c.op_type == "Conv" and c.output[0] in convs for c in outs))
            else:
                ok = False
            if ok:
                done.add(n.name)
                quantized.update(n.output)
                changed = True
    return [n.name for n in model.graph.node if n.name not in done]
