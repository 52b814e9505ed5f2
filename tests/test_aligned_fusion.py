"""Time-aligned fusion (``aligned_attention`` / ``fusion_student``): timestamps, time code, locality,
presence masking and export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fusionedge.sdk.preprocess import clip_frame_indices
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry
from fusionedge.training.models import create_model, model_config
from fusionedge.training.models.encoders import (
    AudioEncoder,
    ClipEncoder,
    audio_token_spans,
    audio_token_times,
    frame_times,
)
from fusionedge.training.models.fusion import AlignedAttentionFusion, build_fusion, time_embedding

GEOMETRY = InputGeometry()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("fusion_student").eval()


def _fusion_inputs(model, batch: int, seed: int):
    c, g = model.config, torch.Generator().manual_seed(seed)
    cv = model.video_encoder.out_channels
    return (torch.randn(batch, c.video_tokens, cv, generator=g),
            torch.randn(batch, c.audio_tokens, c.audio_dim, generator=g),
            torch.randn(batch, c.clip_frames, cv, generator=g))  # spatial, audio, frame tokens


# ------------------------------------------------------------------------------------------ timestamps


@pytest.mark.parametrize("fps", [10.0, 25.0, 30.0, 1000.0])
def test_frame_times_follow_the_clip_frame_indices_rule(fps):
    times = np.array(frame_times(GEOMETRY.clip_frames, GEOMETRY.clip_seconds))
    idx = clip_frame_indices(int(10 * fps), fps, GEOMETRY)  # a long video: the window is never cut
    actual = idx / fps  # s from the window start
    # the last frame is the one at or just before the window end, and indices are rounded
    assert np.all(np.abs(actual - times) <= 1.5 / fps + 1e-9), (actual, times)
    assert times[0] == 0.0 and times[-1] == GEOMETRY.clip_seconds
    assert np.allclose(np.diff(times), GEOMETRY.clip_seconds / (GEOMETRY.clip_frames - 1))


def test_frame_times_edge_cases_and_config():
    assert frame_times(1, 0.5) == (0.5,)  # a single frame is the current one, at the end
    assert model_config("fusion_student").frame_times == (0.0, 1 / 3, 2 / 3, 1.0)
    with pytest.raises(ValueError, match="clip_frames"):
        frame_times(0, 1.0)
    with pytest.raises(ValueError, match="clip_seconds"):
        frame_times(4, 0.0)


def test_audio_token_times_are_span_centres_every_eight_hops():
    c = model_config("fusion_student")
    times = audio_token_times(c.audio_samples, c.sample_rate, c.n_fft, c.hop_length)
    assert len(times) == c.audio_tokens == 13
    # token j sits on log-mel frame 8j, i.e. sample 8j * hop: 0, 80, 160, ... 960 ms
    assert np.allclose(times, [8 * j * c.hop_length / c.sample_rate for j in range(13)], atol=1e-12)
    assert c.audio_token_times == times
    for depth in (0, 1, 2):  # the extra stride-1 convolutions widen the span but keep its centre
        spans = audio_token_spans(c.audio_samples, c.sample_rate, c.n_fft, c.hop_length, depth)
        assert np.allclose([(a + b) / 2 for a, b in spans], times, atol=1e-12)
    # three stride-2 3-tap convs reach frames 8j-7..8j+7; frame n reads samples 160n-199..160n+199
    spans = audio_token_spans(c.audio_samples, c.sample_rate, c.n_fft, c.hop_length, 0)
    assert spans[5] == ((160 * 33 - 199) / 16000, (160 * 47 + 199) / 16000)
    odd = audio_token_times(16000, 16000, 401, 160)  # odd window: centred half a sample later
    assert np.allclose(np.array(odd) - np.array(times), 0.5 / 16000)
    with pytest.raises(ValueError):
        audio_token_times(16000, 16000, 1, 160)


def test_audio_token_spans_match_the_encoders_receptive_field():
    """The samples each token's gradient reaches are exactly its span (cut to the waveform)."""
    c = model_config("fusion_student")
    torch.manual_seed(0)
    enc = AudioEncoder(c.audio_channels, c.audio_depth, c.audio_dim, c.sample_rate, c.n_fft, c.hop_length,
                       c.n_mels, c.f_min, c.f_max).eval()
    # make it linear with positive weights, so no ReLU or cancellation hides part of the field
    for mod in list(enc.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(mod, name, nn.Identity())
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            with torch.no_grad():
                mod.weight.abs_()
    audio = (torch.rand(1, c.audio_samples, generator=torch.Generator().manual_seed(2)) - 0.5).requires_grad_(True)
    tokens, _ = enc(audio)  # (1, N, D)
    spans = audio_token_spans(c.audio_samples, c.sample_rate, c.n_fft, c.hop_length, c.audio_depth)
    assert tokens.shape[1] == len(spans)
    for j, (first, last) in enumerate(spans):
        (grad,) = torch.autograd.grad(tokens[0, j].sum(), audio, retain_graph=True)
        support = torch.nonzero(grad[0]).flatten()
        lo, hi = round(first * c.sample_rate), round(last * c.sample_rate)
        assert (int(support[0]), int(support[-1])) == (max(lo, 0), min(hi, c.audio_samples - 1)), j
        assert len(support) == min(hi, c.audio_samples - 1) - max(lo, 0) + 1  # no gaps


# ------------------------------------------------------------------------------------------ frame tokens


def test_frame_tokens_are_per_frame_and_only_where_asked():
    torch.manual_seed(0)
    enc = ClipEncoder((8, 8, 8, 16), 0, 4, frame_tokens=True).eval()
    video = torch.randn(2, 4, 3, 32, 48)
    with torch.no_grad():
        *plain, frames = enc.forward_with_frames(video)
        for a, b in zip(plain, enc(video)):
            assert torch.equal(a, b)
        assert frames.shape == (2, 4, 16)
        changed = video.clone()
        changed[:, 0] = torch.randn(2, 3, 32, 48)
        diff = (enc.forward_with_frames(changed)[-1] - frames).abs().amax(dim=(0, 2))  # (T,)
    # the temporal kernel (3) spreads frame 0 to token 1 at most: token order is frame order
    assert diff[0] > 0 and diff[1] > 0 and diff[2] == 0 and diff[3] == 0
    with pytest.raises(RuntimeError, match="frame_tokens"):
        ClipEncoder((8, 8, 8, 16), 0, 4).forward_with_frames(video)
    keys = create_model("xattn_student").state_dict().keys()
    assert not any("frame_proj" in k for k in keys)  # only a time-aligned fusion builds the frame tokens
    assert any(k.startswith("video_encoder.frame_proj") for k in create_model("fusion_student").state_dict())


# ------------------------------------------------------------------------------------------ time code


def test_time_embedding_is_one_function_for_both_modalities(model):
    fu, c = model.fusion, model.config
    assert torch.equal(fu.time_f[0], time_embedding(torch.tensor(c.frame_times), c.fusion_dim))
    assert torch.equal(fu.time_a[0], time_embedding(torch.tensor(c.audio_token_times), c.fusion_dim))
    assert torch.equal(fu.time_f[0, 0], fu.time_a[0, 0])  # frame 0 and audio token 0 are both at 0 s
    # where times coincide, codes coincide: frames at 0.32 and 0.8 s meet audio tokens 4 and 10
    fused = AlignedAttentionFusion(16, 8, 6, 13, 32, 4, 1, frame_times=(0.32, 0.8), audio_times=c.audio_token_times)
    assert torch.equal(fused.time_f[0, 0], fused.time_a[0, 4]) and torch.equal(fused.time_f[0, 1], fused.time_a[0, 10])
    assert not torch.allclose(fused.time_f[0, 0], fused.time_a[0, 5])
    # the dot product of two codes depends only on the time between them
    t = torch.tensor([0.1, 0.3, 0.55, 0.75])
    e = time_embedding(t, 64)
    assert math.isclose(float(e[0] @ e[1]), float(e[2] @ e[3]), rel_tol=1e-5)
    with pytest.raises(ValueError, match="even"):
        time_embedding(t, 63)


# ------------------------------------------------------------------------------------------ locality


def test_locality_bias_is_minus_distance_over_a_positive_tau_per_head(model):
    att = model.fusion.temporal[0].f_from_a
    c = model.config
    bias = att.bias()
    assert bias.shape == (1, c.fusion_heads, c.clip_frames, 1 + c.audio_tokens)
    assert torch.all(bias[..., 0] == 0)  # the null key has no locality
    tau = att.tau()
    assert torch.all(tau > 0) and len(set(tau.tolist())) == c.fusion_heads  # one scale per head
    dt = (torch.tensor(c.frame_times)[:, None] - torch.tensor(c.audio_token_times)[None, :]).abs()
    assert torch.allclose(bias[0, :, :, 1:], -dt / tau[:, None, None], atol=1e-6)
    # identical key contents: the weights fall off with the time between frame and audio token
    q = torch.randn(1, c.clip_frames, c.fusion_dim, generator=torch.Generator().manual_seed(0))
    keys = q[:, :1].expand(1, c.audio_tokens, -1)
    _, w = att(q, keys, torch.zeros(1, 1, dtype=torch.bool), need_weights=True)  # (1, H, T, 1+Na)
    for t in range(c.clip_frames):
        order = torch.argsort(dt[t], stable=True)
        per_head = w[0, :, t, 1:][:, order]  # nearest first
        assert torch.all(per_head[:, 1:] <= per_head[:, :-1] + 1e-7)
        assert int(torch.argmax(w[0, :, t, 1:].mean(dim=0))) == int(torch.argmin(dt[t]))


def _frame_sensitivity(fusion, v, a, f) -> torch.Tensor:
    """``(T, Na)``: norm of d|frame token t out| / d(audio token j in), at one input."""
    out = torch.zeros(f.shape[1], a.shape[1])
    for t in range(f.shape[1]):
        aa = a.clone().requires_grad_(True)
        _, frames, _ = fusion.fuse_tokens(v, aa, torch.ones(1, 2), f)
        (grad,) = torch.autograd.grad(frames[0, t].norm(), aa)
        out[t] = grad[0].norm(dim=-1)
    return out


def test_each_frame_listens_most_to_the_audio_at_its_time():
    """All audio tokens carry the same content, so only their times tell them apart: a change to one
    of them (the gradient with respect to it) moves the frames nearest to it in time the most;
    without the locality bias it does not."""
    torch.manual_seed(0)
    m = create_model("fusion_student").eval()
    c, g = m.config, torch.Generator().manual_seed(1)
    cv = m.video_encoder.out_channels
    v = torch.randn(1, c.video_tokens, cv, generator=g)
    f = torch.randn(1, 1, cv, generator=g).expand(1, c.clip_frames, cv).clone()
    a = torch.randn(1, 1, c.audio_dim, generator=g).expand(1, c.audio_tokens, c.audio_dim).clone()
    dt = (torch.tensor(c.frame_times)[:, None] - torch.tensor(c.audio_token_times)[None, :]).abs()
    local = _frame_sensitivity(m.fusion, v, a, f)
    step = c.audio_token_times[1] - c.audio_token_times[0]  # 80 ms between audio tokens
    for t in range(c.clip_frames):
        # the most influential token is one of the two that bracket the frame's time
        assert float(dt[t, local[t].argmax()]) < step, local[t]
        assert local[t].max() > 2.5 * local[t][dt[t] > 0.5].max()  # half a second away: far less
    with torch.no_grad():
        for block in m.fusion.temporal:
            block.f_from_a.log_tau.fill_(math.log(1e6))  # τ = 1e6 s: no locality left
            block.a_from_f.log_tau.fill_(math.log(1e6))
    flat = _frame_sensitivity(m.fusion, v, a, f)
    assert torch.all(flat.amax(dim=1) < 2.0 * flat.amin(dim=1))


# ------------------------------------------------------------------------------------------ presence


@pytest.mark.parametrize("pattern", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.0, 0.0)])
def test_presence_patterns_are_finite_and_ignore_missing_content(model, pattern):
    v, a, f = _fusion_inputs(model, 2, seed=3)
    presence = torch.tensor([pattern, pattern])
    with torch.no_grad():
        out = model.fusion(v, a, presence, f)
        assert out.shape == (2, model.fusion.out_dim) and torch.isfinite(out).all()
        v2, a2, f2 = (x * 5 + 1 for x in _fusion_inputs(model, 2, seed=4))
        other = model.fusion(v2 if not pattern[0] else v, a2 if not pattern[1] else a, presence,
                             f2 if not pattern[0] else f)
        assert torch.allclose(out, other, atol=1e-6)
        if pattern == (1.0, 1.0):  # present content does matter
            assert not torch.allclose(out, model.fusion(v2, a, presence, f2), atol=1e-4)
        # the whole model: event logits finite, the missing input's content ignored
        video, audio, _ = model.example_inputs(2)
        video, audio = video * pattern[0], audio * pattern[1]
        ev = model(video, audio, presence)
        assert all(torch.isfinite(o).all() for o in ev)
        noisy = model(video if pattern[0] else torch.randn_like(video), audio if pattern[1] else torch.rand_like(audio),
                      presence)
        assert torch.allclose(ev[0], noisy[0], atol=1e-5)


