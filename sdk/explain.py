"""Where the model looked and when it listened: occlusion evidence maps computed through the runtime.

A decision's evidence is measured, not read off the network: each region of the clip is masked in
turn and the clip is run again on the bundle's own backend. A region whose masking lowers the
decided event's score is evidence for the decision; the larger the fall, the stronger the evidence.
Three kinds of region are masked, all in the same batched calls:

* **cells** — a square of ``cell`` model-input pixels (default 16, the stride of the fusion's video
  tokens) set to the mean colour (0 after normalisation) in every frame: *where* it looked;
* **frames** — one of the ``T`` clip frames set to the mean colour: *when* it looked;
* **audio segments** — one of ``audio_segments`` equal slices of the window silenced: *when* it
  listened.

The score is the decision's margin over the background event (``logit_e - logit_none``, see
:mod:`fusionedge.sdk.attribution`), computed from the logits; unlike the probability it does not
saturate near 1, so a confident decision still shows which regions carry it. Occlusion was chosen over the fusion's attention weights because it needs no gradient
and no second export, runs on every fused bundle and backend (an int8 or a TensorRT bundle
included) and measures what the output depends on, which attention weights — a routing of
information inside one layer — do not; :func:`deletion_test` checks that claim on every clip. The
map also carries the clip's :class:`~fusionedge.sdk.attribution.Attribution` (the same batch
withholds each modality).

:func:`deletion_test` is the faithfulness check: masking the ``k`` most-attributed cells (or audio
segments) together must lower the decided event's probability more than masking ``k`` random ones.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from fusionedge.sdk.attribution import Attribution, attribute, decision_margin, withheld_inputs
from fusionedge.sdk.errors import InputError
from fusionedge.sdk.media import read_audio_window, read_video
from fusionedge.sdk.postprocess import softmax
from fusionedge.sdk.preprocess import clip_frame_indices, preprocess_audio, preprocess_video

if TYPE_CHECKING:
    from fusionedge.sdk.perception import Perception

__all__ = ["DeletionResult", "EvidenceMap", "ExplainedClip", "deletion_test", "explain_clip", "explain_inputs"]


@dataclass(frozen=True)
class EvidenceMap:
    """The evidence for one decision: how much masking each region lowers the decision's margin.

    Positive values support the decision, negative ones speak against it. A modality that was
    missing has no map (None).
    """

    event: str  # the decided event
    score: float  # its probability on the whole clip
    cell: int  # model-input pixels per side of a spatial cell
    spatial: np.ndarray | None  # (rows, cols): each cell masked in every frame
    frames: np.ndarray | None  # (T,): each clip frame masked
    frame_times: tuple[float, ...]  # s from the window start, the times the model is built for
    audio: np.ndarray | None  # (K,): each audio segment silenced
    audio_edges: tuple[float, ...]  # (K + 1) segment edges, s from the window start
    attribution: Attribution

    def to_dict(self) -> dict:
        """A JSON-ready dict (maps as nested lists rounded to 4 decimals)."""
        def rounded(a: np.ndarray | None) -> list | None:
            return None if a is None else np.round(a.astype(np.float64), 4).tolist()

        return {"event": self.event, "score": round(self.score, 6), "cell": self.cell,
                "spatial": rounded(self.spatial), "frames": rounded(self.frames),
                "frame_times": [round(t, 4) for t in self.frame_times], "audio": rounded(self.audio),
                "audio_edges": [round(t, 4) for t in self.audio_edges],
                "attribution": self.attribution.to_dict()}


@dataclass(frozen=True)
class ExplainedClip:
    """An evidence map with what a person needs to see it: the frames the model saw and its audio."""

    map: EvidenceMap
    frames: np.ndarray | None  # (T, H, W, 3) uint8 RGB at the file's size (after the reader's shrink)
    audio: np.ndarray | None  # (S,) float32 mono at ``sample_rate``: the model's audio input
    sample_rate: int
    clip_seconds: float
    input_hw: tuple[int, int]  # the model input's height and width (the cells' pixels)


@dataclass(frozen=True)
class DeletionResult:
    """One deletion test: the decided event's probability drop, most-attributed vs random regions."""

    modality: str  # "video" (cells) or "audio" (segments)
    k: int  # regions masked at once
    of: int  # regions there are
    top_drop: float  # drop with the k most-attributed regions masked
    random_drop: float  # mean drop over the random draws of k regions

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"modality": self.modality, "k": self.k, "of": self.of, "top_drop": round(self.top_drop, 6),
                "random_drop": round(self.random_drop, 6)}


