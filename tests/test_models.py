"""Models: the log-mel front end, the registry contract, presence masking, and ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusionedge.sdk.errors import FusionEdgeError, InputError
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, INPUT_NAMES, OBJECTS, OUTPUT_NAMES, InputGeometry
from fusionedge.training.models import (
    ModelConfig,
    ModelConfigError,
    count_flops,
    count_params,
    create_model,
    list_models,
    model_config,
)
from fusionedge.training.models.audio_frontend import LogMelFrontend, mel_filterbank

GEOMETRY = InputGeometry()


def _inputs(model, batch: int, seed: int = 0):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, c.clip_frames, 3, c.height, c.width, generator=g)
    audio = (torch.rand(batch, c.audio_samples, generator=g) * 2 - 1) * 0.3
    return video, audio, torch.ones(batch, 2)


@pytest.fixture(scope="module", params=list_models())
def model(request):
    torch.manual_seed(0)
    return create_model(request.param).eval()


# ------------------------------------------------------------------------------------------ front end


def _reference_logmel(audio: torch.Tensor, fe: LogMelFrontend) -> torch.Tensor:
    spec = torch.stft(audio.double(), n_fft=400, hop_length=160, window=torch.hann_window(400, dtype=torch.float64),
                      center=True, pad_mode="constant", return_complex=True)  # (B, F, N)
    power = spec.real ** 2 + spec.imag ** 2
    mel = torch.matmul(power.transpose(1, 2), fe.mel_fb.double())  # (B, N, M)
    return torch.log(mel + 1e-6).transpose(1, 2).float()


def test_logmel_frontend_matches_torch_stft():
    fe = LogMelFrontend(sample_rate=16000, n_fft=400, hop_length=160, n_mels=64)
    g = torch.Generator().manual_seed(1)
    t = torch.arange(16000) / 16000.0
    sweep = 0.5 * torch.sin(2 * math.pi * (600 + 600 * torch.sin(2 * math.pi * 2 * t)) * t)  # a siren-like tone
    noise = 0.05 * torch.randn(16000, generator=g)
    audio = torch.stack([sweep + noise, noise, torch.zeros(16000)])  # (3, S), last one silent
    ours = fe(audio)
    ref = _reference_logmel(audio, fe)
    assert ours.shape == (3, 64, 101) == ref.shape
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), float((ours - ref).abs().max())
    assert torch.all(ours[2] == math.log(1e-6))  # silence → log(eps), no NaN/-inf


def test_frontend_kernels_are_fixed_buffers():
    fe = LogMelFrontend()
    assert list(fe.parameters()) == []
    assert {"dft", "mel_fb"} <= dict(fe.named_buffers()).keys()


def test_mel_filterbank_shape_and_coverage():
    fb = mel_filterbank(201, 64, 16000, 0.0, 8000.0)
    assert fb.shape == (201, 64)
    assert torch.all(fb >= 0) and torch.all(fb <= 1)
    assert torch.all(fb.sum(dim=0) > 0)  # every band sees at least one FFT bin
    peaks = fb.argmax(dim=0)
    assert torch.all(peaks[1:] >= peaks[:-1])  # bands are ordered by frequency
    with pytest.raises(ValueError):
        mel_filterbank(201, 64, 16000, 0.0, 9000.0)


# ------------------------------------------------------------------------------------------ registry


def test_registry_lists_student_and_teacher():
    assert {"fusion_student", "fusion_teacher"} <= set(list_models())


def test_student_budget_and_teacher_is_bigger():
    student, teacher = create_model("fusion_student"), create_model("fusion_teacher")
    assert 0.3e6 <= count_params(student) <= 0.8e6
    s_flops, t_flops = count_flops(student), count_flops(teacher)
    assert s_flops <= 0.45e9
    assert t_flops >= 5 * s_flops  # the distillation budget: a student at most a fifth of its teacher


def test_create_model_overrides_and_errors():
    m = create_model("fusion_student", fusion="concat", head_hidden=32)
    assert m.config.fusion == "concat" and m.config.head_hidden == 32
    with pytest.raises(ModelConfigError, match="unknown model"):
        create_model("no_such_model")
    with pytest.raises(ModelConfigError, match="unknown ModelConfig field"):
        create_model("fusion_student", widht=3)
    with pytest.raises(ModelConfigError, match="fusion must be one of"):
        create_model("fusion_student", fusion="magic")
    with pytest.raises(ModelConfigError, match="multiples of 16"):
        create_model("fusion_student", height=100)
    assert issubclass(ModelConfigError, FusionEdgeError)


def test_model_config_dict_round_trip():
    cfg = model_config("fusion_teacher", video_channels=[8, 16, 32, 48])
    assert cfg.video_channels == (8, 16, 32, 48)
    d = cfg.to_dict()
    assert d["video_channels"] == [8, 16, 32, 48]
    assert ModelConfig.from_dict(d) == cfg
    with pytest.raises(ModelConfigError):
        ModelConfig.from_dict({**d, "bogus": 1})
    assert cfg.matches(GEOMETRY)


# ------------------------------------------------------------------------------------------ contract (every model)


@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes(model, batch):
    with torch.no_grad():
        outs = model(*_inputs(model, batch))
    assert isinstance(outs, tuple) and len(outs) == len(OUTPUT_NAMES)
    h, w = GEOMETRY.heatmap_size
    expected = [(batch, len(EVENTS)), (batch, len(AUDIO_TAGS)), (batch, len(OBJECTS), h, w), (batch, 2, h, w),
                (batch, 2, h, w)]
    assert [tuple(o.shape) for o in outs] == expected
    assert all(o.dtype == torch.float32 for o in outs)
    size, offset = outs[3], outs[4]
    assert torch.all(size > 0)
    assert torch.all((offset >= 0) & (offset <= 1))


def test_batch_items_are_independent(model):
    video, audio, presence = _inputs(model, 3)
    presence[1, 1] = 0.0
    audio[1] = 0.0
    with torch.no_grad():
        full = model(video, audio, presence)
        single = model(video[1:2], audio[1:2], presence[1:2])
    for a, b in zip(full, single):
        assert torch.allclose(a[1:2], b, atol=1e-5)


def test_all_missing_gives_finite_outputs(model):
    video, audio, presence = _inputs(model, 3)
    video.zero_(), audio.zero_(), presence.zero_()
    with torch.no_grad():
        outs = model(video, audio, presence)
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("missing", [0, 1])
def test_missing_modality_content_is_ignored_by_event_head(model, missing):
    """With presence 0, whatever sits in that modality's tensor must not change the event logits."""
    video, audio, presence = _inputs(model, 2, seed=3)
    presence[:, missing] = 0.0
    with torch.no_grad():
        a = model(video, audio, presence)[0]
        if missing == 0:
            b = model(torch.randn_like(video), audio, presence)[0]
        else:
            b = model(video, torch.rand_like(audio) - 0.5, presence)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_presence_changes_the_event_logits(model):
    video, audio, presence = _inputs(model, 2, seed=4)
    used = 1 if "audio" in model.config.modalities else 0  # drop a modality the model reads
    with torch.no_grad():
        both = model(video, audio, presence)[0]
        absent = presence.clone()
        absent[:, used] = 0.0
        audio_off = model(video, audio, absent)[0]
    assert not torch.allclose(both, audio_off, atol=1e-4)


