"""PTQ (Q/DQ INT8) and FP16 variants: graph form, exclusions, bundle contents, runtime parity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from _precision_fixtures import fp16_variant, int8_variant, student_bundle, synth_data
from fusionedge.export.onnx_export import ExportError
from fusionedge.export.quantize import (
    ArrayCalibrationReader,
    QuantizeConfig,
    frontend_nodes,
    load_calibration_feeds,
    quantize_bundle,
    quantize_onnx,
)
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.perception import Perception


def _cos(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _run(bundle_dir, feeds):
    with Perception.load(bundle_dir) as p:
        return p.backend.infer(feeds)


def test_frontend_nodes_cover_dft_mel_log_only(tmp_path_factory):
    model = onnx.load(str(student_bundle(tmp_path_factory) / "model.onnx"))
    names = frontend_nodes(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    kinds = {ops[n] for n in names}
    assert {"Conv", "MatMul", "Log"} <= kinds  # DFT conv, mel matmul, log
    assert sum(1 for n in names if ops[n] == "Conv") == 1  # the audio CNN after the log is not front end
    video_convs = [n.name for n in model.graph.node if n.op_type == "Conv" and "video" in n.input[0]]
    assert not set(video_convs) & set(names)


def test_int8_bundle_is_qdq_and_runs(tmp_path_factory):
    fp32, int8 = student_bundle(tmp_path_factory), int8_variant(tmp_path_factory)
    b = load_bundle(int8)
    assert b.precision == "int8"
    variant = b.manifest["variant"]
    assert variant["parent"]["model_sha256"] == load_bundle(fp32).manifest["files"]["model.onnx"]["sha256"]
    assert variant["quantization"]["config"]["profile"] == "cpu"
    model = onnx.load(str(b.model_path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # the audio front end stays float: its DFT conv weight comes straight from the float kernel
    # generator (export/onnx_compact.py), with no Q/DQ pair in between, and the generator is excluded
    dft = next(n for n in onnx.load(str(fp32 / "model.onnx")).graph.node
               if n.name in set(frontend_nodes(onnx.load(str(fp32 / "model.onnx")))) and n.op_type == "Conv")
    init = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    assert producer[dft.input[1]].op_type == "Unsqueeze" and "__gen" in producer[dft.input[1]].name
    excluded = set(variant["quantization"]["excluded"])
    assert {n.name for n in model.graph.node if "__gen" in n.name} <= excluded
    # every other convolution's weight is stored as int8 (per channel)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in excluded]
    assert len(convs) > 5
    for conv in convs:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear" and init[dq.input[0]].data_type == onnx.TensorProto.INT8, conv.name
    with Perception.load(int8) as p:
        assert p.self_test() <= 1.0  # the variant's own golden outputs, within its tolerances
    feeds, ref = load_bundle(fp32).golden()
    got = _run(int8, feeds)
    assert _cos(got["event_logits"], ref["event_logits"]) > 0.9


def test_tensorrt_profile_is_symmetric(tmp_path_factory):
    fp32, data = student_bundle(tmp_path_factory), synth_data(tmp_path_factory)
    feeds = load_calibration_feeds(load_bundle(fp32), data, limit=8)
    out = tmp_path_factory.mktemp("trtq") / "m.onnx"
    report = quantize_onnx(fp32 / "model.onnx", out, ArrayCalibrationReader(feeds), QuantizeConfig(profile="tensorrt"))
    model = onnx.load(str(out))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zps = [init[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    assert report["quantized_nodes"] == sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")


def test_bad_inputs_are_refused(tmp_path_factory):
    fp32 = student_bundle(tmp_path_factory)
    with pytest.raises(ExportError, match="profile"):
        QuantizeConfig(profile="gpu")
    with pytest.raises(ExportError, match="calibration"):
        QuantizeConfig(calibration="mse")
    with pytest.raises(ExportError, match="calibration data"):
        quantize_bundle(fp32, tmp_path_factory.mktemp("x") / "out")
    feeds = [load_bundle(fp32).golden()[0]]
    with pytest.raises(ExportError, match="keep_float"):
        quantize_onnx(fp32 / "model.onnx", tmp_path_factory.mktemp("y") / "m.onnx", ArrayCalibrationReader(feeds),
                      QuantizeConfig(keep_float=("no_such_node",)))
    with pytest.raises(ExportError, match="fp32"):
        quantize_bundle(int8_variant(tmp_path_factory), tmp_path_factory.mktemp("z") / "out",
                        reader=ArrayCalibrationReader(feeds))


def test_fp16_bundle_keeps_float32_io(tmp_path_factory):
    fp32, fp16 = student_bundle(tmp_path_factory), fp16_variant(tmp_path_factory)
    b = load_bundle(fp16)
    assert b.precision == "fp16" and b.manifest["variant"]["keep_io_types"] is True
    model = onnx.load(str(b.model_path))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.input)
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    feeds, ref = load_bundle(fp32).golden()
    got = _run(fp16, feeds)
    for name in ref:
        assert _cos(got[name], ref[name]) > 0.999, name
    assert json.loads((fp16 / "manifest.json").read_text())["files"]["model.onnx"]["size"] < \
        (fp32 / "model.onnx").stat().st_size


def test_w4_weights_sit_on_a_4_bit_grid_and_stay_close(tmp_path_factory):
    """weight_bits=4: every quantized weight has at most 15 levels per channel, int8 storage, same graph."""
    from fusionedge.export.quantize import QuantizeConfig, quantize_bundle

    fp32 = student_bundle(tmp_path_factory)
    w8 = int8_variant(tmp_path_factory)
    w4 = quantize_bundle(fp32, fp32.parent / "int8-w4", synth_data(tmp_path_factory), calibration_limit=16,
                         config=QuantizeConfig(weight_bits=4))
    m8, m4 = onnx.load(str(w8 / "model.onnx")), onnx.load(str(w4 / "model.onnx"))
    assert [n.op_type for n in m8.graph.node] == [n.op_type for n in m4.graph.node]  # the same Q/DQ form
    i8 = {t.name: numpy_helper.to_array(t) for t in m8.graph.initializer}
    i4 = {t.name: numpy_helper.to_array(t) for t in m4.graph.initializer}
    weights = [n for n in m4.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in i4
               and i4[n.input[0]].dtype == np.int8]
    assert len(weights) > 5
    for dq in weights:
        q4, s4 = i4[dq.input[0]], i4[dq.input[1]]
        assert np.abs(q4).max() <= 7
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q4.ndim
        if s4.size > 1:
            shape[axis] = -1
        v4 = q4 * s4.reshape(shape)
        v8 = i8[dq.input[0]] * i8[dq.input[1]].reshape(shape)
        # per channel: rounding to the coarser grid moves a weight by at most half a 4-bit step
        step = np.broadcast_to(s4.reshape(shape), v4.shape)
        assert np.all(np.abs(v4 - v8) <= 0.5 * step + 1e-6), dq.name
    # the int32 biases follow the new weight scales (input scale x weight scale), so ONNX Runtime still
    # fuses every Q/DQ convolution into QLinearConv, exactly as for 8-bit weights
    producer = {o: n for n in m4.graph.node for o in n.output}
    checked = 0
    for conv in (n for n in m4.graph.node if n.op_type == "Conv" and len(n.input) > 2):
        b_dq, x_dq = producer.get(conv.input[2]), producer.get(conv.input[0])
        w_dq = producer.get(conv.input[1])
        if not (b_dq and x_dq and w_dq and b_dq.op_type == "DequantizeLinear" and b_dq.input[0] in i4):
            continue
        expected = float(i4[x_dq.input[1]]) * i4[w_dq.input[1]].astype(np.float64)
        np.testing.assert_allclose(i4[b_dq.input[1]], np.broadcast_to(expected, i4[b_dq.input[1]].shape), rtol=1e-6)
        checked += 1
    assert checked >= 1

    def fused(path) -> int:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.optimized_model_filepath = str(fp32.parent / "optimized.onnx")
        ort.InferenceSession(str(path / "model.onnx"), so, providers=["CPUExecutionProvider"])
        return sum(n.op_type == "QLinearConv" for n in onnx.load(so.optimized_model_filepath).graph.node)

    assert fused(w4) == fused(w8) > 5
    # per-tensor weights: the re-derived bias scales stay scalars (a vector there, on a DequantizeLinear
    # without an axis, is a graph ONNX Runtime refuses to run)
    pt = quantize_bundle(fp32, fp32.parent / "int8-w4-pt", synth_data(tmp_path_factory), calibration_limit=16,
                         config=QuantizeConfig(weight_bits=4, per_channel=False))
    ipt = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(pt / "model.onnx")).graph.initializer}
    bias_scales = [ipt[n.input[1]] for n in onnx.load(str(pt / "model.onnx")).graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in ipt and ipt[n.input[0]].dtype == np.int32]
    assert bias_scales and all(sc.size == 1 for sc in bias_scales)
    assert fused(pt) > 5
    assert load_bundle(w4).manifest["variant"]["quantization"]["config"]["weight_bits"] == 4
    with pytest.raises(ExportError, match="weight_bits"):
        QuantizeConfig(weight_bits=9)


def test_cpu_int8_cannot_saturate_the_16_bit_sums_of_avx2_kernels(tmp_path):
    """ONNX Runtime's uint8 x int8 convolution on x86 CPUs without VNNI (AVX2, AVX-512F) adds pairs of
    products in 16 bits: 255 * 127 * 2 = 64,770 saturates at 32,767. Bright inputs through large
    same-sign weights hit it; the cpu profile's 7-bit weight grid (255 * 64 * 2 = 32,640) cannot.
    On a VNNI or ARM CPU the test passes either way; on an AVX2 one it failed before the 7-bit grid."""
    import onnxruntime as ort
    from fusionedge.export.quantize import QuantizeConfig, quantize_onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 1.0, (8, 32, 3, 3)).astype(np.float32)  # every weight large and positive
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "bright",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fp32.onnx")
    feeds = [{"x": rng.uniform(0.9, 1.0, (1, 32, 8, 8)).astype(np.float32)} for _ in range(4)]

    class Reader:
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    report = quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", Reader(), QuantizeConfig())
    assert report["config"]["reduce_range"] is True
    q = onnx.load(str(tmp_path / "int8.onnx"))
    weights = [numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == TensorProto.INT8]
    assert weights and all(-64 <= int(a.min()) and int(a.max()) <= 64 for a in weights)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    fp32 = ort.InferenceSession(str(tmp_path / "fp32.onnx"), opts, providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(tmp_path / "int8.onnx"), opts, providers=["CPUExecutionProvider"])
    ref, got = fp32.run(None, feeds[0])[0], int8.run(None, feeds[0])[0]
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 0.02
