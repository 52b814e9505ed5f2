"""Training on the user's own task: vocabularies no one here designed, through the real command line.

The task is made in the test by rewriting a small synthetic data set's labels: two events merged and
the others renamed (3 events), the audio tags renamed and one added (5 tags), two object classes
merged, one renamed and one dropped (2 classes). A tiny model is trained on it, exported, evaluated
and run, and every step must speak the new vocabularies. The vocabularies also come from a
``labels.json`` beside the manifest or ``--labels FILE``, and a label the file lacks is one line,
exit status 2 and no run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fusionedge.cli.main import main

TINY_SET = ["--set", "video_channels=[8,8,16,16]", "--set", "video_depth=0", "--set", "audio_channels=[8,8,16]",
            "--set", "audio_depth=0", "--set", "audio_dim=16", "--set", "fusion_dim=16", "--set", "fusion_heads=2",
            "--set", "head_hidden=16", "--set", "det_channels=8"]

EVENT_MAP = {"none": "quiet", "emergency_ahead": "emergency", "emergency_behind": "emergency",
             "lights_no_siren": "lights"}
TAG_MAP = {"siren": "wail", "horn": "glass_break", "speech": "voice", "engine": "motor"}
OBJECT_MAP = {"car": "vehicle", "emergency_vehicle": "vehicle", "pedestrian": "cyclist"}  # traffic_light dropped
OWN = {"events": ["emergency", "lights", "quiet"], "audio_tags": ["dog_bark", "glass_break", "motor", "voice", "wail"],
       "objects": ["cyclist", "vehicle"]}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _own_task(src: Path, dst: Path) -> Path:
    """Copy a synthetic manifest with its labels rewritten into the own task (media shared by path)."""
    dst.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, raw in enumerate((src / "manifest.jsonl").read_text().splitlines()):
        rec = json.loads(raw)
        rec["video"] = str(src / rec["video"])
        if rec.get("audio"):
            rec["audio"] = str(src / rec["audio"])
        rec["event"] = EVENT_MAP[rec["event"]]
        tags = [TAG_MAP[t] for t in rec.get("audio_tags", [])]
        if rec.get("audio") and k % 3 == 0:
            tags.append("dog_bark")
        rec["audio_tags"] = tags
        rec["boxes"] = [{"label": OBJECT_MAP[b["label"]], "box": b["box"]}
                        for b in rec.get("boxes", []) if b["label"] in OBJECT_MAP]
        lines.append(json.dumps(rec))
    (dst / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return dst


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own_synth")
    train, test = root / "train", root / "test"
    assert main(["data", "synth", "--out", str(train), "--samples", "24", "--seed", "0", "--json"]) == 0
    assert main(["data", "synth", "--out", str(test), "--samples", "8", "--seed", "7", "--json"]) == 0
    return {"train": train, "test": test}


@pytest.fixture(scope="module")
def own(synth, tmp_path_factory) -> dict[str, Path]:
    """The own task trained for one epoch on a tiny model and exported, all through the CLI."""
    root = tmp_path_factory.mktemp("own_task")
    train, test = _own_task(synth["train"], root / "train"), _own_task(synth["test"], root / "test")
    run, bundle = root / "run", root / "bundle"
    assert main(["train", "--data", str(train), "--val", str(test), "--out", str(run), "--epochs", "1",
                 "--batch-size", "8", *TINY_SET, "--json"]) == 0
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(bundle), "--json"]) == 0
    return {"train": train, "test": test, "run": run, "bundle": bundle}


def test_vocabularies_collected_from_the_manifest_reach_checkpoint_and_metrics(own):
    from fusionedge.training.checkpoint import load_checkpoint

    config = json.loads((own["run"] / "config.json").read_text())
    assert config["labels"] == OWN  # sorted: the same data always gives the same class indices
    mc = config["model_config"]
    assert (mc["num_events"], mc["num_audio_tags"], mc["num_objects"]) == (3, 5, 2)
    model, info = load_checkpoint(own["run"] / "best.pt")
    assert info["labels"] == OWN
    assert model.event_head.mlp[-1].out_features == 3
    metrics = json.loads((own["run"] / "metrics.json").read_text())
    assert metrics["labels"]["source"] == "manifest"
    counts = metrics["labels"]["counts"]
    assert set(counts["train"]["objects"]) == {"cyclist", "vehicle"}
    assert counts["train"]["audio_tags"]["dog_bark"] > 0
    records = [json.loads(x) for x in (own["train"] / "manifest.jsonl").read_text().splitlines()]
    assert counts["train"]["events"]["emergency"] == sum(r["event"] == "emergency" for r in records)
    assert sum(counts["val"]["events"].values()) == 8


def test_bundle_eval_and_predict_speak_the_new_vocabularies(own, capsys):
    manifest = json.loads((own["bundle"] / "manifest.json").read_text())
    assert {k: list(v) for k, v in manifest["labels"].items()} == OWN
    code, out, _ = run_cli(capsys, "eval", "--bundle", own["bundle"], "--data", own["test"], "--json")
    assert code == 0
    m = json.loads(out)
    assert m["samples"] == 8 and 0.0 <= m["event_accuracy"] <= 1.0
    assert set(m["per_class_accuracy"]) <= set(OWN["events"]) and m["per_class_accuracy"]
    s = json.loads((own["test"] / "manifest.jsonl").read_text().splitlines()[0])
    code, out, _ = run_cli(capsys, "predict", "--bundle", own["bundle"], "--video", s["video"],
                           "--audio", s["audio"], "--json")
    assert code == 0
    r = json.loads(out)
    assert set(r["scores"]) == set(OWN["events"]) and r["event"] in OWN["events"]
    assert set(r["audio_tags"]) == set(OWN["audio_tags"])
    assert all(b["label"] in OWN["objects"] for b in r["boxes"])


def test_the_generator_manifest_against_the_own_bundle_names_file_line_and_label(own, synth, capsys):
    code, _, err = run_cli(capsys, "eval", "--bundle", own["bundle"], "--data", synth["test"])
    assert code == 2
    first = json.loads((synth["test"] / "manifest.jsonl").read_text().splitlines()[0])["event"]
    line = err.strip()
    assert "\n" not in line and "manifest.jsonl:1" in line and repr(first) in line


def test_labels_json_beside_the_manifest_fixes_the_order(synth, tmp_path, capsys):
    data = _own_task(synth["train"], tmp_path / "data")
    order = {"events": ["quiet", "lights", "emergency", "unseen_event"], "audio_tags": OWN["audio_tags"][::-1],
             "objects": ["vehicle", "cyclist"]}
    (data / "labels.json").write_text(json.dumps(order))
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", data, "--out", run, "--epochs", "1", "--batch-size", "8",
                           *TINY_SET)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["labels"] == order
    assert "labels from labels.json" in err and "unseen_event 0/0" in err
    assert json.loads((run / "metrics.json").read_text())["labels"]["source"] == "labels.json"


def test_labels_file_option_wins_and_a_label_it_lacks_is_one_line_and_no_run(synth, tmp_path, capsys):
    data = _own_task(synth["train"], tmp_path / "data")
    (data / "labels.json").write_text(json.dumps(OWN))
    lacking = {**OWN, "objects": ["vehicle"]}  # the manifest also has cyclist boxes
    labels = tmp_path / "lacking.json"
    labels.write_text(json.dumps(lacking))
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data", data, "--out", run, "--labels", labels, "--epochs", "1",
                             *TINY_SET)
    assert code == 2 and out == ""
    line = err.strip()
    assert "\n" not in line and "manifest.jsonl:" in line and "'cyclist'" in line
    assert not run.exists()


def test_a_bad_labels_file_is_refused_before_anything_runs(synth, tmp_path, capsys):
    labels = tmp_path / "labels.json"
    for doc, words in (({"events": ["a"], "audio_tags": ["b"]}, "'objects'"),
                       ({**OWN, "events": ["a", "a"]}, "more than once"),
                       ({**OWN, "colours": ["red"]}, "'colours'"),
                       ([1, 2], "JSON object")):
        labels.write_text(json.dumps(doc))
        code, _, err = run_cli(capsys, "train", "--data", synth["train"], "--out", tmp_path / "run",
                               "--labels", labels)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()


def test_a_validation_label_outside_the_training_vocabulary_names_file_line_and_label(synth, tmp_path, capsys):
    train = _own_task(synth["train"], tmp_path / "train")
    val = _own_task(synth["test"], tmp_path / "val")
    lines = (val / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    rec["event"] = "stampede"
    lines[2] = json.dumps(rec)
    (val / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "train", "--data", train, "--val", val, "--out", tmp_path / "run", *TINY_SET)
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "manifest.jsonl:3" in line and "'stampede'" in line
    assert not (tmp_path / "run").exists()


def test_a_task_without_any_box_trains_without_a_detection_head(synth, tmp_path, capsys):
    data = _own_task(synth["train"], tmp_path / "data")
    records = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines()]
    (data / "manifest.jsonl").write_text("".join(json.dumps({**r, "boxes": []}) + "\n" for r in records))
    code, _, err = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run", "--epochs", "1",
                           "--batch-size", "8", "--max-train-samples", "8", *TINY_SET, "--json")
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["labels"]["objects"] == [] and config["model_config"]["num_objects"] == 0
    best = json.loads((tmp_path / "run" / "metrics.json").read_text())["best"]
    assert "detection_map50" not in best and "event_accuracy" in best and "audio_tag_map" in best


def test_a_task_without_any_label_says_what_to_do(synth, tmp_path, capsys):
    data = _own_task(synth["train"], tmp_path / "data")
    records = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines()]
    bare = [{k: v for k, v in r.items() if k not in ("event", "audio_tags", "boxes")} for r in records]
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bare))
    code, _, err = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *TINY_SET)
    assert code == 2 and "no sample has any" in err and "labels.json" in err
    assert not (tmp_path / "run").exists()


def test_distill_a_student_from_an_own_task_teacher(own, tmp_path, capsys):
    run = tmp_path / "student"
    code, _, err = run_cli(capsys, "distill", "--teacher", own["run"] / "best.pt", "--data", own["train"],
                           "--val", own["test"], "--out", run, "--epochs", "1", "--batch-size", "8", *TINY_SET,
                           "--json")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["labels"] == OWN
    assert json.loads((run / "metrics.json").read_text())["distillation"]


def test_quantize_calibrates_on_the_own_task_data(own, tmp_path, capsys):
    """Calibration needs no labels: the own task's data calibrates its bundle (it was refused
    for labels outside the generator's vocabularies)."""
    out = tmp_path / "int8"
    code, _, err = run_cli(capsys, "quantize", "--bundle", own["bundle"], "--out", out, "--data", own["test"],
                           "--calibration-samples", "4", "--json")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: list(v) for k, v in manifest["labels"].items()} == OWN


def test_pretraining_reads_no_label_so_the_own_task_data_pretrains(own, tmp_path, capsys):
    """Pretraining ignores labels: the own task's manifest pretrains (it was refused for labels
    outside the generator's vocabularies) and its encoders start an own-task run."""
    pre = tmp_path / "pre"
    code, _, err = run_cli(capsys, "pretrain", "--data", own["train"], "--val", own["test"], "--out", pre,
                           "--epochs", "1", "--batch-size", "8", *TINY_SET, "--json")
    assert code == 0, err
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", own["train"], "--val", own["test"], "--out", run,
                           "--init", pre / "pretrain.pt", "--epochs", "1", "--batch-size", "8", *TINY_SET, "--json")
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["init"]["kind"] == "pretrain" and json.loads((run / "config.json").read_text())["labels"] == OWN