def explain_inputs(
    perception: Perception, video: np.ndarray, audio: np.ndarray, presence: np.ndarray, *,
    cell: int = 16, audio_segments: int = 10,
) -> EvidenceMap:
    """The evidence map of one preprocessed clip (see the module docstring).

    Args:
        perception: a loaded fused model.
        video: ``(T, 3, H, W)`` float32, preprocessed.
        audio: ``(S,)`` float32, preprocessed.
        presence: ``(2,)`` 1 where the modality is present (video, audio).
        cell: spatial cell size in model-input pixels, >= 1 (the last row/column may be narrower).
        audio_segments: slices of the window silenced one at a time, >= 1.

    Returns:
        The :class:`EvidenceMap`.

    Raises:
        InputError: an imported (non-fused) model or one without an event head, bad shapes, or a bad
            ``cell`` / ``audio_segments``.
        BackendError: the backend failed to run.
    """
    video, audio, presence = _check(perception, video, audio, presence)
    cell, audio_segments = _positive(cell, "cell"), _positive(audio_segments, "audio_segments")
    g = perception.geometry
    has_video, has_audio = bool(presence[0] >= 0.5), bool(presence[1] >= 0.5)
    grid = (math.ceil(g.height / cell), math.ceil(g.width / cell))
    seg_edges = np.linspace(0, g.audio_samples, audio_segments + 1).round().astype(int)
    videos, audios, presences, rows = withheld_inputs(video, audio, presence)
    extra_v: list[np.ndarray] = []
    extra_a: list[np.ndarray] = []
    if has_video:
        for r in range(grid[0]):
            for c in range(grid[1]):
                v = video.copy()
                v[:, :, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = 0.0
                extra_v.append(v)
        for t in range(video.shape[0]):
            v = video.copy()
            v[t] = 0.0
            extra_v.append(v)
    extra_a_start = len(extra_v)
    if has_audio:
        for k in range(audio_segments):
            a = audio.copy()
            a[seg_edges[k] : seg_edges[k + 1]] = 0.0
            extra_a.append(a)
    n_extra = len(extra_v) + len(extra_a)
    all_v = np.concatenate([videos, np.stack(extra_v) if extra_v else np.empty((0, *video.shape), np.float32),
                            np.repeat(video[None], len(extra_a), axis=0)])
    all_a = np.concatenate([audios, np.repeat(audio[None], len(extra_v), axis=0),
                            np.stack(extra_a) if extra_a else np.empty((0, *audio.shape), np.float32)])
    all_p = np.concatenate([presences, np.repeat(presence[None], n_extra, axis=0)])
    out = perception.infer_batch(all_v, all_a, all_p)
    if "event_logits" not in out:
        raise InputError(f"{perception.model} has no event head: it decides no event to explain")
    logits = np.asarray(out["event_logits"], np.float64)
    decided = int(np.argmax(logits[0]))
    events = perception.labels["events"]
    margins = decision_margin(logits, decided, events)
    evidence = margins[0] - margins[len(rows):]  # (n_extra,)
    spatial = frames = audio_map = None
    if has_video:
        n_cells = grid[0] * grid[1]
        spatial = evidence[:n_cells].reshape(grid)
        frames = evidence[n_cells:extra_a_start]
    if has_audio:
        audio_map = evidence[extra_a_start:]
    t = int(g.clip_frames)
    frame_times = tuple(g.clip_seconds * i / (t - 1) for i in range(t)) if t > 1 else (float(g.clip_seconds),)
    return EvidenceMap(
        event=perception.labels["events"][decided],
        score=float(softmax(logits[0])[decided]),
        cell=cell, spatial=spatial, frames=frames, frame_times=frame_times, audio=audio_map,
        audio_edges=tuple(float(e) / g.sample_rate for e in seg_edges),
        attribution=attribute({k: v[: len(rows)] for k, v in out.items()}, rows, perception.labels, presence),
    )


def explain_clip(
    perception: Perception, video_path: str | os.PathLike | None, audio_path: str | os.PathLike | None = None,
    *, start_seconds: float = 0.0, cell: int = 16, audio_segments: int = 10,
) -> ExplainedClip:
    """Decode one clip window from files, preprocess it as the runtime does, and explain its decision.

    Args:
        perception: a loaded fused model.
        video_path: a video file or folder of images (None: audio only).
        audio_path: a WAV file (None: video only).
        start_seconds: where the window starts, >= 0.
        cell: see :func:`explain_inputs`.
        audio_segments: see :func:`explain_inputs`.

    Returns:
        The map, the ``T`` frames the model saw and the window's audio.

    Raises:
        InputError: no input at all, a bad start, or a non-fused model.
        MediaError: a file cannot be decoded.
        BackendError: the backend failed to run.
    """
    g = perception.geometry
    start = float(start_seconds)
    if not math.isfinite(start) or start < 0:
        raise InputError(f"start_seconds must be a finite number >= 0, got {start_seconds!r}")
    if video_path is None and audio_path is None:
        raise InputError("no input: give a video, an audio file, or both")
    frames = samples = None
    video_t = np.zeros((g.clip_frames, 3, g.height, g.width), np.float32)
    audio_t = np.zeros(g.audio_samples, np.float32)
    if video_path is not None:
        clip = read_video(video_path, max_seconds=g.clip_seconds, start_seconds=start,
                          downscale_to=(g.width, g.height))
        video_t = preprocess_video(clip.frames, clip.fps, g)
        frames = clip.frames[clip_frame_indices(clip.frames.shape[0], clip.fps, g)]
    if audio_path is not None:
        window = read_audio_window(audio_path, start, g.clip_seconds, target_rate=g.sample_rate)
        audio_t = preprocess_audio(window.samples, window.rate, g, start_seconds=window.start_seconds)
        samples = audio_t
    presence = np.array([video_path is not None, audio_path is not None], np.float32)
    emap = explain_inputs(perception, video_t, audio_t, presence, cell=cell, audio_segments=audio_segments)
    return ExplainedClip(map=emap, frames=frames, audio=samples, sample_rate=int(g.sample_rate),
                         clip_seconds=float(g.clip_seconds), input_hw=(int(g.height), int(g.width)))


def deletion_test(
    perception: Perception, video: np.ndarray, audio: np.ndarray, presence: np.ndarray, emap: EvidenceMap, *,
    fraction: float = 0.2, trials: int = 8, seed: int = 0,
) -> dict[str, DeletionResult]:
    """Mask the most-attributed regions together and compare with as many random ones.

    For the cells (every frame) and for the audio segments of ``emap``, the ``k = max(1,
    round(fraction * n))`` regions with the largest evidence are masked at once, and so are ``k``
    regions drawn at random ``trials`` times; the drops of the decided event's probability are
    compared. All rows run in one batched call.

    Args:
        perception: the model ``emap`` was computed with.
        video, audio, presence: the same preprocessed clip.
        emap: its :func:`explain_inputs` map.
        fraction: share of the regions masked, in (0, 1].
        trials: random draws, >= 1.
        seed: of the random draws (the result is reproducible).

    Returns:
        ``{"video": ..., "audio": ...}`` for each modality that has a map.

    Raises:
        InputError: a bad ``fraction`` or ``trials``, or inputs that do not fit the map.
        BackendError: the backend failed to run.
    """
    video, audio, presence = _check(perception, video, audio, presence)
    if not 0.0 < float(fraction) <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
    trials = _positive(trials, "trials")
    rng = np.random.default_rng(seed)
    g = perception.geometry
    plans: list[tuple[str, int, int]] = []  # (modality, k, n) per tested modality
    rows_v: list[np.ndarray] = []
    rows_a: list[np.ndarray] = []
    if emap.spatial is not None:
        scores = emap.spatial.reshape(-1)
        n = scores.size
        k = max(1, round(float(fraction) * n))
        chosen = [np.argsort(-scores, kind="stable")[:k]] + [rng.choice(n, k, replace=False) for _ in range(trials)]
        cols = emap.spatial.shape[1]
        for cells in chosen:
            v = video.copy()
            for i in cells:
                r, c = divmod(int(i), cols)
                v[:, :, r * emap.cell : (r + 1) * emap.cell, c * emap.cell : (c + 1) * emap.cell] = 0.0
            rows_v.append(v)
            rows_a.append(audio)
        plans.append(("video", k, n))
    if emap.audio is not None:
        n = emap.audio.size
        k = max(1, round(float(fraction) * n))
        edges = np.round(np.asarray(emap.audio_edges) * g.sample_rate).astype(int)
        if edges[-1] != audio.shape[0] or len(edges) != n + 1:
            raise InputError("the audio does not fit the evidence map's segments")
        chosen = [np.argsort(-emap.audio, kind="stable")[:k]] + [rng.choice(n, k, replace=False)
                                                                 for _ in range(trials)]
        for segs in chosen:
            a = audio.copy()
            for i in segs:
                a[edges[i] : edges[i + 1]] = 0.0
            rows_v.append(video)
            rows_a.append(a)
        plans.append(("audio", k, n))
    if not plans:
        return {}
    all_v = np.concatenate([video[None], np.stack(rows_v)])
    all_a = np.concatenate([audio[None], np.stack(rows_a)])
    all_p = np.repeat(presence[None], len(all_v), axis=0)
    probs = softmax(np.asarray(perception.infer_batch(all_v, all_a, all_p)["event_logits"], np.float64))
    decided = perception.labels["events"].index(emap.event)
    drops = probs[0, decided] - probs[1:, decided]
    results: dict[str, DeletionResult] = {}
    for j, (modality, k, n) in enumerate(plans):
        block = drops[j * (trials + 1) : (j + 1) * (trials + 1)]
        results[modality] = DeletionResult(modality, k, n, float(block[0]), float(block[1:].mean()))
    return results


def _check(perception: Perception, video: np.ndarray, audio: np.ndarray,
           presence: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if perception.generic is not None:
        raise InputError(f"{perception.model} is an imported {perception.generic.task} model; evidence maps "
                         f"explain the fused camera + audio model")
    g = perception.geometry
    video = np.asarray(video, np.float32)
    audio = np.asarray(audio, np.float32)
    presence = np.asarray(presence, np.float32).reshape(-1)
    if video.shape != (g.clip_frames, 3, g.height, g.width):
        raise InputError(f"video must be ({g.clip_frames}, 3, {g.height}, {g.width}), got {video.shape}")
    if audio.shape != (g.audio_samples,):
        raise InputError(f"audio must be ({g.audio_samples},), got {audio.shape}")
    if presence.shape != (2,) or not (presence >= 0.5).any():
        raise InputError(f"presence must be 2 values with at least one modality present, got {presence.tolist()}")
    return video, audio, presence


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)
