"""Serve an imported single-input model: a classifier, a detector or an audio classifier.

A schema-2 bundle whose ``task`` is ``classify``, ``detect`` or ``audio-classify`` holds a user's own
ONNX model (``fusionedge import``). Its manifest declares the one input (an ``image`` with size,
layout, colour order, scale and normalization, or an ``audio`` waveform with its rate and length) and
how each output is decoded: ``softmax`` / ``sigmoid`` / ``none`` scores over a label list, ``yolo``
boxes, or the three CenterNet heads. :class:`GenericModel` checks that contract once at load, turns a
frame or a waveform into the input tensor, and decodes outputs into what a
:class:`~fusionedge.sdk.perception.Result` carries — class scores, audio tags, and boxes in the
original image's pixels — so :class:`~fusionedge.sdk.perception.Perception` serves it through the
same backends, fallbacks and self-test as the fused model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fusionedge.sdk.errors import BundleError, InputError
from fusionedge.sdk.image_input import ImageSpec, ImageTransform, preprocess_image
from fusionedge.sdk.postprocess import Detection, decode_centernet, decode_yolo, sigmoid, softmax
from fusionedge.sdk.preprocess import frame_window

if TYPE_CHECKING:
    from fusionedge.sdk.bundle import Bundle
    from fusionedge.sdk.perception import Perception, Result
    from fusionedge.sdk.spec import InputGeometry

__all__ = [
    "GENERIC_TASKS",
    "Decoded",
    "FileInput",
    "GenericModel",
    "file_tensor",
    "in_source_pixels",
    "infer_frames",
    "last_frame",
    "prepare_file_input",
    "read_file_input",
    "reader_target",
]

#: The tasks of an imported model.
GENERIC_TASKS = ("classify", "detect", "audio-classify")
_SCORES = ("softmax", "sigmoid", "none")
_CENTERNET = ("centernet-heatmap", "centernet-size", "centernet-offset")


def _fail(where: str, message: str) -> BundleError:
    return BundleError(f"manifest.json: field '{where}': {message}")


@dataclass(frozen=True)
class Decoded:
    """One sample's decoded outputs."""

    event: str  # the best class ("" when the model has no class output)
    scores: dict[str, float]
    audio_tags: dict[str, float]
    boxes: list[Detection]


