"""A bundle folder as one file for shipping: a deterministic, uncompressed tar, and its safe unpacking.

::

    pack_bundle("bundle/", "bundle.tar")            # the release server (fleet publish)
    unpack_bundle("bundle.tar", "store/<sha256>")   # the device, after the archive's hashes were verified

:func:`pack_bundle` writes the same bytes for the same bundle on any machine: entries sorted by path,
``mtime`` 0, uid/gid 0, no user or group names, mode 0644 (0755 for folders), no absolute paths. The
top-level entries are the bundle's own files (``manifest.json``, ``model.onnx``, ``golden.npz``,
``engines/...``), so the archive's SHA-256 names the release.

:func:`unpack_bundle` treats the archive as hostile even after its hash was checked (a signed archive
can still be a bad one): it refuses absolute paths, ``..``, backslashes, links, devices, FIFOs, sparse
files, duplicate names and more than ``max_bytes`` / ``max_files`` — raising
:class:`~fusionedge.sdk.errors.VerificationError` before a byte is written. It extracts into a hidden
temporary folder beside the destination, fsyncs every file, verifies the result with
:func:`~fusionedge.sdk.bundle.load_bundle`, and only then renames it into place: the destination
either holds a complete, verified bundle or does not exist.

This module is part of the device runtime: the standard library and :mod:`fusionedge.sdk.bundle` only.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO

from fusionedge.sdk.bundle import MANIFEST_NAME, load_bundle
from fusionedge.sdk.errors import BundleError, InputError, VerificationError
from fusionedge.sdk.fileio import fsync_dir

__all__ = ["pack_bundle", "unpack_bundle", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_FILES"]

#: Largest total of file sizes :func:`unpack_bundle` accepts by default (4 GiB: ONNX + engines).
DEFAULT_MAX_BYTES = 4 << 30
#: Most entries (files and folders) :func:`unpack_bundle` accepts by default.
DEFAULT_MAX_FILES = 1000

_CHUNK = 1 << 20
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


# ------------------------------------------------------------------------------------------- packing


def _bundle_entries(root: Path) -> list[tuple[str, Path]]:
    """Every folder and file under ``root`` as ``(posix relpath, path)``, sorted; links are refused."""
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise InputError(f"{root}: {rel} is a symbolic link; a bundle holds regular files only")
            if not (path.is_dir() or path.is_file()):
                raise InputError(f"{root}: {rel} is not a regular file or folder")
            entries.append((rel, path))
    entries.sort(key=lambda e: e[0])
    return entries


def _tarinfo(rel: str, *, size: int = 0, folder: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.type = tarfile.DIRTYPE if folder else tarfile.REGTYPE
    info.mode = 0o755 if folder else 0o644
    info.size = 0 if folder else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_bundle(bundle_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Archive a verified bundle folder as a deterministic, uncompressed tar.

    The bundle is verified first (schema and every file's hash), so a broken bundle is never shipped.
    The archive is written to a temporary file beside ``out_path``, fsynced and renamed into place.

    Args:
        bundle_dir: the bundle folder (holding ``manifest.json``).
        out_path: the archive to write (replaced if it exists); must not lie inside ``bundle_dir``.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        BundleError: the bundle is invalid or altered (named file and field).
        InputError: ``out_path`` lies inside the bundle, or the bundle holds a link or a special file.
        OSError: the archive cannot be written.
    """
    root = Path(bundle_dir).resolve()
    out = Path(out_path).resolve()
    if out == root or root in out.parents:
        raise InputError(f"{out}: the archive must not be written inside the bundle folder {root}")
    entries = _bundle_entries(root)
    load_bundle(root)  # refuse to ship a bundle that does not verify
    out.parent.mkdir(parents=True, exist_ok=True)
    # The steps of fileio.write_bytes_atomic (temp file beside, fsync, rename, fsync the folder), but
    # streamed: an archive holds the model and its engines, gigabytes that should not sit in memory.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, path in entries:
                    if path.is_dir():
                        tar.addfile(_tarinfo(rel, folder=True))
                    else:
                        with open(path, "rb") as f:
                            tar.addfile(_tarinfo(rel, size=os.fstat(f.fileno()).st_size), f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        fsync_dir(out.parent)  # the rename survives a power cut
    except OSError:  # some file systems cannot fsync a folder; the archive itself is durable
        pass
    return out


# ----------------------------------------------------------------------------------------- unpacking


def _check_member(member: tarfile.TarInfo, seen: set[str], where: str) -> str:
    """Return the member's normalized relative path, or raise VerificationError saying what is wrong."""
    name = member.name
    if member.type not in _FILE_TYPES and member.type != tarfile.DIRTYPE:
        kind = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link",
                tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                tarfile.FIFOTYPE: "a FIFO", tarfile.GNUTYPE_SPARSE: "a sparse file",
                tarfile.CONTTYPE: "a contiguous file"}.get(member.type, f"of type {member.type!r}")
        raise VerificationError(f"{where}: entry {name!r} is {kind}; a bundle archive holds regular files "
                                f"only")
    if not name or "\x00" in name or "\\" in name:
        raise VerificationError(f"{where}: entry {name!r} has an invalid name")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/"):
        raise VerificationError(f"{where}: entry {name!r} is an absolute path (path traversal refused)")
    if ".." in p.parts:
        raise VerificationError(f"{where}: entry {name!r} climbs out of the bundle with '..' (path traversal "
                                f"refused)")
    rel = p.as_posix()
    if rel in (".", ""):
        raise VerificationError(f"{where}: entry {name!r} names the archive root")
    if rel in seen:
        raise VerificationError(f"{where}: entry {rel!r} appears twice")
    seen.add(rel)
    return rel


