"""The fusion written for a small exported graph computes what the straightforward form computes.

The attention layers of ``training/models/fusion.py`` pack projections, pad the null key in front and
mask with an additive row (see its docstring). These tests hold them to the plain formulation:
``torch.nn.MultiheadAttention`` loaded with the same state dict (which also proves the parameter
layout is torch's) and the locality attention written with a concatenated null key, per-head
reshapes and a masked fill; and they check that the GELU written for ONNX Runtime's fusion is
``nn.GELU`` and is fused into one kernel.
"""

from __future__ import annotations

import math

import pytest
import torch
from fusionedge.training.models import create_model
from fusionedge.training.models.fusion import _CrossAttentionBlock, _LocalCrossAttention, _PackedAttention
from fusionedge.training.models.gelu import Gelu
from torch import nn

PRESENCE = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


def _mha_like(packed: _PackedAttention, dim: int) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(dim, packed.heads, batch_first=True).eval()
    mha.load_state_dict(packed.state_dict(), strict=True)  # the same keys and shapes
    return mha


def _plain_local(att: _LocalCrossAttention, x: torch.Tensor, keys: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
    """The locality attention written plainly: concatenated null key, per-head reshapes, masked fill."""
    b, lq, d = x.shape
    lk, h, hd = keys.shape[1], att.heads, att.head_dim
    kv_in = torch.cat([att.null.expand(b, -1, -1), keys], dim=1)
    q = att.q(x).reshape(b, lq, h, hd).transpose(1, 2)
    k, v = att.kv(kv_in).reshape(b, 1 + lk, 2, h, hd).permute(2, 0, 3, 1, 4)
    local = -att.distance.unsqueeze(0) / att.tau()[:, None, None]
    bias = torch.cat([local.new_zeros(h, lq, 1), local], dim=2).unsqueeze(0)
    logits = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(hd) + bias
    mask = torch.cat([torch.zeros_like(absent), absent.expand(-1, lk)], dim=1)
    weights = logits.masked_fill(mask[:, None, None, :], float("-inf")).softmax(dim=-1)
    return att.out(torch.matmul(weights, v).transpose(1, 2).reshape(b, lq, d))


def _plain_spatial(block: _CrossAttentionBlock, v, a, v_absent, a_absent, dim: int):
    """A spatial block through ``nn.MultiheadAttention`` with a key-padding mask."""
    def keys(tokens, null, absent):
        k = torch.cat([null.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        mask = torch.cat([torch.zeros_like(absent), absent.expand(-1, tokens.shape[1])], dim=1)
        return k, mask

    qv, qa = block.norm_v(v), block.norm_a(a)
    ka, mask_a = keys(qa, block.null_a, a_absent)
    kv, mask_v = keys(qv, block.null_v, v_absent)
    v = v + _mha_like(block.v_from_a, dim)(qv, ka, ka, key_padding_mask=mask_a, need_weights=False)[0]
    a = a + _mha_like(block.a_from_v, dim)(qa, kv, kv, key_padding_mask=mask_v, need_weights=False)[0]
    return v + block.ff_v(v), a + block.ff_a(a)


def _plain_aligned(fu, video_tokens, audio_tokens, presence, frame_tokens):
    """``AlignedAttentionFusion.forward`` composed of the plain layers above."""
    pv, pa = presence[:, 0].reshape(-1, 1, 1), presence[:, 1].reshape(-1, 1, 1)
    v = (fu.proj_v(video_tokens) + fu.pos_v) * pv + fu.missing_v * (1 - pv)
    f = fu.proj_f(frame_tokens) * pv + fu.missing_f * (1 - pv) + fu.time_f
    a = fu.proj_a(audio_tokens) * pa + fu.missing_a * (1 - pa) + fu.time_a
    v_absent, a_absent = presence[:, :1] < 0.5, presence[:, 1:] < 0.5
    d = v.shape[-1]
    for spatial, temporal in zip(fu.spatial, fu.temporal):
        v, a = _plain_spatial(spatial, v, a, v_absent, a_absent, d)
        qf, qa = temporal.norm_f(f), temporal.norm_a(a)
        f = f + _plain_local(temporal.f_from_a, qf, qa, a_absent)
        a = a + _plain_local(temporal.a_from_f, qa, qf, v_absent)
        f, a = f + temporal.ff_f(f), a + temporal.ff_a(a)
    pooled = [v.mean(1), v.amax(1), f.mean(1), f.amax(1), a.mean(1), a.amax(1)]
    return fu.norm(torch.cat(pooled, dim=1))


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    m = create_model("fusion_student").eval()
    with torch.no_grad():  # trained-looking parameters: nothing left at its zero initialization
        for name, p in m.fusion.named_parameters():
            if "log_tau" not in name:
                p.add_(0.05 * torch.randn_like(p))
    return m


def _tokens(model, batch: int, seed: int):
    c, g = model.config, torch.Generator().manual_seed(seed)
    cv = model.video_encoder.out_channels
    return (torch.randn(batch, c.video_tokens, cv, generator=g), torch.randn(batch, c.audio_tokens, c.audio_dim, generator=g),
            torch.randn(batch, c.clip_frames, cv, generator=g))


def test_packed_attention_is_torch_multihead_attention(student):
    block = student.fusion.spatial[0]
    d = student.config.fusion_dim
    v, a, _ = _tokens(student, 4, seed=1)
    v, a = student.fusion.proj_v(v), student.fusion.proj_a(a)
    absent_v, absent_a = PRESENCE[:, :1] < 0.5, PRESENCE[:, 1:] < 0.5
    with torch.no_grad():
        got = block(v, a, absent_v, absent_a)
        want = _plain_spatial(block, v, a, absent_v, absent_a, d)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_locality_attention_is_the_plain_formula(student):
    att = student.fusion.temporal[0].f_from_a
    c = student.config
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, c.clip_frames, c.fusion_dim, generator=g)
    keys = torch.randn(4, c.audio_tokens, c.fusion_dim, generator=g)
    absent = torch.tensor([[False], [True], [False], [True]])
    with torch.no_grad():
        got, weights = att(x, keys, absent, need_weights=True)
        torch.testing.assert_close(got, _plain_local(att, x, keys, absent), rtol=1e-5, atol=1e-5)
    assert torch.all(weights[1, :, :, 1:] == 0) and torch.all(weights[3, :, :, 1:] == 0)  # absent keys: weight 0
    assert torch.allclose(weights.sum(-1), torch.ones(()))


def test_aligned_fusion_matches_the_plain_layers_for_every_presence_pattern(student):
    v, a, f = _tokens(student, 4, seed=3)
    with torch.no_grad():
        got = student.fusion(v, a, PRESENCE, f)
        want = _plain_aligned(student.fusion, v, a, PRESENCE, f)
    assert got.shape == (4, student.fusion.out_dim) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gelu_is_the_exact_gelu():
    x = torch.linspace(-8, 8, 4001)
    torch.testing.assert_close(Gelu()(x), nn.GELU()(x), rtol=1e-6, atol=1e-6)


def test_every_gelu_of_the_student_is_the_fusable_one(student):
    assert not any(isinstance(m, nn.GELU) for m in student.modules())
    assert sum(isinstance(m, Gelu) for m in student.modules()) >= 3


def test_onnxruntime_fuses_the_exported_gelu_into_one_kernel(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import onnx

    net = nn.Sequential(nn.Linear(8, 16), Gelu(), nn.Linear(16, 4)).eval()
    x = torch.randn(3, 5, 8)
    path = tmp_path / "gelu.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=18, external_data=False, verbose=False)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "Erf" not in ops and sum(op in ("Gelu", "BiasGelu", "FastGelu") for op in ops) == 1, ops
    with torch.no_grad():
        want = net(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - want).max() < 1e-5
