"""The precision gate: sensitivity ranking, budget acceptance recorded in the manifest, typed refusal."""

from __future__ import annotations

import json

import onnx
import pytest

from _precision_fixtures import student_bundle, synth_data
from fusionedge.export.onnx_export import ExportError
from fusionedge.export.precision_gate import Budget, PrecisionBudgetError, _schedule, gate_bundle, layer_sensitivity
from fusionedge.export.quantize import QuantizeConfig, load_calibration_feeds, weight_nodes
from fusionedge.sdk.bundle import load_bundle
from fusionedge.sdk.perception import Perception


def test_schedule_and_budget_validation():
    assert _schedule(10, None) == [0, 1, 2, 4, 8, 10]
    assert _schedule(10, 3) == [0, 1, 2]
    assert _schedule(0, None) == [0]
    with pytest.raises(ExportError, match="budget.event_accuracy"):
        Budget(event_accuracy=1.5)


def test_sensitivity_ranks_every_weight_node(tmp_path_factory):
    fp32 = student_bundle(tmp_path_factory)
    feeds = load_calibration_feeds(load_bundle(fp32), synth_data(tmp_path_factory), limit=8)
    ranked = layer_sensitivity(fp32 / "model.onnx", feeds, QuantizeConfig())
    names = [n for n, _ in ranked]
    assert sorted(names) == sorted(weight_nodes(onnx.load(str(fp32 / "model.onnx"))))
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0  # quantizing the worst layer adds measurable error


@pytest.mark.slow
def test_gate_accepts_within_budget_and_records_it(tmp_path_factory):
    fp32, data = student_bundle(tmp_path_factory), synth_data(tmp_path_factory)
    out, report = gate_bundle(fp32, tmp_path_factory.mktemp("gate") / "int8", data, data,
                              budget=Budget(1.0, 1.0), calibration_limit=8, progress=False)
    gate = load_bundle(out).manifest["variant"]["gate"]
    assert report.chosen is not None and report.chosen.keep_float == []
    assert gate["drop"] == report.chosen.drop and gate["budget"] == {"event_accuracy": 1.0, "detection_map50": 1.0}
    assert set(gate["baseline"]) == {"event_accuracy", "detection_map50"}
    with Perception.load(out) as p:
        assert p.bundle.precision == "int8"


@pytest.mark.slow
def _relabelled_by(bundle, data, out):
    """``data`` with every event label replaced by ``bundle``'s own prediction (its accuracy is then 1.0)."""
    import numpy as np

    from fusionedge.sdk.datamanifest import manifest_path, read_manifest
    from fusionedge.sdk.evaluate import load_sample_inputs

    src = manifest_path(data)
    samples = {s.id: s for s in read_manifest(src)}
    out.mkdir(parents=True)
    lines = []
    with Perception.load(bundle, backends=["onnxruntime"]) as p:
        for line in src.read_text().splitlines():
            rec = json.loads(line)
            v, a, pres, _ = load_sample_inputs(samples[rec["id"]], p.geometry)
            logits = p.infer_batch(v[None], a[None], pres[None])["event_logits"][0]
            rec["event"] = p.labels["events"][int(np.argmax(logits))]
            for media in ("video", "audio"):
                if rec.get(media):
                    rec[media] = str(src.parent / rec[media])
            lines.append(json.dumps(rec))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out


def _input_sensitive_bundle(root, data):
    """A small untrained student whose event choice depends on its input. The fixture's may not: an
    untrained model's last hidden layer varies little between clips, so one event wins every clip and
    no quantization changes that. Here the event layer's logits are centred on ``data``'s mean hidden
    vector and scaled, so the event is decided by how a clip differs from the others."""
    import torch

    from _precision_fixtures import SMALL_STUDENT
    from fusionedge.export.pipeline import export_model
    from fusionedge.sdk.datamanifest import read_manifest
    from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, OBJECTS, InputGeometry
    from fusionedge.training.dataset import Labels, load_clips
    from fusionedge.training.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("fusion_student", **SMALL_STUDENT).eval()
    clips = load_clips(read_manifest(data), InputGeometry(), Labels(), workers=1, progress=False)
    last = model.event_head.mlp[-1]
    hidden = []
    handle = last.register_forward_hook(lambda m, i, o: hidden.append(i[0]))
    with torch.no_grad():
        presence = torch.stack([torch.ones(len(clips)), clips.has_audio.float()], dim=1)
        model(clips.video, clips.audio * presence[:, 1:], presence)
        handle.remove()
        h = hidden[0]
        # unit scale per hidden spread: a larger factor would only sharpen the softmax (the winning event
        # is the same), and it amplified float rounding on the export's random parity inputs past its
        # tolerance once the clips' hidden vectors were less spread out
        last.weight.copy_(torch.randn(last.weight.shape) / h.std(dim=0).clamp(min=1e-6))
        last.bias.copy_(-(last.weight @ h.mean(dim=0)))
    info = {"model_name": "fusion_student", "model_config": model.config.to_dict(),
            "geometry": InputGeometry().to_dict(),
            "labels": {"events": list(EVENTS), "audio_tags": list(AUDIO_TAGS), "objects": list(OBJECTS)},
            "metrics": {}, "epoch": 0}
    return export_model(model, info, root / "fp32", progress=False)


def test_gate_refuses_when_no_setting_meets_budget(tmp_path_factory):
    data = synth_data(tmp_path_factory)
    fp32 = _input_sensitive_bundle(tmp_path_factory.mktemp("gate2-model"), data)
    # scored against the FP32 model's own predictions, any event the INT8 model flips is a drop
    agree = _relabelled_by(fp32, data, tmp_path_factory.mktemp("gate2-data") / "data")
    assert len({json.loads(x)["event"] for x in (agree / "manifest.jsonl").read_text().splitlines()}) > 1
    harsh = QuantizeConfig(per_channel=False, exclude_frontend=False, exclude_sensitive=False, weight_bits=2)
    target = tmp_path_factory.mktemp("gate2") / "int8"
    # 3-level per-tensor weights with the audio front end and sensitive ops quantized flip some of the
    # 24 predictions, so nothing is allowed under a zero budget: the gate must refuse
    try:
        gate_bundle(fp32, target, data, agree, budget=Budget(0.0, 0.0), config=harsh, calibration_limit=8,
                    max_float=1, progress=False)
    except PrecisionBudgetError as e:
        assert len(e.report.steps) == 2 and not any(s.within_budget for s in e.report.steps)
        assert e.report.baseline["event_accuracy"] == 1.0
        assert "no INT8 setting" in str(e)
        assert not target.exists()
    else:
        pytest.fail("the harsh setting met a zero budget; the refusal path was not exercised")
