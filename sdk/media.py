"""Decode media files into arrays: video through OpenCV, WAV audio through a small RIFF reader.

``read_video`` returns RGB frames and the frame rate (:class:`VideoClip`); ``read_audio`` returns float
samples in [-1, 1] and the sample rate. Both raise :class:`~fusionedge.sdk.errors.MediaError`, naming
the path and what to check, for a missing, truncated or mislabelled file. Time windows follow
:func:`fusionedge.sdk.preprocess.frame_window`, so reading a window and preprocessing it agree
frame for frame with preprocessing the whole file at that start.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fusionedge.sdk.errors import MediaError
from fusionedge.sdk.preprocess import frame_window

__all__ = ["VideoClip", "read_video", "read_audio", "DEFAULT_FPS", "IMAGE_EXTENSIONS"]

log = logging.getLogger(__name__)

#: Frame rate assumed when a file reports none (0 or NaN), and for a folder of images.
DEFAULT_FPS: float = 30.0
#: File name endings read as frames when ``read_video`` is given a folder.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class VideoClip:
    """Decoded frames of one video (or part of one)."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, N >= 1
    fps: float  # frames per second (DEFAULT_FPS where the file did not say)

    @property
    def seconds(self) -> float:
        """Duration covered by the frames, N / fps."""
        return self.frames.shape[0] / self.fps


# ----------------------------------------------------------------------------------------- video


def read_video(
    path: str | os.PathLike, *, max_seconds: float | None = None, start_seconds: float = 0.0
) -> VideoClip:
    """Decode a video file (anything OpenCV reads) or a folder of images into RGB frames.

    Only the frames of the window ``[start_seconds, start_seconds + max_seconds)`` are kept, and
    decoding stops at its end. A file whose frame rate reads as 0 or NaN is taken as
    ``DEFAULT_FPS`` (logged). A folder is read as its image files in name order at ``DEFAULT_FPS``.
    A file that breaks off mid-way (truncated) gives the frames decoded before the break.

    Args:
        path: a video file (mp4, avi, ...) or a folder of images.
        max_seconds: length of the window to read, > 0; None reads to the end.
        start_seconds: where the window starts, >= 0.

    Returns:
        A :class:`VideoClip` with ``(N, H, W, 3)`` uint8 RGB frames, N >= 1.

    Raises:
        MediaError: the path is missing, is not a video OpenCV can open, or no frame in the window
            decodes (an empty, truncated or too short file).
        InputError: a bad ``max_seconds`` / ``start_seconds``.
    """
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: no such file or folder; check the path")
    if p.is_dir():
        return _read_image_folder(p, max_seconds, start_seconds)
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise MediaError(
                f"{p}: OpenCV cannot open this as a video; check that it is a complete video file "
                f"(mp4/avi) in a codec this OpenCV build decodes"
            )
        fps = _fps_or_default(cap.get(cv2.CAP_PROP_FPS), p)
        first, stop = frame_window(fps, start_seconds, max_seconds)
        frames = _decode(cap, p, first, stop)
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
    expected = (declared if stop is None else min(stop, declared)) - first
    if declared > 0 and len(frames) < expected:
        log.warning("%s: decoding stopped after %d of %d frames (truncated file?)", p, len(frames), expected)
    return VideoClip(frames=_stack(frames, p), fps=fps)


def _fps_or_default(value: float | None, path: Path) -> float:
    """The reported frame rate, or ``DEFAULT_FPS`` (logged) where it is 0, negative, NaN or missing."""
    try:
        fps = float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        fps = 0.0
    if not math.isfinite(fps) or fps <= 0:
        log.warning("%s: the file reports no frame rate (%r); assuming %g fps", path, value, DEFAULT_FPS)
        return DEFAULT_FPS
    return fps


def _decode(cap: "cv2.VideoCapture", path: Path, first: int, stop: int | None) -> list[np.ndarray]:
    """Frames ``first .. stop-1`` as RGB; stops early (without raising) where decoding fails."""
    for _ in range(first):  # grab() decodes without converting: the reliable way to seek in any codec
        if not cap.grab():
            return []
    frames: list[np.ndarray] = []
    i = first
    while stop is None or i < stop:
        try:
            ok, frame = cap.read()
        except cv2.error as e:  # some backends raise instead of returning False on corrupt data
            log.warning("%s: decoding failed at frame %d: %s", path, i, e)
            break
        if not ok or frame is None:
            break
        frames.append(_to_rgb(frame, path))
        i += 1
    return frames


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


