"""Waveform warping: a clip played a few percent faster or slower, pitch and rate together, labels kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.spec import InputGeometry
from fusionedge.training.audio_warp import warp_audio, warp_factors
from fusionedge.training.dataset import Augment, ClipCache, Labels, iterate_batches
from fusionedge.training.train import TrainConfig

SR = 16000


def _peak_hz(x: torch.Tensor) -> float:
    spec = np.abs(np.fft.rfft(x.double().numpy() * np.hanning(x.numel())))
    return float(np.argmax(spec)) * SR / x.numel()


def _onsets(x: torch.Tensor) -> int:
    gate = (x.abs().unfold(0, 80, 80).amax(dim=1) > 0.5).float()  # per 5 ms: sound or not
    return int(((gate[1:] - gate[:-1]) > 0).sum())


def test_a_factor_moves_pitch_and_rate_together_and_keeps_the_window_full():
    t = torch.arange(2 * SR) / SR
    tone = torch.sin(2 * math.pi * 1000.0 * t)
    beeps = tone * ((t * 10.0) % 1.0 < 0.5)  # 10 beeps a second for 2 s
    audio = torch.stack([tone, tone, tone, beeps, beeps, beeps])
    out = warp_audio(audio, torch.tensor([1.0, 1.1, 1 / 1.1, 1.0, 1.25, 0.8]))
    assert torch.equal(out[0], tone)  # 1 is the identity
    assert abs(_peak_hz(out[1]) - 1100.0) <= 1.0 and abs(_peak_hz(out[2]) - 909.1) <= 1.0
    # the beeps' rate moves by the same factor: 20 beeps in the window become 25 or 16
    assert _onsets(out[3]) == 19
    assert 23 <= _onsets(out[4]) <= 25 and _onsets(out[5]) in (15, 16)  # (a reflected edge may join two)
    # reflected at the edges: no silence is added where a faster clip reads past its ends
    assert min(float(out[1, :800].abs().amax()), float(out[1, -800:].abs().amax())) > 0.9


def test_factors_are_log_uniform_within_the_bound_and_bad_input_is_refused():
    f = warp_factors(torch.tensor([0.0, 0.5, 1.0 - 1e-7]), 0.1)
    assert torch.allclose(f, torch.tensor([1 / 1.1, 1.0, 1.1]), atol=1e-6)
    with pytest.raises(ValueError, match="max_warp"):
        warp_factors(torch.tensor([0.5]), 1.0)
    with pytest.raises(ValueError, match="positive"):
        warp_audio(torch.zeros(2, 10), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="factors"):
        warp_audio(torch.zeros(2, 10), torch.tensor([1.0]))


def _cache() -> ClipCache:
    labels = Labels()
    n, s, h, w = 4, 400, 2, 2
    t = torch.arange(s) / SR
    audio = torch.stack([torch.sin(2 * math.pi * f * t) * 0.5 for f in (400.0, 800.0, 1200.0, 1600.0)])
    tags = torch.zeros(n, len(labels.audio_tags))
    tags[1, 0] = 1.0
    return ClipCache(ids=[str(i) for i in range(n)], video=torch.zeros(n, 1, 3, 4, 4), audio=audio,
                     has_audio=torch.ones(n, dtype=torch.bool), event=torch.tensor([0, 1, 2, 3]),
                     audio_tags=tags, boxes=[np.zeros((0, 4))] * n, box_labels=[np.zeros((0,), np.int64)] * n,
                     targets={"heatmap": torch.zeros(n, 4, h, w), "size": torch.zeros(n, 2, h, w),
                              "offset": torch.zeros(n, 2, h, w), "mask": torch.zeros(n, h, w)},
                     geometry=InputGeometry(), labels=labels)


def test_warped_batches_keep_labels_and_the_other_draws():
    clips = _cache()
    plain = Augment(modality_dropout=1.0, hflip=0.0, audio_gain_db=0.0)
    warped = Augment(modality_dropout=1.0, hflip=0.0, audio_gain_db=0.0, audio_warp=0.2)
    a = next(iterate_batches(clips, 4, generator=torch.Generator().manual_seed(3), augment=plain))
    b = next(iterate_batches(clips, 4, generator=torch.Generator().manual_seed(3), augment=warped))
    heard = a["presence"][:, 1] > 0
    assert 0 < int(heard.sum()) < 4  # the seed drops some sounds and keeps others
    assert torch.equal(a["audio"][heard], clips.audio[heard])  # without warping the sound is the clip's
    assert torch.equal(a["presence"], b["presence"])  # warping draws after the other augmentations
    assert torch.equal(a["event"], b["event"]) and torch.equal(a["audio_tags"], b["audio_tags"])
    for j in torch.nonzero(heard).flatten().tolist():
        assert not torch.allclose(b["audio"][j], clips.audio[j], atol=1e-3)
        ratio = float(b["audio"][j].square().sum() / clips.audio[j].square().sum())
        assert 0.8 < ratio < 1.25  # the same tone, resampled, not silenced


@pytest.mark.parametrize("kw, expects", [({"audio_warp": 0.6}, "audio_warp=0.6"),
                                         ({"audio_warp": 0.1, "teacher": "t.pt"}, "audio_warp with a teacher")])
def test_train_config_refuses_bad_warps(tmp_path, kw, expects):
    with pytest.raises(FusionEdgeError, match=expects):
        TrainConfig(data=tmp_path / "m.jsonl", out=tmp_path / "run", **kw)