def test_heatmap_starts_near_centernet_prior():
    torch.manual_seed(0)
    m = create_model("fusion_student").eval()
    with torch.no_grad():
        heat = m(*_inputs(m, 2))[2]
    assert abs(float(torch.sigmoid(heat).mean()) - 0.1) < 0.08


def test_concat_fusion_runs_and_trains():
    torch.manual_seed(0)
    m = create_model("fusion_student", fusion="concat")
    outs = m(*_inputs(m, 2))
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    m = create_model(name).train()
    video, audio, presence = _inputs(m, 2)
    presence[0, 1] = 0.0  # the "missing" embeddings must be reachable too
    presence[1, 0] = 0.0
    outs = m(video, audio, presence)
    sum(o.float().mean() for o in outs).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_comparison_variants_are_registered():
    assert {"fusion_student", "concat_student", "audio_only_student", "vision_only_student"} <= set(list_models())
    assert model_config("concat_student").fusion == "concat"
    assert model_config("audio_only_student").modalities == ("audio",)
    assert model_config("vision_only_student").modalities == ("video",)
    assert model_config("fusion_student", modalities=["audio", "video"]).modalities == ("video", "audio")
    with pytest.raises(ModelConfigError, match="modalities"):
        model_config("fusion_student", modalities=("video", "lidar"))
    with pytest.raises(ModelConfigError, match="modalities"):
        model_config("fusion_student", modalities=())


