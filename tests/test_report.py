"""`fusionedge report`: the comparison tables, their target checks, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from fusionedge.cli.main import main  # noqa: E402
from fusionedge.sdk.errors import FusionEdgeError  # noqa: E402
from fusionedge.training.report import EXPERIMENTS, ReportConfig, render_markdown, run_report  # noqa: E402
from fusionedge.training.report_tables import fill_tables, pretrain_summary  # noqa: E402


def _res(model: str, acc: float, det: float = 0.5, flops: float = 1e9, audio_missing: float = 0.5,
         video_missing: float = 0.5, cue: float = 1.0, lights_cue_audio_missing: float = 1.0) -> dict:
    def m(a: float, d: float, lights: float = cue) -> dict:
        return {"event_accuracy": a, "event_macro_f1": a, "audio_tag_map": 0.9, "detection_map50": d,
                "siren_cue_accuracy": cue, "lights_cue_accuracy": lights}

    return {"model_name": model, "params": 1000, "flops": flops, "both": m(acc, det),
            "audio_missing": m(audio_missing, det, lights_cue_audio_missing), "video_missing": m(video_missing, 0.0)}


def _report(test: dict) -> dict:
    cfg = {"train_samples": 2000, "val_samples": 300, "test_samples": 400, "seed": 0, "epochs": 10,
           "few_label_fraction": 0.1, "few_label_epochs": 30}
    r = {"config": cfg, "test": test, "pretrain": None, "train_seconds": {}, "tables": {}, "checks": {}}
    fill_tables(r, {})
    return r


def test_tables_compute_gaps_ratios_and_verdicts():
    r = _report({
        "fusion": _res("fusion_student", 0.95, det=0.70, flops=0.3e9, audio_missing=0.49, video_missing=0.51),
        "vision_only": _res("vision_only_student", 0.50), "audio_only": _res("audio_only_student", 0.52),
        "teacher": _res("fusion_teacher", 0.98, det=0.80, flops=2.0e9),
        "distilled": _res("fusion_student", 0.96, det=0.74, flops=0.3e9),
        "few_scratch": _res("fusion_student", 0.60), "few_pretrained": _res("fusion_student", 0.64),
    })
    c = r["checks"]
    assert c["fusion_gap"]["points"] == pytest.approx(43.0) and c["fusion_gap"]["pass"]
    # 0.96/0.98 = 98.0% ≥ 97%, but 0.74/0.80 = 92.5% < 95%: a miss, reported as one
    assert c["distillation"]["accuracy_ratio"] == pytest.approx(0.96 / 0.98, abs=1e-4)
    assert c["distillation"]["map_ratio"] == pytest.approx(0.925, abs=1e-4)
    assert c["distillation"]["flops_ratio"] == pytest.approx(0.15)
    assert c["distillation"]["pass"] is False
    assert c["distillation"]["gain_over_scratch_points"]["detection_map50"] == pytest.approx(4.0)
    assert c["pretraining"]["points"] == pytest.approx(4.0) and c["pretraining"]["pass"] is False
    assert c["pretraining"]["per_seed_points"] == [pytest.approx(4.0)]
    # audio missing: 0.49 vs vision-only 0.50 is within the 1-point rule; video missing 0.51 vs 0.52 too
    assert [m["pass"] for m in r["tables"]["missing_sensor"]] == [True, True]
    md = render_markdown(r)
    for heading in ("## Fusion matters", "## Missing sensor", "## Distillation", "## Self-supervised pretraining"):
        assert heading in md
    assert "43.0 points" in md and "**MISS**" in md and "92.5%" in md


def test_missing_sensor_rule_judges_the_remaining_cue():
    # event accuracy 0.47 vs 0.50 is sampling noise when both read the cue perfectly: a pass
    r = _report({"fusion": _res("fusion_student", 0.99, video_missing=0.47),
                 "vision_only": _res("vision_only_student", 0.50), "audio_only": _res("audio_only_student", 0.50)})
    assert [m["pass"] for m in r["tables"]["missing_sensor"]] == [True, True]
    # without audio the fused model no longer reads the lights (cue 0.7 vs 1.0): a miss
    r = _report({"fusion": _res("fusion_student", 0.99, audio_missing=0.40, lights_cue_audio_missing=0.7),
                 "vision_only": _res("vision_only_student", 0.50), "audio_only": _res("audio_only_student", 0.50)})
    assert r["tables"]["missing_sensor"][0]["pass"] is False
    assert r["checks"]["missing_sensor"]["pass"] is False
    assert "remaining cue" in render_markdown(r)


def test_few_label_gain_is_the_mean_over_seeds():
    # seed 0 gains 8 points, seed 1 loses 2, seed 2 gains 3: the mean (+3) decides, not the lucky seed
    r = _report({"few_scratch": _res("fusion_student", 0.80), "few_pretrained": _res("fusion_student", 0.88),
                 "few_scratch_seed1": _res("fusion_student", 0.85), "few_pretrained_seed1": _res("fusion_student", 0.83),
                 "few_scratch_seed2": _res("fusion_student", 0.82), "few_pretrained_seed2": _res("fusion_student", 0.85)})
    ch = r["checks"]["pretraining"]
    assert ch["per_seed_points"] == [pytest.approx(8.0), pytest.approx(-2.0), pytest.approx(3.0)]
    assert ch["points"] == pytest.approx(3.0) and ch["pass"] is False
    means = [row for row in r["tables"]["pretraining"] if row["seed_offset"] == "mean"]
    assert [m["event_accuracy"] for m in means] == [pytest.approx(0.8233, abs=1e-3), pytest.approx(0.8533, abs=1e-3)]
    assert "per seed: +8.0, -2.0, +3.0" in render_markdown(r)
    # the cue table: means over the seeds; the lights-OFF-vehicle column is "—" where it was not measured
    r["test"]["few_pretrained"]["both"]["lights_cue_accuracy_decoy"] = 0.6
    r["test"]["few_pretrained_seed1"]["both"]["lights_cue_accuracy_decoy"] = 0.8
    r["test"]["few_pretrained_seed2"]["both"]["lights_cue_accuracy_decoy"] = float("nan")
    r["test"]["few_scratch"]["both"]["lights_cue_accuracy"] = 0.7
    fill_tables(r, {})
    cues = {row["init"]: row for row in r["tables"]["pretraining_cues"]}
    assert cues["self-supervised pretraining"]["lights_cue_accuracy_decoy"] == pytest.approx(0.7)
    assert cues["random"]["lights_cue_accuracy_decoy"] is None
    assert cues["random"]["lights_cue_accuracy"] == pytest.approx(0.9)
    assert "| random | 1.000 | 0.900 | — |" in render_markdown(r)


def test_lights_cue_on_the_lights_off_vehicle_clips(tmp_path):
    from fusionedge.sdk.datamanifest import read_manifest
    from fusionedge.sdk.spec import EVENTS, InputGeometry
    from fusionedge.training.dataset import Labels, load_clips
    from fusionedge.training.report import _cue_accuracy, _decoy_ids
    from fusionedge.training.synth.generate import generate_dataset

    generate_dataset(tmp_path, 24, seed=3, workers=1, progress=False)
    samples = read_manifest(tmp_path)
    records = {s.id: s.meta["synth"] for s in samples}
    decoys = _decoy_ids(samples)
    assert decoys == {i for i, r in records.items() if r["lights_off_ev"] and not r["lights_on_ev"]}
    assert 0 < len(decoys) < len(samples)  # this seed has some, and not every clip is one
    clips = load_clips(samples, InputGeometry(), Labels(), workers=1, progress=False)

    def always(event: str):  # a "model" that predicts one event for every clip
        def net(video, audio, presence):
            logits = torch.zeros(len(video), len(EVENTS))
            logits[:, EVENTS.index(event)] = 1.0
            return (logits,)
        net.training, net.eval, net.train = False, lambda: None, lambda mode=True: None
        return net

    lit = sum(r["lights_on_ev"] for r in records.values()) / len(records)
    says_lit = _cue_accuracy(always("lights_no_siren"), clips, decoys)  # "an emergency vehicle is there"
    assert says_lit["lights_cue_accuracy"] == pytest.approx(lit) and says_lit["lights_cue_accuracy_decoy"] == 0.0
    says_none = _cue_accuracy(always("none"), clips, decoys)
    assert says_none["lights_cue_accuracy"] == pytest.approx(1 - lit) and says_none["lights_cue_accuracy_decoy"] == 1.0
    assert math.isnan(_cue_accuracy(always("none"), clips)["lights_cue_accuracy_decoy"])  # none given


def test_each_pretraining_is_listed_with_the_epoch_it_kept():

    def best(epoch, view):
        return {"epoch": epoch, "a2v_top1": 0.01, "a2v_top5": 0.03, "shift_discrimination": 0.5, "view_top1": view,
                "still_discrimination": 0.8}

    chance = {"a2v_top1": 1 / 300, "a2v_top5": 5 / 300, "shift_discrimination": 1 / 3, "view_top1": 1 / 300,
              "still_discrimination": 0.5}
    history = {"few_scratch": {"history": []}, "pretrain": {"best": best(8, 0.873), "chance": chance, "seconds": 580},
               "pretrain_seed1": {"best": best(7, 0.851), "chance": chance, "seconds": 590}}
    summary = pretrain_summary(history)
    assert [(r["run"], r["seed_offset"], r["best"]["epoch"]) for r in summary["runs"]] == [("pretrain", 0, 8),
                                                                                        ("pretrain_seed1", 1, 7)]
    assert pretrain_summary({"few_scratch": {"history": []}}) is None
    r = _report({"few_scratch": _res("fusion_student", 0.60), "few_pretrained": _res("fusion_student", 0.64)})
    r["pretrain"] = summary
    md = render_markdown(r)
    assert "| 0 | 8 | 0.010 | 0.030 | 0.500 | 0.873 | 0.800 |" in md and "| 1 | 7 |" in md
    assert "| chance | — | 0.003 | 0.017 | 0.333 | 0.003 | 0.500 |" in md


def test_a_pretraining_selected_under_another_rule_is_made_again(tmp_path):
    from fusionedge.training.report import _selected_as_now

    rows = ((1, 0.01, 5.2, 0.5), (2, 0.03, 5.3, 0.6), (3, 0.02, 5.1, 0.8), (4, 0.02, 5.0, 0.8))
    history = [{"epoch": e, "val": {"loss": loss, "a2v_top1": a2v, "view_top1": view}} for e, a2v, loss, view in rows]
    for best, now in ((4, True), (3, False), (2, False)):  # the rule: view top-1, then the lower loss
        (tmp_path / "metrics.json").write_text(json.dumps({"history": history, "best": {"epoch": best}}))
        assert _selected_as_now(tmp_path) is now
    for h in history:  # without the view term: audio→video top-1, then the lower loss
        del h["val"]["view_top1"]
    for best, now in ((2, True), (4, False)):
        (tmp_path / "metrics.json").write_text(json.dumps({"history": history, "best": {"epoch": best}}))
        assert _selected_as_now(tmp_path) is now


def test_config_rejects_unknown_experiment_and_bad_fraction(tmp_path):
    with pytest.raises(FusionEdgeError, match="unknown experiment"):
        ReportConfig(workdir=tmp_path, only=("fusion", "nope"))
    with pytest.raises(FusionEdgeError, match="few_label_fraction"):
        ReportConfig(workdir=tmp_path, few_label_fraction=0.0)
    with pytest.raises(FusionEdgeError, match="few_label_seeds"):
        ReportConfig(workdir=tmp_path, few_label_seeds=0)


@pytest.mark.slow
def test_tiny_report_end_to_end_and_reuse(tmp_path):
    cfg = ReportConfig(workdir=tmp_path, train_samples=24, val_samples=8, test_samples=12, epochs=1,
                       teacher_epochs=1, pretrain_epochs=1, few_label_fraction=0.5, few_label_epochs=3,
                       few_label_seeds=2, few_label_frozen_share=1 / 3, batch_size=8, progress=False,
                       only=("fusion", "vision_only", "audio_only", "distilled", "few_scratch", "few_pretrained"))
    report = run_report(cfg)
    out = tmp_path / "report"
    saved = json.loads((out / "report.json").read_text())
    # the dependencies were added: the teacher for the distilled student, pretraining for the fine-tuning
    assert set(saved["test"]) == {"fusion", "vision_only", "audio_only", "teacher", "distilled", "few_scratch",
                                  "few_scratch_seed1", "few_pretrained", "few_pretrained_seed1"}
    # one pretraining per few-label seed, and fine-tuning seed k starts from pretraining seed k
    pre = saved["pretrain"]["runs"]
    assert [r["run"] for r in pre] == ["pretrain", "pretrain_seed1"]
    assert all(r["best"]["view_top1"] is not None and r["best"]["still_discrimination"] is not None for r in pre)
    saved_pretrain = [json.loads((tmp_path / "runs" / r["run"] / "config.json").read_text())["pretrain"] for r in pre]
    assert [s["seed"] for s in saved_pretrain] == [0, 1]
    assert all(s["view_weight"] == 1.0 and s["view_still"] is True for s in saved_pretrain)
    inits = [json.loads((tmp_path / "runs" / n / "config.json").read_text())["train"]["init"]
             for n in ("few_pretrained", "few_pretrained_seed1")]
    assert inits == [str(tmp_path / "runs" / n / "pretrain.pt") for n in ("pretrain", "pretrain_seed1")]
    md = (out / "report.md").read_text()
    assert "| 1 | 1 |" in md and "| chance |" in md  # the table of the pretrainings: seed +1 kept epoch 1
    # the second few-label pair ran with the next seed, and the check averages the two pairs' gains
    seeds = [json.loads((tmp_path / "runs" / n / "config.json").read_text())["train"]["seed"]
             for n in ("few_scratch", "few_scratch_seed1", "few_pretrained_seed1")]
    assert seeds == [0, 1, 1]
    frozen = [json.loads((tmp_path / "runs" / n / "config.json").read_text())["train"]["frozen_encoder_epochs"]
              for n in ("few_scratch", "few_pretrained", "few_pretrained_seed1")]
    assert frozen == [0, 1, 1]  # a third of the 3 fine-tuning epochs, and only when starting from pretraining
    ch = saved["checks"]["pretraining"]
    assert len(ch["per_seed_points"]) == 2 and ch["points"] == pytest.approx(sum(ch["per_seed_points"]) / 2, abs=0.06)
    for name in ("fusion", "teacher"):
        r = saved["test"][name]
        assert r["flops"] > 0 and r["params"] > 0
        # with the video missing nothing can be detected: the detection metric collapses
        assert (r["video_missing"]["detection_map50"] or 0.0) <= (r["both"]["detection_map50"] or 0.0)
    assert saved["checks"]["distillation"]["flops_ratio"] < 0.5
    for png in ("fusion.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Distillation" in (out / "report.md").read_text()
    assert report["tables"]["fusion"]

    # a second call reuses every finished run (checkpoints untouched) and the cached test metrics
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/*.pt")}
    assert main(["report", "--workdir", str(tmp_path), "--train-samples", "24", "--val-samples", "8",
                 "--test-samples", "12", "--epochs", "1", "--teacher-epochs", "1", "--pretrain-epochs", "1",
                 "--few-label-fraction", "0.5", "--few-label-epochs", "1", "--batch-size", "8", "--only", "fusion,vision_only",
                 "--json"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_finished_run_is_reused_only_while_its_registered_model_is_unchanged(tmp_path):
    """Reuse compares the built architecture too: redefining a registered model retrains its runs."""
    from fusionedge.training.report import _finished, _model_config
    from fusionedge.training.train import TrainConfig

    opts = dict(data=tmp_path / "train", out=tmp_path / "run", model="fusion_student", epochs=3, progress=False)
    built = _model_config(TrainConfig(**opts))
    assert built["fusion"] == "aligned_attention" and isinstance(built["video_channels"], list)
    run = tmp_path / "run"
    run.mkdir()
    saved = {"train": {"data": str(tmp_path / "train"), "out": str(run), "model": "fusion_student", "epochs": 3}}
    (run / "metrics.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({**saved, "model_config": built}))
    assert _finished(run, opts, "train", built)
    assert not _finished(run, {**opts, "epochs": 4}, "train", built)  # other options
    older = {**built, "fusion": "cross_attention"}  # the same name, registered differently when it ran
    (run / "config.json").write_text(json.dumps({**saved, "model_config": older}))
    assert not _finished(run, opts, "train", built)
    (run / "metrics.json").unlink()
    assert not _finished(run, opts, "train", older)  # an unfinished run is never reused


def test_a_run_started_from_a_checkpoint_is_stale_once_that_checkpoint_is_newer(tmp_path):
    """Retraining the pretraining (or the teacher) retrains what was fine-tuned (or distilled) from it,
    although the dependent run's options, a path to the checkpoint, did not change."""
    import os

    from fusionedge.training.report import _finished, _model_config
    from fusionedge.training.train import TrainConfig

    source = tmp_path / "pretrain" / "pretrain.pt"
    source.parent.mkdir()
    source.write_bytes(b"weights")
    run = tmp_path / "few"
    run.mkdir()
    base = dict(data=tmp_path / "train", out=run, model="fusion_student", epochs=3, progress=False)
    built = _model_config(TrainConfig(**base))
    for key in ("init", "teacher"):  # fine-tuned from a pretraining, distilled from a teacher
        opts = {**base, key: source}
        saved = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in opts.items() if k != "progress"}
        (run / "config.json").write_text(json.dumps({"train": saved, "model_config": built}))
        (run / "metrics.json").write_text("{}")
        finished = (run / "metrics.json").stat().st_mtime_ns
        os.utime(source, ns=(finished - 10**9, finished - 10**9))  # trained before the run that used it
        assert _finished(run, opts, "train", built), key
        os.utime(source, ns=(finished + 10**9, finished + 10**9))  # retrained since
        assert not _finished(run, opts, "train", built), key
    os.utime(source, ns=(finished - 10**9, finished - 10**9))
    assert _finished(run, opts, "train", built)
    source.unlink()
    assert not _finished(run, opts, "train", built)  # and a run whose checkpoint is gone is not trusted


