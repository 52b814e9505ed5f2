"""Data-set manifests: the one format FusionEdge reads labelled (or unlabelled) clips from.

A manifest is a JSON Lines file, one sample per line, with media paths relative to the manifest's
folder. The synthetic generator writes exactly what a user would bring for real data::

    {"id": "000017", "video": "media/000017.mp4", "audio": "media/000017.wav",
     "event": "emergency_ahead", "audio_tags": ["siren", "engine"],
     "boxes": [{"label": "car", "box": [12, 40, 88, 90]}], "width": 320, "height": 192}

Fields:

``id``          str, unique in the file
``video``       str: path of the clip (relative to the manifest's folder, or absolute); may be left out
                (or null) in a row with an ``audio`` file: an audio-only clip, which has no boxes
``audio``       str; null when the clip has no microphone; absent: the video file's own sound track
                where it has one (a dashcam's mp4 with AAC, read with ``fusionedge[media]``), else none
                (resolved when the files are checked; an audio path may itself name a video file)
``event``       str, one of the event vocabulary; required unless read with ``require_labels=False``
``audio_tags``  list of str from the audio-tag vocabulary (multi-label); default []

The vocabularies default to :mod:`fusionedge.sdk.spec`'s; reading with ``events=None`` (and/or
``audio_tags=None``, ``objects=None``) accepts any non-empty label, for a data set brought in with
its own classes (``fusionedge data import``, ``fusionedge data check``).
``boxes``       list of ``{"label": str, "box": [x1, y1, x2, y2]}`` in pixels of the clip's **last
                frame**, x1 < x2, y1 < y2, finite; default []
``width``, ``height``  ints, the video's size; when given, boxes must lie inside [0, width] x [0, height]
``questions``   list of ``{"question": str, "answer": str, "type": str}``: questions about the clip
                and their answers, for scene question answering; ``type`` is an identifier
                (``[a-z][a-z0-9_]*``: "exist", "count", "hear", ...), a question holds at most
                1000 characters; default []

Any other key is kept in :attr:`Sample.meta`. Blank lines are skipped.

Use :func:`read_manifest` to load and validate one (every problem raises
:class:`~fusionedge.sdk.errors.DataError` naming the file, the line and the field) and
:func:`write_manifest` to save one atomically.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError
from .fileio import loads_json, write_text_atomic
from .spec import AUDIO_TAGS, EVENTS, OBJECTS

__all__ = ["MANIFEST_NAME", "MAX_QUESTION_CHARS", "Box", "Question", "Sample", "manifest_path", "read_manifest",
           "write_manifest"]

#: The file name looked for when a folder is given.
MANIFEST_NAME = "manifest.jsonl"

_KNOWN = ("id", "video", "audio", "event", "audio_tags", "boxes", "width", "height", "questions")

#: The longest question a manifest may carry, in characters.
MAX_QUESTION_CHARS = 1000

_QUESTION_TYPE = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Box:
    """An object box in pixels of the clip's last frame (x2, y2 are the right/bottom edges)."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Question:
    """A question about a clip, its answer, and its type (an identifier such as "count" or "hear")."""

    question: str
    answer: str
    type: str