def _read_image_folder(folder: Path, max_seconds: float | None, start_seconds: float) -> VideoClip:
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise MediaError(f"{folder}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    first, stop = frame_window(DEFAULT_FPS, start_seconds, max_seconds)
    chosen = files[first:stop]
    if not chosen:
        raise MediaError(
            f"{folder}: start {start_seconds:g} s is past the last of its {len(files)} images "
            f"at {DEFAULT_FPS:g} fps"
        )
    frames = []
    for f in chosen:
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise MediaError(f"{f}: OpenCV cannot read this image; check that it is a complete image file")
        frames.append(_to_rgb(img, f))
    return VideoClip(frames=_stack(frames, folder), fps=DEFAULT_FPS)


# ----------------------------------------------------------------------------------------- audio

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a WAV file: integer PCM (8/16/24/32-bit) or IEEE float (32/64-bit), any rate and channels.

    One small RIFF reader handles every variant, including ``WAVE_FORMAT_EXTENSIBLE`` headers (which
    the stdlib ``wave`` module of Python 3.11 refuses, as it refuses float data). Integer PCM is scaled
    by ``1 / 2**(bits-1)`` (8-bit is unsigned, centred on 128); float data is clipped to [-1, 1].
    A data chunk cut short by truncation gives the whole frames that are present (logged).

    Args:
        path: a ``.wav`` file.

    Returns:
        ``(samples, sample_rate)``: ``(S, C)`` float32 in [-1, 1], and the rate in Hz.

    Raises:
        MediaError: the file is missing, is not a RIFF/WAVE file, uses an unsupported encoding,
            holds no samples, or holds NaN/Inf.
    """
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{p}: no such file; check the path")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise MediaError(f"{p}: cannot read the file ({e})") from e
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise MediaError(
            f"{p}: not a WAV file (no RIFF/WAVE header); convert it, e.g. "
            f"`ffmpeg -i {p.name} -c:a pcm_s16le out.wav`"
        )
    fmt, payload, declared = _riff_chunks(data, p)
    fmt_tag, channels, rate, bits = fmt
    if fmt_tag == _WAVE_FORMAT_PCM:
        samples = _pcm_to_float(payload, bits)
    else:  # IEEE float, 32 or 64 bit (_parse_fmt refused anything else)
        samples = np.frombuffer(payload, dtype="<f4" if bits == 32 else "<f8").astype(np.float32)
        if not np.all(np.isfinite(samples)):
            raise MediaError(f"{p}: the float samples contain NaN or Inf; the file is corrupt")
        samples = np.clip(samples, -1.0, 1.0)
    if samples.size == 0:
        raise MediaError(f"{p}: the WAV file holds no audio samples")
    if declared > len(payload):
        log.warning(
            "%s: data chunk declares %d bytes but only %d are present (truncated)", p, declared, len(payload)
        )
    return np.ascontiguousarray(samples.reshape(-1, channels)), rate


def _riff_chunks(data: bytes, path: Path) -> tuple[tuple[int, int, int, int], bytes, int]:
    """Walk the RIFF chunks: ``((format_tag, channels, rate, bits), whole-frame payload, declared size)``."""
    fmt = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            fmt = _parse_fmt(data[body : body + size], path)
        elif cid == b"data":
            if fmt is None:
                raise MediaError(f"{path}: the WAV data chunk precedes its fmt chunk; the file is malformed")
            _, channels, _, bits = fmt
            frame_bytes = channels * (bits // 8)
            available = min(size, len(data) - body)
            available -= available % frame_bytes
            return fmt, data[body : body + available], size
        pos = body + size + (size & 1)  # chunks are padded to an even size
    if fmt is None:
        raise MediaError(f"{path}: the WAV file has no fmt chunk; the file is malformed or truncated")
    raise MediaError(f"{path}: the WAV file has no data chunk; the file is truncated")


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
    if channels < 1 or rate < 1:
        raise MediaError(f"{path}: WAV header says {channels} channels at {rate} Hz; the file is malformed")
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

