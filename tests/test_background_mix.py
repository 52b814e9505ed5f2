"""Background mixing: a training clip also hears the sound of a clip without a siren, labels kept right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fusionedge.sdk.errors import DataError, FusionEdgeError
from fusionedge.sdk.spec import AUDIO_TAGS, InputGeometry
from fusionedge.training.dataset import Augment, ClipCache, Labels, background_pool, iterate_batches
from fusionedge.training.train import TrainConfig

SIREN = AUDIO_TAGS.index("siren")
HORN = AUDIO_TAGS.index("horn")


def _cache(labels: Labels | None = None) -> ClipCache:
    """Eight clips: 0-3 silent (no tag), 4-5 a siren (distinct tones), 6 a horn-tagged tone, 7 without audio."""
    labels = labels or Labels()
    n, s = 8, 64
    t = np.arange(s)
    audio = np.zeros((n, s), np.float32)
    tags = np.zeros((n, len(labels.audio_tags)), np.float32)
    for i, f in ((4, 3), (5, 5), (6, 7)):
        audio[i] = 0.5 * np.sin(2 * np.pi * f * t / s)
    if "siren" in labels.audio_tags:
        tags[[4, 5], labels.audio_tags.index("siren")] = 1.0
    tags[6, labels.audio_tags.index("horn")] = 1.0
    has_audio = torch.ones(n, dtype=torch.bool)
    has_audio[7] = False
    h = w = 2
    return ClipCache(ids=[str(i) for i in range(n)], video=torch.zeros(n, 1, 3, 4, 4), audio=torch.from_numpy(audio),
                     has_audio=has_audio, event=torch.tensor([0, 3, 0, 3, 1, 2, 0, 0]),
                     audio_tags=torch.from_numpy(tags), boxes=[np.zeros((0, 4))] * n,
                     box_labels=[np.zeros((0,), np.int64)] * n,
                     targets={"heatmap": torch.zeros(n, 4, h, w), "size": torch.zeros(n, 2, h, w),
                              "offset": torch.zeros(n, 2, h, w), "mask": torch.zeros(n, h, w)},
                     geometry=InputGeometry(), labels=labels)


def test_pool_holds_the_clips_with_sound_and_without_a_siren():
    assert background_pool(_cache(), ("siren",)).tolist() == [0, 1, 2, 3, 6]


def test_mixed_clips_never_gain_a_siren_and_keep_their_event():
    clips = _cache()
    aug = Augment(modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0, background_mix=1.0, mix_gain_db=(-6.0, 0.0))
    gen = torch.Generator().manual_seed(0)
    horn_lent = 0
    for _ in range(20):
        for batch in iterate_batches(clips, 8, shuffle=True, generator=gen, augment=aug):
            for j, i in enumerate(batch["index"].tolist()):
                assert int(batch["event"][j]) == int(clips.event[i])
                assert batch["audio_tags"][j, SIREN] == clips.audio_tags[i, SIREN]  # a siren is never lent
                if i in (0, 1, 2, 3):  # silent clips: what they hear now is a lent horn, or still silence
                    lent = batch["audio"][j]
                    if lent.abs().max() > 0:
                        gain = float(lent[4] / clips.audio[6, 4])  # a sample where the horn is not 0
                        assert torch.allclose(lent, gain * clips.audio[6], atol=1e-6)
                        assert 10 ** (-6 / 20) - 1e-5 <= gain <= 1.0 + 1e-5
                        assert batch["audio_tags"][j, HORN] == 1.0  # the tags are both clips'
                        horn_lent += 1
                    else:
                        assert batch["audio_tags"][j].sum() == 0
                if i == 7:  # no microphone: nothing is mixed into a missing sound
                    assert torch.count_nonzero(batch["audio"][j]) == 0
                    assert batch["audio_tags"][j].sum() == 0
    assert horn_lent > 0


def test_no_mixing_keeps_the_clips_as_they_are():
    clips = _cache()
    aug = Augment(modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0, background_mix=0.0)
    batch = next(iterate_batches(clips, 8, generator=torch.Generator().manual_seed(0), augment=aug))
    assert torch.equal(batch["audio"], clips.audio * clips.has_audio.unsqueeze(1))
    assert torch.equal(batch["audio_tags"], clips.audio_tags)


def test_mixing_is_refused_where_no_tag_marks_the_events_sound(tmp_path):
    labels = Labels(audio_tags=("horn", "speech"))
    with pytest.raises(DataError, match="siren"):
        background_pool(_cache(labels), ("siren",))
    with pytest.raises(FusionEdgeError, match="teacher"):
        TrainConfig(data=tmp_path, out=tmp_path / "run", background_mix=0.5, teacher=tmp_path / "t.pt")
    with pytest.raises(FusionEdgeError, match="background_mix"):
        TrainConfig(data=tmp_path, out=tmp_path / "run", background_mix=1.5)
