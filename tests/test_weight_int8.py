"""Weight-only INT8 (export/weight_int8.py): float compute, int8 storage, on ONNX Runtime as it fuses graphs."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _graph(rng: np.random.Generator):
    """A log-mel-like filterbank MatMul (K = 201), a Gemm, a packed projection split and transposed in the
    graph, a learned embedding added to tokens, and small tensors that must stay float."""
    from onnx import TensorProto, helper, numpy_helper

    fb = np.maximum(0.0, 1.0 - np.abs(np.arange(201)[:, None] - np.linspace(0, 200, 64)[None, :]) / 4.0)
    inits = {
        "fb": fb.astype(np.float32),
        "packed": rng.normal(size=(192, 64)).astype(np.float32),
        "split": np.array([64, 64, 64], np.int64),
        "pos": rng.normal(size=(1, 12, 64)).astype(np.float32),
        "gemm_w": rng.normal(size=(32, 64)).astype(np.float32),
        "bias": rng.normal(size=(64,)).astype(np.float32),
        "eps": np.array(1e-6, np.float32),
        "axes": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["power", "fb"], ["mel"]),
        helper.make_node("Add", ["mel", "eps"], ["mel_eps"]),
        helper.make_node("Log", ["mel_eps"], ["logmel"]),  # (1, 12, 64)
        helper.make_node("Add", ["logmel", "pos"], ["tok"]),
        helper.make_node("Split", ["packed", "split"], ["wq", "wk", "wv"], axis=0),
        helper.make_node("Transpose", ["wq"], ["wq_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["tok", "wq_t"], ["q"]),
        helper.make_node("Add", ["q", "bias"], ["qb"]),
        helper.make_node("ReduceMean", ["qb", "axes"], ["pooled"], keepdims=0),
        helper.make_node("Gemm", ["pooled", "gemm_w"], ["logits"], transB=1),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("power", TensorProto.FLOAT, ["b", 12, 201])],
                          [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, ["b", 12, 64]),
                           helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 32])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def test_weight_only_int8_keeps_float_compute_and_shrinks_the_file():
    from fusionedge.export.weight_int8 import int8_weights
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    model = _graph(rng)
    # a power spectrum over 8 decades: 8-bit activations (what ONNX Runtime's MatMulNBits does with a
    # per-column weight scale) turn the small mel energies negative and their log NaN
    power = (rng.random((2, 12, 201)) ** 2 * 10.0 ** rng.uniform(-8, 0, (2, 12, 1))).astype(np.float32)
    ref = _run(model, {"power": power})
    report = int8_weights(model)
    assert sorted(report["weights"]) == ["fb", "gemm_w", "pos", "wq_t"]  # the folded piece; wk, wv: unread, dropped
    assert report["folded"] and report["bytes_after"] < 0.5 * report["bytes_before"]
    assert report["max_rel_error"] <= 0.5 / 127 + 1e-6
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert init["bias"].dtype == np.float32 and init["eps"].dtype == np.float32  # small tensors stay float
    assert init["fb_int8"].dtype == np.int8 and init["wq_t_int8"].dtype == np.int8
    onnx.checker.check_model(model)
    got = _run(model, {"power": power})
    assert np.isfinite(got[0]).all() and np.isfinite(got[1]).all()
    np.testing.assert_allclose(got[0], ref[0], atol=0.02)  # log-mel: the product stayed float
    np.testing.assert_allclose(got[1], ref[1], atol=0.05 * np.abs(ref[1]).max())
