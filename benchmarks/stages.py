"""The work a benchmark times: clips on disk, their preprocessed tensors, and the two pipelines.

Two pipelines run a batch of sample indices and return per-stage times (milliseconds):

:class:`EnginePipeline` (``mode="engine"``)
    ``batch`` (gather the samples' preprocessed tensors, kept in RAM, into one batch) + ``infer``
    (the raw backend call). What a backend vendor would quote.
:class:`E2EPipeline` (``mode="e2e"``)
    ``decode`` (read the mp4 and wav files) + ``preprocess`` (resize, normalize, resample, with the
    bundle's own geometry) + ``batch`` + ``infer`` + ``postprocess`` (softmax, sigmoid, CenterNet
    boxes in the original frame's pixels) — exactly the steps of
    :meth:`fusionedge.sdk.Perception.infer`, batched. What an application sees.

Both call an *engine*: anything with ``name`` and ``infer(feeds) -> {output: array}`` — an SDK
:class:`~fusionedge.sdk.backends.Backend`, or the PyTorch eager baseline.

What a sample is made into follows the bundle: the fused model's ``video``/``audio``/``presence``
(:class:`FusedInputs`), or an imported model's one declared input — the last frame of the window for
an image classifier or detector, the waveform for an audio classifier — decoded by its own declared
heads (:class:`ImportedInputs`, the steps of ``Perception.infer`` on such a bundle).

Clips come from a data-set manifest (``--data``) or, without one, from :func:`synthesize_clips`,
which writes a few short mp4 + wav files so that decoding is always part of the end-to-end time.
"""

from __future__ import annotations

import math
import time
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fusionedge.sdk.datamanifest import Sample, read_manifest
from fusionedge.sdk.errors import DataError, InputError, MediaError
from fusionedge.sdk.generic import GenericModel, in_source_pixels, prepare_file_input, read_file_input
from fusionedge.sdk.media import read_audio, read_video
from fusionedge.sdk.postprocess import Detection, decode_centernet, sigmoid, softmax
from fusionedge.sdk.preprocess import preprocess_audio, preprocess_video
from fusionedge.sdk.spec import InputGeometry

__all__ = [
    "STAGES",
    "Decoded",
    "E2EPipeline",
    "Engine",
    "EnginePipeline",
    "FusedInputs",
    "ImportedInputs",
    "StageLog",
    "TensorCache",
    "load_clips",
    "model_inputs",
    "synthesize_clips",
]

#: Stage names, in pipeline order.
STAGES = ("decode", "preprocess", "batch", "infer", "postprocess")


class Engine(Protocol):
    """What a pipeline calls: an SDK backend or the eager baseline."""

    name: str

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Decoded:
    """One sample's answer after post-processing."""

    event_scores: np.ndarray  # (E,) scores over labels["events"] (empty when the model scores none)
    tag_scores: np.ndarray | None  # (A,) sigmoid; None when the sample has no audio or the model no tags
    boxes: list[Detection]  # in the original frame's pixels
    frame_wh: tuple[int, int] | None  # (width, height) of the original frames; None for an audio model