@dataclass(frozen=True)
class GenericModel:
    """The declared interface of an imported model. Build with :meth:`from_bundle`."""

    task: str
    input_name: str
    modality: str  # "image" or "audio"
    image: ImageSpec | None
    audio_samples: int  # per-sample waveform length (audio inputs), else 0
    outputs: tuple[dict, ...]
    labels: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> GenericModel:
        """Check a generic bundle's manifest against what this runtime can serve.

        Raises:
            BundleError: naming the field: not one image or audio input, an input shape that
                disagrees with its declaration, an output without labels or whose shape does not fit
                its label count, or no output the task needs.
        """
        task = bundle.task
        if task not in GENERIC_TASKS:
            raise _fail("task", f"expected one of {', '.join(GENERIC_TASKS)}, got {task!r}")
        if len(bundle.inputs) != 1:
            raise _fail("inputs", f"an imported model has one input, this one has {len(bundle.inputs)}")
        entry = bundle.inputs[0]
        want = "audio" if task == "audio-classify" else "image"
        if entry["modality"] != want:
            raise _fail("inputs[0].modality", f"expected {want!r} for task {task}, got {entry['modality']!r}")
        image, samples = None, 0
        if want == "image":
            image = ImageSpec.from_entry(entry)
            expect = ["batch", *image.tensor_shape]
        else:
            samples = bundle.geometry.audio_samples
            pre = entry["preprocessing"]
            if int(pre["sample_rate"]) != bundle.geometry.sample_rate or entry["layout"] != "NS":
                raise _fail(
                    "inputs[0]", "an audio input is a mono waveform (layout NS) at the geometry's sample rate"
                )
            expect = ["batch", samples]
        if list(entry["shape"]) != expect:
            raise _fail("inputs[0].shape", f"expected {expect} from its preprocessing, got {entry['shape']}")
        labels = bundle.labels
        outputs = tuple(bundle.outputs)
        decodes = [o["decode"] for o in outputs]
        for i, out in enumerate(outputs):
            _check_output(out, i, labels)
        if task == "detect" and "yolo" not in decodes and not all(d in decodes for d in _CENTERNET):
            raise _fail("outputs", "a detector needs a 'yolo' output or the three centernet heads")
        if task != "detect" and not any(d in _SCORES and o.get("labels") for d, o in zip(decodes, outputs)):
            raise _fail("outputs", f"a {task} model needs a softmax, sigmoid or none output with labels")
        return cls(task, str(entry["name"]), want, image, samples, outputs, labels)

    # ------------------------------------------------------------------------------ inputs

    def image_tensor(self, image: np.ndarray) -> tuple[np.ndarray, ImageTransform]:
        """``(tensor, transform)`` of one ``(H, W, 3)`` uint8 RGB image (see :func:`preprocess_image`)."""
        if self.image is None:
            raise InputError(f"this {self.task} model takes audio, not an image")
        return preprocess_image(image, self.image)

    def feed(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The backend feed of a batch of input tensors."""
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    # ------------------------------------------------------------------------------ outputs

    def decode(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        index: int = 0,
        transform: ImageTransform | None = None,
        score_threshold: float = 0.3,
        top_k: int = 50,
    ) -> Decoded:
        """Decode sample ``index`` of raw outputs; boxes go through ``transform`` to image pixels.

        Raises:
            InputError: an output with NaN/Inf or a shape the decoder cannot read.
        """
        scores: dict[str, float] = {}
        tags: dict[str, float] = {}
        boxes: list[Detection] = []
        event = ""
        for out in self.outputs:
            decode, kind = out["decode"], out.get("labels")
            params = out.get("params", {})
            if decode in _SCORES and kind:
                raw = np.asarray(outputs[out["name"]][index], np.float64).reshape(-1)
                values = softmax(raw) if decode == "softmax" else sigmoid(raw) if decode == "sigmoid" else raw
                named = {str(k): float(v) for k, v in zip(self.labels[kind], values)}
                if kind == "audio_tags":
                    tags.update(named)
                elif not scores:
                    scores = named
                    event = str(self.labels[kind][int(np.argmax(values))])
            elif decode == "yolo":
                objects = self.labels["objects"]
                xyxy, s, cls = decode_yolo(
                    outputs[out["name"]][index],
                    num_classes=len(objects),
                    layout=str(params.get("layout", "channels-first")),
                    objectness=bool(params.get("objectness", False)),
                    class_scores=str(params.get("class_scores", "probabilities")),
                    score_threshold=score_threshold,
                    iou_threshold=float(params.get("iou_threshold", 0.45)),
                    top_k=top_k,
                    class_agnostic=bool(params.get("class_agnostic", False)),
                )
                boxes.extend(_detections(xyxy, s, cls, objects, transform))
            elif decode == "centernet-heatmap":
                boxes.extend(self._centernet(outputs, out, index, transform, score_threshold, top_k))
        boxes.sort(key=lambda b: -b.score)
        return Decoded(event, scores, tags, boxes[:top_k])

    def _centernet(
        self,
        outputs: Mapping[str, np.ndarray],
        heat: dict,
        index: int,
        transform: ImageTransform | None,
        score_threshold: float,
        top_k: int,
    ) -> list[Detection]:
        by_decode = {o["decode"]: o["name"] for o in self.outputs}
        spec = self.image
        assert spec is not None  # a detector has an image input (checked in from_bundle)
        hm = outputs[heat["name"]][index]
        stride = int(heat.get("params", {}).get("stride", max(1, spec.height // hm.shape[-2])))
        found = decode_centernet(
            hm,
            outputs[by_decode["centernet-size"]][index],
            outputs[by_decode["centernet-offset"]][index],
            stride=stride,
            labels=self.labels["objects"],
            score_threshold=score_threshold,
            top_k=top_k,
            in_wh=(spec.width, spec.height),
        )
        if transform is None or not found:
            return found
        mapped = transform.to_image(np.array([[d.x1, d.y1, d.x2, d.y2] for d in found]))
        return [Detection(d.label, d.score, *map(float, b)) for d, b in zip(found, mapped)]


def _check_output(out: Mapping[str, Any], i: int, labels: Mapping[str, tuple[str, ...]]) -> None:
    decode, kind, shape = out["decode"], out.get("labels"), list(out["shape"])
    where = f"outputs[{i}]"
    if decode in _SCORES and kind:
        n = len(labels[kind])
        if not n or shape != ["batch", n]:
            raise _fail(f"{where}.shape", f"expected ['batch', {n}] for the {n} labels.{kind}, got {shape}")
    elif decode == "yolo":
        if kind != "objects":
            raise _fail(f"{where}.labels", f"expected 'objects' for a yolo output, got {kind!r}")
        params = out.get("params", {})
        width = 4 + int(bool(params.get("objectness", False))) + len(labels["objects"])
        layout = params.get("layout", "channels-first")
        axis = 1 if layout == "channels-first" else 2
        if len(shape) != 3 or shape[axis] != width:
            extra = " + objectness" if params.get("objectness", False) else ""
            raise _fail(
                f"{where}.shape",
                f"expected {width} (4 box values{extra} + {len(labels['objects'])} classes) on axis {axis} "
                f"({layout}), got {shape}",
            )
    elif decode == "centernet-heatmap":
        n = len(labels["objects"])
        if len(shape) != 4 or shape[1] != n:
            raise _fail(
                f"{where}.shape", f"expected ['batch', {n}, h, w] for the {n} labels.objects, got {shape}"
            )


def _detections(
    xyxy: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    labels: tuple[str, ...],
    transform: ImageTransform | None,
) -> list[Detection]:
    mapped = transform.to_image(xyxy) if transform is not None else xyxy
    return [
        Detection(str(labels[int(c)]), float(s), *map(float, b)) for b, s, c in zip(mapped, scores, classes)
    ]


def reader_target(path: str | os.PathLike, spec: ImageSpec | None) -> tuple[int, int] | None:
    """The size the video reader may shrink a huge frame of ``path`` to, as it decodes it.

    For a stretched input that is the model size. For a letterboxed one it is the letterbox's own
    resize of the frame — its aspect ratio kept — so that shrinking early changes nothing the model
    sees; the frame size is read from the file's header (the first image of a folder).

    Returns:
        ``(width, height)``, or None where the model takes no image.
    """
    if spec is None:
        return None
    if spec.resize != "letterbox":
        return spec.width, spec.height
    import cv2
    from fusionedge.sdk.media import IMAGE_EXTENSIONS

    probe = Path(path)
    if probe.is_dir():
        images = sorted(f for f in probe.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        probe = images[0] if images else probe
    cap = cv2.VideoCapture(str(probe))
    try:
        w, h = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    finally:
        cap.release()
    if not (w > 0 and h > 0):  # unreadable here: the reader reports it
        return spec.width, spec.height
    r = min(spec.width / w, spec.height / h)
    return max(1, round(w * r)), max(1, round(h * r))


def in_source_pixels(
    boxes: list[Detection], transform: ImageTransform | None, source_wh: tuple[int, int] | None
) -> list[Detection]:
    """Boxes on a decoded frame, scaled to the file's own size where the reader shrank the frame."""
    if transform is None or source_wh is None or tuple(source_wh) == transform.image_wh:
        return boxes
    sx, sy = source_wh[0] / transform.image_wh[0], source_wh[1] / transform.image_wh[1]
    return [Detection(b.label, b.score, b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy) for b in boxes]


@dataclass(frozen=True)
class FileInput:
    """The first clip window of a media file, decoded for an imported model (not yet preprocessed)."""

    frame: np.ndarray | None  # (H, W, 3) uint8 RGB: the window's last frame (image models)
    source_wh: tuple[int, int] | None  # (width, height) of the file's own frames: boxes are scaled to it
    wave: np.ndarray | None  # (S, C) float32 samples with the resampler's context (audio models)
    rate: int  # Hz of ``wave``; 0 for an image
    start_seconds: float  # where the window starts within ``wave``


def read_file_input(
    model: GenericModel,
    geometry: InputGeometry,
    *,
    video_path: str | os.PathLike | None = None,
    audio_path: str | os.PathLike | None = None,
) -> FileInput:
    """Decode what the model takes from a clip's files, as ``Perception.infer(video_path=...)`` /
    ``infer(audio_path=...)`` does: the last frame of the first window (a huge frame shrunk as the
    reader decodes it, see :func:`reader_target`), or the first window of the waveform.

    Raises:
        InputError: the model's modality has no file here (an audio model and no ``audio_path``).
        MediaError: the file cannot be decoded.
    """
    from fusionedge.sdk.media import read_audio_window, read_video

    if model.modality == "audio":
        if audio_path is None:
            raise InputError(f"this {model.task} model takes audio; the sample has no audio file")
        clip = read_audio_window(audio_path, 0.0, geometry.clip_seconds, target_rate=geometry.sample_rate)
        return FileInput(None, None, clip.samples, clip.rate, clip.start_seconds)
    if video_path is None:
        raise InputError(f"this {model.task} model takes an image; the sample has no video or image file")
    clip = read_video(
        video_path, max_seconds=geometry.clip_seconds, downscale_to=reader_target(video_path, model.image)
    )
    return FileInput(last_frame(clip.frames, clip.fps, 0.0, geometry.clip_seconds), clip.size, None, 0, 0.0)


def prepare_file_input(
    model: GenericModel, geometry: InputGeometry, item: FileInput
) -> tuple[np.ndarray, ImageTransform | None]:
    """The model's input tensor of a decoded file (no batch axis), and the image transform (None for audio)."""
    from fusionedge.sdk.preprocess import preprocess_audio

    if item.wave is not None:
        return preprocess_audio(item.wave, item.rate, geometry, start_seconds=item.start_seconds), None
    assert item.frame is not None
    return model.image_tensor(item.frame)


def file_tensor(
    model: GenericModel,
    geometry: InputGeometry,
    *,
    video_path: str | os.PathLike | None = None,
    audio_path: str | os.PathLike | None = None,
) -> np.ndarray:
    """:func:`read_file_input` then :func:`prepare_file_input`: the tensor ``Perception.infer`` feeds.

    Raises:
        InputError, MediaError: as :func:`read_file_input`.
    """
    item = read_file_input(model, geometry, video_path=video_path, audio_path=audio_path)
    return prepare_file_input(model, geometry, item)[0]


def last_frame(frames: np.ndarray, fps: float, start_seconds: float, seconds: float) -> np.ndarray:
    """The last of ``frames`` in the window ``[start, start + seconds)`` (the frame a result is about).

    Raises:
        InputError: the window starts after the last frame, or a bad fps / start / length.
    """
    first, stop = frame_window(fps, start_seconds, seconds)
    n = frames.shape[0]
    if first >= n:
        raise InputError(f"start_seconds {start_seconds} is past the end of the {n} frames ({n / fps:.3f} s)")
    return frames[min(stop if stop is not None else n, n) - 1]


def infer_frames(
    perception: Perception,
    *,
    video: np.ndarray | None = None,
    fps: float | None = None,
    video_path: str | os.PathLike | None = None,
    start_seconds: float = 0.0,
    seconds: float | None = None,
    batch_size: int = 8,
) -> list[tuple[float, Result]]:
    """Run an imported image model on every frame of ``[start, start + seconds)`` of a video.

    Args:
        perception: a :class:`~fusionedge.sdk.perception.Perception` holding an image classifier or detector.
        video: ``(N, H, W, 3)`` uint8 RGB frames, with their ``fps``; or ``video_path`` instead.
        fps: frames per second of ``video`` (required with it).
        video_path: a video file, an image, or a folder of images.
        start_seconds: where to start, >= 0.
        seconds: how much to run, > 0; None: to the end.
        batch_size: frames per backend call, >= 1.

    Returns:
        ``(time of the frame in seconds from the video's start, result)`` for each frame, in order;
        boxes are in the video's pixels.

    Raises:
        InputError: the bundle is not an image model, neither or both of ``video`` / ``video_path``,
            a bad array, fps, window or batch size.
        MediaError: the file cannot be decoded.
    """
    from fusionedge.sdk.media import read_video
    from fusionedge.sdk.perception import Result

    model = perception.generic
    if model is None or model.image is None:
        raise InputError(f"{perception.model} is not an imported image model; use Perception.infer")
    if (video is None) == (video_path is None):
        raise InputError("pass exactly one of video (with fps) or video_path")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if video_path is not None:
        clip = read_video(
            video_path,
            max_seconds=seconds,
            start_seconds=start_seconds,
            downscale_to=reader_target(video_path, model.image),
        )
        frames, rate, source_wh = clip.frames, clip.fps, clip.size
        first = frame_window(rate, start_seconds, None)[0]  # the file's index of the first frame read
    else:
        if not (
            isinstance(video, np.ndarray)
            and video.dtype == np.uint8
            and video.ndim == 4
            and video.shape[-1] == 3
        ):
            raise InputError(
                f"video must be uint8 RGB frames of shape (N, H, W, 3), got "
                f"{getattr(video, 'dtype', type(video).__name__)} {getattr(video, 'shape', '')}"
            )
        if fps is None:
            raise InputError("video given as an array needs fps")
        first, stop = frame_window(fps, start_seconds, seconds)
        frames, rate, source_wh = video[first:stop], float(fps), (video.shape[2], video.shape[1])
        if len(frames) == 0:
            raise InputError(f"start_seconds {start_seconds} is past the end of the {len(video)} frames")
    results: list[tuple[float, Result]] = []
    for i in range(0, len(frames), batch_size):
        prepared = [model.image_tensor(f) for f in frames[i : i + batch_size]]
        out = perception.infer_inputs(np.stack([t for t, _ in prepared]))
        for k, (_, transform) in enumerate(prepared):
            d = model.decode(
                out,
                index=k,
                transform=transform,
                score_threshold=perception.score_threshold,
                top_k=perception.top_k,
            )
            boxes = in_source_pixels(d.boxes, transform, source_wh)
            results.append(
                (
                    (first + i + k) / rate,
                    Result(
                        event=d.event,
                        scores=d.scores,
                        audio_tags=d.audio_tags,
                        boxes=boxes,
                        backend=perception.backend_name,
                        model=perception.model,
                        engine=perception.engine_state,
                    ),
                )
            )
    return results
