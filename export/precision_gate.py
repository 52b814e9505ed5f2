"""The precision gate: INT8 only where it keeps the model's accuracy within a budget.

1. **Sensitivity.** The model is quantized once with everything allowed; on calibration batches the
   output of every weight-carrying node (Conv/MatMul/Gemm) is compared between the FP32 and the Q/DQ
   model. A node's sensitivity is the relative error it *adds*: the error of its output minus the error
   already present on its input, so the ranking names the layers that quantize badly, not merely the
   ones late in the graph.
2. **Gate.** For k = 0, 1, 2, 4, 8, … (then every weight node) the k most sensitive nodes are kept in
   float, the model is re-quantized, written as a candidate bundle and evaluated on the validation set
   through the runtime (:func:`fusionedge.sdk.evaluate.evaluate`). The first k whose metric drop is
   within the budget wins; its bundle records ``keep_float``, the baseline and the measured drop in the
   manifest's ``variant.gate`` section.
3. **Refusal.** When no k meets the budget, :class:`PrecisionBudgetError` carries the full report
   (each k tried and its drop): ship FP32 or FP16, or train with QAT.

The metrics gated are the model's own (:func:`gated_metrics`): event accuracy and detection mAP@0.5 for
the fused model; for an imported one what its task scores on the user's labelled manifest —
classification accuracy, detection mAP@0.5 (VOC all-point), or an audio tagger's mAP.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.export.onnx_export import ExportError
from fusionedge.export.quantize import (
    ArrayCalibrationReader,
    QuantizeConfig,
    for_bundle,
    load_calibration_feeds,
    quantize_bundle,
    quantize_onnx,
    weight_nodes,
)
from fusionedge.sdk.bundle import Bundle, load_bundle

__all__ = [
    "Budget",
    "GateReport",
    "GateStep",
    "PrecisionBudgetError",
    "gate_bundle",
    "gated_metrics",
    "layer_sensitivity",
]


_METRICS = ("event_accuracy", "detection_map50")
_ALL_METRICS = ("event_accuracy", "detection_map50", "audio_tag_map")
#: the metric an imported model is gated on, by the label kind it scores
_KIND_METRIC = {"events": "event_accuracy", "audio_tags": "audio_tag_map", "objects": "detection_map50"}


@dataclass(frozen=True)
class Budget:
    """Largest allowed metric drop (FP32 minus INT8), in absolute points of a [0, 1] metric.

    Attributes:
        event_accuracy: allowed drop of event (or an imported classifier's class) accuracy (default
            0.01 = 1 point).
        detection_map50: allowed drop of detection mAP@0.5 (default 0.01).
        audio_tag_map: allowed drop of audio-tag mAP (default 0.01; gated for an imported audio tagger).
    """

    event_accuracy: float = 0.01
    detection_map50: float = 0.01
    audio_tag_map: float = 0.01

    def __post_init__(self) -> None:
        for k in _ALL_METRICS:
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ExportError(f"budget.{k} must be in [0, 1], got {v!r}")

    def as_dict(self, metrics: Sequence[str] = ("event_accuracy", "detection_map50")) -> dict[str, float]:
        """The allowed drop of each of ``metrics`` (default: the fused model's gated metrics)."""
        return {k: float(getattr(self, k)) for k in metrics}


@dataclass
class GateStep:
    """One setting the gate tried: ``keep_float`` nodes, the candidate's metrics and drops."""

    keep_float: list[str]
    metrics: dict[str, float]
    drop: dict[str, float]
    within_budget: bool

    def to_dict(self) -> dict[str, Any]:
        return {"keep_float": self.keep_float, "metrics": self.metrics, "drop": self.drop,
                "within_budget": self.within_budget}


@dataclass
class GateReport:
    """Everything the gate measured."""

    budget: dict[str, float]
    baseline: dict[str, float]
    sensitivity: list[tuple[str, float]]
    steps: list[GateStep] = field(default_factory=list)

    @property
    def chosen(self) -> GateStep | None:
        return next((s for s in self.steps if s.within_budget), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget, "baseline": self.baseline,
            "sensitivity": [{"node": n, "added_rel_error": round(e, 6)} for n, e in self.sensitivity],
            "steps": [s.to_dict() for s in self.steps],
        }

    def summary(self) -> str:
        lines = [f"baseline {self.baseline}; budget {self.budget}"]
        for s in self.steps:
            lines.append(f"  keep {len(s.keep_float):3d} in float: drop {s.drop} "
                         f"{'OK' if s.within_budget else 'over budget'}")
        return "\n".join(lines)


class PrecisionBudgetError(ExportError):
    """No INT8 setting kept the metric drop within the budget. ``report`` holds every step tried."""

    def __init__(self, message: str, report: GateReport) -> None:
        super().__init__(message)
        self.report = report




def gated_metrics(bundle: Bundle) -> tuple[str, ...]:
    """The metrics the gate holds to the budget for ``bundle``.

    The fused model: event accuracy and detection mAP@0.5, of the heads it has (a task with neither:
    audio-tag mAP). An imported model: the metric of each label kind it scores — classification
    accuracy, audio-tag mAP, detection mAP@0.5.
    """
    if bundle.task == "fusion":
        kind_of = {m: kind for kind, m in _KIND_METRIC.items()}
        gated = tuple(m for m in _METRICS if bundle.labels[kind_of[m]])
        return gated or (("audio_tag_map",) if bundle.labels["audio_tags"] else ())
    return tuple(m for kind, m in _KIND_METRIC.items() if bundle.labels[kind])


def _with_outputs(model: Any, names: Sequence[str]) -> Any:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return m


def _run(model: Any, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, list]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # keep every tensor observable: no fusion may remove the node outputs we compare
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    out: dict[str, list] = {n: [] for n in names}
    for f in feeds:
        for n, v in zip(names, session.run(list(names), dict(f))):
            out[n].append(np.asarray(v, np.float64).ravel())
    return out


def layer_sensitivity(
    model_path: str | os.PathLike, feeds: Sequence[Mapping[str, np.ndarray]], config: QuantizeConfig,
) -> list[tuple[str, float]]:
    """Rank the weight-carrying nodes by the relative error quantizing them adds.

    Args:
        model_path: the FP32 ONNX model.
        feeds: calibration batches (also used to measure the error).
        config: the quantization setting to measure (its ``keep_float`` is ignored).

    Returns:
        ``[(node name, added relative error)]``, most sensitive first.

    Raises:
        ExportError: quantization or inference failed.
    """
    import onnx

    fp = onnx.load(str(model_path))
    nodes = {n.name: n for n in fp.graph.node}
    names = weight_nodes(fp)
    with tempfile.TemporaryDirectory(prefix="fusionedge-gate-") as work:
        q_path = Path(work) / "q.onnx"
        quantize_onnx(model_path, q_path, ArrayCalibrationReader(feeds), replace(config, keep_float=()))
        q = onnx.load(str(q_path))
    graph_inputs = {i.name for i in fp.graph.input}
    in_q = {o for n in q.graph.node for o in n.output} | graph_inputs
    consumers: dict[str, list] = {}
    for n in fp.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)

    def observable(t: str) -> str | None:
        # the quantizer fuses Conv+Relu/Clip: follow single-consumer activations to a tensor both graphs keep
        while t not in in_q:
            nxt = consumers.get(t, [])
            if len(nxt) != 1 or nxt[0].op_type not in ("Relu", "Clip", "LeakyRelu"):
                return None
            t = nxt[0].output[0]
        return t

    pairs = {n: (observable(nodes[n].input[0]), observable(nodes[n].output[0])) for n in names}
    tensors = sorted({t for pair in pairs.values() for t in pair if t is not None} - graph_inputs)
    try:
        ref = _run(_with_outputs(fp, tensors), tensors, feeds)
        got = _run(_with_outputs(q, tensors), tensors, feeds)
    except Exception as e:
        raise ExportError(f"sensitivity: inference on intermediate tensors failed: {e}") from e

    def rel(t: str | None) -> float:
        if t is None or t in graph_inputs:
            return 0.0
        a, b = np.concatenate(ref[t]), np.concatenate(got[t])
        return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12))

    # a node whose output is not observable in the Q/DQ graph ranks last (score -inf is not JSON: use -1)
    scores = [(n, rel(o) - rel(i) if o is not None else -1.0) for n, (i, o) in pairs.items()]
    return sorted(scores, key=lambda x: -x[1])


