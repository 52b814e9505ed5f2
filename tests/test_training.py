"""Training: the data pipeline, the losses, checkpoints and the training loop, on a tiny synthetic set."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import DataError, FusionEdgeError
from fusionedge.sdk.postprocess import encode_centernet_targets
from fusionedge.sdk.media import read_video
from fusionedge.sdk.preprocess import preprocess_frame_reference, preprocess_video
from fusionedge.sdk.spec import InputGeometry
from fusionedge.training.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from fusionedge.training.dataset import (
    Augment,
    Labels,
    flipped_boxes,
    iterate_batches,
    load_clips,
    split_for_validation,
)
from fusionedge.training.losses import IGNORE_INDEX, LossWeights, centernet_focal_loss, multitask_loss
from fusionedge.training.models import create_model
from fusionedge.training.train import TrainConfig, evaluate_model, train
from _tiny_train import TINY

GEOMETRY = InputGeometry()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fusionedge.training.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 24, seed=7, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def clips(data_dir):
    return load_clips(read_manifest(data_dir)[:12], GEOMETRY, workers=2, progress=False)


def _tiny_config(data_dir, out, **kw) -> TrainConfig:
    base = dict(data=data_dir, out=out, model_overrides=TINY, epochs=1, batch_size=8, lr=3e-3, progress=False,
                num_workers=2)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------ data


def test_load_clips_shapes_and_targets(clips):
    n, g = len(clips), GEOMETRY
    h, w = g.heatmap_size
    assert clips.video.shape == (n, g.clip_frames, 3, g.height, g.width) and clips.video.dtype == torch.float32
    assert clips.audio.shape == (n, g.audio_samples) and clips.audio.dtype == torch.float32
    assert clips.targets["heatmap"].shape == (n, len(Labels().objects), h, w)
    assert clips.targets["mask"].shape == (n, h, w)
    assert torch.all(clips.event >= 0)  # the synthetic set is fully labelled
    for i in range(n):  # every box has exactly one centre cell with mask 1 (distinct centres on this set)
        assert clips.boxes[i].shape[1] == 4
        assert float(clips.targets["mask"][i].sum()) <= len(clips.boxes[i])
        assert np.all(clips.boxes[i][:, 2] <= g.width + 1e-6) and np.all(clips.boxes[i][:, 3] <= g.height + 1e-6)
    assert sum(len(b) for b in clips.boxes) > 0


def test_load_clips_holds_the_decoded_clips_once(data_dir):
    """The peak memory of decoding is the cache itself plus little: the clips go into arrays of the
    final size as they come, not into a list that is then stacked (twice the video at the peak)."""
    import tracemalloc

    from fusionedge.training.dataset import _decode

    samples = read_manifest(data_dir)
    clip = _decode(samples[0], GEOMETRY, Labels())
    one = clip["video"].nbytes + clip["audio"].nbytes
    tracemalloc.start()
    try:
        cache = load_clips(samples, GEOMETRY, workers=1, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = cache.video.numpy().nbytes + cache.audio.numpy().nbytes
    assert held == len(samples) * one
    assert peak < held + 8 * one, (peak / one, len(samples))  # stacking a list would need 2 x held


def test_batches_preprocess_like_the_runtime(clips, data_dir):
    batch = next(iterate_batches(clips, 4))
    g = GEOMETRY
    assert batch["video"].shape == (4, g.clip_frames, 3, g.height, g.width)
    sample = read_manifest(data_dir)[2]
    clip = read_video(sample.video, max_seconds=g.clip_seconds)
    runtime = preprocess_video(clip.frames, clip.fps, g)  # what a device feeds the model
    assert np.array_equal(batch["video"][2].numpy(), runtime)  # bit for bit: the same function
    # and that function is the one definition (the float64 reference) of the last, current frame
    ref = preprocess_frame_reference(clip.frames[-1], g)
    assert np.abs(batch["video"][2, -1].numpy() - ref).max() <= 1e-5
    assert torch.equal(batch["presence"], torch.ones(4, 2))


def test_modality_dropout_zeroes_one_modality_never_both(clips):
    gen = torch.Generator().manual_seed(0)
    aug = Augment(modality_dropout=1.0, hflip=0.0, audio_gain_db=0.0)
    seen = set()
    for _ in range(4):
        for batch in iterate_batches(clips, 6, shuffle=True, generator=gen, augment=aug):
            p = batch["presence"]
            assert torch.all(p.sum(dim=1) == 1.0)  # exactly one modality left
            for j in range(len(p)):
                if p[j, 0] == 0:
                    assert torch.count_nonzero(batch["video"][j]) == 0
                if p[j, 1] == 0:
                    assert torch.count_nonzero(batch["audio"][j]) == 0
                seen.add(tuple(p[j].tolist()))
    assert seen == {(0.0, 1.0), (1.0, 0.0)}


def test_hflip_mirrors_frames_and_targets(clips):
    gen = torch.Generator().manual_seed(0)
    aug = Augment(modality_dropout=0.0, hflip=1.0, audio_gain_db=0.0)
    batch = next(iterate_batches(clips, 4, generator=gen, augment=aug))
    plain = next(iterate_batches(clips, 4))
    assert torch.equal(batch["video"], plain["video"].flip(-1))
    g = GEOMETRY
    for j in range(4):
        i = int(batch["index"][j])
        ref = encode_centernet_targets(flipped_boxes(clips.boxes[i], g.width), clips.box_labels[i],
                                       num_classes=len(clips.labels.objects), heatmap_hw=g.heatmap_size,
                                       stride=g.output_stride)
        for k in ("heatmap", "size", "offset", "mask"):
            assert np.array_equal(batch[k][j].numpy(), ref[k]), k
    box = np.array([[10.0, 20.0, 30.0, 50.0]])
    assert np.array_equal(flipped_boxes(box, 160), [[130.0, 20.0, 150.0, 50.0]])
    assert np.array_equal(flipped_boxes(flipped_boxes(box, 160), 160), box)


def test_batches_are_reproducible_from_the_generator(clips):
    aug = Augment()

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return [b for b in iterate_batches(clips, 5, shuffle=True, generator=gen, augment=aug)]

    a, b, c = draw(1), draw(1), draw(2)
    assert all(torch.equal(x["video"], y["video"]) and torch.equal(x["audio"], y["audio"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["index"], y["index"]) for x, y in zip(a, c))
    with pytest.raises(ValueError, match="Generator"):
        next(iterate_batches(clips, 4, shuffle=True))


def test_split_for_validation_is_deterministic_and_disjoint(data_dir):
    samples = read_manifest(data_dir)
    train_a, val_a = split_for_validation(samples)
    train_b, val_b = split_for_validation(list(reversed(samples)))
    assert {s.id for s in val_a} == {s.id for s in val_b}
    assert not {s.id for s in train_a} & {s.id for s in val_a}
    assert len(train_a) + len(val_a) == len(samples) and len(val_a) >= 1


# ------------------------------------------------------------------------------------------ losses


def test_focal_loss_rewards_the_right_heatmap():
    target = torch.zeros(2, 1, 8, 8)
    target[:, 0, 3, 4] = 1.0
    good = torch.full_like(target, -8.0)
    good[:, 0, 3, 4] = 8.0
    bad = -good
    ones = torch.ones(2)
    assert float(centernet_focal_loss(good, target, ones)) < 1e-3
    assert float(centernet_focal_loss(bad, target, ones)) > 5.0
    # a sample with weight 0 does not count
    mixed = torch.cat([good[:1], bad[1:]])
    assert float(centernet_focal_loss(mixed, target, torch.tensor([1.0, 0.0]))) < 1e-3


def test_multitask_loss_honours_presence_and_unlabelled_events(clips):
    torch.manual_seed(0)
    model = create_model("fusion_student", **TINY)
    batch = next(iterate_batches(clips, 4))
    outputs = model(batch["video"], batch["audio"], batch["presence"])
    _, parts = multitask_loss(outputs, batch, LossWeights())
    assert all(np.isfinite(v) and v >= 0 for v in parts.values())
    # audio absent everywhere: the audio-tag term vanishes; no event labels: the event term vanishes
    batch2 = dict(batch, presence=torch.tensor([[1.0, 0.0]] * 4), event=torch.full((4,), IGNORE_INDEX))
    total, parts2 = multitask_loss(outputs, batch2, LossWeights())
    assert parts2["audio_tags"] == 0.0 and parts2["event"] == 0.0 and torch.isfinite(total)
    assert parts2["heatmap"] == pytest.approx(parts["heatmap"])


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("fusion_student", **TINY).eval()
    path = save_checkpoint(tmp_path / "a" / "m.pt", model, model_name="fusion_student",
                           model_config=model.config.to_dict(), geometry=GEOMETRY, labels=Labels().to_dict(),
                           metrics={"event_accuracy": 0.5}, epoch=3)
    loaded, info = load_checkpoint(path)
    assert not loaded.training
    assert info["model_name"] == "fusion_student" and info["epoch"] == 3
    assert info["geometry"] == GEOMETRY.to_dict() and InputGeometry.from_dict(info["geometry"]) == GEOMETRY
    assert info["labels"] == Labels().to_dict() and info["metrics"] == {"event_accuracy": 0.5}
    assert loaded.config == model.config
    inputs = model.example_inputs(2)
    with torch.no_grad():
        for a, b in zip(model(*inputs), loaded(*inputs)):
            assert torch.equal(a, b)
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temp file


def test_corrupt_or_foreign_checkpoints_raise_checkpoint_error(tmp_path):
    torch.manual_seed(0)
    model = create_model("fusion_student", **TINY)
    good = save_checkpoint(tmp_path / "good.pt", model, model_name="fusion_student",
                           model_config=model.config.to_dict(), geometry=GEOMETRY, labels=Labels().to_dict(),
                           metrics={}, epoch=1)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    state = torch.load(good, weights_only=True)
    state["model_config"] = {**state["model_config"], "det_channels": 12}
    torch.save(state, tmp_path / "mismatch.pt")
    for name, match in (("truncated.pt", "corrupt"), ("noise.pt", "corrupt"), ("foreign.pt", "not a FusionEdge"),
                        ("mismatch.pt", "do not fit"), ("missing.pt", "no such")):
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(tmp_path / name)
    assert issubclass(CheckpointError, FusionEdgeError)
    with pytest.raises(CheckpointError, match="labels"):
        save_checkpoint(tmp_path / "x.pt", model, model_name="m", model_config={}, geometry=GEOMETRY,
                        labels={"events": []}, metrics={}, epoch=0)


# ------------------------------------------------------------------------------------------ training loop


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, train(_tiny_config(data_dir, out, epochs=2))


def test_train_writes_the_run_folder(tiny_run):
    out, result = tiny_run
    for name in ("best.pt", "last.pt", "metrics.json", "config.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["best"]["epoch"] in (1, 2)
    for key in ("event_accuracy", "event_macro_f1", "audio_tag_map", "detection_map50", "loss"):
        assert key in metrics["history"][-1]["val"]
    assert result["best"] == metrics["best"] and result["val_samples"] >= 1
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["det_channels"] == TINY["det_channels"]
    assert "optimizer" in torch.load(out / "last.pt", weights_only=True)
    assert "optimizer" not in read_checkpoint(out / "best.pt")
    model, info = load_checkpoint(out / "best.pt")
    assert info["epoch"] == metrics["best"]["epoch"]
    assert info["metrics"]["event_accuracy"] == pytest.approx(metrics["best"]["event_accuracy"], nan_ok=True)


def test_same_seed_gives_the_same_metrics(data_dir, tiny_run, tmp_path):
    _, first = tiny_run
    again = train(_tiny_config(data_dir, tmp_path / "again", epochs=2))
    assert again["history"][-1]["val"] == first["history"][-1]["val"]
    assert again["history"][-1]["train"] == first["history"][-1]["train"]
    a = torch.load(tmp_path / "again" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(first["run_dir"] + "/last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_loss_decreases_when_overfitting_a_tiny_set(data_dir, tmp_path):
    """Eight clips, no augmentation, validated on themselves: the loss must fall clearly."""
    cfg = _tiny_config(data_dir, tmp_path / "overfit", val_data=data_dir, epochs=30, batch_size=4, lr=5e-3,
                       max_train_samples=8, max_val_samples=8, modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0,
                       warmup_epochs=0.5)
    result = train(cfg)
    losses = [h["train"]["loss"] for h in result["history"]]
    val = [h["val"]["loss"] for h in result["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert val[-1] < 0.7 * val[0], val


def test_init_from_checkpoint(data_dir, tiny_run, tmp_path):
    out, _ = tiny_run
    model, _ = load_checkpoint(out / "best.pt")
    cfg = _tiny_config(data_dir, tmp_path / "init", init=out / "best.pt", epochs=1, lr=1e-9, max_train_samples=4,
                       modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0)
    result = train(cfg)
    clips = load_clips(split_for_validation(read_manifest(data_dir))[1], GEOMETRY, progress=False)
    # with a vanishing learning rate, only BatchNorm statistics move: the loss stays close to the init's
    assert result["history"][0]["val"]["loss"] == pytest.approx(evaluate_model(model, clips)["loss"], rel=0.2)
    with pytest.raises(CheckpointError):
        train(_tiny_config(data_dir, tmp_path / "bad", init=out / "best.pt", model_overrides={**TINY, "det_channels": 12}))


def test_encoders_can_be_frozen_first_and_slowed_after(data_dir, tiny_run, tmp_path):
    out, _ = tiny_run
    start, _ = load_checkpoint(out / "best.pt")
    start_params = dict(start.named_parameters())

    def moved(path) -> dict[str, bool]:
        """Per part of the model: did any parameter (not BatchNorm statistics) move from the init?"""
        params = dict(load_checkpoint(path)[0].named_parameters())
        parts = {}
        for k, v in params.items():
            part = k.split(".")[0]
            parts[part] = parts.get(part, False) or not torch.equal(v, start_params[k])
        return parts

    kw = dict(init=out / "best.pt", epochs=2, max_train_samples=8, batch_size=4)
    train(_tiny_config(data_dir, tmp_path / "frozen", frozen_encoder_epochs=1, stop_after_epoch=1, **kw))
    after_one = moved(tmp_path / "frozen" / "last.pt")
    assert not after_one["video_encoder"] and not after_one["audio_encoder"]  # frozen in epoch 1
    assert after_one["fusion"] and after_one["event_head"] and after_one["det_head"]  # the rest learns
    train(_tiny_config(data_dir, tmp_path / "frozen", frozen_encoder_epochs=1, resume=tmp_path / "frozen" / "last.pt",
                       **{**kw, "init": None}))
    after_two = moved(tmp_path / "frozen" / "last.pt")
    assert after_two["video_encoder"] and after_two["audio_encoder"]  # free from epoch 2
    train(_tiny_config(data_dir, tmp_path / "still", encoder_lr_scale=0.0, **kw))
    still = moved(tmp_path / "still" / "last.pt")
    assert not still["video_encoder"] and not still["audio_encoder"] and still["fusion"]
    for bad in (dict(encoder_lr_scale=-0.1), dict(frozen_encoder_epochs=3), dict(frozen_encoder_epochs=-1)):
        with pytest.raises(FusionEdgeError, match=next(iter(bad))):
            _tiny_config(data_dir, tmp_path / "bad", **kw, **bad)


def test_bad_configs_and_data_raise_typed_errors(tmp_path, data_dir):
    with pytest.raises(FusionEdgeError, match="epochs"):
        TrainConfig(data=data_dir, out=tmp_path, epochs=0)
    with pytest.raises(DataError):
        train(_tiny_config(tmp_path / "nowhere", tmp_path / "out"))
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    lines = (bad / "manifest.jsonl").read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "event": ""})  # an unknown label is the data's own; empty is not
    (bad / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError):
        train(_tiny_config(bad, tmp_path / "out2"))


def test_importing_the_training_package_does_not_import_torch():
    code = "import sys, fusionedge.training; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ refusals


def test_cli_train_wrong_model_override_is_one_line_and_leaves_no_run_folder(data_dir, tmp_path, capsys):
    # `--set video_depth=banana` once ended in a TypeError traceback from inside the encoder (exit 1)
    from fusionedge.cli.main import main
    from fusionedge.sdk.errors import InputError

    with pytest.raises(InputError, match="video_depth"):
        train(_tiny_config(data_dir, tmp_path / "lib", model_overrides={**TINY, "video_depth": "banana"}))
    assert not (tmp_path / "lib").exists()
    for item, expects in (("video_depth=banana", "an integer >= 0"), ("widht=3", "unknown"),
                          ("dropout=2", "a number in [0, 1)")):
        rc = main(["train", "--data", str(data_dir), "--out", str(tmp_path / "cli"), "--epochs", "1",
                   "--set", item, "--json"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and item.split("=")[0] in err and expects in err, err
        assert not (tmp_path / "cli").exists()


def _refused_checkpoints(tmp_path):
    """A pickle that weights_only loading refuses, and a file that is no checkpoint at all."""
    import argparse

    torch.save({"format": "fusionedge-checkpoint", "ns": argparse.Namespace(a=1)}, tmp_path / "pickled.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    return {"pickled.pt": "argparse.Namespace", "text.pt": "not a readable checkpoint"}


def test_refused_checkpoint_is_one_line_without_torch_advice_and_leaves_nothing(data_dir, tmp_path):
    for name, what in _refused_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(tmp_path / name)
        msg = str(e.value)
        assert "\n" not in msg and name in msg and what in msg and "weights_only" not in msg, msg
        for option in ("init", "teacher"):
            out = tmp_path / f"run-{option}-{name}"
            with pytest.raises(CheckpointError, match=what):
                train(_tiny_config(data_dir, out, **{option: tmp_path / name}))
            assert not out.exists(), f"{option}={name} left {out} behind"
    existing = tmp_path / "existing"  # a folder the caller made stays (and keeps what it held)
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError):
        train(_tiny_config(data_dir, existing, init=tmp_path / "pickled.pt"))
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_cli_refused_checkpoint_exits_2_with_one_line(data_dir, tmp_path, capsys):
    from fusionedge.cli.main import main

    _refused_checkpoints(tmp_path)
    for verb, option in (("train", "--init"), ("distill", "--teacher")):
        out = tmp_path / f"{verb}-run"
        rc = main([verb, "--data", str(data_dir), "--out", str(out), "--epochs", "1", option,
                   str(tmp_path / "pickled.pt"), "--json"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and "pickled.pt" in err and "weights_only" not in err, err
        assert not out.exists()
