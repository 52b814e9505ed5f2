"""QAT: fake-quant numerics, wrapping/unwrapping, and a short fine-tune that changes weights and records itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _precision_fixtures import SMALL_STUDENT, synth_data
from fusionedge.training.qat import (
    FakeQuantActivation,
    QATConfig,
    _QATFrontend,
    _QATLayer,
    fake_quant_weight,
    finetune_qat,
    prepare_qat,
    strip_qat,
)


def test_fake_quant_weight_grid_and_ste():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    q = fake_quant_weight(w, per_channel=True)
    scale = w.detach().abs().flatten(1).amax(1) / 127
    steps = q.detach() / scale.view(-1, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 127 + 1e-4
    err_pc = (q - w).abs().mean()
    err_pt = (fake_quant_weight(w, per_channel=False) - w).abs().mean()
    assert err_pc <= err_pt
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through
    # 4 bits: the grid PTQ's weight_bits=4 uses, 7 levels each side per channel
    q4 = fake_quant_weight(w.detach(), per_channel=True, bits=4)
    steps4 = q4 / (w.detach().abs().flatten(1).amax(1) / 7).view(-1, 1, 1, 1)
    assert torch.allclose(steps4, steps4.round(), atol=1e-4) and steps4.abs().max() <= 7 + 1e-4
    assert (q4 - w.detach()).abs().mean() > err_pc  # a coarser grid, a larger error
    # the cpu profile's reduced range: 8-bit weights on [-64, 64], as ONNX Runtime's reduce_range
    assert QATConfig().weight_qmax == 64 and QATConfig(reduce_range=False).weight_qmax == 127
    assert QATConfig(weight_bits=4).weight_qmax == 7
    q64 = fake_quant_weight(w.detach(), per_channel=True, qmax=64)
    steps64 = q64 / (w.detach().abs().flatten(1).amax(1) / 64).view(-1, 1, 1, 1)
    assert torch.allclose(steps64, steps64.round(), atol=1e-4) and steps64.abs().max() <= 64 + 1e-4


def test_fake_quant_activation_observes_and_rounds():
    fq = FakeQuantActivation(momentum=0.5).train()
    x = torch.linspace(-1.0, 3.0, 1000)
    y = fq(x)
    assert float(fq.lo) == pytest.approx(-1.0) and float(fq.hi) == pytest.approx(3.0)
    assert len(torch.unique(y)) <= 256 and (y - x).abs().max() <= 4.0 / 255
    fq.eval()
    fq(torch.full((4,), 100.0))
    assert float(fq.hi) == pytest.approx(3.0)  # eval does not move the range


def test_prepare_and_strip_round_trip():
    from fusionedge.training.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("fusion_student", **SMALL_STUDENT).eval()
    n_layers = sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in model.modules())
    video, audio, presence = model.example_inputs(batch=2)
    with torch.no_grad():
        ref = model(video, audio, presence)
        prepare_qat(model, QATConfig(quantize_frontend=True))
        assert sum(isinstance(m, _QATLayer) for m in model.modules()) >= n_layers - 8  # attention's own stay
        assert sum(isinstance(m, _QATFrontend) for m in model.modules()) == 1
        for m in model.modules():  # only the observers train here (BatchNorm statistics must not move)
            if isinstance(m, FakeQuantActivation):
                m.train()
        model(video, audio, presence)
        model.eval()
        fq = model(video, audio, presence)
        assert not torch.equal(fq[0], ref[0])
        strip_qat(model)
        assert not any(isinstance(m, (_QATLayer, _QATFrontend)) for m in model.modules())
        assert torch.allclose(model(video, audio, presence)[0], ref[0], atol=1e-6)


@pytest.mark.slow
def test_short_finetune_changes_weights_and_records_config(tmp_path, tmp_path_factory):
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry
    from fusionedge.training.checkpoint import save_checkpoint
    from fusionedge.training.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("fusion_student", **SMALL_STUDENT)
    ckpt = save_checkpoint(tmp_path / "c.pt", model, model_name="fusion_student", model_config=model.config.to_dict(),
                           geometry=InputGeometry(), labels={"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS),
                                                             "objects": list(OBJECTS)}, metrics={}, epoch=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, info = finetune_qat(ckpt, synth_data(tmp_path_factory), QATConfig(per_channel=False, batch_size=8),
                               progress=False)
    after = tuned.state_dict()
    assert set(after) == set(before)  # stripped: the exportable FP32 module tree
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert info["extra"]["qat"]["per_channel"] is False and info["extra"]["qat"]["samples"] == 24
    assert not tuned.training


def test_qat_to_bundle_lives_in_export_and_writes_a_qat_variant(tmp_path, tmp_path_factory):
    # training/ sits below export/: the bundle-making half of QAT moved out of training/qat.py
    import json

    import fusionedge.training.qat as training_qat
    from fusionedge.export.qat import qat_to_bundle
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry
    from fusionedge.training.checkpoint import save_checkpoint
    from fusionedge.training.models.registry import create_model

    assert not hasattr(training_qat, "qat_to_bundle")
    torch.manual_seed(0)
    model = create_model("fusion_student", **SMALL_STUDENT)
    ckpt = save_checkpoint(tmp_path / "c.pt", model, model_name="fusion_student", model_config=model.config.to_dict(),
                           geometry=InputGeometry(), labels={"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS),
                                                             "objects": list(OBJECTS)}, metrics={}, epoch=1)
    data = synth_data(tmp_path_factory)
    out = qat_to_bundle(ckpt, data, data, tmp_path / "int8-qat", QATConfig(batch_size=8), limit=8,
                        calibration_limit=4, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (tmp_path / "int8-qat-fp32" / "model.onnx").is_file()
    assert manifest["precision"] == "int8" and manifest["variant"]["method"] == "qat"
    assert manifest["variant"]["qat"]["samples"] == 8 and manifest["variant"]["qat"]["reduce_range"] is True
    # the grid QAT rounded to is the grid the export wrote: every int8 conv weight, dequantized, is the
    # fine-tuned float weight through fake_quant_weight on the reduced range
    import numpy as np
    import onnx
    from onnx import numpy_helper

    fp32 = onnx.load(str(tmp_path / "int8-qat-fp32" / "model.onnx"))
    floats = {t.name: numpy_helper.to_array(t).copy() for t in fp32.graph.initializer}
    graph = onnx.load(str(out / "model.onnx")).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    checked = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith("_quantized"):
            continue
        name = node.input[0][: -len("_quantized")]
        q, scale = init.get(node.input[0]), init.get(node.input[1])
        if name not in floats or q is None or q.dtype != np.int8 or q.ndim != 4 or scale.size != q.shape[0]:
            continue
        assert np.abs(q).max() <= 64
        expected = fake_quant_weight(torch.from_numpy(floats[name]), per_channel=True, qmax=QATConfig().weight_qmax)
        got = q.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
        assert np.allclose(got, expected.numpy(), rtol=1e-5, atol=1e-7), name
        checked += 1
    assert checked >= 3


def test_quantized_frontend_feeds_the_pitch_motion_branch_too():
    """With the pitch-motion branch the encoder reads the front end's power and log-mel separately;
    the fake-quantized front end must offer both, and strip back to the same outputs."""
    from fusionedge.training.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("audio_only_student", audio_pitch_motion=True, clip_frames=2, height=32, width=48,
                         audio_samples=4000).eval()
    video, audio, presence = model.example_inputs(batch=2)
    with torch.no_grad():
        ref = model(video, audio, presence)
        prepare_qat(model, QATConfig(quantize_frontend=True))
        for m in model.modules():
            if isinstance(m, FakeQuantActivation):
                m.train()
        model(video, audio, presence)
        model.eval()
        fq = model(video, audio, presence)
        assert all(torch.isfinite(o).all() for o in fq)
        assert not torch.equal(fq[0], ref[0])
        strip_qat(model)
        assert torch.allclose(model(video, audio, presence)[0], ref[0], atol=1e-6)