def _copy_exact(src: IO[bytes], dest: Path, size: int, where: str) -> None:
    """Write exactly ``size`` bytes from ``src`` to a new file ``dest`` and fsync it."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        left = size
        while left:
            chunk = src.read(min(_CHUNK, left))
            if not chunk:
                raise VerificationError(f"{where}: {dest.name} is truncated in the archive")
            f.write(chunk)
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())


def _extract(tar: tarfile.TarFile, members: list[tuple[str, tarfile.TarInfo]], root: Path,
             where: str) -> None:
    folders = {root}
    for rel, member in members:
        dest = root.joinpath(*PurePosixPath(rel).parts)
        # defence in depth: the checked name must still resolve inside the extraction folder
        if root.resolve() not in dest.resolve().parents:
            raise VerificationError(f"{where}: entry {rel!r} resolves outside the bundle (path traversal "
                                    f"refused)")
        if member.type == tarfile.DIRTYPE:
            dest.mkdir(parents=True, exist_ok=True)
            folders.add(dest)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        folders.add(dest.parent)
        src = tar.extractfile(member)
        if src is None:  # pragma: no cover - regular members always have a file object
            raise VerificationError(f"{where}: entry {rel!r} has no data")
        with src:
            _copy_exact(src, dest, member.size, where)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)


def unpack_bundle(
    archive: str | os.PathLike,
    dest_dir: str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Path:
    """Safely extract a bundle archive into a new folder, verify it, and move it into place atomically.

    Args:
        archive: a tar written by :func:`pack_bundle` (verify its hash against signed metadata first).
        dest_dir: the bundle folder to create; it must not exist. Its parent is created if needed and
            receives a hidden temporary folder during extraction (same file system, so the final
            rename is atomic).
        max_bytes: the most bytes the archive's files may hold in total.
        max_files: the most entries the archive may hold.

    Returns:
        ``dest_dir`` as a :class:`~pathlib.Path`, holding a bundle that :func:`load_bundle` verified.

    Raises:
        VerificationError: the archive is not a tar, or holds an absolute path, ``..``, a link, a device
            or other special file, a duplicate name, too many entries or too many bytes, or the
            extracted bundle fails verification (the :class:`BundleError` is chained). Nothing is left
            behind.
        InputError: ``dest_dir`` already exists, or a limit is not a positive integer.
        OSError: the archive cannot be read or the destination cannot be written (e.g. ``ENOSPC``);
            nothing is left behind.
    """
    src = Path(archive)
    dest = Path(dest_dir)
    where = src.name
    for label, limit in (("max_bytes", max_bytes), ("max_files", max_files)):
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InputError(f"{label} must be a positive integer, got {limit!r}")
    if dest.exists() or dest.is_symlink():
        raise InputError(f"{dest}: already exists; unpack into a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpack", dir=dest.parent))
    try:
        tmp.chmod(0o755)
        try:
            tar = tarfile.open(src, mode="r:")  # uncompressed only: no decompression bombs
        except tarfile.TarError as e:
            raise VerificationError(f"{where}: not an uncompressed tar archive ({e})") from e
        with tar:
            members: list[tuple[str, tarfile.TarInfo]] = []
            seen: set[str] = set()
            total = 0
            try:
                for member in tar:  # headers only; file data is read during extraction
                    if len(members) >= max_files:
                        raise VerificationError(f"{where}: more than {max_files} entries; refused")
                    rel = _check_member(member, seen, where)
                    total += member.size if member.type in _FILE_TYPES else 0
                    if total > max_bytes:
                        raise VerificationError(
                            f"{where}: files total more than {max_bytes} bytes (at {rel!r}); refused"
                        )
                    members.append((rel, member))
            except tarfile.TarError as e:
                raise VerificationError(f"{where}: corrupted tar archive ({e})") from e
            if MANIFEST_NAME not in seen:
                raise VerificationError(f"{where}: no top-level {MANIFEST_NAME}; not a bundle archive")
            try:
                _extract(tar, members, tmp, where)
            except (tarfile.TarError, NotADirectoryError, FileExistsError, IsADirectoryError) as e:
                raise VerificationError(f"{where}: cannot extract ({e})") from e
        try:
            load_bundle(tmp)
        except BundleError as e:
            raise VerificationError(f"{where}: the unpacked bundle does not verify: {e}") from e
        os.rename(tmp, dest)  # atomic within one file system; fails if dest appeared meanwhile
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
