"""Evaluate a loaded bundle on a data-set manifest: the numbers ``fusionedge eval`` prints.

Every sample goes through the same path a device uses — decode the media files, preprocess with the
bundle's own geometry, run the backend, decode the heads — so the metrics describe the deployed
artifact, not the training checkpoint. Boxes are compared in the original video's pixel coordinates.
A calibrated bundle (:mod:`fusionedge.sdk.calibration`) is scored as it answers: tempered event
probabilities for the ECE, its own tag thresholds, and no alarm from an ``uncertain`` result.

An imported model's bundle (:mod:`fusionedge.sdk.generic`) is evaluated on what it scores: a
classifier's accuracy and macro-F1 on the samples' ``event`` labels, a detector's mAP@0.5 on their
boxes (the clip's last frame, like the fused model's), an audio tagger's mAP on their audio tags.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fusionedge.sdk import metrics as M
from fusionedge.sdk.coco import coco_detection_metrics
from fusionedge.sdk.datamanifest import Sample, read_manifest
from fusionedge.sdk.errors import DataError, InputError
from fusionedge.sdk.generic import last_frame
from fusionedge.sdk.media import read_audio, read_video
from fusionedge.sdk.outside_metrics import expected_calibration_error, outside_metrics
from fusionedge.sdk.postprocess import decode_centernet, sigmoid, softmax
from fusionedge.sdk.preprocess import preprocess_audio, preprocess_video
from fusionedge.sdk.qa_evaluate import question_scorer
from fusionedge.sdk.spec import fusion_output_names

if TYPE_CHECKING:
    from fusionedge.sdk.perception import Perception

__all__ = ["evaluate", "load_sample_inputs", "sample_logits"]


#: Detections decoded for an mAP or a threshold fit: down to a low score, so every cut can be tried.
EVAL_SCORE_THRESHOLD = 0.05
EVAL_TOP_K = 100


def load_sample_inputs(sample: Sample, geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Decode and preprocess one manifest sample the way the runtime does.

    Returns:
        ``(video (T,3,H,W), audio (S,), presence (2,), (width, height) of the original frames)``.
        A sample without audio gets a zero waveform and presence 0 for audio; an audio-only sample
        zero frames, presence 0 for video and a frame size of (0, 0).

    Raises:
        MediaError: a media file cannot be decoded.
    """
    if sample.video is not None:
        clip = read_video(sample.video, max_seconds=geometry.clip_seconds)
        video = preprocess_video(clip.frames, clip.fps, geometry)
        frame_h, frame_w = clip.frames.shape[1:3]
    else:
        video = np.zeros((geometry.clip_frames, 3, geometry.height, geometry.width), np.float32)
        frame_h = frame_w = 0
    if sample.audio is not None:
        samples, sr = read_audio(sample.audio)
        audio = preprocess_audio(samples, sr, geometry)
    else:
        audio = np.zeros(geometry.audio_samples, np.float32)
    presence = np.array([sample.video is not None, sample.audio is not None], np.float32)
    return video, audio, presence, (frame_w, frame_h)


def sample_logits(
    perception: Perception, samples: Sequence[Sample], *, batch_size: int = 16, progress: bool = False,
    desc: str = "logits", without: Sequence[str] = (), detections: bool = False,
) -> dict:
    """Run samples through a loaded fused-model bundle; the raw event and tag logits of each.

    What calibration is fit on and what an open-world report scores (per clip, not aggregated).
    ``without=("audio", "video")`` also runs every clip as if each of those sensors were dead (its
    input zeroed and its presence 0, as the runtime feeds a missing modality), from the same decoded
    batch. ``detections=True`` also decodes each clip's boxes as :func:`evaluate` does for its mAP
    (score >= 0.05, at most 100, in the clip's pixels).

    Returns:
        ``{"event_logits" (N, K), "tag_logits" (N, T), "has_audio" (N,)}``, float64 / bool, with
        ``without`` ``"event_logits_without": {modality: (N, K)}``, and with ``detections``
        ``"detections"``: per clip its list of :class:`~fusionedge.sdk.postprocess.Detection`.

    Raises:
        InputError: ``without`` names something other than ``audio`` or ``video``.
        MediaError: a media file cannot be decoded.
        BackendError: the backend failed (NaN/Inf outputs included).
    """
    if not set(without) <= {"audio", "video"}:
        raise InputError(f"without must name 'audio' and/or 'video', got {list(without)!r}")
    ev, tg, audio, boxes = [], [], [], []
    dead: dict[str, list] = {m: [] for m in without}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), desc=desc, unit="clip", leave=False)
    for batch in _batches(list(samples), batch_size):
        loaded = [load_sample_inputs(s, perception.geometry) for s in batch]
        video, waves, presence = (np.stack([x[i] for x in loaded]) for i in range(3))
        out = perception.infer_batch(video, waves, presence)
        for m in without:  # the same clips with one sensor dead
            keep = np.array([m != "video", m != "audio"], presence.dtype)
            dead[m].append(perception.infer_batch(video * keep[0], waves * keep[1], presence * keep)["event_logits"])
        ev.append(out["event_logits"])
        tg.append(out["audio_tag_logits"])
        audio += [bool(p[1]) for _, _, p, _ in loaded]
        if detections:
            boxes += [_eval_boxes(out, i, perception, wh) for i, (_, _, _, wh) in enumerate(loaded)]
        if bar is not None:
            bar.update(len(loaded))
    if bar is not None:
        bar.close()
    result: dict = {"event_logits": np.concatenate(ev).astype(np.float64),
                    "tag_logits": np.concatenate(tg).astype(np.float64), "has_audio": np.asarray(audio, bool)}
    if without:
        result["event_logits_without"] = {m: np.concatenate(v).astype(np.float64) for m, v in dead.items()}
    if detections:
        result["detections"] = boxes
    return result