@pytest.mark.parametrize("name, ignored", [("audio_only_student", 0), ("vision_only_student", 1)])
def test_single_modality_models_never_read_the_other_input(name, ignored):
    torch.manual_seed(0)
    m = create_model(name).eval()
    video, audio, presence = _inputs(m, 2, seed=5)
    other = [video, audio]
    other[ignored] = torch.randn_like(other[ignored]) * 3.0
    flipped = presence.clone()
    flipped[:, ignored] = 0.0  # nor its presence flag
    with torch.no_grad():
        a = m(video, audio, presence)
        b = m(*other, flipped)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    if name == "audio_only_student":  # no video: a constant "no detection"
        assert float(torch.sigmoid(a[2]).max()) < 1e-6
        assert "video_encoder" not in dict(m.named_children()) or m.video_encoder is None
    else:  # no audio: the tag logits are the same learned prior for every sample
        assert torch.equal(a[1][0], a[1][1])


# ------------------------------------------------------------------------------------------ export


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fusion_student", "audio_only_student"])
def test_student_exports_to_onnx_with_dynamic_batch(tmp_path, name):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = create_model(name).eval()
    batch = torch.export.Dim("batch", min=1, max=256)
    path = tmp_path / "student.onnx"
    torch.onnx.export(model, _inputs(model, 2), str(path), dynamo=True, opset_version=18, external_data=False,
                      input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                      dynamic_shapes={"video": {0: batch}, "audio": {0: batch}, "presence": {0: batch}},
                      verbose=False)
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    op_types = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert not op_types & {"STFT", "DFT", "MelWeightMatrix"}
    for b in (1, 3):
        video, audio, presence = _inputs(model, b, seed=10 + b)
        presence[0, 1] = 0.0
        audio[0] = 0.0
        with torch.no_grad():
            ref = model(video, audio, presence)
        got = sess.run(None, {"video": video.numpy(), "audio": audio.numpy(), "presence": presence.numpy()})
        for name, r, o in zip(OUTPUT_NAMES, ref, got):
            assert o.shape == tuple(r.shape), name
            np.testing.assert_allclose(o, r.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("field, value, expects", [
    ("video_depth", "banana", "an integer >= 0"),
    ("video_depth", True, "an integer >= 0"),
    ("video_depth", -1, "an integer >= 0"),
    ("fusion_heads", 0, "an integer >= 1"),
    ("dropout", "x", "a number in [0, 1)"),
    ("dropout", 1.5, "a number in [0, 1)"),
    ("size_scale_px", 0, "a number > 0"),
    ("video_channels", (8, 8, 16), "4 integers >= 1"),
    ("audio_channels", [8, "a", 16], "3 integers >= 1"),
    ("fusion", 3, "one of"),
])
def test_model_config_overrides_are_checked_field_by_field(field, value, expects):
    # an override of the wrong type once reached the layers and failed there with a TypeError
    with pytest.raises(InputError) as e:
        model_config("fusion_student", **{field: value})
    msg = str(e.value)
    assert field in msg and expects in msg and "\n" not in msg
    assert isinstance(e.value, ModelConfigError)
    assert model_config("fusion_student", dropout=0, size_scale_px=8).dropout == 0  # ints pass as numbers