@dataclass
class StageLog:
    """Per-call stage times (ms) and wall times of a pipeline, for the stage breakdown."""

    calls: list[dict[str, float]] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)  # samples per call

    def add(self, timings: dict[str, float], n: int) -> None:
        self.calls.append(timings)
        self.samples.append(n)

    def clear(self) -> None:
        self.calls.clear()
        self.samples.clear()

    def totals_ms(self) -> np.ndarray:
        """Wall time of every call (the sum of its stages), ms."""
        return np.array([sum(c.values()) for c in self.calls], dtype=np.float64)

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"mean", "p50", "p90", "share"}}`` per call, for the stages that ran.

        ``share`` is the stage's fraction of the summed mean time of all stages.
        """
        if not self.calls:
            return {}
        out: dict[str, dict[str, float]] = {}
        names = [s for s in STAGES if any(s in c for c in self.calls)]
        total = sum(float(np.mean([c.get(s, 0.0) for c in self.calls])) for s in names) or 1.0
        for s in names:
            v = np.array([c.get(s, 0.0) for c in self.calls], dtype=np.float64)
            out[s] = {
                "mean": _r(v.mean()),
                "p50": _r(np.percentile(v, 50)),
                "p90": _r(np.percentile(v, 90)),
                "share": round(float(v.mean()) / total, 4),
            }
        return out


def _r(x: float) -> float:
    return round(float(x), 4)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


# ------------------------------------------------------------------------------------------ inputs


class FusedInputs:
    """The fused camera + audio model: ``video``, ``audio`` and ``presence``, and its five heads.

    Args:
        geometry: the bundle's input geometry.
        labels: the bundle's ``{"events", "objects", "audio_tags"}``.
    """

    def __init__(self, geometry: InputGeometry, labels: Mapping[str, Sequence[str]]) -> None:
        self.geometry = geometry
        self.labels = labels

    def decode(self, sample: Sample) -> tuple[np.ndarray, float, np.ndarray | None, int]:
        """``(frames or None, fps, audio or None, audio rate)`` of one sample's files."""
        g = self.geometry
        frames, fps = None, 0.0
        if sample.video is not None:  # an audio-only clip has none
            clip = read_video(sample.video, max_seconds=g.clip_seconds)
            frames, fps = clip.frames, clip.fps
        if sample.audio is None:
            return frames, fps, None, 0
        samples, rate = read_audio(sample.audio)
        return frames, fps, samples, rate

    def preprocess(self, raw: Any) -> tuple[np.ndarray, ...]:
        """``(video (T,3,H,W), audio (S,), presence (2,))``; a missing audio is zeros with presence 0."""
        frames, fps, audio, rate = raw
        g = self.geometry
        if frames is None:
            video = np.zeros((g.clip_frames, 3, g.height, g.width), np.float32)
        else:
            video = preprocess_video(frames, fps, g)
        presence = np.array([frames is not None, audio is not None], np.float32)
        if audio is None:
            return video, np.zeros(g.audio_samples, np.float32), presence
        return video, preprocess_audio(audio, rate, g), presence

    def stack(self, items: Sequence[tuple[np.ndarray, ...]]) -> dict[str, np.ndarray]:
        """The engine feed of a batch of preprocessed samples."""
        if len(items) == 1:  # a view, no copy: batch 1 costs nothing to assemble
            v, a, p = items[0]
            return {"video": v[None], "audio": a[None], "presence": p[None]}
        return {
            "video": np.stack([x[0] for x in items]),
            "audio": np.stack([x[1] for x in items]),
            "presence": np.stack([x[2] for x in items]),
        }

    def postprocess(
        self, out: Mapping[str, np.ndarray], k: int, raw: Any, prepared: Any, score_threshold: float, top_k: int
    ) -> Decoded:
        """Sample ``k`` of the outputs: softmax events, sigmoid tags, CenterNet boxes in frame pixels.

        A head the task lacks has no output: no event scores, no tags or no boxes.
        """
        g = self.geometry
        frames, _, audio, _ = raw
        h, w = (0, 0) if frames is None else frames.shape[1:3]
        boxes = [] if "det_heatmap" not in out or frames is None else decode_centernet(
            out["det_heatmap"][k],
            out["det_size"][k],
            out["det_offset"][k],
            stride=g.output_stride,
            labels=self.labels["objects"],
            score_threshold=score_threshold,
            top_k=top_k,
            out_wh=(w, h),
            in_wh=(g.width, g.height),
        )
        has_tags = audio is not None and "audio_tag_logits" in out
        tags = sigmoid(out["audio_tag_logits"][k].astype(np.float64)) if has_tags else None
        events = softmax(out["event_logits"][k].astype(np.float64)) if "event_logits" in out else np.zeros(0)
        return Decoded(events, tags, boxes, None if frames is None else (w, h))


