"""The checks every media reader applies before it trusts a file: regular files only, sane headers.

A FIFO blocks whoever opens it and a device such as ``/dev/zero`` never ends, so the video and audio
readers (:mod:`fusionedge.sdk.media`, :mod:`fusionedge.sdk.audio_file`, :mod:`fusionedge.sdk.wav`,
:mod:`fusionedge.sdk.media_av`) accept regular files only; and a header claiming a 100000-pixel frame or
a 4 GHz sample rate is taken as corrupt rather than allocated for. The limits live here, once, so that
every decoder refuses the same things with the same words, and the optional decoders (PyAV, soundfile)
are named in one message when a file needs them and they are not installed.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from pathlib import Path

from fusionedge.sdk.errors import InputError, MediaError
from fusionedge.sdk.preprocess import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

__all__ = [
    "DEFAULT_FPS",
    "MAX_CHANNELS",
    "MAX_FPS",
    "MAX_FRAME_SIDE",
    "MAX_SAMPLE_RATE",
    "MEDIA_EXTRA_HINT",
    "MIN_SAMPLE_RATE",
    "check_channels",
    "check_geometry",
    "check_sample_rate",
    "finite",
    "fps_or_default",
    "missing_decoder",
    "regular_file",
]

log = logging.getLogger("fusionedge.sdk.media")

#: Frame rate assumed when a file reports none (0 or NaN), and for a folder of images.
DEFAULT_FPS: float = 30.0
#: Highest frame rate a video may claim; above it the header is taken as corrupt.
MAX_FPS: float = 1000.0
#: Longest frame side, in pixels, a video may have (16K).
MAX_FRAME_SIDE: int = 16384
#: Most channels an audio file may declare.
MAX_CHANNELS: int = 256
#: How to install the optional decoders (PyAV, soundfile, soxr).
MEDIA_EXTRA_HINT: str = "pip install 'fusionedge[media]'"


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """The path, checked to be a regular file once symbolic links are followed.

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


def fps_or_default(value: float | None, path: Path) -> float:
    """The reported frame rate, or ``DEFAULT_FPS`` (logged) where it is 0, negative, NaN or missing.

    Args:
        value: the rate the container reports (any type a decoder returns).
        path: the file, for the messages.

    Returns:
        A frame rate in ``(0, MAX_FPS]``.

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


def check_geometry(path: Path, width: float, height: float) -> None:
    """Refuse a header whose frame size is beyond ``MAX_FRAME_SIDE`` (0 / NaN: not stated, allowed).

    Raises:
        MediaError: a side above the limit.
    """
    for name, v in (("width", width), ("height", height)):
        if math.isfinite(v) and v > MAX_FRAME_SIDE:
            raise MediaError(f"{path}: the video claims a frame {name} of {v:g} pixels, above the "
                             f"{MAX_FRAME_SIDE} limit; the header is corrupt or the video must be "
                             f"scaled down")


def check_sample_rate(path: Path, rate: int, what: str = "audio") -> int:
    """``rate`` if it lies in ``MIN_SAMPLE_RATE .. MAX_SAMPLE_RATE``.

    Raises:
        MediaError: a rate outside the limits (a corrupt header).
    """
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise MediaError(f"{path}: {what} header says a sample rate of {rate} Hz, outside "
                         f"{MIN_SAMPLE_RATE} .. {MAX_SAMPLE_RATE} Hz; the header is corrupt — "
                         f"re-encode the file")
    return int(rate)


def check_channels(path: Path, channels: int, what: str = "audio") -> int:
    """``channels`` if it lies in ``1 .. MAX_CHANNELS``.

    Raises:
        MediaError: no channel or more than the limit.
    """
    if channels < 1 or channels > MAX_CHANNELS:
        raise MediaError(f"{path}: {what} header says {channels} channels (1..{MAX_CHANNELS}); "
                         f"the file is malformed")
    return int(channels)


def finite(value: float, what: str, *, minimum: float | None) -> float:
    """``value`` as a finite float, ``>= minimum`` (or ``> 0`` when ``minimum`` is None).

    Raises:
        InputError: not a number, not finite, or out of range.
    """
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be a number, got {value!r}") from e
    ok = math.isfinite(v) and (v >= minimum if minimum is not None else v > 0)
    if not ok:
        bound = f">= {minimum:g}" if minimum is not None else "> 0"
        raise InputError(f"{what} must be a finite number {bound}, got {value!r}")
    return v


def missing_decoder(path: Path, what: str) -> MediaError:
    """The one-line error for a file that only the optional decoders read.

    Args:
        path: the file.
        what: what reading it needs, e.g. "FLAC audio", "the sound of a .mp4 file".
    """
    return MediaError(f"{path}: reading {what} needs the optional decoders (PyAV, soundfile); "
                      f"install them with {MEDIA_EXTRA_HINT}")
