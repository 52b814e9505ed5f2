"""Decode media files into arrays: video through OpenCV, WAV audio through a small seeking RIFF reader.

``read_video`` returns RGB frames and the frame rate (:class:`VideoClip`); ``read_audio`` returns float
samples in [-1, 1] and the sample rate; :class:`WavFile` and ``read_audio_window`` read only the samples
of a time window. Each raises :class:`~fusionedge.sdk.errors.MediaError`, naming the path and what to
check, for a missing, truncated or mislabelled file, for a path that is not a regular file (a FIFO or a
device would block or never end), and for header values outside sane limits (frame size, frame rate,
sample rate), so a hostile header cannot make the runtime allocate gigabytes. Time windows follow
:func:`fusionedge.sdk.preprocess.frame_window`, so reading a window and preprocessing it agree frame for
frame with preprocessing the whole file at that start. Frames are placed on that grid by the
container's timestamps, so a variable-frame-rate file stays in step with its audio.

The module is a little past 600 lines: video and audio reading share the regular-file check, the
header limits and the window arithmetic, which a split would have to import back from one another.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from fusionedge.sdk.errors import InputError, MediaError
from fusionedge.sdk.preprocess import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, frame_window, resample_context

__all__ = [
    "VideoClip",
    "AudioClip",
    "WavFile",
    "read_video",
    "read_audio",
    "read_audio_window",
    "regular_file",
    "FrameTimes",
    "DEFAULT_FPS",
    "IMAGE_EXTENSIONS",
    "MAX_FPS",
    "MAX_FRAME_SIDE",
    "MAX_DECODED_BYTES",
    "DOWNSCALE_ABOVE_PIXELS",
    "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE",
    "MAX_CHANNELS",
]

log = logging.getLogger(__name__)

#: Frame rate assumed when a file reports none (0 or NaN), and for a folder of images.
DEFAULT_FPS: float = 30.0
#: File name endings read as frames when ``read_video`` is given a folder.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Highest frame rate a video may claim; above it the header is taken as corrupt.
MAX_FPS: float = 1000.0
#: Longest frame side, in pixels, a video may have (16K).
MAX_FRAME_SIDE: int = 16384
#: Most bytes of decoded frames one ``read_video`` call may hold; a larger window raises MediaError.
MAX_DECODED_BYTES: int = 2 * 1024**3
#: With ``downscale_to``, frames with more pixels than this (Full HD) are resized as they are decoded.
DOWNSCALE_ABOVE_PIXELS: int = 1920 * 1080
#: Most channels a WAV file may declare.
MAX_CHANNELS: int = 256


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """The path, checked to be a regular file once symbolic links are followed.

    A FIFO blocks whoever opens it and a device such as ``/dev/zero`` never ends, so media readers
    accept regular files only (and :func:`read_video` also folders of images).

    Args:
        path: the file to check.
        what: what the file should be, for the message ("video", "WAV file", ...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MediaError: the path does not exist, cannot be inspected, or is not a regular file.
    """
    p = Path(path)
    try:
        st = os.stat(p)  # follows links: a link to /dev/zero is a character device
    except FileNotFoundError as e:
        raise MediaError(f"{p}: no such file; check the path") from e
    except OSError as e:
        raise MediaError(f"{p}: cannot inspect the {what} ({e.strerror or e}); check the path") from e
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a folder"
                if stat.S_ISDIR(st.st_mode) else "not a file")
        raise MediaError(f"{p}: not a regular file ({kind}); give a {what} on disk")
    return p


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
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise MediaError(
                f"{p}: OpenCV cannot open this as a video; check that it is a complete video file "
                f"(mp4/avi) in a codec this OpenCV build decodes"
            )
        fps = _fps_or_default(cap.get(cv2.CAP_PROP_FPS), p)
        _check_geometry(p, cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        first, stop = frame_window(fps, start_seconds, max_seconds)
        frames, source_size, grabbed, complete = _decode(cap, p, fps, first, stop, target)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)  # a container's claim, may be 0, negative or NaN
        declared = int(count) if math.isfinite(count) else 0
    finally:
        cap.release()
    if not frames:
        where = f" from {start_seconds:g} s" if first > 0 else ""
        raise MediaError(
            f"{p}: no frame could be decoded{where}; the file may be empty, truncated or shorter than "
            f"the start (it reports {declared} frames at {fps:g} fps) — check that it plays, re-encode it"
        )
    if not complete and 0 < grabbed < declared:
        log.warning("%s: decoding stopped after %d of %d frames (truncated file?)", p, grabbed, declared)
    return VideoClip(frames=_stack(frames, p), fps=fps, source_size=source_size)


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


def _check_geometry(path: Path, width: float, height: float) -> None:
    """Refuse a header whose frame size is beyond ``MAX_FRAME_SIDE`` (0 / NaN: not stated, allowed)."""
    for name, v in (("width", width), ("height", height)):
        if math.isfinite(v) and v > MAX_FRAME_SIDE:
            raise MediaError(f"{path}: the video claims a frame {name} of {v:g} pixels, above the "
                             f"{MAX_FRAME_SIDE} limit; the header is corrupt or the video must be "
                             f"scaled down")


def _fps_or_default(value: float | None, path: Path) -> float:
    """The reported frame rate, or ``DEFAULT_FPS`` (logged) where it is 0, negative, NaN or missing.

    Raises:
        MediaError: the rate is above ``MAX_FPS`` (a corrupt header).
    """
    try:
        fps = float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        fps = 0.0
    if not math.isfinite(fps) or fps <= 0:
        log.warning("%s: the file reports no frame rate (%r); assuming %g fps", path, value, DEFAULT_FPS)
        return DEFAULT_FPS
    if fps > MAX_FPS:
        raise MediaError(f"{path}: the video claims {fps:g} frames per second, above the {MAX_FPS:g} limit; "
                         f"the header is corrupt — re-encode the file")
    return fps


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


def _decode(
    cap: cv2.VideoCapture, path: Path, fps: float, first: int, stop: int | None,
    target: tuple[int, int] | None,
) -> tuple[list[np.ndarray], tuple[int, int] | None, int, bool]:
    """Frames for grid slots ``first .. stop-1`` (slot ``k`` at ``k / fps``) as RGB.

    Returns the frames, the file's frame size, how many frames were decoded, and whether decoding
    reached the window's end (False: the file ended or broke off first).

    Slot ``k`` takes the frame on screen at ``k / fps``: the last one whose time (:class:`FrameTimes`)
    is at most a quarter period after it; for a constant-rate file that is frame ``k`` itself (a
    frame on screen across a gap at the window's start is taken from the first frame after the gap).
    Only frames that may fill a slot are converted (grab() decodes without converting: the reliable
    way to seek in any codec). Decoding stops early (without raising) where the file breaks off.
    """
    tol = 0.25 / fps  # container times are rounded (to ms, or to the time base)
    times = FrameTimes(fps)
    k = first  # the next slot to fill
    held: np.ndarray | None = None  # the converted frame that fills slot k if no later one does
    held_t = 0.0
    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    budget = MAX_DECODED_BYTES
    i = 0
    while stop is None or k < stop:
        try:
            ok = cap.grab()
        except cv2.error as e:  # some backends raise instead of returning False on corrupt data
            log.warning("%s: decoding failed at frame %d: %s", path, i, e)
            break
        if not ok:
            break
        t = times.next(cap)
        i += 1
        while held is not None and (stop is None or k < stop) and t > k / fps + tol:
            frames.append(held)  # slot k is over: the frame held fills it (again, across a gap)
            budget -= held.nbytes
            k += 1
        if stop is not None and k >= stop:
            return frames, size, i, True
        if t + 1.5 / fps < first / fps:
            continue  # long before the window: never shown, not converted
        try:
            ok, raw = cap.retrieve()
        except cv2.error as e:
            log.warning("%s: decoding failed at frame %d: %s", path, i - 1, e)
            break
        if not ok or raw is None:
            break
        size = size or (int(raw.shape[1]), int(raw.shape[0]))
        if max(size) > MAX_FRAME_SIDE:
            raise MediaError(f"{path}: frames of {size[0]}x{size[1]} pixels exceed the {MAX_FRAME_SIDE} "
                             f"pixel limit per side; scale the video down")
        held, held_t = _to_rgb(_shrink(raw, target), path), t
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


# ----------------------------------------------------------------------------------------- audio

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_MAX_FMT_BYTES = 1024  # a fmt chunk is 16..40 bytes; anything this large is not one


@dataclass(frozen=True)
class AudioClip:
    """Samples of a time window of a WAV file, with the filter context either side."""

    samples: np.ndarray  # (S, C) float32 in [-1, 1]
    rate: int  # Hz
    start_seconds: float  # where the requested window starts within ``samples`` (seconds)
    first: int  # index in the file of ``samples[0]``


class WavFile:
    """An open WAV file whose samples are read by range: integer PCM (8/16/24/32-bit) or IEEE float.

    Opening reads the RIFF chunk headers only (seeking past everything else), so the cost of
    :meth:`read` is the frames asked for, whatever the file's length. One small reader handles
    every variant, including ``WAVE_FORMAT_EXTENSIBLE`` headers (which the stdlib ``wave`` module
    of Python 3.11 refuses, as it refuses float data). Integer PCM is scaled by ``1 / 2**(bits-1)``
    (8-bit is unsigned, centred on 128); float data is clipped to [-1, 1]. A data chunk cut short by
    truncation gives the whole frames that are present (logged).

    Args:
        path: a ``.wav`` file (a regular file, links followed).

    Raises:
        MediaError: the file is missing or not a regular file, is not a RIFF/WAVE file, uses an
            unsupported encoding, or declares a sample rate outside ``MIN_SAMPLE_RATE`` ..
            ``MAX_SAMPLE_RATE`` or more than ``MAX_CHANNELS`` channels.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = regular_file(path, "WAV file")
        try:
            self._f: BinaryIO | None = open(self.path, "rb")  # noqa: SIM115 - open until close()
        except OSError as e:
            raise MediaError(f"{self.path}: cannot read the file ({e.strerror or e})") from e
        try:
            fmt, self._offset, available, declared = self._walk(self._f)
        except BaseException:
            self.close()
            raise
        self._tag, self.channels, self.rate, self.bits = fmt
        self._frame_bytes = self.channels * (self.bits // 8)
        #: Whole frames present in the data chunk.
        self.frames: int = available // self._frame_bytes
        if declared > available:
            log.warning("%s: data chunk declares %d bytes but only %d are present (truncated)",
                        self.path, declared, available)

    def _walk(self, f: BinaryIO) -> tuple[tuple[int, int, int, int], int, int, int]:
        """``(fmt, data offset, bytes present, bytes declared)`` from the chunk headers."""
        p = self.path
        size_on_disk = os.fstat(f.fileno()).st_size
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise MediaError(
                f"{p}: not a WAV file (no RIFF/WAVE header); convert it, e.g. "
                f"`ffmpeg -i {p.name} -c:a pcm_s16le out.wav`"
            )
        fmt = None
        pos = 12
        while pos + 8 <= size_on_disk:
            f.seek(pos)
            header = f.read(8)
            if len(header) < 8:
                break
            cid, size = header[:4], struct.unpack_from("<I", header, 4)[0]
            body = pos + 8
            if cid == b"fmt ":
                fmt = _parse_fmt(f.read(min(size, _MAX_FMT_BYTES)), p)
            elif cid == b"data":
                if fmt is None:
                    raise MediaError(f"{p}: the WAV data chunk precedes its fmt chunk; the file is malformed")
                return fmt, body, max(0, min(size, size_on_disk - body)), size
            pos = body + size + (size & 1)  # chunks are padded to an even size
        if fmt is None:
            raise MediaError(f"{p}: the WAV file has no fmt chunk; the file is malformed or truncated")
        raise MediaError(f"{p}: the WAV file has no data chunk; the file is truncated")

    @property
    def seconds(self) -> float:
        """Duration of the whole frames present."""
        return self.frames / self.rate

    def read(self, start: int, count: int) -> np.ndarray:
        """Frames ``start .. start+count-1`` (cut at the end of the data) as ``(n, C)`` float32.

        Raises:
            MediaError: the file was closed, cannot be read, or its float samples hold NaN/Inf.
        """
        if self._f is None:
            raise MediaError(f"{self.path}: the WAV file is closed")
        start = max(0, int(start))
        n = max(0, min(int(count), self.frames - start))
        if n == 0:
            return np.zeros((0, self.channels), np.float32)
        try:
            self._f.seek(self._offset + start * self._frame_bytes)
            payload = self._f.read(n * self._frame_bytes)
        except OSError as e:
            raise MediaError(f"{self.path}: cannot read the file ({e.strerror or e})") from e
        payload = payload[: len(payload) - len(payload) % self._frame_bytes]
        if self._tag == _WAVE_FORMAT_PCM:
            samples = _pcm_to_float(payload, self.bits)
        else:  # IEEE float, 32 or 64 bit (_parse_fmt refused anything else)
            samples = np.frombuffer(payload, dtype="<f4" if self.bits == 32 else "<f8").astype(np.float32)
            if not np.all(np.isfinite(samples)):
                raise MediaError(f"{self.path}: the float samples contain NaN or Inf; the file is corrupt")
            samples = np.clip(samples, -1.0, 1.0)
        return np.ascontiguousarray(samples.reshape(-1, self.channels))

    def close(self) -> None:
        """Close the file (idempotent)."""
        f, self._f = self._f, None
        if f is not None:
            f.close()

    def __enter__(self) -> WavFile:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a whole WAV file (any encoding :class:`WavFile` reads), any rate and channel count.

    For a window of a long recording use :func:`read_audio_window`, which reads only that window.

    Args:
        path: a ``.wav`` file.

    Returns:
        ``(samples, sample_rate)``: ``(S, C)`` float32 in [-1, 1], and the rate in Hz.

    Raises:
        MediaError: as :class:`WavFile`, or the file holds no samples or NaN/Inf.
    """
    with WavFile(path) as w:
        samples = w.read(0, w.frames)
        if samples.size == 0:
            raise MediaError(f"{w.path}: the WAV file holds no audio samples")
        return samples, w.rate


def read_audio_window(
    path: str | os.PathLike, start_seconds: float, seconds: float, *, target_rate: int
) -> AudioClip:
    """Read the samples of ``[start_seconds, start_seconds + seconds)`` and the resampler's context.

    :func:`fusionedge.sdk.preprocess.preprocess_audio` of the result (at ``clip.start_seconds``) is
    bit for bit what it gives on the whole file at ``start_seconds``, for any rate converted to
    ``target_rate``, while only about ``seconds`` of audio is read.

    Args:
        path: a ``.wav`` file.
        start_seconds: window start, >= 0.
        seconds: window length, > 0.
        target_rate: the rate the window will be resampled to (Hz), which sets the context needed.

    Returns:
        An :class:`AudioClip`.

    Raises:
        MediaError: as :class:`WavFile`, or the file holds no samples.
        InputError: a bad start, length or target rate.
    """
    start = _finite(start_seconds, "start_seconds", minimum=0.0)
    length = _finite(seconds, "seconds", minimum=None)
    with WavFile(path) as w:
        if w.frames == 0:
            raise MediaError(f"{w.path}: the WAV file holds no audio samples")
        ctx = resample_context(w.rate, target_rate)
        s0 = round(start * w.rate)
        lo = max(0, s0 - ctx)
        hi = s0 + math.ceil(length * w.rate) + ctx
        samples = w.read(lo, hi - lo)
        return AudioClip(samples=samples, rate=w.rate, start_seconds=(s0 - lo) / w.rate, first=lo)


def _finite(value: float, what: str, *, minimum: float | None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be a number, got {value!r}") from e
    ok = math.isfinite(v) and (v >= minimum if minimum is not None else v > 0)
    if not ok:
        bound = f">= {minimum:g}" if minimum is not None else "> 0"
        raise InputError(f"{what} must be a finite number {bound}, got {value!r}")
    return v


def _parse_fmt(chunk: bytes, path: Path) -> tuple[int, int, int, int]:
    if len(chunk) < 16:
        raise MediaError(f"{path}: the WAV fmt chunk is too short ({len(chunk)} bytes); malformed file")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(chunk) < 40:
            raise MediaError(f"{path}: the WAV extensible fmt chunk is too short; the file is malformed")
        valid_bits = struct.unpack_from("<H", chunk, 18)[0]
        tag = struct.unpack_from("<H", chunk, 24)[0]  # first two bytes of the sub-format GUID
        if valid_bits and valid_bits != bits:
            log.debug("%s: %d valid bits in %d-bit containers", path, valid_bits, bits)
    if channels < 1 or channels > MAX_CHANNELS:
        raise MediaError(f"{path}: WAV header says {channels} channels (1..{MAX_CHANNELS}); "
                         f"the file is malformed")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise MediaError(f"{path}: WAV header says a sample rate of {rate} Hz, outside "
                         f"{MIN_SAMPLE_RATE} .. {MAX_SAMPLE_RATE} Hz; the header is corrupt — "
                         f"re-encode the file")
    pcm_ok = tag == _WAVE_FORMAT_PCM and bits in (8, 16, 24, 32)
    float_ok = tag == _WAVE_FORMAT_IEEE_FLOAT and bits in (32, 64)
    if not (pcm_ok or float_ok):
        names = {_WAVE_FORMAT_PCM: "PCM", _WAVE_FORMAT_IEEE_FLOAT: "IEEE float"}
        name = names.get(tag, f"format tag 0x{tag:04x}")
        raise MediaError(
            f"{path}: unsupported WAV encoding ({name}, {bits}-bit); convert it to PCM 8/16/24/32-bit or "
            f"float 32/64-bit, e.g. `ffmpeg -i {path.name} -c:a pcm_s16le out.wav`"
        )
    return tag, channels, rate, bits


def _pcm_to_float(payload: bytes, bits: int) -> np.ndarray:
    if bits == 8:  # unsigned, centred on 128
        return (np.frombuffer(payload, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if bits == 16:
        return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
    if bits == 24:
        b = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = (v << 8) >> 8  # sign-extend from 24 bits
        return v.astype(np.float32) / 8388608.0
    return (np.frombuffer(payload, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