class ImportedInputs:
    """An imported model (``fusionedge import``): its one declared input and its declared decoders.

    Args:
        model: the bundle's :class:`~fusionedge.sdk.generic.GenericModel`.
        geometry: the bundle's input geometry (an audio model's rate and length).
    """

    def __init__(self, model: GenericModel, geometry: InputGeometry) -> None:
        self.model = model
        self.geometry = geometry

    def decode(self, sample: Sample) -> Any:
        """The window's last frame (image models) or waveform (audio models) of one sample's files."""
        return read_file_input(self.model, self.geometry, video_path=sample.video, audio_path=sample.audio)

    def preprocess(self, raw: Any) -> tuple[np.ndarray, Any]:
        """``(input tensor, image transform or None)``."""
        return prepare_file_input(self.model, self.geometry, raw)

    def stack(self, items: Sequence[tuple[np.ndarray, Any]]) -> dict[str, np.ndarray]:
        """The engine feed of a batch of preprocessed samples."""
        if len(items) == 1:
            return self.model.feed(items[0][0][None])
        return self.model.feed(np.stack([x[0] for x in items]))

    def postprocess(
        self, out: Mapping[str, np.ndarray], k: int, raw: Any, prepared: Any, score_threshold: float, top_k: int
    ) -> Decoded:
        """Sample ``k`` decoded by the model's declared heads; boxes in the file's own pixels."""
        transform = prepared[1]
        d = self.model.decode(out, index=k, transform=transform, score_threshold=score_threshold, top_k=top_k)
        labels = self.model.labels
        events = np.array([d.scores[e] for e in labels["events"]], np.float64) if d.scores else np.zeros(0)
        tags = np.array([d.audio_tags[t] for t in labels["audio_tags"]], np.float64) if d.audio_tags else None
        return Decoded(events, tags, in_source_pixels(d.boxes, transform, raw.source_wh), raw.source_wh)


def model_inputs(
    geometry: InputGeometry, labels: Mapping[str, Sequence[str]], model: GenericModel | None = None
) -> FusedInputs | ImportedInputs:
    """The input handling of a bundle: :class:`ImportedInputs` for an imported model, else :class:`FusedInputs`."""
    return ImportedInputs(model, geometry) if model is not None else FusedInputs(geometry, labels)