def _eval_boxes(out: dict, index: int, perception: Perception, frame_wh: tuple[int, int],
                score_threshold: float = EVAL_SCORE_THRESHOLD) -> list:
    """One clip's boxes in its own pixels, decoded down to a low score for an mAP or a threshold fit."""
    g = perception.geometry
    return decode_centernet(out["det_heatmap"][index], out["det_size"][index], out["det_offset"][index],
                            stride=g.output_stride, labels=perception.labels["objects"],
                            score_threshold=score_threshold, top_k=EVAL_TOP_K, out_wh=frame_wh,
                            in_wh=(g.width, g.height))


def _batches(samples: list[Sample], size: int) -> Iterator[list[Sample]]:
    for i in range(0, len(samples), size):
        yield samples[i : i + size]


def evaluate(
    perception: Perception,
    data: str | Path,
    *,
    batch_size: int = 16,
    progress: bool = True,
    limit: int | None = None,
    score_threshold: float = EVAL_SCORE_THRESHOLD,
    clip_logits: dict | None = None,
) -> dict:
    """Compute event accuracy / macro-F1, audio-tag mAP and detection mAP@0.5 of a bundle.

    Args:
        perception: a loaded :class:`Perception` (any backend).
        data: a ``manifest.jsonl`` or the folder holding one; every sample needs labels.
        batch_size: samples per backend call.
        progress: show a progress bar on stderr.
        limit: evaluate only the first ``limit`` samples.
        score_threshold: lowest detection score kept for mAP (low, so the PR curve is complete).
        clip_logits: a dict to fill with the per-clip outputs of this same pass, for callers that
            score clips one by one too (the open-world report): ``samples`` (as evaluated) and, as
            from :func:`sample_logits`, ``event_logits``, ``tag_logits`` and ``has_audio``; only for
            a fused bundle with an event and an audio-tag head (otherwise left empty).

    Returns:
        ``{"event_accuracy", "event_macro_f1", "audio_tag_map", "detection_map50", "samples",
        "backend", "seconds", "per_class_accuracy"}``; ``detection_map50`` is VOC all-point AP@0.5
        (``detection_ap50_per_class``: the same AP of each object class with ground truth),
        and with the ``metrics`` extra ``detection_ap50_coco`` and ``detection_ap50_95_coco`` are
        COCO's AP50 and AP50:95. ``event_ece`` is the top-label ECE of the event probabilities on
        the samples without an ``outside`` block (None if there are none) and ``calibrated`` says
        whether the bundle's calibration was applied; a calibrated bundle adds ``uncertain_rate``
        (share of all samples marked uncertain). Samples from ``fusionedge data outside`` add
        ``outside``: the open-world rates of :func:`fusionedge.sdk.outside_metrics.outside_metrics`
        (with a calibrated bundle also ``uncertain_rate`` and ``ood_auroc``). A task without events,
        audio tags or boxes has no such metric (and, without events or tags, no open-world rates).
        A bundle with a ``qa`` block evaluated on samples with ``questions`` adds the question accuracy
        overall and per type (:mod:`fusionedge.sdk.qa_evaluate`).

    Raises:
        DataError: the manifest is invalid or uses labels the bundle does not know.
        MediaError: a media file cannot be decoded.
    """
    if perception.generic is not None:
        return _evaluate_generic(perception, data, batch_size=batch_size, progress=progress, limit=limit,
                                 score_threshold=score_threshold)
    labels = perception.labels
    events, tags, objects = list(labels["events"]), list(labels["audio_tags"]), list(labels["objects"])
    samples = read_manifest(data, require_labels=bool(events), events=events, audio_tags=tags, objects=objects)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise DataError(f"{data}: no samples to evaluate")
    heads = fusion_output_names(labels)  # a task without a head has no such output and no such metric
    questions = question_scorer(perception, samples)  # None unless the bundle and the data have questions
    has_ev, has_tag, has_det = "event_logits" in heads, "audio_tag_logits" in heads, "det_heatmap" in heads
    geometry = perception.geometry

    cal = perception.calibration
    raw_events, raw_tags = [], []  # the logits as the backend gave them, for ``clip_logits``
    y_true, y_pred, event_probs = [], [], []
    tag_true, tag_scores, ood = [], [], []
    det_pred, det_true = [], []
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), desc="eval", unit="clip", leave=False)
    for batch in _batches(samples, batch_size):
        loaded = [load_sample_inputs(s, geometry) for s in batch]
        out = perception.infer_batch(
            np.stack([v for v, _, _, _ in loaded]),
            np.stack([a for _, a, _, _ in loaded]),
            np.stack([p for _, _, p, _ in loaded]),
        )
        if questions is not None:
            questions.add_batch(batch, loaded)
        for i, (s, (_, _, _, wh)) in enumerate(zip(batch, loaded)):
            if has_det:
                det_pred.append(_eval_boxes(out, i, perception, wh, score_threshold))
                det_true.append([(b.label, b.x1, b.y1, b.x2, b.y2) for b in s.boxes])
            if has_tag:
                tag_true.append([1.0 if t in s.audio_tags else 0.0 for t in tags])
                tag_scores.append(sigmoid(out["audio_tag_logits"][i]))
            if not has_ev:
                continue
            y_true.append(events.index(s.event))
            y_pred.append(int(np.argmax(out["event_logits"][i])))
            logits = out["event_logits"][i].astype(np.float64)
            raw_events.append(logits)
            if has_tag:
                raw_tags.append(out["audio_tag_logits"][i].astype(np.float64))
            event_probs.append(softmax(logits) if cal is None else cal.event_probs(logits))
            if cal is not None:
                has_audio = s.audio is not None
                tag_logits = out["audio_tag_logits"][i][None] if has_audio and has_tag else None
                ood.append(float(cal.ood_scores(logits[None], tag_logits)[0]))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()

    if not (has_ev and has_tag):  # a head-less task: the metrics of the heads it has
        headless: dict = {}
        if has_ev:
            headless["event_accuracy"] = M.event_accuracy(np.asarray(y_true), np.asarray(y_pred))
            headless["event_macro_f1"] = M.event_macro_f1(np.asarray(y_true), np.asarray(y_pred), len(events))
        if has_tag:
            headless["audio_tag_map"] = M.audio_tag_map(np.asarray(tag_true), np.asarray(tag_scores))
        if has_det:
            headless.update(_detection_metrics(det_pred, det_true, objects))
        return {**headless, **(questions.metrics() if questions is not None else {}), "samples": len(samples),
                "backend": perception.backend_name,
                "seconds": round(time.perf_counter() - t0, 3)}
    if clip_logits is not None:
        clip_logits.update(samples=samples, event_logits=np.asarray(raw_events), tag_logits=np.asarray(raw_tags),
                           has_audio=np.array([s.audio is not None for s in samples], bool))
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    per_class = {e: float(np.mean(yp[yt == k] == k)) for k, e in enumerate(events) if np.any(yt == k)}
    probs, scores = np.asarray(event_probs), np.asarray(tag_scores)
    inside = np.array(["outside" not in s.meta for s in samples])
    open_world: dict = {"event_ece": expected_calibration_error(probs[inside], yt[inside]) if inside.any() else None,
                        "calibrated": cal is not None}
    kw: dict = {}
    if cal is not None:
        unsure = np.array([cal.is_uncertain(o, has_audio=s.audio is not None, has_video=s.video is not None)
                           for o, s in zip(ood, samples)], bool)
        kw = {"tags_on": np.array([[v >= cal.tag_thresholds[t] for t, v in zip(tags, row)] for row in scores], bool)
              .reshape(scores.shape), "uncertain": unsure, "ood_scores": np.asarray(ood)}
        open_world["uncertain_rate"] = float(unsure.mean())
    if has_det:  # the boxes the runtime would show: at the bundle's per-class thresholds
        shown = perception.detection_thresholds
        kw["box_labels"] = [[d.label for d in [d for d in dets if d.score >= shown[d.label]][:perception.top_k]]
                            for dets in det_pred]
    return {
        "event_accuracy": M.event_accuracy(yt, yp),
        "event_macro_f1": M.event_macro_f1(yt, yp, len(events)),
        "audio_tag_map": M.audio_tag_map(np.asarray(tag_true), np.asarray(tag_scores)),
        **(_detection_metrics(det_pred, det_true, objects) if has_det else {}),
        "samples": len(samples),
        "per_class_accuracy": per_class,
        # samples with an ``outside`` block (fusionedge data outside): false alarms, siren recall, ECE
        **open_world,
        **outside_metrics(samples, probs, scores, events, tags, **kw),
        **(questions.metrics() if questions is not None else {}),
        "backend": perception.backend_name,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _detection_metrics(det_pred: list, det_true: list, objects: Sequence[str]) -> dict:
    """VOC AP@0.5, its mean and (with the ``metrics`` extra) COCO's APs of one evaluation's boxes."""
    per_class = M.detection_ap_per_class(det_pred, det_true, objects)
    return {"detection_map50": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
            "detection_ap50_per_class": per_class, **coco_detection_metrics(det_pred, det_true, objects)}


class _AnyLabel(tuple):
    """A vocabulary that accepts every label: for a label kind the evaluated bundle does not score."""

    def __contains__(self, label: object) -> bool:
        return True


def _evaluate_generic(
    perception: Perception, data: str | Path, *, batch_size: int, progress: bool, limit: int | None,
    score_threshold: float,
) -> dict:
    """:func:`evaluate` for an imported model: the metrics of the label kinds it scores."""
    model = perception.generic
    assert model is not None
    labels = perception.labels
    vocab = {k: (list(labels[k]) if labels[k] else _AnyLabel()) for k in ("events", "audio_tags", "objects")}
    samples = read_manifest(data, require_labels=False, events=vocab["events"],
                            audio_tags=vocab["audio_tags"],
                            objects=vocab["objects"])
    if labels["events"]:
        samples = [s for s in samples if s.event is not None]
    if model.modality == "audio":
        samples = [s for s in samples if s.audio is not None]
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise DataError(f"{data}: no samples with the labels and media a {model.task} model is evaluated on")
    geometry = perception.geometry
    events, tags, objects = list(labels["events"]), list(labels["audio_tags"]), list(labels["objects"])
    y_true, y_pred, tag_true, tag_scores, det_pred, det_true = [], [], [], [], [], []
    t0 = time.perf_counter()
    for batch in _batches(samples, batch_size):
        tensors, transforms = [], []
        for s in batch:
            if model.modality == "audio":
                wave, rate = read_audio(s.audio)
                tensors.append(preprocess_audio(wave, rate, geometry))
                transforms.append(None)
            else:
                clip = read_video(s.video, max_seconds=geometry.clip_seconds)
                frame = last_frame(clip.frames, clip.fps, 0.0, geometry.clip_seconds)
                tensor, transform = model.image_tensor(frame)
                tensors.append(tensor)
                transforms.append(transform)
        out = perception.infer_inputs(np.stack(tensors))
        for i, (s, transform) in enumerate(zip(batch, transforms)):
            d = model.decode(out, index=i, transform=transform, score_threshold=score_threshold, top_k=EVAL_TOP_K)
            if events:
                y_true.append(events.index(s.event))
                y_pred.append(events.index(d.event))
            if tags:
                tag_true.append([1.0 if t in s.audio_tags else 0.0 for t in tags])
                tag_scores.append([d.audio_tags[t] for t in tags])
            if objects:
                det_pred.append(d.boxes)
                det_true.append([(b.label, b.x1, b.y1, b.x2, b.y2) for b in s.boxes])
    metrics: dict = {"task": model.task}
    if events:
        yt, yp = np.asarray(y_true), np.asarray(y_pred)
        metrics["event_accuracy"] = M.event_accuracy(yt, yp)
        metrics["event_macro_f1"] = M.event_macro_f1(yt, yp, len(events))
        metrics["per_class_accuracy"] = {e: float(np.mean(yp[yt == k] == k)) for k, e in enumerate(events)
                                         if np.any(yt == k)}
    if tags:
        metrics["audio_tag_map"] = M.audio_tag_map(np.asarray(tag_true), np.asarray(tag_scores))
    if objects:
        metrics.update(_detection_metrics(det_pred, det_true, objects))
    metrics.update(samples=len(samples), backend=perception.backend_name,
                   seconds=round(time.perf_counter() - t0, 3))
    return metrics