def test_aligned_fusion_needs_times():
    with pytest.raises(ValueError, match="frame_times"):
        build_fusion("aligned_attention", video_dim=8, audio_dim=8, video_tokens=4, audio_tokens=3, dim=8, heads=2,
                     layers=1)
    with pytest.raises(ValueError, match="audio_times"):
        AlignedAttentionFusion(8, 8, 4, 3, 8, 2, 1, frame_times=(0.0, 1.0), audio_times=(0.0, 0.5))


def test_the_student_is_aligned_and_in_the_size_class_of_its_cross_attention_variant(model):
    from fusionedge.training.models import count_flops, count_params
    assert model_config("fusion_student").fusion == "aligned_attention"
    base = create_model("xattn_student")
    assert model_config("xattn_student").fusion == "cross_attention"
    assert count_params(model) <= 1.5 * count_params(base)
    assert count_flops(model) <= 1.05 * count_flops(base)


# ------------------------------------------------------------------------------------------ export


@pytest.mark.slow
def test_aligned_student_exports_with_parity(tmp_path, model):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fusionedge.export import export_model
    from fusionedge.export.parity import DEFAULT_ATOL, DEFAULT_RTOL

    info = {"model_name": "fusion_student", "model_config": model.config.to_dict(), "geometry": GEOMETRY.to_dict(),
            "labels": {"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS), "objects": list(OBJECTS)},
            "metrics": {}, "epoch": 0}
    out = export_model(model, info, tmp_path / "bundle", progress=False)  # dynamo, opset 18, dynamic batch
    manifest = json.loads((out / "manifest.json").read_text())
    parity = manifest["export"]["parity"]
    assert parity["batches"] == [1, 3] and (parity["rtol"], parity["atol"]) == (DEFAULT_RTOL, DEFAULT_ATOL)
    assert parity["results"] and all(r["ok"] and r["max_abs"] <= DEFAULT_ATOL for r in parity["results"])
    # a small graph: no batch-size arithmetic (Shape/Expand), nothing computed from parameters alone
    # (every weight an initializer of its operator) but the in-graph DFT kernels, and far fewer
    # operators than the 379 of the per-head formulation with nn.MultiheadAttention
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert not {"Shape", "Expand", "ConstantOfShape"} & set(ops), ops
    consts = {t.name for t in graph.initializer}
    folded_late = [n.name for n in graph.node if n.input and "__gen" not in n.output[0]
                   and all(x in consts for x in n.input if x)]
    assert not folded_late
    assert len(ops) <= 300, len(ops)
