"""Audio from files of any kind, read by window: WAV, FLAC, OGG/Opus, MP3, and the sound of a video.

:func:`open_audio` picks the reader for a file, and every reader has the same small interface
(``rate``, ``channels``, ``frames``, ``read(start, count)``, ``read_all()``, ``close()``), so
:func:`read_audio` and :func:`read_audio_window` — and through them prediction, evaluation, training
and replay — read any of them alike:

* a WAV file in PCM or float goes to the built-in reader (:class:`~fusionedge.sdk.wav.WavFile`), which
  needs nothing installed;
* FLAC, OGG, AIFF, and WAV files in other encodings go to ``soundfile`` (libsndfile), which seeks
  and reads only the window;
* anything else — the AAC, Opus or MP3 track of an mp4/mkv/mov recording, an mp3 — goes to PyAV
  (:class:`~fusionedge.sdk.media_av.ContainerAudio`), on the recording's own time line.

``soundfile`` and PyAV come with ``pip install 'fusionedge[media]'``; without them a file that needs
one raises a one-line :class:`~fusionedge.sdk.errors.MediaError` naming the extra. :func:`embedded_audio`
says whether a video file carries sound the runtime can read, which is how ``predict``, ``run`` and
data-set manifests use a recording's own sound when no separate audio file is given.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fusionedge.sdk import media_av
from fusionedge.sdk.errors import MediaError
from fusionedge.sdk.media_checks import (
    check_channels,
    check_sample_rate,
    finite,
    missing_decoder,
    regular_file,
)
from fusionedge.sdk.preprocess import resample_context
from fusionedge.sdk.wav import UNSUPPORTED_ENCODING, WavFile

__all__ = [
    "SOUNDFILE_SUFFIXES",
    "WAV_SUFFIXES",
    "AudioClip",
    "AudioReader",
    "SoundFileAudio",
    "embedded_audio",
    "open_audio",
    "read_audio",
    "read_audio_window",
]

log = logging.getLogger("fusionedge.sdk.media")  # the media readers log under one name

#: File name endings read by the built-in WAV reader (then soundfile for encodings it lacks).
WAV_SUFFIXES: tuple[str, ...] = (".wav", ".wave")
#: File name endings read by soundfile (then PyAV, e.g. for Opus in an OGG file libsndfile lacks).
SOUNDFILE_SUFFIXES: tuple[str, ...] = (".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".aifc")
_NAMES = {".flac": "FLAC audio", ".ogg": "OGG audio", ".oga": "OGG audio", ".opus": "Opus audio",
          ".aiff": "AIFF audio", ".aif": "AIFF audio", ".aifc": "AIFF audio", ".mp3": "MP3 audio"}


class AudioReader(Protocol):
    """What every audio reader offers: the file's rate and channels and reads by sample range."""

    path: Path
    rate: int
    channels: int
    frames: int  # samples per channel the file holds (a container's stated length)

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``start .. start+count-1``, cut at the end, as ``(n, C)`` float32 in [-1, 1]."""

    def read_all(self) -> np.ndarray:
        """Every sample, ``(frames, C)`` float32."""

    def close(self) -> None:
        """Close the file (idempotent)."""

    def __enter__(self) -> AudioReader:  # noqa: PYI034 - py3.10 has no typing.Self
        """The reader itself, closed when the ``with`` block ends."""

    def __exit__(self, *exc: object) -> None:
        """Close the file."""


def _soundfile() -> Any:
    try:
        return importlib.import_module("soundfile")
    except (ImportError, OSError):  # OSError: the package is there but libsndfile is not
        return None


class SoundFileAudio:
    """A file libsndfile reads (FLAC, OGG Vorbis/Opus, AIFF, WAV in any encoding), read by range.

    Opening reads the header; :meth:`read` seeks to the first sample asked for and decodes only the
    range, so a window of a long FLAC recording costs that window.

    Args:
        path: the audio file (a regular file, links followed).

    Raises:
        MediaError: soundfile is not installed, the file is missing, not a regular file, not a format
            libsndfile reads, or declares a rate or channel count outside the limits.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = regular_file(path, "audio file")
        sf = _soundfile()
        if sf is None:
            raise missing_decoder(self.path, _NAMES.get(self.path.suffix.lower(), "this audio file"))
        try:
            self._f: Any = sf.SoundFile(str(self.path))
        except RuntimeError as e:  # soundfile's LibsndfileError
            raise MediaError(f"{self.path}: libsndfile cannot read this audio file ({e}); check that it is "
                             f"complete, or convert it to WAV") from e
        try:
            self.rate: int = check_sample_rate(self.path, int(self._f.samplerate), "the audio")
            self.channels: int = check_channels(self.path, int(self._f.channels), "the audio")
            self.frames: int = max(0, int(self._f.frames))
        except BaseException:
            self.close()
            raise

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``start .. start+count-1`` (cut at the end) as ``(n, C)`` float32.

        Raises:
            MediaError: the file was closed, or libsndfile fails mid-read (a truncated file).
        """
        if self._f is None:
            raise MediaError(f"{self.path}: the audio file is closed")
        start = max(0, int(start))
        n = max(0, min(int(count), self.frames - start))
        if n == 0:
            return np.zeros((0, self.channels), np.float32)
        try:
            self._f.seek(start)
            data = self._f.read(n, dtype="float32", always_2d=True)
        except (RuntimeError, ValueError) as e:
            raise MediaError(f"{self.path}: cannot read samples {start}..{start + n} ({e}); the file is "
                             f"truncated or corrupt") from e
        if not np.all(np.isfinite(data)):
            raise MediaError(f"{self.path}: the samples contain NaN or Inf; the file is corrupt")
        return np.ascontiguousarray(np.clip(data, -1.0, 1.0, out=data))

    def read_all(self) -> np.ndarray:
        """Every sample, ``(frames, C)`` float32."""
        return self.read(0, self.frames)

    def close(self) -> None:
        """Close the file (idempotent)."""
        f, self._f = getattr(self, "_f", None), None
        if f is not None:
            f.close()

    def __enter__(self) -> SoundFileAudio:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_audio(path: str | os.PathLike) -> AudioReader:
    """Open an audio file, or the audio track of a video, with the reader its kind needs.

    A ``.wav`` file is read by the built-in reader (soundfile for encodings it lacks, such as ADPCM);
    FLAC, OGG, Opus and AIFF files by soundfile (PyAV where libsndfile cannot); any other file —
    mp3, mp4, mkv, mov, webm — by PyAV, which reads the first audio track.

    Args:
        path: the file.

    Returns:
        An open :class:`AudioReader` (close it, or use it in a ``with`` block).

    Raises:
        MediaError: the file is missing or not a regular file, cannot be read as audio, has no audio
            track, or needs ``fusionedge[media]`` which is not installed (the message says so).
    """
    p = regular_file(path, "audio file")
    suffix = p.suffix.lower()
    if suffix in WAV_SUFFIXES:
        try:
            return WavFile(p)
        except MediaError as e:
            if UNSUPPORTED_ENCODING not in str(e) or _soundfile() is None:
                raise
            try:
                return SoundFileAudio(p)
            except MediaError:
                raise e from None  # libsndfile cannot either: the built-in reader says what to convert
    if suffix in SOUNDFILE_SUFFIXES:
        if _soundfile() is None and not media_av.available():
            raise missing_decoder(p, _NAMES[suffix])
        if _soundfile() is not None:
            try:
                return SoundFileAudio(p)
            except MediaError:
                if not media_av.available():
                    raise
        return media_av.ContainerAudio(p)
    if not media_av.available():
        raise missing_decoder(p, _NAMES.get(suffix, f"the sound of a {suffix or 'container'} file"))
    return media_av.ContainerAudio(p)


def embedded_audio(video: str | os.PathLike | None) -> Path | None:
    """``video`` itself when it is a file with an audio track that can be read here, else None.

    This is the sound a recording carries (a dashcam's mp4 with AAC): used when no separate audio is
    given. A folder of images, a device or stream URI, a file without an audio track, and any file
    while PyAV is not installed give None (the last is logged once per call, since the sound is
    then left unused).

    Args:
        video: a video path (or None).

    Returns:
        The path to read the sound from, or None.
    """
    if video is None:
        return None
    p = Path(video)
    if not p.is_file():
        return None
    if not media_av.available():
        log.info("%s: the sound of a video file is read with %s; running without it", p,
                 "pip install 'fusionedge[media]'")
        return None
    try:
        return p if media_av.probe(p).has_audio else None
    except MediaError:
        return None  # the video reader reports what is wrong with the file


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read the whole of an audio file (or of a video's audio track), any rate and channel count.

    For a window of a long recording use :func:`read_audio_window`, which reads only that window.

    Args:
        path: an audio file or a video with sound (see :func:`open_audio`).

    Returns:
        ``(samples, sample_rate)``: ``(S, C)`` float32 in [-1, 1], and the rate in Hz.

    Raises:
        MediaError: as :func:`open_audio`, or the file holds no samples or NaN/Inf.
    """
    reader = open_audio(path)
    try:
        samples = reader.read_all()
        if samples.size == 0:
            raise MediaError(f"{reader.path}: the {_kind(reader)} holds no audio samples")
        return samples, reader.rate
    finally:
        reader.close()


@dataclass(frozen=True)
class AudioClip:
    """Samples of a time window of an audio file, with the filter context either side."""

    samples: np.ndarray  # (S, C) float32 in [-1, 1]
    rate: int  # Hz
    start_seconds: float  # where the requested window starts within ``samples`` (seconds)
    first: int  # index in the file of ``samples[0]``


def read_audio_window(
    path: str | os.PathLike, start_seconds: float, seconds: float, *, target_rate: int
) -> AudioClip:
    """Read the samples of ``[start_seconds, start_seconds + seconds)`` and the resampler's context.

    :func:`fusionedge.sdk.preprocess.preprocess_audio` of the result (at ``clip.start_seconds``) is
    bit for bit what it gives on the whole file at ``start_seconds`` for WAV, FLAC and other sample-exact
    files, for any rate converted to ``target_rate``, while only about ``seconds`` of audio is read. A
    lossy track in a container (AAC, Opus) is sought to and decoded from a pre-roll before the window;
    its decoder settles to within about 1e-4 of a decode from the start.

    Args:
        path: an audio file or a video with sound (see :func:`open_audio`).
        start_seconds: window start, >= 0.
        seconds: window length, > 0.
        target_rate: the rate the window will be resampled to (Hz), which sets the context needed.

    Returns:
        An :class:`AudioClip`.

    Raises:
        MediaError: as :func:`open_audio`, or the file holds no samples.
        InputError: a bad start, length or target rate.
    """
    start = finite(start_seconds, "start_seconds", minimum=0.0)
    length = finite(seconds, "seconds", minimum=None)
    reader = open_audio(path)
    try:
        if reader.frames == 0 and isinstance(reader, (WavFile, SoundFileAudio)):
            raise MediaError(f"{reader.path}: the {_kind(reader)} holds no audio samples")
        ctx = resample_context(reader.rate, target_rate)
        s0 = round(start * reader.rate)
        lo = max(0, s0 - ctx)
        hi = s0 + math.ceil(length * reader.rate) + ctx
        samples = reader.read(lo, hi - lo)
        return AudioClip(samples=samples, rate=reader.rate, start_seconds=(s0 - lo) / reader.rate, first=lo)
    finally:
        reader.close()


def _kind(reader: AudioReader) -> str:
    return "WAV file" if isinstance(reader, WavFile) else "audio file"
