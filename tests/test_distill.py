"""Distillation: the loss terms, the teacher cache (flipped look-ups), a tiny distillation run."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.spec import InputGeometry
from fusionedge.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fusionedge.training.dataset import Augment, Labels, iterate_batches, load_clips
from fusionedge.training.distill import (
    DistillWeights,
    FeatureTap,
    box_distill_loss,
    compute_teacher_cache,
    det_feature_distill_loss,
    distill_terms,
    event_kl_loss,
    load_teacher,
    objectness,
)
from fusionedge.cli.train import add_distill_parser
from fusionedge.training.models import create_model
from fusionedge.training.train import TrainConfig, train
from fusionedge.sdk.errors import FusionEdgeError
from _tiny_train import TINY

GEOMETRY = InputGeometry()
#: A "teacher": wider than TINY (another fused-embedding width, so the projector is exercised).
TEACHER = {**TINY, "video_channels": (8, 12, 16, 24), "fusion_dim": 24, "det_channels": 12}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fusionedge.training.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 32, seed=21, workers=1, progress=False)
    return out


def _cfg(data_dir, out, **kw) -> TrainConfig:
    base = dict(data=data_dir, out=out, model_overrides=TINY, epochs=1, batch_size=8, lr=3e-3, progress=False,
                num_workers=2, seed=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def teacher_ckpt(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(_cfg(data_dir, out, model_overrides=TEACHER, epochs=1, max_train_samples=16, report=False))
    return out / "best.pt"


# ------------------------------------------------------------------------------------------ losses


def _outputs(seed: int, b: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 5, generator=g), torch.randn(b, 7, generator=g), torch.randn(b, 3, 6, 10, generator=g),
            torch.rand(b, 2, 6, 10, generator=g), torch.rand(b, 2, 6, 10, generator=g))


def test_distill_terms_are_zero_at_a_match_and_positive_otherwise():
    t = _outputs(0)
    feat = torch.randn(3, 12, generator=torch.Generator().manual_seed(1))
    det = torch.randn(3, 4, 6, 10, generator=torch.Generator().manual_seed(3))
    targets = {"event": t[0], "audio_tags": t[1], "heatmap": t[2], "size": t[3] + 0.5, "offset": t[4],
               "feature": feat, "det_feature": det.half()}
    t = (*t[:3], t[3] + 0.5, t[4])
    presence = torch.ones(3, 2)
    same = distill_terms(t, feat.clone(), targets, presence, temperature=4.0, adapted_det_feature=det.half().float())
    assert set(same) == {"kd_event", "kd_tags", "kd_heatmap", "kd_box", "kd_feature", "kd_det_feature"}
    for k, v in same.items():
        assert abs(float(v)) < 1e-5, k
    s = _outputs(2)
    other = distill_terms(s, torch.randn(3, 12), targets, presence, temperature=4.0,
                          adapted_det_feature=torch.randn(3, 4, 6, 10))
    for k, v in other.items():
        assert float(v) > 1e-3, k
    without = distill_terms(s, None, targets, presence, temperature=4.0)
    assert "kd_feature" not in without and "kd_det_feature" not in without
    del targets["det_feature"]
    with pytest.raises(FusionEdgeError, match="det_feature"):
        distill_terms(s, None, targets, presence, temperature=4.0, adapted_det_feature=det)
    # masks: a sample without audio does not count in the event, tag and feature terms
    presence = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    s_mixed = tuple(torch.where(torch.arange(3).reshape(-1, *[1] * (so.ndim - 1)) == 1, so, to)
                    for so, to in zip(s, t))
    masked = distill_terms(s_mixed, feat.clone(), targets, presence, temperature=4.0)
    assert abs(float(masked["kd_event"])) < 1e-5 and abs(float(masked["kd_tags"])) < 1e-5
    assert float(masked["kd_heatmap"]) > 1e-3  # the video is there: the heatmap term sees the difference


def test_box_and_det_feature_terms_count_only_where_the_teacher_sees_an_object():
    """Objectness weighting: a wrong box where the teacher sees nothing costs nothing, one at its peak does."""
    b, h, w = 2, 4, 5
    hm = torch.full((b, 3, h, w), -30.0)  # the teacher sees nothing ...
    hm[0, 1, 2, 3] = 30.0  # ... but one object in sample 0 (class 1, cell (2, 3))
    weight = objectness(hm, torch.ones(b))
    assert float(weight.sum()) == pytest.approx(1.0, abs=1e-6) and float(weight[0, 2, 3]) == pytest.approx(1.0)
    assert float(objectness(hm, torch.tensor([0.0, 1.0])).sum()) == pytest.approx(0.0, abs=1e-6)  # no video
    t_size, t_off = torch.full((b, 2, h, w), 8.0), torch.full((b, 2, h, w), 0.5)
    s_size, s_off = t_size.clone(), t_off.clone()
    s_size[1], s_off[1] = 100.0, 0.9  # sample 1 is all wrong, but the teacher saw nothing there
    s_size[0, :, 0, 0] = 100.0  # and so is one background cell of sample 0
    assert float(box_distill_loss(s_size, s_off, t_size, t_off, weight)) == pytest.approx(0.0, abs=1e-5)
    s_size[0, 0, 2, 3], s_off[0, 1, 2, 3] = 8.0 * math.e, 0.7  # at the object: log-size error 1 (one channel)
    expected = (1.0 + 0.0) / 2 + (0.0 + 0.2) / 2  # mean over the 2 size channels + mean over 2 offset channels
    assert float(box_distill_loss(s_size, s_off, t_size, t_off, weight)) == pytest.approx(expected, rel=1e-5)
    feat_t = torch.zeros(b, 4, h, w, dtype=torch.float16)
    feat_s = torch.ones(b, 4, h, w)
    feat_s[0, :, 2, 3] = 0.0
    assert float(det_feature_distill_loss(feat_s, feat_t, weight)) == pytest.approx(0.0, abs=1e-5)
    feat_s[0, :2, 2, 3] = 2.0  # squared error 4 on half the channels
    assert float(det_feature_distill_loss(feat_s, feat_t, weight)) == pytest.approx(2.0, rel=1e-5)


def test_feature_tap_on_detection_features_needs_a_video_model():
    with pytest.raises(FusionEdgeError, match="no detection features"):
        FeatureTap(create_model("audio_only_student", **TINY), "detection")
    with pytest.raises(FusionEdgeError, match="where must be"):
        FeatureTap(create_model("fusion_student", **TINY), "heads")


def test_event_kl_temperature_scaling_by_hand():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    T = 2.0
    pt = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]  # softmax([2, 0] / 2)
    expected = T ** 2 * sum(p * math.log(p / 0.5) for p in pt)
    assert float(event_kl_loss(s, t, T, torch.ones(1))) == pytest.approx(expected, rel=1e-6)
    # the T² factor keeps the gradient scale: at high T, T²·KL tends to the logit-matching limit
    # (1/2)·mean_c((z_t - z_s) - mean)² = 0.5 for these logits, instead of vanishing like 1/T²
    assert float(event_kl_loss(s, t, 20.0, torch.ones(1))) == pytest.approx(0.5, rel=2e-3)
    assert float(event_kl_loss(s, t, T, torch.zeros(1))) == 0.0


def test_distill_weights_are_validated():
    with pytest.raises(FusionEdgeError, match="temperature"):
        DistillWeights(temperature=0.0)
    with pytest.raises(FusionEdgeError, match="feature"):
        DistillWeights(feature=-1.0)


# ------------------------------------------------------------------------------------------ teacher cache


def test_cache_lookup_returns_the_teachers_outputs_of_the_flipped_clip(data_dir, teacher_ckpt):
    teacher, _ = load_teacher(teacher_ckpt, geometry=GEOMETRY, labels=Labels())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    clips = load_clips(read_manifest(data_dir)[:6], GEOMETRY, workers=2, progress=False)
    cache = compute_teacher_cache(teacher, clips, batch_size=4, det_features=True, progress=False)
    assert len(cache) == 6 and cache.feature.shape[-1] == teacher.fusion.out_dim
    assert cache.det_feature.dtype == torch.float16 and cache.det_feature.shape[2] == teacher.config.det_channels
    assert compute_teacher_cache(teacher, clips, batch_size=4,
                                 progress=False).det_feature is None
    for hflip in (1.0, 0.0):
        gen = torch.Generator().manual_seed(0)
        batch = next(iterate_batches(clips, 4, shuffle=True, generator=gen, augment=Augment(0.5, hflip, 6.0)))
        assert bool(batch["flipped"].all()) == (hflip == 1.0) and not (hflip == 0.0 and batch["flipped"].any())
        got = cache.lookup(batch["index"], batch["flipped"])
        idx = batch["index"]
        video = clips.video[idx].flip(4) if hflip else clips.video[idx]
        presence = torch.stack([torch.ones(len(idx)), clips.has_audio[idx].float()], dim=1)
        captured, det = [], []
        handles = [teacher.fusion.register_forward_hook(lambda m, i, o: captured.append(o)),
                   teacher.det_head.shared.register_forward_hook(lambda m, i, o: det.append(o))]
        with torch.no_grad():
            ev, tags, hm, size, offset = teacher(video, clips.audio[idx] * presence[:, 1:], presence)
        for hd in handles:
            hd.remove()
        torch.testing.assert_close(got["event"], ev, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["audio_tags"], tags, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["heatmap"], hm, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["size"], size, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["offset"], offset, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["feature"], captured[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["det_feature"].float(), det[0], rtol=2e-3, atol=2e-3)  # float16
    # and the flipped entry really differs from the un-flipped one
    assert not torch.allclose(cache.heatmap[:, 0], cache.heatmap[:, 1])


def test_teacher_with_another_geometry_or_labels_is_refused(teacher_ckpt, tmp_path, data_dir):
    other = InputGeometry(height=64, width=96)
    model = create_model("fusion_student", **TINY, height=64, width=96)
    bad = save_checkpoint(tmp_path / "other.pt", model, model_name="fusion_student",
                          model_config=model.config.to_dict(), geometry=other, labels=Labels().to_dict(),
                          metrics={}, epoch=1)
    with pytest.raises(CheckpointError, match="height 64 != 96"):
        load_teacher(bad, geometry=GEOMETRY, labels=Labels())
    with pytest.raises(CheckpointError, match="geometry"):
        train(_cfg(data_dir, tmp_path / "run", teacher=bad))
    labels = Labels(events=tuple(reversed(Labels().events)))
    with pytest.raises(CheckpointError, match="labels differ.*events"):
        load_teacher(teacher_ckpt, geometry=GEOMETRY, labels=labels)


# ------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def student_run(data_dir, teacher_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    return root, train(_cfg(data_dir, root / "student", teacher=teacher_ckpt, epochs=2, max_train_samples=16))


@pytest.mark.slow
def test_tiny_distillation_run_trains_and_records_flops(student_run, teacher_ckpt):
    tmp_path, result = student_run
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    d = metrics["distillation"]
    assert d["teacher_flops"] > d["student_flops"] > 0 and d["teacher_params"] > d["student_params"] > 0
    assert d["flops_ratio"] == pytest.approx(d["teacher_flops"] / d["student_flops"], rel=1e-3)
    teacher, _ = load_checkpoint(teacher_ckpt)
    student, info = load_checkpoint(tmp_path / "student" / "best.pt")
    assert d["projector"] == [student.fusion.out_dim, teacher.fusion.out_dim] and d["projector"][0] < d["projector"][1]
    assert d["det_adapter"] == [student.config.det_channels, teacher.config.det_channels]
    for h in metrics["history"]:
        for k in ("kd_event", "kd_tags", "kd_heatmap", "kd_feature", "kd_box", "kd_det_feature", "event", "heatmap"):
            assert math.isfinite(h["train"][k]) and h["train"][k] >= -1e-6, k
    assert result["distillation"] == d
    # the student alone is the checkpoint (exportable); the projector lives in last.pt's training state
    assert student.config.fusion_dim == 16
    last = torch.load(tmp_path / "student" / "last.pt", weights_only=True)
    assert tuple(last["training_state"]["aux"]["projector"]["weight"].shape) == tuple(reversed(d["projector"]))
    assert tuple(last["training_state"]["aux"]["det_adapter"]["weight"].shape[:2]) == tuple(reversed(d["det_adapter"]))
    assert "Distillation" in (tmp_path / "student" / "summary.md").read_text()


@pytest.mark.slow
def test_distillation_run_resumes_exactly(student_run, data_dir, teacher_ckpt):
    """The projector and its optimizer state are saved in last.pt; the teacher cache is recomputed."""
    root, straight = student_run
    cfg = dict(teacher=teacher_ckpt, epochs=2, max_train_samples=16)
    train(_cfg(data_dir, root / "split", stop_after_epoch=1, **cfg))
    resumed = train(_cfg(data_dir, root / "split", resume=root / "split" / "last.pt", **cfg))
    a = torch.load(root / "student" / "last.pt", weights_only=True)
    b = torch.load(root / "split" / "last.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for name in ("projector", "det_adapter"):
        pa, pb = a["training_state"]["aux"][name], b["training_state"]["aux"][name]
        assert all(torch.equal(pa[k], pb[k]) for k in pa), name
    assert [h["train"] for h in resumed["history"]] == [h["train"] for h in straight["history"]]
    with pytest.raises(CheckpointError, match="distill"):
        train(_cfg(data_dir, root / "split", resume=root / "split" / "last.pt",
                   distill=DistillWeights(temperature=2.0), **cfg))


@pytest.mark.slow
def test_distill_cli_runs_train_with_a_teacher(data_dir, teacher_ckpt, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_distill_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["distill", "--teacher", str(teacher_ckpt), "--data", str(data_dir), "--out",
                              str(tmp_path / "cli"), "--epochs", "1", "--batch-size", "8", "--temperature", "2",
                              "--max-train-samples", "12", "--json",
                              *[a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["distillation"]["weights"]["temperature"] == 2.0 and out["train_samples"] == 12
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["train"]["teacher"] == str(teacher_ckpt)


@pytest.mark.slow
def test_distillation_under_torchrun_two_process_gloo(data_dir, teacher_ckpt, tmp_path):
    """Each rank computes half of the teacher cache; the all-gathered caches give identical replicas."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        from fusionedge.training.distributed import DistContext, process_group, resolve_device
        from fusionedge.training.train import TrainConfig, train
        dist = DistContext.from_env(os.environ)
        cfg = TrainConfig(data={str(data_dir)!r}, out={str(tmp_path / 'ddp')!r}, model_overrides={TINY!r},
                          teacher={str(teacher_ckpt)!r}, epochs=1, batch_size=4, progress=False, device="cpu",
                          task_weighting="uncertainty", task_schedule="alternating", report=False)
        with process_group(dist, resolve_device(cfg.device, dist)):
            result = train(cfg, dist)
        if dist.is_main:
            print(json.dumps(result["distributed"]))
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    digests = json.loads(proc.stdout.strip().splitlines()[-1])["parameter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    last = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert set(last["training_state"]["aux"]) == {"projector", "det_adapter", "uncertainty"}
