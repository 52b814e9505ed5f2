"""What every importer shares: planned samples, refused rows, media writing and the all-or-nothing output.

An importer first reads its source completely and turns it into :class:`Planned` samples (each with a
function that writes the sample's media) and :class:`Refusal` rows, without writing anything. Only
when no row was refused (or the caller skips refused rows) does :func:`write_dataset` make the media
in a staging folder beside the output, write the manifest last, and move the folder into place with
one rename, so a failed or interrupted import leaves no half-written data set behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import wave
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from fusionedge.sdk.datamanifest import MANIFEST_NAME, Box, Sample, read_manifest, write_manifest
from fusionedge.sdk.errors import DataError, InputError, MediaError
from fusionedge.sdk.fileio import fsync_dir
from fusionedge.sdk.media import WavFile
from tqdm import tqdm

__all__ = [
    "MEDIA_DIR",
    "STILL_SIZE",
    "VIDEO_EXTENSIONS",
    "ImportResult",
    "Planned",
    "Refusal",
    "clip_box",
    "link_or_copy",
    "read_image",
    "refuse_or_skip",
    "safe_id",
    "write_black_video",
    "write_dataset",
    "write_video",
    "write_wav_window",
]

#: Sub-folder of the output that holds the media files.
MEDIA_DIR = "media"
#: File name endings read as videos (anything else a folder importer meets is skipped or is audio).
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
#: ``(width, height)`` of the black video written for an audio-only clip (the manifest needs a video).
STILL_SIZE: tuple[int, int] = (64, 64)


@dataclass(frozen=True)
class Refusal:
    """A source row that cannot be imported: where it is (``file:line`` or an annotation id) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Planned:
    """A sample to write: its manifest labels, and how to make its media in the media folder.

    ``make(media_dir)`` writes the files and returns ``(video, audio)`` paths (audio may be None).
    """

    id: str
    make: Callable[[Path], tuple[Path, Path | None]]
    event: str | None = None
    audio_tags: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    width: int | None = None
    height: int | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class ImportResult:
    """What an import wrote: the manifest, and counts to compare with the source."""

    manifest: Path
    format: str
    samples: int
    events: dict[str, int]
    audio_tags: dict[str, int]
    boxes: dict[str, int]
    refused: list[str]

    def as_dict(self) -> dict:
        """The summary as plain JSON types (``--json``)."""
        return {"manifest": str(self.manifest), "format": self.format, "samples": self.samples,
                "events": self.events, "audio_tags": self.audio_tags, "boxes": self.boxes,
                "refused": self.refused}


def refuse_or_skip(source: str, refusals: Sequence[Refusal], *, skip_invalid: bool) -> list[str]:
    """Raise one :class:`DataError` listing every refused row, unless ``skip_invalid``.

    Returns:
        The refused rows as text (listed in the summary when they are skipped).
    """
    rows = [str(r) for r in refusals]
    if rows and not skip_invalid:
        raise DataError(f"{source}: {len(rows)} row(s) refused, nothing written "
                        f"(--skip-invalid leaves them out): " + "; ".join(rows))
    return rows


def safe_id(text: str) -> str:
    """A sample id usable as a file name: path separators and odd characters become ``_``."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._")
    return out or "sample"


def clip_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple | None:
    """The box cut to the image ``[0, width] x [0, height]``; None when nothing of it is left."""
    x1, x2 = max(0.0, min(float(x1), width)), max(0.0, min(float(x2), width))
    y1, y2 = max(0.0, min(float(y1), height)), max(0.0, min(float(y2), height))
    if not (x1 < x2 and y1 < y2):
        return None
    return x1, y1, x2, y2


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB ``(H, W, 3)`` uint8.

    Raises:
        MediaError: the file is missing or OpenCV cannot decode it.
    """
    if not path.is_file():
        raise MediaError(f"{path}: image file not found")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise MediaError(f"{path}: OpenCV cannot decode this image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_video(path: Path, frames_rgb: Iterable[np.ndarray], fps: float) -> None:
    """Encode RGB frames (all one size) as an mp4 (``mp4v``) and fsync it.

    Raises:
        MediaError: no frame given, frames of different sizes, or OpenCV cannot open the writer.
    """
    writer = None
    size = None
    try:
        for f in frames_rgb:
            h, w = f.shape[:2]
            if writer is None:
                size = (w, h)
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
                if not writer.isOpened():
                    raise MediaError(f"{path}: OpenCV cannot open an mp4v video writer")
            elif (w, h) != size:
                raise MediaError(f"{path}: frame of {w}x{h} in a clip of {size[0]}x{size[1]}")
            writer.write(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2BGR))
    finally:
        if writer is not None:
            writer.release()
    if writer is None:
        raise MediaError(f"{path}: no frame to write")
    _fsync(path)