@dataclass(frozen=True)
class Sample:
    """One clip and its labels. Paths are absolute when read by :func:`read_manifest`."""

    id: str
    video: Path | None  # None: an audio-only clip
    audio: Path | None
    event: str | None
    audio_tags: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    width: int | None = None
    height: int | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    questions: tuple[Question, ...] = ()


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest file for ``path``: the path itself, or ``path/manifest.jsonl`` for a folder."""
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


class _Line:
    """Validation helpers bound to one line, so every message names file, line and field."""

    def __init__(self, file: Path, lineno: int):
        self.where = f"{file}:{lineno}"

    def fail(self, fld: str, msg: str) -> DataError:
        return DataError(f"{self.where}: field {fld!r}: {msg}")

    def string(self, rec: dict, fld: str, *, required: bool) -> str | None:
        v = rec.get(fld)
        if v is None:
            if required:
                raise self.fail(fld, "is required" if fld not in rec else "must not be null")
            return None
        if not isinstance(v, str):
            raise self.fail(fld, f"must be a string, got {type(v).__name__} {_short(v)}")
        if not v:
            raise self.fail(fld, "must not be empty")
        return v

    def label(self, v: Any, fld: str, vocab: Sequence[str] | None) -> str:
        if not isinstance(v, str):
            raise self.fail(fld, f"must be a string, got {type(v).__name__} {_short(v)}")
        if vocab is None:
            if not v:
                raise self.fail(fld, "must not be empty")
            return v
        if v not in vocab:
            known = ", ".join(vocab) if len(vocab) else "nothing (the vocabulary is empty: the task has no such head)"
            raise self.fail(fld, f"{v!r} is not one of {known}")
        return v

    def size(self, rec: dict, fld: str) -> int | None:
        v = rec.get(fld)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(fld, f"must be an integer, got {type(v).__name__} {_short(v)}")
        if v <= 0:
            raise self.fail(fld, f"must be positive, got {v}")
        return v


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _media(line: _Line, rec: dict, fld: str, root: Path, *, required: bool, check: bool) -> Path | None:
    rel = line.string(rec, fld, required=required)
    if rel is None:
        return None
    p = Path(rel)
    p = p if p.is_absolute() else root / p
    p = Path(os.path.normpath(p))
    if check and not p.is_file():
        raise line.fail(fld, f"file not found: {p}")
    return p


def _boxes(
    line: _Line, rec: dict, objects: Sequence[str] | None, width: int | None, height: int | None
) -> tuple[Box, ...]:
    raw = rec.get("boxes")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise line.fail("boxes", f"must be a list, got {type(raw).__name__}")
    out = []
    for k, b in enumerate(raw):
        fld = f"boxes[{k}]"
        if not isinstance(b, dict):
            raise line.fail(fld, f"must be an object with 'label' and 'box', got {type(b).__name__}")
        if "label" not in b:
            raise line.fail(f"{fld}.label", "is required")
        label = line.label(b["label"], f"{fld}.label", objects)
        xy = b.get("box")
        if not isinstance(xy, list) or len(xy) != 4:
            raise line.fail(f"{fld}.box", f"must be a list [x1, y1, x2, y2], got {_short(xy)}")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in xy):
            raise line.fail(f"{fld}.box", f"must hold 4 finite numbers, got {_short(xy)}")
        x1, y1, x2, y2 = (float(v) for v in xy)
        if not (x1 < x2 and y1 < y2):
            raise line.fail(f"{fld}.box", f"needs x1 < x2 and y1 < y2, got {_short(xy)}")
        if width is not None and (x1 < 0 or x2 > width):
            raise line.fail(f"{fld}.box", f"x outside the image [0, {width}]: {_short(xy)}")
        if height is not None and (y1 < 0 or y2 > height):
            raise line.fail(f"{fld}.box", f"y outside the image [0, {height}]: {_short(xy)}")
        out.append(Box(label, x1, y1, x2, y2))
    return tuple(out)


def _questions(line: _Line, rec: dict) -> tuple[Question, ...]:
    raw = rec.get("questions")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise line.fail("questions", f"must be a list, got {type(raw).__name__} {_short(raw)}")
    out = []
    for k, q in enumerate(raw):
        fld = f"questions[{k}]"
        if not isinstance(q, dict):
            raise line.fail(fld, f"must be an object with 'question', 'answer' and 'type', got {type(q).__name__}")
        extra = sorted(set(q) - {"question", "answer", "type"})
        if extra:
            raise line.fail(fld, f"unknown keys {extra} (expected 'question', 'answer', 'type')")
        values = []
        for key in ("question", "answer", "type"):
            v = q.get(key)
            if v is None:
                raise line.fail(f"{fld}.{key}", "is required")
            if not isinstance(v, str):
                raise line.fail(f"{fld}.{key}", f"must be a string, got {type(v).__name__} {_short(v)}")
            if not v.strip():
                raise line.fail(f"{fld}.{key}", "must not be empty")
            values.append(v)
        text, answer, qtype = values
        if len(text) > MAX_QUESTION_CHARS:
            raise line.fail(f"{fld}.question", f"holds {len(text)} characters; the limit is {MAX_QUESTION_CHARS}")
        if not _QUESTION_TYPE.fullmatch(qtype):
            raise line.fail(f"{fld}.type", f"must be an identifier [a-z][a-z0-9_]*, got {_short(qtype)}")
        out.append(Question(text, answer, qtype))
    return tuple(out)


def _parse(
    line: _Line, rec: Any, root: Path, *, require_labels: bool, check_files: bool, embedded_audio: bool,
    events: Sequence[str] | None, audio_tags: Sequence[str] | None, objects: Sequence[str] | None,
) -> Sample:
    if not isinstance(rec, dict):
        raise DataError(f"{line.where}: each line must be a JSON object, got {type(rec).__name__}")
    sid = line.string(rec, "id", required=True)
    # an audio-only row (audio, no boxes) may leave the video out
    video = _media(line, rec, "video", root, required=rec.get("audio") is None or bool(rec.get("boxes")),
                   check=check_files)
    if "audio" in rec or not embedded_audio:
        audio = _media(line, rec, "audio", root, required=False, check=check_files)
    else:  # absent: the recording's own sound, where it carries one
        from .audio_file import embedded_audio as sound_of  # the media readers load only when asked

        audio = sound_of(video)
    event = rec.get("event")
    if event is None:
        if require_labels:
            raise line.fail("event", "is required (read with require_labels=False for unlabelled data)")
    else:
        event = line.label(event, "event", events)
    tags = rec.get("audio_tags")
    if tags is None:
        tags = []
    if not isinstance(tags, list):
        raise line.fail("audio_tags", f"must be a list, got {type(tags).__name__} {_short(tags)}")
    tags = [line.label(t, f"audio_tags[{k}]", audio_tags) for k, t in enumerate(tags)]
    if len(set(tags)) != len(tags):
        raise line.fail("audio_tags", f"lists a tag twice: {_short(tags)}")
    width, height = line.size(rec, "width"), line.size(rec, "height")
    boxes = _boxes(line, rec, objects, width, height)
    questions = _questions(line, rec)
    meta = {k: v for k, v in rec.items() if k not in _KNOWN}
    return Sample(sid, video, audio, event, tuple(tags), boxes, width, height, meta,  # type: ignore[arg-type]
                  questions)


def read_manifest(
    path: str | os.PathLike,
    *,
    require_labels: bool = True,
    check_files: bool = True,
    events: Sequence[str] | None = EVENTS,
    audio_tags: Sequence[str] | None = AUDIO_TAGS,
    objects: Sequence[str] | None = OBJECTS,
    embedded_audio: bool | None = None,
) -> list[Sample]:
    """Read and validate a manifest.

    Args:
        path: the manifest file, or a folder holding ``manifest.jsonl``.
        require_labels: if True every sample needs an ``event``; False reads unlabelled data
            (labels that are present are still checked).
        check_files: check that every video/audio file exists.
        events, audio_tags, objects: the label vocabularies (default: ``fusionedge.sdk.spec``);
            None accepts any non-empty label (the data set's own vocabulary).
        embedded_audio: give a row without an ``audio`` field its video file as the audio when that
            file has a sound track (opens each such video's header); None: as ``check_files``.

    Raises:
        DataError: the file is missing, unreadable or empty, or a line is invalid (bad JSON, JSON
            nested too deep, an over-long integer, NaN/Infinity, a missing or mistyped field, an
            unknown label, a duplicate id, a bad box, a missing media file). The message reads
            ``<file>:<line>: field '<field>': <what is wrong>``.

    Returns:
        The samples in file order, with absolute media paths.
    """
    file = manifest_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"{file}: manifest not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: cannot read the manifest: {e}") from e
    root = Path(os.path.abspath(file)).parent
    samples: list[Sample] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        line = _Line(file, lineno)
        rec = loads_json(raw, what=line.where, error=DataError)  # bounded: depth, integer length, NaN
        s = _parse(line, rec, root, require_labels=require_labels, check_files=check_files,
                   embedded_audio=check_files if embedded_audio is None else embedded_audio,
                   events=events, audio_tags=audio_tags, objects=objects)
        if s.id in first_line:
            raise line.fail("id", f"duplicate id {s.id!r} (first on line {first_line[s.id]})")
        first_line[s.id] = lineno
        samples.append(s)
    if not samples:
        raise DataError(f"{file}: the manifest holds no samples")
    return samples


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _relative(p: Path | str, root: Path) -> str:
    p = Path(p)
    if not p.is_absolute():
        return p.as_posix()  # already relative to the manifest's folder
    return Path(os.path.relpath(p, root)).as_posix()


def _record(s: Sample, root: Path) -> dict:
    clash = sorted(set(s.meta) & set(_KNOWN))
    if clash:
        raise DataError(f"sample {s.id!r}: field 'meta': keys {clash} clash with manifest fields")
    rec: dict[str, Any] = {
        "id": s.id,
        "video": None if s.video is None else _relative(s.video, root),
        "audio": None if s.audio is None else _relative(s.audio, root),
    }
    if s.event is not None:
        rec["event"] = s.event
    rec["audio_tags"] = list(s.audio_tags)
    rec["boxes"] = [{"label": b.label, "box": [_num(v) for v in (b.x1, b.y1, b.x2, b.y2)]} for b in s.boxes]
    if s.width is not None:
        rec["width"] = s.width
    if s.height is not None:
        rec["height"] = s.height
    if s.questions:
        rec["questions"] = [{"question": q.question, "answer": q.answer, "type": q.type} for q in s.questions]
    rec.update(s.meta)
    return rec


def write_manifest(path: str | os.PathLike, samples: Iterable[Sample]) -> None:
    """Write a manifest atomically (:func:`fusionedge.sdk.fileio.write_text_atomic`).

    Args:
        path: the manifest file to write (a folder means ``folder/manifest.jsonl``).
        samples: the samples. Absolute media paths are written relative to the manifest's folder;
            relative ones are taken as already relative to it.

    Raises:
        DataError: two samples share an id, a sample's ``meta`` reuses a manifest field name, or a
            value cannot be written as JSON.
        OSError: the folder cannot be written.
    """
    file = manifest_path(path)
    root = Path(os.path.abspath(file)).parent
    seen: set[str] = set()
    lines = []
    for s in samples:
        if s.id in seen:
            raise DataError(f"{file}: field 'id': duplicate id {s.id!r}")
        seen.add(s.id)
        try:
            lines.append(json.dumps(_record(s, root), ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise DataError(f"{file}: sample {s.id!r} cannot be written as JSON: {e}") from e
    write_text_atomic(root / file.name, "\n".join(lines) + ("\n" if lines else ""))
