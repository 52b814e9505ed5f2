"""New renderings of a generator clip's sound: same scene and labels, another sound; refused where not the generator's."""

from __future__ import annotations

import dataclasses
import json
import wave

import numpy as np
import pytest
import torch
from fusionedge.sdk.audio_file import read_audio
from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import DataError, FusionEdgeError
from fusionedge.sdk.spec import InputGeometry
from fusionedge.training.audio_resynth import audio_variants, render_sound_again
from fusionedge.training.dataset import Augment, iterate_batches, load_clips
from fusionedge.training.train import TrainConfig, train
from _tiny_train import TINY

GEOMETRY = InputGeometry()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fusionedge.training.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 12, seed=5, workers=1, progress=False)
    return out


def test_the_generators_own_stream_gives_the_stored_sound_back_and_new_streams_new_sounds(data_dir):
    rows = read_manifest(data_dir)
    for row in rows[:4]:
        stored, rate = read_audio(row.audio)
        again = render_sound_again(row, -1)
        assert rate == 16000 and np.array_equal(stored.reshape(-1), again.astype(np.float32) / 32768.0)
        one, two = render_sound_again(row, 0), render_sound_again(row, 1)
        assert one.shape == two.shape == again.shape and one.dtype == np.int16
        assert not np.array_equal(one, again) and not np.array_equal(one, two)
        assert np.array_equal(one, render_sound_again(row, 0))  # a variant is a function of its number


def test_variants_are_preprocessed_like_the_runtime_and_in_row_order(data_dir):
    from fusionedge.sdk.preprocess import preprocess_audio

    rows = read_manifest(data_dir)[:3]
    v = audio_variants(rows, 2, GEOMETRY, workers=1, progress=False)
    assert v.shape == (3, 2, GEOMETRY.audio_samples) and v.dtype == np.float32
    expected = preprocess_audio(render_sound_again(rows[2], 1).astype(np.float32) / 32768.0, 16000, GEOMETRY)
    assert np.array_equal(v[2, 1], expected)
    assert np.array_equal(audio_variants(rows, 2, GEOMETRY, workers=2, progress=False), v)  # processes: same
    # the stored sound through the same path is what the training cache holds for the row
    own = preprocess_audio(render_sound_again(rows[0], -1).astype(np.float32) / 32768.0, 16000, GEOMETRY)
    assert np.array_equal(own, load_clips(rows[:1], GEOMETRY, progress=False).audio[0].numpy())


def test_rows_that_are_not_the_generators_are_refused_naming_them(data_dir, tmp_path):
    row = read_manifest(data_dir)[0]
    with pytest.raises(DataError, match=f"sample '{row.id}': no synth.seed"):
        render_sound_again(dataclasses.replace(row, meta={}), 0)
    other = "none" if row.event != "none" else "emergency_ahead"
    with pytest.raises(DataError, match=f"sample '{row.id}': .*has event .*edited"):
        render_sound_again(dataclasses.replace(row, event=other), 0)
    # a sound that is not what the scene renders to (another generator version): refused before any work
    forged = tmp_path / "forged.wav"
    with wave.open(str(forged), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(16000, "<i2").tobytes())
    with pytest.raises(DataError, match="does not give its stored sound"):
        audio_variants([dataclasses.replace(row, audio=forged)], 1, GEOMETRY, progress=False)
    with pytest.raises(DataError, match="no audio"):
        audio_variants([dataclasses.replace(row, audio=None)], 1, GEOMETRY, progress=False)
    with pytest.raises(DataError, match="count >= 1"):
        audio_variants([row], 0, GEOMETRY, progress=False)


def test_a_draw_hears_the_clips_own_sound_or_one_of_its_variants_labels_kept(data_dir):
    rows = read_manifest(data_dir)[:4]
    clips = load_clips(rows, GEOMETRY, progress=False)
    n, s = len(clips), clips.audio.shape[1]
    # clip i, variant r: a constant 0.01 (i + 1) + 0.001 (r + 1), unlike any real sound
    variants = torch.stack([0.01 * (i + 1) + 0.001 * torch.tensor([[1.0], [2.0]]).expand(2, s) for i in range(n)])
    clips = dataclasses.replace(clips, audio_variants=variants)
    aug = Augment(modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0, audio_variants=True)
    heard = {i: set() for i in range(n)}
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        for batch in iterate_batches(clips, n, shuffle=True, generator=gen, augment=aug):
            for j, i in enumerate(batch["index"].tolist()):
                a = batch["audio"][j]
                if torch.equal(a, clips.audio[i]):
                    heard[i].add("own")
                else:
                    r = next(r for r in range(2) if torch.allclose(a, variants[i, r]))
                    heard[i].add(r)
                assert int(batch["event"][j]) == int(clips.event[i])
                assert torch.equal(batch["audio_tags"][j], clips.audio_tags[i])
    assert all(h == {"own", 0, 1} for h in heard.values()), heard
    plain = Augment(modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0)
    batch = next(iterate_batches(clips, n, generator=torch.Generator().manual_seed(0), augment=plain))
    assert torch.equal(batch["audio"], clips.audio)  # the option off: only the clip's own sound


def test_bad_counts_and_a_teacher_are_refused(tmp_path):
    for bad in (-1, 1.5, True):
        with pytest.raises(FusionEdgeError, match="audio_variants"):
            TrainConfig(data=tmp_path, out=tmp_path / "r", audio_variants=bad)
    with pytest.raises(FusionEdgeError, match="teacher"):
        TrainConfig(data=tmp_path, out=tmp_path / "r", audio_variants=2, teacher=tmp_path / "t.pt")


def test_a_run_with_variants_trains_and_records_them(data_dir, tmp_path):
    run = train(TrainConfig(data=data_dir, out=tmp_path / "run", model_overrides=TINY, epochs=1, batch_size=6,
                            progress=False, report=False, audio_variants=2))
    assert np.isfinite(run["history"][-1]["train"]["loss"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["audio_variants"] == 2
