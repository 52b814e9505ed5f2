"""Sound naming: an auxiliary head that names each generator clip's untagged sound while the model trains."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import DataError, FusionEdgeError
from fusionedge.sdk.spec import InputGeometry
from fusionedge.training.checkpoint import read_checkpoint
from fusionedge.training.dataset import Augment, iterate_batches, load_clips
from fusionedge.training.sound_naming import SOUND_NAMES, UNNAMED, sound_names_of, sound_naming_loss
from fusionedge.training.train import TrainConfig, train
from _precision_fixtures import synth_data
from _tiny_train import TINY

GEOMETRY = InputGeometry()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synth_data(tmp_path_factory)  # 24 generator clips, shared with the precision tests


def test_each_generator_row_is_named_by_its_untagged_sound_and_other_rows_are_not(data_dir):
    rows = read_manifest(data_dir)
    names = sound_names_of(rows)
    expected = [SOUND_NAMES.index(r.meta["synth"]["clutter_sound"] or "none") for r in rows]
    assert names.tolist() == expected
    assert len(set(expected)) > 2  # the fixture has several kinds, "none" among them
    foreign = dataclasses.replace(rows[0], meta={})
    assert sound_names_of([foreign, rows[1]]).tolist() == [UNNAMED, expected[1]]
    with pytest.raises(DataError, match="needs the generator's rows"):
        sound_names_of([foreign])
    forged = dataclasses.replace(rows[0], meta={"synth": {**rows[0].meta["synth"], "clutter_sound": "kazoo"}})
    with pytest.raises(DataError, match="unknown untagged sound 'kazoo'"):
        sound_names_of([forged])


def test_a_draw_keeps_its_name_unless_its_sound_was_dropped_or_mixed(data_dir):
    rows = read_manifest(data_dir)
    names = sound_names_of(rows)
    clips = dataclasses.replace(load_clips(rows, GEOMETRY, progress=False), sound_names=names)
    batch = next(iterate_batches(clips, len(rows), generator=torch.Generator().manual_seed(0),
                                 augment=Augment(modality_dropout=0.0, hflip=0.5)))
    assert torch.equal(batch["sound_name"], names[batch["index"]])
    dropped = mixed = 0
    for seed in range(6):
        batch = next(iterate_batches(clips, len(rows), generator=torch.Generator().manual_seed(seed),
                                     augment=Augment(modality_dropout=0.5, background_mix=0.5, audio_gain_db=0.0)))
        own = names[batch["index"]]
        silent = batch["presence"][:, 1] == 0
        changed = batch["sound_name"] != own
        assert (batch["sound_name"][silent] == UNNAMED).all()
        assert (batch["sound_name"][changed] == UNNAMED).all()
        # a draw that kept its own name hears its own clip: its sound was not mixed
        for j in torch.nonzero(~changed & ~silent).flatten().tolist():
            assert torch.equal(batch["audio"][j], clips.audio[batch["index"][j]])
        dropped += int(silent.sum())
        mixed += int((changed & ~silent).sum())
    assert dropped > 0 and mixed > 0
    # no names on the cache: no names in the batch
    plain = next(iterate_batches(load_clips(rows[:4], GEOMETRY, progress=False), 4))
    assert "sound_name" not in plain


def test_the_loss_counts_only_named_draws():
    logits = torch.randn(5, len(SOUND_NAMES), generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 3, UNNAMED, 7, UNNAMED])
    named = target != UNNAMED
    assert torch.allclose(sound_naming_loss(logits, target), F.cross_entropy(logits[named], target[named]))
    assert float(sound_naming_loss(logits, torch.full((5,), UNNAMED))) == 0.0


def test_a_run_trains_the_head_beside_the_model_and_ships_the_model_alone(data_dir, tmp_path):
    run = train(TrainConfig(data=data_dir, out=tmp_path / "run", model_overrides=TINY, epochs=1, batch_size=8,
                            progress=False, report=False, siren_swap=0.5, clutter_swap=1.0, sound_naming=0.5))
    terms = run["history"][-1]["train"]
    assert np.isfinite(terms["sound_naming"]) and terms["sound_naming"] > 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["sound_naming"] == 0.5
    last, best = read_checkpoint(tmp_path / "run" / "last.pt"), read_checkpoint(tmp_path / "run" / "best.pt")
    head = last["training_state"]["aux"]["sound_naming"]
    assert head["mlp.2.weight"].shape[0] == len(SOUND_NAMES)
    assert not any("sound_naming" in k for k in best["state_dict"])  # the model alone: the export is unchanged
    plain = train(TrainConfig(data=data_dir, out=tmp_path / "plain", model_overrides=TINY, epochs=1, batch_size=8,
                              progress=False, report=False, siren_swap=0.5, clutter_swap=1.0))
    assert "sound_naming" not in plain["history"][-1]["train"]
    # the same seed draws the same batches: only the auxiliary loss differs, and it reaches the audio encoder
    other = read_checkpoint(tmp_path / "plain" / "best.pt")["state_dict"]
    assert best["state_dict"].keys() == other.keys()
    audio = [k for k in other if k.startswith("audio_encoder.") and other[k].is_floating_point()]
    assert audio and any(not torch.equal(best["state_dict"][k], other[k]) for k in audio)


def test_bad_weights_and_a_model_that_does_not_hear_are_refused(data_dir, tmp_path):
    for bad in (-0.5, float("nan"), True, "1"):
        with pytest.raises(FusionEdgeError, match="sound_naming"):
            TrainConfig(data=tmp_path, out=tmp_path / "r", sound_naming=bad)
    with pytest.raises(FusionEdgeError, match="sound_naming=0.5 needs a model that hears"):
        train(TrainConfig(data=data_dir, out=tmp_path / "run", model_overrides={**TINY, "modalities": ["video"]},
                          epochs=1, progress=False, report=False, sound_naming=0.5))
    assert not (tmp_path / "run").exists()


def test_the_train_verb_takes_sound_naming(data_dir, tmp_path, capsys):
    from fusionedge.cli.main import main

    tiny = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--epochs", "1", "--batch-size", "8",
                 "--sound-naming", "0.25", "--max-train-samples", "16", *tiny, "--json"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["sound_naming"] == 0.25
    capsys.readouterr()
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "bad"), "--sound-naming", "-1",
                 *tiny, "--json"]) == 2
    assert "sound_naming=-1.0" in capsys.readouterr().err and not (tmp_path / "bad").exists()
