"""Self-supervised audio-visual pretraining: batch construction, loss, metrics, runs, encoder transfer, CLI."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import DataError, FusionEdgeError
from fusionedge.sdk.spec import InputGeometry
from fusionedge.training.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from fusionedge.training.dataset import Labels, iterate_batches, load_clips
from fusionedge.training.models import create_model, model_config
from fusionedge.training.models.multimodal import ModelConfigError, MultimodalModel
from fusionedge.training.contrastive import _pool, _shift_discrimination
from fusionedge.training.pretrain import (
    ENCODER_PREFIXES,
    ContrastiveHeads,
    PretrainConfig,
    contrastive_loss,
    load_pretrained_encoders,
    match_loss,
    pretrain,
    retrieval_metrics,
    shifted_audio,
    still_copy,
    video_view,
    view_loss,
)
from fusionedge.cli.train import add_pretrain_parser
from _tiny_train import TINY  # small enough that a pretraining epoch on ~44 clips takes well under a second


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fusionedge.training.synth.generate import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 48, seed=5, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def unlabelled(data_dir, tmp_path_factory):
    """The same clips in a manifest with every label field removed (id, video, audio only)."""
    out = tmp_path_factory.mktemp("unlabelled")
    lines = [json.dumps({"id": s.id, "video": str(s.video), "audio": None if s.audio is None else str(s.audio)})
             for s in read_manifest(data_dir)]
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="event"):  # really unlabelled
        read_manifest(out)
    return out


def _cfg(data, out, **kw) -> PretrainConfig:
    base = dict(data=data, out=out, model_overrides=TINY, epochs=1, batch_size=16, embed_dim=32, proj_hidden=64,
                progress=False, num_workers=2)
    base.update(kw)
    return PretrainConfig(**base)


@pytest.fixture(scope="module")
def run(unlabelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, pretrain(_cfg(unlabelled, out, epochs=2, match_weight=0.0))  # the encoders alone (+ the view loss)


# ----------------------------------------------------------------------------------- building blocks


def test_hard_negatives_are_shifted_copies_of_the_same_audio():
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(3, 1600, generator=g)
    negatives, shifts = shifted_audio(audio, 4, 400, g)
    assert negatives.shape == (3, 4, 1600) and shifts.shape == (3, 4)
    assert int(shifts.min()) >= 400 and int(shifts.max()) <= 1600 - 400
    assert len(set(shifts.flatten().tolist())) > 1  # random, not one fixed shift
    for b in range(3):
        for k in range(4):
            assert torch.equal(negatives[b, k], torch.roll(audio[b], int(shifts[b, k])))
            assert not torch.equal(negatives[b, k], audio[b])
    with pytest.raises(ValueError, match="min_shift"):
        shifted_audio(audio, 2, 801)


def test_retrieval_metrics_on_a_hand_built_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],   # true match first: rank 0
                        [0.8, 0.5, 0.1, 0.0],   # one better: rank 1
                        [0.3, 0.7, 0.7, 0.1],   # tied with one: ties count against, rank 1
                        [0.5, 0.4, 0.3, 0.2]])  # last: rank 3
    m = retrieval_metrics(sim, (1, 2, 4))
    assert m == {"top1": 0.25, "top2": 0.75, "top4": 1.0}
    assert retrieval_metrics(torch.ones(5, 5), (1,))["top1"] == 0.0  # a collapsed embedding is not a hit
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(torch.zeros(2, 3))
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    hard = torch.tensor([[[0.6, 0.8], [0.0, 1.0]],     # both below the true 1.0: correct
                         [[0.0, 1.0], [1.0, 0.0]]])    # one ties the true 1.0: wrong
    assert _shift_discrimination(v, a, hard) == 0.5


def test_loss_is_finite_and_falls_when_overfitting_a_fixed_batch(data_dir):
    torch.manual_seed(0)
    clips = load_clips([s for s in read_manifest(data_dir) if s.audio is not None][:8], InputGeometry(),
                       workers=2, progress=False)
    model = create_model("fusion_student", **TINY)
    heads = ContrastiveHeads(model.video_encoder.out_channels, model.config.audio_dim, 32, 64)
    params = [*model.video_encoder.parameters(), *model.audio_encoder.parameters(), *heads.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    batch = next(iterate_batches(clips, 8))
    hard, _ = shifted_audio(batch["audio"], 2, 4000, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(25):
        v = heads.embed_video(model, batch["video"])
        emb = heads.embed_audio(model, torch.cat([batch["audio"], hard.flatten(0, 1)]))
        loss, parts = contrastive_loss(v, emb[:8], emb[8:].reshape(8, 2, -1), heads.logit_scale)
        assert torch.isfinite(loss) and set(parts) == {"loss_va", "loss_av"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        heads.clamp_()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    assert 0.01 <= heads.temperature <= 1.0


def test_towers_see_the_order_in_time():
    """A circular shift keeps the set of sounds; only an order-aware tower can tell it from the original."""
    torch.manual_seed(0)
    heads = ContrastiveHeads(16, 16, 32, 64, time_steps=4)
    tokens = torch.randn(3, 12, 16)  # (B, Na, Ca) audio tokens in time order
    rolled = tokens.roll(5, dims=1)
    assert torch.allclose(_pool(tokens), _pool(rolled), atol=1e-6)  # an order-free pooling cannot tell them apart
    assert (heads.project_audio(tokens) - heads.project_audio(rolled)).norm(dim=1).min() > 1e-3
    model = create_model("fusion_student", **TINY).eval()
    video = model.example_inputs(2)[0]
    tokens_v, per_frame = model.video_encoder.frame_features(video)
    with torch.no_grad():
        full = model.video_encoder.forward_with_frames(video)
        assert per_frame.shape == (2, model.config.clip_frames, 2 * model.video_encoder.out_channels)
        assert torch.allclose(tokens_v, full[0])
        assert torch.allclose(model.video_encoder.frame_proj(per_frame), full[4])  # the frame tokens, unprojected
    heads_v = ContrastiveHeads(model.video_encoder.out_channels, 16, 32, 64, time_steps=model.config.clip_frames)
    order = (heads_v.project_video(tokens_v, per_frame) - heads_v.project_video(tokens_v, per_frame.flip(1)))
    assert order.norm(dim=1).min() > 1e-3  # the same frames in another order embed elsewhere


def test_match_loss_trains_the_fusion_on_true_and_false_pairs(data_dir):
    torch.manual_seed(0)
    clips = load_clips([s for s in read_manifest(data_dir) if s.audio is not None][:8], InputGeometry(),
                       workers=2, progress=False)
    model = create_model("fusion_student", **TINY)
    heads = ContrastiveHeads(model.video_encoder.out_channels, model.config.audio_dim, 32, 64,
                             fusion_dim=model.fusion.out_dim)
    batch = next(iterate_batches(clips, 8))
    hard, _ = shifted_audio(batch["audio"], 1, 4000, torch.Generator().manual_seed(0))
    params = [*model.video_encoder.parameters(), *model.audio_encoder.parameters(), *model.fusion.parameters(),
              *heads.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for i in range(30):
        v_tokens, per_frame = model.video_encoder.frame_features(batch["video"])
        a_tokens = model.audio_encoder(torch.cat([batch["audio"], hard[:, 0]]))[0]
        loss, accuracy = match_loss(model, heads, v_tokens, per_frame, a_tokens[:8], a_tokens[8:])
        assert torch.isfinite(loss) and 0.0 <= accuracy <= 1.0
        opt.zero_grad()
        loss.backward()
        if i == 0:  # the loss reaches the fusion and the per-frame projection that only it reads
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())
            assert model.video_encoder.frame_proj[0].weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(math.log(2), abs=0.15)  # an untrained match head is at chance
    assert losses[-1] < 0.5 * losses[0], losses
    # a batch of one has no other clip; without a shifted copy there is nothing to tell its audio from
    v_tokens, per_frame = model.video_encoder.frame_features(batch["video"][:1])
    a_tokens = model.audio_encoder(torch.cat([batch["audio"][:1], hard[:1, 0]]))[0]
    loss, accuracy = match_loss(model, heads, v_tokens, per_frame, a_tokens[:1], None)
    assert float(loss) == 0.0 and math.isnan(accuracy)
    loss, accuracy = match_loss(model, heads, v_tokens, per_frame, a_tokens[:1], a_tokens[1:])
    assert float(loss.detach()) > 0.0 and accuracy in (0.0, 0.5, 1.0)  # one true and one shifted pair
    with pytest.raises(ValueError, match="time_steps"):
        ContrastiveHeads(16, 16, time_steps=0)


def test_a_second_view_is_the_same_clip_cropped_flipped_and_re_exposed():
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    torch.manual_seed(0)
    video = torch.randn(6, 4, 3, 24, 40)
    view = video_view(video, 0.7, gen())
    assert view.shape == video.shape and torch.isfinite(view).all()
    assert torch.equal(view, video_view(video, 0.7, gen()))  # the generator decides everything
    same = video[:, :1].expand(-1, 4, -1, -1, -1)  # four identical frames per clip ...
    out = video_view(same, 0.5, gen())
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)  # ... stay identical: one crop per clip
    full = video_view(video, 1.0, gen())  # no crop: each clip, maybe mirrored, through a gain and an offset
    mirrored = 0
    for x, y in zip(video, full):
        fits = []  # (worst residual, gain) of y ≈ gain * src + offset per colour, src the clip or its mirror image
        channel = torch.nn.functional.one_hot(torch.arange(3).view(1, 3, 1, 1).expand_as(x).flatten(), 3)
        for src in (x, x.flip(-1)):
            a = torch.cat([src.flatten().unsqueeze(1), channel], dim=1).double()
            coef = torch.linalg.lstsq(a, y.flatten().unsqueeze(1).double()).solution
            fits.append((float(((a @ coef).squeeze(1) - y.flatten()).abs().max()), float(coef[0])))
        residual, gain = min(fits)
        assert residual < 1e-4 and 0.7 - 1e-4 <= gain <= 1.3 + 1e-4, fits
        mirrored += int(fits[1] < fits[0])
    assert 0 < mirrored < len(video)  # both kinds of draw occur
    cropped = video_view(video, 0.5, gen())
    assert (cropped - full).abs().mean() > 0.1  # a crop changes the content, not just its exposure
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="min_scale"):
            video_view(video, bad)


def test_a_still_copy_is_one_frame_of_the_clip_held_over_the_whole_clip():
    torch.manual_seed(0)
    video = torch.randn(16, 4, 3, 6, 10)
    still = still_copy(video, torch.Generator().manual_seed(1))
    assert still.shape == video.shape and still.is_contiguous()
    frames = []
    for x, y in zip(video, still):
        assert torch.equal(y, y[:1].expand_as(y))  # nothing changes over time ...
        match = [t for t in range(4) if torch.equal(y[0], x[t])]
        assert len(match) == 1  # ... and what is held is one of the clip's own frames
        frames.append(match[0])
    assert len(set(frames)) > 1  # the frame is drawn per clip
    assert torch.equal(still, still_copy(video, torch.Generator().manual_seed(1)))


def test_the_still_copy_is_one_more_negative_for_its_own_clip_only():
    z = torch.eye(8, 16)  # each clip's two views agree and differ from every other clip
    assert float(view_loss(z, z, 0.01)) < 1e-6
    # a still that embeds like the moving view halves the clip's probability: ln 2 in both directions
    assert float(view_loss(z, z, 0.01, still=z)) == pytest.approx(math.log(2), abs=1e-4)
    assert float(view_loss(z, z, 0.01, still=torch.roll(z, 1, dims=1))) < 1e-6  # a still that differs is harmless
    flat = torch.ones(8, 16) / 4  # uninformative: B others and the still share the probability
    assert float(view_loss(flat, flat, 0.1, still=flat)) == pytest.approx(math.log(9))


def test_view_loss_learns_to_find_a_clip_from_its_second_view(data_dir):
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert float(view_loss(torch.ones(8, 16) / 4, torch.ones(8, 16) / 4, 0.1)) == pytest.approx(math.log(8))
    assert float(view_loss(z, z, 0.01)) < 0.01  # each row recognizes only itself
    torch.manual_seed(0)
    clips = load_clips([s for s in read_manifest(data_dir) if s.audio is not None][:8], InputGeometry(),
                       workers=2, progress=False)
    model = create_model("fusion_student", **TINY)
    heads = ContrastiveHeads(model.video_encoder.out_channels, model.config.audio_dim, 32, 64, view=True)
    assert heads.view_proj is not None and ContrastiveHeads(16, 16).view_proj is None
    opt = torch.optim.Adam([*model.video_encoder.parameters(), *heads.view_proj.parameters()], lr=3e-3)
    batch, gen = next(iterate_batches(clips, 8)), torch.Generator().manual_seed(0)
    losses = []
    for i in range(25):
        first = heads.project_view(*model.video_encoder.frame_features(batch["video"]))
        second = heads.project_view(*model.video_encoder.frame_features(video_view(batch["video"], 0.7, gen)))
        loss = view_loss(first, second, 0.1)
        opt.zero_grad()
        loss.backward()
        if i == 0:  # the video encoder learns from it; the audio side is not involved
            assert model.video_encoder.stem[0].weight.grad.abs().sum() > 0
            assert all(p.grad is None for p in model.audio_encoder.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_pretraining_with_the_fusion_in_the_loop_hands_it_on(unlabelled, tmp_path):
    result = pretrain(_cfg(unlabelled, tmp_path / "m", match_weight=1.0))
    state = read_checkpoint(tmp_path / "m" / "pretrain.pt")
    assert state["extra"]["pretrained"] == [*ENCODER_PREFIXES, "fusion."]
    assert {"loss_match", "match_accuracy"} <= set(result["history"][0]["train"])
    torch.manual_seed(0)  # the run's seed: a fresh model starts where the pretrained one started
    fresh = create_model("fusion_student", **TINY)
    fusion_keys = [k for k in fresh.state_dict() if k.startswith("fusion.")]
    assert any(not torch.equal(state["state_dict"][k], fresh.state_dict()[k]) for k in fusion_keys)  # trained
    loaded = load_pretrained_encoders(fresh, tmp_path / "m" / "pretrain.pt")
    assert set(fusion_keys) <= set(loaded)
    assert all(torch.equal(fresh.state_dict()[k], state["state_dict"][k]) for k in loaded)
    # a model whose fusion is built otherwise still gets the encoders, and keeps its own fusion
    other = create_model("fusion_student", **{**TINY, "fusion_dim": 32})
    before = {k: v.clone() for k, v in other.state_dict().items() if k.startswith("fusion.")}
    loaded = load_pretrained_encoders(other, tmp_path / "m" / "pretrain.pt")
    assert loaded and not any(k.startswith("fusion.") for k in loaded)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(FusionEdgeError, match="match_weight"):
        _cfg(unlabelled, tmp_path / "x", match_weight=-1.0)


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ModelConfigError, match="only video"):  # checked before any data is read
        pretrain(_cfg(tmp_path / "nothing-here", tmp_path / "out", model="vision_only_student"))
    with pytest.raises(ModelConfigError, match="only audio"):
        pretrain(_cfg(tmp_path / "nothing-here", tmp_path / "out", model="audio_only_student"))
    with pytest.raises(FusionEdgeError, match="min_shift_seconds"):
        _cfg(tmp_path, tmp_path, min_shift_seconds=0.6)
    with pytest.raises(FusionEdgeError, match="hard_negatives"):
        _cfg(tmp_path, tmp_path, hard_negatives=-1)
    for field_, value in (("view_weight", -1.0), ("view_min_scale", 0.0), ("view_min_scale", 1.2),
                          ("view_temperature", 0.0)):
        with pytest.raises(FusionEdgeError, match=field_):
            _cfg(tmp_path, tmp_path, **{field_: value})


def test_without_the_view_loss_there_is_no_view_head(unlabelled, tmp_path):
    result = pretrain(_cfg(unlabelled, tmp_path / "nv", view_weight=0.0, match_weight=0.0, max_train_samples=16))
    assert "loss_view" not in result["history"][0]["train"] and "view_top1" not in result["best"]
    projections = read_checkpoint(tmp_path / "nv" / "pretrain.pt")["extra"]["projections"]
    assert projections and not any(k.startswith("view_proj.") for k in projections)


# ------------------------------------------------------------------------------------------ a run


def test_run_on_unlabelled_data_writes_checkpoint_and_metrics(run):
    out, result = run
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["pretrain"]["hard_negatives"] == 2 and config["model_name"] == "fusion_student"
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    n = result["val_samples"]
    assert n >= 2 and result["train_samples"] + n <= 48
    assert metrics["chance"] == pytest.approx({"a2v_top1": 1 / n, "a2v_top5": min(5, n) / n, "v2a_top1": 1 / n,
                                               "shift_discrimination": 1 / 3, "view_top1": 1 / n,
                                               "still_discrimination": 0.5})
    for h in metrics["history"]:
        assert h["train"]["loss"] > 0 and h["val"]["samples"] == n and 0 < h["temperature"] < 1
        assert h["train"]["loss_view"] > 0
        for key in ("a2v_top1", "a2v_top5", "v2a_top1", "shift_discrimination", "view_top1", "still_discrimination"):
            assert 0.0 <= h["val"][key] <= 1.0
    best = metrics["best"]
    assert best["view_top1"] == max(h["val"]["view_top1"] for h in metrics["history"])  # the selection rule

    state = read_checkpoint(out / "pretrain.pt")
    assert state["epoch"] == best["epoch"]
    extra = state["extra"]
    assert extra["kind"] == "pretrain" and extra["pretrain_config"]["embed_dim"] == 32
    proj = extra["projections"]
    assert proj["logit_scale"].ndim == 0 and proj["video_proj.3.weight"].shape == (32, 64)
    assert proj["view_proj.3.weight"].shape == (32, 64)
    # Only the encoders were trained: fusion and task heads are still the seed's initialization.
    torch.manual_seed(0)
    init = MultimodalModel(model_config("fusion_student", **TINY)).state_dict()
    for k, v in state["state_dict"].items():
        if k.startswith(ENCODER_PREFIXES) and ".frontend." not in k:  # trained (weights, BN statistics)
            continue
        assert torch.equal(v, init[k]), k
    assert any(not torch.equal(state["state_dict"][k], init[k]) for k in init if k.startswith("video_encoder."))


def test_load_pretrained_encoders_copies_exactly_the_encoders(run):
    out, _ = run
    saved = read_checkpoint(out / "pretrain.pt")["state_dict"]
    torch.manual_seed(123)
    model = create_model("fusion_student", **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = load_pretrained_encoders(model, out / "pretrain.pt")
    assert set(loaded) == {k for k in before if k.startswith(ENCODER_PREFIXES)}
    assert any(k.startswith("video_encoder.") for k in loaded) and any(k.startswith("audio_encoder.") for k in loaded)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k] if k in loaded else before[k]), k


def test_load_pretrained_encoders_refuses_what_does_not_fit(run, tmp_path):
    out, _ = run
    meta = dict(model_config={}, geometry=InputGeometry(), labels=Labels().to_dict(), metrics={}, epoch=0)
    teacher = create_model("fusion_teacher")
    save_checkpoint(tmp_path / "teacher.pt", teacher, model_name="fusion_teacher",
                    **{**meta, "model_config": teacher.config.to_dict()})
    student = create_model("fusion_student")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(CheckpointError, match="different architecture"):
        load_pretrained_encoders(student, tmp_path / "teacher.pt")
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())  # nothing half-loaded
    wider = create_model("fusion_student", **{**TINY, "video_channels": (8, 8, 16, 24)})
    with pytest.raises(CheckpointError, match="video_encoder shapes differ"):  # the tiny run, one width changed
        load_pretrained_encoders(wider, out / "pretrain.pt")
    audio_only = create_model("audio_only_student")
    save_checkpoint(tmp_path / "audio.pt", audio_only, model_name="audio_only_student",
                    **{**meta, "model_config": audio_only.config.to_dict()})
    with pytest.raises(CheckpointError, match="no encoder weights"):
        load_pretrained_encoders(create_model("vision_only_student"), tmp_path / "audio.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_pretrained_encoders(student, tmp_path / "junk.pt")


def test_same_seed_gives_identical_weights(unlabelled, tmp_path):
    def weights(name, seed):
        pretrain(_cfg(unlabelled, tmp_path / name, seed=seed, max_train_samples=16))
        state = read_checkpoint(tmp_path / name / "pretrain.pt")
        return {**state["state_dict"], **{"proj." + k: v for k, v in state["extra"]["projections"].items()}}

    a, b, c = weights("a", 0), weights("b", 0), weights("c", 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_cli_runs_through_its_own_parser(unlabelled, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fusionedge")
    add_pretrain_parser(parser.add_subparsers(dest="verb", required=True))
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}")]
    args = parser.parse_args(["pretrain", "--data", str(unlabelled), "--out", str(tmp_path / "cli"), "--epochs", "1",
                              "--batch-size", "16", "--hard-negatives", "1", "--seed", "3", "--view-weight", "0.5",
                              "--no-view-still", "--json", *sets])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chance"]["shift_discrimination"] == 0.5
    assert (tmp_path / "cli" / "pretrain.pt").is_file()
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())["pretrain"]
    assert saved["seed"] == 3 and saved["batch_size"] == 16 and saved["model_overrides"]["audio_dim"] == 16
    assert saved["view_weight"] == 0.5 and saved["view_still"] is False
    assert "view_top1" in result["best"] and "still_discrimination" not in result["best"]
