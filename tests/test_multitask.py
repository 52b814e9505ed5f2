"""Multi-task strategies (uncertainty weighting, alternating schedule), exact resume with them, run reports."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import DataError, FusionEdgeError
from fusionedge.sdk.spec import InputGeometry
from fusionedge.training.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from fusionedge.training.dataset import Labels, iterate_batches, load_clips
from fusionedge.training.losses import (
    TASK_GROUPS,
    UncertaintyWeighting,
    combine_task_losses,
    multitask_loss,
    multitask_terms,
    scheduled_groups,
)
from fusionedge.training.models import create_model
from fusionedge.training.run_report import write_run_report
from fusionedge.training.train import TrainConfig, train
from _tiny_train import TINY

GEOMETRY = InputGeometry()
WEIGHTS = {"event": 1.0, "audio_tags": 1.0, "heatmap": 1.0, "size": 1.0, "offset": 2.5}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fusionedge.training.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 24, seed=5, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def batch(data_dir):
    clips = load_clips(read_manifest(data_dir)[:4], GEOMETRY, workers=2, progress=False)
    return next(iterate_batches(clips, 4))


def _cfg(data_dir, out, **kw) -> TrainConfig:
    base = dict(data=data_dir, val_data=data_dir, max_val_samples=4, out=out, model_overrides=TINY, epochs=2,
                batch_size=4, lr=3e-3, progress=False, num_workers=2, seed=5, max_train_samples=12)
    base.update(kw)
    return TrainConfig(**base)


def test_uncertainty_weighting_formula():
    uw = UncertaintyWeighting()
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.0, 1.0, -0.5]))
    losses = {"event": torch.tensor(2.0), "audio_tags": torch.tensor(3.0), "detection": torch.tensor(4.0)}
    expected = 2.0 + (math.exp(-1.0) * 3.0 + 1.0) + (math.exp(0.5) * 4.0 - 0.5)
    assert float(uw(losses).detach()) == pytest.approx(expected, rel=1e-6)
    assert float(uw(losses, ["audio_tags"]).detach()) == pytest.approx(math.exp(-1.0) * 3.0 + 1.0, rel=1e-6)
    assert uw.weights() == pytest.approx({"event": 1.0, "audio_tags": math.exp(-1.0), "detection": math.exp(0.5)})


def test_schedule_round_robin_and_errors(tmp_path):
    assert scheduled_groups("joint", 7) == TASK_GROUPS
    assert [scheduled_groups("alternating", s)[0] for s in range(5)] == [*TASK_GROUPS, *TASK_GROUPS[:2]]
    with pytest.raises(ValueError, match="schedule"):
        scheduled_groups("random", 0)
    with pytest.raises(FusionEdgeError, match="task_weighting"):
        TrainConfig(data=tmp_path, out=tmp_path, task_weighting="learned")
    with pytest.raises(FusionEdgeError, match="task_schedule"):
        TrainConfig(data=tmp_path, out=tmp_path, task_schedule="random")


def test_fixed_joint_combination_equals_multitask_loss(batch):
    torch.manual_seed(0)
    model = create_model("fusion_student", **TINY)
    outputs = model(batch["video"], batch["audio"], batch["presence"])
    from fusionedge.training.losses import LossWeights

    total, _ = multitask_loss(outputs, batch, LossWeights())
    assert torch.equal(combine_task_losses(multitask_terms(outputs, batch), WEIGHTS), total)


def test_alternating_step_back_propagates_only_its_group(batch):
    torch.manual_seed(0)
    model = create_model("fusion_student", **TINY)
    for step, group in enumerate(TASK_GROUPS):
        model.zero_grad(set_to_none=True)
        outputs = model(batch["video"], batch["audio"], batch["presence"])
        loss = combine_task_losses(multitask_terms(outputs, batch), WEIGHTS, scheduled_groups("alternating", step))
        loss.backward()
        grads = {name: any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in head.parameters())
                 for name, head in (("event", model.event_head), ("audio_tags", model.audio_tag_head),
                                    ("detection", model.det_head))}
        assert grads == {g: g == group for g in TASK_GROUPS}, (group, grads)
        # the shared encoders learn at every step that reaches them
        if group in ("event", "detection"):
            assert any(p.grad is not None for p in model.video_encoder.parameters())


@pytest.mark.slow
def test_uncertainty_alternating_run_resumes_exactly_and_reports(data_dir, tmp_path):
    kw = dict(task_weighting="uncertainty", task_schedule="alternating")
    straight = train(_cfg(data_dir, tmp_path / "straight", **kw))
    train(_cfg(data_dir, tmp_path / "split", stop_after_epoch=1, **kw))
    resumed = train(_cfg(data_dir, tmp_path / "split", resume=tmp_path / "split" / "last.pt", **kw))
    a, b = read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(tmp_path / "split" / "last.pt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    la = a["training_state"]["aux"]["uncertainty"]["log_vars"]
    assert torch.equal(la, b["training_state"]["aux"]["uncertainty"]["log_vars"])
    assert not torch.equal(la, torch.zeros(3))  # the weights moved
    weights = [h["task_weights"] for h in straight["history"]]
    assert len(weights) == 2 and weights[-1] != {g: 1.0 for g in TASK_GROUPS}
    assert weights[-1] == pytest.approx({g: math.exp(-float(s)) for g, s in zip(TASK_GROUPS, la)})
    for key in ("train", "val", "task_weights"):
        assert [h[key] for h in resumed["history"]] == [h[key] for h in straight["history"]], key
    # a different strategy is a different run: resuming with it is refused
    with pytest.raises(CheckpointError, match="task_weighting"):
        train(_cfg(data_dir, tmp_path / "split", resume=tmp_path / "split" / "last.pt", task_schedule="alternating"))
    # the run report: a PNG and a Markdown summary with the best epoch's metrics and the task weights
    png, md = tmp_path / "straight" / "curves.png", tmp_path / "straight" / "summary.md"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = md.read_text()
    best = straight["best"]
    assert f"Epoch {best['epoch']} of 2" in text and "uncertainty" in text and "exp(-s)" in text
    assert f"| val loss | {best['loss']:.4f} |" in text


def test_write_run_report_again_and_on_bad_folders(data_dir, tmp_path):
    train(_cfg(data_dir, tmp_path / "run", epochs=1, report=False))
    assert not (tmp_path / "run" / "curves.png").exists()
    png, md = write_run_report(tmp_path / "run")
    assert png.read_bytes()[:4] == b"\x89PNG" and "## Best epoch" in md.read_text()
    with pytest.raises(DataError, match="metrics.json"):
        write_run_report(tmp_path / "nowhere")


def test_init_from_a_pretraining_checkpoint_loads_the_encoders_only(data_dir, tmp_path):
    torch.manual_seed(3)
    source = create_model("fusion_student", **TINY)
    ckpt = save_checkpoint(tmp_path / "pretrain.pt", source, model_name="fusion_student",
                           model_config=source.config.to_dict(), geometry=GEOMETRY, labels=Labels().to_dict(),
                           metrics={}, epoch=1, extra={"kind": "pretrain"})
    result = train(_cfg(data_dir, tmp_path / "run", init=ckpt, epochs=1, lr=1e-12, report=False))
    n_enc = sum(1 for k in source.state_dict() if k.startswith(("video_encoder.", "audio_encoder.")))
    assert result["init"] == {"path": str(ckpt), "kind": "pretrain", "loaded_keys": n_enc}
    trained = read_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    conv = next(k for k in trained if k.startswith("video_encoder.") and k.endswith("weight"))
    torch.testing.assert_close(trained[conv], source.state_dict()[conv], rtol=0, atol=1e-6)
    head = next(k for k in trained if k.startswith("event_head.") and k.endswith("weight"))
    assert not torch.allclose(trained[head], source.state_dict()[head])  # heads keep their own init


def test_train_cli_options_reach_the_config():
    from fusionedge.cli.main import build_parser

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--task-weighting", "uncertainty",
                                      "--task-schedule", "alternating", "--max-train-samples", "5"])
    assert (args.task_weighting, args.task_schedule, args.max_train_samples) == ("uncertainty", "alternating", 5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--task-weighting", "learned"])
