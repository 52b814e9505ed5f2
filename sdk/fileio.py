"""Files and JSON, one way everywhere: atomic writes, strict JSON out, bounded JSON in.

Every part of FusionEdge writes through these functions and reads untrusted JSON (a bundle or
data-set manifest, a fleet record, a status message) through :func:`loads_json`:

* :func:`write_bytes_atomic` / :func:`write_text_atomic` / :func:`write_json_atomic` /
  :func:`copy_file_atomic` — a temp file in
  the same folder, ``fsync``, ``chmod``, ``os.replace``, then ``fsync`` of the folder: readers see the
  old file or the new one, never a torn one, and the rename survives a power cut.
* :func:`json_safe` — NumPy scalars/arrays and tuples to plain JSON types, and NaN/±Inf to ``null``
  (an undefined metric is "no value", and strict JSON has no NaN). The one NaN→null in the code base.
* :func:`loads_json` — ``json.loads`` with limits on size, nesting depth and integer length, each
  breach an :class:`~fusionedge.sdk.errors.InputError` (or the caller's error type) instead of a
  ``RecursionError``, a ``ValueError`` from the integer parser, or gigabytes of memory.

Standard library and NumPy only: this module is part of the device runtime.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

__all__ = [
    "fsync_dir",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "copy_file_atomic",
    "dumps_json",
    "json_safe",
    "loads_json",
    "read_json",
    "JSON_MAX_BYTES",
    "JSON_MAX_DEPTH",
    "JSON_MAX_INT_DIGITS",
]

#: Largest JSON document :func:`loads_json` accepts by default (manifests and records are kilobytes).
JSON_MAX_BYTES = 16 * 1024 * 1024
#: Deepest nesting of arrays/objects accepted by default (real documents stay under ten).
JSON_MAX_DEPTH = 64
#: Longest integer literal accepted by default (a 64-bit integer has 20 digits).
JSON_MAX_INT_DIGITS = 40


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so a rename or a new entry in it survives a power cut (POSIX)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, fill: Callable[[BinaryIO], object], mode: int) -> None:
    """Temp file beside ``path``, ``fill`` it, fsync, chmod, rename, fsync the folder; clean up on failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        fsync_dir(path.parent)
    except OSError:  # some file systems cannot fsync a folder; the file itself is durable
        pass


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsync, chmod, rename.

    Readers see the old file or the new one, never a torn one. ``mode`` is applied before the rename
    (``mkstemp`` creates files readable by their owner only; bundles and served files are shared).
    A failure (disk full, read-only folder) removes the temp file and leaves ``path`` as it was.

    Raises:
        OSError: the folder is not writable or the disk is full.
    """
    _write_atomic(Path(path), lambda f: f.write(data), mode)


def copy_file_atomic(src: str | os.PathLike, dest: str | os.PathLike, *, mode: int = 0o644) -> None:
    """Copy ``src`` to ``dest`` atomically, streaming (for files too large to hold in memory).

    The same guarantees as :func:`write_bytes_atomic`: a temp file beside ``dest``, fsync, chmod,
    rename, folder fsync; on failure ``dest`` is as it was and no temp file is left.

    Raises:
        OSError: ``src`` cannot be read, or the folder is not writable or the disk is full.
    """
    import shutil

    with open(src, "rb") as fin:
        _write_atomic(Path(dest), lambda f: shutil.copyfileobj(fin, f, 1 << 20), mode)


def write_text_atomic(path: str | os.PathLike, text: str, *, mode: int = 0o644) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def dumps_json(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``obj`` as strict JSON text: :func:`json_safe` first, so NaN/Inf become ``null``.

    Raises:
        InputError: ``obj`` holds something JSON cannot represent (a set, an object...).
    """
    from fusionedge.sdk.errors import InputError

    try:
        return json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InputError(f"cannot write as JSON: {e}") from e


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> None:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically (see :func:`write_bytes_atomic`).

    NaN/Inf are written as ``null`` (:func:`json_safe`).

    Raises:
        InputError: ``obj`` is not JSON-serializable (nothing is written).
        OSError: the folder is not writable or the disk is full.
    """
    from fusionedge.sdk.errors import InputError

    path = Path(path)
    try:
        text = dumps_json(obj, indent=2, sort_keys=sort_keys) + "\n"
    except InputError as e:
        raise InputError(f"{path.name}: {e}") from e
    write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """Plain JSON types, recursively: NumPy scalars/arrays and tuples converted, NaN/±Inf → ``None``.

    Args:
        value: a value made of mappings, sequences, NumPy and plain scalars.

    Returns:
        The same data in JSON types; objects of other types are returned unchanged (and then fail
        in :func:`dumps_json` with an :class:`~fusionedge.sdk.errors.InputError`).
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a runtime dependency
        return value
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of a parsed document, iteratively (no recursion), stopping past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((c, d + 1) for c in children)
    return deepest


