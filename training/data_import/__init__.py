"""Bring labelled data in: COCO, MOTChallenge, AudioSet/ESC-style CSV or a folder per class → a manifest.

::

    from fusionedge.training.data_import import import_dataset
    result = import_dataset("coco", "annotations/instances_val.json", "data/mine")
    print(result.samples, result.boxes)          # data/mine/manifest.jsonl + data/mine/media/

Each format's reader (``coco``, ``mot``, ``tags_csv``, ``folders``) reads its whole source first and
plans the samples; every row it cannot import is collected with its file and line (or COCO id), and
any such row stops the import before a byte is written, in one :class:`~fusionedge.sdk.errors.DataError`
line, unless ``skip_invalid``. :func:`~.common.write_dataset` then writes media and, last, the
manifest into a staging folder and renames it into place. Labels are the source's own; the manifest
is checked with :func:`fusionedge.sdk.datamanifest.read_manifest` over the data's own vocabularies.

This lives with training, not in the device runtime: bringing a data set in is part of preparing a
training run. It needs numpy and OpenCV only (no torch), like the synthetic generator beside it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import InputError

from .coco import plan_coco
from .common import ImportResult, refuse_or_skip, write_dataset
from .folders import plan_folders
from .mot import plan_mot
from .tags_csv import plan_csv

__all__ = ["FORMATS", "ImportResult", "import_dataset"]

#: The formats :func:`import_dataset` reads, and the reader of each.
FORMATS = {"coco": plan_coco, "mot": plan_mot, "csv": plan_csv, "folders": plan_folders}


def import_dataset(fmt: str, src: str | os.PathLike, out: str | os.PathLike, *, skip_invalid: bool = False,
                   overwrite: bool = False, progress: bool = True, **options: Any) -> ImportResult:
    """Import ``src`` in format ``fmt`` as a data set in ``out`` (``manifest.jsonl`` + ``media/``).

    Args:
        fmt: ``coco``, ``mot``, ``csv`` or ``folders``.
        src: the source: a COCO JSON file, a MOT sequence folder or ``gt.txt``, a CSV file, or a
            folder of class folders.
        out: the data-set folder to write (must be absent or empty unless ``overwrite``).
        skip_invalid: leave refused rows out (listed in the result) instead of refusing the import.
        overwrite: replace a data set already in ``out`` (only once the new one is complete).
        progress: show a progress bar on stderr while media are written.
        options: the format's own options (see :func:`~.coco.plan_coco`, :func:`~.mot.plan_mot`,
            :func:`~.tags_csv.plan_csv`, :func:`~.folders.plan_folders`).

    Returns:
        The :class:`ImportResult`: the manifest's path and counts per label.

    Raises:
        InputError: an unknown format, a missing source, an ``out`` that is not empty, a clip length,
            stride or frame rate that is not positive.
        DataError: the source is malformed, or rows were refused (all named in one line).
        MediaError: a source file cannot be decoded while writing; nothing is left behind.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for key in ("clip_frames", "stride", "fps", "still_seconds"):
        v = options.get(key)
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise InputError(f"{key.replace('_', '-')} must be a positive number, got {v!r}")
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: not found")
    planned, refusals = FORMATS[fmt](src, **options)
    refused = refuse_or_skip(str(src), refusals, skip_invalid=skip_invalid)
    return write_dataset(out, fmt, planned, refused, overwrite=overwrite, progress=progress)
