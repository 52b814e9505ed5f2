"""Data-parallel training: the context, the shards, and a real 2-process gloo run under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import FusionEdgeError
from fusionedge.sdk.spec import InputGeometry
from fusionedge.training.checkpoint import load_checkpoint
from fusionedge.training.dataset import load_clips
from fusionedge.training.distributed import DistContext, parameter_digest, shard_indices, take_clips
from fusionedge.training.train import TrainConfig, train

TINY_SET = ["video_channels=[8,8,16,16]", "video_depth=0", "audio_channels=[8,8,16]", "audio_depth=0",
            "audio_dim=16", "fusion_dim=16", "fusion_heads=2", "head_hidden=16", "det_channels=8"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fusionedge.training.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 16, seed=11, workers=1, progress=False)
    return out


def test_context_from_env():
    assert DistContext.from_env({}) == DistContext(0, 1, 0)
    ctx = DistContext.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.distributed) == (3, 4, 1, False, True)
    with pytest.raises(FusionEdgeError, match="integers"):
        DistContext.from_env({"WORLD_SIZE": "two"})
    with pytest.raises(FusionEdgeError, match="invalid distributed context"):
        DistContext.from_env({"WORLD_SIZE": "2", "RANK": "2"})


@pytest.mark.parametrize("n, world", [(10, 2), (10, 3), (2, 4), (7, 1)])
def test_shards_cover_the_permutation_like_distributed_sampler(n, world):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [shard_indices(perm, r, world) for r in range(world)]
    size = -(-n // world)
    assert all(len(s) == size for s in shards)  # every rank runs the same number of steps
    assert set(torch.cat(shards).tolist()) == set(range(n))
    if n % world == 0:
        assert sorted(torch.cat(shards).tolist()) == list(range(n))  # disjoint when it divides
    assert torch.equal(shards[0][: len(perm[::world])], perm[::world][:size])


def test_take_clips_selects_samples_in_order(data_dir):
    clips = load_clips(read_manifest(data_dir)[:5], InputGeometry(), workers=2, progress=False)
    idx = torch.tensor([4, 0, 4])
    sub = take_clips(clips, idx)
    assert sub.ids == [clips.ids[4], clips.ids[0], clips.ids[4]] and len(sub) == 3
    assert torch.equal(sub.video[1], clips.video[0]) and torch.equal(sub.audio[2], clips.audio[4])
    assert torch.equal(sub.targets["heatmap"][0], clips.targets["heatmap"][4])
    assert sub.boxes[1] is clips.boxes[0] and sub.geometry == clips.geometry


def test_several_processes_need_a_process_group(data_dir, tmp_path):
    cfg = TrainConfig(data=data_dir, out=tmp_path / "run", progress=False)
    with pytest.raises(FusionEdgeError, match="process group"):
        train(cfg, DistContext(rank=0, world_size=2))


@pytest.mark.slow
def test_torchrun_two_process_gloo_run(data_dir, tmp_path):
    """``torchrun --nproc_per_node=2 fusionedge train``: one run folder, identical weights on both ranks."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "fusionedge.cli.main", "train", "--data", str(data_dir), "--val", str(data_dir),
           "--out", str(run), "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--json",
           *[a for s in TINY_SET for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # exactly one JSON document: only rank 0 printed
    # only rank 0 wrote the run folder: exactly its files, no temp files of a second writer
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "curves.png", "last.pt",
                                                     "metrics.json", "summary.md"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    digests = metrics["distributed"]["parameter_digests"]
    assert metrics["distributed"]["world_size"] == 2 and len(digests) == 2
    assert digests[0] == digests[1]  # DDP kept the replicas identical
    model, _ = load_checkpoint(run / "last.pt")
    assert parameter_digest(model) == digests[0]  # and rank 0 saved exactly those weights
    assert result["distributed"] == metrics["distributed"]
    # each rank trained on half the samples per epoch: 16 clips / 2 ranks / batch 4 = 2 steps per epoch
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["training_state"]["step"] == 4 and last["training_state"]["world_size"] == 2