class TensorCache:
    """Preprocessed tensors of the clips that LoadGen asked to hold in memory (its "RAM").

    Args:
        samples: the clips.
        geometry: the bundle's input geometry.
        model: an imported model's declared interface (None: the fused model).
    """

    def __init__(
        self, samples: Sequence[Sample], geometry: InputGeometry, model: GenericModel | None = None
    ) -> None:
        self.samples = list(samples)
        self.geometry = geometry
        self.inputs = model_inputs(geometry, {}, model)
        self._cache: dict[int, tuple[np.ndarray, ...]] = {}

    def load(self, indices: Sequence[int]) -> None:
        """Decode and preprocess these samples (those not yet held).

        Raises:
            MediaError: a clip cannot be decoded.
        """
        for i in indices:
            if i not in self._cache:
                self._cache[i] = self.inputs.preprocess(self.inputs.decode(self.samples[i]))

    def unload(self, indices: Sequence[int]) -> None:
        """Drop nothing: tensors are shared by every configuration of a run (LoadGen may ask again)."""

    def get(self, i: int) -> tuple[np.ndarray, ...]:
        """Sample ``i``'s preprocessed tensors (loading it if needed): ``(video (T,3,H,W), audio (S,),
        presence (2,))`` for the fused model, ``(input tensor, transform)`` for an imported one."""
        if i not in self._cache:
            self.load([i])
        return self._cache[i]

    def feeds(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The engine feed of these samples' tensors, batched."""
        return self.inputs.stack([self.get(i) for i in indices])

    def __len__(self) -> int:
        return len(self.samples)


# --------------------------------------------------------------------------------------- pipelines


class EnginePipeline:
    """Engine-only: the raw engine call on preprocessed tensors held in RAM.

    Args:
        engine: a loaded backend (or the eager baseline).
        cache: the preprocessed tensors.
    """

    mode = "engine"

    def __init__(self, engine: Engine, cache: TensorCache) -> None:
        self.engine = engine
        self.cache = cache
        self.log = StageLog()

    def __call__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Run one batch; returns the raw outputs ``{name: (B, ...)}``."""
        t0 = time.perf_counter()
        feeds = self.cache.feeds(indices)
        t_batch = _ms(t0)
        t0 = time.perf_counter()
        out = self.engine.infer(feeds)
        self.log.add({"batch": t_batch, "infer": _ms(t0)}, len(indices))
        return out


class E2EPipeline:
    """End to end: decode the files, preprocess, batch, run the engine, post-process every sample.

    Args:
        engine: a loaded backend (or the eager baseline).
        samples: the clips.
        geometry: the bundle's input geometry.
        labels: the bundle's ``{"events", "objects", "audio_tags"}``.
        score_threshold: lowest detection score kept (Perception's default where a bundle has no fitted
            per-class thresholds, 0.3; evaluation uses 0.05).
        top_k: most boxes per sample.
        model: an imported model's declared interface (None: the fused model).
    """

    mode = "e2e"

    def __init__(
        self,
        engine: Engine,
        samples: Sequence[Sample],
        geometry: InputGeometry,
        labels: Mapping[str, Sequence[str]],
        *,
        score_threshold: float = 0.3,
        top_k: int = 50,
        model: GenericModel | None = None,
    ) -> None:
        self.engine = engine
        self.samples = list(samples)
        self.geometry = geometry
        self.labels = labels
        self.inputs = model_inputs(geometry, labels, model)
        self.score_threshold = float(score_threshold)
        self.top_k = int(top_k)
        self.log = StageLog()

    def __call__(self, indices: Sequence[int]) -> list[Decoded]:
        """Run one batch of samples from their files; returns one :class:`Decoded` per index."""
        inputs = self.inputs
        t0 = time.perf_counter()
        raw = [inputs.decode(self.samples[i]) for i in indices]
        t_decode = _ms(t0)
        t0 = time.perf_counter()
        tensors = [inputs.preprocess(r) for r in raw]
        t_pre = _ms(t0)
        t0 = time.perf_counter()
        feeds = inputs.stack(tensors)
        t_batch = _ms(t0)
        t0 = time.perf_counter()
        out = self.engine.infer(feeds)
        t_infer = _ms(t0)
        t0 = time.perf_counter()
        decoded = [
            inputs.postprocess(out, k, r, t, self.score_threshold, self.top_k)
            for k, (r, t) in enumerate(zip(raw, tensors))
        ]
        self.log.add(
            {
                "decode": t_decode,
                "preprocess": t_pre,
                "batch": t_batch,
                "infer": t_infer,
                "postprocess": _ms(t0),
            },
            len(indices),
        )
        return decoded


# -------------------------------------------------------------------------------------------- clips


def load_clips(
    data: str | Path,
    labels: Mapping[str, Sequence[str]],
    *,
    require_labels: bool = False,
    limit: int | None = None,
    model: GenericModel | None = None,
) -> list[Sample]:
    """Read the clips of a data-set manifest (see :mod:`fusionedge.sdk.datamanifest`).

    Args:
        data: ``manifest.jsonl`` or its folder.
        labels: the bundle's label vocabularies (labels in the manifest must be among them).
        require_labels: every sample must have an event label (accuracy mode).
        limit: keep only the first ``limit`` samples.
        model: an imported model's declared interface. Then labels are checked only for accuracy
            (``require_labels``), and only the kinds it scores (any other label is accepted, as
            ``fusionedge eval`` does); ``require_labels`` keeps the samples labelled for what it scores,
            and an audio model keeps the samples that have audio.

    Returns:
        The samples, with absolute media paths.

    Raises:
        DataError: the manifest is missing or invalid (file, line and field named), or, for an imported
            model, no sample is left to run.
    """
    if model is None:
        samples = read_manifest(
            data,
            require_labels=require_labels,
            events=labels["events"],
            audio_tags=labels["audio_tags"],
            objects=labels["objects"],
        )
        return samples[:limit] if limit is not None else samples
    vocab = {k: (list(labels[k]) or None) if require_labels else None for k in ("events", "audio_tags", "objects")}
    samples = read_manifest(data, require_labels=False, **vocab)
    if model.modality == "audio":
        samples = [s for s in samples if s.audio is not None]
    if require_labels and labels["events"]:
        samples = [s for s in samples if s.event is not None]
    samples = samples[:limit] if limit is not None else samples
    if not samples:
        raise DataError(f"{data}: no samples with the media and labels a {model.task} model runs on")
    return samples


def synthesize_clips(
    folder: str | Path,
    geometry: InputGeometry,
    *,
    count: int = 8,
    width: int = 320,
    height: int = 192,
    fps: float = 12.0,
    sample_rate: int = 16000,
    seed: int = 0,
) -> list[Sample]:
    """Write ``count`` short clips (mp4 + mono 16-bit wav) of moving boxes over a road-like scene.

    The clips cover one model window (``geometry.clip_seconds``) at the given size and rate; the
    defaults match the synthetic training data (320x192 at 12 fps, 16 kHz audio). They carry no
    labels: they time decoding and preprocessing, not accuracy.

    Args:
        folder: where to write (created).
        geometry: the bundle's geometry (for the clip length).
        count: number of clips, >= 1.
        width, height: frame size in pixels, even, >= 16.
        fps: frames per second, > 0.
        sample_rate: audio rate in Hz.
        seed: the content's random seed.

    Returns:
        Samples pointing at the files (``event`` is None).

    Raises:
        InputError: bad sizes or counts.
        MediaError: OpenCV cannot write mp4 here.
    """
    import cv2

    if count < 1 or width < 16 or height < 16 or width % 2 or height % 2 or not fps > 0:
        raise InputError(
            f"synthetic clips need count >= 1, even width/height >= 16 and fps > 0; got "
            f"count {count}, {width}x{height}, fps {fps}"
        )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    seconds = float(geometry.clip_seconds)
    n_frames = max(1, math.ceil(seconds * fps))
    n_audio = max(1, round(seconds * sample_rate))
    rng = np.random.default_rng(seed)
    samples = []
    for c in range(count):
        video_path, audio_path = out / f"clip{c:03d}.mp4", out / f"clip{c:03d}.wav"
        writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise MediaError(f"{video_path}: OpenCV cannot write mp4 (mp4v) here")
        boxes = rng.uniform(0, 1, (4, 6))  # x, y, w, h, vx, vy per box (fractions of the frame)
        colors = rng.integers(40, 255, (4, 3))
        base = np.zeros((height, width, 3), np.uint8)
        base[: height // 2] = (150, 110, 70)  # sky (BGR)
        base[height // 2 :] = (70, 70, 70)  # road
        try:
            for f in range(n_frames):
                frame = base.copy()
                for (x, y, bw, bh, vx, _), color in zip(boxes, colors, strict=True):
                    cx = int(((x + 0.05 * vx * f) % 1.0) * width)
                    cy = int((0.4 + 0.5 * y) * height)
                    sw, sh = int(10 + bw * width / 4), int(8 + bh * height / 4)
                    cv2.rectangle(frame, (cx, cy), (cx + sw, cy + sh), tuple(int(v) for v in color), -1)
                noise = rng.integers(0, 12, frame.shape, dtype=np.uint8)
                writer.write(cv2.add(frame, noise))
        finally:
            writer.release()
        t = np.arange(n_audio) / sample_rate
        tone = 0.3 * np.sin(2 * np.pi * (600 + 400 * np.sin(2 * np.pi * 2 * t)) * t)
        pcm = np.clip(tone + rng.normal(0, 0.02, n_audio), -1, 1)
        with wave.open(str(audio_path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            wav.writeframes((pcm * 32767).astype("<i2").tobytes())
        samples.append(Sample(id=f"clip{c:03d}", video=video_path, audio=audio_path, event=None))
    return samples
