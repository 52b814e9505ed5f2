"""Containers through PyAV: the sound and the pictures of one recording, on one time line.

A dashcam or phone recording is one file (mp4, mkv, mov, webm) holding a video track and an audio
track (AAC, Opus, MP3, FLAC, PCM). This module reads both with FFmpeg's demuxers and decoders
(``pip install 'fusionedge[media]'``), by the presentation timestamps the container carries:

* time 0 is the first video frame (the audio's first sample in a file without video), and both
  tracks are measured from it, so a recording whose sound starts late or early stays in step;
* :class:`ContainerVideo` yields every frame with its true time, and starts at a time by a container
  seek to the key frame before it and decoding forward, never from the file's start;
* :class:`ContainerAudio` reads any range of samples the same way (seek, decode a little before the
  range so the decoder has settled, keep only the range) and reads on without seeking when a read
  continues the previous one, which is how a replay streams a long recording.

Every FFmpeg failure (a file that is not media, a missing index, a truncated or corrupt stream)
becomes a :class:`~fusionedge.sdk.errors.MediaError` that names the file. Without PyAV, :func:`available`
is False and the callers (:mod:`fusionedge.sdk.media`, :mod:`fusionedge.sdk.audio_file`) fall back to
OpenCV for pictures and name the extra to install for sound.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fusionedge.sdk.errors import MediaError
from fusionedge.sdk.media_checks import (
    check_channels,
    check_geometry,
    check_sample_rate,
    fps_or_default,
    missing_decoder,
    regular_file,
)

__all__ = [
    "SEEK_PREROLL_SECONDS",
    "ContainerAudio",
    "ContainerInfo",
    "ContainerVideo",
    "UnreadableMedia",
    "available",
    "probe",
]

log = logging.getLogger("fusionedge.sdk.media")  # the media readers log under one name

#: Seconds decoded before a requested audio range after a seek: AAC overlaps frames, Opus asks for
#: 80 ms of pre-roll and MP3 has a bit reservoir, so the first frames after a seek are not final.
SEEK_PREROLL_SECONDS: float = 0.5
#: Seconds before a requested start at which a video read seeks (closer starts decode from the top).
_VIDEO_SEEK_MIN_SECONDS: float = 1.0

_av_module: Any = None


class UnreadableMedia(MediaError):
    """FFmpeg cannot open the file as media, or it lacks the track asked for (another decoder may)."""


def _av() -> Any:
    """The ``av`` module, or None when PyAV is not installed (imported once, on first use)."""
    global _av_module
    if _av_module is None:
        try:
            _av_module = importlib.import_module("av")
        except ImportError:
            _av_module = False
    return _av_module or None


def available() -> bool:
    """True when PyAV is installed, so containers' sound and timestamps can be read."""
    return _av() is not None


@dataclass(frozen=True)
class ContainerInfo:
    """What a container holds (from its header; nothing is decoded)."""

    path: Path
    video_codec: str | None  # None: no video track
    audio_codec: str | None  # None: no audio track
    duration: float | None  # seconds, where the container states it

    @property
    def has_video(self) -> bool:
        """The file has a video track."""
        return self.video_codec is not None

    @property
    def has_audio(self) -> bool:
        """The file has an audio track."""
        return self.audio_codec is not None


def _open(path: Path) -> Any:
    av = _av()
    if av is None:
        raise missing_decoder(path, f"a {path.suffix or 'container'} file")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise UnreadableMedia(f"{path}: FFmpeg cannot open this as media ({_reason(e)}); check that it is a "
                         f"complete recording — a truncated file loses its index") from e


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return " ".join(str(text).split())[:160]


def probe(path: str | os.PathLike) -> ContainerInfo:
    """Which tracks a container holds, read from its header.

    Args:
        path: a media file.

    Returns:
        A :class:`ContainerInfo`.

    Raises:
        MediaError: the file is missing, not a regular file, PyAV is not installed, or FFmpeg cannot
            open it.
    """
    p = regular_file(path, "media file")
    c = _open(p)
    try:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        duration = c.duration / 1e6 if c.duration else None
        return ContainerInfo(p, v.codec_context.name if v is not None else None,
                             a.codec_context.name if a is not None else None, duration)
    finally:
        c.close()


