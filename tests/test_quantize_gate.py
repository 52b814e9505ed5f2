"""The precision gate: sensitivity ranking, budget acceptance recorded in the manifest, typed refusal."""

from __future__ import annotations

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
def test_gate_refuses_when_no_setting_meets_budget(tmp_path_factory):
    fp32, data = student_bundle(tmp_path_factory), synth_data(tmp_path_factory)
    harsh = QuantizeConfig(per_channel=False, exclude_frontend=False, exclude_sensitive=False)
    target = tmp_path_factory.mktemp("gate2") / "int8"
    # per-tensor weights with the audio front end and sensitive ops quantized flip event predictions of
    # this (seeded) model, so no drop is allowed under a zero budget: the gate must refuse
    try:
        gate_bundle(fp32, target, data, data, budget=Budget(0.0, 0.0), config=harsh, calibration_limit=8,
                    max_float=1, progress=False)
    except PrecisionBudgetError as e:
        assert len(e.report.steps) == 2 and not any(s.within_budget for s in e.report.steps)
        assert "no INT8 setting" in str(e)
        assert not target.exists()
    else:
        pytest.fail("the harsh setting met a zero budget; the refusal path was not exercised")