def write_black_video(path: Path, seconds: float, fps: float) -> None:
    """A black :data:`STILL_SIZE` video of ``seconds`` (at least one frame), for an audio-only clip."""
    w, h = STILL_SIZE
    n = max(1, round(seconds * fps))
    black = np.zeros((h, w, 3), np.uint8)
    write_video(path, (black for _ in range(n)), fps)


def write_wav_window(src: Path, dst: Path, start: float | None, end: float | None) -> float:
    """Copy ``[start, end)`` seconds of a WAV file as 16-bit PCM (the whole file: a link or copy).

    Returns:
        The seconds written.

    Raises:
        MediaError: the source is not a WAV file the runtime reads, or the window holds no sample.
    """
    with WavFile(src) as w:
        if start is None and end is None:
            seconds = w.seconds
            link_or_copy(src, dst)
            return seconds
        first = round((start or 0.0) * w.rate)
        last = w.frames if end is None else min(w.frames, round(end * w.rate))
        if last <= first:
            raise MediaError(f"{src}: no audio in [{start}, {end}) s (the file holds {w.seconds:.3f} s)")
        samples = w.read(first, last - first)
        rate, channels = w.rate, w.channels
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(dst), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    _fsync(dst)
    return (last - first) / rate


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no copy of a large file), or copy it where linking is refused."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        _fsync(dst)


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: folder is not empty; pass --overwrite to replace it")


def write_dataset(
    out: str | os.PathLike, fmt: str, planned: Sequence[Planned], refused: Sequence[str], *,
    overwrite: bool = False, progress: bool = True,
) -> ImportResult:
    """Write the planned samples as a data set in ``out`` (``manifest.jsonl`` + ``media/``), all or nothing.

    The media and then the manifest are written into a staging folder beside ``out``; the manifest is
    read back with the project's reader (the data's own vocabularies) before the folder is renamed to
    ``out``. An existing ``out`` is replaced only with ``overwrite``, and only once the new set is whole.

    Raises:
        InputError: ``out`` is a file, or a non-empty folder without ``overwrite``; nothing to import.
        MediaError: a source file cannot be decoded or re-encoded (nothing is left behind).
        OSError: the output folder cannot be written.
    """
    out = Path(os.path.abspath(out))  # media paths must be absolute to be written relative to the manifest
    _check_out(out, overwrite)
    if not planned:
        raise InputError(f"{out}: nothing to import (no sample left)")
    ids = Counter(p.id for p in planned)
    dup = sorted(i for i, n in ids.items() if n > 1)
    if dup:
        raise DataError(f"{fmt} import: sample ids repeat: {', '.join(dup[:5])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        media = stage / MEDIA_DIR
        media.mkdir()
        samples = []
        for p in tqdm(planned, desc=f"import {fmt}", unit="clip", disable=not progress):
            video, audio = p.make(media)
            samples.append(Sample(p.id, video, audio, p.event, p.audio_tags, p.boxes, p.width, p.height,
                                  dict(p.meta)))
        fsync_dir(media)
        write_manifest(stage / MANIFEST_NAME, samples)
        read_manifest(stage, require_labels=False, events=None, audio_tags=None, objects=None)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ImportResult(
        manifest=out / MANIFEST_NAME, format=fmt, samples=len(samples),
        events=_counts(s.event for s in samples if s.event is not None),
        audio_tags=_counts(t for s in samples for t in s.audio_tags),
        boxes=_counts(b.label for s in samples for b in s.boxes),
        refused=list(refused),
    )