def _origin(container: Any) -> float:
    """Seconds of the container's time line that are time 0: the first video frame, else the audio's start."""
    for streams in (container.streams.video, container.streams.audio):
        if streams:
            s = streams[0]
            return float(s.start_time * s.time_base) if s.start_time is not None else 0.0
    return 0.0


# ----------------------------------------------------------------------------------------- video


class ContainerVideo:
    """The video track of a container, decoded with each frame's presentation time.

    Args:
        path: a video file (a regular file, links followed).

    Raises:
        MediaError: the file is missing or not a regular file, PyAV is not installed, FFmpeg cannot
            open it, it has no video track, or its header claims a frame rate above ``MAX_FPS`` or a
            side above ``MAX_FRAME_SIDE``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = regular_file(path, "video file")
        self._c = _open(self.path)
        try:
            if not self._c.streams.video:
                raise UnreadableMedia(f"{self.path}: the file has no video track; give a video recording")
            self._s = self._c.streams.video[0]
            self._s.thread_type = "AUTO"
            cc = self._s.codec_context
            check_geometry(self.path, float(cc.width or 0), float(cc.height or 0))
            rate = self._s.average_rate or self._s.guessed_rate  # as OpenCV reports it
            #: Nominal frames per second (the container's; ``DEFAULT_FPS`` where it states none).
            self.fps: float = fps_or_default(float(rate) if rate else None, self.path)
            #: Frames the container declares (0 where it does not say).
            self.declared_frames: int = int(self._s.frames or 0)
            self._origin = _origin(self._c)
        except BaseException:
            self.close()
            raise

    def frames(self, start_seconds: float = 0.0) -> Iterator[tuple[float, Any]]:
        """``(time, frame)`` for every frame from the key frame before ``start_seconds`` on.

        ``time`` is seconds from the first frame by the frame's presentation timestamp (one period
        after the previous frame where a frame has none, or one that does not advance); ``frame`` is
        a decoded ``av.VideoFrame`` (convert with :func:`frame_to_array`). A read from more than a
        second in seeks first. Decoding stops, with a warning, where the file breaks off.
        """
        av = _av()
        if start_seconds > _VIDEO_SEEK_MIN_SECONDS:
            self._seek(self._s, start_seconds - 0.5 / self.fps)
        prev: float | None = None
        i = 0
        try:
            for packet in self._c.demux(self._s):
                for frame in packet.decode():
                    t = float(frame.pts * frame.time_base) - self._origin if frame.pts is not None else None
                    if t is None or (prev is not None and t <= prev):
                        t = (prev + 1.0 / self.fps) if prev is not None else 0.0
                    prev = t
                    i += 1
                    yield t, frame
        except av.error.FFmpegError as e:
            log.warning("%s: decoding stopped after %d frames (truncated or corrupt file?): %s",
                        self.path, i, _reason(e))

    def _seek(self, stream: Any, seconds: float) -> None:
        target = max(0.0, seconds + self._origin)
        try:
            self._c.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
        except _av().error.FFmpegError as e:
            raise MediaError(f"{self.path}: cannot seek to {seconds:g} s ({_reason(e)}); the file's "
                             f"index may be damaged — re-encode it") from e

    def close(self) -> None:
        """Close the file (idempotent)."""
        c, self._c = getattr(self, "_c", None), None
        if c is not None:
            c.close()

    def __enter__(self) -> ContainerVideo:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frame_to_array(frame: Any, order: str = "rgb") -> np.ndarray:
    """A decoded ``av.VideoFrame`` as an ``(H, W, 3)`` uint8 array in ``"rgb"`` or ``"bgr"`` order."""
    return frame.to_ndarray(format="rgb24" if order == "rgb" else "bgr24")


# ----------------------------------------------------------------------------------------- audio

_SCALE = {"s16": 1 / 32768.0, "s32": 1 / 2147483648.0, "s64": 1 / 9223372036854775808.0}


def _frame_samples(frame: Any, channels: int, path: Path) -> np.ndarray:
    """A decoded ``av.AudioFrame`` as ``(n, channels)`` float32 in [-1, 1]."""
    raw = frame.to_ndarray()
    name = frame.format.name.rstrip("p")
    x = raw if frame.format.is_planar else raw.reshape(-1, channels).T  # (C, n)
    if name == "u8":
        out = (x.astype(np.float32) - 128.0) / 128.0
    elif name in _SCALE:
        out = (x.astype(np.float64) * _SCALE[name]).astype(np.float32)
    else:  # flt, dbl
        out = x.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise MediaError(f"{path}: the decoded audio contains NaN or Inf; the file is corrupt")
        np.clip(out, -1.0, 1.0, out=out)
    return np.ascontiguousarray(out.T)


class ContainerAudio:
    """The audio track of a container, read by sample range like a WAV file.

    Sample ``j`` is at ``j / rate`` seconds from time 0 (the first video frame, or the audio's start
    in a file without video); where the track starts later than that, the samples before it are
    silence, and samples before time 0 are not part of the recording. :attr:`frames` is the length
    the container states (a read cuts at the real end, which may differ slightly).

    Args:
        path: a media file with an audio track (mp4, mkv, mov, webm, mp3, ogg, flac, ...).

    Raises:
        MediaError: the file is missing or not a regular file, PyAV is not installed, FFmpeg cannot
            open it, it has no audio track, or its rate or channel count is outside the limits.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = regular_file(path, "audio file")
        self._c = _open(self.path)
        try:
            if not self._c.streams.audio:
                raise MediaError(f"{self.path}: the file has no audio track; give the sound separately "
                                 f"(a WAV file) or run on the pictures alone")
            self._s = self._c.streams.audio[0]
            cc = self._s.codec_context
            #: Samples per second.
            self.rate: int = check_sample_rate(self.path, int(cc.sample_rate or 0), "the audio track's")
            #: Channels.
            self.channels: int = check_channels(self.path, int(cc.layout.nb_channels), "the audio track's")
            self._origin = _origin(self._c)
            self._tb = self._s.time_base
            #: Samples the container states the track holds from time 0 (0 where it does not say).
            self.frames: int = self._declared_frames()
        except BaseException:
            self.close()
            raise
        self._frames_iter: Iterator[Any] | None = None  # decoder output since the last seek
        self._pending: list[tuple[int, np.ndarray]] = []  # decoded blocks not yet read past
        self._next = -1  # the sample a read must start at to continue without a seek
        self._next_decoded = 0  # the sample after the last one decoded
        self._warned = False  # a short track is reported once
        self.codec: str = self._s.codec_context.name

    def _declared_frames(self) -> int:
        s, c = self._s, self._c
        if s.duration is not None and s.duration > 0:
            start = float(s.start_time * self._tb) if s.start_time is not None else 0.0
            end = start + float(s.duration * self._tb)
        elif c.duration:
            end = c.duration / 1e6 + (c.start_time or 0) / 1e6
        else:
            return 0
        return max(0, round((end - self._origin) * self.rate))

    @property
    def seconds(self) -> float:
        """Duration the container states, from time 0."""
        return self.frames / self.rate

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``start .. start+count-1`` (cut at the end of the track) as ``(n, C)`` float32.

        Raises:
            MediaError: the file was closed, or FFmpeg fails to seek (a damaged index). A track that
                breaks off (a truncated file) ends there, with a warning.
        """
        if self._c is None:
            raise MediaError(f"{self.path}: the audio file is closed")
        start, count = max(0, int(start)), max(0, int(count))
        if count == 0:
            return np.zeros((0, self.channels), np.float32)
        if start != self._next or self._frames_iter is None:
            self._restart(start)
        out = np.zeros((count, self.channels), np.float32)
        end = start + count
        filled = start  # samples before this are covered (or a gap the track leaves silent)

        def take(pos: int, block: np.ndarray) -> None:
            nonlocal filled
            a, b = max(pos, start), min(pos + len(block), end)
            if a < b:
                out[a - start:b - start] = block[a - pos:b - pos]
                filled = max(filled, b)

        for pos, block in self._pending:
            take(pos, block)
        reached_end = False
        while not (self._pending and self._pending[-1][0] + len(self._pending[-1][1]) >= end):
            decoded = self._decode_next()
            if decoded is None:
                reached_end = True
                break
            self._pending.append(decoded)
            take(*decoded)
        self._pending = [(p, b) for p, b in self._pending if p + len(b) > end]  # for the next read
        self._next = end
        if reached_end:
            return out[: max(0, filled - start)]
        return out

    def read_all(self) -> np.ndarray:
        """The whole track from time 0, ``(n, C)`` float32."""
        blocks: list[np.ndarray] = []
        pos = 0
        step = max(self.rate * 10, 1)
        while True:
            block = self.read(pos, step)
            blocks.append(block)
            pos += len(block)
            if len(block) < step:
                break
        return np.concatenate(blocks) if blocks else np.zeros((0, self.channels), np.float32)

    def _restart(self, start: int) -> None:
        """Seek so that decoding resumes a pre-roll before sample ``start``."""
        seconds = start / self.rate - SEEK_PREROLL_SECONDS
        self._pending = []
        try:
            if seconds > 0:
                target = seconds + self._origin
                self._c.seek(int(target / self._tb), stream=self._s, backward=True, any_frame=False)
            else:
                self._c.seek(0, backward=True, any_frame=False)
        except _av().error.FFmpegError as e:
            raise MediaError(f"{self.path}: cannot seek to {start / self.rate:g} s ({_reason(e)}); the "
                             f"file's index may be damaged — re-encode it") from e
        self._frames_iter = self._decoded()

    def _decoded(self) -> Iterator[Any]:
        for packet in self._c.demux(self._s):
            yield from packet.decode()

    def _decode_next(self) -> tuple[int, np.ndarray] | None:
        """The next decoded block and its first sample's index, or None at the end of the track."""
        av = _av()
        assert self._frames_iter is not None
        try:
            frame = next(self._frames_iter)
        except StopIteration:
            if not self._warned and self.frames and self._next_decoded < self.frames - self.rate // 10:
                self._warned = True  # the index promised more than the file holds
                log.warning("%s: the audio track ends at %.2f s of the %.2f s its header states (truncated "
                            "file?)", self.path, self._next_decoded / self.rate, self.frames / self.rate)
            return None
        except av.error.FFmpegError as e:  # a file that breaks off: what came before it is the track
            self._warned = True
            log.warning("%s: decoding the audio track stopped at %.2f s (truncated or corrupt file?): %s",
                        self.path, self._next_decoded / self.rate, _reason(e))
            self._frames_iter = iter(())
            return None
        if frame.pts is None:  # no timestamp: it continues the previous block
            last = self._pending[-1] if self._pending else None
            pos = last[0] + len(last[1]) if last is not None else 0
        else:
            pos = round((float(frame.pts * frame.time_base) - self._origin) * self.rate)
        if frame.sample_rate != self.rate:
            raise MediaError(f"{self.path}: the audio track changes its sample rate mid-way "
                             f"({self.rate} -> {frame.sample_rate} Hz); re-encode it at one rate")
        samples = _frame_samples(frame, self.channels, self.path)
        if pos < 0:  # before time 0: not part of the recording
            samples, pos = samples[-pos:], 0
        self._next_decoded = pos + len(samples)
        return pos, samples

    def close(self) -> None:
        """Close the file (idempotent)."""
        c, self._c = getattr(self, "_c", None), None
        self._frames_iter = None
        if c is not None:
            c.close()

    def __enter__(self) -> ContainerAudio:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

