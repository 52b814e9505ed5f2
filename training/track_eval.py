"""How well a bundle plus the tracker follow objects over synthetic sequences, with a standard evaluator.

Identity metrics come from py-motmetrics (the ``metrics`` extra), the reference implementation of the
CLEAR-MOT and identity measures: MOTA, IDF1, identity switches, MOTP, recall and precision, per
class, with a match at IoU >= 0.5 as in MOTChallenge. The distance matrix is ``1 - IoU`` computed here
(py-motmetrics' own ``iou_matrix`` uses a function NumPy 2 removed); the matching, the accumulation
and the metrics are the library's. HOTA is TrackEval's when that package is importable: it is left out
of the ``metrics`` extra because every release of it requires ``opencv-python``, which overwrites the
runtime's headless OpenCV (``pip install --no-deps trackeval`` adds it beside it).

:func:`evaluate_bundle` runs a bundle over sequences written by
:mod:`fusionedge.training.synth.sequence` as a device would: at every frame the model sees the last
clip window of video and sound (``Perception.infer`` with arrays), its boxes (down to a low score, for
ByteTrack's second association) go to a :class:`~fusionedge.sdk.tracking.Tracker`, and each tracked
object that overlaps a true object is asked for its motion (:func:`~fusionedge.sdk.track_events.estimate_motion`)
twice: from its box alone, and, for the emergency vehicle, with the siren-band level of the sound too.
Motion accuracy is the share of such frames whose answer is the generator's truth.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.errors import DataError, InputError
from fusionedge.sdk.spec import OBJECTS
from fusionedge.sdk.track_events import MOTION_THRESHOLD, SirenLevels, estimate_motion
from fusionedge.sdk.tracking import Tracker, iou_matrix
from fusionedge.training.synth.sequence import SequenceFolder, read_sequence, write_mot_rows
from tqdm import tqdm

__all__ = ["MATCH_IOU", "MOTION_NAMES", "evaluate_bundle", "hota", "mot_metrics", "track_sequence"]

#: A hypothesis matches a true box at IoU >= this (MOTChallenge's threshold).
MATCH_IOU = 0.5
#: The generator's motion -> the runtime's.
MOTION_NAMES = {"approach": "approaching", "recede": "receding", "steady": "stationary"}
_METRICS = ("mota", "idf1", "num_switches", "motp", "recall", "precision", "num_objects", "num_unique_objects",
            "mostly_tracked", "num_false_positives", "num_misses")

Row = tuple[int, int, str, list[float]]  # frame (1-based), id, label, [x1, y1, x2, y2]


def _motmetrics() -> Any:
    try:
        import motmetrics
    except ImportError as e:
        raise InputError("tracking metrics need py-motmetrics: pip install 'fusionedge[metrics]'") from e
    return motmetrics


def _by_frame(rows: Sequence[Row], label: str) -> dict[int, list[Row]]:
    out: dict[int, list[Row]] = {}
    for r in rows:
        if r[2] == label:
            out.setdefault(r[0], []).append(r)
    return out


def _accumulate(truth: Sequence[Row], hyp: Sequence[Row], label: str, frames: int) -> Any:
    mm = _motmetrics()
    acc = mm.MOTAccumulator(auto_id=False)
    gt, hy = _by_frame(truth, label), _by_frame(hyp, label)
    for f in range(1, frames + 1):
        g, h = gt.get(f, []), hy.get(f, [])
        iou = iou_matrix(np.array([r[3] for r in g]), np.array([r[3] for r in h]))
        dist = np.where(iou >= MATCH_IOU, 1.0 - iou, np.nan)
        acc.update([r[1] for r in g], [r[1] for r in h], dist, frameid=f)
    return acc


def mot_metrics(sequences: Sequence[tuple[str, Sequence[Row], Sequence[Row], int]],
                labels: Sequence[str] = OBJECTS) -> dict[str, dict[str, float]]:
    """CLEAR-MOT and identity metrics per class over sequences, by py-motmetrics.

    Args:
        sequences: ``(name, truth rows, hypothesis rows, frame count)`` per sequence.
        labels: the classes to score; a class with no true object in any sequence is left out.

    Returns:
        ``{label: {"mota", "idf1", "num_switches", "motp", "recall", "precision", ...}}`` over all the
        sequences together (py-motmetrics' OVERALL), and ``"all"``: every class's events pooled.

    Raises:
        InputError: py-motmetrics is not installed.
    """
    mm = _motmetrics()
    mh = mm.metrics.create()
    out: dict[str, dict[str, float]] = {}
    pooled, pooled_names = [], []
    for label in labels:
        accs, names = [], []
        for name, truth, hyp, frames in sequences:
            if any(r[2] == label for r in truth):
                accs.append(_accumulate(truth, hyp, label, frames))
                names.append(f"{name}/{label}")
        if not accs:
            continue
        summary = mh.compute_many(accs, metrics=list(_METRICS), names=names, generate_overall=True)
        out[label] = {k: float(summary.loc["OVERALL", k]) for k in _METRICS}
        pooled += accs
        pooled_names += names
    if pooled:
        summary = mh.compute_many(pooled, metrics=list(_METRICS), names=pooled_names, generate_overall=True)
        out["all"] = {k: float(summary.loc["OVERALL", k]) for k in _METRICS}
    return out


def hota(sequences: Sequence[tuple[str, Sequence[Row], Sequence[Row], int]],
         labels: Sequence[str] = OBJECTS) -> dict[str, float] | None:
    """HOTA per class (averaged over TrackEval's alpha thresholds), or None when TrackEval is not installed.

    Each sequence is scored by ``trackeval.metrics.HOTA.eval_sequence`` and the sequences are combined
    by its ``combine_sequences``, as TrackEval's MOTChallenge runner does.
    """
    try:
        # TrackEval prints its optional datasets' import failures on stdout: keep --json clean
        with contextlib.redirect_stdout(sys.stderr):
            from trackeval.metrics import HOTA
    except ImportError:
        return None
    metric = HOTA()
    out: dict[str, float] = {}
    for label in labels:
        per_seq = {}
        for name, truth, hyp, frames in sequences:
            if not any(r[2] == label for r in truth):
                continue
            gt, hy = _by_frame(truth, label), _by_frame(hyp, label)
            gt_ids = sorted({r[1] for r in truth if r[2] == label})
            hy_ids = sorted({r[1] for r in hyp if r[2] == label})
            gmap, hmap = {v: i for i, v in enumerate(gt_ids)}, {v: i for i, v in enumerate(hy_ids)}
            data: dict[str, Any] = {"num_timesteps": frames, "num_gt_ids": len(gt_ids),
                                    "num_tracker_ids": len(hy_ids), "gt_ids": [], "tracker_ids": [],
                                    "similarity_scores": []}
            for f in range(1, frames + 1):
                g, h = gt.get(f, []), hy.get(f, [])
                data["gt_ids"].append(np.array([gmap[r[1]] for r in g], dtype=int))
                data["tracker_ids"].append(np.array([hmap[r[1]] for r in h], dtype=int))
                data["similarity_scores"].append(iou_matrix(np.array([r[3] for r in g]),
                                                            np.array([r[3] for r in h])))
            data["num_gt_dets"] = sum(len(x) for x in data["gt_ids"])
            data["num_tracker_dets"] = sum(len(x) for x in data["tracker_ids"])
            per_seq[name] = metric.eval_sequence(data)
        if per_seq:
            out[label] = float(np.mean(metric.combine_sequences(per_seq)["HOTA"]))
    return out


def _window(frames: np.ndarray, k: int, n: int) -> np.ndarray:
    """The ``n`` frames ending at frame ``k``; the first frame repeated before the start."""
    idx = np.clip(np.arange(k - n + 1, k + 1), 0, None)
    return frames[idx]


def _audio_window(audio: np.ndarray, end: int, n: int) -> np.ndarray:
    start = end - n
    if start >= 0:
        return audio[start:end]
    return np.concatenate([np.zeros(-start, audio.dtype), audio[:max(end, 0)]])


def track_sequence(perception: Any, seq: SequenceFolder, *, low_score: float = 0.1,
                   tracker_options: dict[str, Any] | None = None, motion_window_s: float = 3.0,
                   siren_window_s: float = 0.5, motion_threshold: float = MOTION_THRESHOLD) -> dict[str, Any]:
    """Run a loaded bundle and the tracker over one sequence, frame by frame.

    Args:
        perception: a :class:`~fusionedge.sdk.perception.Perception` loaded with ``score_threshold``
            at most ``low_score``.
        seq: a sequence read by :func:`~fusionedge.training.synth.sequence.read_sequence`.
        low_score: detections below this are not given to the tracker.
        tracker_options: keyword arguments of :class:`Tracker`.
        motion_window_s: history fitted for each motion answer.
        siren_window_s: the audio window of each siren-level measurement.
        motion_threshold: ``rate_threshold`` of :func:`estimate_motion`.

    Returns:
        ``{"rows", "scores", "motion"}``: the tracker's output rows, their scores, and per true object
        ``{"label", "truth", "box", "box+siren"}`` lists of the answers in the frames it was tracked.
    """
    from fusionedge.sdk.audio_file import read_audio
    from fusionedge.sdk.media import read_video

    frames = read_video(seq.video).frames
    if len(frames) < seq.frames:
        raise DataError(f"{seq.video}: {len(frames)} frames decoded, truth.json says {seq.frames}")
    audio, sr = read_audio(seq.audio)
    audio = audio.mean(axis=1) if audio.ndim == 2 else audio
    g = perception.geometry
    n_video = max(1, round(g.clip_seconds * seq.fps))
    n_audio = round(g.clip_seconds * sr)
    tracker = Tracker(seq.fps, low_threshold=low_score, **(tracker_options or {}))
    siren = SirenLevels(sr)
    truth = _by_frame_all(seq.truth)
    motion_truth = {o.track_id: (o.label, MOTION_NAMES[o.motion]) for o in seq.objects}
    rows: list[Row] = []
    scores: list[float] = []
    motion: dict[int, dict[str, Any]] = {tid: {"label": lab, "truth": m, "box": [], "box+siren": []}
                                         for tid, (lab, m) in motion_truth.items()}
    for k in range(seq.frames):
        t = k / seq.fps
        end = round((k + 1) / seq.fps * sr)
        res = perception.infer(video=_window(frames, k, n_video), audio=_audio_window(audio, end, n_audio),
                               sample_rate=sr)
        if end >= round(siren_window_s * sr):  # a window padded with silence would fake a rising level
            siren.add(_audio_window(audio, end, round(siren_window_s * sr)), t)
        tracks = tracker.update([b for b in res.boxes if b.score >= low_score], t)
        for tr in tracks:
            rows.append((k + 1, tr.track_id, tr.label, list(tr.box)))
            scores.append(tr.score)
        # the motion answer of each tracked object that overlaps a true one of its class
        gt = truth.get(k + 1, [])
        for tr in tracks:
            if tr.t_last - tr.t_first < 1.0:
                continue
            cands = [r for r in gt if r[2] == tr.label]
            if not cands:
                continue
            iou = iou_matrix(np.array([tr.box]), np.array([r[3] for r in cands]))[0]
            j = int(np.argmax(iou))
            if iou[j] < MATCH_IOU:
                continue
            m = motion[cands[j][1]]
            kw = {"window_s": motion_window_s, "rate_threshold": motion_threshold}
            m["box"].append(estimate_motion(tr, **kw).motion)
            m["box+siren"].append(estimate_motion(tr, siren=siren, **kw).motion)
    return {"rows": rows, "scores": scores, "motion": motion}


def _by_frame_all(rows: Sequence[Row]) -> dict[int, list[Row]]:
    out: dict[int, list[Row]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(r)
    return out


def _accuracy(answers: list[tuple[str, str]]) -> float | None:
    return sum(a == b for a, b in answers) / len(answers) if answers else None


def evaluate_bundle(bundle: str | Path, data: str | Path, *, backends: Sequence[str] = ("onnxruntime",),
                    out: str | Path | None = None, low_score: float = 0.1,
                    tracker_options: dict[str, Any] | None = None, motion_threshold: float = MOTION_THRESHOLD,
                    progress: bool = False) -> dict[str, Any]:
    """Track every sequence under ``data`` with ``bundle`` and score the tracks and the motion answers.

    Args:
        bundle: a bundle folder.
        data: a folder of sequences (``fusionedge track sequences``), or one sequence folder.
        backends: backends to try, in order.
        out: where to write each sequence's tracker output (``<out>/<name>.txt``, MOTChallenge rows).
        low_score: the lowest detection score given to the tracker.
        tracker_options: keyword arguments of :class:`~fusionedge.sdk.tracking.Tracker`.
        motion_threshold: the closing rate (1/s) below which an object is stationary.
        progress: a progress bar over the sequences on stderr.

    Returns:
        ``{"sequences", "frames", "seconds", "per_class": mot_metrics(...), "hota": {...} or None,
        "motion": {label: {"box": accuracy, "box+siren": accuracy, "frames": n}}}``; ``motion``'s
        ``box+siren`` differs from ``box`` only for the emergency vehicle.

    Raises:
        DataError: no sequence under ``data``, or a malformed one.
        BundleError, BackendError: the bundle cannot be loaded or run.
    """
    from fusionedge.sdk.perception import Perception

    data = Path(data)
    folders = [data] if (data / "truth.json").is_file() else sorted(
        p for p in data.iterdir() if (p / "truth.json").is_file()) if data.is_dir() else []
    if not folders:
        raise DataError(f"{data}: no sequence folder (with truth.json) found")
    seqs = [read_sequence(f) for f in folders]
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scored = []
    answers: dict[str, dict[str, list[tuple[str, str]]]] = {}
    with Perception.load(bundle, backends, score_threshold=min(low_score, 0.3), top_k=50) as perception:
        for seq in tqdm(seqs, desc="sequences", unit="seq", disable=not progress):
            result = track_sequence(perception, seq, low_score=low_score, tracker_options=tracker_options,
                                    motion_threshold=motion_threshold)
            scored.append((seq.name, seq.truth, result["rows"], seq.frames))
            if out is not None:
                write_mot_rows(Path(out) / f"{seq.name}.txt", result["rows"], result["scores"])
            for m in result["motion"].values():
                a = answers.setdefault(m["label"], {"box": [], "box+siren": []})
                a["box"] += [(x, m["truth"]) for x in m["box"]]
                a["box+siren"] += [(x, m["truth"]) for x in m["box+siren"]]
    seconds = time.perf_counter() - t0
    motion = {label: {"box": _accuracy(a["box"]), "box+siren": _accuracy(a["box+siren"]), "frames": len(a["box"])}
              for label, a in answers.items() if a["box"]}
    return {"sequences": len(seqs), "frames": sum(s.frames for s in seqs), "seconds": round(seconds, 2),
            "fps_processed": round(sum(s.frames for s in seqs) / seconds, 2) if seconds > 0 else math.nan,
            "per_class": mot_metrics(scored), "hota": hota(scored), "motion": motion}
