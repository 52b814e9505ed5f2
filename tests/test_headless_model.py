"""A task without events, audio tags or boxes has no such head: no output, no loss term, no metric."""

from __future__ import annotations

import json

import pytest
import torch
from fusionedge.sdk.errors import DataError
from fusionedge.sdk.spec import InputGeometry, fusion_output_names
from fusionedge.training.losses import multitask_terms, output_groups
from fusionedge.training.models import ModelConfigError, create_model
from fusionedge.training.task_labels import collect_labels, read_labels_file

TINY = dict(video_channels=(8, 8, 8, 8), video_depth=0, audio_channels=(8, 8, 8), audio_depth=0, audio_dim=8,
            fusion_dim=8, fusion_heads=2, head_hidden=8, det_channels=8, height=32, width=48, clip_frames=2,
            audio_samples=4000, sample_rate=8000, f_max=4000.0, n_mels=16)


def _batch(model) -> dict:
    c = model.config
    b, h, w = 2, c.height // 4, c.width // 4
    return {"video": torch.randn(b, c.clip_frames, 3, c.height, c.width),
            "audio": torch.rand(b, c.audio_samples) - 0.5, "presence": torch.ones(b, 2),
            "event": torch.zeros(b, dtype=torch.long), "audio_tags": torch.zeros(b, max(1, c.num_audio_tags)),
            "heatmap": torch.zeros(b, max(1, c.num_objects), h, w), "size": torch.ones(b, 2, h, w),
            "offset": torch.zeros(b, 2, h, w), "mask": torch.zeros(b, h, w)}


@pytest.mark.parametrize("counts, names", [
    ({"num_audio_tags": 0}, ("event_logits", "det_heatmap", "det_size", "det_offset")),
    ({"num_objects": 0}, ("event_logits", "audio_tag_logits")),
    ({"num_events": 0}, ("audio_tag_logits", "det_heatmap", "det_size", "det_offset")),
    ({"num_events": 0, "num_objects": 0}, ("audio_tag_logits",)),
])
def test_a_missing_head_has_no_output_no_weights_and_no_loss_term(counts, names):
    torch.manual_seed(0)
    model = create_model("fusion_student", **TINY, **counts).eval()
    assert model.output_names == names
    out = model(*(_batch(model)[k] for k in ("video", "audio", "presence")))
    assert len(out) == len(names)
    keys = model.state_dict().keys()
    if counts.get("num_events") == 0:  # the fusion feeds only the event head: neither is built
        assert not any(k.startswith(("event_head.", "fusion.")) for k in keys)
    if counts.get("num_audio_tags") == 0:
        assert not any(k.startswith("audio_tag_head.") for k in keys)
    if counts.get("num_objects") == 0:
        assert not any(k.startswith("det_head.") for k in keys)
    terms = multitask_terms(dict(zip(names, out, strict=True)), _batch(model))
    want = {"event_logits": {"event"}, "audio_tag_logits": {"audio_tags"},
            "det_heatmap": {"heatmap", "size", "offset"}}
    assert set(terms) == set().union(*(want.get(n, set()) for n in names))
    assert len(output_groups(names)) == len({n for n in names if n in want})


def test_all_heads_is_the_contract_and_no_head_at_all_is_refused():
    assert create_model("fusion_student", **TINY).output_names == fusion_output_names(
        {"events": ["a"], "audio_tags": ["b"], "objects": ["c"]})
    with pytest.raises(ModelConfigError, match="at least one head"):
        create_model("fusion_student", **TINY, num_events=0, num_audio_tags=0, num_objects=0)


def test_labels_file_with_an_empty_vocabulary_means_no_such_head(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"events": ["calm", "busy"], "audio_tags": [], "objects": ["cat"]}))
    labels = read_labels_file(path)
    assert labels.audio_tags == () and fusion_output_names(labels.to_dict()) == (
        "event_logits", "det_heatmap", "det_size", "det_offset")
    path.write_text(json.dumps({"events": [], "audio_tags": [], "objects": []}))
    with pytest.raises(DataError, match="every vocabulary is empty"):
        read_labels_file(path)


def test_labels_collected_from_a_manifest_without_boxes_have_no_objects():
    from fusionedge.sdk.datamanifest import Sample

    samples = [Sample(id="a", video=None, audio=None, event="calm", audio_tags=("purr",)),
               Sample(id="b", video=None, audio=None, event="busy")]
    labels = collect_labels(samples, "manifest.jsonl")
    assert labels.events == ("busy", "calm") and labels.audio_tags == ("purr",) and labels.objects == ()


def test_the_geometry_names_what_no_model_can_take():
    assert InputGeometry().problems() == []
    problems = InputGeometry(clip_frames=0, output_stride=4).problems()
    assert problems == ["clip_frames=0 (need an integer >= 1)"]
    assert "divisible by output_stride=4" in InputGeometry(width=162).problems()[0]
    assert "clip_seconds" in InputGeometry(clip_seconds=float("nan")).problems()[0]


def test_a_box_in_a_task_without_object_classes_is_one_line_naming_it(tmp_path):
    from fusionedge.sdk.datamanifest import read_manifest

    row = {"id": "a", "video": "a.mp4", "event": "calm", "boxes": [{"label": "cat", "box": [1, 2, 3, 4]}]}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"jsonl:1.*'cat' is not one of nothing \(the vocabulary is empty"):
        read_manifest(tmp_path, check_files=False, events=("calm",), audio_tags=(), objects=())


def test_distilling_between_tasks_with_different_heads_is_refused_naming_the_head(tmp_path):
    from fusionedge.training.checkpoint import CheckpointError, save_checkpoint
    from fusionedge.training.dataset import Labels
    from fusionedge.training.distill import load_teacher

    geometry = InputGeometry(clip_frames=2, height=32, width=48, clip_seconds=0.5, sample_rate=8000)
    labels = {"events": ["calm", "busy"], "audio_tags": ["purr"], "objects": ["cat"]}
    teacher = create_model("fusion_student", **TINY, num_events=2, num_audio_tags=1, num_objects=1)
    path = save_checkpoint(tmp_path / "teacher.pt", teacher, model_name="fusion_student",
                           model_config=teacher.config.to_dict(), geometry=geometry, labels=labels,
                           metrics={}, epoch=1)
    student_labels = Labels(events=("calm", "busy"), audio_tags=(), objects=("cat",))
    with pytest.raises(CheckpointError, match="the teacher has an audio-tag head the student lacks"):
        load_teacher(path, geometry=geometry, labels=student_labels)
