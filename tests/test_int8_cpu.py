"""Which nodes an INT8 model for a CPU quantizes (``export/int8_cpu.py``), on a graph built by hand.

Between two integer convolutions, operators that only move values (reshape, gather, nearest resize)
and an add of two integer maps feeding a convolution are quantized too, so no float round trip sits
between the convolutions; an add whose result leaves for float operators stays float.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")


def _graph() -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)
    inits = [w("w_rgb", 8, 3, 3, 3), w("w1", 8, 8, 3, 3), w("w_ctx", 8, 8, 1, 1), w("w3", 8, 8, 3, 3),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"), i64("flat", [0, 8, 64]),
             i64("frames", [-1, 2, 8, 8, 8]), i64("last", 1)]
    N = helper.make_node
    nodes = [
        N("Conv", ["x", "w_rgb"], ["c0"], name="rgb", pads=[1, 1, 1, 1]),  # 3 input channels: float
        N("Relu", ["c0"], ["r0"], name="rgb_relu"),
        N("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        N("Relu", ["c1"], ["r1"], name="relu1"),
        N("Reshape", ["r1", "frames"], ["per_clip"], name="fold"),  # (1, 2, 8, 8, 8): frames out of the batch
        N("Gather", ["per_clip", "last"], ["last_frame"], name="last", axis=1),  # (1, 8, 8, 8)
        N("Conv", ["last_frame", "w_ctx"], ["ctx"], name="context", strides=[2, 2]),  # (1, 8, 4, 4)
        N("Resize", ["ctx", "", "scales"], ["up"], name="up", mode="nearest"),
        N("Add", ["last_frame", "up"], ["sum"], name="add_into_conv"),
        N("Conv", ["sum", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        N("Relu", ["c3"], ["y"], name="relu3"),
        N("Add", ["last_frame", "up"], ["y_sum"], name="add_out"),  # read by no convolution: float
        N("Reshape", ["r1", "flat"], ["tokens"], name="tokens"),
        N("ReduceMean", ["tokens"], ["y_mean"], name="mean", axes=[2], keepdims=0),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info(n, f, None) for n in ("y", "y_sum", "y_mean")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_moves_and_adds_between_integer_convolutions_are_quantized():
    from fusionedge.export.int8_cpu import conv_only_keep_float

    keep = set(conv_only_keep_float(_graph()))
    assert keep == {"rgb", "rgb_relu", "add_out", "mean"}


def test_the_quantized_graph_runs_close_to_float(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from fusionedge.export.int8_cpu import conv_only_keep_float
    from fusionedge.export.quantize import ArrayCalibrationReader, QuantizeConfig, quantize_onnx

    model = _graph()
    fp_path, q_path = tmp_path / "fp.onnx", tmp_path / "q.onnx"
    onnx.save(model, str(fp_path))
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    quantize_onnx(fp_path, q_path, ArrayCalibrationReader(feeds),
                  QuantizeConfig(keep_float=tuple(conv_only_keep_float(model))))
    q = onnx.load(str(q_path))
    q_in = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    by_name = {n.name: n for n in q.graph.node}
    for name in ("fold", "last", "up", "add_into_conv"):  # their results are quantized again
        assert by_name[name].output[0] in q_in, name
    assert "y_sum" not in q_in and by_name["add_out"].output[0] == "y_sum"  # the float add stays float
    fp = ort.InferenceSession(str(fp_path), providers=["CPUExecutionProvider"])
    qs = ort.InferenceSession(str(q_path), providers=["CPUExecutionProvider"])
    want, got = fp.run(None, feeds[0]), qs.run(None, feeds[0])
    for w, g in zip(want, got):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 0.05 * np.abs(w).max() + 1e-3