def test_every_experiment_is_known_to_the_cli_help(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "--workdir" in capsys.readouterr().out
    assert len(EXPERIMENTS) == len(set(EXPERIMENTS))


def test_an_unreadable_test_metrics_cache_is_measured_again(tmp_path):
    # a truncated test_eval.json (a report killed while writing it) once stopped the report with a
    # JSONDecodeError; now it is measured again and rewritten whole
    from fusionedge.sdk.datamanifest import read_manifest
    from fusionedge.sdk.spec import InputGeometry
    from fusionedge.training.checkpoint import save_checkpoint
    from fusionedge.training.dataset import Labels, load_clips
    from fusionedge.training.models import create_model
    from fusionedge.training.report import _evaluate
    from fusionedge.training.synth.generate import generate_dataset

    generate_dataset(tmp_path / "data", 4, seed=5, workers=1, progress=False)
    clips = load_clips(read_manifest(tmp_path / "data"), InputGeometry(), Labels(), workers=1, progress=False)
    torch.manual_seed(0)
    model = create_model("fusion_student", video_channels=(8, 8, 16, 16), audio_channels=(8, 8, 16), audio_dim=16,
                         fusion_dim=16, fusion_heads=2, head_hidden=16, det_channels=8)
    ckpt = save_checkpoint(tmp_path / "best.pt", model, model_name="fusion_student",
                           model_config=model.config.to_dict(), geometry=InputGeometry(),
                           labels=Labels().to_dict(), metrics={}, epoch=1)
    cache = tmp_path / "test_eval.json"
    cache.write_text('{"version": 3, "checkpoint_mtime_ns": ')
    result = _evaluate(ckpt, clips, cache)
    assert result["samples"] == 4 and set(result) >= {"both", "audio_missing", "video_missing"}
    assert json.loads(cache.read_text()) == json.loads(json.dumps(result))
