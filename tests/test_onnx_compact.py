"""export/onnx_compact.py: the DFT kernels generated in-graph are the kernels, metadata is gone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fusionedge.export.onnx_compact import compact_model, dft_reference, inline_generated


def _conv_model(weight: np.ndarray) -> onnx.ModelProto:
    """x (1, 1, S) → Conv(x, W): the front end's first op, with W as an initializer."""
    n_fft = weight.shape[2]
    node = helper.make_node("Conv", ["x", "W"], ["y"], pads=[n_fft // 2, n_fft // 2], strides=[160],
                            name="conv")
    node.doc_string = "stack trace ..."
    node.metadata_props.add(key="pkg.torch.onnx.stack_trace", value="File ... line 1")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1600])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[0], 11])],
                              initializer=[numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("n_fft", [400, 512, 64])
def test_generated_kernels_compute_the_same_convolution(n_fft):
    weight = dft_reference(n_fft).astype(np.float32)
    model = _conv_model(weight)
    x = np.random.default_rng(0).standard_normal((1, 1, 1600)).astype(np.float32)
    before = _run(model, x)
    info = compact_model(model)
    assert info["generated"] == ["W"] and info["stripped_nodes"] == 1
    assert "W" not in {t.name for t in model.graph.initializer}
    assert info["bytes_after"] < info["bytes_before"] - weight.nbytes // 2
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert conv.doc_string == "" and len(conv.metadata_props) == 0
    assert {n.op_type for n in model.graph.node} <= {"Conv", "Mul", "Div", "Floor", "Sub", "Cos", "Sin", "Neg",
                                                     "Concat", "Unsqueeze"}  # no Mod: TensorRT parses all
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # types of the generator are consistent
    after = _run(model, x)
    # the generated kernels are the float64 reference to float32 rounding: the outputs agree to ~1e-6
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=2e-5 * np.abs(before).max())


def test_generated_tensor_matches_float64_reference():
    model = _conv_model(dft_reference(400).astype(np.float32))
    compact_model(model)
    model.graph.output.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [402, 1, 400]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    kernel = sess.run(["W"], {"x": np.zeros((1, 1, 1600), np.float32)})[0]
    assert kernel.shape == (402, 1, 400)
    assert np.abs(kernel - dft_reference(400)).max() < 1e-6  # the angle is reduced exactly before cos/sin


def test_other_kernels_are_left_alone():
    weight = dft_reference(400).astype(np.float32)
    weight[3, 0, 7] += 1e-3  # not the DFT any more
    model = _conv_model(weight)
    info = compact_model(model)
    assert info["generated"] == []
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), weight)


def test_inline_generated_restores_the_initializer():
    model = _conv_model(dft_reference(256).astype(np.float32))
    compact_model(model)
    assert inline_generated(model) == ["W"]
    assert not any("__gen" in n.name for n in model.graph.node)
    restored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(restored) == {"W"}
    np.testing.assert_allclose(restored["W"], dft_reference(256), atol=1e-7)


def test_frontend_matches_the_training_definition():
    torch = pytest.importorskip("torch")
    from fusionedge.training.models.audio_frontend import dft_kernels

    del torch
    np.testing.assert_allclose(dft_kernels(400).numpy(), dft_reference(400), atol=1e-12)
