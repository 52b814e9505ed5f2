"""The accuracy part of ``fusionedge bench``: LoadGen's AccuracyOnly mode over a labelled data set.

Every labelled sample runs end to end (decode, preprocess, infer, postprocess) through the same
pipeline the performance runs time, and the answers are scored as ``fusionedge eval`` scores them:
event accuracy and macro-F1, audio-tag mAP, VOC all-point detection mAP@0.5, and COCO's AP50 and
AP50:95 where the ``metrics`` extra is installed. The numbers show that the timed configuration is
the deployed model, not a faster wrong one. An imported model is scored on the label kinds it has:
a classifier's accuracy and macro-F1, an audio tagger's mAP, a detector's AP — the numbers
``fusionedge eval`` gives that bundle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.benchmarks.loadgen import LoadGenSettings, run_loadgen
from fusionedge.benchmarks.stages import E2EPipeline
from fusionedge.sdk import metrics as M
from fusionedge.sdk.bundle import Bundle
from fusionedge.sdk.coco import coco_detection_metrics
from fusionedge.sdk.datamanifest import Sample
from fusionedge.sdk.errors import BackendError, DataError
from fusionedge.sdk.generic import GenericModel

__all__ = ["run_accuracy"]


def run_accuracy(
    engine: Any,
    backend: str,
    precision: str,
    bundle: Bundle,
    samples: list[Sample],
    out_dir: Path,
    *,
    offline_batch: int,
    performance_samples: int,
    model: GenericModel | None = None,
) -> dict[str, Any]:
    """LoadGen AccuracyOnly over every labelled sample, end to end; metrics as ``fusionedge eval``.

    Args:
        engine: a loaded backend model.
        backend: its backend name; precision: the bundle's precision (both name the entry).
        bundle: the bundle the engine runs.
        samples: labelled samples.
        out_dir: the run's folder (LoadGen's logs go under ``loadgen/``).
        offline_batch: samples per engine call.
        performance_samples: samples LoadGen keeps in memory.
        model: an imported model's declared interface (None: the fused model); only its label kinds
            are scored, on the samples labelled for them.

    Returns:
        ``{backend, precision, mode, samples, metrics, bundle_metrics, loadgen}`` as in ``results.json``.

    Raises:
        BackendError: the engine failed, or LoadGen left samples unanswered.
        DataError: an imported classifier and no sample with an event label.
    """
    labels = bundle.labels
    events, tags, objects = list(labels["events"]), list(labels["audio_tags"]), list(labels["objects"])
    if model is not None and events:
        samples = [s for s in samples if s.event is not None]
        if not samples:
            raise DataError(f"no sample of the data set has an event label to score {bundle.model_id} on")
    # Evaluation keeps low-score boxes (0.05, top 100) so the precision-recall curve is complete.
    pipeline = E2EPipeline(
        engine, samples, bundle.geometry, labels, score_threshold=0.05, top_k=100, model=model
    )
    answers: dict[int, Any] = {}

    def runner(indices: Sequence[int]) -> None:
        for i, r in zip(indices, pipeline(indices), strict=True):
            answers[i] = r

    settings = LoadGenSettings(
        "Offline",
        min_duration_ms=0,
        min_query_count=1,
        expected_latency_ms=10.0,
        batch=offline_batch,
        accuracy=True,
        total_samples=len(samples),
        performance_samples=min(len(samples), performance_samples),
    )
    log_dir = out_dir / "loadgen" / f"{backend}_{precision}_accuracy"
    outcome = run_loadgen(runner, settings, log_dir)
    missing = [i for i in range(len(samples)) if i not in answers]
    if missing:
        raise BackendError(f"LoadGen's accuracy run left {len(missing)} of {len(samples)} samples unanswered")
    metrics: dict[str, float] = {}
    if events:  # the fused model has every kind; an imported one the kinds it scores
        y_true = np.array([events.index(s.event) for s in samples])
        y_pred = np.array([int(np.argmax(answers[i].event_scores)) for i in range(len(samples))])
        metrics["event_accuracy"] = M.event_accuracy(y_true, y_pred)
        metrics["event_macro_f1"] = M.event_macro_f1(y_true, y_pred, len(events))
    if tags:
        tag_true = np.array([[1.0 if t in s.audio_tags else 0.0 for t in tags] for s in samples])
        tag_scores = np.array([answers[i].tag_scores for i in range(len(samples))])
        metrics["audio_tag_map"] = M.audio_tag_map(tag_true, tag_scores)
    if objects:
        det_pred = [answers[i].boxes for i in range(len(samples))]
        det_true = [[(b.label, b.x1, b.y1, b.x2, b.y2) for b in s.boxes] for s in samples]
        metrics["detection_map50"] = M.detection_map50(det_pred, det_true, objects)
        metrics.update(coco_detection_metrics(det_pred, det_true, objects))
    recorded = bundle.manifest.get("metrics") or {}
    return {
        "backend": backend,
        "precision": precision,
        "mode": "e2e",
        "samples": len(samples),
        "metrics": {k: (round(float(v), 6) if np.isfinite(v) else None) for k, v in metrics.items()},
        "bundle_metrics": recorded,
        "loadgen": {
            "mode": "AccuracyOnly",
            "scenario": "Offline",
            "log_dir": os.path.relpath(outcome.log_dir, out_dir),
            "seconds": round(outcome.wall_s, 3),
        },
    }
