"""Exact resume: E epochs straight == k epochs, stop, resume to E (bit for bit on the CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from fusionedge.training.checkpoint import CheckpointError, read_checkpoint
from fusionedge.training.train import TrainConfig, train
from _tiny_train import TINY


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fusionedge.training.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 16, seed=3, workers=1, progress=False)
    return out


def _cfg(data_dir, out, **kw) -> TrainConfig:
    base = dict(data=data_dir, val_data=data_dir, max_val_samples=4, out=out, model_overrides=TINY, epochs=2,
                batch_size=4, lr=3e-3, progress=False, num_workers=2, seed=5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    straight = train(_cfg(data_dir, root / "straight"))
    first = train(_cfg(data_dir, root / "split", stop_after_epoch=1))
    resumed = train(_cfg(data_dir, root / "split", resume=root / "split" / "last.pt"))
    return root, straight, first, resumed


def test_resumed_run_equals_the_straight_run_bit_for_bit(runs):
    root, straight, first, resumed = runs
    assert [h["epoch"] for h in first["history"]] == [1]
    a = read_checkpoint(root / "straight" / "last.pt")
    b = read_checkpoint(root / "split" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert a["training_state"]["step"] == b["training_state"]["step"]
    # the history carries over: the resumed run reports both epochs, with the same numbers
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][-1]["train"] == straight["history"][-1]["train"]
    assert resumed["history"][-1]["val"] == straight["history"][-1]["val"]
    assert resumed["best"] == straight["best"]
    metrics = json.loads((root / "split" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


def test_last_checkpoint_carries_the_training_state(runs):
    root = runs[0]
    ts = read_checkpoint(root / "straight" / "last.pt")["training_state"]
    assert {"step", "epoch", "history", "best", "rng", "world_size"} <= ts.keys()
    assert {"python", "numpy", "torch", "data"} <= ts["rng"].keys()
    assert "training_state" not in read_checkpoint(root / "straight" / "best.pt")


def test_resume_refuses_a_different_run(runs, data_dir, tmp_path):
    root = runs[0]
    last = root / "straight" / "last.pt"
    with pytest.raises(CheckpointError, match="lr"):
        train(_cfg(data_dir, tmp_path / "a", resume=last, lr=1e-3))
    with pytest.raises(CheckpointError, match="no training state"):
        train(_cfg(data_dir, tmp_path / "b", resume=root / "straight" / "best.pt"))
    with pytest.raises(CheckpointError, match="differs"):
        train(_cfg(data_dir, tmp_path / "c", resume=last, model_overrides={**TINY, "det_channels": 12}))


def test_resuming_a_finished_run_trains_nothing(runs, data_dir):
    root = runs[0]
    before = read_checkpoint(root / "straight" / "last.pt")["state_dict"]
    result = train(_cfg(data_dir, root / "straight", resume=root / "straight" / "last.pt"))
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    after = read_checkpoint(root / "straight" / "last.pt")["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_resume_takes_the_run_folder_from_the_checkpoint(runs, data_dir, capsys):
    from fusionedge.cli.main import main

    root = runs[0]
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    common = ["train", "--data", str(data_dir), "--val", str(data_dir), "--epochs", "2", "--batch-size", "4",
              "--lr", "0.003", "--seed", "5", "--json", *sets]
    assert main([*common, "--resume", str(root / "straight" / "last.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(root / "straight")
    assert main([*common, "--lr", "0.001", "--resume", str(root / "straight" / "last.pt")]) == 2  # changed option
    assert "lr" in capsys.readouterr().err
