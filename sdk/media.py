"""Decode media files into arrays: video frames on the frame grid, and (re-exported) audio by window.

``read_video`` returns RGB frames and the frame rate (:class:`VideoClip`). With PyAV installed
(``fusionedge[media]``) a file is decoded through :mod:`fusionedge.sdk.media_av`: every frame carries
its presentation time and a window far into a file starts with a container seek, not by decoding
from the top; without it (or for a file PyAV cannot open) OpenCV decodes it, as before. Either way
frames are placed on the grid ``k / fps`` by the container's timestamps, so a variable-frame-rate file
stays in step with its audio, and time windows follow :func:`fusionedge.sdk.preprocess.frame_window`,
so reading a window and preprocessing it agree frame for frame with preprocessing the whole file at
that start. Each reader raises :class:`~fusionedge.sdk.errors.MediaError`, naming the path and what to
check, for a missing, truncated or mislabelled file, a path that is not a regular file, and header
values outside sane limits (:mod:`fusionedge.sdk.media_checks`), so a hostile header cannot make the
runtime allocate gigabytes.

Audio lives in :mod:`fusionedge.sdk.audio_file` (WAV, FLAC, OGG, MP3 and the sound of a video, read by
window) and :mod:`fusionedge.sdk.wav`; its public names are re-exported here, where callers have
always found them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from fusionedge.sdk import media_av
from fusionedge.sdk.audio_file import (
    AudioClip,
    AudioReader,
    SoundFileAudio,
    embedded_audio,
    open_audio,
    read_audio,
    read_audio_window,
)
from fusionedge.sdk.errors import InputError, MediaError
from fusionedge.sdk.media_checks import (
    DEFAULT_FPS,
    MAX_CHANNELS,
    MAX_FPS,
    MAX_FRAME_SIDE,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    regular_file,
)
from fusionedge.sdk.media_checks import check_geometry as _check_geometry
from fusionedge.sdk.media_checks import fps_or_default as _fps_or_default
from fusionedge.sdk.preprocess import frame_window
from fusionedge.sdk.wav import WavFile

__all__ = [
    "DEFAULT_FPS",
    "DOWNSCALE_ABOVE_PIXELS",
    "IMAGE_EXTENSIONS",
    "MAX_CHANNELS",
    "MAX_DECODED_BYTES",
    "MAX_FPS",
    "MAX_FRAME_SIDE",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "AudioClip",
    "AudioReader",
    "FrameTimes",
    "SoundFileAudio",
    "VideoClip",
    "WavFile",
    "embedded_audio",
    "open_audio",
    "read_audio",
    "read_audio_window",
    "read_video",
    "regular_file",
]

log = logging.getLogger(__name__)

#: File name endings read as frames when ``read_video`` is given a folder.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Most bytes of decoded frames one ``read_video`` call may hold; a larger window raises MediaError.
MAX_DECODED_BYTES: int = 2 * 1024**3
#: With ``downscale_to``, frames with more pixels than this (Full HD) are resized as they are decoded.
DOWNSCALE_ABOVE_PIXELS: int = 1920 * 1080


@dataclass(frozen=True)
class VideoClip:
    """Decoded frames of one video (or part of one)."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, N >= 1
    fps: float  # frames per second (DEFAULT_FPS where the file did not say)
    source_size: tuple[int, int] | None = None  # (width, height) of the file's frames before any downscale

    @property
    def seconds(self) -> float:
        """Duration covered by the frames, N / fps."""
        return self.frames.shape[0] / self.fps

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the file's frames (``source_size``, else the frames' own size)."""
        if self.source_size is not None:
            return self.source_size
        return int(self.frames.shape[2]), int(self.frames.shape[1])


# ----------------------------------------------------------------------------------------- video


def read_video(
    path: str | os.PathLike,
    *,
    max_seconds: float | None = None,
    start_seconds: float = 0.0,
    downscale_to: tuple[int, int] | None = None,
) -> VideoClip:
    """Decode a video file (anything OpenCV reads) or a folder of images into RGB frames.

    Only the frames of the window ``[start_seconds, start_seconds + max_seconds)`` are kept, and
    decoding stops at its end. Frame ``k`` of the result is the file's frame shown at ``k / fps``
    (by the container's timestamps): a constant-rate file gives its frames as they are, a
    variable-rate one is put on that grid (a frame repeats over a long gap, a frame is skipped in a
    burst), so frame ``k`` stays at ``k / fps`` like audio sample ``j`` at ``j / rate``. A file whose
    frame rate reads as 0 or NaN is taken as ``DEFAULT_FPS`` (logged). A folder is read as its image
    files in name order at ``DEFAULT_FPS``. A file that breaks off mid-way (truncated) gives the
    frames decoded before the break.

    Memory is bounded: with ``downscale_to``, a frame larger than ``DOWNSCALE_ABOVE_PIXELS`` is
    resized (``cv2.INTER_AREA``) as soon as it is decoded, so no full-size frame is kept; without
    it, a window whose frames would exceed ``MAX_DECODED_BYTES`` raises MediaError.

    Args:
        path: a video file (mp4, avi, ...) or a folder of images.
        max_seconds: length of the window to read, > 0; None reads to the end.
        start_seconds: where the window starts, >= 0.
        downscale_to: ``(width, height)`` large frames are resized to as they are decoded (the model
            input size); ``source_size`` of the result keeps the file's size.

    Returns:
        A :class:`VideoClip` with ``(N, H, W, 3)`` uint8 RGB frames, N >= 1.

    Raises:
        MediaError: the path is missing or not a regular file or folder, is not a video OpenCV can
            open, claims a frame rate above ``MAX_FPS`` or a side above ``MAX_FRAME_SIDE``, the window
            is too large to hold, or no frame in the window decodes (empty, truncated, too short).
        InputError: a bad ``max_seconds`` / ``start_seconds`` / ``downscale_to``.
    """
    p = Path(path)
    if p.is_dir():
        return _read_image_folder(p, max_seconds, start_seconds, downscale_to)
    regular_file(p, "video file")
    target = _check_downscale(downscale_to)
    av_error: MediaError | None = None
    if media_av.available():
        try:
            with media_av.ContainerVideo(p) as video:
                first, stop = frame_window(video.fps, start_seconds, max_seconds)
                stream = ((t, lambda f=f: media_av.frame_to_array(f, "rgb"))
                          for t, f in video.frames(first / video.fps))
                decoded = _decode(stream, p, video.fps, first, stop, target, lambda x, _p: x)
                return _clip(p, decoded, video.fps, first, start_seconds, video.declared_frames)
        except media_av.UnreadableMedia as e:  # not a container FFmpeg opens: OpenCV may still read it
            av_error = e
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            if av_error is not None:
                raise av_error
            raise MediaError(
                f"{p}: OpenCV cannot open this as a video; check that it is a complete video file "
                f"(mp4/avi) in a codec this OpenCV build decodes"
            )
        fps = _fps_or_default(cap.get(cv2.CAP_PROP_FPS), p)
        _check_geometry(p, cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        first, stop = frame_window(fps, start_seconds, max_seconds)
        decoded = _decode(_grabbed(cap, p, fps), p, fps, first, stop, target, _to_rgb)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)  # a container's claim, may be 0, negative or NaN
        declared = int(count) if math.isfinite(count) else 0
    finally:
        cap.release()
    return _clip(p, decoded, fps, first, start_seconds, declared)


_Decoded = tuple[list[np.ndarray], "tuple[int, int] | None", int, bool]


def _clip(path: Path, decoded: _Decoded, fps: float, first: int, start_seconds: float,
          declared: int) -> VideoClip:
    """The :class:`VideoClip` of what :func:`_decode` returned, or the error for an empty window."""
    frames, source_size, grabbed, complete = decoded
    if not frames:
        where = f" from {start_seconds:g} s" if first > 0 else ""
        raise MediaError(
            f"{path}: no frame could be decoded{where}; the file may be empty, truncated or shorter than "
            f"the start (it reports {declared} frames at {fps:g} fps) — check that it plays, re-encode it"
        )
    if not complete and 0 < grabbed < declared:
        log.warning("%s: decoding stopped after %d of %d frames (truncated file?)", path, grabbed, declared)
    return VideoClip(frames=_stack(frames, path), fps=fps, source_size=source_size)


def _check_downscale(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError) as e:
        raise InputError(f"downscale_to must be (width, height), got {size!r}") from e
    if w < 1 or h < 1:
        raise InputError(f"downscale_to must be two positive sizes (width, height), got {size!r}")
    return w, h


class FrameTimes:
    """Times of successive decoded frames, in seconds from the first one, by the container's timestamps.

    Call :meth:`next` once after each successful ``grab()`` / ``read()``. Where the container gives
    no usable time (none, negative, or not after the previous frame) the frame is placed one period
    after the previous one, which is the constant-rate convention ``i / fps``.

    Args:
        fps: the nominal frame rate, > 0.
    """

    def __init__(self, fps: float) -> None:
        self.fps = float(fps)
        self._t0: float | None = None
        self._prev: float | None = None

    def next(self, cap: cv2.VideoCapture) -> float:
        """Seconds from the first frame of the frame just grabbed from ``cap``."""
        ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        stamp = ms / 1000.0 if ms is not None and math.isfinite(ms) and ms >= 0 else None
        if self._t0 is None or self._prev is None:
            self._t0, t = (stamp if stamp is not None else 0.0), 0.0
        elif stamp is not None and stamp - self._t0 > self._prev:
            t = stamp - self._t0
        else:
            t = self._prev + 1.0 / self.fps
        self._prev = t
        return t


def _grabbed(cap: cv2.VideoCapture, path: Path, fps: float) -> Iterator[tuple[float, Callable[[], np.ndarray | None]]]:
    """``(time, retrieve)`` for each frame OpenCV grabs (decoded, not converted until retrieved)."""
    times = FrameTimes(fps)
    i = 0
    while True:
        try:
            ok = cap.grab()
        except cv2.error as e:  # some backends raise instead of returning False on corrupt data
            log.warning("%s: decoding failed at frame %d: %s", path, i, e)
            return
        if not ok:
            return
        i += 1
        yield times.next(cap), lambda n=i: _retrieve(cap, path, n - 1)


def _retrieve(cap: cv2.VideoCapture, path: Path, index: int) -> np.ndarray | None:
    try:
        ok, raw = cap.retrieve()
    except cv2.error as e:
        log.warning("%s: decoding failed at frame %d: %s", path, index, e)
        return None
    return raw if ok else None


def _decode(
    stream: Iterator[tuple[float, Callable[[], np.ndarray | None]]], path: Path, fps: float, first: int,
    stop: int | None, target: tuple[int, int] | None, to_rgb: Callable[[np.ndarray, Path], np.ndarray],
) -> _Decoded:
    """Frames for grid slots ``first .. stop-1`` (slot ``k`` at ``k / fps``) as RGB.

    ``stream`` gives each decoded frame's time (seconds from the first frame, increasing) and a
    function that converts it (None where that fails); ``to_rgb`` turns a converted frame into RGB.
    Returns the frames, the file's frame size, how many frames were decoded, and whether decoding
    reached the window's end (False: the file ended or broke off first).

    Slot ``k`` takes the frame on screen at ``k / fps``: the last one whose time is at most a quarter
    period after it; for a constant-rate file that is frame ``k`` itself (a frame on screen across a
    gap at the window's start is taken from the first frame after the gap). Only frames that may fill
    a slot are converted. Decoding stops early (without raising) where the file breaks off.
    """
    tol = 0.25 / fps  # container times are rounded (to ms, or to the time base)
    k = first  # the next slot to fill
    held: np.ndarray | None = None  # the converted frame that fills slot k if no later one does
    held_t = 0.0
    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    budget = MAX_DECODED_BYTES
    i = 0
    for t, retrieve in stream:
        i += 1
        while held is not None and (stop is None or k < stop) and t > k / fps + tol:
            frames.append(held)  # slot k is over: the frame held fills it (again, across a gap)
            budget -= held.nbytes
            k += 1
        if stop is not None and k >= stop:
            return frames, size, i, True
        if t + 1.5 / fps < first / fps:
            continue  # long before the window: never shown, not converted
        raw = retrieve()
        if raw is None:
            break
        size = size or (int(raw.shape[1]), int(raw.shape[0]))
        if max(size) > MAX_FRAME_SIDE:
            raise MediaError(f"{path}: frames of {size[0]}x{size[1]} pixels exceed the {MAX_FRAME_SIDE} "
                             f"pixel limit per side; scale the video down")
        held, held_t = to_rgb(_shrink(raw, target), path), t
        if budget - held.nbytes < 0:
            raise MediaError(
                f"{path}: the window holds more than {MAX_DECODED_BYTES / 1024**3:g} GiB of "
                f"{size[0]}x{size[1]} frames; read a shorter window or pass downscale_to"
            )
    if held is not None:  # the end of the file: the last frame fills the slots it is nearest to
        while (stop is None or k < stop) and k / fps <= held_t + tol:
            frames.append(held)
            k += 1
    return frames, size, i, False


def _shrink(frame: np.ndarray, target: tuple[int, int] | None) -> np.ndarray:
    """``frame`` resized to ``target`` (w, h) when it has more than ``DOWNSCALE_ABOVE_PIXELS`` pixels."""
    if target is None or frame.shape[0] * frame.shape[1] <= DOWNSCALE_ABOVE_PIXELS:
        return frame
    return cv2.resize(frame, target, interpolation=cv2.INTER_AREA)


def _to_rgb(frame: np.ndarray, path: Path) -> np.ndarray:
    if frame.dtype != np.uint8:  # 16-bit PNG/TIFF: keep the high byte
        if frame.dtype == np.uint16:
            frame = (frame >> 8).astype(np.uint8)
        else:
            raise MediaError(f"{path}: unsupported pixel type {frame.dtype}; expected 8-bit images")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _stack(frames: list[np.ndarray], path: Path) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise MediaError(f"{path}: frames differ in size ({sorted(shapes)}); re-encode at one resolution")
    return np.stack(frames)


def _read_image_folder(
    folder: Path, max_seconds: float | None, start_seconds: float, downscale_to: tuple[int, int] | None
) -> VideoClip:
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise MediaError(f"{folder}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    target = _check_downscale(downscale_to)
    first, stop = frame_window(DEFAULT_FPS, start_seconds, max_seconds)
    chosen = files[first:stop]
    if not chosen:
        raise MediaError(
            f"{folder}: start {start_seconds:g} s is past the last of its {len(files)} images "
            f"at {DEFAULT_FPS:g} fps"
        )
    frames = []
    size: tuple[int, int] | None = None
    for f in chosen:
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise MediaError(f"{f}: OpenCV cannot read this image; check that it is a complete image file")
        size = size or (int(img.shape[1]), int(img.shape[0]))
        frames.append(_to_rgb(_shrink(img, target), f))
    return VideoClip(frames=_stack(frames, folder), fps=DEFAULT_FPS, source_size=size)
