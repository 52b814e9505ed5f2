"""The audio encoder's pitch-motion features: what they measure, the config option, and ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fusionedge.sdk.spec import INPUT_NAMES
from fusionedge.training.models import ModelConfig, ModelConfigError, create_model, model_config
from fusionedge.training.models.audio_frontend import LogMelFrontend
from fusionedge.training.models.pitch_motion import PITCH_MOTION_CHANNELS, PitchMotion

SR = 16000


def _features(audio: torch.Tensor) -> torch.Tensor:
    fe = LogMelFrontend(sample_rate=SR, n_fft=400, hop_length=160, n_mels=64)
    return PitchMotion(SR, 400)(fe.power(audio))  # (B, 8, N)


def _tone(freq_hz: torch.Tensor | float, amp: float) -> torch.Tensor:
    f = torch.full((SR,), float(freq_hz)) if not torch.is_tensor(freq_hz) else freq_hz
    return amp * torch.sin(2 * math.pi * torch.cumsum(f.double(), 0) / SR).float()


def _wail_hz() -> torch.Tensor:
    """A wail's rising half-cycle inside one second: 600 -> 1100 Hz, as the generator's rule draws them."""
    t = torch.arange(SR) / SR
    return 600.0 + 500.0 * (0.5 - 0.5 * torch.cos(2 * math.pi * t / 3.0))


def test_pitch_is_the_tone_and_its_derivative_the_sweep():
    g = torch.Generator().manual_seed(0)
    noise = 0.02 * torch.randn(SR, generator=g)
    audio = torch.stack([_tone(880.0, 0.3) + noise, _tone(_wail_hz(), 0.3) + noise, torch.zeros(SR)])
    f = _features(audio)
    assert f.shape == (3, PITCH_MOTION_CHANNELS, 101) and torch.isfinite(f).all()
    mid = slice(5, -5)
    # a steady tone: the loudest view sits on its pitch (log2 of f over 1 kHz) and does not move
    assert abs(float(f[0, 0, mid].mean()) - math.log2(0.88)) < 0.05
    assert float(f[0, 1, mid].abs().max()) < 0.005
    # the wail rises all along the window, by its own amount in octaves
    rise = math.log2(float(_wail_hz()[-1]) / float(_wail_hz()[0]))
    assert float(f[1, 1, mid].min()) > 0 and abs(float(f[1, 1, mid].sum()) - rise) < 0.15
    # both are salient tones; digital silence is a flat band: nothing salient, nothing moving
    assert float(f[0, 3].mean()) > 5 and float(f[1, 3].mean()) > 5
    assert float(f[2, [1, 2, 3, 5, 6, 7]].abs().max()) < 1e-5


def test_the_moving_view_hears_a_quiet_siren_under_a_louder_steady_tone():
    # the missed sirens of the open-world model: a quiet sweep under a louder untagged tone
    g = torch.Generator().manual_seed(1)
    noise = 0.02 * torch.randn(SR, generator=g)
    audio = torch.stack([_tone(880.0, 0.6) + _tone(_wail_hz(), 0.2) + noise, _tone(880.0, 0.6) + noise])
    f = _features(audio)
    mid = slice(5, -5)
    loud_d1, move_d1, move_sal = f[:, 1, mid], f[:, 5, mid], f[:, 7, mid]
    assert float(loud_d1[0].abs().mean()) < 0.005  # the loudest sound is the tone ...
    wail_d1 = float(_features(_tone(_wail_hz(), 0.2)[None] + noise)[0, 5, mid].median())
    assert float(move_d1[0].median()) > 0.5 * wail_d1  # ... what moves is the wail, rising
    assert abs(float(move_d1[1].median())) < 0.2 * wail_d1  # the tone alone: no direction
    assert float(move_sal[0].mean()) > 2 * float(move_sal[1].mean())  # the steady tone alone moves nothing


def test_option_is_off_by_default_recorded_and_checked():
    assert ModelConfig().audio_pitch_motion is False
    plain = create_model("fusion_student")
    assert not any(".pitch" in k for k in plain.state_dict())  # old checkpoints load unchanged
    old = plain.config.to_dict()
    del old["audio_pitch_motion"]  # a checkpoint written before the option existed
    assert ModelConfig.from_dict(old) == plain.config
    cfg = model_config("fusion_student", audio_pitch_motion=True)
    assert ModelConfig.from_dict(cfg.to_dict()).audio_pitch_motion is True
    with pytest.raises(ModelConfigError, match="audio_pitch_motion must be true or false"):
        model_config("fusion_student", audio_pitch_motion="yes")


@pytest.mark.slow
def test_pitch_branch_trains_and_exports_to_onnx_with_dynamic_batch(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    # audio only: the branch lives in the audio encoder, and the export takes a third of the fused model's time
    model = create_model("audio_only_student", audio_pitch_motion=True, clip_frames=2, height=32, width=48,
                         audio_samples=4000)
    video, audio, presence = model.example_inputs(2)
    sum(o.float().square().mean() for o in model(video, audio, presence)).backward()
    pitch_params = [(n, p) for n, p in model.named_parameters() if ".pitch" in n]
    assert pitch_params and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in pitch_params)

    model.eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "pitch.onnx"
    torch.onnx.export(model, model.example_inputs(2), str(path), dynamo=True, opset_version=18,
                      external_data=False, input_names=list(INPUT_NAMES), output_names=list(model.output_names),
                      dynamic_shapes={"video": {0: batch}, "audio": {0: batch}, "presence": {0: batch}},
                      verbose=False)
    op_types = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert not op_types & {"STFT", "DFT", "MelWeightMatrix"}
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        video, audio, presence = model.example_inputs(b)
        t = torch.arange(audio.shape[1]) / SR
        audio[0] = 0.3 * torch.sin(2 * math.pi * (700 + 300 * t) * t)  # a sweep, next to random noise
        with torch.no_grad():
            ref = model(video, audio, presence)
        got = sess.run(None, {"video": video.numpy(), "audio": audio.numpy(), "presence": presence.numpy()})
        for name, r, o in zip(model.output_names, ref, got):
            np.testing.assert_allclose(o, r.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