def loads_json(data: str | bytes, *, what: str = "JSON", max_bytes: int = JSON_MAX_BYTES,
               max_depth: int = JSON_MAX_DEPTH, max_int_digits: int = JSON_MAX_INT_DIGITS,
               error: type[Exception] | None = None) -> Any:
    """Parse untrusted JSON within limits, so a hostile document is a typed error and not a crash.

    Args:
        data: the document (bytes are decoded as UTF-8).
        what: names the document in error messages (e.g. ``"manifest.json"``).
        max_bytes: largest accepted document.
        max_depth: deepest accepted nesting of arrays and objects.
        max_int_digits: longest accepted integer literal.
        error: the exception type to raise (default :class:`~fusionedge.sdk.errors.InputError`);
            it is constructed with one message argument.

    Returns:
        The parsed value. NaN and Infinity literals are refused (strict JSON).

    Raises:
        InputError (or ``error``): too large, too deep, an over-long integer, not UTF-8, not JSON.
    """
    from fusionedge.sdk.errors import InputError

    exc = error or InputError
    if len(data) > max_bytes:
        raise exc(f"{what}: {len(data)} bytes, more than the {max_bytes} accepted")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise exc(f"{what}: not UTF-8 text ({e})") from e

    def parse_int(s: str) -> int:
        if len(s.lstrip("-")) > max_int_digits:
            raise _Refused(f"an integer of {len(s.lstrip('-'))} digits (at most {max_int_digits})")
        return int(s)

    def parse_constant(name: str) -> Any:
        raise _Refused(f"{name} is not a JSON number")

    try:
        obj = json.loads(data, parse_int=parse_int, parse_constant=parse_constant)
    except _Refused as e:
        raise exc(f"{what}: {e}") from None
    except RecursionError:
        raise exc(f"{what}: nested more than {max_depth} levels deep") from None
    except json.JSONDecodeError as e:
        raise exc(f"{what}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except ValueError as e:  # e.g. the interpreter's own integer-length limit
        raise exc(f"{what}: not acceptable JSON ({e})") from e
    if _depth(obj, max_depth) > max_depth:
        raise exc(f"{what}: nested more than {max_depth} levels deep")
    return obj


def read_json(path: str | os.PathLike, *, what: str | None = None, max_bytes: int = JSON_MAX_BYTES,
              error: type[Exception] | None = None, **limits: Any) -> Any:
    """Read and parse a JSON file with :func:`loads_json`'s limits; the size is checked before reading.

    Raises:
        InputError (or ``error``): as :func:`loads_json`, and for a path that is not a regular file.
        OSError: the file cannot be read.
    """
    from fusionedge.sdk.errors import InputError

    path = Path(path)
    name = what or path.name
    exc = error or InputError
    st = os.stat(path)
    import stat as _stat

    if not _stat.S_ISREG(st.st_mode):
        raise exc(f"{name}: not a regular file")
    if st.st_size > max_bytes:
        raise exc(f"{name}: {st.st_size} bytes, more than the {max_bytes} accepted")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    return loads_json(data, what=name, max_bytes=max_bytes, error=error, **limits)


class _Refused(Exception):
    """Raised inside the parser hooks; turned into the caller's error type by :func:`loads_json`."""