def _schedule(n: int, max_float: int | None) -> list[int]:
    ks, k = [0], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    limit = n if max_float is None else min(n, max_float)
    return sorted({k for k in ks if k <= limit})


def _evaluate(
    bundle_dir: Path, data: str | os.PathLike, limit: int | None, metrics: Sequence[str]
) -> dict[str, float]:
    from fusionedge.sdk.evaluate import evaluate
    from fusionedge.sdk.perception import Perception

    p = Perception.load(bundle_dir, ["onnxruntime"])
    try:
        m = evaluate(p, data, progress=False, limit=limit)
    finally:
        p.close()
    return {k: float(m[k]) for k in metrics}


def gate_bundle(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    calibration_data: str | os.PathLike,
    validation_data: str | os.PathLike,
    *,
    budget: Budget = Budget(),
    config: QuantizeConfig = QuantizeConfig(),
    calibration_limit: int = 64,
    validation_limit: int | None = None,
    max_float: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, GateReport]:
    """Quantize a bundle to INT8, keeping the most sensitive layers in float until the drop is in budget.

    Args:
        bundle_dir: the FP32 bundle.
        out_dir: the INT8 (``precision: int8``) bundle to create.
        calibration_data: data-set manifest for calibration and sensitivity.
        validation_data: data-set manifest (with labels) the drop is measured on.
        budget: the allowed drops.
        config: the quantization setting (profile, calibration method, ...).
        calibration_limit: calibration samples.
        validation_limit: evaluate only the first N validation samples (None: all).
        max_float: most weight nodes the gate may keep in float (None: all).
        overwrite: replace an existing ``out_dir``.
        progress: print each step to stderr.

    Returns:
        ``(out_dir, report)``; the bundle's manifest ``variant.gate`` holds the chosen step.

    Raises:
        PrecisionBudgetError: no setting met the budget (``.report`` has every step).
        ExportError / BundleError / DataError: invalid inputs or a failed step.
    """
    source = load_bundle(bundle_dir)
    config = for_bundle(config, source)  # the sensitivity is measured on the setting that will ship
    gated = gated_metrics(source)
    feeds = load_calibration_feeds(source, calibration_data, limit=calibration_limit)

    def say(msg: str) -> None:
        if progress:
            print(f"gate: {msg}", file=sys.stderr, flush=True)

    baseline = _evaluate(source.path, validation_data, validation_limit, gated)
    undefined = [m for m in gated if not np.isfinite(baseline[m])]
    if undefined:
        raise ExportError(
            f"precision gate: {', '.join(undefined)} of the fp32 model is undefined on {validation_data} "
            f"(no sample is labelled for it); validate on a data set with those labels"
        )
    say(f"fp32 baseline {baseline}")
    sensitivity = layer_sensitivity(source.model_path, feeds[:2], config)
    report = GateReport(budget=budget.as_dict(gated), baseline=baseline, sensitivity=sensitivity)
    ranked = [n for n, _ in sensitivity]
    with tempfile.TemporaryDirectory(prefix="fusionedge-gate-", dir=Path(out_dir).parent) as work:
        for k in _schedule(len(ranked), max_float):
            cand = Path(work) / f"k{k}"
            cfg = replace(config, keep_float=tuple(dict.fromkeys(config.keep_float + tuple(ranked[:k]))))
            quantize_bundle(source.path, cand, config=cfg, reader=ArrayCalibrationReader(feeds))
            metrics = _evaluate(cand, validation_data, validation_limit, gated)
            drop = {m: round(baseline[m] - metrics[m], 6) for m in gated}
            ok = all(drop[m] <= getattr(budget, m) + 1e-9 for m in gated)
            report.steps.append(GateStep(list(ranked[:k]), metrics, drop, ok))
            say(f"keep {k} in float -> drop {drop} {'OK' if ok else 'over budget'}")
            if ok:
                break
    chosen = report.chosen
    if chosen is None:
        raise PrecisionBudgetError(
            f"precision gate: no INT8 setting kept the drop within {budget.as_dict(gated)} "
            f"(tried keeping 0..{len(report.steps[-1].keep_float)} layers in float)\n{report.summary()}",
            report,
        )
    cfg = replace(config, keep_float=tuple(dict.fromkeys(config.keep_float + tuple(chosen.keep_float))))
    gate = {"budget": report.budget, "baseline": baseline, "metrics": chosen.metrics, "drop": chosen.drop,
            "kept_float_by_gate": chosen.keep_float, "validation_data": str(validation_data),
            "steps": [s.to_dict() for s in report.steps]}
    out = quantize_bundle(source.path, out_dir, config=cfg, reader=ArrayCalibrationReader(feeds),
                          extra_manifest={"gate": gate}, overwrite=overwrite)
    return out, report
