"""AudioSet- or ESC-style CSV of clip tags → audio samples (each with a black video of its length).

One row names a WAV file and its label(s), and optionally a window in it and a fold: ESC-50's
``filename,fold,target,category,...`` and AudioSet's ``# YTID, start_seconds, end_seconds,
positive_labels`` are read without options (the header is the first row that names a file column;
``#`` comment lines before it and a ``#`` in front of it are dropped); other layouts name their columns. Labels split on ``label_sep`` become the sample's ``audio_tags`` (or its
``event``, one label per row). The manifest requires a video for every sample, so an audio clip gets
a black :data:`~fusionedge.training.data_import.common.STILL_SIZE` video of the clip's length, which
a model sees as a camera that shows nothing; the audio is linked (whole file) or cut to the window.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from fusionedge.sdk.errors import DataError, MediaError
from fusionedge.sdk.media import WavFile

from .common import Planned, Refusal, safe_id, write_black_video, write_wav_window

__all__ = ["FILE_COLUMNS", "LABEL_COLUMNS", "plan_csv"]

#: Column names tried, in order, for the audio file when none is given.
FILE_COLUMNS = ("filename", "file", "path", "fname", "slice_file_name", "ytid")
#: Column names tried, in order, for the label(s) when none is given.
LABEL_COLUMNS = ("labels", "label", "positive_labels", "category", "class", "tags", "tag")


def _column(header: list[str], given: str | None, tried: tuple[str, ...], what: str, src: Path) -> int | None:
    low = [h.strip().lower() for h in header]
    if given is not None:
        if given.lower() not in low:
            raise DataError(f"{src}: no column {given!r} (columns: {', '.join(header)})")
        return low.index(given.lower())
    for name in tried:
        if name in low:
            return low.index(name)
    if what:
        raise DataError(f"{src}: no {what} column among {', '.join(header)}; name it with --{what}-column")
    return None


def _seconds(v: str) -> float | None:
    if not v.strip():
        return None
    x = float(v)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{v!r} is not a time in seconds")
    return x


def _make(path: Path, start: float | None, end: float | None, fps: float, sid: str):
    def make(media: Path) -> tuple[Path, Path | None]:
        audio, video = media / f"{sid}.wav", media / f"{sid}.mp4"
        seconds = write_wav_window(path, audio, start, end)
        write_black_video(video, seconds, fps)
        return video, audio
    return make


def plan_csv(src: str | Path, *, media_dir: str | Path | None = None, file_column: str | None = None,
             label_column: str | None = None, start_column: str | None = None,
             end_column: str | None = None, fold_column: str | None = None, label_sep: str = ",",
             labels_as: str = "tags", fps: float = 10.0) -> tuple[list[Planned], list[Refusal]]:
    """Read a CSV of audio clips and their labels and plan the samples (nothing is written).

    Args:
        src: the CSV file (a header row first).
        media_dir: the folder file names are relative to (default: the CSV's folder). A name without
            an ending that is not found is tried with ``.wav``.
        file_column, label_column: the columns of the file and the label(s) (default: the first of
            :data:`FILE_COLUMNS` / :data:`LABEL_COLUMNS` present).
        start_column, end_column: the clip window in seconds (default: ``start_seconds`` /
            ``end_seconds`` when present; else the whole file).
        fold_column: kept as ``fold`` in the sample (default: ``fold`` when present).
        label_sep: separates several labels in one cell.
        labels_as: ``"tags"`` (``audio_tags``) or ``"event"`` (one label per row).
        fps: frame rate of the black video.

    Returns:
        The planned samples and the refused rows (named ``file:line``).

    Raises:
        DataError: the file cannot be read, has no header, or lacks a named column.
    """
    src = Path(src)
    if labels_as not in ("tags", "event"):
        raise DataError(f"labels_as must be 'tags' or 'event', got {labels_as!r}")
    root = Path(media_dir) if media_dir is not None else src.parent
    try:
        text = src.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{src}: cannot read: {e}") from e
    rows = [(n, r) for n, r in enumerate(csv.reader(io.StringIO(text), skipinitialspace=True), start=1)
            if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{src}: the CSV holds no rows")
    wanted = {file_column.lower()} if file_column else set(FILE_COLUMNS)
    at = next((k for k, (_, r) in enumerate(rows)
               if wanted & {c.lstrip("#").strip().lower() for c in r}),  # AudioSet: "# YTID, ..." after comments
              next((k for k, (_, r) in enumerate(rows) if not r[0].lstrip().startswith("#")), 0))
    header = [h.lstrip("#").strip() for h in rows[at][1]]
    rows = rows[at:]
    fcol = _column(header, file_column, FILE_COLUMNS, "file", src)
    lcol = _column(header, label_column, LABEL_COLUMNS, "label", src)
    scol = _column(header, start_column, ("start_seconds",), "", src)
    ecol = _column(header, end_column, ("end_seconds",), "", src)
    kcol = _column(header, fold_column, ("fold",), "", src)
    refused: list[Refusal] = []
    planned: list[Planned] = []
    for lineno, row in rows[1:]:
        where = f"{src}:{lineno}"
        if row[0].lstrip().startswith("#"):
            continue
        if len(row) != len(header):
            refused.append(Refusal(where, f"{len(row)} fields, the header has {len(header)}"))
            continue
        labels = list(dict.fromkeys(t.strip() for t in row[lcol].split(label_sep) if t.strip()))
        if not labels:
            refused.append(Refusal(where, "no label"))
            continue
        if labels_as == "event" and len(labels) != 1:
            refused.append(Refusal(where, f"{len(labels)} labels, an event takes one"))
            continue
        try:
            start = _seconds(row[scol]) if scol is not None else None
            end = _seconds(row[ecol]) if ecol is not None else None
        except ValueError as e:
            refused.append(Refusal(where, str(e)))
            continue
        if start is not None and end is not None and end <= start:
            refused.append(Refusal(where, f"end {end} s is not after start {start} s"))
            continue
        name = row[fcol].strip()
        path = root / name
        if not path.is_file() and not Path(name).suffix and (root / f"{name}.wav").is_file():
            path = root / f"{name}.wav"
        if not path.is_file():
            refused.append(Refusal(where, f"file not found: {path}"))
            continue
        try:
            with WavFile(path) as w:
                if start is not None and start >= w.seconds:
                    refused.append(Refusal(where, f"start {start} s is past the end of {path} ({w.seconds:.3f} s)"))
                    continue
        except MediaError as e:
            refused.append(Refusal(where, str(e)))
            continue
        sid = safe_id(Path(name).stem + (f"-{start:g}" if start is not None else ""))
        meta = {"source": name} | ({"fold": row[kcol].strip()} if kcol is not None else {})
        planned.append(Planned(
            sid, _make(path, start, end, fps, sid),
            event=labels[0] if labels_as == "event" else None,
            audio_tags=tuple(labels) if labels_as == "tags" else (),
            meta=meta,
        ))
    return planned, refused
