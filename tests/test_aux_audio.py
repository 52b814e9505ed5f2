"""The auxiliary audio head: names a metadata field of each training row, trains beside the model, is not exported."""

from __future__ import annotations

import json

import pytest
import torch
from fusionedge.sdk.errors import DataError, FusionEdgeError, InputError
from fusionedge.training.aux_audio import NO_VALUE, AudioMetaHead, aux_audio_loss, meta_targets
from fusionedge.training.checkpoint import read_checkpoint
from fusionedge.training.losses import IGNORE_INDEX
from fusionedge.training.train import TrainConfig, train

TINY = dict(video_channels=(8, 8, 16, 16), video_depth=0, audio_channels=(8, 8, 16), audio_depth=0, audio_dim=16,
            fusion_dim=16, fusion_heads=2, head_hidden=16, det_channels=8)
KEY = "synth.clutter_sound"


def test_targets_name_each_value_none_first_and_ignore_rows_without_the_field():
    metas = [{"synth": {"clutter_sound": "tone"}}, {"synth": {"clutter_sound": None}}, {"other": 1},
             {"synth": {"clutter_sound": "chord"}}, {"synth": {"clutter_sound": "tone"}}, {"synth": {}}]
    targets, classes, counts = meta_targets(metas, KEY)
    assert classes == (NO_VALUE, "chord", "tone")
    assert targets.tolist() == [2, 0, IGNORE_INDEX, 1, 2, IGNORE_INDEX]
    assert counts == {NO_VALUE: 1, "chord": 1, "tone": 2}


def test_targets_refuse_a_field_nobody_has_one_value_or_a_number():
    with pytest.raises(DataError, match="no training row has"):
        meta_targets([{"synth": {}}, {}], KEY)
    with pytest.raises(DataError, match="at least two values"):
        meta_targets([{"synth": {"clutter_sound": "tone"}}] * 3, KEY)
    with pytest.raises(DataError, match="row 1: .*string or null.*int 3"):
        meta_targets([{"synth": {"clutter_sound": "tone"}}, {"synth": {"clutter_sound": 3}}], KEY)


def test_loss_skips_samples_that_heard_nothing_or_have_no_class():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([0, 2, IGNORE_INDEX, 1])
    present = torch.tensor([1.0, 0.0, 1.0, 1.0])  # sample 1's audio was dropped
    loss = aux_audio_loss(logits, targets, present)
    expected = torch.nn.functional.cross_entropy(logits[[0, 3]], targets[[0, 3]])
    assert torch.allclose(loss, expected)
    nothing = aux_audio_loss(logits, targets, torch.zeros(4))
    assert float(nothing.detach()) == 0.0
    nothing.backward()  # still a graph: a distributed step that has no class left must not break
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_the_head_reads_the_mean_token():
    head = AudioMetaHead(4, 3)
    tokens = torch.randn(2, 5, 4)
    assert torch.allclose(head(tokens), head.linear(tokens.mean(1)))


def test_bad_options_are_refused_before_anything_is_read(tmp_path):
    with pytest.raises(FusionEdgeError, match="aux_audio_weight"):
        TrainConfig(data=tmp_path, out=tmp_path / "r", aux_audio_label=KEY, aux_audio_weight=-1.0)
    with pytest.raises(FusionEdgeError, match="background_mix"):
        TrainConfig(data=tmp_path, out=tmp_path / "r", aux_audio_label=KEY, background_mix=0.5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fusionedge.training.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 16, seed=3, workers=1, progress=False)
    return out


def _cfg(data_dir, out, **kw) -> TrainConfig:
    base = dict(data=data_dir, out=out, model_overrides=TINY, epochs=1, batch_size=8, lr=3e-3, progress=False,
                report=False)
    base.update(kw)
    return TrainConfig(**base)


def test_a_run_trains_the_head_beside_the_model_and_checkpoints_the_model_alone(data_dir, tmp_path):
    plain = train(_cfg(data_dir, tmp_path / "plain"))
    run = train(_cfg(data_dir, tmp_path / "aux", aux_audio_label=KEY, aux_audio_weight=1.0))
    aux = run["aux_audio"]
    rows = [json.loads(line) for line in (data_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    named = {r["synth"]["clutter_sound"] or NO_VALUE for r in rows}
    assert set(aux["classes"]) <= named and aux["classes"][0] == NO_VALUE and len(aux["classes"]) >= 2
    term = run["history"][-1]["train"]["aux_audio"]
    assert 0.0 < term < 10.0 and "aux_audio" not in plain["history"][-1]["train"]
    best = read_checkpoint(tmp_path / "aux" / "best.pt")
    assert best["state_dict"].keys() == read_checkpoint(tmp_path / "plain" / "best.pt")["state_dict"].keys()
    last = torch.load(tmp_path / "aux" / "last.pt", weights_only=True)
    head = last["training_state"]["aux"]["audio_meta"]
    assert head["linear.weight"].shape == (len(aux["classes"]), TINY["audio_dim"])


def test_a_run_refuses_a_model_without_audio_and_a_field_nobody_has(data_dir, tmp_path):
    with pytest.raises(InputError, match="hears audio"):
        train(_cfg(data_dir, tmp_path / "v", aux_audio_label=KEY, model_overrides={**TINY, "modalities": ["video"]}))
    assert not (tmp_path / "v").exists()
    with pytest.raises(DataError, match="no training row has"):
        train(_cfg(data_dir, tmp_path / "x", aux_audio_label="synth.no_such_field"))
    assert not (tmp_path / "x").exists()
